"""Configs that build on any detectron2 config, including model-zoo configs by name.

A config may name a model-zoo file as a base: ``_BASE_: "zoo:COCO-InstanceSegmentation/
mask_rcnn_R_50_FPN_1x.yaml"`` (alone, or in a list next to ``Base-POMP.yaml``); the name
resolves through ``detectron2.model_zoo.get_config_file``, so nothing is copied.
"""
from __future__ import annotations

from typing import List, Optional

from detectron2 import model_zoo
from detectron2.config import CfgNode, get_cfg

from .config import add_pomp_det_config
from .detic_keys import flatten, translate

ZOO_PREFIX = "zoo:"


class PompCfgNode(CfgNode):
    """detectron2's CfgNode whose ``_BASE_`` also accepts ``zoo:<model-zoo config name>``, and
    which reads Detic's config keys as their pomp_det equivalents (pomp_det/detic_keys.py)."""

    @classmethod
    def load_yaml_with_base(cls, filename, allow_unsafe: bool = False):
        name = str(filename)
        if ZOO_PREFIX in name:
            # fvcore has joined the base onto the including file's folder: keep what follows
            name = model_zoo.get_config_file(name.split(ZOO_PREFIX, 1)[1])
        return super().load_yaml_with_base(name, allow_unsafe=allow_unsafe)

    def merge_from_other_cfg(self, cfg_other):
        # Detic's keys (e.g. from a Detic config) become ours, or are refused with the reason
        nested: dict = {}
        for key, value in translate(flatten(dict(_plain(cfg_other)))).items():
            node = nested
            *parents, last = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        return super().merge_from_other_cfg(type(self)(nested))

    def merge_from_list(self, cfg_list):
        if len(cfg_list) % 2:
            return super().merge_from_list(cfg_list)  # detectron2's own error
        pairs = list(zip(cfg_list[0::2], cfg_list[1::2]))
        out = []
        for key, value in pairs:
            for k, v in translate({key: self._decode_cfg_value(value)}).items():
                out += [k, v]
        return super().merge_from_list(out)


def _plain(node):
    return {k: _plain(v) if isinstance(v, dict) else v for k, v in node.items()}


def get_pomp_cfg() -> PompCfgNode:
    """detectron2's defaults plus :func:`add_pomp_det_config`, able to read ``zoo:`` bases."""
    cfg = get_cfg()
    add_pomp_det_config(cfg)
    # converted after the keys are added: yacs merges only nodes of the same class
    return PompCfgNode(cfg)


def load_pomp_cfg(config_file: str, opts: Optional[List[str]] = None,
                  zoo_config: Optional[str] = None) -> PompCfgNode:
    """``get_pomp_cfg()`` <- ``zoo_config`` (a model-zoo name, optional) <- ``config_file`` <- opts."""
    cfg = get_pomp_cfg()
    if zoo_config:
        cfg.merge_from_file(model_zoo.get_config_file(zoo_config))
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts or [])
    return cfg
