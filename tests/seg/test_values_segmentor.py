"""pomp_seg's segmentor, proposal head and text encoder by value: the test-time composition
(mask threshold on probabilities, per-image crops, neutral CLIP scores for empty proposals,
the seen / unseen ensemble, the region prompt's embeddings) on logits near the threshold
and a batch of two images; seen-label remapping; the proposal head's softmax without the
no-object column; the text encoder's template ensemble, background row and size checks."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.frameworks import require

require("mmseg.models")
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402

import pomp_seg  # noqa: E402
from pomp_seg.clip import CLIP_MEAN, CLIP_STD  # noqa: E402
from pomp_seg.text_encoder import encoder_class_names  # noqa: E402
from tests.seg.seg_fixtures import SEG_CONFIGS, TINY_MODEL  # noqa: E402

VOC_CFG = SEG_CONFIGS / "zsseg-r101c_voc12aug-512x512.py"
NAMES = ["red circle", "blue square", "green star"]


@pytest.fixture(autouse=True)
def mmseg_scope():
    init_default_scope("mmseg")


def segmentor(tiny_clip, drop=(), init=True, **kwargs):
    """The VOC config's segmentor at the tests' tiny sizes, prompt from words."""
    cfg = Config.fromfile(str(VOC_CFG))
    cfg.merge_from_dict({k: v for k, v in TINY_MODEL.items() if not k.startswith("model.text_encoder")})
    model_cfg = cfg.model
    model_cfg["text_encoder"] = dict(type="POMPTextEncoder", dataset_name="ZeroShotVOCDataset",
                                     clip=tiny_clip[:2], init_words="a photo of a")
    model_cfg["region_text_encoder"] = None
    model_cfg.update(kwargs)
    for key in drop:  # the segmentor's own default instead of the config's
        model_cfg.pop(key, None)
    torch.manual_seed(0)
    model = MODELS.build(model_cfg)
    if init:
        model.init_weights()
    return model.eval()


def hand_scores(model, image, p_mf, logits, region_embeds, lam, threshold, seen, hw=None, temperature=None,
                min_crop_size=None):
    """ZSSeg's test score by hand for one image: crops of the masks whose sigmoid exceeds the
    threshold, CLIP probabilities (1 for an empty mask), the geometric ensemble, the sum over
    queries of probability x sigmoid(mask). ``hw``: the image inside a padded ``image`` (crops
    from it only); ``temperature`` / ``min_crop_size``: given instead of the classifier's own."""
    h, w = hw or logits.shape[-2:]
    masks = logits[:, :h, :w].sigmoid() > threshold
    p_clip = torch.ones_like(p_mf)
    clf = model.crop_classifier
    temperature = clf.temperature if temperature is None else temperature
    min_crop_size = clf.min_crop_size if min_crop_size is None else min_crop_size
    for q in range(len(masks)):
        if masks[q].any():
            crop = pomp_seg.crop_classifier.masked_crops(clf.to_clip(image[:, :h, :w]), masks[q][None],
                                                         clf.input_size, min_crop_size)
            f = F.normalize(clf.visual(crop).float(), dim=-1)
            p_clip[q] = (temperature * f @ region_embeds.t()).softmax(-1)[0]
    ens = torch.where(seen, p_mf ** lam * p_clip ** (1 - lam), p_mf ** (1 - lam) * p_clip ** lam)
    return torch.einsum("qc,qhw->chw", ens, logits.sigmoid())


def stub_proposals(model, b, q, h, w, seed, logits=None):
    """The head's proposals replaced by seeded query probabilities and mask logits (random
    ones unless ``logits`` is given); returns them with seeded images of the same size."""
    g = torch.Generator().manual_seed(seed)
    p_mf = torch.rand(b, q, 20, generator=g).softmax(-1)
    if logits is None:
        logits = torch.randn(b, q, h, w, generator=g) * 2
    model.decode_head.proposals = lambda x, metas, shape: (p_mf, logits)
    return p_mf, logits, torch.randn(b, 3, h, w, generator=g)


def test_encode_decode_by_hand_near_the_threshold_on_two_images(tiny_clip):
    model = segmentor(tiny_clip, mask_threshold=0.6, ensemble_lambda=0.8)
    logits = torch.full((2, 4, 24, 40), -0.3)  # sigmoid 0.43 outside the masks
    logits[0, 0, 2:10, 3:30] = 0.45  # sigmoid 0.61: in the mask (a logit test at 0.6 says no)
    logits[0, 1, 12:20, 5:9] = 0.3  # sigmoid 0.57: below the threshold: an empty proposal
    logits[0, 2, 4:22, 20:38] = 2.0
    logits[1, 0, 0:5, 0:40] = 0.5
    logits[1, 3, 10:24, 11:13] = 3.0  # image 1's masks differ from image 0's
    p_mf, logits, images = stub_proposals(model, 2, 4, 24, 40, seed=1, logits=logits)
    out = model.encode_decode(images, [dict(img_shape=(24, 40))] * 2)
    embeds = model.text_encoder.class_embeddings(model.text_encoder.class_names)
    seen = model.is_seen()
    assert seen.sum() == 15 and not seen.all()
    for b in range(2):
        want = hand_scores(model, images[b], p_mf[b], logits[b], embeds, 0.8, 0.6, seen)
        torch.testing.assert_close(out[b], want, rtol=1e-4, atol=1e-6)
    # without the ensemble: the query probabilities alone
    model.crop_classifier = None
    plain = model.encode_decode(images, [dict(img_shape=(24, 40))] * 2)
    torch.testing.assert_close(plain[1], torch.einsum("qc,qhw->chw", p_mf[1], logits[1].sigmoid()))


def test_unseen_everywhere_without_seen_flags_and_the_region_prompt(tiny_clip):
    region = dict(type="POMPTextEncoder", dataset_name="ZeroShotVOCDataset", init_words="a picture of the")
    model = segmentor(tiny_clip, ensemble_seen=False, region_text_encoder=region, ensemble_lambda=0.7)
    assert not model.is_seen().any()
    assert model.region_text_encoder.class_names == model.text_encoder.class_names
    p_mf, logits, image = stub_proposals(model, 1, 3, 16, 22, seed=2)
    out = model.encode_decode(image, [dict(img_shape=(16, 22))])[0]
    region_embeds = model.region_text_encoder.class_embeddings(model.text_encoder.class_names)
    own = model.text_encoder.class_embeddings(model.text_encoder.class_names)
    assert not torch.allclose(region_embeds, own)
    want = hand_scores(model, image[0], p_mf[0], logits[0], region_embeds, 0.7, 0.5, model.is_seen())
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-6)
    assert model.text_encoder.bg_embed is None and model.region_text_encoder.bg_embed is None
    model.set_vocabulary(["cat", "zebra"])
    assert model.region_text_encoder.class_names == ["cat", "zebra"] == model.text_encoder.class_names


def test_training_labels_index_the_seen_list_and_unseen_become_ignore(tiny_clip):
    model = segmentor(tiny_clip)
    vocab = model.text_encoder.class_names
    seen_idx = model.seen_index()
    assert [vocab[i] for i in seen_idx] == list(model.seen_classes) and len(seen_idx) == 15
    unseen = [i for i in range(20) if i not in seen_idx]
    labels = torch.tensor([[seen_idx[3], unseen[0], 255], [seen_idx[0], seen_idx[14], unseen[4]]], dtype=torch.uint8)
    sample = SegDataSample()
    sample.gt_sem_seg = PixelData(data=labels[None].clone())
    out = model._to_seen_labels([sample])[0].gt_sem_seg.data[0]
    assert out.tolist() == [[3, 255, 255], [0, 14, 255]] and out.dtype == torch.uint8


def test_set_vocabulary_and_its_errors(tiny_clip):
    model = segmentor(tiny_clip)
    model.set_vocabulary(["cat", "sofa", "zebra"])  # VOC: cat seen, sofa unseen, zebra new
    assert model.num_classes == model.out_channels == 3
    assert model.is_seen().tolist() == [True, False, False]
    with pytest.raises(ValueError, match=r"^seen classes \[('[a-z ]+', ){4}'[a-z ]+'\] .* describe the same dataset$"):
        model.seen_index()  # 14 seen classes missing: the first five named
    with pytest.raises(ValueError, match="^empty vocabulary: give at least one class name$"):
        model.set_vocabulary([])


def test_proposal_head_drops_the_no_object_column_after_the_softmax(tiny_clip):
    model = segmentor(tiny_clip)
    head = model.decode_head
    head.set_class_embeddings(F.normalize(torch.randn(20, 48), dim=-1))
    feats = model.extract_feat(torch.randn(1, 3, 32, 48))
    sample = [SegDataSample(metainfo=dict(img_shape=(32, 48), batch_input_shape=(32, 48)))]
    with torch.no_grad():  # "no object" as likely as the queries' top class, so dropping it matters
        head.cls_embed.no_object.copy_(head.cls_embed.class_embeds[head(feats, sample)[0][-1][0, 0, :20].argmax()])
    cls, masks = head(feats, sample)
    assert (cls[-1].softmax(-1)[..., -1] > 0.2).any()
    probs, up = head.proposals(feats, [dict(img_shape=(32, 48))], (32, 48))
    torch.testing.assert_close(probs, cls[-1].softmax(-1)[..., :-1])  # sums below 1: no object kept out
    torch.testing.assert_close(probs.sum(-1), 1 - cls[-1].softmax(-1)[..., -1])
    torch.testing.assert_close(up, F.interpolate(masks[-1], size=(32, 48), mode="bilinear", align_corners=False))
    head.set_class_embeddings(torch.randn(7, 48))
    with pytest.raises(ValueError, match="num_classes=15"):
        head.loss(feats, [], {})


# ------------------------------------------------------------------ text encoder
def build_encoder(tiny_clip, **kw):
    kw.setdefault("vocabulary", NAMES)
    return MODELS.build(dict(type="POMPTextEncoder", clip=tiny_clip[:2], **kw))


def test_templates_are_averaged_after_normalising_each(tiny_clip):
    model, tokenizer, _ = tiny_clip
    templates = ["a photo of a {}.", "{} in the wild", "art of the {}"]
    enc = build_encoder(tiny_clip, templates=templates, cat_bg=False)
    with torch.no_grad():
        per = [F.normalize(model.encode_text(tokenizer([t.format(n) for n in NAMES])), dim=-1) for t in templates]
    want = F.normalize(torch.stack(per).mean(0), dim=-1)
    torch.testing.assert_close(enc.class_embeddings(NAMES), want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(enc(), model.logit_scale.exp() * want, atol=1e-4, rtol=1e-4)
    vild = build_encoder(tiny_clip, templates="vild", cat_bg=False)
    assert len(vild.templates) > 3 and all("{}" in t for t in vild.templates)


def test_background_row_is_normalised_and_scaled(tiny_clip):
    model = tiny_clip[0]
    enc = build_encoder(tiny_clip, init_words="a photo of a")
    out = enc()
    assert out.shape == (4, 48)
    scale = model.logit_scale.exp()
    torch.testing.assert_close(out[:3], scale * enc.class_embeddings(NAMES))
    torch.testing.assert_close(out[3], scale * F.normalize(enc.bg_embed[0], dim=0))


def test_encode_keeps_the_asked_order_with_repeats_and_without_a_cache(tiny_clip):
    cached = build_encoder(tiny_clip, init_words="a photo of a", cat_bg=False)
    fresh = build_encoder(tiny_clip, init_words="a photo of a", cat_bg=False, cache_feature=False)
    names = ["green star", "red circle", "green star"]
    a, b = cached.class_embeddings(names), fresh.class_embeddings(names)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[0], a[2])
    assert not torch.allclose(a[0], a[1])
    assert sorted(cached._cache) == ["green star", "red circle"] and fresh._cache == {}


@pytest.mark.parametrize("key, value, ok", [
    ("total_vocab_size", 49408, True), ("total_vocab_size", 49407, False), ("context_length", 77, True),
    ("context_length", 76, False), ("embed_dims", 64, True), ("embed_dims", 48, False),
    ("num_layers", 2, True), ("num_layers", 3, False), ("num_heads", 2, True), ("num_heads", 4, False),
    ("mlp_ratio", 4.0, True), ("mlp_ratio", 2.0, False), ("output_dims", 48, True), ("output_dims", 64, False),
])
def test_clip_text_encoder_sizes_are_checked(tiny_clip, key, value, ok):
    if ok:
        build_encoder(tiny_clip, init_words="a", **{key: value})
    else:
        with pytest.raises(ValueError, match=key):
            build_encoder(tiny_clip, init_words="a", **{key: value})


def test_state_dict_holds_the_text_tower_only_and_it_stays_in_eval(tiny_clip):
    enc = build_encoder(tiny_clip, init_words="a photo of a")
    keys = list(enc.state_dict())
    assert keys and not any("visual" in k for k in keys) and "bg_embed" in keys
    enc.train()
    assert enc.training and not enc.text.training
    visual, scale = enc.visual()
    assert visual is tiny_clip[0].visual and scale == pytest.approx(float(tiny_clip[0].logit_scale.exp()))


def test_encoder_class_names_sources(tmp_path):
    assert encoder_class_names(vocabulary="cat,dog") == ["cat", "dog"]
    voc = encoder_class_names(dataset_name="voc")  # mmseg's names, background dropped
    assert len(voc) == 20 and voc[0] == "aeroplane"
    assert encoder_class_names(dataset_name="ZeroShotVOCDataset")[:2] == ["aeroplane", "bicycle"]
    for bad in (dict(), dict(dataset_name="voc", vocabulary="a")):
        with pytest.raises(ValueError, match="exactly one"):
            encoder_class_names(**bad)
    assert np.array_equal(encoder_class_names(vocabulary=["b", "a"]), ["b", "a"])


def head_config(**kw):
    cfg = Config.fromfile(str(VOC_CFG))
    cfg.merge_from_dict({k: v for k, v in TINY_MODEL.items() if k.startswith("model.decode_head")})
    head = dict(cfg.model.decode_head)
    for k in ("temperature", "embed_layers", "embed_hidden_dims", "padding_mask"):
        head.pop(k, None)
    return dict(head, **kw)


def test_proposal_head_defaults_are_zssegs_and_its_arguments_reach_the_classifier():
    head = MODELS.build(head_config())
    assert head.cls_embed.temperature == 100.0 and head.padding_mask == "never"
    linears = [m for m in head.cls_embed.proj if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 1024), (1024, 48)]  # 2 layers, 1024 wide
    small = MODELS.build(head_config(temperature=7.0, embed_layers=3, embed_hidden_dims=20))
    assert small.cls_embed.temperature == 7.0
    linears = [m for m in small.cls_embed.proj if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 20), (20, 20), (20, 48)]


def test_proposal_head_loss_sets_the_padded_shape_and_passes_train_cfg(monkeypatch):
    from mmseg.models.decode_heads import MaskFormerHead

    head = MODELS.build(head_config())
    head.set_class_embeddings(F.normalize(torch.randn(15, 48), dim=-1))
    seen = {}
    monkeypatch.setattr(MaskFormerHead, "loss", lambda self, x, samples, cfg: seen.update(
        shapes=[s.metainfo["pad_input_shape"] for s in samples], cfg=cfg) or {"loss": 0})
    samples = [SegDataSample(metainfo=dict(img_shape=(20, 30), pad_shape=(32, 48))),
               SegDataSample(metainfo=dict(img_shape=(24, 40)))]  # no pad_shape: the image's own
    cfg = dict(assigner="x")
    assert head.loss((), samples, cfg) == {"loss": 0}
    assert seen["shapes"] == [(32, 48), (24, 40)] and seen["cfg"] is cfg


def test_predict_crops_to_the_image_before_the_crops_and_the_padding_after(tiny_clip):
    model = segmentor(tiny_clip, mask_threshold=0.55)
    p_mf, logits, images = stub_proposals(model, 2, 4, 24, 40, seed=5)
    embeds = model.text_encoder.class_embeddings(model.text_encoder.class_names)
    seen = model.is_seen()
    # the first image fills the batch; the second is 20 x 36, padded right and bottom by 4
    shapes = [(24, 40), (20, 36)]
    samples = [SegDataSample(metainfo=dict(ori_shape=s, img_shape=s, padding_size=[0, 40 - s[1], 0, 24 - s[0]]))
               for s in shapes]
    out = model.predict(images, samples)
    for b, (h, w) in enumerate(shapes):
        want = hand_scores(model, images[b, :, :h, :w], p_mf[b], logits[b, :, :h, :w], embeds, 0.7, 0.55, seen)
        torch.testing.assert_close(out[b].seg_logits.data, want, rtol=1e-4, atol=1e-6)
        assert torch.equal(out[b].pred_sem_seg.data[0], want.argmax(0))
    bare = model.predict(images)  # no samples: the whole input is the image
    want = hand_scores(model, images[1], p_mf[1], logits[1], embeds, 0.7, 0.55, seen)
    torch.testing.assert_close(bare[1].seg_logits.data, want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model._forward(images)[1], want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model._forward(images, samples)[1][:, :20, :36],
                               out[1].seg_logits.data, rtol=1e-4, atol=1e-6)


def test_loss_trains_on_the_seen_embeddings_and_labels_with_the_decode_prefix(tiny_clip):
    model = segmentor(tiny_clip)
    seen_idx = model.seen_index()
    unseen = [i for i in range(20) if i not in seen_idx]
    got = {}

    def head_loss(x, samples, cfg):
        got.update(embeds=model.decode_head.cls_embed.class_embeds.clone(), cfg=cfg, n=len(x),
                   labels=[s.gt_sem_seg.data.clone() for s in samples])
        return {"loss_cls": torch.tensor(1.5), "loss_mask": torch.tensor(2.0)}

    model.decode_head.loss = head_loss
    model.train_cfg = dict(marker=1)
    sample = SegDataSample()
    sample.gt_sem_seg = PixelData(data=torch.tensor([[[seen_idx[2], unseen[1]], [255, seen_idx[7]]]]))
    losses = model.loss(torch.randn(1, 3, 32, 32), [sample])
    assert losses == {"decode.loss_cls": 1.5, "decode.loss_mask": 2.0}
    all_embeds = model.text_encoder.class_embeddings(model.text_encoder.class_names)
    torch.testing.assert_close(got["embeds"], all_embeds[seen_idx])
    assert got["labels"][0].tolist() == [[[2, 255], [255, 7]]] and got["cfg"] == dict(marker=1)
    assert got["n"] == 4  # the backbone's four levels


def test_defaults_threshold_at_one_half_on_probabilities_and_lambda_point_seven(tiny_clip):
    model = segmentor(tiny_clip, drop=("ensemble_lambda", "mask_threshold", "min_crop_size", "clip_temperature",
                                       "ensemble_seen", "region_text_encoder"))
    clf = model.crop_classifier
    assert model.mask_threshold == 0.5 and model.ensemble_lambda == 0.7 and model.ensemble_seen
    assert clf.min_crop_size == 0 and clf.temperature == pytest.approx(float(tiny_clip[0].logit_scale.exp()))
    assert model.text_encoder.bg_embed is None and model.region_text_encoder is None
    assert type(model.data_preprocessor).__name__ == "SegDataPreProcessor"
    assert model.num_classes == model.out_channels == 20 and model.align_corners is model.decode_head.align_corners
    # the backbone's normalisation (the preprocessor's, 0-255 scale) is undone for CLIP's crops
    mean, std = model.data_preprocessor.mean.flatten(), model.data_preprocessor.std.flatten()
    assert not torch.allclose(mean, torch.tensor(CLIP_MEAN))
    torch.testing.assert_close(clf.renorm_scale.flatten(), std / torch.tensor(CLIP_STD))
    torch.testing.assert_close(clf.renorm_shift.flatten(), (mean - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD))
    logits = torch.full((1, 3, 12, 18), -4.0)
    logits[0, 0, 2:6, 3:11] = 0.0  # sigmoid exactly 0.5: not above the threshold, an empty proposal
    logits[0, 1, 5:11, 1:7] = 0.01  # just above it
    logits[0, 2, 0:12, 12:18] = 3.0
    p_mf, logits, image = stub_proposals(model, 1, 3, 12, 18, seed=6, logits=logits)
    out = model.encode_decode(image, [dict(img_shape=(12, 18))])[0]
    embeds = model.text_encoder.class_embeddings(model.text_encoder.class_names)
    want = hand_scores(model, image[0], p_mf[0], logits[0], embeds, 0.7, 0.5, model.is_seen())
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-6)


def test_encode_decode_scores_the_heads_own_proposals(tiny_clip):
    model = segmentor(tiny_clip, ensemble_lambda=None)
    assert model.crop_classifier is None
    images = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(7))
    metas = [dict(img_shape=(32, 48))] * 2
    with torch.no_grad():
        out = model.encode_decode(images, metas)
        model.decode_head.set_class_embeddings(model.text_encoder.class_embeddings(model.text_encoder.class_names))
        p_mf, logits = model.decode_head.proposals(model.backbone(images), metas, (32, 48))
    assert logits.shape[-2:] == (32, 48)
    for b in range(2):
        want = (p_mf[b][:, :, None, None] * logits[b].sigmoid()[:, None]).sum(0)  # sum over queries
        torch.testing.assert_close(out[b], want, rtol=1e-4, atol=1e-6)


def test_pretrained_and_init_cfg_reach_the_backbone_and_the_model(tiny_clip):
    model = segmentor(tiny_clip, init=False, pretrained="weights/r101.pth",
                      init_cfg=dict(type="Normal", std=0.5))
    assert model.backbone.init_cfg == dict(type="Pretrained", checkpoint="weights/r101.pth")
    assert model.init_cfg == dict(type="Normal", std=0.5)


@pytest.mark.parametrize("mode, training, want", [
    ("never", False, ((24, 40), (24, 40))), ("never", True, ((24, 40), (24, 40))),
    ("test", True, ((24, 40), (24, 40))), ("test", False, ((20, 30), (24, 40))),
    ("always", True, ((20, 30), (24, 40))), ("always", False, ((20, 30), (24, 40)))])
def test_proposal_head_forward_shapes_per_padding_mask(monkeypatch, mode, training, want):
    """(img_shape, batch_input_shape) that mmdet's forward masks by: equal (nothing masked) or
    the image inside the padded shape; the padded shape is pad_input_shape, else batch_input_shape."""
    from mmseg.models.decode_heads import MaskFormerHead

    head = MODELS.build(head_config(padding_mask=mode))
    head.train(training)
    seen = []
    monkeypatch.setattr(MaskFormerHead, "forward", lambda self, x, samples: seen.extend(
        (s.metainfo["img_shape"], s.metainfo["batch_input_shape"]) for s in samples))
    head.forward((), [SegDataSample(metainfo=dict(img_shape=(20, 30), batch_input_shape=(32, 48),
                                                  pad_input_shape=(24, 40))),
                      SegDataSample(metainfo=dict(img_shape=(20, 30), batch_input_shape=(24, 40)))])
    assert seen == [want, want]


def test_without_normalisation_in_the_preprocessor_crops_are_taken_as_clip_normalised(tiny_clip):
    model = segmentor(tiny_clip, init=False, data_preprocessor=dict(type="SegDataPreProcessor", mean=None, std=None))
    clf = model.crop_classifier
    torch.testing.assert_close(clf.renorm_scale.flatten(), torch.ones(3))
    torch.testing.assert_close(clf.renorm_shift.flatten(), torch.zeros(3))


def test_text_encoder_loads_vit_b_16_openai_by_default_and_passes_its_prompt_arguments(tiny_clip, monkeypatch):
    import pomp_seg.text_encoder as te

    calls = {}
    monkeypatch.setattr(te, "build_clip", lambda name, pretrained: calls.setdefault("clip", []).append(
        (name, pretrained)) or tiny_clip[:2])
    real_prompt = te.build_prompt
    monkeypatch.setattr(te, "build_prompt", lambda *a: calls.setdefault("prompt", []).append(a[2:]) or real_prompt(*a))
    te.POMPTextEncoder(vocabulary=NAMES, init_words="a photo of a")
    te.POMPTextEncoder(vocabulary=NAMES, init_words="a", clip_model="pomp-tiny", clip_pretrained=None,
                       prompt_trusted=True)
    assert calls["clip"] == [("ViT-B-16", "openai"), ("pomp-tiny", None)]
    assert calls["prompt"] == [(None, "a photo of a", False), (None, "a", True)]


def test_text_encoder_prompt_is_frozen_and_its_state_and_init(tiny_clip):
    enc = build_encoder(tiny_clip, init_words="a photo of a", init_cfg=dict(type="Normal", std=0.1))
    assert enc.templates is None and enc.init_cfg == dict(type="Normal", std=0.1)
    assert not any(p.requires_grad for p in enc.prompt.parameters())
    assert "logit_scale" not in enc.state_dict()  # CLIP's, not ours to save
    norm = float(enc.bg_embed.norm())  # randn / sqrt(D): a norm near 1
    assert 0.5 < norm < 1.6
    voc = build_encoder(tiny_clip, vocabulary=None, dataset_name="ZeroShotVOCDataset", init_words="a")
    assert voc.class_names == encoder_class_names(dataset_name="ZeroShotVOCDataset") and len(voc.class_names) == 20
    with pytest.raises(ValueError, match=r"^no text source: set prompt='path/to/prompt.pth', init_words='a photo "
                                         r"of a' or templates \(a list of '\{\}' strings or 'vild'\)$"):
        build_encoder(tiny_clip)


def test_text_encoder_templates_allow_repeated_names_uncached(tiny_clip):
    model, tokenizer, _ = tiny_clip
    enc = build_encoder(tiny_clip, templates=["a photo of a {}.", "{} art"], cat_bg=False, cache_feature=False)
    out = enc.class_embeddings(["green star", "red circle", "green star"])
    with torch.no_grad():
        per = [F.normalize(model.encode_text(tokenizer([t.format(n) for n in ("green star", "red circle")])), dim=-1)
               for t in ("a photo of a {}.", "{} art")]
    want = F.normalize(torch.stack(per).mean(0), dim=-1)
    torch.testing.assert_close(out, want[[0, 1, 0]], atol=1e-5, rtol=1e-4)


def test_text_modules_of_a_tower_behind_text_and_a_linear_projection(tiny_clip):
    from pomp_seg.text_encoder import _text_modules

    clip = tiny_clip[0]

    class Custom(torch.nn.Module):  # open_clip's CustomTextCLIP: the text tower under .text
        def __init__(self):
            super().__init__()
            self.text = torch.nn.Module()
            for name in ("token_embedding", "transformer", "ln_final"):
                setattr(self.text, name, getattr(clip, name))
            self.text.positional_embedding = clip.positional_embedding
            self.text.text_projection = torch.nn.Linear(64, 48, bias=False)

    custom = Custom()
    text = _text_modules(custom)
    for name in ("token_embedding", "transformer", "ln_final", "text_projection"):
        assert getattr(text, name) is getattr(custom.text, name)
    assert text.positional_embedding is clip.positional_embedding
    plain = _text_modules(clip)
    assert plain.text_projection is clip.text_projection and plain.token_embedding is clip.token_embedding


def test_encoder_class_names_from_a_world_classes_json_its_folder_and_mmseg_names(tmp_path):
    import json

    (tmp_path / "classes.json").write_text(json.dumps({"classes": ["kiwi", "fig", "lime"], "unseen": [2]}))
    assert encoder_class_names(vocabulary=str(tmp_path / "classes.json")) == ["kiwi", "fig", "lime"]
    assert encoder_class_names(vocabulary=str(tmp_path)) == ["kiwi", "fig", "lime"]
    city = encoder_class_names(dataset_name="cityscapes")  # no background to drop
    assert len(city) == 19 and city[0] == "road"
    with pytest.raises(ValueError, match="^give the text encoder exactly one of dataset_name or vocabulary$"):
        encoder_class_names()


def test_text_encoder_size_mismatch_message(tiny_clip):
    with pytest.raises(ValueError, match=r"^text encoder sizes do not match the loaded CLIP \(given, CLIP's\): "
                                         r"\{'num_layers': \(5, 2\)\}; drop these keys"):
        build_encoder(tiny_clip, init_words="a", num_layers=5)


# ------------------------------------------------------------------ segmentor: arguments, neck, metas
def test_train_and_test_cfg_clip_temperature_and_min_crop_size_reach_the_model(tiny_clip):
    model = segmentor(tiny_clip, train_cfg=dict(marker="train"), test_cfg=dict(mode="whole", marker="test"),
                      clip_temperature=12.5, min_crop_size=7)
    assert model.train_cfg == dict(marker="train") and model.test_cfg == dict(mode="whole", marker="test")
    clf = model.crop_classifier
    assert clf.temperature == 12.5 and clf.min_crop_size == 7
    assert float(tiny_clip[0].logit_scale.exp()) != pytest.approx(12.5)  # not CLIP's own scale
    # by value: masks smaller than 7 pixels, so the grown crops differ from the tight ones
    logits = torch.full((1, 3, 16, 22), -4.0)
    logits[0, 0, 2:4, 3:6] = 3.0
    logits[0, 1, 10:13, 15:17] = 3.0
    logits[0, 2, 5:15, 1:20] = 3.0
    p_mf, logits, image = stub_proposals(model, 1, 3, 16, 22, seed=10, logits=logits)
    out = model.encode_decode(image, [dict(img_shape=(16, 22))])[0]
    embeds = model.text_encoder.class_embeddings(model.text_encoder.class_names)
    want = hand_scores(model, image[0], p_mf[0], logits[0], embeds, 0.7, 0.5, model.is_seen(), temperature=12.5,
                       min_crop_size=7)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-6)
    tight = hand_scores(model, image[0], p_mf[0], logits[0], embeds, 0.7, 0.5, model.is_seen(), temperature=12.5,
                        min_crop_size=0)
    assert not torch.allclose(out, tight, rtol=1e-4, atol=1e-6)


def test_a_neck_sits_between_the_backbone_and_the_head(tiny_clip):
    neck = dict(type="FPN", in_channels=[16, 32, 64, 128], out_channels=24, num_outs=4)
    model = segmentor(tiny_clip, neck=neck)
    images = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        feats = model.extract_feat(images)
        levels = model.backbone(images)
        want = model.neck(levels)
    assert [f.shape[1] for f in levels] == [16, 32, 64, 128] and [f.shape[1] for f in feats] == [24] * 4
    for got, expected in zip(feats, want, strict=True):
        torch.testing.assert_close(got, expected)


def test_without_a_preprocessor_crops_are_taken_as_clip_normalised(tiny_clip):
    """The segmentor's default data_preprocessor (None: mmengine's BaseDataPreprocessor, no
    normalisation): the crop classifier takes its input as CLIP-normalised already."""
    model = segmentor(tiny_clip, init=False, drop=("data_preprocessor",))
    assert type(model.data_preprocessor).__name__ == "BaseDataPreprocessor"
    clf = model.crop_classifier
    torch.testing.assert_close(clf.renorm_scale.flatten(), torch.ones(3))
    torch.testing.assert_close(clf.renorm_shift.flatten(), torch.zeros(3))


def test_encode_decode_takes_h_w_of_img_shape_or_the_input_and_keeps_double_precision(tiny_clip):
    model = segmentor(tiny_clip, mask_threshold=0.55)
    p_mf, logits, images = stub_proposals(model, 2, 4, 24, 40, seed=8)
    p_mf, logits = p_mf.double(), logits.double()  # CLIP's probabilities (float32) join them as float64
    model.decode_head.proposals = lambda x, metas, shape: (p_mf, logits)
    # no img_shape: the whole input is the image; an (h, w, channels) img_shape: its h and w
    out = model.encode_decode(images, [dict(), dict(img_shape=(20, 36, 3))])
    assert out.dtype == torch.float64 and out.shape == (2, 20, 24, 40)
    embeds = model.text_encoder.class_embeddings(model.text_encoder.class_names)
    seen = model.is_seen()
    for b, hw in enumerate([(24, 40), (20, 36)]):
        want = hand_scores(model, images[b], p_mf[b], logits[b], embeds, 0.7, 0.55, seen, hw=hw)
        torch.testing.assert_close(out[b], want, rtol=1e-4, atol=1e-6)


def test_without_samples_the_whole_input_is_each_image_even_for_a_head_that_masks_padding(tiny_clip):
    model = segmentor(tiny_clip)
    model.decode_head.padding_mask = "test"  # mmseg's: at test time the decoder masks by each img_shape
    images = torch.randn(4, 3, 32, 48, generator=torch.Generator().manual_seed(12))  # more images than channels
    with torch.no_grad():
        predicted = model.predict(images)
        tensor = model._forward(images)
        embeds = model.text_encoder.class_embeddings(model.text_encoder.class_names)
        model.decode_head.set_class_embeddings(embeds)
        p_mf, logits = model.decode_head.proposals(model.backbone(images), [dict(img_shape=(32, 48))] * 4, (32, 48))
    seen = model.is_seen()
    assert len(predicted) == 4 and tensor.shape == (4, 20, 32, 48)
    for b in range(4):
        want = hand_scores(model, images[b], p_mf[b], logits[b], embeds, 0.7, 0.5, seen)
        torch.testing.assert_close(predicted[b].seg_logits.data, want, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(tensor[b], want, rtol=1e-4, atol=1e-6)


def test_seen_labels_stay_on_the_device_of_the_labels(tiny_clip):
    """The look-up table follows the labels to their device (here 'meta', a device other than
    the CPU that needs no GPU); the values are those of the CPU test above."""
    model = segmentor(tiny_clip, init=False)
    sample = SegDataSample()
    sample.gt_sem_seg = PixelData(data=torch.zeros(1, 2, 3, dtype=torch.uint8, device="meta"))
    out = model._to_seen_labels([sample])[0].gt_sem_seg.data
    assert out.device.type == "meta" and out.dtype == torch.uint8 and out.shape == (1, 2, 3)
