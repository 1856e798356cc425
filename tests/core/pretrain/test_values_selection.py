"""Value tests of pre-training's model selection (pomp_core/pretrain/selection.py: per-epoch
prompts, the first best epoch), its step order (pomp_core/pretrain/train_data.py: StepSampler,
TrainData, build_train_data's checks) and its few-shot subsample
(pomp_core/pretrain/data.build_split_index: ``shots`` per class, seeded, smaller classes keep all)."""
import hashlib
import json
import logging
import random
import re

import pytest
import torch
from torch.utils.data import Dataset

from pomp_core.prompt import PromptLearner
from pomp_core.prompt_io import load_prompt, read_extra
from pomp_core.pretrain import data as pdata
from pomp_core.pretrain import train_data as td
from pomp_core.pretrain.config import PretrainConfig
from pomp_core.pretrain.distributed import ProcessGroup
from pomp_core.pretrain.selection import (BEST, EPOCHS, ModelSelection, best_epoch, epoch_prompt_path,
                                          epoch_prompts)

pytestmark = pytest.mark.usefixtures("global_rng_kept")  # tests/conftest.py


# ------------------------------------------------------------------ selection.py
def prompt_with(value: float) -> PromptLearner:
    return PromptLearner(n_ctx=2, width=4, ctx=torch.full((2, 4), value))


def test_epoch_files_are_listed_by_number_not_by_name(tmp_path):
    assert (EPOCHS, BEST) == ("prompts", "prompt_best.pth")
    assert epoch_prompt_path(tmp_path, 7) == tmp_path / "prompts" / "epoch_7.pth"
    assert epoch_prompts(tmp_path) == []  # no folder yet
    sel = ModelSelection(tmp_path)
    for e in (10, 2, 1):
        assert sel.save_epoch(prompt_with(e), e, lr=0.5) == tmp_path / "prompts" / f"epoch_{e}.pth"
    (tmp_path / "prompts" / "epoch_x.pth").write_bytes(b"")  # not an epoch number
    (tmp_path / "prompts" / "other.pth").write_bytes(b"")
    (tmp_path / "prompts" / "epoch_3.pt").write_bytes(b"")
    assert epoch_prompts(tmp_path) == [(1, tmp_path / "prompts" / "epoch_1.pth"),
                                       (2, tmp_path / "prompts" / "epoch_2.pth"),
                                       (10, tmp_path / "prompts" / "epoch_10.pth")]
    assert epoch_prompts(str(tmp_path))[2][0] == 10
    assert read_extra(tmp_path / "prompts" / "epoch_10.pth") == {"epoch": 10, "lr": 0.5}
    assert torch.equal(load_prompt(tmp_path / "prompts" / "epoch_2.pth").ctx.detach(), torch.full((2, 4), 2.0))


def test_record_keeps_the_first_of_the_highest(tmp_path, caplog):
    sel = ModelSelection(tmp_path)
    assert (sel.best_epoch, sel.best_top1) == (None, float("-inf"))
    assert best_epoch(tmp_path) is None  # no validation yet
    scores = {1: 0.3, 2: 0.5, 3: 0.5, 4: 0.4999, 5: 0.5001, 6: 0.2}
    with caplog.at_level(logging.INFO, logger="pomp_core.pretrain.selection"):
        news = [sel.record(prompt_with(e), e, top1, tag="v") for e, top1 in scores.items()]
    assert caplog.messages[-1] == f"epoch 5 is the best so far (val top-1 50.01%): {tmp_path / BEST}"
    assert len(caplog.messages) == 3
    assert news == [True, True, False, False, True, False]
    assert (sel.best_epoch, sel.best_top1) == (5, 0.5001)
    assert read_extra(tmp_path / BEST) == {"epoch": 5, "val_top1": 0.5001, "tag": "v"}
    assert torch.equal(load_prompt(tmp_path / BEST).ctx.detach(), torch.full((2, 4), 5.0))
    assert best_epoch(tmp_path) == 5 and best_epoch(str(tmp_path)) == 5
    # a tie: the earlier epoch's prompt stays in the file
    tie = ModelSelection(tmp_path / "tie")
    assert tie.record(prompt_with(1), 1, 0.0) is True  # any first score beats "none yet"
    assert tie.record(prompt_with(2), 2, 0.0) is False
    assert best_epoch(tmp_path / "tie") == 1
    assert torch.equal(load_prompt(tmp_path / "tie" / BEST).ctx.detach(), torch.full((2, 4), 1.0))


def test_selection_state_round_trip_and_defaults(tmp_path):
    sel = ModelSelection(tmp_path)
    sel.record(prompt_with(3), 3, 0.25)
    assert sel.state_dict() == {"best_epoch": 3, "best_top1": 0.25}
    resumed = ModelSelection(tmp_path / "r")
    resumed.load_state_dict(sel.state_dict())
    assert (resumed.best_epoch, resumed.best_top1) == (3, 0.25)
    assert resumed.record(prompt_with(4), 4, 0.25) is False and resumed.record(prompt_with(4), 4, 0.26) is True
    old = ModelSelection(tmp_path / "old")
    old.best_epoch, old.best_top1 = 9, 0.9
    old.load_state_dict({})  # a checkpoint from before model selection
    assert (old.best_epoch, old.best_top1) == (None, float("-inf"))


# ------------------------------------------------------------------ train_data.py
class Items(Dataset):
    """n items (tensor, label, index), as ImageListDataset returns them; records set_epoch."""

    def __init__(self, n):
        self.n, self.epochs = n, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor([float(i)]), i % 3, i

    def set_epoch(self, epoch):
        self.epochs.append(epoch)


def dealt(n, replicas, rank, seed, epoch):
    """DistributedSampler(shuffle, drop_last) by hand: a seeded permutation, cut to a multiple of
    the replicas, every replicas-th index from rank."""
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    per = n // replicas
    return perm[:per * replicas][rank::replicas]


def test_step_sampler_interleaves_the_virtual_ranks_micro_batches():
    # 50 items, 2 processes x 2 micro-batches = 4 virtual ranks of 12, batches of 3: 4 steps
    s = td.StepSampler(Items(50), world=2, rank=1, accumulate=2, batch_size=3, seed=5)
    assert s.steps_per_epoch == 4 and len(s) == 24
    v2, v3 = dealt(50, 4, 2, 5, 0), dealt(50, 4, 3, 5, 0)
    expected = [i for step in range(4) for v in (v2, v3) for i in v[3 * step:3 * step + 3]]
    assert list(s) == expected
    s.set_epoch(3)
    v2, v3 = dealt(50, 4, 2, 5, 3), dealt(50, 4, 3, 5, 3)
    epoch3 = [i for step in range(4) for v in (v2, v3) for i in v[3 * step:3 * step + 3]]
    assert list(s) == epoch3 and epoch3 != expected
    # resuming mid-epoch skips the first samples of that epoch only
    s.set_start(7)
    assert len(s) == 17 and list(s) == epoch3[7:]
    assert len(s) == 24 and list(s) == epoch3


def test_step_sampler_steps_drop_the_incomplete_batch():
    # 23 items over 3 virtual ranks: 7 each; batches of 2 -> 3 steps, the 7th sample unused
    s = td.StepSampler(Items(23), world=3, rank=2, accumulate=1, batch_size=2, seed=0)
    assert s.steps_per_epoch == 3 and len(s) == 6
    assert list(s) == dealt(23, 3, 2, 0, 0)[:6]


def test_one_process_accumulating_sees_what_that_many_processes_see():
    one = td.StepSampler(Items(40), world=1, rank=0, accumulate=4, batch_size=2, seed=11)
    per_rank = [list(td.StepSampler(Items(40), world=4, rank=r, accumulate=1, batch_size=2, seed=11))
                for r in range(4)]
    steps = one.steps_per_epoch
    assert steps == 5
    assert list(one) == [i for step in range(steps) for r in range(4) for i in per_rank[r][2 * step:2 * step + 2]]


def make_train_data(n=30, accumulate=2, batch_size=4):
    ds = Items(n)
    sampler = td.StepSampler(ds, world=1, rank=0, accumulate=accumulate, batch_size=batch_size, seed=2)
    index = pdata.SplitIndex("root", ["a", "b", "c"], [], [])
    return td.TrainData(index, ["cat", "dog", "owl"], ds, sampler, batch_size, 0, False), ds


def test_train_data_start_epoch_and_loader_order():
    data, ds = make_train_data()
    assert data.num_classes == 3 and data.steps_per_epoch == 3  # 30 / 2 virtual ranks = 15 -> 3 batches of 4
    data.start_epoch(2, 1)  # resume in epoch 2 after one step (2 micro-batches of 4)
    assert ds.epochs == [2] and data.sampler.start == 8
    order = [i for step in range(3) for r in range(2) for i in dealt(30, 2, r, 2, 2)[4 * step:4 * step + 4]]
    batches = list(data.loader())
    assert [b["index"].tolist() for b in batches] == [order[k:k + 4] for k in range(8, 24, 4)]
    assert [b["labels"].tolist() for b in batches] == [[i % 3 for i in order[k:k + 4]] for k in range(8, 24, 4)]
    data.start_epoch(0, 0)
    assert data.sampler.start == 0 and len(list(data.loader())) == 6


def config(**over) -> PretrainConfig:
    cfg = PretrainConfig()
    for dotted, value in over.items():
        section, key = dotted.split("__")
        setattr(getattr(cfg, section), key, value)
    return cfg


def group():
    return ProcessGroup(world=1, rank=0, local_rank=0, device=torch.device("cpu"))


def test_build_train_data_checks_and_builds(tmp_path):
    items = [(f"c/{k}.png", k % 2) for k in range(10)]
    index = pdata.SplitIndex(str(tmp_path), ["c0", "c1"], items, [])
    cfg = config(optim__accumulate=0)
    with pytest.raises(ValueError, match="optim.accumulate must be at least 1, got 0"):
        td.build_train_data(cfg, group(), index, ["x", "y"], None, tmp_path)
    cfg = config(optim__batch_size=11, optim__accumulate=1, data__augment=False, data__workers=0)
    with pytest.raises(ValueError, match=r"^10 training images give no full batch of 11 per process: "
                                         r"lower optim.batch_size$"):
        td.build_train_data(cfg, group(), index, ["x", "y"], None, tmp_path)
    # 10 images over 2 micro-batches: 5 each, no batch of 6 (one process of batch 6 would have one)
    cfg = config(optim__batch_size=6, optim__accumulate=2, data__augment=False, data__workers=0)
    with pytest.raises(ValueError, match=r"^10 training images give no full batch of 6 per process x 2 "
                                         r"micro-batches: lower optim.batch_size or optim.accumulate$"):
        td.build_train_data(cfg, group(), index, ["x", "y"], None, tmp_path)
    cfg = config(optim__batch_size=2, optim__accumulate=2, data__augment=False, data__workers=3, data__views=2,
                 train__seed=9)
    data = td.build_train_data(cfg, group(), index, ["x", "y"], None, tmp_path)
    assert (data.batch_size, data.workers, data.pin_memory, data.class_names) == (2, 3, False, ["x", "y"])
    assert data.steps_per_epoch == 2 and len(data.sampler.parts) == 2  # 10 / 2 virtual ranks = 5 -> 2 batches
    assert data.dataset.items == items and data.dataset.views == 2 and data.dataset.seed == 9
    assert list(data.sampler) == list(td.StepSampler(data.dataset, 1, 0, 2, 2, 9))


def test_build_index_needs_a_root():
    with pytest.raises(ValueError, match=r"^data.root is not set: pass data.root=/path/to/class/folders "
                                         r"\(one folder of images per class\)$"):
        td.build_index(config(), group())


def test_build_index_scans_on_rank_zero_and_reads_the_cache_elsewhere(tmp_path, monkeypatch):
    for c in ("b", "a"):
        (tmp_path / "root" / c).mkdir(parents=True)
        for k in range(4):
            (tmp_path / "root" / c / f"{k}.png").write_bytes(b"")
    calls = []
    real = td.build_split_index
    monkeypatch.setattr(td, "build_split_index", lambda *a: calls.append(a) or real(*a))
    cfg = config(data__root=str(tmp_path / "root"), data__shots=3, data__val_per_class=1, data__split_seed=8,
                 data__index_cache=str(tmp_path / "cache"))
    args = (str(tmp_path / "root"), 3, 1, 8, str(tmp_path / "cache"), None)
    index = td.build_index(cfg, group())
    assert calls == [args] and index.classes == ["a", "b"] and len(index.train) == 6 and len(index.val) == 2
    other = td.build_index(cfg, ProcessGroup(world=1, rank=1, local_rank=0, device=torch.device("cpu")))
    assert calls == [args, args] and other.train == index.train  # the other rank reads, once


def test_read_names_passes_the_configured_sources(monkeypatch):
    calls = []
    monkeypatch.setattr(td, "read_class_names", lambda *a: calls.append(a) or ["n"])
    cfg = config(data__names_file="names.txt", data__miil_tree="tree.pth", data__wordnet=True, data__lemmas="timm",
                 data__trusted=True)
    assert td.read_names(cfg, pdata.SplitIndex("r", ["w1", "w2"], [], [])) == ["n"]
    assert calls == [(["w1", "w2"], "names.txt", "tree.pth", True, "timm", True)]


def test_loader_settings():
    data, _ = make_train_data()
    data.workers, data.pin_memory = 2, True
    loader = data.loader()
    assert (loader.batch_size, loader.num_workers, loader.pin_memory, loader.drop_last, loader.persistent_workers) \
        == (4, 2, True, True, False)
    assert loader.sampler is data.sampler and loader.collate_fn is td.collate_skipping


def test_build_train_data_transforms_and_feature_cache(tmp_path, monkeypatch):
    items = [(f"c/{k}.png", k % 2) for k in range(8)]
    index = pdata.SplitIndex(str(tmp_path), ["c0", "c1"], items, [])
    made = []
    monkeypatch.setattr(td, "train_transform", lambda *a: made.append(("train", a)) or "train-tf")
    monkeypatch.setattr(td, "eval_transform", lambda *a: made.append(("eval", a)) or "eval-tf")
    cfg = config(optim__batch_size=2, data__image_size=64, data__randaugment="torchvision", data__workers=0)
    data = td.build_train_data(cfg, group(), index, ["x", "y"], None, tmp_path)
    assert made == [("train", (64, "torchvision"))] and data.dataset.transform == "train-tf"
    assert data.index is index
    cfg.data.augment = False
    assert td.build_train_data(cfg, group(), index, ["x", "y"], None, tmp_path).dataset.transform == "eval-tf"
    assert made[-1] == ("eval", (64,))
    # precomputed features: the cache is built from the image dataset, in <out>/feature_cache unless given
    built = []

    class CacheSet:
        def __init__(self, cache, train, views, seed):
            self.args, self.n = (cache, train, views, seed), len(train)

        def __len__(self):
            return self.n

    monkeypatch.setattr(td, "build_feature_cache", lambda f, images, folder: built.append((f, images, folder)) or "c")
    monkeypatch.setattr(td, "FeatureCacheDataset", CacheSet)
    cfg = config(optim__batch_size=2, data__workers=0, data__views=3, train__seed=4, train__feature_cache=True)
    data = td.build_train_data(cfg, ProcessGroup(1, 0, 0, torch.device("cuda")), index, ["x", "y"], "feats", tmp_path)
    (f, images, folder), = built
    assert (f, folder) == ("feats", tmp_path / "feature_cache") and images.items == items and images.views == 3
    assert data.dataset.args == ("c", items, 3, 4) and data.pin_memory is True  # pinned for a CUDA device
    cfg.train.feature_cache_dir = str(tmp_path / "shared")
    td.build_train_data(cfg, group(), index, ["x", "y"], "feats", tmp_path)
    assert built[-1][2] == tmp_path / "shared"


# ------------------------------------------------------------------ data.build_split_index
def test_few_shot_subsample_by_hand(tmp_path):
    sizes = {"n01": 20, "n02": 5, "n03": 2, "n04": 17, "n05": 1}
    for folder, n in sizes.items():
        (tmp_path / "root" / folder).mkdir(parents=True)
        for k in range(n):
            (tmp_path / "root" / folder / f"img{k:02d}.JPEG").write_bytes(b"")
        (tmp_path / "root" / folder / "notes.txt").write_text("not an image")
    index = pdata.build_split_index(tmp_path / "root", shots=16, val_per_class=2, seed=3, cache_dir=tmp_path / "c")
    # by hand: one generator over the classes in folder order; each class's sorted files shuffled,
    # the first 2 held out when the class has more than 2, then at most 16 of the rest
    rng, train, val = random.Random(3), [], []
    for label, (folder, n) in enumerate(sizes.items()):
        files = [f"img{k:02d}.JPEG" for k in range(n)]
        rng.shuffle(files)
        held = files[:2] if n > 2 else []
        train += [(f"{folder}/{f}", label) for f in files[len(held):][:16]]
        val += [(f"{folder}/{f}", label) for f in held]
    assert index.classes == list(sizes)
    assert index.train == train and index.val == val
    per_class = [sum(1 for _, y in index.train if y == c) for c in range(5)]
    assert per_class == [16, 3, 2, 15, 1]  # 20 - 2 held -> 16 shots; smaller classes keep all they have
    assert [sum(1 for _, y in index.val if y == c) for c in range(5)] == [2, 2, 0, 2, 0]
    other = pdata.build_split_index(tmp_path / "root", shots=16, val_per_class=2, seed=4, cache_dir=tmp_path / "c")
    assert other.train != index.train and sorted(other.train) != sorted(index.train)
    # the cache returns the same split
    again = pdata.build_split_index(tmp_path / "root", shots=16, val_per_class=2, seed=3, cache_dir=tmp_path / "c")
    assert again.train == index.train and again.val == index.val


def class_root(root, sizes, suffix=".JPEG"):
    for folder, n in sizes.items():
        (root / folder).mkdir(parents=True)
        for k in range(n):
            (root / folder / f"img{k:02d}{suffix}").write_bytes(b"")
    return root


def by_hand(sizes, shots, held_per_class, rng, suffix=".JPEG"):
    """The split by hand: sorted files shuffled per class with one generator, held-out first."""
    train, val = [], []
    for label, (folder, n) in enumerate(sizes.items()):
        files = [f"img{k:02d}{suffix}" for k in range(n)]
        rng.shuffle(files)
        held = files[:held_per_class] if n > held_per_class else []
        train += [(f"{folder}/{f}", label) for f in files[len(held):][:shots]]
        val += [(f"{folder}/{f}", label) for f in held]
    return train, val


def test_few_shot_defaults_16_shots_seed_42_no_validation(tmp_path):
    sizes = {"a": 20, "b": 3, "c": 17}
    root = class_root(tmp_path / "root", sizes)
    index = pdata.build_split_index(root, cache_dir=tmp_path / "c")
    train, val = by_hand(sizes, 16, 0, random.Random(42))
    assert index.train == train and index.val == val == []
    assert [sum(1 for _, y in index.train if y == c) for c in range(3)] == [16, 3, 16]
    assert (index.root, index.val_root) == (str(root.resolve()), None)


def test_the_cache_is_keyed_and_read_back(tmp_path):
    root = class_root(tmp_path / "root", {"a": 4, "b": 5})
    index = pdata.build_split_index(root, shots=2, val_per_class=1, seed=3, cache_dir=tmp_path / "c")
    key = hashlib.sha1(f"{root.resolve()}|2|1|3".encode()).hexdigest()[:12]
    cache = tmp_path / "c" / f".pomp_index_{key}.json"
    assert [p.name for p in (tmp_path / "c").iterdir()] == [cache.name]
    stored = json.loads(cache.read_text())
    assert stored == {"classes": ["a", "b"], "train": [list(t) for t in index.train],
                      "val": [list(v) for v in index.val], "val_root": None}
    # what the cache says is what comes back (it is not rescanned)
    stored.update(classes=["x", "y"], train=[["x/1.png", 0]], val=[["y/2.png", 1]], val_root="/v")
    cache.write_text(json.dumps(stored))
    again = pdata.build_split_index(root, shots=2, val_per_class=1, seed=3, cache_dir=tmp_path / "c")
    assert again == pdata.SplitIndex(str(root.resolve()), ["x", "y"], [("x/1.png", 0)], [("y/2.png", 1)], "/v")
    # without a cache folder the index sits in the root
    pdata.build_split_index(root, shots=2, val_per_class=1, seed=3)
    assert (root / f".pomp_index_{key}.json").is_file()


def test_a_separate_validation_root(tmp_path):
    sizes = {"a": 6, "b": 2, "c": 4}
    root = class_root(tmp_path / "root", sizes)
    val_root = class_root(tmp_path / "val", {"a": 5, "c": 2}, suffix=".png")
    index = pdata.build_split_index(root, shots=3, val_per_class=3, seed=5, cache_dir=tmp_path / "c",
                                    val_root=val_root)
    rng = random.Random(5)
    train, held = by_hand(sizes, 3, 0, rng)  # nothing is held out of the training root
    val = []
    for folder, n, label in (("a", 5, 0), ("c", 2, 2)):  # the same generator goes on over the val folders
        files = [f"img{k:02d}.png" for k in range(n)]
        rng.shuffle(files)
        val += [(f"{folder}/{f}", label) for f in files[:3]]
    assert index.train == train and held == [] and index.val == val
    assert index.val_root == str(val_root.resolve())
    key = hashlib.sha1(f"{root.resolve()}|3|3|5|{val_root.resolve()}".encode()).hexdigest()[:12]
    assert json.loads((tmp_path / "c" / f".pomp_index_{key}.json").read_text())["val_root"] == index.val_root
    every = pdata.build_split_index(root, shots=3, val_per_class=0, seed=5, cache_dir=tmp_path / "c",
                                    val_root=val_root)
    assert len(every.val) == 7  # 0 = every validation image
    for k in range(6):
        (tmp_path / "val" / f"zebra{k}").mkdir()
    with pytest.raises(ValueError, match="^" + re.escape(
            "6 folders of data.val_root are not training classes, e.g. ['zebra0', 'zebra1', 'zebra2', 'zebra3', "
            "'zebra4']: point data.val_root at the validation split of data.root") + "$"):
        pdata.build_split_index(root, seed=6, cache_dir=tmp_path / "c", val_root=val_root)


def test_the_scan_passes_a_kill_point_per_class(tmp_path, monkeypatch):
    points = []  # the crash tests (POMP_KILL_AT=scan) stop a run there
    monkeypatch.setattr(pdata, "kill_point", lambda *a: points.append(a))
    pdata.build_split_index(class_root(tmp_path / "root", {"a": 1, "b": 2, "c": 1}), cache_dir=tmp_path / "c")
    assert points == [("scan",)] * 3


def test_empty_classes_and_missing_roots(tmp_path, caplog):
    root = class_root(tmp_path / "root", {"a": 2, "e1": 0, "e2": 0, "e3": 0, "e4": 0, "e5": 0, "e6": 0, "z": 1})
    (root / "e1" / "notes.txt").write_text("")
    with pytest.raises(ValueError, match="^" + re.escape(
            "6 class folders hold no images, e.g. ['e1', 'e2', 'e3', 'e4', 'e5']: remove them or add images "
            "before training") + "$"):
        pdata.build_split_index(root, cache_dir=tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="^" + re.escape(
            f"image root '{tmp_path / 'none'}' does not exist: expected one folder per class (e.g. ImageNet-21K's "
            "n01440764/…jpg), each holding that class's images") + "$"):
        pdata.list_class_folders(tmp_path / "none")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="^" + re.escape(f"image root '{tmp_path / 'flat'}' has no class folders")):
        pdata.list_class_folders(tmp_path / "flat")
    # a cache that cannot be written: the index still comes, with a warning
    (tmp_path / "file").write_text("")
    good = class_root(tmp_path / "good", {"a": 2})
    with caplog.at_level(logging.WARNING, logger="pomp_core.pretrain.data"):
        index = pdata.build_split_index(good, cache_dir=tmp_path / "file" / "sub")
    assert len(index.train) == 2
    (message,) = caplog.messages
    assert message.startswith(f"could not cache the split index at {tmp_path / 'file' / 'sub'}/.pomp_index_")
    assert "Not a directory" in message
