"""The class-count cache (``class_count_file``): one rank lists the annotations, once; the other
ranks of a process group read what it wrote; a relative cache sits in the data root and keys
its files relative to itself, so the data can move with it."""
import json
import time

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from tests.frameworks import require

require("mmseg.models")
from mmengine.config import Config  # noqa: E402

from pomp_seg import class_records  # noqa: E402
from tests.seg.seg_fixtures import SEG_CONFIGS  # noqa: E402

VALUES = {"a": [0, 3, 7], "b": [1, 255], "c": [5], "d": [0, 2, 9, 200]}


def _annotations(root):
    folder = root / "annotations" / "train2017"
    folder.mkdir(parents=True)
    paths = []
    for name, values in VALUES.items():
        seg = np.array(values * 3, np.uint8)[None].repeat(4, 0)
        Image.fromarray(seg).save(folder / f"{name}.png")
        paths.append(str(folder / f"{name}.png"))
    return paths


def _counting(monkeypatch=None):
    reads = []
    real = class_records.raw_label_values

    def read(path):
        reads.append(path)
        return real(path)
    if monkeypatch is None:
        class_records.raw_label_values = read
    else:
        monkeypatch.setattr(class_records, "raw_label_values", read)
    return reads


def _rank(rank, world, init, paths, cache, out):
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    reads = _counting()
    if rank == 0:
        time.sleep(1.0)  # rank 1 reaches the cache first: it must wait for rank 0's file
    values = class_records.label_values(paths, cache)
    with open(f"{out}/{rank}.json", "w") as f:
        json.dump({"reads": len(reads), "values": values}, f)
    dist.destroy_process_group()


def _run_two_ranks(tmp_path, paths, cache, tag):
    out = tmp_path / tag
    out.mkdir()
    mp.spawn(_rank, args=(2, str(tmp_path / f"init_{tag}"), paths, cache, str(out)), nprocs=2, join=True)
    return [json.loads((out / f"{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.xdist_group("two-process")  # ranks on both cores: never beside another two-process test
@pytest.mark.slow
def test_rank_zero_lists_the_annotations_once_and_the_others_read_its_cache(tmp_path):
    paths = _annotations(tmp_path / "coco")
    truth = {p: VALUES[p.rsplit("/", 1)[1][:-4]] for p in paths}
    cache = str(tmp_path / "coco" / "annotations" / "train2017_label_values.json")
    first = _run_two_ranks(tmp_path, paths, cache, "first")
    assert [r["reads"] for r in first] == [len(paths), 0]
    assert first[0]["values"] == first[1]["values"] == truth
    again = _run_two_ranks(tmp_path, paths, cache, "again")
    assert [r["reads"] for r in again] == [0, 0] and again[1]["values"] == truth


def test_a_relative_cache_lives_in_the_data_root_and_moves_with_it(tmp_path, monkeypatch):
    old = tmp_path / "old"
    paths = _annotations(old)
    reads = _counting(monkeypatch)
    rel = "annotations/train2017_label_values.json"
    assert class_records.cache_path(rel, str(old)) == str(old / rel)
    assert class_records.cache_path(rel, None) == rel and class_records.cache_path(None, str(old)) is None
    class_records.label_values(paths, rel, str(old))
    assert len(reads) == len(paths)
    assert sorted(json.loads((old / rel).read_text())) == [f"train2017/{n}.png" for n in sorted(VALUES)]
    new = tmp_path / "new"
    old.rename(new)
    moved = [p.replace(str(old), str(new)) for p in paths]
    values = class_records.label_values(moved, rel, str(new))
    assert len(reads) == len(paths)  # nothing read again after the move
    assert values == {p: VALUES[p.rsplit("/", 1)[1][:-4]] for p in moved}


@pytest.mark.parametrize("config", ["zsseg-prompt_coco-stuff164k.py", "zsseg-r101c_coco-stuff164k-640x640.py"])
def test_both_coco_stuff_stages_share_one_cache_in_the_data_root(config):
    cfg = Config.fromfile(str(SEG_CONFIGS / config))
    ds = cfg.train_dataloader.dataset
    data_root = (ds.get("dataset") or ds).data_root
    assert ds.class_count_file == "annotations/train2017_label_values.json"
    assert class_records.cache_path(ds.class_count_file, data_root) == \
        "data/coco_stuff164k/annotations/train2017_label_values.json"
