"""The datasets ``import pomp_det`` registers under detectron2's datasets folder, with Detic's
names and files, so that Detic's configs and ours read the same data.

Detic registers the same three names when imported; registering one twice fails in
detectron2. So a name already registered is left as it is, and where Detic is installed but
not yet imported, it is imported first (its registrations then stand): ``import detic`` and
``import pomp_det`` work in either order.
"""
from __future__ import annotations

import importlib.util
import logging
import sys

from detectron2.data import DatasetCatalog

from .image_labels import register_builtin_image_labels
from .lvis import register_builtin_norare, register_builtin_objects365

logger = logging.getLogger(__name__)
BUILTIN = {"lvis_v1_train_norare": register_builtin_norare, "imagenet_lvis_v1": register_builtin_image_labels,
           "objects365_v2_val": register_builtin_objects365}


def register_builtin(root: str) -> None:
    missing = [n for n in BUILTIN if n not in DatasetCatalog.list()]
    if missing and "detic" not in sys.modules and importlib.util.find_spec("detic") is not None:
        try:
            import detic  # noqa: F401  (registers Detic's datasets)
        except Exception as e:  # a Detic checkout without its third-party parts: ours then
            logger.info("Detic is installed but does not import (%s): pomp_det registers its datasets", e)
    for name, register in BUILTIN.items():
        if name not in DatasetCatalog.list():
            register(root)
