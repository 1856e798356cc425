"""Value tests of the detector's open-vocabulary parts: pomp_det/zero_shot_classifier.py (box
feature -> Linear -> D, L2-normalised, x temperature, dot with unit class embeddings, a zero
background column), pomp_det/data/lvis_norare.py (rare-class annotations removed, images and
categories kept), pomp_det/data/image_labels.py and pomp_det/vocabulary.py (vocabulary swaps)."""
import json
import logging
import re
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from torch import nn

from pomp_det import vocabulary as voc
from pomp_det.cfg_loader import get_pomp_cfg
from pomp_det.data import image_labels as il
from pomp_det.data import lvis_norare
from pomp_det.embeddings import random_embeddings
from pomp_det.zero_shot_classifier import ZeroShotClassifier

pytestmark = pytest.mark.usefixtures("global_rng_kept")  # tests/conftest.py


# ------------------------------------------------------------------ zero_shot_classifier.py
def by_hand(x, weight, bias, emb, temperature):
    """T * cos(W x + b, e_c) for each class, then a 0 column (plain loops)."""
    z = x @ weight.t() + bias
    out = torch.zeros(x.shape[0], emb.shape[0] + 1, dtype=torch.float64)
    for i in range(x.shape[0]):
        for c in range(emb.shape[0]):
            out[i, c] = temperature * float(z[i] @ emb[c]) / float(z[i].norm() * emb[c].norm())
    return out


def classifier_inputs():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 6, generator=g)  # 5 boxes, 6-d features, projected to D = 4, 3 classes
    emb = torch.randn(3, 4, generator=g) * torch.tensor([[0.5], [3.0], [1.7]])  # rows of unequal norms
    return x, emb


def test_logits_by_hand_with_the_default_temperature_and_no_bias():
    x, emb = classifier_inputs()
    clf = ZeroShotClassifier(6, emb.double())
    assert clf.temperature == 50.0 and clf.bias is None
    assert (clf.num_classes, clf.embed_dim) == (3, 4)
    w, b = clf.linear.weight.detach(), clf.linear.bias.detach()
    logits = clf(x)
    assert logits.shape == (5, 4) and logits.dtype == torch.float32
    torch.testing.assert_close(logits.double(), by_hand(x.double(), w.double(), b.double(), emb.double(), 50.0),
                               rtol=1e-5, atol=1e-4)
    assert torch.equal(logits[:, 3], torch.zeros(5))  # the background column is zero, not a score
    # unit rows, float32, no gradient, not in the state dict (the vocabulary comes from the config)
    assert clf.embeddings.dtype == torch.float32 and not clf.embeddings.requires_grad
    torch.testing.assert_close(clf.embeddings, (emb / emb.norm(dim=1, keepdim=True)).float())
    assert sorted(clf.state_dict()) == ["linear.bias", "linear.weight"]
    # a buffer: it follows the module's dtype and device, and a device-side module gets it there
    assert "embeddings" in dict(clf.named_buffers())
    assert clf.double().embeddings.dtype == torch.float64
    meta = ZeroShotClassifier(6, emb).to("meta")
    meta.set_embeddings(emb)
    assert meta.embeddings.device.type == "meta"


def test_a_per_call_vocabulary_follows_the_features_dtype():
    x, emb = classifier_inputs()
    clf = ZeroShotClassifier(6, emb, temperature=3.0).double()
    other = torch.tensor([[1.0, 2.0, 0.0, -1.0], [0.0, 0.0, 5.0, 0.0]])  # float32
    out = clf(x.double(), embeddings=other)
    assert out.dtype == torch.float64
    w, b = clf.linear.weight.detach(), clf.linear.bias.detach()
    torch.testing.assert_close(out, by_hand(x.double(), w, b, other.double(), 3.0), rtol=1e-5, atol=1e-5)


def test_temperature_bias_and_a_per_call_vocabulary():
    x, emb = classifier_inputs()
    clf = ZeroShotClassifier(6, emb, temperature=7.0, use_bias=True, bias_init=-2.5)
    w, b = clf.linear.weight.detach(), clf.linear.bias.detach()
    expected = by_hand(x.double(), w.double(), b.double(), emb.double(), 7.0)
    expected[:, :3] -= 2.5  # the bias shifts the class columns only
    torch.testing.assert_close(clf(x).double(), expected, rtol=1e-5, atol=1e-4)
    assert isinstance(clf.bias, nn.Parameter) and clf.bias.requires_grad and clf.bias.item() == -2.5
    assert sorted(clf.state_dict()) == ["bias", "linear.bias", "linear.weight"]
    assert ZeroShotClassifier(6, emb, use_bias=True).bias.item() == 0.0
    other = torch.tensor([[1.0, 2.0, 0.0, -1.0], [0.0, 0.0, 5.0, 0.0]])
    exp_other = by_hand(x.double(), w.double(), b.double(), other.double(), 7.0)
    exp_other[:, :2] -= 2.5
    torch.testing.assert_close(clf(x, embeddings=other).double(), exp_other, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(clf.embeddings, (emb / emb.norm(dim=1, keepdim=True)))  # kept for later calls


def test_set_embeddings_replaces_the_vocabulary_and_checks_its_size():
    x, emb = classifier_inputs()
    clf = ZeroShotClassifier(6, emb)
    new = torch.tensor([[0.0, 3.0, 4.0, 0.0], [1.0, 1.0, 1.0, 1.0]], requires_grad=True)
    clf.set_embeddings(new)
    assert clf.num_classes == 2 and not clf.embeddings.requires_grad
    torch.testing.assert_close(clf.embeddings, torch.tensor([[0.0, 0.6, 0.8, 0.0], [0.5, 0.5, 0.5, 0.5]]))
    w, b = clf.linear.weight.detach(), clf.linear.bias.detach()
    torch.testing.assert_close(clf(x).double(), by_hand(x.double(), w.double(), b.double(), new.detach().double(),
                                                          50.0), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match=r"class embeddings of shape \(2, 5\) do not fit this classifier, which "
                                         r"projects box features to D=4"):
        clf.set_embeddings(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"of shape \(4,\) do not fit"):
        clf.set_embeddings(torch.zeros(4))
    with pytest.raises(ValueError, match=r"class embeddings must be \[C, D\], got shape \(3, 4, 1\)"):
        ZeroShotClassifier(6, torch.zeros(3, 4, 1))


# ------------------------------------------------------------------ lvis_norare.py
LVIS = {"info": {"year": 2020},
        "images": [{"id": 1}, {"id": 2}, {"id": 3}],
        "categories": [{"id": 1, "name": "a", "frequency": "f"}, {"id": 2, "name": "b", "frequency": "r"},
                       {"id": 3, "name": "c", "frequency": "c"}, {"id": 4, "name": "d", "frequency": "r"}],
        "annotations": [{"id": 10, "image_id": 1, "category_id": 2}, {"id": 11, "image_id": 1, "category_id": 1},
                        {"id": 12, "image_id": 2, "category_id": 4}, {"id": 13, "image_id": 3, "category_id": 3},
                        {"id": 14, "image_id": 3, "category_id": 2}]}


def test_norare_path_sits_next_to_its_source(tmp_path):
    assert lvis_norare.norare_path(tmp_path / "lvis_v1_train.json") == tmp_path / "lvis_v1_train_norare.json"
    assert lvis_norare.norare_path("a/b.c.json") == lvis_norare.norare_path("a/b.c.json").parent / "b.c_norare.json"


def test_norare_drops_rare_annotations_only(tmp_path, caplog):
    src = tmp_path / "lvis_v1_train.json"
    src.write_text(json.dumps(LVIS))
    with caplog.at_level(logging.INFO, logger=lvis_norare.__name__):
        out = lvis_norare.make_norare_json(src)
    assert out == tmp_path / "lvis_v1_train_norare.json"
    data = json.loads(out.read_text())
    # rare = b (2) and d (4): annotations 10, 12, 14 go; every image (2 now has none) and category stays
    assert [a["id"] for a in data["annotations"]] == [11, 13]
    assert data["images"] == LVIS["images"] and data["categories"] == LVIS["categories"]
    assert data["info"] == LVIS["info"]
    assert caplog.messages == [f"lvis_v1_train.json: dropped 3 annotations of 2 rare classes, kept 2 (3 images) "
                               f"-> {out}"]
    # an existing output is kept unless overwrite
    out.write_text("{}")
    assert lvis_norare.make_norare_json(src) == out and out.read_text() == "{}"
    assert lvis_norare.make_norare_json(src, overwrite=True) == out
    assert [a["id"] for a in json.loads(out.read_text())["annotations"]] == [11, 13]
    other = lvis_norare.make_norare_json(str(src), str(tmp_path / "sub" / "x.json"))
    assert other == tmp_path / "sub" / "x.json" and json.loads(other.read_text()) == data


def test_norare_errors_and_command_line(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "missing.json"
    with pytest.raises(FileNotFoundError, match="^" + re.escape(
            f"LVIS annotation file '{missing}' does not exist: download lvis_v1_train.json into "
            "$DETECTRON2_DATASETS/lvis/ (see docs/detection.md)") + "$"):
        lvis_norare.make_norare_json(missing)
    bad = tmp_path / "coco.json"
    bad.write_text(json.dumps({"categories": [{"id": 1, "frequency": "f"}, {"id": 2}], "annotations": []}))
    with pytest.raises(ValueError, match="has categories without 'frequency': not an LVIS v1 annotation file"):
        lvis_norare.make_norare_json(bad)
    for keys in ({"images": []}, {"categories": [{"id": 1, "frequency": "r"}]}):  # another kind of json
        bad.write_text(json.dumps(keys))
        with pytest.raises(ValueError, match="^" + re.escape(
                f"{bad} has no 'categories' or 'annotations': not an LVIS v1 annotation file") + "$"):
            lvis_norare.make_norare_json(bad)
    src = tmp_path / "t.json"
    src.write_text(json.dumps(LVIS))
    configured = []  # the command logs at INFO (pytest's handlers would make basicConfig a no-op)
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: configured.append(kw))
    lvis_norare.main([str(src), "--out", str(tmp_path / "o.json")])
    assert configured == [{"level": logging.INFO}]
    assert capsys.readouterr().out.strip() == str(tmp_path / "o.json")
    (tmp_path / "o.json").write_text("{}")
    lvis_norare.main([str(src), "--out", str(tmp_path / "o.json"), "--overwrite"])
    assert len(json.loads((tmp_path / "o.json").read_text())["annotations"]) == 2
    lvis_norare.main([str(src)])
    assert capsys.readouterr().out.splitlines()[-1] == str(tmp_path / "t_norare.json")
    monkeypatch.setattr(sys, "argv", ["lvis_norare"])  # argparse's program name
    with pytest.raises(SystemExit):
        lvis_norare.main(["--help"])
    assert " ".join(capsys.readouterr().out.split()) == (
        "usage: lvis_norare [-h] [--out OUT] [--overwrite] src write the LVIS *_norare.json training split positional "
        "arguments: src lvis_v1_train.json options: -h, --help show this help message and exit --out OUT default: "
        "<src>_norare.json next to it --overwrite")


# ------------------------------------------------------------------ data/image_labels.py
def test_image_label_records(tmp_path):
    path = tmp_path / "info.json"
    path.write_text(json.dumps({"images": [
        {"id": 7, "file_name": "n1/a.jpg", "height": 30, "width": 40, "pos_category_ids": [5, 1, 5, 1203]},
        {"id": 9, "file_name": "b.jpg", "height": 8, "width": 6, "pos_category_ids": []}], "categories": []}))
    records = il.load_image_label_json(str(path), "/data/in")
    assert records == [
        {"file_name": "/data/in/n1/a.jpg", "image_id": 7, "height": 30, "width": 40, "ann_type": "image",
         "pos_category_ids": [0, 4, 1202], "annotations": []},  # 1-based LVIS ids -> 0-based, sorted, once
        {"file_name": "/data/in/b.jpg", "image_id": 9, "height": 8, "width": 6, "ann_type": "image",
         "pos_category_ids": [], "annotations": []}]
    with pytest.raises(FileNotFoundError, match="^" + re.escape(
            f"image-label file '{tmp_path / 'nothing.json'}' does not exist (Detic's datasets/imagenet/annotations/"
            "imagenet_lvis_image_info.json; see docs/detection.md)") + "$"):
        il.load_image_label_json(str(tmp_path / "nothing.json"), "/data")


@pytest.fixture
def catalog_names():
    """Dataset names registered by a test, removed afterwards from both catalogs."""
    names = []
    yield names
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_register_image_label_dataset(tmp_path, catalog_names):
    path = tmp_path / "info.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.jpg", "height": 2, "width": 3,
                                            "pos_category_ids": [2]}]}))
    catalog_names += ["test_values_il_own", "test_values_il_lvis"]
    il.register_image_label_dataset("test_values_il_own", path, tmp_path / "img", thing_classes=["u", "v"])
    il.register_image_label_dataset("test_values_il_lvis", path, tmp_path / "img")
    assert DatasetCatalog.get("test_values_il_own")[0]["pos_category_ids"] == [1]
    assert DatasetCatalog.get("test_values_il_own")[0]["file_name"] == str(tmp_path / "img" / "x.jpg")
    own, lvis = MetadataCatalog.get("test_values_il_own"), MetadataCatalog.get("test_values_il_lvis")
    assert (own.json_file, own.image_root, own.ann_type, own.evaluator_type, own.thing_classes) == \
        (str(path), str(tmp_path / "img"), "image", "none", ["u", "v"])
    assert len(lvis.thing_classes) == 1203 and lvis.thing_classes[:2] == ["aerosol_can", "air_conditioner"]


def test_builtin_image_labels_follow_detics_layout(monkeypatch):
    calls = []
    monkeypatch.setattr(il, "register_image_label_dataset", lambda *a, **k: calls.append((a, k)))
    il.register_builtin_image_labels("/d2")
    assert calls == [(("imagenet_lvis_v1", "/d2/imagenet/annotations/imagenet_lvis_image_info.json",
                       "/d2/imagenet/ImageNet-LVIS"), {})]


# ------------------------------------------------------------------ vocabulary.py
class Predictor(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.cls_score = nn.Module()
        self.cls_score.embeddings = torch.arange(4.0 * c).reshape(c, 4)
        self.fed_loss_weight = torch.arange(1.0, c + 1)


class Heads(nn.Module):
    """The part of PompROIHeads the vocabulary functions use; records set_class_embeddings."""

    def __init__(self, c=3):
        super().__init__()
        self.num_classes, self.calls, self.pred = c, [], Predictor(c)

    def _predictors(self):
        return [self.pred]

    def set_class_embeddings(self, emb, fed_loss_weight=None):
        self.calls.append((emb.clone(), None if fed_loss_weight is None else fed_loss_weight.clone()))
        self.pred.cls_score.embeddings, self.num_classes = emb, emb.shape[0]
        if fed_loss_weight is not None:
            self.pred.fed_loss_weight = fed_loss_weight


class Detector(nn.Module):
    def __init__(self, c=3):
        super().__init__()
        self.roi_heads = Heads(c)
        self.w = nn.Parameter(torch.zeros(1, dtype=torch.float64))


def test_roi_heads_are_found_through_a_wrapper_or_refused():
    model = Detector(5)
    wrapper = nn.Module()
    wrapper.module = model  # DistributedDataParallel's layout
    assert voc.model_num_classes(model) == 5 and voc.model_num_classes(wrapper) == 5
    bare = nn.Module()
    bare.roi_heads = nn.Linear(1, 1)  # detectron2's standard heads: no set_class_embeddings
    for m in (nn.Linear(1, 1), bare):
        with pytest.raises(TypeError, match="^" + re.escape(
                "this model has no POMP ROI heads (MODEL.ROI_HEADS.NAME PompROIHeads or PompCascadeROIHeads): "
                "add configs/det/Base-POMP.yaml to its _BASE_") + "$"):
            voc.model_num_classes(m)


def random_cfg(seed=3, dim=4):
    cfg = get_pomp_cfg()
    cfg.MODEL.POMP.RANDOM_EMBEDDINGS_SEED, cfg.MODEL.POMP.EMBED_DIM = seed, dim
    return cfg


def test_set_vocabulary_from_names_and_from_a_npy(tmp_path, caplog):
    model = Detector()
    with caplog.at_level(logging.INFO, logger=voc.__name__):
        assert voc.set_vocabulary(model, random_cfg(), "zebra, teapot") == ["zebra", "teapot"]
    assert caplog.messages == ["vocabulary set to 2 classes from zebra, teapot"]
    (emb, fed), = model.roi_heads.calls
    assert fed is None and torch.equal(emb, random_embeddings(2, 4, 3))
    array = np.array([[1, 2, 3, 4], [0, 0, 1, 0], [5, 5, 5, 5]], dtype=np.float16)
    np.save(tmp_path / "v.npy", array)
    assert voc.set_vocabulary(model, get_pomp_cfg(), str(tmp_path / "v.npy")) is None
    assert torch.equal(model.roi_heads.calls[-1][0], torch.from_numpy(array.astype(np.float32)))
    assert voc.model_num_classes(model) == 3
    cfg = get_pomp_cfg()
    cfg.MODEL.POMP.EMBEDDINGS = "train.npy"
    with pytest.raises(ValueError, match="^" + re.escape(
            "cannot encode the vocabulary 'a,b': the model's embeddings come from a fixed file (train.npy); give "
            "MODEL.POMP.PROMPT (the prompt it was trained with) and MODEL.POMP.CLIP_MODEL, or pass a .npy exported "
            "for the new vocabulary") + "$"):
        voc.set_vocabulary(model, cfg, "a,b")
    cfg.MODEL.POMP.RANDOM_EMBEDDINGS_SEED = 0  # seed 0 is a seed: names can be embedded
    assert voc.set_vocabulary(model, cfg, "a,b") == ["a", "b"]
    assert torch.equal(model.roi_heads.calls[-1][0], random_embeddings(2, cfg.MODEL.POMP.EMBED_DIM, 0))


def test_a_prompt_or_prompt_words_let_a_fixed_file_model_encode_names(monkeypatch):
    encoded = []
    monkeypatch.setattr(voc, "embeddings_from_config", lambda cfg, names: encoded.append(names) or torch.ones(2, 4))
    for key, value in (("PROMPT", "p.pth"), ("PROMPT_WORDS", "a photo of a")):
        cfg = get_pomp_cfg()
        cfg.MODEL.POMP.EMBEDDINGS = "train.npy"
        setattr(cfg.MODEL.POMP, key, value)
        assert voc.set_vocabulary(Detector(), cfg, "a,b") == ["a", "b"]
    assert encoded == [["a", "b"], ["a", "b"]]


def test_the_vocabulary_goes_to_the_models_device():
    model = Detector().to("meta")
    voc.set_vocabulary(model, random_cfg(), "a,b,c")
    assert model.roi_heads.pred.cls_score.embeddings.device.type == "meta"


def test_configure_vocabulary(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros((7, 4), dtype=np.float16))
    cfg = get_pomp_cfg()
    cfg.MODEL.POMP.VOCABULARY = "old"
    assert voc.configure_vocabulary(cfg, str(tmp_path / "v.npy")) is None
    p = cfg.MODEL.POMP
    assert (p.EMBEDDINGS, p.VOCABULARY, cfg.MODEL.ROI_HEADS.NUM_CLASSES) == (str(tmp_path / "v.npy"), "", 7)
    with pytest.raises(ValueError, match="^" + re.escape(
            "cannot encode the vocabulary 'x,y': the config gives no prompt (MODEL.POMP.PROMPT, the prompt the model "
            "was trained with, and MODEL.POMP.CLIP_MODEL), only fixed embeddings; or pass a .npy exported for the "
            "new vocabulary") + "$"):
        voc.configure_vocabulary(cfg, "x,y")
    for key, value in (("PROMPT", "p.pth"), ("PROMPT_WORDS", "a photo of a"), ("RANDOM_EMBEDDINGS_SEED", 0)):
        cfg = get_pomp_cfg()
        cfg.MODEL.POMP.EMBEDDINGS = "train.npy"
        setattr(cfg.MODEL.POMP, key, value)
        assert voc.configure_vocabulary(cfg, "x, y,z") == ["x", "y", "z"]
        assert (cfg.MODEL.POMP.EMBEDDINGS, cfg.MODEL.POMP.VOCABULARY, cfg.MODEL.ROI_HEADS.NUM_CLASSES) == \
            ("", "x, y,z", 3)


def test_eval_vocabulary_per_test_dataset():
    cfg = get_pomp_cfg()
    cfg.DATASETS.TEST = ("d0", "d1", "d2")
    cfg.MODEL.POMP.TEST_VOCABULARY = "all"
    assert [voc.eval_vocabulary(cfg, d) for d in ("d0", "d2")] == ["all", "all"]
    cfg.MODEL.POMP.TEST_VOCABULARIES = ["", "dataset", "v.npy"]
    assert [voc.eval_vocabulary(cfg, d) for d in ("d0", "d1", "d2")] == ["", "dataset", "v.npy"]
    cfg.MODEL.POMP.TEST_VOCABULARIES = ["a", "b"]
    with pytest.raises(ValueError, match=r"MODEL.POMP.TEST_VOCABULARIES has 2 entries for 3 DATASETS.TEST "
                                         r"\['d0', 'd1', 'd2'\]: give one per test dataset"):
        voc.eval_vocabulary(cfg, "d0")


def test_check_dataset_vocabulary_and_the_swap_for_a_dataset(catalog_names):
    catalog_names += ["test_values_voc3", "test_values_voc2", "test_values_voc_none"]
    MetadataCatalog.get("test_values_voc3").set(thing_classes=["a", "b", "c"])
    MetadataCatalog.get("test_values_voc2").set(thing_classes=["traffic_light", "zebra"])
    DatasetCatalog.register("test_values_voc2", lambda: [])
    MetadataCatalog.get("test_values_voc_none")
    model = Detector(3)
    voc.check_dataset_vocabulary(model, "test_values_voc3")
    voc.check_dataset_vocabulary(model, "test_values_voc_none")  # no classes to compare
    with pytest.raises(ValueError, match="the model's classifier has 3 classes but dataset 'test_values_voc2' "
                                         "has 2"):
        voc.check_dataset_vocabulary(model, "test_values_voc2")
    cfg = random_cfg(seed=5)
    cfg.DATASETS.TEST = ("test_values_voc3", "test_values_voc2")
    saved = (model.roi_heads.pred.cls_score.embeddings.clone(), model.roi_heads.pred.fed_loss_weight.clone())
    cfg.MODEL.POMP.TEST_VOCABULARIES = ["", "dataset"]
    with voc.vocabulary_for_dataset(model, cfg, "test_values_voc3"):  # "": the training vocabulary
        assert model.roi_heads.calls == []
    with voc.vocabulary_for_dataset(model, cfg, "test_values_voc2"):  # the dataset's own two classes
        assert voc.model_num_classes(model) == 2
        assert torch.equal(model.roi_heads.calls[0][0], random_embeddings(2, 4, 5))
    restored = model.roi_heads.calls[-1]
    assert len(model.roi_heads.calls) == 2 and torch.equal(restored[0], saved[0]) and torch.equal(restored[1], saved[1])
    assert voc.model_num_classes(model) == 3
    # a vocabulary that does not fit the dataset: refused, and the training one still comes back
    cfg.MODEL.POMP.TEST_VOCABULARIES = ["", "p,q,r,s"]
    with pytest.raises(ValueError, match="has 4 classes but dataset 'test_values_voc2' has 2"):
        with voc.vocabulary_for_dataset(model, cfg, "test_values_voc2"):
            pass
    assert voc.model_num_classes(model) == 3 and torch.equal(model.roi_heads.calls[-1][0], saved[0])
