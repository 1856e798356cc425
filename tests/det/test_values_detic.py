"""Detic's config keys and checkpoints, by value: every fixed, refused and translated key of
pomp_det/detic_keys.py against its documented value and its one-line reason (written out here,
from Detic's defaults.py and docs/detection.md, never read from the module), and the checkpoint
converter's key map, reasons, messages and command line (pomp_det/detic_checkpoint.py).
tests/det/test_values_det_data.py holds the aliases and the first cases of both."""
import io
from pathlib import Path

import pytest
import torch

from tests.frameworks import require

require("detectron2")
from pomp_det import detic_keys  # noqa: E402
from pomp_det.detic_checkpoint import EMBEDDINGS_KEY, detic_embeddings, map_keys, our_key  # noqa: E402
from pomp_det.detic_keys import UnsupportedDeticKey, flatten, translate  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
_DETR = "Deformable DETR is not in pomp_det: use a CenterNet2 config (MODEL.PROPOSAL_GENERATOR.NAME CenterNet)"
_SWIN = "Swin backbones are not in pomp_det: use MODEL.BACKBONE.NAME build_pomp_timm_p67_fpn_backbone"
_CAPTION = "captions are not supported: image labels are (MODEL.POMP.IMAGE_LABEL_LOSS)"

pytestmark = pytest.mark.usefixtures("global_rng_kept")  # tests/conftest.py


def _refused(flat) -> str:
    with pytest.raises(UnsupportedDeticKey) as e:
        translate(flat)
    return str(e.value)


# ------------------------------------------------------------------ keys whose value pomp_det always has
# Detic key, the only value pomp_det builds, and the reason a refusal gives (naming our key)
FIXED = [
    ("MODEL.ROI_BOX_HEAD.USE_ZEROSHOT_CLS", True,
     "the classifier is always the text-embedding one (MODEL.POMP.EMBEDDINGS)"),
    ("MODEL.ROI_BOX_HEAD.NORM_WEIGHT", True,
     "the class embeddings are always unit-normalised (MODEL.POMP.TEMPERATURE scales them)"),
    ("DATALOADER.USE_DIFF_BS_SIZE", True, "the batch size is always per dataset (DATALOADER.DATASET_BATCH_SIZE)"),
    ("DATALOADER.MULTI_DATASET_GROUPING", True, "each batch always holds one dataset (DATALOADER.MULTI_DATASET)"),
    ("MODEL.CENTERNET.NOT_NORM_REG", True,
     "the box loss is always averaged over the regressed locations (MODEL.CENTERNET.REG_WEIGHT scales it)"),
    ("EVAL_PROPOSAL_AR", False, "proposal recall is not evaluated (TEST.EVAL_PERIOD evaluates boxes and masks)"),
    ("MODEL.ROI_BOX_HEAD.ADD_IMAGE_BOX", False,
     "the image-box and caption losses are not implemented (MODEL.POMP.IMAGE_LABEL_LOSS)"),
    ("MODEL.DYNAMIC_CLASSIFIER", False,
     "the 21K-class sampled classifier is not implemented (MODEL.POMP.FED_LOSS_NUM_CLASSES)"),
    ("MODEL.WITH_CAPTION", False, "the caption loss is not implemented (MODEL.POMP.IMAGE_LABEL_LOSS)"),
]


@pytest.mark.parametrize("key, value, why", FIXED)
def test_fixed_key_is_dropped_at_its_value_and_refused_with_the_reason_otherwise(key, value, why):
    assert translate({"SOLVER.BASE_LR": 0.02, key: value}) == {"SOLVER.BASE_LR": 0.02}
    assert _refused({key: not value}) == (
        f"Detic's {key} {not value} is not supported by pomp_det ({value} only): {why}")


def test_the_fixed_no_effect_and_refused_keys_are_these_only():
    # a key added to either table by mistake would silently swallow a setting
    assert set(detic_keys.FIXED) == {k for k, _, _ in FIXED}
    assert set(detic_keys.NO_EFFECT) == {"MODEL.CENTERNET.NUM_CLASSES", "SOLVER.USE_CUSTOM_SOLVER",
                                         "MODEL.RESET_CLS_TESTS", "MODEL.TEST_NUM_CLASSES"}
    # a key refused by mistake would make a Detic config unloadable
    assert set(detic_keys.UNSUPPORTED) == {
        "MODEL.DETR.", "SOLVER.CUSTOM_MULTIPLIER", "SOLVER.CUSTOM_MULTIPLIER_NAME", "MODEL.SWIN.",
        "MODEL.SYNC_CAPTION_BATCH", "MODEL.ROI_BOX_HEAD.NEG_CAP_WEIGHT", "MODEL.ROI_BOX_HEAD.IGNORE_ZERO_CATS",
        "MODEL.TIMM.PRETRAINED", "DATALOADER.USE_TAR_DATASET"}
    assert set(detic_keys.UNSUPPORTED_VALUES) == {(k, v) for k, v, _ in REFUSED_VALUES}


def test_a_fixed_key_is_dropped_and_not_passed_on_whatever_the_other_keys():
    got = translate({"MODEL.ROI_BOX_HEAD.USE_ZEROSHOT_CLS": True, "MODEL.ROI_BOX_HEAD.NORM_TEMP": 50.0,
                     "MODEL.CENTERNET.NUM_CLASSES": 1203, "MODEL.CENTERNET.NOT_NORM_REG": True})
    assert got == {"MODEL.POMP.TEMPERATURE": 50.0}


# ------------------------------------------------------------------ refused keys and values
# a Detic key (by name or by prefix) and the full one-line refusal
REFUSED_KEYS = [
    ("MODEL.DETR.NUM_OBJECT_QUERIES", 300, _DETR),
    ("MODEL.DETR.WITH_BOX_REFINE", True, _DETR),
    ("SOLVER.CUSTOM_MULTIPLIER", 0.1, _DETR),
    ("SOLVER.CUSTOM_MULTIPLIER_NAME", ["reference_points"], _DETR),
    ("MODEL.SWIN.SIZE", "B-22k", _SWIN),
    ("MODEL.SWIN.OUT_FEATURES", (1, 2, 3), _SWIN),
    ("MODEL.SYNC_CAPTION_BATCH", True, _CAPTION),
    ("MODEL.ROI_BOX_HEAD.NEG_CAP_WEIGHT", 1.0, _CAPTION),
    ("MODEL.ROI_BOX_HEAD.IGNORE_ZERO_CATS", True, "zero-count classes are not masked out of the loss: set their "
                                                  "weight with MODEL.POMP.FED_LOSS_WEIGHTS train_boxes"),
    ("MODEL.TIMM.PRETRAINED", True,
     "nothing is downloaded: give a local checkpoint of the backbone as MODEL.TIMM.CHECKPOINT"),
    ("DATALOADER.USE_TAR_DATASET", True, "ImageNet-21K tar shards are not read: register the images as an "
                                         "image-label dataset (pomp_det.data.image_labels) and list it in "
                                         "DATASETS.TRAIN"),
]


@pytest.mark.parametrize("key, value, why", REFUSED_KEYS)
def test_refused_key_says_why_in_full(key, value, why):
    assert _refused({"SOLVER.BASE_LR": 0.02, key: value}) == f"Detic's {key} is not supported by pomp_det: {why}"


@pytest.mark.parametrize("key", ["SOLVER.CUSTOM_MULTIPLIER_X", "MODEL.SWINV2.SIZE", "MODEL.DETR", "XMODEL.DETR.A",
                                 "MODEL.TIMM.PRETRAINED_X", "MODEL.ROI_BOX_HEAD.NEG_CAP"])
def test_keys_that_only_look_like_refused_ones_pass(key):
    # a prefix refuses the keys under it ("MODEL.DETR."), a plain name only itself
    assert translate({key: 1}) == {key: 1}


# (key, value) refused for that value only, with the full refusal
REFUSED_VALUES = [
    ("MODEL.META_ARCHITECTURE", "DeformableDetr", _DETR),
    ("MODEL.BACKBONE.NAME", "build_swintransformer_fpn_backbone", _SWIN),
    ("MODEL.ROI_HEADS.NAME", "CustomRes5ROIHeads",
     "C4 heads are not in pomp_det: use an FPN or cascade config (MODEL.ROI_HEADS.NAME PompROIHeads / "
     "PompCascadeROIHeads)"),
    ("INPUT.CUSTOM_AUG", "DETR", _DETR),
]


@pytest.mark.parametrize("key, value, why", REFUSED_VALUES)
def test_refused_value_says_why_in_full_and_only_at_its_key(key, value, why):
    assert _refused({key: value}) == f"Detic's {key} {value} is not supported by pomp_det: {why}"
    other = "MODEL.PROPOSAL_GENERATOR.NAME"  # the same value under another key is not Detic's class
    assert translate({other: value}) == {other: value}


def test_custom_aug_maps_detics_three_names_and_refuses_others_in_full():
    assert translate({"INPUT.CUSTOM_AUG": "EfficientDetResizeCrop"}) == {"INPUT.DATASET_AUG": "resize_scale_crop"}
    assert translate({"INPUT.CUSTOM_AUG": "ResizeShortestEdge"}) == {"INPUT.DATASET_AUG": "resize_shortest_edge"}
    assert translate({"INPUT.CUSTOM_AUG": ""}) == {"INPUT.DATASET_AUG": "resize_shortest_edge"}
    assert set(detic_keys.AUGMENTATIONS) == {"", "ResizeShortestEdge", "EfficientDetResizeCrop"}
    for name in ("efficientdetresizecrop", "LSJ"):  # the names are case-sensitive, as Detic's build_custom_augmentation
        assert _refused({"INPUT.CUSTOM_AUG": name}) == (
            f"Detic's INPUT.CUSTOM_AUG '{name}' is not one of ['', 'EfficientDetResizeCrop', 'ResizeShortestEdge']: "
            "INPUT.DATASET_AUG takes resize_scale_crop or resize_shortest_edge")
    # the name is only Detic's at INPUT.CUSTOM_AUG
    assert translate({"INPUT.DATASET_AUG": "resize_scale_crop"}) == {"INPUT.DATASET_AUG": "resize_scale_crop"}


@pytest.mark.parametrize("anns", [["box", "caption"], ("image", "captiontag"), ["box", "image", "caption"]])
def test_dataset_ann_with_captions_is_refused_in_full(anns):
    assert _refused({"DATALOADER.DATASET_ANN": anns}) == (
        f"Detic's DATALOADER.DATASET_ANN {list(anns)}: {_CAPTION}; DATALOADER.DATASET_ANN_TYPE takes box or image")


def test_dataset_ann_of_boxes_and_image_labels_only_passes_in_any_order():
    for anns in (["box"], ["image"], ["image", "box", "box"]):
        assert translate({"DATALOADER.DATASET_ANN": anns}) == {"DATALOADER.DATASET_ANN_TYPE": anns}


def test_the_first_refused_key_is_reported():
    assert _refused({"SOLVER.BASE_LR": 0.02, "MODEL.SWIN.SIZE": "T", "MODEL.DETR.X": 1}).startswith(
        "Detic's MODEL.SWIN.SIZE is not supported")


# ------------------------------------------------------------------ translated values
@pytest.mark.parametrize("key, detic, ours", [
    ("MODEL.META_ARCHITECTURE", "CustomRCNN", "PompRCNN"),
    ("MODEL.ROI_HEADS.NAME", "DeticCascadeROIHeads", "PompCascadeROIHeads"),
    ("MODEL.BACKBONE.NAME", "build_p67_timm_fpn_backbone", "build_pomp_timm_p67_fpn_backbone"),
    ("MODEL.META_ARCHITECTURE", "GeneralizedRCNN", "GeneralizedRCNN"),  # detectron2's own names go across
    ("MODEL.ROI_HEADS.NAME", "CustomRCNN", "CustomRCNN"),  # a class name is translated at its own key only
    ("MODEL.BACKBONE.NAME", "DeticCascadeROIHeads", "DeticCascadeROIHeads"),
    ("MODEL.META_ARCHITECTURE", "customrcnn", "customrcnn"),
])
def test_detic_class_names_at_their_keys(key, detic, ours):
    assert translate({key: detic}) == {key: ours}


@pytest.mark.parametrize("value, use_bias", [(-20.0, True), (-0.01, True), (-4, True), (0.0, False), (0, False),
                                             (0.5, False), (1.0, False)])
def test_use_bias_below_zero_is_a_learned_bias_starting_there(value, use_bias):
    # Detic's ZeroShotClassifier: `if use_bias < 0: cls_bias = nn.Parameter(torch.ones(1) * use_bias)`
    got = translate({"MODEL.ROI_BOX_HEAD.USE_BIAS": value})
    assert got == {"MODEL.POMP.USE_BIAS": use_bias, "MODEL.POMP.BIAS_INIT": float(value)}
    assert type(got["MODEL.POMP.BIAS_INIT"]) is float


def test_sampler_train_names_the_multi_dataset_loader_only_for_detics_sampler():
    assert translate({"DATALOADER.SAMPLER_TRAIN": "MultiDatasetSampler"}) == {"DATALOADER.MULTI_DATASET": True}
    for other in ("TrainingSampler", "RepeatFactorTrainingSampler", "multidatasetsampler"):
        assert translate({"DATALOADER.SAMPLER_TRAIN": other}) == {"DATALOADER.SAMPLER_TRAIN": other}


@pytest.mark.parametrize("flat, want", [
    ({"INPUT.TRAIN_SIZE": 896, "DATALOADER.DATASET_INPUT_SCALE": [[0.5, 1.5]]},
     {"INPUT.DATASET_INPUT_SIZE": [896], "INPUT.DATASET_INPUT_SCALE": [[0.5, 1.5]]}),
    ({"DATALOADER.DATASET_INPUT_SCALE": [[0.5, 1.5]], "INPUT.TRAIN_SIZE": 896},
     {"INPUT.DATASET_INPUT_SIZE": [896], "INPUT.DATASET_INPUT_SCALE": [[0.5, 1.5]]}),
    ({"INPUT.SCALE_RANGE": [0.1, 2.0], "DATALOADER.DATASET_INPUT_SIZE": [640, 320]},
     {"INPUT.DATASET_INPUT_SIZE": [640, 320], "INPUT.DATASET_INPUT_SCALE": [[0.1, 2.0]]}),
    ({"INPUT.TRAIN_SIZE": 640, "DATALOADER.DATASET_INPUT_SIZE": [896, 448]}, {"INPUT.DATASET_INPUT_SIZE": [896, 448]}),
    ({"INPUT.SCALE_RANGE": (0.1, 2.0), "DATALOADER.DATASET_INPUT_SCALE": [[0.5, 1.5], [0.2, 1.0]]},
     {"INPUT.DATASET_INPUT_SCALE": [[0.5, 1.5], [0.2, 1.0]]}),
])
def test_single_dataset_size_and_scale_each_yield_to_their_own_per_dataset_list_in_any_order(flat, want):
    # TRAIN_SIZE yields to DATASET_INPUT_SIZE, SCALE_RANGE to DATASET_INPUT_SCALE: not to each other
    assert translate(flat) == want


def test_translate_keeps_the_keys_and_values_it_does_not_know():
    flat = {"SOLVER.MAX_ITER": 90000, "INPUT.MIN_SIZE_TRAIN": (640, 672), "MODEL.POMP.PROMPT": "a b", "SEED": -1}
    assert translate(flat) == flat
    assert translate({}) == {}


def test_flatten_joins_nested_keys_with_dots_at_any_depth():
    assert flatten({"MODEL": {"ROI_HEADS": {"NAME": "x", "NUM_CLASSES": 3}, "MASK_ON": False}, "SEED": 1}) == {
        "MODEL.ROI_HEADS.NAME": "x", "MODEL.ROI_HEADS.NUM_CLASSES": 3, "MODEL.MASK_ON": False, "SEED": 1}
    assert flatten({"A": {"B": [{"C": 1}]}}, "P.") == {"P.A.B": [{"C": 1}]}  # lists are values, not nodes


# ------------------------------------------------------------------ the checkpoint key map
@pytest.mark.parametrize("detic, ours", [
    # set aside, whatever the cascade stage (one digit or more)
    ("roi_heads.box_predictor.2.cls_score.zs_weight", None),
    ("roi_heads.box_predictor.12.freq_weight", None),
    ("roi_heads.box_predictor.12.cls_score.zs_weight", None),
    # only the whole key is set aside: a longer or another one keeps its name
    ("backbone.bottom_up.base.fc.weight.extra", "backbone.bottom_up.base.fc.weight.extra"),
    ("model.backbone.bottom_up.base.fc.bias", "model.backbone.bottom_up.base.fc.bias"),
    ("backbone.bottom_up.base.fc.running_mean", "backbone.bottom_up.base.fc.running_mean"),
    ("roi_heads.box_predictor.0.freq_weights", "roi_heads.box_predictor.0.freq_weights"),
    ("roi_heads.box_predictor.0.cls_score.zs_weight_t", "roi_heads.box_predictor.0.cls_score.zs_weight_t"),
    ("roi_heads.box_predictor.freq_weight", "roi_heads.box_predictor.freq_weight"),
    # the patterns' dots are dots, not any character
    ("roi_heads.box_predictor.0.cls_scoreXzs_weight", "roi_heads.box_predictor.0.cls_scoreXzs_weight"),
    ("backbone.bottom_up.base_fc.weight", "backbone.bottom_up.base_fc.weight"),
    ("roi_heads.box_predictor_1.freq_weight", "roi_heads.box_predictor_1.freq_weight"),
    # the cls_bias rename: at the end of a cascade stage's cls_score only
    ("roi_heads.box_predictor.12.cls_score.cls_bias", "roi_heads.box_predictor.12.cls_score.bias"),
    ("roi_heads.box_predictor.cls_score.cls_bias", "roi_heads.box_predictor.cls_score.cls_bias"),
    ("roi_heads.box_predictor.0.cls_score.cls_bias_init", "roi_heads.box_predictor.0.cls_score.cls_bias_init"),
    ("roi_heads.box_predictor.0.bbox_pred.cls_bias", "roi_heads.box_predictor.0.bbox_pred.cls_bias"),
    ("roi_heads.box_predictor.0.cls_score.bias", "roi_heads.box_predictor.0.cls_score.bias"),
    ("roi_heads.box_predictor.0.cls_score.linear.bias", "roi_heads.box_predictor.0.cls_score.linear.bias"),
])
def test_our_key_of_near_misses(detic, ours):
    assert our_key(detic) == ours


def test_the_embeddings_key_is_the_first_stages_zs_weight():
    assert EMBEDDINGS_KEY == "roi_heads.box_predictor.0.cls_score.zs_weight"


def test_each_set_aside_key_gets_its_own_reason():
    keys = {"backbone.bottom_up.base.fc.bias": (10,), "roi_heads.box_predictor.1.cls_score.zs_weight": (4, 6),
            "roi_heads.box_predictor.2.freq_weight": (5,), "roi_heads.box_predictor.0.cls_score.cls_bias": (1,)}
    r = map_keys(keys, {"roi_heads.box_predictor.0.cls_score.bias": (1,)})
    assert r.set_aside == {
        "backbone.bottom_up.base.fc.bias": "the pre-trained backbone's ImageNet-21K classifier; the detector does "
                                           "not use it",
        "roi_heads.box_predictor.1.cls_score.zs_weight": "Detic's class embeddings (D x C+1); pomp_det takes the "
                                                         "vocabulary from the config: see embeddings",
        "roi_heads.box_predictor.2.freq_weight": "federated-loss class weights; pomp_det computes them from the config"}
    assert r.mapped == {"roi_heads.box_predictor.0.cls_score.cls_bias": "roi_heads.box_predictor.0.cls_score.bias"}
    assert r.ok and (r.unexpected, r.missing, r.wrong_shape) == ([], [], [])


def test_map_keys_compares_whole_shapes_and_sorts_the_missing_keys():
    detic = {"w": [3, 4], "v": (4, 3), "u": (2, 1, 1), "t": ()}
    ours = {"z": (1,), "w": (3, 4), "v": (3, 4), "u": (2,), "t": [], "a": (1,)}
    r = map_keys(detic, ours)
    assert r.mapped == {"w": "w", "t": "t"}  # shapes as lists or tuples alike, a scalar too
    assert r.wrong_shape == [("v", (4, 3), (3, 4)), ("u", (2, 1, 1), (2,))]  # in the checkpoint's order
    assert r.missing == ["a", "z"] and r.unexpected == [] and not r.ok


def test_detic_embeddings_of_a_non_square_zs_weight_in_full():
    zs = torch.tensor([[1.0, 2.0, 3.0, -9.0], [4.0, 5.0, 6.0, -9.0]], dtype=torch.float64)  # D = 2, C + 1 = 4
    emb = detic_embeddings({EMBEDDINGS_KEY: zs, "roi_heads.box_predictor.1.cls_score.zs_weight": zs * 0})
    assert emb.dtype == torch.float32 and emb.is_contiguous()
    assert emb.tolist() == [[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]  # [C, D]: the background column (last) dropped
    with pytest.raises(KeyError) as e:
        detic_embeddings({"roi_heads.box_predictor.1.cls_score.zs_weight": zs})  # the first stage's only
    assert e.value.args[0] == ("roi_heads.box_predictor.0.cls_score.zs_weight is not in the checkpoint: is it a "
                               "Detic zero-shot (CLIP) model?")


# ------------------------------------------------------------------ reading and loading checkpoints
def test_read_checkpoint_messages_in_full(tmp_path):
    from pomp_det.detic_checkpoint import read_checkpoint

    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError) as e:
        read_checkpoint(str(path))
    assert str(e.value) == f"{path}: no state dict found (expected {{'model': {{name: tensor}}}})"
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError) as e:
        read_checkpoint(str(junk))
    assert str(e.value) == f"{junk}: not a plain tensor checkpoint ({e.value.__cause__})"
    assert e.value.__cause__ is not None


def test_read_checkpoint_maps_another_devices_tensors_to_the_cpu(tmp_path):
    """Detic's released checkpoints were saved from GPUs. Here a tensor is tagged with another
    device: torch's legacy format, its one location tag rewritten from cpu to mps (same length)."""
    from pomp_det.detic_checkpoint import read_checkpoint

    buf = io.BytesIO()
    torch.save({"model": {"a": torch.arange(3.0)}}, buf, _use_new_zipfile_serialization=False)
    tag = b"X\x03\x00\x00\x00cpu"  # pickle's BINUNICODE "cpu"
    assert buf.getvalue().count(tag) == 1
    (tmp_path / "gpu.pth").write_bytes(buf.getvalue().replace(tag, b"X\x03\x00\x00\x00mps"))
    got = read_checkpoint(str(tmp_path / "gpu.pth"))
    assert got["a"].device == torch.device("cpu") and got["a"].tolist() == [0.0, 1.0, 2.0]


class _NotATensor:
    pass


def test_read_checkpoint_refuses_pickled_objects_even_where_the_environment_allows_them(tmp_path, monkeypatch):
    """weights_only is asked for explicitly: torch's default follows TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD,
    under which an unpickled object could run code."""
    from pomp_det.detic_checkpoint import read_checkpoint

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    torch.save({"model": {"a": torch.zeros(2)}, "extra": _NotATensor()}, tmp_path / "obj.pth")
    with pytest.raises(ValueError, match="not a plain tensor checkpoint"):
        read_checkpoint(str(tmp_path / "obj.pth"))


def test_read_checkpoint_takes_the_model_entry_or_the_whole_dict_as_tensors(tmp_path):
    from pomp_det.detic_checkpoint import read_checkpoint

    torch.save({"model": {"a": torch.ones(2), "n": 3}, "iteration": 9, "trainer": {"x": 1}}, tmp_path / "d2.pth")
    got = read_checkpoint(str(tmp_path / "d2.pth"))
    assert sorted(got) == ["a", "n"] and torch.equal(got["a"], torch.ones(2)) and torch.equal(got["n"], torch.tensor(3))
    torch.save({"b": torch.zeros(1, 2), "m": 0.5}, tmp_path / "bare.pth")
    got = read_checkpoint(str(tmp_path / "bare.pth"))
    assert sorted(got) == ["b", "m"] and torch.equal(got["m"], torch.tensor(0.5))


class _Stage(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_score = torch.nn.Module()
        self.cls_score.bias = torch.nn.Parameter(torch.zeros(1))


class _Heads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.box_predictor = torch.nn.ModuleList([_Stage(), _Stage()])
        self.vocabulary = None

    def set_class_embeddings(self, emb):
        self.vocabulary = emb


class _Detector(torch.nn.Module):
    """Two cascade stages' biases and a linear layer: the keys a converted checkpoint fills."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.roi_heads = _Heads()


def test_load_detic_checkpoint_renames_each_stage_and_takes_the_vocabulary(tmp_path):
    from pomp_det.detic_checkpoint import load_detic_checkpoint

    zs = torch.tensor([[0.5, -1.0, 2.0], [1.5, 3.0, -2.0]])  # D = 2, two classes + background
    state = {"linear.weight": torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), "linear.bias": torch.tensor([7.0, 8.0]),
             "roi_heads.box_predictor.0.cls_score.cls_bias": torch.tensor([-4.6]),
             "roi_heads.box_predictor.1.cls_score.cls_bias": torch.tensor([-2.3]),
             EMBEDDINGS_KEY: zs, "roi_heads.box_predictor.1.cls_score.zs_weight": zs + 1,
             "roi_heads.box_predictor.0.freq_weight": torch.ones(2)}
    torch.save({"model": state}, tmp_path / "detic.pth")
    model = _Detector()
    report = load_detic_checkpoint(model, str(tmp_path / "detic.pth"))
    assert report.summary() == "4 mapped, 3 set aside, 0 unexpected, 0 missing, 0 of another shape"
    assert model.linear.weight.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]] and model.linear.bias.tolist() == [7, 8]
    assert torch.cat([s.cls_score.bias.detach() for s in model.roi_heads.box_predictor]).tolist() == pytest.approx(
        [-4.6, -2.3])
    assert model.roi_heads.vocabulary.tolist() == [[0.5, 1.5], [-1.0, 3.0]]  # stage 0's, [C, D]


# ------------------------------------------------------------------ the converter's command line
class _Stop(Exception):
    pass


def test_detic_checkpoint_main_builds_the_default_config_at_the_checkpoints_sizes(tmp_path, monkeypatch):
    """The default config is the Detic recipe's; the overrides size the classifier from the
    checkpoint's zs_weight (C x D, not D x C), keep the build offline and leave the user's last."""
    import pomp_det
    from pomp_det.detic_checkpoint import main

    calls = []

    def recording(config_file, opts=None, zoo_config=None):
        calls.append((config_file, opts))
        raise _Stop  # the arguments are all this test needs

    monkeypatch.setattr(pomp_det, "load_pomp_cfg", recording)
    torch.save({"model": {EMBEDDINGS_KEY: torch.zeros(6, 4)}}, tmp_path / "detic.pth")  # D = 6, C = 3
    with pytest.raises(_Stop):
        main([str(tmp_path / "detic.pth"), "--out", str(tmp_path / "x.pth"), "SOLVER.BASE_LR", "0.5"])
    config = "configs/det/centernet2/Detic_LbaseI_pomp_R5021k_640b64_4x_ft4x_max-size.yaml"
    assert calls == [(config, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.TIMM.CHECKPOINT", "",
                               "MODEL.POMP.RANDOM_EMBEDDINGS_SEED", "0", "MODEL.POMP.USE_FED_LOSS", "False",
                               "MODEL.POMP.EMBED_DIM", "6", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
                               "SOLVER.BASE_LR", "0.5"])]
    assert (ROOT / config).is_file()
    assert not (tmp_path / "x.pth").exists()


def test_detic_checkpoint_main_help_says_what_each_argument_is(capsys):
    from pomp_det.detic_checkpoint import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = f" {' '.join(capsys.readouterr().out.split())} "  # argparse wraps to the terminal's width
    for part in ("Released Detic checkpoints in pomp_det: the key map from Detic's CenterNet2 model",
                 "with a report of what was mapped, set aside and left over.",
                 "checkpoint a released Detic .pth (CenterNet2, R50 / timm)",
                 "opts config overrides KEY VALUE ...",
                 "--out OUT detectron2 checkpoint for MODEL.WEIGHTS",
                 "--embeddings-out EMBEDDINGS_OUT write Detic's class embeddings [C, D] here (.npy)",
                 "--config-file CONFIG_FILE"):
        assert f" {part} " in text, part  # whole words: a prefix or suffix glued on fails
    assert "python -m pomp_det.detic_checkpoint" not in text  # the description is the first paragraph only
