"""Zero-shot transfer: the classification benchmarks of the prompt-learning literature,
image features cached per CLIP model, results tables, and single-image classification."""
from .datasets import (DATASETS, GROUPS, ClassificationSet, DatasetSpec, build_datasets, get_dataset, load_split_json,
                       read_split_file)
from .evaluate import PromptSpec, evaluate, parse_prompt
from .feature_cache import FeatureCache, ModelIdentity
from .predict import classify
from .report import write_report

__all__ = [
    "DATASETS", "GROUPS", "ClassificationSet", "DatasetSpec", "FeatureCache", "ModelIdentity", "PromptSpec",
    "build_datasets", "classify", "evaluate", "get_dataset", "load_split_json", "parse_prompt", "read_split_file",
    "write_report",
]
