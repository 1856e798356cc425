"""Unit tests of pomp_seg's components (text encoder, classifier, metric, datasets, ensemble)."""
import json

import numpy as np
import pytest
import torch

from tests.frameworks import require

require("mmseg.models")
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402
from mmseg.registry import DATASETS, METRICS, MODELS  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402

import pomp_core  # noqa: E402
import pomp_seg  # noqa: E402
from pomp_seg.crop_classifier import masked_crops  # noqa: E402

NAMES = ["red circle", "blue square", "green star"]


@pytest.fixture(autouse=True)
def mmseg_scope():
    """Builds resolve in mmseg's registries even after another module's test set another
    default scope (test_frameworks sets mmdet's)."""
    init_default_scope("mmseg")


@pytest.fixture()
def encoder(tiny_clip):
    model, tokenizer, _ = tiny_clip
    return MODELS.build(dict(type="POMPTextEncoder", vocabulary=NAMES, clip=(model, tokenizer),
                             init_words="a photo of a", cat_bg=False))


def test_text_encoder_matches_class_embeddings_and_the_clip_text_encoder_call(encoder, tiny_clip):
    model, tokenizer, _ = tiny_clip
    out = encoder()  # no arguments, like mmseg's CLIPTextEncoder
    expected = pomp_core.class_embeddings(model, tokenizer, encoder.prompt, NAMES)
    assert out.shape == (3, 48)
    torch.testing.assert_close(out / model.logit_scale.exp(), expected, atol=1e-5, rtol=1e-5)


def test_text_encoder_caches_frozen_prompt_features(encoder, monkeypatch):
    encoder()
    calls = []
    monkeypatch.setattr(encoder, "encoder", lambda *a, **k: calls.append(a) or torch.zeros(1, 48))
    encoder()
    assert calls == []
    assert encoder.class_embeddings(["blue square"]).shape == (1, 48)


def test_text_encoder_background_embedding(tiny_clip):
    model, tokenizer, _ = tiny_clip
    enc = MODELS.build(dict(type="POMPTextEncoder", vocabulary=NAMES, clip=(model, tokenizer),
                            init_words="a photo of a", cat_bg=True))
    assert enc().shape == (4, 48)


def test_text_encoder_bad_input(tiny_clip, tmp_path):
    model, tokenizer, _ = tiny_clip
    with pytest.raises(FileNotFoundError, match="prompt file"):
        MODELS.build(dict(type="POMPTextEncoder", vocabulary=NAMES, clip=(model, tokenizer),
                          prompt=str(tmp_path / "missing.pth")))
    with pytest.raises(ValueError, match="exactly one"):
        MODELS.build(dict(type="POMPTextEncoder", clip=(model, tokenizer), init_words="a"))
    wrong = pomp_core.PromptLearner(n_ctx=2, width=32)
    pomp_core.save_prompt(wrong, tmp_path / "wrong.pth")
    enc = MODELS.build(dict(type="POMPTextEncoder", vocabulary=NAMES, clip=(model, tokenizer),
                            prompt=str(tmp_path / "wrong.pth")))
    with pytest.raises(ValueError, match="width"):
        enc()


def test_text_classifier_pixel_and_query_features():
    torch.manual_seed(0)
    clf = MODELS.build(dict(type="TextEmbeddingClassifier", in_channels=8, embed_dims=6,
                            temperature=10.0, no_object=True))
    text = torch.nn.functional.normalize(torch.randn(5, 6), dim=-1)
    q = clf(torch.randn(2, 7, 8), text)
    assert q.shape == (2, 7, 6)  # 5 classes + no-object
    assert q.abs().max() <= 10.0 + 1e-4  # temperature * cosine
    clf.channel_dim = 1
    assert clf(torch.randn(2, 8, 4, 4)).shape == (2, 6, 4, 4)
    with pytest.raises(ValueError, match="embed_dims"):
        clf.set_class_embeddings(torch.randn(5, 7))


def test_make_zero_shot_turns_a_decode_head_open_vocabulary():
    head = MODELS.build(dict(type="FCNHead", in_channels=8, channels=16, num_convs=1, num_classes=19))
    clf = pomp_seg.TextEmbeddingClassifier(16, 6)
    pomp_seg.make_zero_shot(head, clf, torch.randn(4, 6))
    assert head([torch.randn(1, 8, 5, 5)]).shape == (1, 4, 5, 5)
    head.conv_seg.set_class_embeddings(torch.randn(9, 6))  # another vocabulary, same weights
    assert head([torch.randn(1, 8, 5, 5)]).shape == (1, 9, 5, 5)


def test_ensemble_formula_by_hand():
    p_mf = torch.tensor([[0.5, 0.2]])
    p_clip = torch.tensor([[0.1, 0.6]])
    out = pomp_seg.ensemble_probs(p_mf, p_clip, torch.tensor([True, False]), lam=0.7)
    torch.testing.assert_close(out, torch.tensor([[0.5 ** 0.7 * 0.1 ** 0.3, 0.2 ** 0.3 * 0.6 ** 0.7]]))


def test_pixel_scores_sum_over_queries():
    probs = torch.tensor([[1.0, 0.0], [0.25, 0.75]])
    logits = torch.tensor([[[0.0]], [[100.0]]])  # sigmoid 0.5 and 1
    torch.testing.assert_close(pomp_seg.pixel_scores(probs, logits)[:, 0, 0], torch.tensor([0.75, 0.75]))


def _sample(pred, gt):
    s = SegDataSample()
    s.pred_sem_seg = PixelData(data=torch.tensor(pred)[None])
    s.gt_sem_seg = PixelData(data=torch.tensor(gt)[None])
    return s.to_dict()


def test_metric_against_a_hand_computation():
    metric = METRICS.build(dict(type="SeenUnseenIoUMetric"))
    metric.dataset_meta = dict(classes=("a", "b", "c"), unseen_classes=("c",))
    gt = [[0, 0, 1, 1], [2, 2, 2, 255]]
    pred = [[0, 1, 1, 1], [2, 2, 0, 0]]
    metric.process([], [_sample(pred, gt)])
    res = metric.compute_metrics(metric.results)
    # the 255 pixel is ignored (its prediction too). a: gt {(0,0),(0,1)}, pred {(0,0),(1,2)}:
    # I=1, U=3. b: gt {(0,2),(0,3)}, pred {(0,1),(0,2),(0,3)}: I=2, U=3. c: I=2, U=3.
    iou = {"a": 1 / 3, "b": 2 / 3, "c": 2 / 3}
    seen, unseen = (iou["a"] + iou["b"]) / 2 * 100, iou["c"] * 100
    assert res["mIoU_seen"] == pytest.approx(seen, abs=0.01)
    assert res["mIoU_unseen"] == pytest.approx(unseen, abs=0.01)
    assert res["hIoU"] == pytest.approx(2 * seen * unseen / (seen + unseen), abs=0.02)
    assert res["IoU.b"] == pytest.approx(200 / 3, abs=0.01)


def test_metric_without_unseen_classes_reports_miou_only():
    metric = METRICS.build(dict(type="SeenUnseenIoUMetric"))
    metric.dataset_meta = dict(classes=("a", "b"))
    metric.process([], [_sample([[0, 1]], [[0, 1]])])
    res = metric.compute_metrics(metric.results)
    assert res["mIoU"] == 100.0 and "hIoU" not in res


def test_published_splits():
    voc = DATASETS.get("ZeroShotVOCDataset").METAINFO
    coco = DATASETS.get("ZeroShotCOCOStuffDataset").METAINFO
    assert len(voc["classes"]) == 20 and "background" not in voc["classes"]
    assert set(voc["unseen_classes"]) <= set(voc["classes"]) and len(voc["unseen_classes"]) == 5
    assert len(coco["classes"]) == 171 and len(coco["unseen_classes"]) == 15
    assert set(coco["unseen_classes"]) <= set(coco["classes"])
    assert len(pomp_seg.datasets.seen_classes("ZeroShotCOCOStuffDataset")) == 156


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from pomp_world import WorldConfig, write_world

    out = tmp_path_factory.mktemp("segworld")
    return write_world(out, WorldConfig(seg_classes=8, seg_images=(4, 4)), parts=("segmentation",))


def test_world_dataset_ignores_unseen_pixels_in_training(world):
    root = world["seg_root"]
    meta = json.loads(open(world["seg_classes"]).read())
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")]
    # the world's training scenes hold seen classes only: the validation scenes have unseen pixels
    prefix = dict(img_path="img_dir/val", seg_map_path="ann_dir/val")
    full = DATASETS.build(dict(type="WorldSegDataset", data_root=root, data_prefix=prefix, pipeline=pipeline))
    seen_only = DATASETS.build(dict(type="WorldSegDataset", data_root=root, data_prefix=prefix,
                                    pipeline=pipeline, ignore_unseen=True))
    assert list(full.metainfo["classes"]) == meta["classes"]
    assert [meta["classes"][i] for i in meta["unseen"]] == list(full.metainfo["unseen_classes"])
    labels_full = np.concatenate([full[i]["gt_seg_map"].ravel() for i in range(len(full))])
    labels_seen = np.concatenate([seen_only[i]["gt_seg_map"].ravel() for i in range(len(full))])
    unseen = np.isin(labels_full, meta["unseen"])
    assert unseen.any()
    assert (labels_seen[unseen] == 255).all() and (labels_seen[~unseen] == labels_full[~unseen]).all()


def test_missing_dataset_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DATASETS.build(dict(type="WorldSegDataset", data_root=str(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError, match="data_root"):
        DATASETS.build(dict(type="ZeroShotVOCDataset", data_root=str(tmp_path / "nope"),
                            ann_file="x.txt", data_prefix=dict(img_path="JPEGImages")))


def test_masked_crops_fill_outside_the_mask_with_the_mean():
    img = torch.ones(3, 8, 8)
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[0, 2:6, 2:4] = True
    mask[0, 2, 3] = False  # a hole inside the box: filled with the mean (0)
    crops = masked_crops(img, mask, 4, mode="bilinear")  # bicubic (the default) overshoots at edges
    assert crops.shape == (2, 3, 4, 4)
    assert crops[0].max() == 1.0 and crops[0].min() == 0.0
    assert crops[1].abs().sum() == 0  # empty mask: an all-mean crop


def test_masked_crops_min_size_keeps_the_object_size():
    img = torch.ones(3, 16, 16)
    small, large = torch.zeros(2, 16, 16, dtype=torch.bool)
    small[0:2, 0:2] = True  # at the corner: the grown box reaches outside the image
    large[4:12, 4:12] = True
    tight = masked_crops(img, torch.stack([small, large]), 8)
    assert torch.equal(tight[0], tight[1])  # the tight box makes both fill the crop
    grown = masked_crops(img, torch.stack([small, large]), 8, min_crop_size=8)
    assert grown[0].sum() == 3 * 4  # 2x2 object pixels in an 8x8 crop, no resizing
    assert grown[1].sum() == 3 * 64  # the 8x8 object fills it


def test_vocabulary_mismatch_is_a_clear_error(world):
    from mmengine.config import Config

    from pomp_seg.cli import check_config_vocabulary

    cfg = Config(dict(
        model=dict(text_encoder=dict(vocabulary=["a", "b"])),
        val_dataloader=dict(dataset=dict(type="WorldSegDataset", data_root=world["seg_root"],
                                         data_prefix=dict(img_path="img_dir/val", seg_map_path="ann_dir/val")))))
    with pytest.raises(ValueError, match="does not match"):
        check_config_vocabulary(cfg, "val_dataloader")
    cfg.model.text_encoder.vocabulary = world["seg_root"]
    check_config_vocabulary(cfg, "val_dataloader")


def test_world_training_scene_classes_give_unseen_objects_their_share():
    from pomp_world.generate import _train_classes

    vocab, unseen = [3, 8, 11, 20, 41, 57, 60], {8, 41, 60}
    ids, probs = _train_classes(vocab, unseen, 0.0)
    assert ids == [3, 11, 20, 57] and probs is None  # seen classes only, uniformly
    ids, probs = _train_classes(vocab, unseen, 0.08)
    assert ids == vocab and probs.sum() == pytest.approx(1.0)
    share = {c: p for c, p in zip(ids, probs)}
    assert sum(share[c] for c in unseen) == pytest.approx(0.08)
    assert len({round(share[c], 12) for c in unseen}) == 1 and len({round(share[c], 12) for c in ids if c not in unseen}) == 1
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="share of unseen objects"):
            _train_classes(vocab, unseen, bad)


def test_world_real_training_condition_keeps_unseen_objects_labelled_ignore(tmp_path):
    from pomp_world import WorldConfig, write_world

    cfg = WorldConfig(seg_classes=8, seg_images=(6, 1), seg_train_unseen=0.5)
    root = write_world(tmp_path, cfg, parts=("segmentation",))["seg_root"]
    unseen = json.loads(open(f"{root}/classes.json").read())["unseen"]
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")]
    prefix = dict(img_path="img_dir/train", seg_map_path="ann_dir/train")
    full = DATASETS.build(dict(type="WorldSegDataset", data_root=root, data_prefix=prefix, pipeline=pipeline))
    train = DATASETS.build(dict(type="WorldSegDataset", data_root=root, data_prefix=prefix, pipeline=pipeline,
                                ignore_unseen=True))
    raw = np.stack([full[i]["gt_seg_map"] for i in range(len(full))])
    seen_only = np.stack([train[i]["gt_seg_map"] for i in range(len(train))])
    is_unseen = np.isin(raw, unseen)
    assert is_unseen.any()  # unseen objects in training scenes, as in VOC / COCO-Stuff
    assert (seen_only[is_unseen] == 255).all() and (seen_only[~is_unseen] == raw[~is_unseen]).all()
