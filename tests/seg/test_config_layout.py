"""The seg configs as deltas over ``configs/seg/_base_/`` (datasets/, models/): no block of six
or more lines repeated, each dataset's class count stated once, and every config resolving to
what it resolved to before the layout (``tests/fixtures/seg_configs_resolved.json``, the keys
mmengine's Runner reads) but for the deliberate changes listed here. ``model.backbone`` is left
out: the R101c backbone is being replaced by the R-103 DeepLab stem (issue 23, item 1)."""
import json
import sys
from pathlib import Path

import pytest

from tests.config_blocks import repeated_blocks
from tests.frameworks import require

require("mmengine")
from mmengine.config import Config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SEG = ROOT / "configs" / "seg"
SNAPSHOT = ROOT / "tests" / "fixtures" / "seg_configs_resolved.json"
GONE = object()
RECORD_PIPELINE = [{"type": "LoadImageFromFile"}, {"type": "LoadAnnotations"},
                   {"type": "RecordMaskCrop", "size": [244, 224], "scale": [0.08, 1.0],
                    "ratio": [0.75, 1.3333333333333333], "drop_empty": True},
                   {"type": "RandomFlip", "prob": 0.5}, {"type": "PackSegInputs"}]
STAGE_A = {"model.crop_in_pipeline": True, "model.fill": "normalised_mean", "model.temperature": 100.0,
           "model.crops_per_image": GONE,
           "model.random_resized_crop": GONE}  # ZSSeg's view, cut in the pipeline (issue 23, item 3)
COCO_CACHE = {"train_dataloader.dataset.class_count_file": "annotations/train2017_label_values.json"}
DELIBERATE = {
    "zsseg-prompt_voc12aug.py": {**STAGE_A, "train_dataloader.dataset.dataset.datasets.0.pipeline": RECORD_PIPELINE,
                                 "train_dataloader.dataset.dataset.datasets.1.pipeline": RECORD_PIPELINE},
    "zsseg-prompt_coco-stuff164k.py": {**STAGE_A, **COCO_CACHE,
                                       "train_dataloader.dataset.dataset.pipeline": RECORD_PIPELINE},
    "zsseg-prompt_world.py": {"model.fill": "mean", "model.temperature": None},  # as the world was measured
    "zsseg-r101c_coco-stuff164k-640x640.py": COCO_CACHE,
    "zsseg-r101c_coco-stuff164k_test-ade20k.py": COCO_CACHE,
    "zsseg-r101c_coco-stuff164k_test-pascal-context59.py": COCO_CACHE,
}


def _resolved(path: Path, keys) -> dict:
    cfg = json.loads(json.dumps(Config.fromfile(str(path), import_custom_modules=False).to_dict(), default=repr))
    out = {k: cfg[k] for k in keys if k in cfg}
    out.get("model", {}).pop("backbone", None)
    return out


def _set(tree, path: str, value):
    *parents, last = path.split(".")
    for key in parents:
        tree = tree[int(key)] if isinstance(tree, list) else tree[key]
    if value is GONE:
        del tree[last]
    else:
        tree[last] = value


@pytest.mark.parametrize("name", sorted(p.name for p in SEG.glob("*.py")))
def test_each_config_resolves_as_before_but_for_the_deliberate_changes(name):
    before = json.loads(SNAPSHOT.read_text())[name]
    before.get("model", {}).pop("backbone", None)
    for path, value in DELIBERATE.get(name, {}).items():
        _set(before, path, value)
    assert _resolved(SEG / name, before.keys()) == before


def test_no_block_of_six_lines_is_repeated():
    repeated = repeated_blocks(SEG, "*.py")
    assert not repeated, f"repeated config blocks: {repeated}"


@pytest.mark.parametrize("config,seen", [("zsseg-r101c_voc12aug-512x512.py", 15),
                                         ("zsseg-r101c_coco-stuff164k-640x640.py", 156),
                                         ("zsseg-r18tiny_world.py", 15)])
def test_a_datasets_class_count_is_stated_once(config, seen):
    cfg = Config.fromfile(str(SEG / config), import_custom_modules=False)
    head = cfg.model.decode_head
    assert cfg.num_seen == head.num_classes == len(head.loss_cls.class_weight) - 1 == seen
    assert head.loss_cls.class_weight[-1] == 0.1
    outside = [p for p in SEG.rglob("*.py") if "num_seen =" in p.read_text() and p.parent.name != "datasets"]
    assert not outside  # only the dataset files state it; the rest derive from it


if __name__ == "__main__":  # after a deliberate config change: rewrite the snapshot, empty DELIBERATE
    keys = {k for v in json.loads(SNAPSHOT.read_text()).values() for k in v}
    snap = {p.name: _resolved(p, sorted(keys)) for p in sorted(SEG.glob("*.py"))}
    SNAPSHOT.write_text(json.dumps(snap, sort_keys=True, separators=(",", ":")) + "\n")
    sys.exit(0)
