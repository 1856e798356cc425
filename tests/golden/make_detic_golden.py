#!/usr/bin/env python
"""Write the Detic golden fixture (``tests/fixtures/golden/detic/``) from Detic's own code.

What it builds: Detic's ``Detic_LbaseI_CLIP_R5021k_640b64_4x_ft4x_max-size`` model, from
Detic's config file, with Detic's and CenterNet2's code on detectron2 0.6 (CPU): a timm
ResNet (Bottleneck blocks) + FPN P3-P7, CenterNet2 proposals, the 3-stage cascade with the
zero-shot classifier, the class-agnostic mask head: the real topology and key names, at
reduced widths and depth (``ARCH`` and ``WIDTH_OPTS`` below), with random weights drawn from a
fixed seed. Every recipe setting is Detic's; besides the widths only these are set: MODEL.DEVICE
cpu, FP16 False (Detic autocasts the backbone in training only, and only on CUDA), MODEL.WEIGHTS
"" and the fixture's embedding and category-info files. It writes:

- ``detic_model.pth``: the state dict in Detic's checkpoint layout (``{"model": ...}``);
- ``image_a.png`` (97 x 131) and ``image_b.png`` (150 x 64): two images of different
  non-square sizes (B's long side hits the 1333 cap at the test size);
- ``class_embeddings.npy`` (float32 [64, 48], Detic's ``ZEROSHOT_WEIGHT_PATH``),
  ``custom_vocabulary.npy`` (float32 [3, 48]: a vocabulary swapped in with Detic's
  ``reset_cls_test``, as its demo does) and ``cat_info.json`` (image counts, four zero);
- ``batches.json``: one fixed box-labelled and one image-labelled training batch (the
  images resized to given sizes, boxes, classes, polygons, image labels);
- ``detic_outputs.pt`` (plain tensors): at Detic's test size (detectron2's default mapper:
  short side 800, max 1333; not reduced) per image the proposals (boxes, CenterNet2 scores),
  each cascade stage's class probabilities, the final boxes / scores / classes and the
  28 x 28 mask probabilities of the 50 best detections (before pasting), the detections with
  the custom vocabulary; the losses of the two training batches under fixed torch seeds
  (CenterNet, federated sigmoid CE with the classes drawn from that seed, box regression, mask,
  the max-size image-label loss per stage) and, with Detic's ``BoxSup-C2_Lbase_CLIP_R5021k_640b64_4x`` (the first stage: box labels
  only) on the same weights, the losses of the box batch (``boxsup_box``); for each loss run,
  the training proposals the ROI heads were given (``train_proposals``: per image boxes and
  objectness), which the test replays into pomp_det's ROI heads (``run_losses``' ``replay``);
- ``meta.json``: the architecture, the config overrides and the seeds.

Run it by hand where checkouts of facebookresearch/Detic and of xingyizhou/CenterNet2 at the
commit Detic pins (8745e01, in ``third_party/CenterNet2``) exist, in this repository's venv::

    .venv/bin/python tests/golden/make_detic_golden.py --detic /path/to/Detic
    # or: DETIC_ROOT=/path/to/Detic .venv/bin/python tests/golden/make_detic_golden.py

Without a checkout it stops with a message. Detic's code is imported from the checkout, never
copied here; ``tests/det/test_golden.py`` compares pomp_det against what this writes.

Patches, all applied in memory here (the checkout is read as it is):
- ``clip`` (OpenAI's package, imported by Detic's text encoder, which this model does not use:
  its classifier reads the ``.npy``) is not installed: a stub module stands in for it;
- Detic's ``create_timm_resnet`` calls timm 0.4's ``build_model_with_cfg(default_cfg=...,
  pretrained_custom_load=...)``, which timm 1.0 refuses: replaced by building Detic's
  ``CustomResNet`` directly from ``model_params`` (no pre-trained weights are loaded anyway),
  and ``model_params["resnet50_in21k"]`` is set to the reduced ``ARCH``.
Nothing in this model needs a C++ op (no deformable convolution; NMS and ROIAlign are
torchvision's).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import types
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "detic"
CONFIG = "configs/Detic_LbaseI_CLIP_R5021k_640b64_4x_ft4x_max-size.yaml"
BOXSUP_CONFIG = "configs/BoxSup-C2_Lbase_CLIP_R5021k_640b64_4x.yaml"  # its first stage: box labels only
SEED = 20260
LOSS_SEEDS = {"box": 11, "image": 12}
NUM_CLASSES, EMBED_DIM = 64, 48  # 48: the shipped tiny CLIP's width, so the demo can encode names
ZERO_COUNT_CLASSES = [7, 21, 44, 60]  # classes never drawn by the federated loss (image count 0)
MASK_TOPK = 50
# timm ResNet of Bottleneck blocks (resnet50's topology and key names), reduced
ARCH = {"layers": [2, 1, 1, 1], "channels": [8, 16, 32, 64], "num_classes": 10}
# Detic's config keys that set the reduced widths; every other setting is Detic's
WIDTH_OPTS = ["MODEL.FPN.OUT_CHANNELS", 32, "MODEL.ROI_BOX_HEAD.FC_DIM", 32, "MODEL.ROI_MASK_HEAD.CONV_DIM", 16,
              "MODEL.ROI_BOX_HEAD.ZEROSHOT_WEIGHT_DIM", EMBED_DIM, "MODEL.ROI_HEADS.NUM_CLASSES", NUM_CLASSES,
              "MODEL.CENTERNET.NUM_CLASSES", NUM_CLASSES]
IMAGES = {"image_a.png": (97, 131), "image_b.png": (150, 64)}  # (H, W)


def image_array(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random colour field with rectangles and discs of several sizes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3))
    for c in range(3):
        a, b, p = rng.uniform(0.02, 0.15, 3)
        img[..., c] = 110 + 60 * np.sin(a * xx + p) * np.cos(b * yy)
    for _ in range(6):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        r = rng.integers(4, max(5, min(h, w) // 2))
        colour = rng.integers(0, 256, 3)
        if rng.random() < 0.5:
            img[y0:y0 + r, x0:x0 + r] = colour
        else:
            img[(yy - y0) ** 2 + (xx - x0) ** 2 < r ** 2] = colour
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _box_annotations() -> List[Dict]:
    """The box batch: per image its resized size and objects (several sizes, so positives land
    on several CenterNet levels; classes repeat across images; one object of a zero-count
    class)."""
    def obj(x0, y0, x1, y1, c):
        # a pentagon inside the box: masks differ from the box
        xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
        poly = [xm, y0, x1, ym - (y1 - y0) * 0.1, x1 - (x1 - x0) * 0.2, y1, x0 + (x1 - x0) * 0.1, y1, x0, ym]
        return {"bbox": [x0, y0, x1, y1], "category_id": c, "segmentation": [poly]}
    return [
        {"file_name": "image_a.png", "size": [240, 324], "ann_type": "box",
         "annotations": [obj(12.5, 20.0, 40.0, 61.5, 3), obj(60.0, 30.0, 190.0, 150.0, 17),
                         obj(150.0, 90.0, 318.0, 236.0, 40), obj(200.0, 10.0, 230.0, 28.0, 3)]},
        {"file_name": "image_b.png", "size": [288, 123], "ann_type": "box",
         "annotations": [obj(5.0, 8.0, 118.0, 140.0, 17), obj(30.0, 170.0, 70.0, 215.0, 60),
                         obj(80.0, 250.0, 110.0, 280.0, 9)]},
    ]


def _image_annotations() -> List[Dict]:
    """The image-labelled batch (Detic's ImageNet-LVIS kind): labels only, one of a zero-count class."""
    return [{"file_name": "image_a.png", "size": [160, 216], "ann_type": "image", "pos_category_ids": [5, 60]},
            {"file_name": "image_b.png", "size": [192, 82], "ann_type": "image", "pos_category_ids": [33]}]


def load_batch(spec: List[Dict], folder: Path) -> List[Dict]:
    """detectron2 training inputs from a ``batches.json`` entry: the image resized (detectron2's
    ResizeTransform, bilinear) to the given size, RGB CHW uint8, and Instances (boxes, classes,
    polygon masks); image-labelled entries get empty Instances and their labels."""
    from detectron2.data import detection_utils as utils
    from detectron2.data import transforms as T

    out = []
    for entry in spec:
        img = utils.read_image(str(folder / entry["file_name"]), format="RGB")
        h, w = entry["size"]
        img = T.ResizeTransform(img.shape[0], img.shape[1], h, w).apply_image(img)
        annos = [dict(a, bbox_mode=0) for a in entry.get("annotations", [])]  # BoxMode.XYXY_ABS
        inst = utils.annotations_to_instances(annos, (h, w), mask_format="polygon")
        labels = entry.get("pos_category_ids", sorted({a["category_id"] for a in annos}))
        out.append({"image": torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1))),
                    "instances": inst, "height": h, "width": w, "ann_type": entry["ann_type"],
                    "pos_category_ids": labels, "file_name": entry["file_name"]})
    return out


def test_inputs(cfg, folder: Path) -> List[Dict]:
    """The two images through detectron2's test mapper of ``cfg`` (resize to the test size)."""
    from detectron2.data import DatasetMapper

    mapper = DatasetMapper(cfg, is_train=False)
    return [mapper({"file_name": str(folder / name), "height": h, "width": w, "image_id": i})
            for i, (name, (h, w)) in enumerate(IMAGES.items())]


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Random weights from a fixed seed, at scales that keep the untrained network's outputs
    varied: matrices N(0, 1 / fan_in), vectors around their initial values, FrozenBN
    statistics spread. The class embeddings (zs_weight) and federated weights stay as built."""
    g = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    with torch.no_grad():
        for name, t in state.items():
            if name.endswith(("zs_weight", "freq_weight")) or not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.dim() >= 2:
                t.copy_(noise / (t[0].numel() ** 0.5))
            else:
                t.add_(0.1 * noise)


def _patch_for_this_stack(root: Path) -> None:
    """The in-memory patches of the module docstring."""
    sys.path[:0] = [str(root), str(root / "third_party" / "CenterNet2")]
    if "clip" not in sys.modules:
        clip = types.ModuleType("clip")
        tok = types.ModuleType("clip.simple_tokenizer")
        tok.SimpleTokenizer = type("SimpleTokenizer", (), {})
        clip.simple_tokenizer = tok
        sys.modules.update({"clip": clip, "clip.simple_tokenizer": tok})
    import detic.modeling.backbone.timm as detic_timm
    from timm.models.resnet import Bottleneck

    detic_timm.model_params["resnet50_in21k"] = dict(block=Bottleneck, layers=ARCH["layers"],
                                                     channels=ARCH["channels"], num_classes=ARCH["num_classes"])

    def create_timm_resnet(variant, out_indices, pretrained=False, **kwargs):
        assert not pretrained
        return detic_timm.CustomResNet(out_indices=out_indices, **detic_timm.model_params[variant], **kwargs)

    detic_timm.create_timm_resnet = create_timm_resnet


def detic_cfg(root: Path, out: Path, config: str = CONFIG):
    from centernet.config import add_centernet_config
    from detectron2.config import get_cfg
    from detic.config import add_detic_config

    cfg = get_cfg()
    add_centernet_config(cfg)
    add_detic_config(cfg)
    cfg.merge_from_file(str(root / config))
    cfg.merge_from_list([str(v) if not isinstance(v, str) else v for v in
                         [*WIDTH_OPTS, "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "FP16", False,
                          "MODEL.ROI_BOX_HEAD.ZEROSHOT_WEIGHT_PATH", str(out / "class_embeddings.npy"),
                          "MODEL.ROI_BOX_HEAD.CAT_FREQ_PATH", str(out / "cat_info.json")]])
    cfg.freeze()
    return cfg


def run_inference(model, inputs) -> Dict[str, torch.Tensor]:
    """Per image, one image per batch as Detic's test loader runs (in a batch, padding to the
    largest image changes the features and proposals): the proposals, each stage's
    probabilities and the final detections (before pasting)."""
    record: Dict[str, list] = {}
    gen = model.proposal_generator
    gen_forward = gen.forward

    def proposals_hook(*a, **k):
        props, losses = gen_forward(*a, **k)
        record["proposals"] = [(p.proposal_boxes.tensor.clone(), p.objectness_logits.clone()) for p in props]
        return props, losses

    gen.forward = proposals_hook
    wrapped = []
    for predictor in model.roi_heads.box_predictor:
        orig = predictor.predict_probs
        wrapped.append((predictor, orig))

        def probs_hook(predictions, proposals, _orig=orig):
            out = _orig(predictions, proposals)
            record["stages"].append([o.clone() for o in out])
            return out
        predictor.predict_probs = probs_hook
    out: Dict[str, torch.Tensor] = {}
    try:
        for i, inp in enumerate(inputs):
            record.update(proposals=[], stages=[])
            with torch.no_grad():
                res = model.inference([inp], do_postprocess=False)[0]
            boxes, scores = record["proposals"][0]
            out[f"img{i}.input_size"] = torch.tensor(inp["image"].shape[-2:])
            out[f"img{i}.proposal_boxes"] = boxes
            out[f"img{i}.proposal_scores"] = scores  # CenterNet2's: sqrt(heatmap), a probability
            for k, stage in enumerate(record["stages"]):
                out[f"img{i}.stage{k}_probs"] = stage[0]
            out[f"img{i}.boxes"] = res.pred_boxes.tensor
            out[f"img{i}.scores"] = res.scores
            out[f"img{i}.classes"] = res.pred_classes
            out[f"img{i}.masks_top{MASK_TOPK}"] = res.pred_masks[:MASK_TOPK, 0]
    finally:
        gen.forward = gen_forward
        for predictor, orig in wrapped:
            predictor.predict_probs = orig
    return out


def run_losses(model, batch, seed: int, replay: Optional[Callable[[List], List]] = None
               ) -> Tuple[Dict[str, float], List[Dict[str, torch.Tensor]]]:
    """The training losses of ``batch`` under ``seed`` and the proposals the ROI heads trained on
    (per image: boxes, the proposal generator's ``objectness_logits``). With ``replay``, the
    proposal generator's output is replaced by ``replay(its proposals)`` (its own losses kept):
    NMS over thousands of untrained, near-duplicate boxes keeps one more or one fewer where a
    float32 IoU lies within rounding of the threshold, which CPUs with other vector kernels
    round differently, and one proposal more reshuffles the ROI heads' random sampling."""
    from detectron2.utils.events import EventStorage

    gen = model.proposal_generator
    gen_forward = gen.forward
    used: List[Dict[str, torch.Tensor]] = []

    def proposals_hook(*a, **k):
        props, gen_losses = gen_forward(*a, **k)
        if replay is not None:
            props = replay(props)
        used.extend({"boxes": p.proposal_boxes.tensor.detach().clone(),
                     "objectness_logits": p.objectness_logits.detach().clone()} for p in props)
        return props, gen_losses

    model.train()
    torch.manual_seed(seed)
    gen.forward = proposals_hook
    try:
        with EventStorage(0):
            losses = model(batch)
    finally:
        gen.forward = gen_forward
        model.eval()
    return {k: float(v) for k, v in losses.items()}, used


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--detic", default=os.environ.get("DETIC_ROOT", ""),
                   help="a checkout of facebookresearch/Detic with third_party/CenterNet2 (default: $DETIC_ROOT)")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    root = Path(args.detic).expanduser() if args.detic else None
    if root is None or not (root / CONFIG).is_file() or not (root / "third_party/CenterNet2/centernet").is_dir():
        sys.exit("make_detic_golden: give a Detic checkout with third_party/CenterNet2 "
                 "(--detic /path/to/Detic or DETIC_ROOT=/path/to/Detic); "
                 f"{'none given' if root is None else str(root) + ' has no ' + CONFIG + ' or CenterNet2'}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # the test compares on one thread too (summation order)
    _patch_for_this_stack(root)
    import centernet.modeling.dense_heads.centernet  # noqa: F401  (registers CenterNet)
    import detic.modeling.meta_arch.custom_rcnn  # noqa: F401  (CustomRCNN)
    import detic.modeling.roi_heads.detic_roi_heads  # noqa: F401  (DeticCascadeROIHeads)
    from detectron2.modeling import build_model
    from PIL import Image

    from detic.modeling.utils import reset_cls_test

    rng = np.random.default_rng(SEED)
    for i, (name, (h, w)) in enumerate(IMAGES.items()):
        Image.fromarray(image_array(h, w, SEED + i)).save(out / name)
    np.save(out / "class_embeddings.npy", rng.normal(size=(NUM_CLASSES, EMBED_DIM)).astype(np.float32))
    np.save(out / "custom_vocabulary.npy", rng.normal(size=(3, EMBED_DIM)).astype(np.float32))
    counts = rng.integers(1, 1000, NUM_CLASSES)
    counts[ZERO_COUNT_CLASSES] = 0
    (out / "cat_info.json").write_text(json.dumps([{"id": i + 1, "name": f"class {i}", "image_count": int(c)}
                                                   for i, c in enumerate(counts)]))
    batches = {"box": _box_annotations(), "image": _image_annotations()}
    (out / "batches.json").write_text(json.dumps(batches, indent=1))

    cfg = detic_cfg(root, out)
    torch.manual_seed(SEED)
    model = build_model(cfg)
    randomize_(model, SEED)
    model.eval()
    torch.save({"model": model.state_dict()}, out / "detic_model.pth")

    inputs = test_inputs(cfg, out)
    outputs = run_inference(model, inputs)
    losses, train_proposals = {}, {}
    for kind, spec in batches.items():
        losses[kind], train_proposals[kind] = run_losses(model, load_batch(spec, out), LOSS_SEEDS[kind])
    # the BoxSup stage's model (no image labels) on the same weights: the box batch's losses
    boxsup = build_model(detic_cfg(root, out, BOXSUP_CONFIG))
    boxsup.load_state_dict(model.state_dict())
    losses["boxsup_box"], train_proposals["boxsup_box"] = run_losses(
        boxsup.eval(), load_batch(batches["box"], out), LOSS_SEEDS["box"])
    # Detic's demo with a custom vocabulary: reset_cls_test, the same detector, other classes
    reset_cls_test(model, str(out / "custom_vocabulary.npy"), 3)
    custom = run_inference(model, inputs)
    outputs.update({f"custom.{k}": v for k, v in custom.items() if k.split(".")[1] in ("scores", "classes", "boxes")})
    # clones: a view would save its whole storage
    outputs = {k: v.detach().clone() for k, v in outputs.items()}
    torch.save({"outputs": outputs, "losses": losses, "train_proposals": train_proposals}, out / "detic_outputs.pt")
    meta = {"source": "facebookresearch/Detic " + CONFIG + " with xingyizhou/CenterNet2 8745e01, detectron2 0.6, CPU",
            "written_by": "tests/golden/make_detic_golden.py", "arch": ARCH, "width_opts": WIDTH_OPTS,
            "num_classes": NUM_CLASSES, "embed_dim": EMBED_DIM, "seed": SEED, "loss_seeds": LOSS_SEEDS,
            "mask_topk": MASK_TOPK, "test_size": [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST],
            "images": IMAGES}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    n = {i: len(outputs[f"img{i}.scores"]) for i in range(2)}
    print(f"wrote {out}: detections {n}, losses {json.dumps(losses, indent=1)}")


if __name__ == "__main__":
    main()
