"""pomp: POMP prompt pre-training and open-vocabulary recognition on CLIP."""
from setuptools import find_packages, setup

# Exact versions of the tested stack live in requirements/constraints.txt; these are
# the ranges the code needs. detectron2 is not on PyPI under its own name, so `det` does
# not name it: tools/setup_env.sh installs it (built from the pb1-detectron2 sdist), and
# with internet access the `detectron2` extra adds it from its git repository.
CORE = ["torch>=2.0", "torchvision", "open_clip_torch>=2.20", "numpy", "tqdm"]
EXTRAS = {
    "det": ["lvis", "pycocotools"],
    "seg": ["mmcv>=2.0.0,<2.2.0", "mmengine>=0.10", "mmsegmentation>=1.2", "mmdet>=3.0"],
    "train": ["tensorboard", "matplotlib"],
    "test": ["pytest", "pytest-xdist"],
}
EXTRAS["all"] = sorted({r for reqs in EXTRAS.values() for r in reqs})
EXTRAS["detectron2"] = ["detectron2 @ git+https://github.com/facebookresearch/detectron2.git"]

setup(
    name="pomp",
    version="0.1.0",
    description="Prompt pre-training with twenty-thousand classes for open-vocabulary recognition",
    packages=find_packages(include=["pomp_core*", "pomp_det*", "pomp_seg*", "pomp_world*"]),
    package_data={"pomp_core": ["model_configs/*.json"], "pomp_det": ["data/*.json"],
                  "pomp_world": ["weights/*.pt"]},
    python_requires=">=3.9",
    install_requires=CORE,
    extras_require=EXTRAS,
)
