"""ZSSeg's stage-(a) records: (image, seen class) pairs, ``sample_per_class`` of each class
drawn once with a seed (``ClassRecordDataset``), on generated VOC / COCO-Stuff in their real
layouts, and ``PromptTuner`` cropping a record's class alone."""
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.frameworks import require

require("mmseg.models")
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402
from mmseg.registry import DATASETS, MODELS  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402

import pomp_seg  # noqa: E402,F401
from tests.seg.seg_fixtures import SEG_CONFIGS, make_coco_stuff, make_voc, override_config  # noqa: E402

from tests.tool_scripts import load_tool  # noqa: E402

train_seg = load_tool("train_seg")

VOC_PROMPT = SEG_CONFIGS / "zsseg-prompt_voc12aug.py"
COCO_PROMPT = SEG_CONFIGS / "zsseg-prompt_coco-stuff164k.py"
PIPELINE = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"), dict(type="PackSegInputs")]
# VOC ids 1-15 seen (dataset labels 0-14), 16 pottedplant ... 20 tvmonitor unseen. Records per
# seen label: 0 in five images, 1 in three, 2 in two, 6 in one; t4 holds unseen classes only.
VOC_TRAIN = {"t1": [1, 17], "t2": [1, 2], "t3": [3], "t4": [20, 16]}
VOC_AUG = {"a1": [1, 2, 3], "a2": [1, 7], "a3": [18, 1, 2]}


@pytest.fixture(autouse=True)
def mmseg_scope():
    init_default_scope("mmseg")


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("voc"), train=VOC_TRAIN, aug=VOC_AUG, val={"v1": [2]})


@pytest.fixture(scope="module")
def voc_dataset_cfg(voc):
    """The stage-(a) VOC config's training set on the generated VOC."""
    ds = Config.fromfile(str(VOC_PROMPT)).train_dataloader.dataset
    assert (ds.type, ds.sample_per_class, ds.seed, ds.replace) == ("ClassRecordDataset", 128, 0, True)
    for d in ds.dataset.datasets:
        d.data_root, d.pipeline = str(voc), PIPELINE
    return ds.to_dict()


def _voc_records(cfg, **kw):
    return DATASETS.build(dict(cfg, **kw))


def _true_records(inner):
    """Every (image, seen label) pair, read through mmseg's own loading pipeline, the images
    by file name as detectron2's ``load_sem_seg`` lists ZSSeg's."""
    seen = set(range(15))
    names = [Path(inner.get_data_info(i)["seg_map_path"]).stem for i in range(len(inner))]
    return [(i, int(c)) for i in sorted(range(len(inner)), key=names.__getitem__)
            for c in np.unique(inner[i]["data_samples"].gt_sem_seg.data) if int(c) in seen]


def _zsseg_sample(records, n, seed):
    """zsseg.baseline's ``dataset_sample_per_class`` on record dicts (its code, as it reads)."""
    dicts = [{"image": i, "category_id": c} for i, c in records]
    count = Counter(d["category_id"] for d in dicts)
    groups = {cat: [d for d in dicts if d["category_id"] == cat] for cat in count.keys()}
    rng = np.random.default_rng(seed)
    selected = {cat: g if len(g) < n else rng.choice(g, size=n).tolist() for cat, g in groups.items()}
    return [(d["image"], d["category_id"]) for v in selected.values() for d in v]


def test_voc_records_are_zssegs_draw_of_seen_classes(voc_dataset_cfg):
    full = _voc_records(voc_dataset_cfg, sample_per_class=-1)
    truth = _true_records(full.dataset)
    assert full.records == truth  # every (image, seen class), no unseen, no ignore, by file name
    assert [i for i, _ in truth][:4] == [4, 4, 4, 5]  # aug's a1, a2 before train's t1
    assert Counter(c for _, c in truth) == {0: 5, 1: 3, 2: 2, 6: 1}
    for seed in (0, 1, 5):
        ds = _voc_records(voc_dataset_cfg, sample_per_class=3, seed=seed)
        assert ds.records == _zsseg_sample(truth, 3, seed)  # with replacement; == 3 is drawn from too
        assert Counter(c for _, c in ds.records) == {0: 3, 1: 3, 2: 2, 6: 1}
        assert set(ds.records) <= set(truth)
    distinct = [_voc_records(voc_dataset_cfg, sample_per_class=3, seed=s, replace=False).records for s in (0, 0, 1)]
    for recs in distinct:
        assert len(set(recs)) == len(recs) and set(recs) <= set(truth)
        assert Counter(c for _, c in recs) == {0: 3, 1: 3, 2: 2, 6: 1}  # min(N, available)
    assert distinct[0] == distinct[1] and distinct[0] != distinct[2]  # a seed's draw, another's differs
    two = [_voc_records(voc_dataset_cfg, sample_per_class=2, seed=s).records for s in (0, 1)]
    assert two[0] != two[1]


@pytest.mark.parametrize("reduce_zero_label", [True, False])
def test_listed_labels_are_those_mmseg_loads(tmp_path, reduce_zero_label):
    from mmseg.datasets.transforms import LoadAnnotations

    from pomp_seg.class_records import loaded_labels, raw_label_values
    values = np.array([0, 1, 3, 4, 8, 9, 30, 254, 255], dtype=np.uint8).repeat(3).reshape(3, 9)
    path = tmp_path / "seg.png"
    Image.fromarray(values).save(path)
    label_map = {3: 255, 7: 2, 2: 9, 254: 77}  # not chained: 7 -> 2 stays 2
    info = dict(seg_map_path=str(path), reduce_zero_label=reduce_zero_label, label_map=label_map, seg_fields=[])
    loaded = np.unique(LoadAnnotations()(info)["gt_seg_map"]).tolist()
    assert raw_label_values(str(path)) == [0, 1, 3, 4, 8, 9, 30, 254, 255]
    assert loaded_labels(raw_label_values(str(path)), reduce_zero_label, label_map) == loaded


def test_record_items_carry_their_class_and_none_is_the_image_set(voc_dataset_cfg):
    ds = _voc_records(voc_dataset_cfg, sample_per_class=2, seed=3)
    assert len(ds) == len(ds.records) == 2 + 2 + 2 + 1
    assert ds.class_counts() == {"aeroplane": 2, "bicycle": 2, "bird": 2, "car": 1}
    for k in range(len(ds)):
        item = ds[k]
        image, label = ds.records[k]
        assert item["data_samples"].metainfo["category_id"] == label == ds.get_data_info(k)["category_id"]
        assert (item["data_samples"].gt_sem_seg.data == label).any()
        assert item["data_samples"].metainfo["seg_map_path"] == ds.dataset.get_data_info(image)["seg_map_path"]
    images = _voc_records(voc_dataset_cfg, sample_per_class=None)
    assert len(images) == len(VOC_TRAIN) + len(VOC_AUG) and images.records == []
    assert "category_id" not in images[0]["data_samples"].metainfo
    for bad in (0, -2, 2.5):
        with pytest.raises(ValueError, match="sample_per_class must be"):
            _voc_records(voc_dataset_cfg, sample_per_class=bad)


def test_coco_stuff_records_and_the_class_count_cache(tmp_path):
    names = list(pomp_seg.ZeroShotCOCOStuffDataset.METAINFO["classes"])
    cow, wall = names.index("cow"), names.index("wall-concrete")  # unseen
    train = {"000000000001": [0, cow], "000000000002": [0, 170], "000000000003": [wall, 170, 5],
             "000000000004": [0]}
    coco = make_coco_stuff(tmp_path, train=train, val={"000000000009": [1]})
    ds = Config.fromfile(str(COCO_PROMPT)).train_dataloader.dataset
    assert (ds.type, ds.sample_per_class, ds.seed, ds.replace) == ("ClassRecordDataset", 32, 0, True)
    ds.dataset.data_root, ds.dataset.pipeline = str(coco), PIPELINE
    cache = tmp_path / "counts.json"
    built = DATASETS.build(dict(ds.to_dict(), sample_per_class=2, replace=False, class_count_file=str(cache)))
    truth = _true_records_coco(built.dataset, names)
    assert Counter(c for _, c in truth) == {0: 3, 170: 2, 5: 1}  # no unseen (cow, wall-concrete)
    assert set(built.records) <= set(truth) and len(set(built.records)) == len(built.records)
    assert Counter(c for _, c in built.records) == {0: 2, 170: 2, 5: 1}  # min(2, available)
    assert len(json.loads(cache.read_text())) == 4
    for path in (coco / "annotations" / "train2017").iterdir():  # the cache alone now lists the classes
        path.unlink()
    again = DATASETS.build(dict(ds.to_dict(), sample_per_class=2, replace=False, class_count_file=str(cache)))
    assert again.records == built.records
    ds.dataset.ignore_unseen = False  # unseen labels loaded as they are: still no record of them
    kept = DATASETS.build(dict(ds.to_dict(), sample_per_class=-1, class_count_file=str(cache)))
    assert sorted(kept.records) == sorted(truth)


def _true_records_coco(inner, names):
    unseen = {names.index(n) for n in pomp_seg.COCO_STUFF_UNSEEN}
    return [(i, int(c)) for i in range(len(inner))
            for c in np.unique(inner[i]["data_samples"].gt_sem_seg.data) if int(c) < 171 and int(c) not in unseen]


def test_prompt_tuner_crops_a_records_class_alone():
    model = MODELS.build(dict(type="PromptTuner", class_split="ZeroShotVOCDataset", clip_model="pomp-tiny",
                              clip_pretrained=None, init_words="a photo of a", crops_per_image=None, min_pixels=1))
    seen_masks = []
    real = model.crops.crops
    model.crops.crops = lambda img, masks, **kw: seen_masks.append(masks.clone()) or real(img, masks, **kw)
    samples = []
    for labels, record in (([0, 3, 4], 3), ([5, 6], 2), ([1, 7], None)):  # 2 is absent: no crop
        seg = torch.full((1, 40, 60), 255)
        for k, c in enumerate(labels):
            seg[0, 5 * k:5 * k + 8, 10 * k:10 * k + 12] = c
        meta = {} if record is None else {"category_id": record}
        samples.append(SegDataSample(gt_sem_seg=PixelData(data=seg), metainfo=meta))
    loss = model.loss(torch.randn(3, 3, 40, 60), samples)
    assert [len(m) for m in seen_masks] == [1, 2]  # the record's class; every seen class without a record
    assert torch.equal(seen_masks[0][0], samples[0].gt_sem_seg.data[0] == 3)
    assert loss["loss_prompt"].requires_grad
    samples[0].set_metainfo({"category_id": 15})  # pottedplant: unseen
    with pytest.raises(ValueError, match="not a seen class of model.class_split"):
        model.loss(torch.randn(3, 3, 40, 60), samples)


def test_voc_stage_a_config_trains_a_step_on_records(voc, tmp_path):
    cfg = override_config(tmp_path / "cfg.py", VOC_PROMPT, {
        "model.clip_model": "pomp-tiny", "model.clip_pretrained": None, "model.prompt": None,
        "model.init_words": "a photo of a", "train_dataloader.num_workers": 0,
        "train_dataloader.persistent_workers": False, "train_cfg.max_iters": 1,
        "default_hooks.checkpoint.interval": 1}, tail="param_scheduler = []\n")
    args = [str(cfg), "--work-dir", str(tmp_path / "work")]
    with pytest.raises(FileNotFoundError, match="train_dataloader's data root 'data/VOCdevkit/VOC2012'"):
        train_seg.main(args)  # the roots inside the wrapper are checked before the model is built
    runner = train_seg.main(args + ["--data-root", str(voc)])
    data = runner.train_dataloader.dataset
    assert type(data).__name__ == "ClassRecordDataset" and data.sample_per_class == 128
    assert len(data) == 11 and (tmp_path / "work" / "prompt.pth").is_file()  # all 11 records: each class < 128
