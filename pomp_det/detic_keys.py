"""Detic's config keys in a pomp_det config: each either means one of ours (renamed on merge)
or is refused with the reason, instead of detectron2's bare "Non-existent config key"."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

# Detic key -> ours; values go across unchanged unless noted in _convert
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
    "MODEL.ROI_BOX_HEAD.USE_BIAS": "MODEL.POMP.BIAS_INIT",  # Detic: < 0 = a bias starting there
    "DATALOADER.DATASET_BS": "DATALOADER.DATASET_BATCH_SIZE",
    "DATALOADER.DATASET_ANN": "DATALOADER.DATASET_ANN_TYPE",
    "WITH_IMAGE_LABELS": "DATALOADER.MULTI_DATASET",
    "DATALOADER.DATASET_INPUT_SIZE": "INPUT.DATASET_INPUT_SIZE",
    "DATALOADER.DATASET_INPUT_SCALE": "INPUT.DATASET_INPUT_SCALE",
    "DATALOADER.SAMPLER_TRAIN": "DATALOADER.SAMPLER_TRAIN",  # see _convert
}
# Detic keys whose value pomp_det always has (anything else is refused)
FIXED = {"MODEL.ROI_BOX_HEAD.USE_ZEROSHOT_CLS": True, "MODEL.ROI_BOX_HEAD.NORM_WEIGHT": True,
         "DATALOADER.USE_DIFF_BS_SIZE": True, "DATALOADER.MULTI_DATASET_GROUPING": True,
         "MODEL.ROI_BOX_HEAD.ADD_IMAGE_BOX": False, "MODEL.DYNAMIC_CLASSIFIER": False,
         "MODEL.WITH_CAPTION": False}
UNSUPPORTED = {
    "INPUT.CUSTOM_AUG": "pomp_det's per-dataset augmentation is INPUT.DATASET_AUG (resize_scale_crop = "
                        "Detic's EfficientDetResizeCrop); the single-dataset loader is detectron2's",
}


def _convert(detic_key: str, value: Any) -> List[Tuple[str, Any]]:
    if detic_key == "DATALOADER.SAMPLER_TRAIN":  # Detic names its multi-dataset loader by its sampler
        return [("DATALOADER.MULTI_DATASET", True)] if value == "MultiDatasetSampler" else [(detic_key, value)]
    if detic_key == "MODEL.ROI_BOX_HEAD.USE_BIAS":
        return [("MODEL.POMP.USE_BIAS", float(value) < 0), ("MODEL.POMP.BIAS_INIT", float(value))]
    return [(ALIASES[detic_key], value)]


def translate(flat: Dict[str, Any]) -> Dict[str, Any]:
    """``{dotted key: value}`` with Detic's keys renamed to pomp_det's; ValueError for those
    pomp_det cannot honour."""
    out = {}
    for key, value in flat.items():
        if key in ALIASES:
            out.update(_convert(key, value))
        elif key in FIXED:
            if value != FIXED[key]:
                raise ValueError(f"Detic's {key} {value}: pomp_det supports only {FIXED[key]}")
        elif key in UNSUPPORTED:
            raise ValueError(f"Detic's {key} is not supported by pomp_det: {UNSUPPORTED[key]}")
        else:
            out[key] = value
    return out


def flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
