"""CenterNet as the proposal network of a two-stage detector (CenterNet2, Zhou et al. 2021):
``MODEL.PROPOSAL_GENERATOR.NAME: "CenterNet"``.

Each FPN level predicts a class-agnostic objectness heatmap (Gaussian peaks at object centres,
trained with the heatmap focal loss) and the distances from each location to the four box
sides (GIoU loss on the 3x3 cells around each centre). Proposals are the heatmap's top
locations after NMS; their score is ``sqrt(heatmap)`` (CenterNet2), a probability the second
stage multiplies into its class scores (``MULT_PROPOSAL_SCORE``). detectron2's ROI heads carry
it as ``objectness_logits``, which pomp_det's predictors read through a sigmoid, so the field
holds ``logit(score)``: ``sigmoid(objectness_logits)`` is CenterNet2's proposal score.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, batched_nms
from detectron2.modeling.proposal_generator.build import PROPOSAL_GENERATOR_REGISTRY
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils import comm
from torch import nn

from .head import CenterNetHead
from .losses import heatmap_focal_loss, ltrb_iou_loss

INF = 1e8
SCORE_EPS = 1e-6  # proposal scores are clamped into [eps, 1 - eps] before the logit


def _reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if comm.get_world_size() > 1:
        x = x.clone()
        torch.distributed.all_reduce(x)
    return x


@PROPOSAL_GENERATOR_REGISTRY.register()
class CenterNet(nn.Module):
    """CenterNet2's proposal generator (``ONLY_PROPOSAL``, ``WITH_AGN_HM``)."""

    @configurable
    def __init__(self, *, head: CenterNetHead, in_features: Sequence[str], strides: Sequence[int],
                 sizes_of_interest: Sequence[Sequence[float]], hm_min_overlap: float = 0.8,
                 min_radius: float = 4, focal_alpha: float = 0.25, focal_beta: float = 4.0,
                 focal_gamma: float = 2.0, sigmoid_clamp: float = 1e-4, ignore_high_fp: float = -1.0,
                 pos_weight: float = 1.0, neg_weight: float = 1.0, reg_weight: float = 2.0,
                 loc_loss_type: str = "giou", score_thresh: float = 0.05,
                 pre_nms_topk: Tuple[int, int] = (1000, 1000), post_nms_topk: Tuple[int, int] = (100, 100),
                 nms_thresh: Tuple[float, float] = (0.6, 0.6)) -> None:
        super().__init__()
        if not (len(in_features) == len(strides) == len(sizes_of_interest)):
            raise ValueError("MODEL.CENTERNET.IN_FEATURES, FPN_STRIDES and SOI need one entry per level, got "
                             f"{len(in_features)}, {len(strides)} and {len(sizes_of_interest)}")
        self.centernet_head = head
        self.in_features = list(in_features)
        self.strides = list(strides)
        self.sizes_of_interest = [list(map(float, s)) for s in sizes_of_interest]
        # radius of the Gaussian: a box shifted by it still overlaps the object by hm_min_overlap
        self.delta = (1 - hm_min_overlap) / (1 + hm_min_overlap)
        self.min_radius = min_radius
        self.focal = dict(alpha=focal_alpha, beta=focal_beta, gamma=focal_gamma,
                          sigmoid_clamp=sigmoid_clamp, ignore_high_fp=ignore_high_fp)
        self.pos_weight, self.neg_weight, self.reg_weight = pos_weight, neg_weight, reg_weight
        self.loc_loss_type = loc_loss_type
        self.score_thresh = score_thresh
        self.pre_nms_topk, self.post_nms_topk, self.nms_thresh = pre_nms_topk, post_nms_topk, nms_thresh

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        c = cfg.MODEL.CENTERNET
        if not (c.ONLY_PROPOSAL and c.WITH_AGN_HM):
            raise ValueError("pomp_det's CenterNet is CenterNet2's proposal network: set "
                             "MODEL.CENTERNET.ONLY_PROPOSAL and WITH_AGN_HM True (the one-stage "
                             "per-class detector is not implemented)")
        missing = [f for f in c.IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(f"MODEL.CENTERNET.IN_FEATURES {missing} are not backbone outputs "
                             f"{sorted(input_shape)}: use a backbone with P6/P7 (e.g. "
                             "build_pomp_timm_p67_fpn_backbone) or list its levels")
        channels = {input_shape[f].channels for f in c.IN_FEATURES}
        if len(channels) != 1:
            raise ValueError(f"CenterNet shares one head over levels of equal width, got {channels}")
        head = CenterNetHead(channels.pop(), len(c.IN_FEATURES), norm=c.NORM, num_box_convs=c.NUM_BOX_CONVS,
                             num_share_convs=c.NUM_SHARE_CONVS, prior_prob=c.PRIOR_PROB)
        return dict(head=head, in_features=c.IN_FEATURES, strides=c.FPN_STRIDES, sizes_of_interest=c.SOI,
                    hm_min_overlap=c.HM_MIN_OVERLAP, min_radius=c.MIN_RADIUS, focal_alpha=c.HM_FOCAL_ALPHA,
                    focal_beta=c.HM_FOCAL_BETA, focal_gamma=c.LOSS_GAMMA, sigmoid_clamp=c.SIGMOID_CLAMP,
                    ignore_high_fp=c.IGNORE_HIGH_FP, pos_weight=c.POS_WEIGHT, neg_weight=c.NEG_WEIGHT,
                    reg_weight=c.REG_WEIGHT, loc_loss_type=c.LOC_LOSS_TYPE, score_thresh=c.INFERENCE_TH,
                    pre_nms_topk=(c.PRE_NMS_TOPK_TRAIN, c.PRE_NMS_TOPK_TEST),
                    post_nms_topk=(c.POST_NMS_TOPK_TRAIN, c.POST_NMS_TOPK_TEST),
                    nms_thresh=(c.NMS_TH_TRAIN, c.NMS_TH_TEST))

    # ------------------------------------------------------------------ locations
    def grids(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        """Per level, the image coordinates [H*W, 2] (x, y) of each location: cell centres."""
        out = []
        for x, s in zip(features, self.strides):
            h, w = x.shape[-2:]
            ys = torch.arange(h, device=x.device, dtype=torch.float32) * s
            xs = torch.arange(w, device=x.device, dtype=torch.float32) * s
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            out.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], 1) + s // 2)
        return out

    # ------------------------------------------------------------------ targets
    def targets(self, grids: List[torch.Tensor], shapes: List[Tuple[int, int]], gt_instances: List[Instances]
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image-major flattened targets over all locations of all levels:
        centre indices [P], heatmap [B*M] and ltrb distances [B*M, 4] in strides (< 0 = none)."""
        num_loc = [len(g) for g in grids]
        level_base = torch.tensor([0] + num_loc[:-1]).cumsum(0).tolist()
        m = sum(num_loc)
        grid = torch.cat(grids)
        strides = torch.cat([grid.new_full((n,), float(s)) for n, s in zip(num_loc, self.strides)])
        ranges = torch.cat([grid.new_tensor(r).expand(n, 2) for n, r in zip(num_loc, self.sizes_of_interest)])
        pos_inds, heatmaps, regs = [], [], []
        for i, inst in enumerate(gt_instances):
            boxes = inst.gt_boxes.tensor.to(grid)
            n = len(boxes)
            if n == 0:
                heatmaps.append(grid.new_zeros(m))
                regs.append(grid.new_full((m, 4), -INF))
                continue
            centers = (boxes[:, :2] + boxes[:, 2:]) / 2  # [n, 2]
            # positives: the centre's cell on every level whose size range holds the box
            half_diag = (boxes[:, 2:] - boxes[:, :2]).norm(dim=1) / 2
            for lvl, (s, (h, w)) in enumerate(zip(self.strides, shapes)):
                lo, hi = self.sizes_of_interest[lvl]
                on = (half_diag >= lo) & (half_diag <= hi)
                cell = (centers[on] / s).long()
                pos_inds.append(i * m + level_base[lvl] + cell[:, 1] * w + cell[:, 0])
            ltrb = torch.cat([grid[:, None] - boxes[None, :, :2], boxes[None, :, 2:] - grid[:, None]], 2)  # [m, n, 4]
            s2 = strides[:, None, None]
            centre_cell = (centers[None] / s2).int().float() * s2 + s2 / 2  # [m, n, 2]
            offset = grid[:, None] - centre_cell
            is_peak = (offset ** 2).sum(2) == 0
            in_box = ltrb.min(2).values > 0
            center3x3 = (offset.abs() <= s2).all(2) & in_box
            size = (ltrb[..., :2] + ltrb[..., 2:]).norm(dim=2) / 2
            in_level = (size >= ranges[:, :1]) & (size <= ranges[:, 1:])
            dist2 = ((grid[:, None] - centers[None]) ** 2).sum(2)
            dist2[is_peak] = 0
            radius2 = (self.delta ** 2 * 2 * inst.gt_boxes.area().to(grid)).clamp(min=self.min_radius ** 2)
            wdist = dist2 / radius2[None]  # [m, n]
            # regression: each location learns the nearest (scaled) centre among boxes it serves
            masked = wdist.masked_fill(~(center3x3 & in_level), INF)
            best, which = masked.min(1)
            reg = ltrb[torch.arange(m, device=grid.device), which] / strides[:, None]
            reg[best >= INF] = -INF
            heat = torch.exp(-wdist.min(1).values)
            heat[heat < 1e-4] = 0
            heatmaps.append(heat)
            regs.append(reg)
        pos = torch.cat(pos_inds) if pos_inds else grid.new_zeros(0, dtype=torch.long)
        return pos.long(), torch.cat(heatmaps), torch.cat(regs)

    # ------------------------------------------------------------------ forward
    def forward(self, images: ImageList, features: Dict[str, torch.Tensor],
                gt_instances: Optional[List[Instances]] = None) -> Tuple[List[Instances], Dict[str, torch.Tensor]]:
        feats = [features[f] for f in self.in_features]
        heatmaps, regs = self.centernet_head(feats)
        grids = self.grids(feats)
        proposals = self.predict_proposals(grids, heatmaps, regs, images.image_sizes)
        if not self.training:
            return proposals, {}
        shapes = [tuple(x.shape[-2:]) for x in feats]
        pos, heat_t, reg_t = self.targets(grids, shapes, gt_instances)
        heat_p = torch.cat([h.flatten(1) for h in heatmaps], 1).reshape(-1)
        reg_p = torch.cat([r.flatten(2) for r in regs], 2).permute(0, 2, 1).reshape(-1, 4)
        return proposals, self.losses(pos, heat_t, reg_t, heat_p, reg_p)

    def losses(self, pos: torch.Tensor, heat_t: torch.Tensor, reg_t: torch.Tensor,
               heat_p: torch.Tensor, reg_p: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Focal losses / (mean positives per GPU), GIoU loss / (mean regressed locations per GPU)."""
        world = comm.get_world_size()
        num_pos = max(_reduce_sum(pos.new_tensor([pos.numel()]).float()).item() / world, 1.0)
        pos_loss, neg_loss = heatmap_focal_loss(heat_p.float(), heat_t, pos, **self.focal)
        valid = reg_t.max(1).values >= 0
        reg_norm = max(_reduce_sum(valid.sum().float()).item() / world, 1.0)
        reg_loss = ltrb_iou_loss(reg_p[valid].float(), reg_t[valid], self.loc_loss_type).sum()
        return {"loss_centernet_agn_pos": self.pos_weight * pos_loss / num_pos,
                "loss_centernet_agn_neg": self.neg_weight * neg_loss / num_pos,
                "loss_centernet_loc": self.reg_weight * reg_loss / reg_norm}

    @torch.no_grad()
    def predict_proposals(self, grids: List[torch.Tensor], heatmaps: List[torch.Tensor],
                          regs: List[torch.Tensor], image_sizes: List[Tuple[int, int]]) -> List[Instances]:
        """Per image: top heatmap locations per level -> boxes, NMS over all levels, the best
        POST_NMS_TOPK, sorted by score (sqrt of the heatmap)."""
        t = int(not self.training)
        per_image: List[List[Tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in image_sizes]
        for grid, heat, reg, s in zip(grids, heatmaps, regs, self.strides):
            # in float32: in half a score near 1 rounds to 1 and its logit below is inf
            scores = heat.float().sigmoid().flatten(1)  # [N, HW]
            dist = reg.float().flatten(2).permute(0, 2, 1) * s  # [N, HW, 4] pixels
            for i in range(len(image_sizes)):
                keep = (scores[i] > self.score_thresh).nonzero().squeeze(1)
                sc = scores[i, keep]
                if len(sc) > self.pre_nms_topk[t]:
                    sc, top = sc.topk(self.pre_nms_topk[t])
                    keep = keep[top]
                g, d = grid[keep], dist[i, keep]
                boxes = torch.cat([g - d[:, :2], g + d[:, 2:]], 1)
                # keep every box non-empty for the ROI heads
                boxes[:, 2:] = torch.max(boxes[:, 2:], boxes[:, :2] + 0.01)
                per_image[i].append((boxes, sc.sqrt()))
        out = []
        for size, parts in zip(image_sizes, per_image):
            boxes = torch.cat([b for b, _ in parts])
            scores = torch.cat([sc for _, sc in parts])
            keep = batched_nms(boxes, scores, torch.zeros_like(scores, dtype=torch.long), self.nms_thresh[t])
            keep = keep[: self.post_nms_topk[t]]  # batched_nms sorts by decreasing score
            inst = Instances(size)
            inst.proposal_boxes = Boxes(boxes[keep])
            inst.objectness_logits = torch.logit(scores[keep].clamp(SCORE_EPS, 1 - SCORE_EPS))
            out.append(inst)
        return out
