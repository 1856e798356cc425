"""pomp_seg.class_records by value, fast: the label values of annotation files and their cache
(relative keys, only the missing files read, rank 0 writes and the other ranks read), the
labels mmseg loads of raw values, and ``ClassRecordDataset`` over a small in-memory dataset:
records by file name and ascending class, seen classes only, ZSSeg's per-class draw replayed
with numpy's generator, the items, the refetch of a dropped record and the messages."""
import json

import numpy as np
import pytest
from PIL import Image

from tests.frameworks import require

require("mmseg.models")
from mmengine.logging import MMLogger  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402

from pomp_seg import class_records  # noqa: E402
from pomp_seg.class_records import ClassRecordDataset, cache_path, label_values, loaded_labels  # noqa: E402

CLASSES = ("kiwi", "fig", "lime", "pear", "plum")
UNSEEN = ("fig", "pear")  # labels 1 and 3


@pytest.fixture
def counted(monkeypatch):
    """raw_label_values, counting the files it reads."""
    reads = []
    real = class_records.raw_label_values
    monkeypatch.setattr(class_records, "raw_label_values", lambda p: reads.append(p) or real(p))
    return reads


def png(path, values):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.array(values * 2, np.uint8)[None].repeat(3, 0)).save(path)
    return str(path)


def test_raw_label_values_are_the_distinct_values_ascending(tmp_path):
    assert class_records.raw_label_values(png(tmp_path / "a.png", [9, 0, 255, 3, 9])) == [0, 3, 9, 255]


def test_a_palette_annotation_gives_its_indices_not_its_colours(tmp_path):
    """VOC's SegmentationClass PNGs are palette images: the labels are the indices (as mmseg's
    LoadAnnotations reads them with pillow, unchanged), whatever colours the palette gives them."""
    img = Image.fromarray(np.array([[0, 1, 2], [15, 255, 1]], np.uint8), mode="P")
    img.putpalette([v for i in range(256) for v in ((i * 7) % 256, (i * 13) % 256, 200)])
    img.save(tmp_path / "voc.png")
    assert class_records.raw_label_values(str(tmp_path / "voc.png")) == [0, 1, 2, 15, 255]


@pytest.mark.parametrize("cache, root, want", [
    (None, "data/x", None), ("", "data/x", None), ("/abs/c.json", "data/x", "/abs/c.json"),
    ("rel/c.json", None, "rel/c.json"), ("rel/c.json", "", "rel/c.json"), ("rel/c.json", "data/x", "data/x/rel/c.json"),
])
def test_cache_path(cache, root, want):
    assert cache_path(cache, root) == want


def test_label_values_without_a_cache_read_every_file(tmp_path, counted):
    paths = [png(tmp_path / "b.png", [4, 1]), png(tmp_path / "a.png", [2])]
    assert label_values(paths) == {paths[0]: [1, 4], paths[1]: [2]} and counted == paths


def test_the_cache_keys_files_relative_to_its_folder_and_reads_only_the_missing(tmp_path, counted):
    paths = [png(tmp_path / "ann" / "x.png", [0, 5]), png(tmp_path / "ann" / "y.png", [7])]
    cache = tmp_path / "new" / "folder" / "counts.json"  # its folder does not exist yet
    assert label_values(paths, str(cache)) == {paths[0]: [0, 5], paths[1]: [7]}
    assert json.loads(cache.read_text()) == {"../../ann/x.png": [0, 5], "../../ann/y.png": [7]}
    assert len(counted) == 2
    # a cached value is believed (even when stale); a new file is read and added
    cache.write_text(json.dumps({"../../ann/x.png": [1, 2, 3]}))
    assert label_values(paths, str(cache)) == {paths[0]: [1, 2, 3], paths[1]: [7]}
    assert counted[2:] == [paths[1]] and json.loads(cache.read_text())["../../ann/y.png"] == [7]
    # a relative cache file lives in the data root
    assert label_values(paths, "counts.json", str(tmp_path / "ann")) == {paths[0]: [0, 5], paths[1]: [7]}
    assert json.loads((tmp_path / "ann" / "counts.json").read_text()) == {"x.png": [0, 5], "y.png": [7]}


def test_a_complete_cache_is_not_rewritten(tmp_path, counted):
    path = png(tmp_path / "x.png", [3])
    cache = tmp_path / "c.json"
    cache.write_text(json.dumps({"x.png": [3]}) + "\n")  # not what json.dumps alone writes
    assert label_values([path], str(cache)) == {path: [3]} and not counted
    assert cache.read_text() == json.dumps({"x.png": [3]}) + "\n"


@pytest.mark.parametrize("world", [1, 2])
def test_a_rank_other_than_zero_reads_the_cache_and_writes_nothing(tmp_path, counted, monkeypatch, world):
    barriers = []
    monkeypatch.setattr(class_records, "get_dist_info", lambda: (1, world))
    monkeypatch.setattr(class_records, "barrier", lambda: barriers.append(1))
    paths = [png(tmp_path / "x.png", [3]), png(tmp_path / "y.png", [4])]
    cache = tmp_path / "c.json"
    cache.write_text(json.dumps({"x.png": [8]}))
    # rank 0 would have written every file; a file still missing is read here
    assert label_values(paths, str(cache)) == {paths[0]: [8], paths[1]: [4]} and counted == [paths[1]]
    assert json.loads(cache.read_text()) == {"x.png": [8]} and barriers == [1] * (world > 1)
    cache.unlink()
    assert label_values(paths, str(cache)) == {paths[0]: [3], paths[1]: [4]} and not cache.exists()


@pytest.mark.parametrize("values, reduce, label_map, want", [
    ([0, 1, 3, 255], True, None, [0, 2, 255]),  # 0 and 255 -> 255, the rest one down
    ([0, 1, 3, 255], True, {2: 7, 0: 5}, [5, 7, 255]),  # the map after the reduction
    ([0, 1, 3, 255], False, {3: 255, 1: 2, 2: 9}, [0, 2, 255]),  # applied once: 1 -> 2, not on to 9
    ([4, 4, 2], False, {}, [2, 4]),
    ([1, 2], True, {0: 1}, [1]),  # 1 -> 0 -> 1 and 2 -> 1: one label
])
def test_loaded_labels(values, reduce, label_map, want):
    assert loaded_labels(values, reduce, label_map) == want


class Items:
    """A minimal mmseg dataset: annotation files, their infos and a pipeline (the test's)."""

    def __init__(self, root, files, classes=CLASSES, unseen=UNSEEN, pipeline=None, **info):
        self.metainfo = dict(classes=classes, unseen_classes=unseen)
        self.data_root = str(root)
        self.infos = [dict(seg_map_path=png(root / f"{name}.png", values), name=name, **info)
                      for name, values in files]
        self.pipeline = pipeline or (lambda info: dict(info=info, data_samples=SegDataSample()))
        self.inits = 0

    def full_init(self):
        self.inits += 1

    def __len__(self):
        return len(self.infos)

    def get_data_info(self, idx):
        return dict(self.infos[idx])

    def __getitem__(self, idx):
        return ("image", idx)


# labels per file; the files' names sort a, b_, c, d (indices 0, 3, 2, 1)
FILES = [("a", [0, 4, 255]), ("d", [1, 2, 0]), ("c", [4, 3]), ("b_", [0, 2, 4, 9])]


def records(tmp_path, files=FILES, **kw):
    return ClassRecordDataset(Items(tmp_path, files), **kw)


def test_records_by_file_name_then_class_and_seen_only(tmp_path):
    ds = records(tmp_path, sample_per_class=-1)
    # a: 0, 4 (255 ignore); b_: 0, 2, 4 (9 outside the classes); c: 4 (3 unseen); d: 0, 2 (1 unseen)
    assert ds.records == [(0, 0), (0, 4), (3, 0), (3, 2), (3, 4), (2, 4), (1, 0), (1, 2)]
    assert ds.class_counts() == {"kiwi": 3, "plum": 3, "lime": 2}
    assert len(ds) == 8 and ds.dataset.inits == 1


def test_records_use_each_files_loading_options(tmp_path):
    ds = ClassRecordDataset(Items(tmp_path, [("a", [0, 1, 3, 5])], reduce_zero_label=True, label_map={2: 0}),
                            sample_per_class=-1)
    assert ds.records == [(0, 0), (0, 4)]  # 1 -> 0, 3 -> 2 -> 0 (kiwi), 5 -> 4; 0 -> 255


def test_the_cache_is_the_datasets_relative_file(tmp_path, counted):
    ds = records(tmp_path, sample_per_class=-1, class_count_file="counts.json")
    assert sorted(json.loads((tmp_path / "counts.json").read_text())) == ["a.png", "b_.png", "c.png", "d.png"]
    again = records(tmp_path, sample_per_class=-1, class_count_file="counts.json")
    assert again.records == ds.records and len(counted) == 4


def zsseg_draw(recs, n, seed, replace=True):
    """ZSSeg's dataset_sample_per_class: groups in order of first appearance, one generator."""
    groups = {}
    for r in recs:
        groups.setdefault(r[1], []).append(r)
    rng = np.random.default_rng(seed)
    out = []
    for g in groups.values():
        out += g if len(g) < n else [g[i] for i in rng.choice(len(g), size=n, replace=replace)]
    return out


# twelve files: kiwi in all, lime in every other one, plum in every third
MANY = [(f"f{k:02d}", [0] + [2] * (k % 2 == 0) + [4] * (k % 3 == 0)) for k in range(12)]


@pytest.mark.parametrize("n, seed, replace", [(3, 0, True), (3, 7, True), (4, 1, True), (4, 2, False), (6, 0, True)])
def test_the_draw_per_class_is_zssegs(tmp_path, n, seed, replace):
    every = records(tmp_path, MANY, sample_per_class=-1).records
    ds = records(tmp_path, MANY, sample_per_class=n, seed=seed, replace=replace)
    assert ds.records == zsseg_draw(every, n, seed, replace)
    counts = ds.class_counts()
    assert counts == {"kiwi": n, "lime": n, "plum": 4 if n > 4 else n}  # plum: four records
    if not replace:
        assert len(set(ds.records)) == len(ds.records)


def test_defaults_seed_zero_with_replacement_no_records_and_mmengines_refetch(tmp_path):
    ds = records(tmp_path, MANY, sample_per_class=3)
    assert (ds.seed, ds.replace, ds.max_refetch, ds.class_count_file) == (0, True, 1000, None)
    assert ds.records == zsseg_draw(records(tmp_path, MANY, sample_per_class=-1).records, 3, 0)
    images = records(tmp_path)
    assert images.sample_per_class is None and images.records == [] and len(images) == 4
    assert images[2] == ("image", 2) and images.get_data_info(3)["name"] == "b_"
    assert "category_id" not in images.get_data_info(3)


def test_lazy_init_waits_for_the_first_use(tmp_path):
    ds = records(tmp_path, sample_per_class=-1, lazy_init=True)
    assert ds.records == [] and ds.dataset.inits == 0
    assert len(ds) == 8 and ds.dataset.inits == 1
    ds.full_init()
    assert ds.dataset.inits == 1 and len(ds.records) == 8  # once


def test_items_carry_their_record(tmp_path):
    ds = records(tmp_path, sample_per_class=-1)
    info = ds.get_data_info(3)
    assert info["name"] == "b_" and info["category_id"] == 2
    item = ds[3]
    assert item["info"]["category_id"] == 2 and item["data_samples"].metainfo["category_id"] == 2
    meta = ds.metainfo
    meta["classes"] = ()
    assert ds.metainfo["classes"] == CLASSES  # a copy


@pytest.fixture
def global_numpy_rng():
    """numpy's global generator (the refetch draws from it, as mmengine's does), restored afterwards."""
    state = np.random.get_state()
    yield np.random
    np.random.set_state(state)


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_a_dropped_record_is_replaced_by_a_random_one(tmp_path, global_numpy_rng, seed):
    dropped = {"a"}
    data = Items(tmp_path, FILES, pipeline=lambda info: None if info["name"] in dropped else dict(
        info=info, data_samples=SegDataSample()))
    ds = ClassRecordDataset(data, sample_per_class=-1)
    global_numpy_rng.seed(seed)
    item = ds[1]  # record (0, 4) of file a: dropped
    global_numpy_rng.seed(seed)
    again = global_numpy_rng.randint(0, 8)
    while ds.records[again][0] == 0:
        again = global_numpy_rng.randint(0, 8)
    image, label = ds.records[again]
    assert item["info"]["name"] == data.infos[image]["name"] and item["data_samples"].metainfo["category_id"] == label
    dropped.update({"b_", "c", "d"})
    ds.max_refetch = 2
    calls = []
    data.pipeline = lambda info: calls.append(info["name"])  # None: every record dropped
    with pytest.raises(RuntimeError, match=r"^ClassRecordDataset: the pipeline returned None for 3 records in a row; "
                                           r"check that the pipeline's crop \(RecordMaskCrop\) can hold the record's "
                                           r"class$"):
        ds[1]
    assert len(calls) == 3 and calls[0] == "a"  # the record, then two others


class Concat:
    """mmengine's ConcatDataset as ClassRecordDataset sees it: parts with their own pipelines."""

    def __init__(self, *parts):
        self.datasets = parts  # no data_root: the parts have their own
        self.metainfo = parts[0].metainfo

    def full_init(self):
        pass

    def __len__(self):
        return sum(len(p) for p in self.datasets)

    def _get_ori_dataset_idx(self, idx):
        first = len(self.datasets[0])
        return (0, idx) if idx < first else (1, idx - first)

    def get_data_info(self, idx):
        part, i = self._get_ori_dataset_idx(idx)
        return self.datasets[part].get_data_info(i)


def test_each_record_goes_through_its_parts_pipeline(tmp_path):
    parts = [Items(tmp_path / str(k), files, pipeline=lambda info, k=k: dict(part=k, data_samples=SegDataSample()))
             for k, files in enumerate(([("a", [4])], [("b", [0]), ("c", [2])]))]
    ds = ClassRecordDataset(Concat(*parts), sample_per_class=-1)
    assert ds.records == [(0, 4), (1, 0), (2, 2)]  # (image, class): the part follows the image
    assert [ds[k]["part"] for k in range(3)] == [0, 1, 1]


@pytest.mark.parametrize("bad", [0, -2, 2.5, "3"])
def test_sample_per_class_must_be_positive_minus_one_or_none(tmp_path, bad):
    with pytest.raises(ValueError, match=rf"^sample_per_class must be a positive int, -1 \(every record\) or None "
                                         rf"\(images, no records\), got {bad!r}$"):
        records(tmp_path, sample_per_class=bad)


def test_a_dataset_without_a_split_is_refused(tmp_path):
    data = Items(tmp_path, FILES)
    data.metainfo = dict(classes=CLASSES)
    with pytest.raises(ValueError, match=r"^ClassRecordDataset needs a dataset with a seen/unseen split \(metainfo "
                                         r"'unseen_classes'\), got Items; use a dataset of pomp_seg\.datasets$"):
        ClassRecordDataset(data, sample_per_class=-1)


def test_the_log_line_names_the_draw(tmp_path, capsys):
    name = "pomp-class-records-test"
    MMLogger.get_instance(name)  # now the current logger (print_log writes "<time> - mmengine - INFO - ...")
    try:
        records(tmp_path, MANY, sample_per_class=5, seed=3, replace=False)
    finally:
        MMLogger._instance_dict.pop(name)  # the former current logger again
    out = capsys.readouterr().out
    assert (" - INFO - ClassRecordDataset: 14 (image, class) records of 3 seen classes from 12 images "
            "(sample_per_class=5, seed=3, replace=False); fewest 4") in out


def test_a_dataset_without_seen_classes_logs_no_records(tmp_path, capsys):
    name = "pomp-class-records-test-empty"
    MMLogger.get_instance(name)
    try:
        ds = records(tmp_path, [("a", [1, 3]), ("b", [3, 255])], sample_per_class=3)
    finally:
        MMLogger._instance_dict.pop(name)
    assert ds.records == [] and len(ds) == 0
    assert (" - INFO - ClassRecordDataset: 0 (image, class) records of 0 seen classes from 2 images "
            "(sample_per_class=3, seed=0, replace=True); fewest 0") in capsys.readouterr().out
