"""pomp_seg's stage-(b) model against zsseg's own outputs (the golden fixture written by
``tests/golden/make_zsseg_golden.py`` from zsseg's code, built as the POMP release's VOC
config): the release-layout checkpoint converts with nothing left over, and our segmentor at
the same widths gives zsseg's per-query probabilities, masks, CLIP crop probabilities,
semantic logits (without and with the ensemble) and training losses. Perturbing one weight or
one default makes the comparison fail."""
import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from tests.frameworks import require
from tests.tool_scripts import load_tool

require("mmseg.models")
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402

from pomp_seg.zsseg_checkpoint import build_for_conversion, convert_model, read_zsseg  # noqa: E402
from tests.seg.seg_fixtures import ROOT, SEG_CONFIGS, override_config  # noqa: E402

GOLDEN = ROOT / "tests" / "fixtures" / "golden" / "zsseg"
META = json.loads((GOLDEN / "golden.json").read_text())
open_clip.add_model_config(GOLDEN / "zsseg-golden-clip.json")
TOL = 1e-4
W = META["widths"]
# The VOC stage-(b) config at the fixture's widths, text side as the release's POMP config
# (one prompt for queries and crops), zsseg's crop temperature (100) and the golden vocabulary.
GOLDEN_MODEL = {
    "model.backbone.stem_channels": W["stem"], "model.backbone.base_channels": W["width_per_group"],
    "model.backbone.init_cfg": None,
    "model.decode_head.in_channels": [W["res2"] * 2 ** i for i in range(4)],
    "model.decode_head.embed_dims": META["clip"]["embed_dim"],
    "model.decode_head.embed_hidden_dims": W["embed_hidden_dim"],
    "model.decode_head.feat_channels": W["convs_dim"], "model.decode_head.out_channels": W["convs_dim"],
    "model.decode_head.num_queries": W["num_queries"], "model.decode_head.num_classes": len(META["seen"]),
    "model.decode_head.loss_cls.class_weight": [1.0] * len(META["seen"]) + [0.1],
    "model.decode_head.positional_encoding.num_feats": W["hidden_dim"] // 2,
    "model.decode_head.transformer_decoder.num_layers": W["dec_layers"],
    **{f"model.decode_head.transformer_decoder.layer_cfg.{a}.{k}": v
       for a in ("self_attn_cfg", "cross_attn_cfg")
       for k, v in (("embed_dims", W["hidden_dim"]), ("num_heads", W["nheads"]), ("attn_drop", 0.0),
                    ("proj_drop", 0.0))},
    "model.decode_head.transformer_decoder.layer_cfg.ffn_cfg.embed_dims": W["hidden_dim"],
    "model.decode_head.transformer_decoder.layer_cfg.ffn_cfg.feedforward_channels": W["dim_feedforward"],
    "model.decode_head.transformer_decoder.layer_cfg.ffn_cfg.ffn_drop": 0.0,
    "model.text_encoder.dataset_name": None, "model.text_encoder.vocabulary": META["vocabulary"],
    "model.text_encoder.clip_model": "zsseg-golden-clip", "model.text_encoder.clip_pretrained": None,
    "model.text_encoder.templates": None,
    "model.region_text_encoder": None,
    "model.seen_classes": META["seen"], "model.clip_temperature": 100.0,
    "model.data_preprocessor.size": None, "model.data_preprocessor.size_divisor": META["size_divisibility"],
}


@pytest.fixture(scope="module")
def golden_config(tmp_path_factory):
    return override_config(tmp_path_factory.mktemp("golden") / "zsseg_golden.py",
                           SEG_CONFIGS / "zsseg-r101c_voc12aug-512x512.py", GOLDEN_MODEL)


@pytest.fixture(scope="module")
def release_state():
    return read_zsseg(str(GOLDEN / "zsseg_tiny.pth"))


@pytest.fixture(scope="module")
def zsseg_out():
    return torch.load(GOLDEN / "outputs.pth", weights_only=True)


def build(golden_config, state, **overrides):
    """Our segmentor from the golden config (with ``overrides``), loaded from zsseg's checkpoint."""
    torch.manual_seed(0)
    opts = {f"model.{k}": v for k, v in overrides.items()}
    model = build_for_conversion(str(golden_config), state, opts)
    converted, report = convert_model(state, model)
    model.load_state_dict(converted, strict=True)
    return model.eval(), report


@pytest.fixture(scope="module")
def ours(golden_config, release_state):
    init_default_scope("mmseg")
    return build(golden_config, release_state)


def images():
    return [np.asarray(Image.open(GOLDEN / f"image{i}.png").convert("RGB")) for i in range(len(META["image_sizes"]))]


def preprocess(model, rgb: np.ndarray, training: bool = False, label: np.ndarray = None):
    """One image through our data preprocessor as mmseg's pipeline hands it over (BGR uint8)."""
    sample = SegDataSample(metainfo=dict(ori_shape=rgb.shape[:2], img_shape=rgb.shape[:2]))
    if label is not None:
        sample.gt_sem_seg = PixelData(data=torch.from_numpy(label)[None].long())
    data = dict(inputs=[torch.from_numpy(rgb[..., ::-1].transpose(2, 0, 1).copy())], data_samples=[sample])
    return model.data_preprocessor(data, training)


def run_ours(model, rgb):
    """Per-query probabilities and masks, crop probabilities and the semantic logits [C, h, w]."""
    data = preprocess(model, rgb)
    inputs, samples = data["inputs"], data["data_samples"]
    h, w = rgb.shape[:2]
    with torch.no_grad():
        x = model.extract_feat(inputs)
        model.decode_head.set_class_embeddings(model.text_encoder.class_embeddings(model.text_encoder.class_names))
        p_mf, masks = model.decode_head.proposals(x, [s.metainfo for s in samples], inputs.shape[2:])
        out = dict(probs=p_mf[0], mask_logits=masks[0, :, :h, :w])
        if model.crop_classifier is not None:
            embeds = model.text_encoder.class_embeddings(model.text_encoder.class_names)
            out["crop_probs"], out["crop_valid"] = model.crop_classifier(
                inputs[0, :, :h, :w], masks[0, :, :h, :w].sigmoid() > model.mask_threshold, embeds)
        out["sem_seg"] = model.predict(inputs, samples)[0].seg_logits.data
    return out


def max_diff(a, b):
    return float((a.float() - b.float()).abs().max())


def test_release_checkpoint_converts_with_nothing_missing_or_left_over(ours):
    _, report = ours
    assert report.ok and not report.unexpected and not report.missing
    aside = set(report.set_aside)
    assert {"clip_adapter.clip_model.logit_scale", "criterion.empty_weight",
            "clip_adapter.prompt_learner.start_signal"} <= aside
    # every backbone BN counter is filled, nothing else
    assert report.filled and all(k.endswith("num_batches_tracked") for k in report.filled)


def report(name, diffs):
    print(f"golden max |diff| {name}: {max(diffs):.1e}")  # the figures docs/segmentation.md quotes
    return max(diffs)


def test_per_query_probabilities_masks_and_crops_equal_zssegs(ours, zsseg_out):
    model, _ = ours
    got = [run_ours(model, rgb) for rgb in images()]
    for i, g in enumerate(got):
        assert torch.equal(g["crop_valid"], zsseg_out[f"crop_valid.{i}"])
        assert 0 < int(g["crop_valid"].sum())  # some crops are classified (not all neutral)
    for key in ("probs", "mask_logits", "crop_probs"):
        assert report(key, [max_diff(g[key], zsseg_out[f"{key}.{i}"]) for i, g in enumerate(got)]) < TOL


def test_semantic_logits_with_and_without_the_ensemble_equal_zssegs(ours, zsseg_out, golden_config, release_state):
    model, _ = ours
    plain, _ = build(golden_config, release_state, ensemble_lambda=None)
    for tag, m in (("ensemble", model), ("plain", plain)):
        diffs = [max_diff(run_ours(m, rgb)["sem_seg"], zsseg_out[f"{tag}.sem_seg.{i}"]) for i, rgb in enumerate(images())]
        assert report(f"{tag} semantic logits", diffs) < TOL


def our_losses(model):
    batch = np.load(GOLDEN / "train_batch.npz")
    vocab, seen = META["vocabulary"], META["seen"]
    lut = np.full(256, 255, np.uint8)
    lut[:len(seen)] = [vocab.index(c) for c in seen]  # zsseg's labels index the seen classes
    rgbs, labels = list(batch["images"]), [lut[lab] for lab in batch["labels"]]
    samples, inputs = [], []
    for rgb, lab in zip(rgbs, labels):
        sample = SegDataSample(metainfo=dict(ori_shape=rgb.shape[:2], img_shape=rgb.shape[:2]))
        sample.gt_sem_seg = PixelData(data=torch.from_numpy(lab)[None].long())
        samples.append(sample)
        inputs.append(torch.from_numpy(rgb[..., ::-1].transpose(2, 0, 1).copy()))
    data = model.data_preprocessor(dict(inputs=inputs, data_samples=samples), True)
    model.train()
    try:
        return {k: float(v) for k, v in model.loss(data["inputs"], data["data_samples"]).items()}
    finally:
        model.eval()


def zsseg_loss_name(ours: str) -> str:
    """decode.loss_cls -> loss_ce, decode.d3.loss_mask -> loss_mask_3 (zsseg's aux-loss names)."""
    name = ours.split(".")[-1].replace("loss_cls", "loss_ce")
    layer = ours.split(".")[1] if ours.count(".") == 2 else None
    return f"{name}_{layer[1:]}" if layer else name


@pytest.mark.parametrize("ours,theirs", [("decode.loss_cls", "loss_ce"), ("decode.d0.loss_mask", "loss_mask_0"),
                                         ("decode.d4.loss_dice", "loss_dice_4")])
def test_loss_names_map_to_zssegs(ours, theirs):
    assert zsseg_loss_name(ours) == theirs


def test_training_losses_equal_zssegs(ours):
    model, _ = ours
    losses = our_losses(model)
    expected = META["losses"]
    assert sorted(zsseg_loss_name(k) for k in losses) == sorted(expected)
    diffs = {k: abs(v - expected[zsseg_loss_name(k)]) for k, v in losses.items()}
    report(f"losses ({len(losses)} terms, total {sum(losses.values()):.3f})", list(diffs.values()))
    for k, v in losses.items():
        assert diffs[k] < TOL * max(1.0, abs(v)), k


# -- perturbations: each must move the outputs well past the tolerance -----------------------
def perturb_weight(model, change):
    with torch.no_grad():
        if change == "backbone weight":
            model.backbone.layer4[2].conv2.weight[0, 0, 1, 1] += 0.1
        elif change == "CLIP weight":
            model.crop_classifier.visual.proj[0, 0] += 0.1


@pytest.mark.parametrize("change,output", [
    ("backbone weight", "sem_seg"),
    ("CLIP weight", "sem_seg"),
    ("ensemble_lambda", "sem_seg"),
    ("clip_temperature", "crop_probs"),
    ("mask_threshold", "sem_seg"),
    ("query_temperature", "probs"),
])
def test_a_perturbation_breaks_the_comparison(change, output, golden_config, release_state, zsseg_out):
    kwargs = {"ensemble_lambda": dict(ensemble_lambda=0.75), "clip_temperature": dict(clip_temperature=None),
              "mask_threshold": dict(mask_threshold=0.45), "query_temperature": {"decode_head.temperature": 90.0},
              "padding_mask": {"decode_head.padding_mask": "test"}}.get(change, {})
    model, _ = build(golden_config, release_state, **kwargs)
    perturb_weight(model, change)
    worst = max(max_diff(run_ours(model, rgb)[output], zsseg_out[f"{output if output != 'sem_seg' else 'ensemble.sem_seg'}.{i}"])
                for i, rgb in enumerate(images()))
    assert worst > 10 * TOL, f"{change} moved {output} by only {worst:.2e}"


@pytest.mark.slow
def test_the_documented_release_commands_run_on_the_golden_fixture(golden_config, tmp_path, capsys):
    """docs/segmentation.md's sequence (convert, demo with a custom vocabulary, test on VOC) on
    the golden checkpoint: the commands' main()s, in this process (it knows the tiny CLIP)."""
    from pomp_seg import zsseg_checkpoint
    from tests.seg.seg_fixtures import make_voc
    demo_seg, test_seg = load_tool("demo_seg"), load_tool("test_seg")

    ckpt, prompt = tmp_path / "golden_mmseg.pth", tmp_path / "golden_prompt.pth"
    zsseg_checkpoint.main(["model", str(GOLDEN / "zsseg_tiny.pth"), "--config", str(golden_config),
                           "--out", str(ckpt), "--prompt-out", str(prompt)])
    assert "0 unexpected, 0 missing, 0 of another shape" in capsys.readouterr().out
    release = ["model.region_text_encoder=None", "model.text_encoder.templates=None", f"model.text_encoder.prompt={prompt}"]
    out = demo_seg.main([str(golden_config), str(ckpt), "--input", str(GOLDEN / "image1.png"),
                         "--vocabulary", "cat,sofa,tree", "--output", str(tmp_path / "demo"), "--cfg-options", *release])
    assert Image.open(out[0]).width >= 2 * META["image_sizes"][1][1]
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(f"{GOLDEN / 'image1.png'}:")][0]
    printed = line.split("->")[0].split(":", 1)[1]
    assert {n.strip() for n in printed.split(",")} <= {"cat", "sofa", "tree"}
    # VOC ids 2 bicycle (seen), 16 pottedplant and 18 sofa (unseen)
    voc = make_voc(tmp_path / "data", train={"t1": [2]}, aug={}, val={"v1": [2, 16], "v2": [18]})
    metrics = test_seg.main([str(golden_config), str(ckpt), "--data-root", str(voc), "--work-dir", str(tmp_path / "w"),
                             "--cfg-options", *release, "model.text_encoder.vocabulary=None",
                             "model.text_encoder.dataset_name=ZeroShotVOCDataset",
                             "model.seen_classes=ZeroShotVOCDataset"])
    assert {"hIoU", "mIoU_seen", "mIoU_unseen"} <= set(metrics)


def test_padding_mask_options_mask_padded_keys_where_they_say(ours):
    """'never' (zsseg's, the default) == 'test' in training and != it at test; 'always' masks
    in both. mmdet samples its padding mask at the stride-32 features' top-left pixels, so
    padding to the next multiple of 32 never reaches one: the test pads 72 x 100 to 128 x 160
    (as a fixed test size or a batch of larger images would), and trains on 64 x 96 + 30 x 60."""
    model, _ = ours
    assert model.decode_head.padding_mask == "never"
    data = preprocess(model, images()[0])
    inputs, metas = torch.nn.functional.pad(data["inputs"], (0, 60, 0, 56)), [s.metainfo for s in data["data_samples"]]
    batch = np.load(GOLDEN / "train_batch.npz")
    vocab = META["vocabulary"]
    lab = np.where(batch["labels"][0] == 255, 255, vocab.index("cat")).astype(np.uint8)
    samples, train_inputs = [], []
    for img, label in ((batch["images"][0], lab), (batch["images"][1][:30, :60], lab[:30, :60])):
        sample = SegDataSample(metainfo=dict(ori_shape=img.shape[:2], img_shape=img.shape[:2]))
        sample.gt_sem_seg = PixelData(data=torch.from_numpy(label)[None].long())
        samples.append(sample)
        train_inputs.append(torch.from_numpy(img[..., ::-1].transpose(2, 0, 1).copy()))
    test_out, train_loss = {}, {}
    for mode in ("never", "test", "always"):
        model.decode_head.padding_mask = mode
        with torch.no_grad():
            model.decode_head.set_class_embeddings(model.text_encoder.class_embeddings(vocab))
            test_out[mode] = model.decode_head.proposals(model.extract_feat(inputs), metas, inputs.shape[2:])[1]
        data = model.data_preprocessor(dict(inputs=train_inputs, data_samples=[s.clone() for s in samples]), True)
        model.train()
        with torch.no_grad():
            train_loss[mode] = float(model.loss(data["inputs"], data["data_samples"])["decode.loss_mask"])
        model.eval()
    model.decode_head.padding_mask = "never"
    assert max_diff(test_out["never"], test_out["test"]) > 10 * TOL
    assert torch.equal(test_out["test"], test_out["always"])
    assert train_loss["never"] == train_loss["test"] != train_loss["always"]
    with pytest.raises(ValueError, match="padding_mask must be one of"):
        from pomp_seg.mask_proposal_head import MaskProposalHead
        MaskProposalHead(embed_dims=16, padding_mask="sometimes")
