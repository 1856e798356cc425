"""pomp_det: a POMP text-embedding box classifier for detectron2 (Detic-style open-vocabulary
detection). Importing the package registers the ROI heads, the meta-architecture and the
``lvis_v1_train_norare`` and ``imagenet_lvis_v1`` datasets."""
import os

from . import compat, meta_arch, roi_heads, tiny_backbone  # noqa: F401  (side effects: registries, _C build info)
from . import backbones, centernet  # noqa: F401  (registries: CenterNet proposals, Detic's timm FPN)
from .cfg_loader import get_pomp_cfg, load_pomp_cfg
from .config import add_pomp_det_config
from .data.builtin import register_builtin
from .vocabulary import set_vocabulary

# Next to detectron2's builtin LVIS (same root convention: $DETECTRON2_DATASETS or ./datasets).
_root = os.getenv("DETECTRON2_DATASETS", "datasets")
register_builtin(_root)  # next to Detic's, when Detic is there (pomp_det/data/builtin.py)

__all__ = ["add_pomp_det_config", "get_pomp_cfg", "load_pomp_cfg", "set_vocabulary"]
