"""pomp_det: a POMP text-embedding box classifier for detectron2 (Detic-style open-vocabulary
detection). Importing the package registers the ROI heads, the meta-architecture and the
``lvis_v1_train_norare`` and ``imagenet_lvis_v1`` datasets."""
import os

from . import compat, meta_arch, roi_heads, tiny_backbone  # noqa: F401  (side effects: registries, _C build info)
from .cfg_loader import get_pomp_cfg, load_pomp_cfg
from .config import add_pomp_det_config
from .data.image_labels import register_builtin_image_labels
from .data.lvis import register_builtin_norare, register_builtin_objects365
from .vocabulary import set_vocabulary

# Next to detectron2's builtin LVIS (same root convention: $DETECTRON2_DATASETS or ./datasets).
_root = os.getenv("DETECTRON2_DATASETS", "datasets")
register_builtin_norare(_root)
register_builtin_image_labels(_root)
register_builtin_objects365(_root)

__all__ = ["add_pomp_det_config", "get_pomp_cfg", "load_pomp_cfg", "set_vocabulary"]
