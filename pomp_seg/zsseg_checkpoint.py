"""ZSSeg / POMP-release checkpoints in pomp_seg: the key maps from detectron2's DeepLab ResNet
(``R-103.pkl``) to mmseg's ``ResNetV1c`` and from zsseg's stage-(b) ``ZeroShotMaskFormer``
(``*_zero_shot_maskformer_R101c_pomp_*.pth``) to :class:`ZSSegSegmentor`, with a report of
what was mapped, set aside and left over (as ``pomp_det.detic_checkpoint`` does for Detic).

    python -m pomp_seg.zsseg_checkpoint backbone R-103.pkl --out checkpoints/R-103_mmseg.pth
    python -m pomp_seg.zsseg_checkpoint model voc_zero_shot_maskformer_R101c_pomp.pth \\
        --config configs/seg/zsseg-r101c_voc12aug-512x512.py --out checkpoints/voc_pomp_mmseg.pth \\
        --prompt-out checkpoints/voc_pomp_prompt.pth

The first writes the backbone's ``init_cfg`` checkpoint; the second an mmseg checkpoint for
``tools/test_seg.py`` / ``tools/demo_seg.py`` and the checkpoint's prompt as a prompt file for
``model.text_encoder.prompt``.
"""
from __future__ import annotations

import argparse
import pickle
import re
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from pomp_core.key_report import KeyReport

# -- detectron2 ResNet (DeepLab stem) -> mmseg ResNetV1c --------------------------------------
_BN = r"(weight|bias|running_mean|running_var)"
RESNET_RENAMES = [
    (rf"stem\.conv([123])\.norm\.{_BN}", lambda m: f"stem.{3 * int(m[1]) - 2}.{m[2]}"),
    (r"stem\.conv([123])\.weight", lambda m: f"stem.{3 * int(m[1]) - 3}.weight"),
    (rf"res([2-5])\.(\d+)\.conv([123])\.norm\.{_BN}", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}.{m[4]}"),
    (r"res([2-5])\.(\d+)\.conv([123])\.weight", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}.weight"),
    (rf"res([2-5])\.(\d+)\.shortcut\.norm\.{_BN}", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.1.{m[3]}"),
    (r"res([2-5])\.(\d+)\.shortcut\.weight", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.0.weight"),
]
RESNET_SET_ASIDE = {
    r"(fc|linear)\d*\.(weight|bias)": "the ImageNet classifier of the pre-trained ResNet; segmentation does not use it",
    r"stem\.fc\.(weight|bias)": "the ImageNet classifier of the pre-trained ResNet; segmentation does not use it",
}


def _rename(key: str, table: Sequence[Tuple[str, Callable[[re.Match], str]]]) -> Optional[str]:
    for pattern, repl in table:
        m = re.fullmatch(pattern, key)
        if m:
            return repl(m)
    return None


def resnet_key(d2_key: str) -> Optional[str]:
    """mmseg ``ResNetV1c`` name of a detectron2 ResNet key (DeepLab stem; ``backbone.`` prefix
    allowed), or None when it has no counterpart."""
    return _rename(d2_key[len("backbone."):] if d2_key.startswith("backbone.") else d2_key, RESNET_RENAMES)


# -- zsseg ZeroShotMaskFormer -> ZSSegSegmentor ----------------------------------------------
_CLIP_TEXT = r"(token_embedding\..+|positional_embedding|transformer\..+|ln_final\..+|text_projection)"
_DEC = r"sem_seg_head\.predictor\.transformer\.decoder\.layers\.(\d+)\."
_PIX = r"sem_seg_head\.pixel_decoder\."
MODEL_RENAMES = [
    (r"backbone\.(.+)", lambda m: None if resnet_key(m[1]) is None else "backbone." + resnet_key(m[1])),
    (_PIX + r"adapter_(\d+)\.weight", lambda m: f"decode_head.pixel_decoder.lateral_convs.{int(m[1]) - 1}.conv.weight"),
    (_PIX + r"adapter_(\d+)\.norm\.(weight|bias)",
     lambda m: f"decode_head.pixel_decoder.lateral_convs.{int(m[1]) - 1}.gn.{m[2]}"),
    # layer_1..layer_{n-1} refine the lateral sums (output_convs); the resolver turns the
    # last one (on res5 alone) into last_feat_conv
    (_PIX + r"layer_(\d+)\.weight", lambda m: f"decode_head.pixel_decoder.output_convs.{int(m[1]) - 1}.conv.weight"),
    (_PIX + r"layer_(\d+)\.norm\.(weight|bias)",
     lambda m: f"decode_head.pixel_decoder.output_convs.{int(m[1]) - 1}.gn.{m[2]}"),
    (_PIX + r"mask_features\.(weight|bias)", lambda m: f"decode_head.pixel_decoder.mask_feature.{m[1]}"),
    (r"sem_seg_head\.predictor\.query_embed\.weight", lambda m: "decode_head.query_embed.weight"),
    (r"sem_seg_head\.predictor\.input_proj\.(weight|bias)", lambda m: f"decode_head.decoder_input_proj.{m[1]}"),
    (_DEC + r"self_attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
     lambda m: f"decode_head.transformer_decoder.layers.{m[1]}.self_attn.attn.{m[2]}"),
    (_DEC + r"multihead_attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
     lambda m: f"decode_head.transformer_decoder.layers.{m[1]}.cross_attn.attn.{m[2]}"),
    (_DEC + r"linear1\.(weight|bias)", lambda m: f"decode_head.transformer_decoder.layers.{m[1]}.ffn.layers.0.0.{m[2]}"),
    (_DEC + r"linear2\.(weight|bias)", lambda m: f"decode_head.transformer_decoder.layers.{m[1]}.ffn.layers.1.{m[2]}"),
    (_DEC + r"norm([123])\.(weight|bias)",
     lambda m: f"decode_head.transformer_decoder.layers.{m[1]}.norms.{int(m[2]) - 1}.{m[3]}"),
    (r"sem_seg_head\.predictor\.transformer\.decoder\.norm\.(weight|bias)",
     lambda m: f"decode_head.transformer_decoder.post_norm.{m[1]}"),
    # DETR's MLP keeps its Linear layers in a list; ours are Sequential(Linear, ReLU, ...)
    (r"sem_seg_head\.predictor\.mask_embed\.layers\.(\d+)\.(weight|bias)",
     lambda m: f"decode_head.mask_embed.{2 * int(m[1])}.{m[2]}"),
    (r"sem_seg_head\.predictor\.class_embed\.layers\.(\d+)\.(weight|bias)",
     lambda m: f"decode_head.cls_embed.proj.{2 * int(m[1])}.{m[2]}"),
    (r"clip_adapter\.non_object_embedding", lambda m: "decode_head.cls_embed.no_object"),
    # the POMP prompt (POMPPromptExtractor.ctx) or zsseg's learnable prefix (no suffix)
    (r"clip_adapter\.prompt_learner\.(ctx|prefix_prompt)", lambda m: "text_encoder.prompt.ctx"),
    (r"region_clip_adapter\.prompt_learner\.(ctx|prefix_prompt)", lambda m: "region_text_encoder.prompt.ctx"),
    (r"clip_adapter\.clip_model\.(visual\..+)", lambda m: f"crop_classifier.{m[1]}"),
    (r"clip_adapter\.clip_model\." + _CLIP_TEXT, lambda m: f"text_encoder.text.{m[1]}"),
]
MODEL_SET_ASIDE = {
    r"clip_adapter\.clip_model\.logit_scale": "zsseg scores queries and crops with a fixed temperature 100 "
                                              "(ClipAdapter.get_sim_logits): model.clip_temperature",
    r"(region_)?clip_adapter\.prompt_learner\.(start|dot|end|pad)_signal":
        "embeddings of CLIP's SOS, '.', EOS and pad tokens; our encoder reads them from CLIP's token embedding",
    r"region_clip_adapter\.clip_model\..+": "a second copy of the same frozen CLIP; ours is shared",
    r"region_clip_adapter\.non_object_embedding": "unused: zsseg drops the crops' no-object column before the softmax",
    r"(region_)?clip_adapter\.pixel_(mean|std)": "CLIP's pixel statistics: pomp_seg.clip.CLIP_MEAN / CLIP_STD",
    r"pixel_(mean|std)": "the backbone's input statistics: model.data_preprocessor.mean / std",
    r"criterion\.empty_weight": "the no-object class weight 0.1: decode_head.loss_cls.class_weight",
}
# Our keys nothing in a detectron2 checkpoint fills, and the value they get.
FILLED = {r".*\.num_batches_tracked": "0 (detectron2's FrozenBatchNorm2d counts no batches)"}


def _last_feat_conv(key: str, their_keys: Sequence[str]) -> str:
    """zsseg's pixel decoder names its res5 conv ``layer_<n>`` after the n-1 lateral levels;
    mmdet's PixelDecoder calls it ``last_feat_conv``."""
    m = re.search(r"output_convs\.(\d+)\.", key)
    if m is None:
        return key
    n_levels = 1 + sum(1 for k in their_keys if re.fullmatch(_PIX + r"adapter_\d+\.weight", k))
    return key.replace(f"output_convs.{m[1]}.", "last_feat_conv.") if int(m[1]) == n_levels - 1 else key


def model_keys(key: str, their_keys: Sequence[str], our_keys: Sequence[str]) -> List[str]:
    """Our names for a zsseg key ([] when it has none). CLIP's text tower goes to every text
    encoder we have (they share one CLIP), and a one-layer query projection is a Linear."""
    ours = _rename(key, MODEL_RENAMES)
    if ours is None:
        return []
    ours = _last_feat_conv(ours, their_keys)
    if ours.startswith("decode_head.cls_embed.proj.") and ours not in our_keys:
        ours = re.sub(r"proj\.0\.", "proj.", ours)  # embed_layers=1: proj is one Linear
    if ours.startswith("text_encoder.text.") and "region_text_encoder.text." + ours[len("text_encoder.text."):] in our_keys:
        return [ours, "region_" + ours]
    return [ours]


def map_keys(their_shapes: Mapping[str, Sequence[int]], our_shapes: Mapping[str, Sequence[int]],
             rename: Callable[[str, Sequence[str], Sequence[str]], List[str]],
             set_aside: Mapping[str, str]) -> KeyReport:
    """Match a checkpoint's keys (name -> shape) onto ours."""
    report = KeyReport(one_to_many=True)
    theirs, ours_keys = list(their_shapes), list(our_shapes)
    for key, shape in their_shapes.items():
        reason = next((r for p, r in set_aside.items() if re.fullmatch(p, key)), None)
        if reason is not None:
            report.set_aside[key] = reason
            continue
        ours = rename(key, theirs, ours_keys)
        if not ours or any(o not in our_shapes for o in ours):
            report.unexpected.append(key)
        elif any(tuple(our_shapes[o]) != tuple(shape) for o in ours):
            report.wrong_shape.append((key, tuple(shape), tuple(our_shapes[ours[0]])))
        else:
            report.mapped[key] = ours
    taken = {o for v in report.mapped.values() for o in v}
    taken |= {o for k, _, _ in report.wrong_shape for o in rename(k, theirs, ours_keys)}
    for key in our_shapes:
        if key in taken:
            continue
        value = next((v for p, v in FILLED.items() if re.fullmatch(p, key)), None)
        if value is not None:
            report.filled[key] = value
        else:
            report.missing.append(key)
    return report


def _converted(state: Mapping[str, torch.Tensor], report: KeyReport,
               our_state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {o: torch.as_tensor(state[k]).to(our_state[o].dtype) for k, v in report.mapped.items() for o in v}
    out.update({k: torch.zeros_like(our_state[k]) for k in report.filled})
    return out


def convert_backbone(state: Mapping[str, torch.Tensor], backbone: torch.nn.Module) -> Tuple[Dict[str, torch.Tensor], KeyReport]:
    """detectron2 ResNet weights (``R-103.pkl``'s) renamed onto an mmseg ``ResNetV1c``."""
    ours = backbone.state_dict()
    report = map_keys({k: tuple(np.shape(v)) for k, v in state.items()}, {k: tuple(v.shape) for k, v in ours.items()},
                      lambda k, _t, _o: [resnet_key(k)] if resnet_key(k) else [], RESNET_SET_ASIDE)
    if not report.ok:
        raise ValueError("the ResNet weights do not fit this backbone (ResNetV1c, depth 101, stem_channels=128 "
                         "for R-103):\n" + report.summary())
    return _converted(state, report, ours), report


def convert_model(state: Mapping[str, torch.Tensor], model: torch.nn.Module) -> Tuple[Dict[str, torch.Tensor], KeyReport]:
    """zsseg's ZeroShotMaskFormer state dict renamed onto a :class:`ZSSegSegmentor`, and the
    report; raises when anything is unexpected, missing or of another shape."""
    ours = model.state_dict()
    set_aside = dict(MODEL_SET_ASIDE)
    if not any(k.startswith("crop_classifier.") for k in ours):
        set_aside[r"clip_adapter\.clip_model\.visual\..+"] = "CLIP's visual tower: this model has no crop ensemble " \
                                                              "(ensemble_lambda=None)"
    report = map_keys({k: tuple(v.shape) for k, v in state.items()}, {k: tuple(v.shape) for k, v in ours.items()},
                      model_keys, set_aside)
    if not report.ok:
        raise ValueError("the zsseg checkpoint does not fit this model (a zsseg_r101c config at the checkpoint's "
                         "widths, region_text_encoder=None unless it has a region_clip_adapter):\n"
                         + report.summary())
    return _converted(state, report, ours), report


def read_r103(path: str) -> Dict[str, np.ndarray]:
    """The weights of a detectron2 model-zoo pickle (``{'model': {name: ndarray}, '__author__': ...}``)."""
    with open(path, "rb") as f:
        try:
            data = pickle.load(f, encoding="latin1")
        except Exception as e:
            raise ValueError(f"{path}: not a detectron2 .pkl ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("model", data.get("blobs")), dict):
        raise ValueError(f"{path}: expected {{'model': {{name: array}}, '__author__': ...}} (detectron2's model zoo)")
    return dict(data.get("model", data.get("blobs")))


def read_zsseg(path: str) -> Dict[str, torch.Tensor]:
    """The state dict of a zsseg / detectron2 checkpoint (``{"model": state_dict, ...}``)."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a plain tensor checkpoint ({e})") from e
    state = raw.get("model", raw) if isinstance(raw, dict) else raw
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: no state dict found (expected {{'model': {{name: tensor}}}})")
    return dict(state)


def prompt_ctx(state: Mapping[str, torch.Tensor], region: bool = False) -> torch.Tensor:
    """The checkpoint's prompt context [M, D] (the query prompt, or the crops' with ``region``)."""
    owner = "region_clip_adapter" if region else "clip_adapter"
    for name in ("ctx", "prefix_prompt"):
        if f"{owner}.prompt_learner.{name}" in state:
            return state[f"{owner}.prompt_learner.{name}"].float()
    raise KeyError(f"{owner}.prompt_learner has no ctx in this checkpoint: its text side is a hand template "
                   "(PROMPT_LEARNER predefined / imagenet / vild); configure text_encoder.templates instead")


def build_for_conversion(config: str, state: Mapping[str, torch.Tensor], options: Optional[dict] = None):
    """Our segmentor from ``config`` with random CLIP weights (the checkpoint holds CLIP) and
    prompts of the checkpoint's length (their values come from the checkpoint too)."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    cfg = Config.fromfile(config)
    cfg.merge_from_dict(options or {})
    init_default_scope("mmseg")
    model_cfg = cfg.model
    model_cfg.backbone.init_cfg = None
    for name in ("text_encoder", "region_text_encoder"):
        enc = model_cfg.get(name)
        if enc is None:
            continue
        region = name == "region_text_encoder"
        try:
            n_ctx = prompt_ctx(state, region).shape[0]
            enc.update(prompt=None, templates=None, init_words=" ".join(["X"] * n_ctx))
        except KeyError:  # a hand-template text side: the config's templates stay
            pass
        if not region:
            enc.update(clip_pretrained=None)
    return MODELS.build(model_cfg)


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    b = sub.add_parser("backbone", help="detectron2's R-103.pkl -> the mmseg ResNetV1c init_cfg checkpoint")
    b.add_argument("pkl")
    b.add_argument("--out", required=True)
    b.add_argument("--depth", type=int, default=101)
    b.add_argument("--stem-channels", type=int, default=128)
    m = sub.add_parser("model", help="a zsseg / POMP-release stage-(b) checkpoint -> an mmseg checkpoint")
    m.add_argument("checkpoint")
    m.add_argument("--config", required=True, help="a pomp_seg zsseg-r101c config (the checkpoint's dataset)")
    m.add_argument("--out", required=True)
    m.add_argument("--prompt-out", default="", help="also write the checkpoint's prompt as a prompt file")
    m.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    from pomp_core.cli import require_file

    require_file(args.pkl if args.what == "backbone" else args.checkpoint, "checkpoint",
                 "download it first (see docs/segmentation.md, 'The published models')")
    if args.what == "model":
        require_file(args.config, "--config")
    if args.what == "backbone":
        from mmengine.registry import init_default_scope
        from mmseg.registry import MODELS

        init_default_scope("mmseg")
        backbone = MODELS.build(dict(type="ResNetV1c", depth=args.depth, stem_channels=args.stem_channels,
                                     multi_grid=(1, 2, 4), contract_dilation=True))
        converted, report = convert_backbone(read_r103(args.pkl), backbone)
        torch.save({"state_dict": converted}, args.out)
    else:
        from mmengine.config import DictAction

        state = read_zsseg(args.checkpoint)
        opts = {k: DictAction._parse_iterable(v) for k, _, v in (o.partition("=") for o in args.cfg_options)}
        model = build_for_conversion(args.config, state, opts)
        converted, report = convert_model(state, model)
        torch.save({"meta": {"converted_from": args.checkpoint}, "state_dict": converted}, args.out)
        if args.prompt_out:
            from pomp_core import PromptLearner, save_prompt

            ctx = prompt_ctx(state)
            save_prompt(PromptLearner(n_ctx=ctx.shape[0], width=ctx.shape[1], ctx=ctx), args.prompt_out,
                        source=args.checkpoint)
    print(report.summary())
    print(f"wrote {args.out}" + (f" and {args.prompt_out}" if getattr(args, "prompt_out", "") else ""))


if __name__ == "__main__":
    from pomp_core.cli import run_tool

    run_tool(main)
