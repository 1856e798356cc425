"""CenterNet2's proposal network for pomp_det (registered as ``CenterNet`` in detectron2's
PROPOSAL_GENERATOR_REGISTRY on import), its config keys and the recipe's optimizer."""
from .config import add_centernet_config
from .proposal_generator import CenterNet
from .solver import build_optimizer

__all__ = ["CenterNet", "add_centernet_config", "build_optimizer"]
