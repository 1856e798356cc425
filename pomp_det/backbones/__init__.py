"""Backbones of Detic's recipes, registered in detectron2's BACKBONE_REGISTRY on import."""
from .timm_fpn import TimmResNet, build_pomp_timm_p67_fpn_backbone, load_bottom_up_checkpoint  # noqa: F401
