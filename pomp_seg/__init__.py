"""pomp_seg: POMP in mmsegmentation (ZSSeg-style open-vocabulary semantic segmentation).

``custom_imports = dict(imports=['pomp_seg'], allow_failed_imports=False)`` in a config
registers everything here in mmseg's registries.
"""
from .class_records import ClassRecordDataset
from .datasets import (COCO_STUFF_UNSEEN, VOC_UNSEEN, WorldSegDataset, ZeroShotCOCOStuffDataset,
                       ZeroShotVOCDataset, read_class_split, resolve_split)
from .mask_proposal_head import MaskProposalHead
from .metric import SeenUnseenIoUMetric, harmonic_iou
from .prompt_tuning import PromptTuner, SavePromptHook
from .random_text import RandomTextEncoder
from .record_crop import RecordMaskCrop
from .segmentor import ZSSegSegmentor, ensemble_probs, pixel_scores
from .text_classifier import TextEmbeddingClassifier, make_zero_shot
from .text_encoder import POMPTextEncoder

__all__ = [
    "COCO_STUFF_UNSEEN", "ClassRecordDataset", "VOC_UNSEEN", "MaskProposalHead", "POMPTextEncoder", "PromptTuner",
    "RandomTextEncoder", "RecordMaskCrop", "SavePromptHook", "SeenUnseenIoUMetric", "TextEmbeddingClassifier",
    "WorldSegDataset", "ZSSegSegmentor", "ZeroShotCOCOStuffDataset", "ZeroShotVOCDataset",
    "ensemble_probs", "harmonic_iou", "make_zero_shot", "pixel_scores", "read_class_split",
    "resolve_split",
]
