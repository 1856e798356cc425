"""Table-driven and value tests of pomp_seg/datasets.py (the published VOC / COCO-Stuff
seen/unseen splits written out literally, class-split files, the label maps that make unseen
pixels ignore, dropping all-ignore images) and pomp_seg/text_classifier.py
(``temperature * cos(proj(x), t_c)`` per pixel or per query, the no-object column, the MLP)."""
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmseg.datasets import BaseSegDataset
from mmseg.datasets.transforms import LoadAnnotations
from mmseg.registry import DATASETS
from PIL import Image
from torch import nn

from pomp_seg import datasets as ds
from pomp_seg.text_classifier import TextEmbeddingClassifier, make_zero_shot

pytestmark = pytest.mark.usefixtures("global_rng_kept")  # tests/conftest.py


VOC = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
       "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
VOC_UNSEEN = ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]
COCO_UNSEEN = ["cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors", "cardboard", "clouds",
               "grass", "playingfield", "river", "road", "tree", "wall-concrete"]
# their positions among COCO-Stuff's 171 classes (mmseg's order: 80 things, then 91 stuff)
COCO_UNSEEN_IDS = [19, 23, 28, 29, 36, 51, 76, 88, 94, 112, 133, 136, 137, 157, 160]


# ------------------------------------------------------------------ datasets.py: the splits
def test_published_splits_literally():
    assert list(ds.VOC_UNSEEN) == VOC_UNSEEN and list(ds.COCO_STUFF_UNSEEN) == COCO_UNSEEN
    classes, unseen = ds.resolve_split("ZeroShotVOCDataset")
    assert classes == VOC and unseen == VOC_UNSEEN  # 20 classes, background left out
    assert ds.seen_classes("ZeroShotVOCDataset") == [
        "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
        "horse", "motorbike", "person"]
    classes, unseen = ds.resolve_split("ZeroShotCOCOStuffDataset")
    assert len(classes) == 171 and unseen == COCO_UNSEEN
    assert [classes.index(c) for c in COCO_UNSEEN] == COCO_UNSEEN_IDS
    assert classes[:3] == ["person", "bicycle", "car"] and classes[-1] == "wood"
    seen = ds.seen_classes("ZeroShotCOCOStuffDataset")
    assert len(seen) == 156 and seen == [c for i, c in enumerate(classes) if i not in COCO_UNSEEN_IDS]
    palette = DATASETS.get("ZeroShotVOCDataset").METAINFO["palette"]
    assert len(palette) == 20 and list(palette[0]) == [128, 0, 0]  # aeroplane's colour, not background's


def test_class_split_files_and_name_lists(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "classes.json").write_text(json.dumps({"classes": ["a", "b", "c", "d"], "unseen": [3, 1]}))
    assert ds.read_class_split(tmp_path / "w" / "classes.json") == (["a", "b", "c", "d"], ["d", "b"])
    assert ds.resolve_split(str(tmp_path / "w")) == (["a", "b", "c", "d"], ["d", "b"])  # the folder holding it
    assert ds.resolve_split(str(tmp_path / "w" / "classes.json"))[1] == ["d", "b"]
    assert ds.seen_classes(str(tmp_path / "w")) == ["a", "c"]
    (tmp_path / "split.json").write_text(json.dumps({"classes": ["x", "y"]}))
    assert ds.read_class_split(tmp_path / "split.json") == (["x", "y"], [])  # no unseen indices: none
    assert ds.resolve_split(["p", "q"]) == (["p", "q"], []) and ds.seen_classes(("p", "q")) == ["p", "q"]
    with pytest.raises(FileNotFoundError, match="^" + re.escape(
            f"class split file '{tmp_path / 'nope.json'}' does not exist (expected the dataset's classes.json with "
            "'classes' and 'unseen' indices)") + "$"):
        ds.resolve_split(str(tmp_path / "nope.json"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ds.resolve_split(f"{tmp_path}/other/file")  # a path (holds a separator), not a dataset type
    (tmp_path / "bad.json").write_text(json.dumps({"names": []}))
    with pytest.raises(ValueError, match=r"bad\.json has no 'classes' list"):
        ds.read_class_split(tmp_path / "bad.json")
    for name in ("NoSuchDataset", "PascalVOCDataset", "ClassRecordDataset"):  # unknown / no split / no METAINFO
        with pytest.raises(ValueError, match=rf"'{name}' is not a dataset with a seen/unseen split; use one of "
                                             r"\['ZeroShotVOCDataset', 'ZeroShotCOCOStuffDataset'\]"):
            ds.resolve_split(name)


# ------------------------------------------------------------------ datasets.py: label maps
def voc_root(tmp_path, labels):
    """A VOC-style root: JPEGImages/<n>.jpg, SegmentationClass/<n>.png (raw 21-class values), train.txt."""
    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    for name, values in labels.items():
        ann = np.array(values, dtype=np.uint8).reshape(1, -1)
        Image.fromarray(ann).save(root / "SegmentationClass" / f"{name}.png")
        Image.new("RGB", (ann.shape[1], 1)).save(root / "JPEGImages" / f"{name}.jpg")
    (root / "train.txt").write_text("\n".join(labels) + "\n")
    return root


def build_voc(root, **kw):
    return DATASETS.build(dict(type="ZeroShotVOCDataset", data_root=str(root), ann_file="train.txt",
                               data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
                               pipeline=[LoadAnnotations()], **kw))


def test_voc_unseen_pixels_become_ignore_after_the_zero_label_is_reduced(tmp_path):
    # raw VOC values: 0 background, 1..20 classes, 255 border; 16..20 are the unseen classes
    raw = [0, 1, 15, 16, 17, 18, 19, 20, 255, 14]
    root = voc_root(tmp_path, {"a": raw})
    plain, train = build_voc(root), build_voc(root, ignore_unseen=True)
    assert plain.unseen_ids() == [15, 16, 17, 18, 19] and plain.metainfo["classes"] == tuple(VOC)
    assert train.get_data_info(0)["label_map"] == {15: 255, 16: 255, 17: 255, 18: 255, 19: 255}
    assert plain[0]["gt_seg_map"].ravel().tolist() == [255, 0, 14, 15, 16, 17, 18, 19, 255, 13]
    assert train[0]["gt_seg_map"].ravel().tolist() == [255, 0, 14, 255, 255, 255, 255, 255, 255, 13]


def test_custom_classes_compose_with_the_unseen_map(tmp_path):
    root = voc_root(tmp_path, {"a": [3, 8, 17, 20, 9, 1]})
    classes = ("bird", "cat", "sheep", "tvmonitor")  # a subset: mmseg maps the others to 255
    sub = build_voc(root, metainfo=dict(classes=classes), ignore_unseen=True)
    assert sub.unseen_ids() == [2, 3]  # sheep, tvmonitor among the four
    label_map = sub.get_data_info(0)["label_map"]
    # old ids (20 classes, reduced): bird 2 -> 0, cat 7 -> 1, sheep 16 and tvmonitor 19 -> ignore, rest 255
    assert label_map == {i: {2: 0, 7: 1}.get(i, 255) for i in range(20)}
    assert sub[0]["gt_seg_map"].ravel().tolist() == [0, 1, 255, 255, 255, 255]
    kept = build_voc(root, metainfo=dict(classes=classes))
    assert kept[0]["gt_seg_map"].ravel().tolist() == [0, 1, 2, 3, 255, 255]


def test_drop_all_ignore_leaves_out_images_with_only_ignored_labels(tmp_path, monkeypatch):
    logged = []  # mmengine's logger keeps the stream it was created with: read the message here
    monkeypatch.setattr(ds, "print_log", lambda msg, logger=None: logged.append((msg, logger)))
    root = voc_root(tmp_path, {
        "a": [0, 1, 16],  # aeroplane left: kept
        "b": [0, 17, 20],  # unseen and background only: dropped when unseen is ignored
        "c": [255, 15],  # person: kept
        "d": [0, 21, 22]})  # values past the 20 classes count as ignore
    def names(d):  # data_list itself is serialised away after loading
        return [d.get_data_info(i)["seg_map_path"].rsplit("/", 1)[1] for i in range(len(d))]

    assert names(build_voc(root, ignore_unseen=True)) == ["a.png", "b.png", "c.png", "d.png"]
    assert names(build_voc(root, ignore_unseen=True, drop_all_ignore=True)) == ["a.png", "c.png"]
    assert logged == [("ZeroShotVOCDataset: 2 of 4 images have only ignored labels and are left out "
                       "(drop_all_ignore=True, as ZSSeg)", "current")]
    assert names(build_voc(root, drop_all_ignore=True)) == ["a.png", "b.png", "c.png"]
    # the lists go through the cache file when one is named (relative: inside data_root)
    cached = build_voc(root, ignore_unseen=True, drop_all_ignore=True, class_count_file="counts.json")
    assert names(cached) == ["a.png", "c.png"] and (root / "counts.json").is_file()
    assert (cached.ignore_unseen, cached.drop_all_ignore, cached.class_count_file) == (True, True, "counts.json")


def test_dataset_defaults_and_missing_roots(tmp_path):
    root = voc_root(tmp_path, {"a": [1]})
    d = build_voc(root)
    assert (d.ignore_unseen, d.drop_all_ignore, d.class_count_file, d.reduce_zero_label) == (False, False, None, True)
    with pytest.raises(FileNotFoundError, match="^" + re.escape(
            f"ZeroShotCOCOStuffDataset: data_root '{tmp_path / 'nope'}' does not exist; set "
            "train_dataloader.dataset.data_root (and the val/test ones) with --cfg-options, or prepare the data as "
            "docs/segmentation.md describes") + "$"):
        DATASETS.build(dict(type="ZeroShotCOCOStuffDataset", data_root=str(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError, match="^" + re.escape(
            f"world segmentation root '{tmp_path / 'gone'}' does not exist; write it with tools/make_world.py "
            "--parts segmentation --out DIR (it is DIR/segmentation)") + "$"):
        DATASETS.build(dict(type="WorldSegDataset", data_root=str(tmp_path / "gone")))


def test_world_dataset_reads_its_split_and_suffixes(tmp_path):
    root = tmp_path / "seg"
    for sub in ("img_dir/val", "ann_dir/val"):
        (root / sub).mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps({"classes": ["sky", "cat", "dog"], "unseen": [2]}))
    Image.fromarray(np.array([[0, 1, 2]], dtype=np.uint8)).save(root / "ann_dir/val/s.png")
    Image.new("RGB", (3, 1)).save(root / "img_dir/val/s.png")
    d = DATASETS.build(dict(type="WorldSegDataset", data_root=str(root), ignore_unseen=True,
                            data_prefix=dict(img_path="img_dir/val", seg_map_path="ann_dir/val"),
                            pipeline=[LoadAnnotations()]))
    assert d.metainfo["classes"] == ("sky", "cat", "dog") and d.metainfo["unseen_classes"] == ("dog",)
    assert d.unseen_ids() == [2] and len(d) == 1 and d.get_data_info(0)["img_path"].endswith("s.png")
    assert d[0]["gt_seg_map"].ravel().tolist() == [0, 1, 255]


def test_a_json_name_in_the_working_folder_is_a_split_file(tmp_path, monkeypatch):
    (tmp_path / "mine.json").write_text(json.dumps({"classes": ["a", "b"], "unseen": [0]}))
    monkeypatch.chdir(tmp_path)
    assert ds.resolve_split("mine.json") == (["a", "b"], ["a"])


def test_world_dataset_suffixes_and_extra_metainfo_reach_mmseg(tmp_path):
    root = tmp_path / "seg"
    for sub in ("img", "ann"):
        (root / sub).mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps({"classes": ["sky", "cat"], "unseen": [1]}))
    Image.fromarray(np.array([[1, 0]], dtype=np.uint8)).save(root / "ann" / "s_gt.png")
    Image.new("RGB", (2, 1)).save(root / "img" / "s.jpg")
    Image.new("RGB", (2, 1)).save(root / "img" / "t.png")  # another suffix: not an image of this dataset
    d = DATASETS.build(dict(type="WorldSegDataset", data_root=str(root), img_suffix=".jpg", seg_map_suffix="_gt.png",
                            metainfo=dict(palette=[[1, 2, 3], [4, 5, 6]]), data_prefix=dict(img_path="img",
                            seg_map_path="ann"), pipeline=[LoadAnnotations()]))
    assert len(d) == 1 and d.get_data_info(0)["seg_map_path"].endswith("s_gt.png")
    assert d.metainfo["palette"] == [[1, 2, 3], [4, 5, 6]] and d.metainfo["unseen_classes"] == ("cat",)
    assert d[0]["gt_seg_map"].ravel().tolist() == [1, 0]


def test_positional_arguments_reach_mmseg(tmp_path):
    root = tmp_path / "coco"
    for sub in ("img", "ann"):
        (root / sub).mkdir(parents=True)
    Image.new("RGB", (2, 1)).save(root / "img" / "a.png")
    Image.fromarray(np.zeros((1, 2), dtype=np.uint8)).save(root / "ann" / "a_x.png")
    d = DATASETS.get("ZeroShotCOCOStuffDataset")(".png", "_x.png", data_root=str(root),
                                                 data_prefix=dict(img_path="img", seg_map_path="ann"))
    assert (d.img_suffix, d.seg_map_suffix, len(d)) == (".png", "_x.png", 1)


def test_a_mixin_dataset_without_an_unseen_list_has_no_unseen_ids(tmp_path):
    class Plain(ds.ZeroShotSegMixin, BaseSegDataset):  # a user's dataset: classes, no split
        METAINFO = dict(classes=("a", "b"))

    (tmp_path / "img").mkdir()
    Image.new("RGB", (2, 1)).save(tmp_path / "img" / "x.jpg")
    d = Plain(data_root=str(tmp_path), data_prefix=dict(img_path="img"), ignore_unseen=True)
    assert d.unseen_ids() == [] and len(d) == 1 and d.get_data_info(0)["label_map"] == {}


# ------------------------------------------------------------------ text_classifier.py
def by_hand(feats, emb, temperature):
    """temperature * cos(f, e_c) for rows f of feats [N, D] and e_c of emb [C, D] (plain loops)."""
    out = torch.zeros(feats.shape[0], emb.shape[0], dtype=torch.float64)
    for i in range(feats.shape[0]):
        for c in range(emb.shape[0]):
            out[i, c] = temperature * float(feats[i] @ emb[c]) / float(feats[i].norm() * emb[c].norm())
    return out


def embeds(c=3, d=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(c, d, generator=g) * torch.tensor([[0.3], [2.0], [1.1], [5.0]])[:c]).double()


def test_per_query_scores_by_hand_with_the_default_temperature():
    clf = TextEmbeddingClassifier(5, 4).double()
    assert clf.temperature == 100.0 and clf.channel_dim == -1 and clf.no_object is None
    x = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)  # [B, Q, in]
    e = embeds()
    out = clf(x, e)
    assert out.shape == (2, 3, 3)
    w, b = clf.proj.weight.detach(), clf.proj.bias.detach()
    expected = by_hand(x.reshape(6, 5) @ w.t() + b, e, 100.0).reshape(2, 3, 3)
    torch.testing.assert_close(out, expected)
    # the vocabulary stays for the next call without one
    torch.testing.assert_close(clf(x), expected)
    with pytest.raises(RuntimeError, match=r"^no vocabulary: call set_class_embeddings\(text_features\) first$"):
        TextEmbeddingClassifier(5, 4)(x.float())


def test_per_pixel_maps_keep_channels_in_dim_one():
    clf = TextEmbeddingClassifier(5, 4, temperature=30.0, channel_dim=1).double()
    x = torch.randn(2, 5, 3, 7, generator=torch.Generator().manual_seed(4), dtype=torch.float64)  # H != W
    e = embeds()
    clf.set_class_embeddings(e)
    out = clf(x)
    assert out.shape == (2, 3, 3, 7)
    w, b = clf.proj.weight.detach(), clf.proj.bias.detach()
    pixels = x.permute(0, 2, 3, 1).reshape(-1, 5)  # [B*H*W, in]
    expected = by_hand(pixels @ w.t() + b, e, 30.0).reshape(2, 3, 7, 3).permute(0, 3, 1, 2)
    torch.testing.assert_close(out, expected)


def test_no_object_is_the_last_normalised_column():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        clf = TextEmbeddingClassifier(5, 4, temperature=10.0, no_object=True).double()
        torch.manual_seed(7)
        nn.Linear(5, 4)  # drawn first, as in the constructor
        init = torch.randn(1, 4) * 4 ** -0.5
    assert isinstance(clf.no_object, nn.Parameter) and clf.no_object.shape == (1, 4)
    torch.testing.assert_close(clf.no_object.detach(), init.double())
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    e = embeds()
    out = clf(x, e)
    assert out.shape == (4, 4)
    w, b = clf.proj.weight.detach(), clf.proj.bias.detach()
    torch.testing.assert_close(out, by_hand(x @ w.t() + b, torch.cat([e, clf.no_object.detach()]), 10.0))
    assert clf.class_embeds.shape == (3, 4)  # the no-object row is not stored in the vocabulary


def test_mlp_projection_layers_and_widths():
    clf = TextEmbeddingClassifier(5, 4, proj_layers=3, proj_hidden=7).double()
    kinds = [type(m).__name__ for m in clf.proj]
    assert kinds == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert [(m.in_features, m.out_features) for m in clf.proj if isinstance(m, nn.Linear)] == [(5, 7), (7, 7), (7, 4)]
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    lin = [m for m in clf.proj if isinstance(m, nn.Linear)]
    h = F.relu(x @ lin[0].weight.t() + lin[0].bias)
    h = F.relu(h @ lin[1].weight.t() + lin[1].bias)
    h = h @ lin[2].weight.t() + lin[2].bias
    e = embeds()
    torch.testing.assert_close(clf(x, e), by_hand(h.detach(), e, 100.0))
    two = TextEmbeddingClassifier(5, 4, proj_layers=2)  # hidden width defaults to in_channels
    assert [(m.in_features, m.out_features) for m in two.proj if isinstance(m, nn.Linear)] == [(5, 5), (5, 4)]
    assert isinstance(TextEmbeddingClassifier(5, 4, proj_layers=1, proj_hidden=9).proj, nn.Linear)
    with pytest.raises(ValueError, match="proj_layers must be >= 1, got 0"):
        TextEmbeddingClassifier(5, 4, proj_layers=0)


def test_class_embedding_size_is_checked():
    clf = TextEmbeddingClassifier(5, 4)
    for bad in (torch.zeros(3, 5), torch.zeros(4), torch.zeros(2, 3, 4)):
        with pytest.raises(ValueError, match=r"class embeddings must be \[C, 4\], got .*: the text encoder's "
                                             r"embedding size must match the classifier's embed_dims"):
            clf.set_class_embeddings(bad)
    assert clf.class_embeds is None


class Head(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.channels, self.num_classes, self.out_channels = channels, 21, 21
        self.conv_seg = nn.Conv2d(channels, 21, 1)


def test_make_zero_shot_swaps_the_last_conv():
    e = embeds(c=3).float()
    head = make_zero_shot(Head(5), TextEmbeddingClassifier(5, 4), e)
    assert isinstance(head.conv_seg, TextEmbeddingClassifier) and head.conv_seg.channel_dim == 1
    assert (head.num_classes, head.out_channels) == (3, 3) and head.conv_seg.class_embeds is e
    assert head.conv_seg(torch.randn(1, 5, 2, 3)).shape == (1, 3, 2, 3)
    mlp = make_zero_shot(Head(5), TextEmbeddingClassifier(5, 4, proj_layers=2, proj_hidden=8), e)
    assert mlp.num_classes == 3
    with pytest.raises(ValueError, match="classifier in_channels 6 != head channels 5"):
        make_zero_shot(Head(5), TextEmbeddingClassifier(6, 4), e)
    with pytest.raises(ValueError, match="classifier in_channels 6 != head channels 5"):
        make_zero_shot(Head(5), TextEmbeddingClassifier(6, 4, proj_layers=2, proj_hidden=5), e)
    with pytest.raises(TypeError, match="Linear has no conv_seg to replace"):
        make_zero_shot(nn.Linear(5, 5), TextEmbeddingClassifier(5, 4), e)
