"""The key maps of pomp_seg.zsseg_checkpoint, table-driven; the full-size release model and
detectron2's R-103 backbone (their key shapes, written from zsseg's and detectron2's code by
tests/golden/make_zsseg_golden.py) fit our R101c config with nothing left over; the
converter commands and their errors."""
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.frameworks import require

require("mmseg.models")
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

from pomp_seg.zsseg_checkpoint import (MODEL_SET_ASIDE, convert_backbone, map_keys, model_keys,  # noqa: E402
                                       read_r103, resnet_key)
from tests.seg.seg_fixtures import ROOT, SEG_CONFIGS  # noqa: E402

SHAPES = json.loads((ROOT / "tests" / "fixtures" / "golden" / "zsseg" / "release_shapes.json").read_text())


@pytest.mark.parametrize("d2,ours", [
    ("stem.conv1.weight", "stem.0.weight"),
    ("stem.conv1.norm.weight", "stem.1.weight"),
    ("stem.conv2.weight", "stem.3.weight"),
    ("stem.conv2.norm.running_mean", "stem.4.running_mean"),
    ("stem.conv3.weight", "stem.6.weight"),
    ("stem.conv3.norm.running_var", "stem.7.running_var"),
    ("res2.0.conv1.weight", "layer1.0.conv1.weight"),
    ("res2.0.shortcut.weight", "layer1.0.downsample.0.weight"),
    ("res2.0.shortcut.norm.bias", "layer1.0.downsample.1.bias"),
    ("res3.3.conv2.norm.weight", "layer2.3.bn2.weight"),
    ("res4.22.conv3.weight", "layer3.22.conv3.weight"),
    ("backbone.res5.2.conv3.norm.running_mean", "layer4.2.bn3.running_mean"),
    ("res6.0.conv1.weight", None),
    ("fc1000.weight", None),
    ("stem.conv1.norm.num_batches_tracked", None),
])
def test_resnet_keys(d2, ours):
    assert resnet_key(d2) == ours


THEIR_KEYS = ["sem_seg_head.pixel_decoder.adapter_1.weight", "sem_seg_head.pixel_decoder.adapter_2.weight",
              "sem_seg_head.pixel_decoder.adapter_3.weight"]
OUR_KEYS = ["decode_head.cls_embed.proj.0.weight", "region_text_encoder.text.ln_final.weight"]


@pytest.mark.parametrize("theirs,ours", [
    ("backbone.stem.conv2.norm.bias", ["backbone.stem.4.bias"]),
    ("backbone.res5.1.conv2.weight", ["backbone.layer4.1.conv2.weight"]),
    ("sem_seg_head.pixel_decoder.adapter_1.weight", ["decode_head.pixel_decoder.lateral_convs.0.conv.weight"]),
    ("sem_seg_head.pixel_decoder.adapter_3.norm.bias", ["decode_head.pixel_decoder.lateral_convs.2.gn.bias"]),
    ("sem_seg_head.pixel_decoder.layer_1.weight", ["decode_head.pixel_decoder.output_convs.0.conv.weight"]),
    ("sem_seg_head.pixel_decoder.layer_3.norm.weight", ["decode_head.pixel_decoder.output_convs.2.gn.weight"]),
    ("sem_seg_head.pixel_decoder.layer_4.weight", ["decode_head.pixel_decoder.last_feat_conv.conv.weight"]),
    ("sem_seg_head.pixel_decoder.layer_4.norm.bias", ["decode_head.pixel_decoder.last_feat_conv.gn.bias"]),
    ("sem_seg_head.pixel_decoder.mask_features.bias", ["decode_head.pixel_decoder.mask_feature.bias"]),
    ("sem_seg_head.predictor.query_embed.weight", ["decode_head.query_embed.weight"]),
    ("sem_seg_head.predictor.input_proj.weight", ["decode_head.decoder_input_proj.weight"]),
    ("sem_seg_head.predictor.transformer.decoder.layers.0.self_attn.in_proj_weight",
     ["decode_head.transformer_decoder.layers.0.self_attn.attn.in_proj_weight"]),
    ("sem_seg_head.predictor.transformer.decoder.layers.5.multihead_attn.out_proj.bias",
     ["decode_head.transformer_decoder.layers.5.cross_attn.attn.out_proj.bias"]),
    ("sem_seg_head.predictor.transformer.decoder.layers.2.linear1.weight",
     ["decode_head.transformer_decoder.layers.2.ffn.layers.0.0.weight"]),
    ("sem_seg_head.predictor.transformer.decoder.layers.2.linear2.bias",
     ["decode_head.transformer_decoder.layers.2.ffn.layers.1.bias"]),
    ("sem_seg_head.predictor.transformer.decoder.layers.1.norm1.weight",
     ["decode_head.transformer_decoder.layers.1.norms.0.weight"]),
    ("sem_seg_head.predictor.transformer.decoder.layers.1.norm3.bias",
     ["decode_head.transformer_decoder.layers.1.norms.2.bias"]),
    ("sem_seg_head.predictor.transformer.decoder.norm.weight", ["decode_head.transformer_decoder.post_norm.weight"]),
    ("sem_seg_head.predictor.mask_embed.layers.0.weight", ["decode_head.mask_embed.0.weight"]),
    ("sem_seg_head.predictor.mask_embed.layers.2.bias", ["decode_head.mask_embed.4.bias"]),
    ("sem_seg_head.predictor.class_embed.layers.1.weight", ["decode_head.cls_embed.proj.2.weight"]),
    ("clip_adapter.non_object_embedding", ["decode_head.cls_embed.no_object"]),
    ("clip_adapter.prompt_learner.ctx", ["text_encoder.prompt.ctx"]),
    ("clip_adapter.prompt_learner.prefix_prompt", ["text_encoder.prompt.ctx"]),
    ("region_clip_adapter.prompt_learner.prefix_prompt", ["region_text_encoder.prompt.ctx"]),
    ("clip_adapter.clip_model.visual.conv1.weight", ["crop_classifier.visual.conv1.weight"]),
    ("clip_adapter.clip_model.visual.transformer.resblocks.0.attn.in_proj_weight",
     ["crop_classifier.visual.transformer.resblocks.0.attn.in_proj_weight"]),
    ("clip_adapter.clip_model.token_embedding.weight", ["text_encoder.text.token_embedding.weight"]),
    ("clip_adapter.clip_model.ln_final.weight",  # a region encoder shares the CLIP: both filled
     ["text_encoder.text.ln_final.weight", "region_text_encoder.text.ln_final.weight"]),
    ("clip_adapter.clip_model.text_projection", ["text_encoder.text.text_projection"]),
    ("criterion.empty_weight", []),
])
def test_model_keys(theirs, ours):
    assert model_keys(theirs, THEIR_KEYS, OUR_KEYS) == ours


def test_a_one_layer_query_projection_is_a_linear():
    assert model_keys("sem_seg_head.predictor.class_embed.layers.0.bias", THEIR_KEYS, []) == [
        "decode_head.cls_embed.proj.bias"]


@pytest.mark.parametrize("key", ["clip_adapter.clip_model.logit_scale", "clip_adapter.prompt_learner.pad_signal",
                                 "region_clip_adapter.clip_model.visual.proj", "clip_adapter.pixel_mean",
                                 "pixel_std", "criterion.empty_weight", "region_clip_adapter.non_object_embedding"])
def test_set_aside_keys_have_a_reason(key):
    import re
    assert any(re.fullmatch(p, key) for p in MODEL_SET_ASIDE)


@pytest.fixture(scope="module")
def full_size_model():
    """Our VOC stage-(b) model at its real widths (random weights), text side as the release's."""
    cfg = Config.fromfile(str(SEG_CONFIGS / "zsseg-r101c_voc12aug-512x512.py"))
    cfg.model.backbone.init_cfg = None
    cfg.model.region_text_encoder = None
    cfg.model.text_encoder.update(templates=None, init_words=" ".join(["X"] * 16), clip_pretrained=None)
    init_default_scope("mmseg")
    return MODELS.build(cfg.model)


def test_full_size_release_model_fits_our_r101c_config(full_size_model):
    ours = {k: tuple(v.shape) for k, v in full_size_model.state_dict().items()}
    report = map_keys(SHAPES["model"], ours, model_keys, MODEL_SET_ASIDE)
    assert report.ok, report.summary()
    assert len(report.mapped) > 900  # R-101, 6 decoder layers, ViT-B/16 and its text tower


def test_r103_pkl_converts_onto_the_default_backbone(tmp_path):
    # R-103.pkl's layout: {'model': {name: ndarray}, '__author__': ...}, detectron2 ResNet names
    rng = np.random.default_rng(0)
    weights = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES["r103"].items()}
    pkl = tmp_path / "R-103.pkl"
    pkl.write_bytes(pickle.dumps({"model": weights, "__author__": "Detectron2 model zoo"}))
    cfg = Config.fromfile(str(SEG_CONFIGS / "zsseg-r101c_voc12aug-512x512.py"))
    assert cfg.model.backbone.stem_channels == 128 and cfg.model.backbone.style == "pytorch"
    init_default_scope("mmseg")
    backbone = MODELS.build(dict(cfg.model.backbone, init_cfg=None))
    converted, report = convert_backbone(read_r103(str(pkl)), backbone)
    assert report.ok and len(report.mapped) == len(weights)
    backbone.load_state_dict(converted, strict=True)
    assert torch.equal(backbone.stem[0].weight, torch.from_numpy(weights["stem.conv1.weight"]))
    assert torch.equal(backbone.layer4[2].bn3.running_var, torch.from_numpy(weights["res5.2.conv3.norm.running_var"]))
    # the command writes the backbone's init_cfg checkpoint, which mmseg's Pretrained init loads
    out = tmp_path / "r103_mmseg.pth"
    done = subprocess.run([sys.executable, "-m", "pomp_seg.zsseg_checkpoint", "backbone", str(pkl), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "0 unexpected, 0 missing" in done.stdout
    init = MODELS.build(dict(cfg.model.backbone, init_cfg=dict(type="Pretrained", checkpoint=str(out))))
    init.init_weights()
    assert torch.equal(init.layer3[22].conv2.weight, torch.from_numpy(weights["res4.22.conv2.weight"]))


def test_a_checkpoint_of_another_model_is_refused_with_the_keys_named(full_size_model):
    state = {k: torch.zeros(s) for k, s in SHAPES["model"].items()}
    state["sem_seg_head.predictor.query_embed.weight"] = torch.zeros(50, 256)  # 50 queries, ours 100
    state["sem_seg_head.extra.weight"] = torch.zeros(3)
    from pomp_seg.zsseg_checkpoint import convert_model
    with pytest.raises(ValueError, match=r"(?s)unexpected: sem_seg_head\.extra\.weight.*shape: sem_seg_head"
                                         r"\.predictor\.query_embed\.weight \(50, 256\) -> ours \(100, 256\)"):
        convert_model(state, full_size_model)


def test_the_command_names_a_missing_checkpoint(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pomp_seg.zsseg_checkpoint", "model", str(tmp_path / "no.pth"),
                           "--config", "configs/seg/zsseg-r101c_voc12aug-512x512.py", "--out", str(tmp_path / "o.pth")],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: checkpoint '") and "no.pth' does not exist" in errors[0]
