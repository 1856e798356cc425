"""Released Detic checkpoints in pomp_det: the key map from Detic's CenterNet2 model
(``Detic_LbaseI_CLIP_R5021k_640b64_4x_ft4x_max-size`` and its BoxSup stage) to the model of
``configs/det/centernet2/``, with a report of what was mapped, set aside and left over.

    python -m pomp_det.detic_checkpoint Detic_LbaseI_CLIP_R5021k_640b64_4x_ft4x_max-size.pth \
        --out models/detic_c2_r50_pomp.pth --embeddings-out datasets/metadata/lvis_v1_detic.npy

writes a detectron2 checkpoint for ``MODEL.WEIGHTS`` and the checkpoint's own class embeddings
(its ``zs_weight``, [C, D], float32 as Detic keeps them) for ``MODEL.POMP.EMBEDDINGS``; another
``.npy`` (a POMP export, another vocabulary) goes in their place.
"""
from __future__ import annotations

import argparse
import re
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from pomp_core.key_report import KeyReport

# Detic keys pomp_det keeps elsewhere or does not build, with the reason (regex -> reason)
SET_ASIDE = {
    r"backbone\.bottom_up\.base\.fc\.(weight|bias)": "the pre-trained backbone's ImageNet-21K classifier; "
                                                    "the detector does not use it",
    r"roi_heads\.box_predictor\.\d+\.cls_score\.zs_weight": "Detic's class embeddings (D x C+1); pomp_det "
                                                           "takes the vocabulary from the config: see embeddings",
    r"roi_heads\.box_predictor\.\d+\.freq_weight": "federated-loss class weights; pomp_det computes them "
                                                  "from the config",
}
# Detic name -> pomp_det name (everything else keeps its name: the modules are built alike)
RENAMES = [(r"(roi_heads\.box_predictor\.\d+\.cls_score)\.cls_bias$", r"\1.bias")]
EMBEDDINGS_KEY = "roi_heads.box_predictor.0.cls_score.zs_weight"


def our_key(detic_key: str) -> Optional[str]:
    """Our name for a Detic key, or None when it is set aside."""
    if any(re.fullmatch(p, detic_key) for p in SET_ASIDE):
        return None
    for pattern, repl in RENAMES:
        detic_key = re.sub(pattern, repl, detic_key)
    return detic_key


def map_keys(detic_shapes: Mapping[str, Sequence[int]], our_shapes: Mapping[str, Sequence[int]]) -> KeyReport:
    """Match Detic's state-dict keys (name -> shape) onto ours."""
    report = KeyReport()
    for key, shape in detic_shapes.items():
        ours = our_key(key)
        if ours is None:
            report.set_aside[key] = next(r for p, r in SET_ASIDE.items() if re.fullmatch(p, key))
        elif ours not in our_shapes:
            report.unexpected.append(key)
        elif tuple(our_shapes[ours]) != tuple(shape):
            report.wrong_shape.append((key, tuple(shape), tuple(our_shapes[ours])))
        else:
            report.mapped[key] = ours
    filled = set(report.mapped.values()) | {our_key(k) for k, _, _ in report.wrong_shape}
    report.missing = sorted(k for k in our_shapes if k not in filled)
    return report


def detic_embeddings(state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Detic's class embeddings as pomp_det wants them: [C, D] (zs_weight without the
    background column, transposed)."""
    if EMBEDDINGS_KEY not in state:
        raise KeyError(f"{EMBEDDINGS_KEY} is not in the checkpoint: is it a Detic zero-shot (CLIP) model?")
    return state[EMBEDDINGS_KEY][:, :-1].t().float().contiguous()


def read_checkpoint(path: str) -> Dict[str, torch.Tensor]:
    """The state dict of a Detic / detectron2 checkpoint (``{"model": state_dict, ...}``)."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a plain tensor checkpoint ({e})") from e
    state = raw.get("model", raw) if isinstance(raw, dict) else raw
    if not isinstance(state, dict):
        raise ValueError(f"{path}: no state dict found (expected {{'model': {{name: tensor}}}})")
    return {k: torch.as_tensor(v) for k, v in state.items()}


def convert(state: Mapping[str, torch.Tensor], model: torch.nn.Module) -> Tuple[Dict[str, torch.Tensor], KeyReport]:
    """Detic's state dict renamed onto ``model``'s keys, and the report; raises when anything
    is unexpected, missing or of another shape."""
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    report = map_keys({k: tuple(v.shape) for k, v in state.items()}, ours)
    if not report.ok:
        raise ValueError("the Detic checkpoint does not fit this model (built from configs/det/centernet2/?):\n"
                         + report.summary())
    return {report.mapped[k]: state[k] for k in report.mapped}, report


def load_detic_checkpoint(model: torch.nn.Module, path: str, use_embeddings: bool = True) -> KeyReport:
    """Load a released Detic checkpoint into a model built from configs/det/centernet2/;
    with ``use_embeddings`` the model also takes Detic's own vocabulary (its zs_weight)."""
    state = read_checkpoint(path)
    converted, report = convert(state, model)
    model.load_state_dict(converted, strict=True)
    if use_embeddings:
        model.roi_heads.set_class_embeddings(detic_embeddings(state))
    return report


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a released Detic .pth (CenterNet2, R50 / timm)")
    p.add_argument("--out", required=True, help="detectron2 checkpoint for MODEL.WEIGHTS")
    p.add_argument("--embeddings-out", default="", help="write Detic's class embeddings [C, D] here (.npy)")
    p.add_argument("--config-file", default="configs/det/centernet2/Detic_LbaseI_pomp_R5021k_640b64_4x_ft4x_max-size.yaml")
    p.add_argument("opts", nargs="*", help="config overrides KEY VALUE ...")
    args = p.parse_intermixed_args(argv)

    from detectron2.modeling import build_model

    from pomp_det import load_pomp_cfg

    state = read_checkpoint(args.checkpoint)
    emb = detic_embeddings(state)
    cfg = load_pomp_cfg(args.config_file, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.TIMM.CHECKPOINT", "",
                                           "MODEL.POMP.RANDOM_EMBEDDINGS_SEED", "0", "MODEL.POMP.USE_FED_LOSS", "False",
                                           "MODEL.POMP.EMBED_DIM", str(emb.shape[1]),
                                           "MODEL.ROI_HEADS.NUM_CLASSES", str(emb.shape[0]), *args.opts])
    converted, report = convert(state, build_model(cfg))
    torch.save({"model": converted}, args.out)
    if args.embeddings_out:
        # float32, as Detic keeps its zs_weight: float16 rows move the logits by ~1e-3
        np.save(args.embeddings_out, emb.numpy().astype(np.float32))
    print(report.summary())
    print(f"wrote {args.out}" + (f" and {args.embeddings_out} ({tuple(emb.shape)})" if args.embeddings_out else ""))


if __name__ == "__main__":
    main()
