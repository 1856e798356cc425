"""Multi-process training of Detic's recipe on the world: ``tools/train_net.py --num-gpus 2``
on CPU (gloo processes), box- and image-labelled batches, cascade heads. Ranks draw batch
types independently, so at some iteration one rank trains on boxes while the other trains on
image labels: DDP must accept the parameters an image batch leaves unused, and the gathered
metrics must carry the same keys on both ranks."""
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.frameworks import require

require("detectron2")
from pomp_det.data.multi_dataset import MultiDatasetSampler  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ITERS = 4
SEED = 3


def batch_types(world, n: int):
    """Per rank, whether each of its first ``n`` batches is image-labelled (batch sizes 1,
    ratio 1:1): the loader's sampler over the two datasets, one stream, every 2nd index."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.build import get_detection_dataset_dicts
    from pomp_det.data.world import register_world

    names = register_world(world, prefix="ddp_world")
    sizes = [len(get_detection_dataset_dicts([names["train_norare"]])), len(DatasetCatalog.get(names["image"]))]
    stream = list(itertools.islice(MultiDatasetSampler(sizes, [1, 1], seed=SEED)._infinite(), 2 * n))
    return [[i >= sizes[0] for i in stream[r::2]] for r in (0, 1)]


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    from pomp_world import WorldConfig, write_world
    from pomp_world.image_labels import write_image_labels

    root = tmp_path_factory.mktemp("world_ddp")
    write_world(root, WorldConfig(det_classes=8, det_images=(6, 2), scene_size=64), parts=("detection",))
    write_image_labels(root, per_class=1, size=32)
    return root


@pytest.mark.xdist_group("two-process")  # ranks on both cores: never beside another two-process test
@pytest.mark.slow
def test_two_process_image_label_training_with_cascade_heads(tiny_world, tmp_path):
    ranks = batch_types(tiny_world, ITERS)
    # the case that crashed: ranks on different batch types at the same iteration
    assert any(a != b for a, b in zip(*ranks)), ranks
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "tools/train_net.py"), "--num-gpus", "2", "--dist-url", "auto",
           "--world", str(tiny_world), "--config-file", str(ROOT / "configs/det/world/world-base-img_pomp.yaml"),
           "MODEL.ROI_HEADS.NAME", "CascadeROIHeads", "MODEL.ROI_HEADS.NUM_CLASSES", "8",
           "MODEL.POMP.RANDOM_EMBEDDINGS_SEED", "0", "MODEL.POMP.FED_LOSS_NUM_CLASSES", "4",
           "DATALOADER.DATASET_RATIO", "[1, 1]", "DATALOADER.DATASET_BATCH_SIZE", "[1, 1]",
           "INPUT.DATASET_MIN_SIZE", "[64, 32]", "INPUT.DATASET_MAX_SIZE", "[64, 32]",
           "SOLVER.MAX_ITER", str(ITERS), "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()",
           "DATASETS.TEST", "()", "SEED", str(SEED), "OUTPUT_DIR", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "gloo" in run.stderr
    assert (out / "model_final.pth").is_file()
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert metrics[-1]["iteration"] == ITERS - 1
    keys = set(metrics[-1])
    for k in range(3):  # each stage's box and image-label losses, on every batch type
        assert {f"loss_cls_stage{k}", f"loss_box_reg_stage{k}", f"loss_image_label_stage{k}"} <= keys, keys
