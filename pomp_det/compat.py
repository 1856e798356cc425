"""detectron2 installed without its C++ extension (see /docs/install.md) ships an empty
``detectron2._C``; ``default_setup`` then fails collecting environment info. Give that module
the three build-info functions it asks for, answering that nothing was compiled."""
from detectron2 import _C


def _not_built() -> str:
    return "not built (pure-Python detectron2)"


for _name, _fn in (("get_compiler_version", _not_built), ("get_cuda_version", _not_built),
                   ("has_cuda", lambda: False)):
    if not hasattr(_C, _name):
        setattr(_C, _name, _fn)
