"""pomp_seg.prompt_tuning by value: the seen list and its label look-up on a split whose unseen
classes sit between seen ones, the defaults, the record checks and their messages, the views
(filled outside their class, at their image size, ``min_pixels`` at its edge), the box crops
(ascending classes, seen only, a seeded subset), the logits and the loss by hand, and the
hook that writes the prompt."""
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from mmengine.structures import PixelData

from tests.frameworks import require

require("mmseg.models")
from mmengine.registry import init_default_scope  # noqa: E402
from mmseg.registry import HOOKS, MODELS  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402

import pomp_seg  # noqa: E402,F401
from pomp_seg.crop_classifier import encode_any_size, masked_crops  # noqa: E402
from pomp_seg.prompt_tuning import FILLS, SavePromptHook  # noqa: E402

GREY = [0.48145466, 0.4578275, 0.40821073]  # CLIP's mean pixel / 255 (ZSSeg's fill)


@pytest.fixture(autouse=True)
def mmseg_scope():
    init_default_scope("mmseg")


@pytest.fixture
def split(tmp_path):
    """Five classes, 'fig' and 'pear' unseen: seen labels 0, 2, 4 are seen-list entries 0, 1, 2."""
    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"classes": ["kiwi", "fig", "lime", "pear", "plum"], "unseen": [1, 3]}))
    return str(path)


def tuner(class_split="ZeroShotVOCDataset", **kw):
    kw.setdefault("min_pixels", 2)
    return MODELS.build(dict(type="PromptTuner", class_split=class_split, clip_model="pomp-tiny",
                             clip_pretrained=None, init_words="a photo of a", **kw))


def sample(seg, **meta):
    return SegDataSample(gt_sem_seg=PixelData(data=seg[None]), metainfo=meta)


def test_the_seen_list_and_its_look_up(split):
    model = tuner(split)
    assert model.classes == ["kiwi", "fig", "lime", "pear", "plum"]
    assert model.seen == [0, 2, 4] and model._lut == {0: 0, 2: 1, 4: 2}
    voc = tuner()
    assert voc.seen == list(range(15)) and voc._lut == {i: i for i in range(15)}


def test_defaults_are_zssegs():
    model = MODELS.build(dict(type="PromptTuner", class_split="ZeroShotVOCDataset", clip_model="pomp-tiny",
                              clip_pretrained=None, init_words="a photo of a"))
    assert (model.min_pixels, model.crops_per_image, model.crop_in_pipeline, model.fill) == (16, None, False,
                                                                                            "normalised_mean")
    assert model.crops.temperature == 100.0 and model.crops.min_crop_size == 0
    torch.testing.assert_close(FILLS["normalised_mean"], torch.tensor(GREY))
    assert torch.equal(FILLS["mean"], torch.zeros(3)) and sorted(FILLS) == ["mean", "normalised_mean"]
    own = tuner(temperature=None, min_crop_size=9)
    assert own.crops.temperature == pytest.approx(float(own.clip.logit_scale.exp()))
    assert own.crops.temperature != pytest.approx(100.0) and own.crops.min_crop_size == 9
    # the prompt alone trains; the CLIP stays in eval
    assert model.prompt.ctx.requires_grad and not any(p.requires_grad for p in model.clip.parameters())
    assert model.train() is model and model.training and not model.clip.training and not model.clip.visual.training
    assert model.prompt.training
    with pytest.raises(ValueError, match=r"^fill must be one of \['mean', 'normalised_mean'\], got 'grey'$"):
        tuner(fill="grey")


def test_clip_prompt_preprocessor_and_init_arguments_reach_their_builders(tiny_clip, monkeypatch, tmp_path):
    import pomp_seg.prompt_tuning as pt
    from pomp_core import PromptLearner, save_prompt

    calls = {}
    monkeypatch.setattr(pt, "build_clip", lambda name, pretrained: calls.setdefault("clip", []).append(
        (name, pretrained)) or tiny_clip[:2])
    real = pt.build_prompt
    monkeypatch.setattr(pt, "build_prompt", lambda *a: calls.setdefault("prompt", []).append(a[2:]) or real(*a))
    pt.PromptTuner(class_split="ZeroShotVOCDataset", init_words="a photo of a")  # ZSSeg's CLIP by default
    path = save_prompt(PromptLearner(n_ctx=3, width=64, ctx=torch.zeros(3, 64)), tmp_path / "p.pth")
    model = pt.PromptTuner(class_split="ZeroShotVOCDataset", clip_model="pomp-tiny", clip_pretrained="w.pt",
                           prompt=str(path), prompt_trusted=True, init_cfg=dict(type="Normal", std=0.1),
                           data_preprocessor=dict(type="SegDataPreProcessor", mean=[1.0, 2.0, 3.0],
                                                  std=[4.0, 5.0, 6.0]))
    assert calls["clip"] == [("ViT-B-16", "openai"), ("pomp-tiny", "w.pt")]
    assert calls["prompt"] == [(None, "a photo of a", False), (str(path), None, True)]
    assert model.prompt.ctx.shape == (3, 64) and model.init_cfg == dict(type="Normal", std=0.1)
    assert type(model.data_preprocessor).__name__ == "SegDataPreProcessor"
    torch.testing.assert_close(model.data_preprocessor.std.flatten(), torch.tensor([4.0, 5.0, 6.0]))


@pytest.mark.parametrize("record, name", [(1, "fig"), (3, "pear"), (5, "out of range"), (-1, "out of range")])
def test_a_record_outside_the_seen_classes_is_refused_by_name(split, record, name):
    model = tuner(split)
    seg = torch.zeros(6, 8, dtype=torch.long)
    with pytest.raises(ValueError, match=rf"^a record of class {record} \({name}\) is not a seen class of "
                                         r"model\.class_split; the training dataset and model\.class_split must "
                                         r"have the same classes and split$"):
        model.crop_logits(torch.zeros(1, 3, 6, 8), [sample(seg, img_shape=(6, 8), category_id=record)])


def test_class_zero_unseen_is_named(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"classes": ["kiwi", "fig"], "unseen": [0]}))
    with pytest.raises(ValueError, match=r"^a record of class 0 \(kiwi\) "):
        tuner(str(path)).crop_logits(torch.zeros(1, 3, 4, 4), [sample(torch.zeros(4, 4, dtype=torch.long),
                                                                      category_id=0)])


def test_views_without_a_record_are_refused():
    model = tuner(crop_in_pipeline=True)
    with pytest.raises(ValueError, match=r"^crop_in_pipeline=True needs ClassRecordDataset records \(sample_per_class "
                                         r"set\) cut by RecordMaskCrop in the pipeline; got a sample without "
                                         r"category_id$"):
        model.crop_logits(torch.zeros(1, 3, 4, 4), [sample(torch.zeros(4, 4, dtype=torch.long), img_shape=(4, 4))])


@pytest.mark.parametrize("fill", ["normalised_mean", "mean"])
def test_views_by_hand(split, fill):
    model = tuner(split, crop_in_pipeline=True, fill=fill, min_pixels=3)
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(3, 3, 40, 44, generator=g)  # a padded batch: the views are 30 x 28, 32 x 20, 30 x 28
    segs = torch.full((3, 40, 44), 255)
    segs[0, 4:6, 2:5] = 4  # six pixels of plum inside the 30 x 28 view
    segs[0, 35:40, 0:44] = 4  # and more in the padding: not part of the view
    segs[1, 0, 0:2] = 0  # two pixels of kiwi in the view: under min_pixels, no view
    segs[1, 5:9, 25:27] = 0  # (eight more outside the 32 x 20 view)
    segs[2, 10, 3:6] = 2  # three pixels of lime: exactly min_pixels, kept
    segs[2, 12, 1] = 4  # another class: filled
    # the view without enough of its class sits between the two others: the one after it counts
    samples = [sample(segs[0], img_shape=(30, 28), category_id=4), sample(segs[1], img_shape=(32, 20), category_id=0),
               sample(segs[2], img_shape=(30, 28), category_id=2)]
    crops, logits, labels = model.crop_logits(inputs, samples)
    assert labels == [2, 1] and crops.shape == (2, 3, 30, 28) and logits.shape == (2, 3)
    value = torch.tensor(GREY if fill == "normalised_mean" else [0.0] * 3).view(3, 1, 1)
    for k, (b, c) in enumerate(((0, 4), (2, 2))):
        mask = segs[b, :30, :28] == c
        torch.testing.assert_close(crops[k], torch.where(mask, model.crops.to_clip(inputs[b, :, :30, :28]), value))


def test_view_logits_by_hand(split):
    model = tuner(split, crop_in_pipeline=True, min_pixels=1)
    inputs = torch.randn(2, 3, 34, 40, generator=torch.Generator().manual_seed(1))
    segs = torch.full((2, 34, 40), 255)
    segs[0, 2, 3] = 2
    segs[1, 0:12, 5:20] = 4
    samples = [sample(segs[0], img_shape=(34, 40), category_id=2), sample(segs[1], img_shape=(34, 40), category_id=4)]
    crops, logits, labels = model.crop_logits(inputs, samples)
    assert labels == [1, 2] and crops.shape == (2, 3, 34, 40)
    fill = torch.tensor(GREY).view(3, 1, 1)
    torch.testing.assert_close(crops[1], torch.where(segs[1] == 4, model.crops.to_clip(inputs[1]), fill))
    text = F.normalize(model.text(model.prompt, ["kiwi", "lime", "plum"]).float(), dim=-1)
    feats = F.normalize(encode_any_size(model.crops.visual, crops).float(), dim=-1)
    torch.testing.assert_close(logits, 100.0 * feats @ text.t())


def test_box_crops_take_each_seen_class_in_ascending_order(split):
    model = tuner(split, min_pixels=4, min_crop_size=0)
    g = torch.Generator().manual_seed(2)
    inputs = torch.randn(2, 3, 16, 20, generator=g)
    segs = torch.full((2, 16, 20), 255)
    segs[0, 1:5, 1:6] = 4  # plum, 20 px
    segs[0, 8:10, 2:4] = 0  # kiwi, exactly 4 px: kept
    segs[0, 10:14, 10:18] = 1  # fig: unseen, never cropped
    segs[0, 0, 15:18] = 2  # lime, 3 px: too small
    segs[1, 3:9, 4:7] = 2  # lime
    samples = [sample(segs[0]), sample(segs[1])]
    crops, logits, labels = model.crop_logits(inputs, samples)
    assert labels == [0, 2, 1]  # image 0: kiwi then plum (ascending labels); image 1: lime
    fill = torch.tensor(GREY)
    masks = [(0, segs[0] == 0), (0, segs[0] == 4), (1, segs[1] == 2)]
    for k, (b, mask) in enumerate(masks):
        want = masked_crops(model.crops.to_clip(inputs[b]), mask[None], model.crops.input_size, 0, fill=fill)[0]
        torch.testing.assert_close(crops[k], want)
    text = F.normalize(model.text(model.prompt, ["kiwi", "lime", "plum"]).float(), dim=-1)
    feats = F.normalize(model.crops.visual(crops).float(), dim=-1)
    torch.testing.assert_close(logits, 100.0 * feats @ text.t())
    # the loss by hand: cross-entropy over the seen list, and the accuracy
    out = model.loss(inputs, samples)
    target = torch.tensor([0, 2, 1])
    torch.testing.assert_close(out["loss_prompt"], -logits.log_softmax(-1)[torch.arange(3), target].mean())
    torch.testing.assert_close(out["acc_crops"], (logits.argmax(-1) == target).float().mean())
    assert out["loss_prompt"].requires_grad and not out["acc_crops"].requires_grad
    assert model(inputs, samples)["loss_prompt"] == out["loss_prompt"]  # mode 'loss' by default


@pytest.mark.parametrize("limit, seed", [(2, 0), (2, 3), (3, 5)])
def test_crops_per_image_keeps_a_seeded_subset(split, limit, seed):
    model = tuner(split, min_pixels=1, crops_per_image=limit)
    segs = torch.full((1, 12, 12), 255)
    segs[0, 0:3, 0:3], segs[0, 4:8, 4:8], segs[0, 9:12, 1:11] = 0, 2, 4
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        _, _, labels = model.crop_logits(torch.randn(1, 3, 12, 12), [sample(segs[0])])
        torch.manual_seed(seed)
        torch.randn(1, 3, 12, 12)
        want = [[0, 1, 2][k] for k in torch.randperm(3)[:limit].tolist()] if limit < 3 else [0, 1, 2]
    assert labels == want


def test_a_record_is_cropped_alone_and_a_batch_without_crops_gives_a_zero_loss(split):
    model = tuner(split, min_pixels=2)
    segs = torch.full((2, 8, 8), 255)
    segs[0, 0:2, 0:2], segs[0, 4:6, 4:6] = 0, 2
    segs[1, 0, 0] = 4  # one pixel: under min_pixels
    crops, _, labels = model.crop_logits(torch.randn(2, 3, 8, 8), [sample(segs[0], category_id=2),
                                                                   sample(segs[1], category_id=4)])
    assert labels == [1] and len(crops) == 1
    assert model.crop_logits(torch.randn(1, 3, 8, 8), [sample(segs[1])]) == (None, None, [])
    out = model.loss(torch.randn(1, 3, 8, 8), [sample(segs[1])])
    assert list(out) == ["loss_prompt"] and float(out["loss_prompt"].detach()) == 0.0
    out["loss_prompt"].backward()  # the graph reaches the prompt
    assert model.prompt.ctx.grad is not None and not model.prompt.ctx.grad.any()
    view = tuner(split, crop_in_pipeline=True, min_pixels=2)
    assert view.crop_logits(torch.randn(1, 3, 8, 8), [sample(segs[1], img_shape=(8, 8), category_id=4)]) == (
        None, None, [])
    with pytest.raises(ValueError, match=r"^PromptTuner only trains \(mode='loss'\), got mode='predict'; evaluate "
                                         r"the tuned prompt in stage \(b\) with ZSSegSegmentor$"):
        model(torch.randn(1, 3, 8, 8), [sample(segs[0])], mode="predict")


@pytest.mark.parametrize("wrapped, rank", [(False, 0), (True, 0), (False, 1)])
def test_save_prompt_hook_writes_rank_zeros_prompt_after_training(tmp_path, wrapped, rank):
    model = tuner()
    with torch.no_grad():
        model.prompt.ctx.add_(0.5)
    runner = SimpleNamespace(model=SimpleNamespace(module=model) if wrapped else model, rank=rank,
                             work_dir=str(tmp_path), iter=7)
    hook = HOOKS.build(dict(type="SavePromptHook"))
    assert isinstance(hook, SavePromptHook) and hook.priority == "LOW" and hook.filename == "prompt.pth"
    hook.after_train(runner)
    if rank:
        assert not any(tmp_path.iterdir())
        return
    saved = torch.load(tmp_path / "prompt.pth", weights_only=True)
    assert torch.equal(saved["state_dict"]["ctx"], model.prompt.ctx.detach()) and saved["extra"] == {"iter": 7}
    SavePromptHook("stage_a.pth").after_train(runner)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompt.pth", "stage_a.pth"]
