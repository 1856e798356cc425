"""Detic's config keys in a pomp_det config, so Detic's config files load as they are: each
key is either detectron2's or ours under the same name, renamed to ours (``ALIASES``), has a
value translated (``VALUES``), is accepted with no effect for the reason given (``NO_EFFECT``),
or is refused in one line that says why and names our key (``FIXED``, ``UNSUPPORTED``).
tests/fixtures/detic_config_keys.json lists every key Detic's configs use."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

# Detic key -> ours; the value goes across unchanged
ALIASES = {
    "MODEL.ROI_BOX_HEAD.ZEROSHOT_WEIGHT_PATH": "MODEL.POMP.EMBEDDINGS",
    "MODEL.ROI_BOX_HEAD.ZEROSHOT_WEIGHT_DIM": "MODEL.POMP.EMBED_DIM",
    "MODEL.ROI_BOX_HEAD.NORM_TEMP": "MODEL.POMP.TEMPERATURE",
    "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE": "MODEL.POMP.USE_SIGMOID_CE",
    "MODEL.ROI_BOX_HEAD.USE_FED_LOSS": "MODEL.POMP.USE_FED_LOSS",
    "MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CAT": "MODEL.POMP.FED_LOSS_NUM_CLASSES",
    "MODEL.ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT": "MODEL.POMP.FED_LOSS_FREQ_WEIGHT",
    "MODEL.ROI_BOX_HEAD.CAT_FREQ_PATH": "MODEL.POMP.CAT_FREQ_PATH",
    "MODEL.ROI_BOX_HEAD.MULT_PROPOSAL_SCORE": "MODEL.POMP.MULT_PROPOSAL_SCORE",
    "MODEL.ROI_BOX_HEAD.IMAGE_LABEL_LOSS": "MODEL.POMP.IMAGE_LABEL_LOSS",
    "MODEL.ROI_BOX_HEAD.IMAGE_LOSS_WEIGHT": "MODEL.POMP.IMAGE_LABEL_WEIGHT",
    "MODEL.ROI_BOX_HEAD.WS_NUM_PROPS": "MODEL.POMP.IMAGE_LABEL_TOPK",
    "MODEL.TEST_CLASSIFIERS": "MODEL.POMP.TEST_VOCABULARIES",
    "DATALOADER.DATASET_BS": "DATALOADER.DATASET_BATCH_SIZE",
    "DATALOADER.DATASET_ANN": "DATALOADER.DATASET_ANN_TYPE",
    "DATALOADER.DATASET_INPUT_SIZE": "INPUT.DATASET_INPUT_SIZE",
    "DATALOADER.DATASET_INPUT_SCALE": "INPUT.DATASET_INPUT_SCALE",
    "DATALOADER.DATASET_MIN_SIZES": "INPUT.DATASET_MIN_SIZE",
    "DATALOADER.DATASET_MAX_SIZES": "INPUT.DATASET_MAX_SIZE",
    "WITH_IMAGE_LABELS": "DATALOADER.MULTI_DATASET",
}
# Detic's names of registered classes -> ours (other values go across unchanged)
VALUES = {
    "MODEL.META_ARCHITECTURE": {"CustomRCNN": "PompRCNN"},
    "MODEL.ROI_HEADS.NAME": {"DeticCascadeROIHeads": "PompCascadeROIHeads"},
    "MODEL.BACKBONE.NAME": {"build_p67_timm_fpn_backbone": "build_pomp_timm_p67_fpn_backbone"},
}
# accepted, no effect in pomp_det
NO_EFFECT = {
    "MODEL.CENTERNET.NUM_CLASSES": "with ONLY_PROPOSAL (the only mode) no per-class heatmap is built",
    "SOLVER.USE_CUSTOM_SOLVER": "pomp_det's optimizer always reads SOLVER.OPTIMIZER (SGD is detectron2's)",
    "MODEL.RESET_CLS_TESTS": "MODEL.POMP.TEST_VOCABULARIES (Detic's TEST_CLASSIFIERS) applies whenever given",
    "MODEL.TEST_NUM_CLASSES": "the class count comes from each test vocabulary's file",
}
# Detic keys whose value pomp_det always has (another value is refused)
FIXED = {"MODEL.ROI_BOX_HEAD.USE_ZEROSHOT_CLS": True, "MODEL.ROI_BOX_HEAD.NORM_WEIGHT": True,
         "DATALOADER.USE_DIFF_BS_SIZE": True, "DATALOADER.MULTI_DATASET_GROUPING": True,
         "MODEL.CENTERNET.NOT_NORM_REG": True, "EVAL_PROPOSAL_AR": False,
         "MODEL.ROI_BOX_HEAD.ADD_IMAGE_BOX": False, "MODEL.DYNAMIC_CLASSIFIER": False,
         "MODEL.WITH_CAPTION": False}
FIXED_WHY = {"MODEL.ROI_BOX_HEAD.USE_ZEROSHOT_CLS": "the classifier is always the text-embedding one (MODEL.POMP.EMBEDDINGS)",
             "MODEL.ROI_BOX_HEAD.NORM_WEIGHT": "the class embeddings are always unit-normalised (MODEL.POMP.TEMPERATURE scales them)",
             "DATALOADER.USE_DIFF_BS_SIZE": "the batch size is always per dataset (DATALOADER.DATASET_BATCH_SIZE)",
             "DATALOADER.MULTI_DATASET_GROUPING": "each batch always holds one dataset (DATALOADER.MULTI_DATASET)",
             "MODEL.CENTERNET.NOT_NORM_REG": "the box loss is always averaged over the regressed locations (MODEL.CENTERNET.REG_WEIGHT scales it)",
             "EVAL_PROPOSAL_AR": "proposal recall is not evaluated (TEST.EVAL_PERIOD evaluates boxes and masks)",
             "MODEL.ROI_BOX_HEAD.ADD_IMAGE_BOX": "the image-box and caption losses are not implemented (MODEL.POMP.IMAGE_LABEL_LOSS)",
             "MODEL.DYNAMIC_CLASSIFIER": "the 21K-class sampled classifier is not implemented (MODEL.POMP.FED_LOSS_NUM_CLASSES)",
             "MODEL.WITH_CAPTION": "the caption loss is not implemented (MODEL.POMP.IMAGE_LABEL_LOSS)"}
_DETR = "Deformable DETR is not in pomp_det: use a CenterNet2 config (MODEL.PROPOSAL_GENERATOR.NAME CenterNet)"
_CAPTION = "captions are not supported: image labels are (MODEL.POMP.IMAGE_LABEL_LOSS)"
# key, or key prefix ending in ".", -> why it is refused and what to use
UNSUPPORTED = {
    "MODEL.DETR.": _DETR,
    "SOLVER.CUSTOM_MULTIPLIER": _DETR,
    "SOLVER.CUSTOM_MULTIPLIER_NAME": _DETR,
    "MODEL.SWIN.": "Swin backbones are not in pomp_det: use MODEL.BACKBONE.NAME build_pomp_timm_p67_fpn_backbone",
    "MODEL.SYNC_CAPTION_BATCH": _CAPTION,
    "MODEL.ROI_BOX_HEAD.NEG_CAP_WEIGHT": _CAPTION,
    "MODEL.ROI_BOX_HEAD.IGNORE_ZERO_CATS": "zero-count classes are not masked out of the loss: set their weight "
                                          "with MODEL.POMP.FED_LOSS_WEIGHTS train_boxes",
    "MODEL.TIMM.PRETRAINED": "nothing is downloaded: give a local checkpoint of the backbone as MODEL.TIMM.CHECKPOINT",
    "DATALOADER.USE_TAR_DATASET": "ImageNet-21K tar shards are not read: register the images as an image-label "
                                  "dataset (pomp_det.data.image_labels) and list it in DATASETS.TRAIN",
}
# (key, value) -> why that value is refused
UNSUPPORTED_VALUES = {
    ("MODEL.META_ARCHITECTURE", "DeformableDetr"): _DETR,
    ("MODEL.BACKBONE.NAME", "build_swintransformer_fpn_backbone"): UNSUPPORTED["MODEL.SWIN."],
    ("MODEL.ROI_HEADS.NAME", "CustomRes5ROIHeads"): "C4 heads are not in pomp_det: use an FPN or cascade config "
                                                    "(MODEL.ROI_HEADS.NAME PompROIHeads / PompCascadeROIHeads)",
    ("INPUT.CUSTOM_AUG", "DETR"): _DETR,
}
# Detic's INPUT.CUSTOM_AUG -> our INPUT.DATASET_AUG ("" = detectron2's mapper, MIN_SIZE_TRAIN)
AUGMENTATIONS = {"": "resize_shortest_edge", "ResizeShortestEdge": "resize_shortest_edge",
                 "EfficientDetResizeCrop": "resize_scale_crop"}


class UnsupportedDeticKey(ValueError):
    """A Detic config key or value pomp_det cannot honour (one line: why, and our key)."""


def _refusal(key: str, value: Any) -> str:
    if isinstance(value, str) and (key, value) in UNSUPPORTED_VALUES:
        return f"Detic's {key} {value} is not supported by pomp_det: {UNSUPPORTED_VALUES[key, value]}"
    if key == "INPUT.CUSTOM_AUG" and value not in AUGMENTATIONS:
        return (f"Detic's {key} {value!r} is not one of {sorted(AUGMENTATIONS)}: INPUT.DATASET_AUG takes "
                "resize_scale_crop or resize_shortest_edge")
    if key in FIXED and value != FIXED[key]:
        return f"Detic's {key} {value} is not supported by pomp_det ({FIXED[key]} only): {FIXED_WHY[key]}"
    for name, why in UNSUPPORTED.items():
        if key == name or (name.endswith(".") and key.startswith(name)):
            return f"Detic's {key} is not supported by pomp_det: {why}"
    if key == "DATALOADER.DATASET_ANN" and any(v not in ("box", "image") for v in value):
        return f"Detic's {key} {list(value)}: {_CAPTION}; DATALOADER.DATASET_ANN_TYPE takes box or image"
    return ""


def _convert(key: str, value: Any, flat: Dict[str, Any]) -> List[Tuple[str, Any]]:
    if key in ALIASES:
        return [(ALIASES[key], value)]
    if key in VALUES:
        return [(key, VALUES[key].get(value, value) if isinstance(value, str) else value)]
    if key in FIXED or key in NO_EFFECT:
        return []
    if key == "DATALOADER.SAMPLER_TRAIN":  # Detic names its multi-dataset loader by its sampler
        return [("DATALOADER.MULTI_DATASET", True)] if value == "MultiDatasetSampler" else [(key, value)]
    if key == "MODEL.ROI_BOX_HEAD.USE_BIAS":  # Detic: < 0 = a bias starting there
        return [("MODEL.POMP.USE_BIAS", float(value) < 0), ("MODEL.POMP.BIAS_INIT", float(value))]
    if key == "INPUT.CUSTOM_AUG":
        return [("INPUT.DATASET_AUG", AUGMENTATIONS[value])]
    if key == "INPUT.TRAIN_SIZE":  # Detic's single-dataset size; the per-dataset list wins
        return [] if "DATALOADER.DATASET_INPUT_SIZE" in flat else [("INPUT.DATASET_INPUT_SIZE", [value])]
    if key == "INPUT.SCALE_RANGE":
        return [] if "DATALOADER.DATASET_INPUT_SCALE" in flat else [("INPUT.DATASET_INPUT_SCALE", [list(value)])]
    return [(key, value)]


def translate(flat: Dict[str, Any]) -> Dict[str, Any]:
    """``{dotted key: value}`` with Detic's keys and class names as pomp_det's;
    :class:`UnsupportedDeticKey` for what pomp_det cannot honour."""
    out = {}
    for key, value in flat.items():
        why = _refusal(key, value)
        if why:
            raise UnsupportedDeticKey(why)
        out.update(_convert(key, value, flat))
    return out


def flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
