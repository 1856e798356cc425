"""pomp_seg.zsseg_checkpoint by value: every rule of the two key maps against its target written
out, the pixel decoder's last level, the report of a conversion (mapped, set aside with its
reason, filled, unexpected, missing, of another shape) on small hand-made state dicts, the
converted tensors (values, our dtypes, zeros for the filled counters), the readers and their
errors, the prompt's context, the model built for a conversion and both commands in-process."""
import pickle
import re

import numpy as np
import pytest
import torch
from torch import nn

from tests.frameworks import require

require("mmseg.models")
from mmengine.registry import init_default_scope  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

from pomp_seg import zsseg_checkpoint as zc  # noqa: E402
from tests.seg.seg_fixtures import SEG_CONFIGS, TINY_MODEL, override_config  # noqa: E402

BN = ["weight", "bias", "running_mean", "running_var"]
RESNET_AIDE = "the ImageNet classifier of the pre-trained ResNet; segmentation does not use it"
FILLED = "0 (detectron2's FrozenBatchNorm2d counts no batches)"


@pytest.fixture(autouse=True)
def mmseg_scope():
    init_default_scope("mmseg")


# -- the ResNet map, rule by rule --------------------------------------------------------------
RESNET = [(f"stem.conv{i}.weight", f"stem.{3 * i - 3}.weight") for i in (1, 2, 3)] + [
    (f"stem.conv{i}.norm.{p}", f"stem.{3 * i - 2}.{p}") for i in (1, 2, 3) for p in BN] + [
    ("res2.0.conv1.weight", "layer1.0.conv1.weight"), ("res3.1.conv2.weight", "layer2.1.conv2.weight"),
    ("res4.22.conv3.weight", "layer3.22.conv3.weight"), ("res5.2.conv1.weight", "layer4.2.conv1.weight"),
    ("res2.2.conv1.norm.weight", "layer1.2.bn1.weight"), ("res3.0.conv2.norm.bias", "layer2.0.bn2.bias"),
    ("res4.7.conv3.norm.running_mean", "layer3.7.bn3.running_mean"),
    ("res5.1.conv3.norm.running_var", "layer4.1.bn3.running_var"),
    ("res2.0.shortcut.weight", "layer1.0.downsample.0.weight"), ("res5.0.shortcut.weight", "layer4.0.downsample.0.weight"),
    ("res3.0.shortcut.norm.weight", "layer2.0.downsample.1.weight"),
    ("res4.0.shortcut.norm.running_var", "layer3.0.downsample.1.running_var"),
    ("backbone.stem.conv2.norm.running_mean", "stem.4.running_mean"),  # the prefix dropped
    ("backbone.res5.2.conv3.norm.bias", "layer4.2.bn3.bias"),
]
NO_RESNET_KEY = ["res1.0.conv1.weight", "res6.0.conv1.weight", "stem.conv4.weight", "stem.conv0.weight",
                 "res2.0.conv4.weight", "res2.0.conv1.norm.num_batches_tracked", "res2.0.conv1.bias",
                 "fc1000.weight", "xbackbone.res2.0.conv1.weight", "res2.0.shortcut.conv.weight",
                 "stem.conv1.weight.extra", "backbone.backbone.res2.0.conv1.weight"]


@pytest.mark.parametrize("d2, ours", RESNET + [(k, None) for k in NO_RESNET_KEY])
def test_resnet_key_table(d2, ours):
    assert zc.resnet_key(d2) == ours


# -- the ZeroShotMaskFormer map, rule by rule --------------------------------------------------
PIX, DEC, PRED = "sem_seg_head.pixel_decoder.", "sem_seg_head.predictor.transformer.decoder.", "sem_seg_head.predictor."
D_PIX, D_DEC = "decode_head.pixel_decoder.", "decode_head.transformer_decoder."
THEIR = [PIX + f"adapter_{i}.weight" for i in (1, 2, 3)] + [PIX + f"adapter_{i}.norm.weight" for i in (1, 2, 3)]
OURS = ["decode_head.cls_embed.proj.0.weight", "decode_head.cls_embed.proj.0.bias",
        "region_text_encoder.text.ln_final.weight", "region_text_encoder.text.token_embedding.weight",
        "region_text_encoder.text.transformer.resblocks.0.attn.in_proj_weight"]
MODEL = [
    ("backbone.stem.conv3.weight", ["backbone.stem.6.weight"]),
    ("backbone.res3.3.shortcut.norm.bias", ["backbone.layer2.3.downsample.1.bias"]),
    ("backbone.fc1000.weight", []),
    (PIX + "adapter_1.weight", [D_PIX + "lateral_convs.0.conv.weight"]),
    (PIX + "adapter_3.weight", [D_PIX + "lateral_convs.2.conv.weight"]),
    (PIX + "adapter_2.norm.weight", [D_PIX + "lateral_convs.1.gn.weight"]),
    (PIX + "adapter_1.norm.bias", [D_PIX + "lateral_convs.0.gn.bias"]),
    (PIX + "layer_1.weight", [D_PIX + "output_convs.0.conv.weight"]),
    (PIX + "layer_3.weight", [D_PIX + "output_convs.2.conv.weight"]),
    (PIX + "layer_2.norm.weight", [D_PIX + "output_convs.1.gn.weight"]),
    (PIX + "layer_3.norm.bias", [D_PIX + "output_convs.2.gn.bias"]),
    (PIX + "layer_4.weight", [D_PIX + "last_feat_conv.conv.weight"]),  # three adapters: layer_4 is on res5
    (PIX + "layer_4.norm.weight", [D_PIX + "last_feat_conv.gn.weight"]),
    (PIX + "layer_5.weight", [D_PIX + "output_convs.4.conv.weight"]),
    (PIX + "mask_features.weight", [D_PIX + "mask_feature.weight"]),
    (PIX + "mask_features.bias", [D_PIX + "mask_feature.bias"]),
    (PRED + "query_embed.weight", ["decode_head.query_embed.weight"]),
    (PRED + "input_proj.weight", ["decode_head.decoder_input_proj.weight"]),
    (PRED + "input_proj.bias", ["decode_head.decoder_input_proj.bias"]),
    *[(DEC + f"layers.{i}.self_attn.{p}", [D_DEC + f"layers.{i}.self_attn.attn.{p}"])
      for i, p in ((0, "in_proj_weight"), (3, "in_proj_bias"), (5, "out_proj.weight"), (1, "out_proj.bias"))],
    *[(DEC + f"layers.{i}.multihead_attn.{p}", [D_DEC + f"layers.{i}.cross_attn.attn.{p}"])
      for i, p in ((2, "in_proj_weight"), (0, "in_proj_bias"), (4, "out_proj.weight"), (5, "out_proj.bias"))],
    (DEC + "layers.3.linear1.weight", [D_DEC + "layers.3.ffn.layers.0.0.weight"]),
    (DEC + "layers.0.linear1.bias", [D_DEC + "layers.0.ffn.layers.0.0.bias"]),
    (DEC + "layers.4.linear2.weight", [D_DEC + "layers.4.ffn.layers.1.weight"]),
    (DEC + "layers.5.linear2.bias", [D_DEC + "layers.5.ffn.layers.1.bias"]),
    (DEC + "layers.0.norm1.bias", [D_DEC + "layers.0.norms.0.bias"]),
    (DEC + "layers.2.norm2.weight", [D_DEC + "layers.2.norms.1.weight"]),
    (DEC + "layers.5.norm3.weight", [D_DEC + "layers.5.norms.2.weight"]),
    (DEC + "norm.weight", [D_DEC + "post_norm.weight"]),
    (DEC + "norm.bias", [D_DEC + "post_norm.bias"]),
    (PRED + "mask_embed.layers.1.weight", ["decode_head.mask_embed.2.weight"]),
    (PRED + "mask_embed.layers.2.weight", ["decode_head.mask_embed.4.weight"]),
    (PRED + "class_embed.layers.0.weight", ["decode_head.cls_embed.proj.0.weight"]),  # ours has proj.0
    (PRED + "class_embed.layers.0.bias", ["decode_head.cls_embed.proj.0.bias"]),
    (PRED + "class_embed.layers.2.bias", ["decode_head.cls_embed.proj.4.bias"]),  # only a first layer is a Linear
    ("clip_adapter.non_object_embedding", ["decode_head.cls_embed.no_object"]),
    ("clip_adapter.prompt_learner.ctx", ["text_encoder.prompt.ctx"]),
    ("clip_adapter.prompt_learner.prefix_prompt", ["text_encoder.prompt.ctx"]),
    ("region_clip_adapter.prompt_learner.ctx", ["region_text_encoder.prompt.ctx"]),
    ("region_clip_adapter.prompt_learner.prefix_prompt", ["region_text_encoder.prompt.ctx"]),
    ("clip_adapter.clip_model.visual.proj", ["crop_classifier.visual.proj"]),
    ("clip_adapter.clip_model.visual.proj.0.weight", ["crop_classifier.visual.proj.0.weight"]),  # not the query's
    ("clip_adapter.clip_model.visual.ln_post.bias", ["crop_classifier.visual.ln_post.bias"]),
    ("clip_adapter.clip_model.positional_embedding", ["text_encoder.text.positional_embedding"]),
    ("clip_adapter.clip_model.text_projection", ["text_encoder.text.text_projection"]),
    ("clip_adapter.clip_model.ln_final.bias", ["text_encoder.text.ln_final.bias"]),  # no region one of ours
    ("clip_adapter.clip_model.ln_final.weight", ["text_encoder.text.ln_final.weight",
                                                 "region_text_encoder.text.ln_final.weight"]),
    ("clip_adapter.clip_model.token_embedding.weight", ["text_encoder.text.token_embedding.weight",
                                                        "region_text_encoder.text.token_embedding.weight"]),
    ("clip_adapter.clip_model.transformer.resblocks.0.attn.in_proj_weight",
     ["text_encoder.text.transformer.resblocks.0.attn.in_proj_weight",
      "region_text_encoder.text.transformer.resblocks.0.attn.in_proj_weight"]),
    ("clip_adapter.clip_model.logit_scale", []),
    ("region_clip_adapter.clip_model.ln_final.weight", []),
    ("sem_seg_head.predictor.transformer.decoder.layers.0.dropout.weight", []),
    ("criterion.empty_weight", []),
]


@pytest.mark.parametrize("theirs, ours", MODEL)
def test_model_keys_table(theirs, ours):
    assert zc.model_keys(theirs, THEIR, OURS) == ours


@pytest.mark.parametrize("adapters, last", [(1, 2), (2, 3), (3, 4)])
def test_the_last_pixel_decoder_layer_follows_the_adapters_count(adapters, last):
    """n adapters (lateral levels; their norms do not count): layer_{n+1} is the res5 conv."""
    their = [PIX + f"adapter_{i}.{p}" for i in range(1, adapters + 1) for p in ("weight", "norm.weight", "norm.bias")]
    for n in range(1, 5):
        want = D_PIX + ("last_feat_conv" if n == last else f"output_convs.{n - 1}") + ".conv.weight"
        assert zc.model_keys(PIX + f"layer_{n}.weight", their, []) == [want]
    assert zc.model_keys(PIX + "adapter_1.weight", their, []) == [D_PIX + "lateral_convs.0.conv.weight"]


SIGNALS = "embeddings of CLIP's SOS, '.', EOS and pad tokens; our encoder reads them from CLIP's token embedding"


@pytest.mark.parametrize("key, reason", [
    ("clip_adapter.clip_model.logit_scale", "zsseg scores queries and crops with a fixed temperature 100 "
                                            "(ClipAdapter.get_sim_logits): model.clip_temperature"),
    *[(f"{o}clip_adapter.prompt_learner.{t}_signal", SIGNALS) for o in ("", "region_") for t in ("start", "dot", "end",
                                                                                               "pad")],
    ("region_clip_adapter.clip_model.visual.proj", "a second copy of the same frozen CLIP; ours is shared"),
    ("region_clip_adapter.clip_model.token_embedding.weight", "a second copy of the same frozen CLIP; ours is shared"),
    ("region_clip_adapter.non_object_embedding",
     "unused: zsseg drops the crops' no-object column before the softmax"),
    ("clip_adapter.pixel_mean", "CLIP's pixel statistics: pomp_seg.clip.CLIP_MEAN / CLIP_STD"),
    ("region_clip_adapter.pixel_std", "CLIP's pixel statistics: pomp_seg.clip.CLIP_MEAN / CLIP_STD"),
    ("pixel_mean", "the backbone's input statistics: model.data_preprocessor.mean / std"),
    ("pixel_std", "the backbone's input statistics: model.data_preprocessor.mean / std"),
    ("criterion.empty_weight", "the no-object class weight 0.1: decode_head.loss_cls.class_weight"),
    ("clip_adapter.prompt_learner.ctx", None), ("clip_adapter.non_object_embedding", None),
    ("clip_adapter.clip_model.visual.proj", None), ("clip_adapter.prompt_learner.begin_signal", None),
    ("backbone.pixel_mean", None), ("criterion.weight", None),
])
def test_model_set_aside_table(key, reason):
    reasons = [r for p, r in zc.MODEL_SET_ASIDE.items() if re.fullmatch(p, key)]
    assert reasons == ([reason] if reason else [])


@pytest.mark.parametrize("key, aside", [("fc1000.weight", True), ("fc1000.bias", True), ("linear.weight", True),
                                        ("fc.bias", True), ("stem.fc.weight", True), ("res5.fc.weight", False),
                                        ("fc1000.running_mean", False), ("stem.conv1.weight", False)])
def test_resnet_set_aside_table(key, aside):
    reasons = [r for p, r in zc.RESNET_SET_ASIDE.items() if re.fullmatch(p, key)]
    assert reasons == ([RESNET_AIDE] if aside else [])


# -- a conversion's report and tensors, on hand-made state dicts ---------------------------------
def module_of(state):
    """A module whose state_dict is ``state`` (names with dots become submodules)."""
    root = nn.Module()
    for name, value in state.items():
        *path, leaf = name.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, nn.Module())
            node = getattr(node, part)
        node.register_buffer(leaf, value)
    return root


def ours_state(visual=True):
    g = torch.Generator().manual_seed(0)
    shapes = {
        "backbone.stem.0.weight": (4, 3, 3, 3), "backbone.stem.1.weight": (4,), "backbone.stem.1.num_batches_tracked": (),
        D_PIX + "lateral_convs.0.conv.weight": (8, 4, 1, 1), D_PIX + "output_convs.0.conv.weight": (8, 8, 3, 3),
        D_PIX + "last_feat_conv.conv.weight": (8, 16, 3, 3), "decode_head.cls_embed.proj.weight": (6, 8),
        "decode_head.cls_embed.no_object": (1, 6), "text_encoder.prompt.ctx": (3, 5),
        "text_encoder.text.ln_final.weight": (5,), "region_text_encoder.prompt.ctx": (2, 5),
        "region_text_encoder.text.ln_final.weight": (5,), "decode_head.query_embed.weight": (4, 8),
    }
    if visual:
        shapes["crop_classifier.visual.proj"] = (7, 6)
    state = {k: torch.zeros(s, dtype=torch.float32) for k, s in shapes.items()}
    state["backbone.stem.1.num_batches_tracked"] = torch.tensor(17)  # our counter; the conversion zeroes it
    state["text_encoder.prompt.ctx"] = torch.randn(3, 5, generator=g)
    return state


def theirs_state():
    g = torch.Generator().manual_seed(1)
    shapes = {
        "backbone.stem.conv1.weight": (4, 3, 3, 3), "backbone.stem.conv1.norm.weight": (4,),
        PIX + "adapter_1.weight": (8, 4, 1, 1), PIX + "layer_1.weight": (8, 8, 3, 3), PIX + "layer_2.weight": (8, 16, 3, 3),
        PRED + "class_embed.layers.0.weight": (6, 8), "clip_adapter.non_object_embedding": (1, 6),
        "clip_adapter.prompt_learner.ctx": (3, 5), "region_clip_adapter.prompt_learner.prefix_prompt": (2, 5),
        "clip_adapter.clip_model.ln_final.weight": (5,), "clip_adapter.clip_model.visual.proj": (7, 6),
        PRED + "query_embed.weight": (4, 8),
        "clip_adapter.clip_model.logit_scale": (), "region_clip_adapter.clip_model.ln_final.weight": (5,),
        "pixel_mean": (3, 1, 1), "criterion.empty_weight": (7,), "clip_adapter.prompt_learner.start_signal": (5,),
    }
    state = {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in shapes.items()}
    state["clip_adapter.prompt_learner.ctx"] = state["clip_adapter.prompt_learner.ctx"].half()
    return state


ASIDE = {
    "clip_adapter.clip_model.logit_scale": "zsseg scores queries and crops with a fixed temperature 100 "
                                           "(ClipAdapter.get_sim_logits): model.clip_temperature",
    "region_clip_adapter.clip_model.ln_final.weight": "a second copy of the same frozen CLIP; ours is shared",
    "pixel_mean": "the backbone's input statistics: model.data_preprocessor.mean / std",
    "criterion.empty_weight": "the no-object class weight 0.1: decode_head.loss_cls.class_weight",
    "clip_adapter.prompt_learner.start_signal": "embeddings of CLIP's SOS, '.', EOS and pad tokens; our encoder "
                                                "reads them from CLIP's token embedding",
}
MAPPED = {
    "backbone.stem.conv1.weight": ["backbone.stem.0.weight"], "backbone.stem.conv1.norm.weight": ["backbone.stem.1.weight"],
    PIX + "adapter_1.weight": [D_PIX + "lateral_convs.0.conv.weight"],
    PIX + "layer_1.weight": [D_PIX + "output_convs.0.conv.weight"],
    PIX + "layer_2.weight": [D_PIX + "last_feat_conv.conv.weight"],
    PRED + "class_embed.layers.0.weight": ["decode_head.cls_embed.proj.weight"],
    "clip_adapter.non_object_embedding": ["decode_head.cls_embed.no_object"],
    "clip_adapter.prompt_learner.ctx": ["text_encoder.prompt.ctx"],
    "region_clip_adapter.prompt_learner.prefix_prompt": ["region_text_encoder.prompt.ctx"],
    "clip_adapter.clip_model.ln_final.weight": ["text_encoder.text.ln_final.weight",
                                                "region_text_encoder.text.ln_final.weight"],
    "clip_adapter.clip_model.visual.proj": ["crop_classifier.visual.proj"],
    PRED + "query_embed.weight": ["decode_head.query_embed.weight"],
}


def test_convert_model_reports_and_converts_every_key():
    theirs, ours = theirs_state(), ours_state()
    converted, report = zc.convert_model(theirs, module_of(ours))
    assert report.mapped == MAPPED and report.set_aside == ASIDE
    assert report.filled == {"backbone.stem.1.num_batches_tracked": FILLED}
    assert not report.unexpected and not report.missing and not report.wrong_shape
    assert report.summary().splitlines()[0] == ("12 mapped (to 13 of ours), 5 set aside, 1 filled, 0 unexpected, "
                                                "0 missing, 0 of another shape")
    assert sorted(converted) == sorted(ours)
    for key, targets in MAPPED.items():
        for target in targets:  # their values in our dtype (float64 and float16 -> float32)
            assert converted[target].dtype == torch.float32
            torch.testing.assert_close(converted[target], theirs[key].float(), rtol=0, atol=0)
    counter = converted["backbone.stem.1.num_batches_tracked"]
    assert counter.dtype == torch.int64 and counter.shape == () and int(counter) == 0
    # the region encoder's text tower is the query CLIP's, not the region copy set aside
    assert torch.equal(converted["region_text_encoder.text.ln_final.weight"],
                       theirs["clip_adapter.clip_model.ln_final.weight"].float())
    model = module_of(ours)
    model.load_state_dict(converted, strict=True)


def test_without_a_crop_classifier_the_visual_tower_is_set_aside_and_the_table_stays():
    before = dict(zc.MODEL_SET_ASIDE)
    theirs = theirs_state()
    theirs["clip_adapter.clip_model.visual.transformer.resblocks.0.ln_1.weight"] = torch.zeros(3)
    _, report = zc.convert_model(theirs, module_of(ours_state(visual=False)))
    reason = "CLIP's visual tower: this model has no crop ensemble (ensemble_lambda=None)"
    assert report.set_aside == {**ASIDE, "clip_adapter.clip_model.visual.proj": reason,
                                "clip_adapter.clip_model.visual.transformer.resblocks.0.ln_1.weight": reason}
    assert "clip_adapter.clip_model.visual.proj" not in report.mapped and report.ok
    assert zc.MODEL_SET_ASIDE == before  # a copy was extended, not the module's table
    with pytest.raises(ValueError, match="unexpected: clip_adapter.clip_model.visual.transformer"):
        zc.convert_model(theirs, module_of(ours_state()))  # a visual tower without that key of ours


def test_a_checkpoint_that_does_not_fit_is_refused_with_the_report():
    theirs, ours = theirs_state(), ours_state()
    theirs[PRED + "query_embed.weight"] = torch.zeros(5, 8)  # 5 queries, ours 4
    # misshapen keys whose names need their keys (the last pixel decoder layer) and ours (a
    # one-layer query projection): their targets are not missing either
    theirs[PIX + "layer_2.weight"] = torch.zeros(8, 16, 1, 1)
    theirs[PRED + "class_embed.layers.0.weight"] = torch.zeros(6, 9)
    theirs[PRED + "mask_embed.layers.0.weight"] = torch.zeros(8, 8)  # ours has no mask_embed
    theirs["sem_seg_head.extra.weight"] = torch.zeros(2)  # no rule
    del theirs[PIX + "layer_1.weight"]  # ours output_convs.0 stays empty
    want = ("the zsseg checkpoint does not fit this model (a zsseg_r101c config at the checkpoint's widths, "
            "region_text_encoder=None unless it has a region_clip_adapter):\n"
            "8 mapped (to 9 of ours), 5 set aside, 1 filled, 2 unexpected, 1 missing, 3 of another shape\n"
            + "".join(f"  set aside (1): {r}\n" for r in ASIDE.values())
            + f"  unexpected: {PRED}mask_embed.layers.0.weight\n  unexpected: sem_seg_head.extra.weight\n"
            f"  missing: {D_PIX}output_convs.0.conv.weight\n"
            f"  shape: {PIX}layer_2.weight (8, 16, 1, 1) -> ours (8, 16, 3, 3)\n"
            f"  shape: {PRED}class_embed.layers.0.weight (6, 9) -> ours (6, 8)\n"
            f"  shape: {PRED}query_embed.weight (5, 8) -> ours (4, 8)")
    with pytest.raises(ValueError) as err:
        zc.convert_model(theirs, module_of(ours))
    assert str(err.value) == want  # the misshapen key's target is not also missing


def test_map_keys_one_to_many_needs_every_target_and_every_shape():
    our = {"a": (2,), "b": (2,), "c": (3,), "d.num_batches_tracked": (), "e": (1,)}
    rename = {"x": ["a", "b"], "y": ["a", "z"], "w": ["c", "b"], "v": []}
    report = zc.map_keys({"x": (2,), "y": (2,), "w": (2,), "v": (1,), "s": (1,)}, our,
                         lambda k, theirs, ours: rename.get(k, []), {"s": "a reason"})
    assert report.mapped == {"x": ["a", "b"]} and report.set_aside == {"s": "a reason"}
    assert report.unexpected == ["y", "v"] and report.wrong_shape == [("w", (2,), (3,))]
    # c is w's target (of another shape): not missing; e is nobody's; the counter is filled
    assert report.missing == ["e"] and report.filled == {"d.num_batches_tracked": FILLED}
    assert report.one_to_many


def tiny_backbone(**kw):
    return MODELS.build(dict(type="ResNetV1c", depth=18, stem_channels=16, base_channels=8, init_cfg=None, **kw))


def d2_names(our_keys):
    """detectron2's names for a ResNetV1c's keys, by hand (counters have none)."""
    out = {}
    for key in our_keys:
        if key.endswith("num_batches_tracked"):
            continue
        parts = key.split(".")
        if parts[0] == "stem":  # Sequential(conv, bn, relu) x 3
            i, p = int(parts[1]), parts[2]
            out[key] = f"stem.conv{i // 3 + 1}.weight" if i % 3 == 0 else f"stem.conv{i // 3 + 1}.norm.{p}"
            continue
        res, block, kind, rest = f"res{int(parts[0][5:]) + 1}", parts[1], parts[2], parts[3:]
        if kind.startswith("conv"):
            out[key] = f"{res}.{block}.{kind}.weight"
        elif kind.startswith("bn"):
            out[key] = f"{res}.{block}.conv{kind[2:]}.norm.{rest[0]}"
        else:  # downsample.0 (conv) / downsample.1 (bn)
            out[key] = f"{res}.{block}.shortcut." + ("weight" if rest[0] == "0" else f"norm.{rest[1]}")
    return out


def r103_like(backbone, seed=0):
    rng = np.random.default_rng(seed)
    names = d2_names(backbone.state_dict())
    shapes = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
    weights = {names[k]: rng.standard_normal(shapes[k]) for k in names}  # float64, as a pickle may hold
    weights["fc1000.weight"] = rng.standard_normal((10, 8))
    return names, weights


def test_convert_backbone_by_value():
    backbone = tiny_backbone()
    names, weights = r103_like(backbone)
    converted, report = zc.convert_backbone(weights, backbone)
    assert report.set_aside == {"fc1000.weight": RESNET_AIDE} and report.ok
    assert report.mapped == {d2: [ours] for ours, d2 in names.items()}
    counters = [k for k in backbone.state_dict() if k.endswith("num_batches_tracked")]
    assert report.filled == {k: FILLED for k in counters} and len(counters) == 3 + 8 * 2 + 4  # 4 shortcuts
    backbone.load_state_dict(converted, strict=True)
    for ours, d2 in names.items():
        assert converted[ours].dtype == torch.float32
        torch.testing.assert_close(converted[ours], torch.from_numpy(weights[d2]).float(), rtol=0, atol=0)
    assert all(int(converted[k]) == 0 and converted[k].dtype == torch.int64 for k in counters)
    torch.testing.assert_close(backbone.layer2[0].downsample[1].running_var,
                               torch.from_numpy(weights["res3.0.shortcut.norm.running_var"]).float())
    torch.testing.assert_close(backbone.stem[3].weight, torch.from_numpy(weights["stem.conv2.weight"]).float())


def test_convert_backbone_refuses_another_resnet_with_the_report():
    backbone = tiny_backbone()
    _, weights = r103_like(backbone)
    weights["res2.0.conv1.weight"] = np.zeros((8, 16, 3, 1))
    weights["res6.0.conv1.weight"] = np.zeros(1)
    n = len(weights) - 3  # less the classifier, the misshapen and the unknown key
    want = (f"the ResNet weights do not fit this backbone (ResNetV1c, depth 101, stem_channels=128 for R-103):\n"
            f"{n} mapped (to {n} of ours), 1 set aside, 23 filled, 1 unexpected, 0 missing, 1 of another shape\n"
            f"  set aside (1): {RESNET_AIDE}\n  unexpected: res6.0.conv1.weight\n"
            f"  shape: res2.0.conv1.weight (8, 16, 3, 1) -> ours (8, 16, 3, 3)")
    with pytest.raises(ValueError) as err:
        zc.convert_backbone(weights, backbone)
    assert str(err.value) == want


# -- readers -----------------------------------------------------------------------------------
def test_read_r103_takes_model_or_blobs_and_python2_strings(tmp_path):
    arrays = {"stem.conv1.weight": np.arange(6.0).reshape(2, 3)}
    for key in ("model", "blobs"):
        path = tmp_path / f"{key}.pkl"
        path.write_bytes(pickle.dumps({key: arrays, "__author__": "Detectron2 model zoo"}))
        got = zc.read_r103(str(path))
        assert list(got) == ["stem.conv1.weight"] and np.array_equal(got["stem.conv1.weight"], arrays["stem.conv1.weight"])
    # a Python 2 pickle's str (bytes 0xe9 't' 0xe9) reads as latin-1
    py2 = tmp_path / "py2.pkl"
    py2.write_bytes(b"\x80\x02}q\x00(U\x05modelq\x01}q\x02U\nmodel_nameq\x03U\x03\xe9t\xe9q\x04u.")
    assert zc.read_r103(str(py2)) == {}
    with_blobs = tmp_path / "both.pkl"
    with_blobs.write_bytes(pickle.dumps({"model": arrays, "blobs": {"other": np.zeros(1)}}))
    assert list(zc.read_r103(str(with_blobs))) == ["stem.conv1.weight"]  # model first


@pytest.mark.parametrize("content, message", [
    (pickle.dumps({"weights": {}}), r"^{}: expected \{{'model': \{{name: array\}}, '__author__': \.\.\.\}} "
                                    r"\(detectron2's model zoo\)$"),
    (pickle.dumps({"model": [1, 2]}), r"^{}: expected \{{'model'"),
    (pickle.dumps([1, 2]), r"^{}: expected \{{'model'"),
    (b"not a pickle", r"(?s)^{}: not a detectron2 \.pkl \(.+\)$"),
])
def test_read_r103_errors(tmp_path, content, message):
    path = tmp_path / "R-103.pkl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message.format(re.escape(str(path)))):
        zc.read_r103(str(path))


class NotATensor:
    """A pickled object that a weights-only load refuses."""


def test_read_zsseg_takes_the_model_entry_or_a_bare_state_dict(tmp_path):
    state = {"a.weight": torch.arange(3.0), "b": torch.ones(2, dtype=torch.int64)}
    torch.save({"model": state, "iteration": 5}, tmp_path / "wrapped.pth")
    torch.save(state, tmp_path / "bare.pth")
    for name in ("wrapped.pth", "bare.pth"):
        got = zc.read_zsseg(str(tmp_path / name))
        assert list(got) == ["a.weight", "b"] and all(torch.equal(got[k], state[k]) for k in state)


@pytest.mark.parametrize("saved, message", [
    ({"model": {"a": torch.zeros(1), "n": 3}}, r"^{}: no state dict found \(expected \{{'model': \{{name: tensor\}}\}}\)$"),
    ([torch.zeros(1)], r"^{}: no state dict found"),
    ({"model": {"a": torch.zeros(1)}, "extra": NotATensor()}, r"(?s)^{}: not a plain tensor checkpoint \(.+\)$"),
])
def test_read_zsseg_errors(tmp_path, saved, message):
    path = tmp_path / "ckpt.pth"
    torch.save(saved, path)
    with pytest.raises(ValueError, match=message.format(re.escape(str(path)))):
        zc.read_zsseg(str(path))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=rf"(?s)^{re.escape(str(path))}: not a plain tensor checkpoint \(.+\)$"):
        zc.read_zsseg(str(path))


def test_prompt_ctx_prefers_ctx_and_reads_the_region_prompt_as_float():
    ctx, prefix, region = torch.randn(4, 6).half(), torch.randn(3, 6), torch.randn(2, 6).half()
    state = {"clip_adapter.prompt_learner.ctx": ctx, "clip_adapter.prompt_learner.prefix_prompt": prefix,
             "region_clip_adapter.prompt_learner.prefix_prompt": region}
    got = zc.prompt_ctx(state)
    assert got.dtype == torch.float32 and torch.equal(got, ctx.float())
    assert torch.equal(zc.prompt_ctx(state, region=True), region.float())
    assert torch.equal(zc.prompt_ctx({"clip_adapter.prompt_learner.prefix_prompt": prefix}), prefix)
    for region_flag, owner in ((False, "clip_adapter"), (True, "region_clip_adapter")):
        with pytest.raises(KeyError) as err:
            zc.prompt_ctx({"clip_adapter.prompt_learner.start_signal": prefix}, region=region_flag)
        assert err.value.args[0] == (f"{owner}.prompt_learner has no ctx in this checkpoint: its text side is a hand "
                                     "template (PROMPT_LEARNER predefined / imagenet / vild); configure "
                                     "text_encoder.templates instead")


# -- the model built for a conversion, and the commands -------------------------------------------
@pytest.fixture
def tiny_config(tmp_path):
    # the VOC config's region prompt is a stage-(a) file that does not exist here, and pomp-tiny
    # has no 'openai' weights: the conversion must replace both
    flat = dict(TINY_MODEL, **{"model.backbone.init_cfg": dict(type="Pretrained", checkpoint="no/such.pth"),
                               "model.text_encoder.clip_pretrained": "openai",
                               "model.region_text_encoder.templates": ["a {}"]})
    return override_config(tmp_path / "tiny.py", SEG_CONFIGS / "zsseg-r101c_voc12aug-512x512.py", flat)


def test_build_for_conversion_sizes_each_prompt_from_the_checkpoint(tiny_config):
    state = {"clip_adapter.prompt_learner.ctx": torch.zeros(5, 64),
             "region_clip_adapter.prompt_learner.prefix_prompt": torch.zeros(3, 64)}
    model = zc.build_for_conversion(str(tiny_config), state, {"model.mask_threshold": 0.25})
    assert model.text_encoder.prompt.ctx.shape == (5, 64) and model.region_text_encoder.prompt.ctx.shape == (3, 64)
    assert model.region_text_encoder.templates is None and model.text_encoder.templates is None
    # the config's Pretrained init is dropped: ResNet's own initialisation (the checkpoint fills it)
    assert model.mask_threshold == 0.25 and model.backbone.init_cfg == [
        dict(type="Kaiming", layer="Conv2d"), dict(type="Constant", val=1, layer=["_BatchNorm", "GroupNorm"])]
    # a hand-template side (no ctx in the checkpoint) keeps the config's templates
    model = zc.build_for_conversion(str(tiny_config), {"clip_adapter.prompt_learner.ctx": torch.zeros(2, 64)},
                                    {"model.region_text_encoder.prompt": None})
    assert model.text_encoder.prompt.ctx.shape == (2, 64) and model.region_text_encoder.templates == ["a {}"]
    assert model.mask_threshold == 0.5
    with pytest.raises(Exception, match="prompt.pth"):  # without the option: the config's region prompt file
        zc.build_for_conversion(str(tiny_config), {"clip_adapter.prompt_learner.ctx": torch.zeros(2, 64)})


def test_the_backbone_command_writes_the_converted_weights(tmp_path, capsys):
    backbone = MODELS.build(dict(type="ResNetV1c", depth=18, stem_channels=16, multi_grid=(1, 2, 4),
                                 contract_dilation=True))
    names, weights = r103_like(backbone, seed=3)
    pkl = tmp_path / "R-18.pkl"
    pkl.write_bytes(pickle.dumps({"model": {k: v.astype(np.float32) for k, v in weights.items()}}))
    out = tmp_path / "r18_mmseg.pth"
    zc.main(["backbone", str(pkl), "--out", str(out), "--depth", "18", "--stem-channels", "16"])
    saved = torch.load(out, weights_only=True)
    assert list(saved) == ["state_dict"] and sorted(saved["state_dict"]) == sorted(backbone.state_dict())
    for ours, d2 in names.items():
        assert torch.equal(saved["state_dict"][ours], torch.from_numpy(weights[d2]).float())
    lines = capsys.readouterr().out.splitlines()
    n = len(names)
    assert lines[0] == f"{n} mapped (to {n} of ours), 1 set aside, 23 filled, 0 unexpected, 0 missing, 0 of another shape"
    assert lines[-1] == f"wrote {out}"


def test_the_backbone_command_defaults_to_r103s_depth_and_stem(tmp_path):
    # three keys of R-103 (res4.22 exists at depth 101 only; stem.conv3 has stem_channels rows):
    # they map, everything else is missing
    shapes = {"stem.conv3.weight": (128, 64, 3, 3), "res4.22.conv1.weight": (256, 1024, 1, 1),
              "res2.0.conv1.weight": (64, 128, 1, 1)}
    pkl = tmp_path / "R-103.pkl"
    pkl.write_bytes(pickle.dumps({"model": {k: np.zeros(s, np.float32) for k, s in shapes.items()}}))
    with pytest.raises(ValueError, match=r"\n3 mapped \(to 3 of ours\), 0 set aside, \d+ filled, 0 unexpected, "
                                         r"\d+ missing, 0 of another shape\n"):
        zc.main(["backbone", str(pkl), "--out", str(tmp_path / "o.pth")])


def test_the_model_command_writes_the_checkpoint_and_the_prompt(tmp_path, capsys):
    from tests.seg.test_golden import GOLDEN, GOLDEN_MODEL  # registers the golden CLIP's config

    config = override_config(tmp_path / "golden.py", SEG_CONFIGS / "zsseg-r101c_voc12aug-512x512.py", GOLDEN_MODEL)
    ckpt, out, prompt = GOLDEN / "zsseg_tiny.pth", tmp_path / "mmseg.pth", tmp_path / "prompt.pth"
    state = zc.read_zsseg(str(ckpt))
    ctx = state["clip_adapter.prompt_learner.ctx"]
    zc.main(["model", str(ckpt), "--config", str(config), "--out", str(out), "--prompt-out", str(prompt)])
    saved = torch.load(out, weights_only=True)
    assert list(saved) == ["meta", "state_dict"] and saved["meta"] == {"converted_from": str(ckpt)}
    ours = saved["state_dict"]
    assert torch.equal(ours["text_encoder.prompt.ctx"], ctx.float())
    assert torch.equal(ours["decode_head.query_embed.weight"], state[PRED + "query_embed.weight"].float())
    assert torch.equal(ours["backbone.layer4.0.conv2.weight"], state["backbone.res5.0.conv2.weight"].float())
    written = torch.load(prompt, weights_only=True)
    assert torch.equal(written["state_dict"]["ctx"], ctx.float()) and written["extra"] == {"source": str(ckpt)}
    assert written["meta"]["n_ctx"] == ctx.shape[0] and written["meta"]["width"] == ctx.shape[1]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(" 0 unexpected, 0 missing, 0 of another shape") and lines[-1] == f"wrote {out} and {prompt}"
    # without --prompt-out: no prompt file; --cfg-options reach the model (parsed: 7 is a number)
    other = tmp_path / "other.pth"
    zc.main(["model", str(ckpt), "--config", str(config), "--out", str(other)])
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {other}" and sorted(p.name for p in tmp_path.iterdir()) == [
        "golden.py", "mmseg.pth", "other.pth", "prompt.pth"]
    with pytest.raises(KeyError, match="Not=AHead"):  # the value is what follows the first '='
        zc.main(["model", str(ckpt), "--config", str(config), "--out", str(other),
                 "--cfg-options", "model.decode_head.type=Not=AHead"])
    width = state[PRED + "query_embed.weight"].shape[1]
    with pytest.raises(ValueError, match=rf"shape: {PRED}query_embed\.weight \(6, {width}\) -> ours \(7, {width}\)"):
        zc.main(["model", str(ckpt), "--config", str(config), "--out", str(other),
                 "--cfg-options", "model.decode_head.num_queries=7"])


def test_the_commands_name_a_missing_file_and_their_required_arguments(tmp_path, capsys):
    missing = tmp_path / "R-103.pkl"
    with pytest.raises(FileNotFoundError, match=rf"^checkpoint '{re.escape(str(missing))}' does not exist; download it "
                                                r"first \(see docs/segmentation\.md, 'The published models'\)$"):
        zc.main(["backbone", str(missing), "--out", str(tmp_path / "o.pth")])
    with pytest.raises(FileNotFoundError, match=r"^checkpoint '.*no\.pth' does not exist; download it first"):
        zc.main(["model", str(tmp_path / "no.pth"), "--config", str(tmp_path / "no.py"), "--out", "o.pth"])
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"model": {}}, ckpt)
    with pytest.raises(FileNotFoundError, match=rf"^--config '{re.escape(str(tmp_path / 'no.py'))}' does not exist$"):
        zc.main(["model", str(ckpt), "--config", str(tmp_path / "no.py"), "--out", "o.pth"])
    for argv in ([], ["backbone", str(ckpt)], ["model", str(ckpt), "--out", "o.pth"], ["model", str(ckpt), "--config", "c"]):
        with pytest.raises(SystemExit) as err:
            zc.main(argv)
        assert err.value.code == 2
    assert "the following arguments are required" in capsys.readouterr().err


def test_the_commands_help_says_what_each_does(capsys):
    with pytest.raises(SystemExit):
        zc.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    # the module docstring's first paragraph, then each command's line
    assert "ZSSeg / POMP-release checkpoints in pomp_seg: the key maps from detectron2's DeepLab ResNet" in text
    assert "(as ``pomp_det.detic_checkpoint`` does for Detic). positional arguments:" in text
    assert ("{backbone,model} backbone detectron2's R-103.pkl -> the mmseg ResNetV1c init_cfg checkpoint "
            "model a zsseg / POMP-release stage-(b) checkpoint -> an mmseg checkpoint ") in text
    with pytest.raises(SystemExit):
        zc.main(["model", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--config CONFIG a pomp_seg zsseg-r101c config (the checkpoint's dataset)" in text
    assert "--prompt-out PROMPT_OUT also write the checkpoint's prompt as a prompt file" in text
    assert "--cfg-options KEY=VALUE [KEY=VALUE ...]" in text
    with pytest.raises(SystemExit):
        zc.main(["backbone", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--depth DEPTH" in text and "--stem-channels STEM_CHANNELS" in text
