"""Detic's config files load as they are: every key of Detic's configs (and of the POMP
release's, tests/fixtures/detic_config_keys.json) is read as ours or refused in one line that
says why and names our key; the release's POMP configs (tests/fixtures/detic_configs/, copied
unchanged from microsoft/prompt-pretraining third_party/Detic/configs/) load as our recipe."""
import json
from pathlib import Path

import pytest

from tests.frameworks import require

require("detectron2")
from detectron2.config import CfgNode  # noqa: E402

import pomp_det  # noqa: E402
from pomp_core.cli import UserError  # noqa: E402
from pomp_det.detic_keys import UnsupportedDeticKey, flatten  # noqa: E402
from pomp_det.cli import load_cfg_checked  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
DETIC_KEYS = json.loads((FIXTURES / "detic_config_keys.json").read_text())["keys"]
RELEASE = FIXTURES / "detic_configs"
C2 = ROOT / "configs" / "det" / "centernet2"

# Detic key -> ours, the value unchanged
RENAMED = {
    "DATALOADER.DATASET_ANN": "DATALOADER.DATASET_ANN_TYPE",
    "DATALOADER.DATASET_BS": "DATALOADER.DATASET_BATCH_SIZE",
    "DATALOADER.DATASET_INPUT_SCALE": "INPUT.DATASET_INPUT_SCALE",
    "DATALOADER.DATASET_INPUT_SIZE": "INPUT.DATASET_INPUT_SIZE",
    "DATALOADER.DATASET_MAX_SIZES": "INPUT.DATASET_MAX_SIZE",
    "DATALOADER.DATASET_MIN_SIZES": "INPUT.DATASET_MIN_SIZE",
    "MODEL.ROI_BOX_HEAD.CAT_FREQ_PATH": "MODEL.POMP.CAT_FREQ_PATH",
    "MODEL.ROI_BOX_HEAD.IMAGE_LABEL_LOSS": "MODEL.POMP.IMAGE_LABEL_LOSS",
    "MODEL.ROI_BOX_HEAD.MULT_PROPOSAL_SCORE": "MODEL.POMP.MULT_PROPOSAL_SCORE",
    "MODEL.ROI_BOX_HEAD.USE_FED_LOSS": "MODEL.POMP.USE_FED_LOSS",
    "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE": "MODEL.POMP.USE_SIGMOID_CE",
    "MODEL.ROI_BOX_HEAD.WS_NUM_PROPS": "MODEL.POMP.IMAGE_LABEL_TOPK",
    "MODEL.ROI_BOX_HEAD.ZEROSHOT_WEIGHT_PATH": "MODEL.POMP.EMBEDDINGS",
    "MODEL.TEST_CLASSIFIERS": "MODEL.POMP.TEST_VOCABULARIES",
    "WITH_IMAGE_LABELS": "DATALOADER.MULTI_DATASET",
}
# (Detic key, Detic value) -> (our key, our value)
TRANSLATED = {
    ("MODEL.META_ARCHITECTURE", "CustomRCNN"): ("MODEL.META_ARCHITECTURE", "PompRCNN"),
    ("MODEL.ROI_HEADS.NAME", "DeticCascadeROIHeads"): ("MODEL.ROI_HEADS.NAME", "PompCascadeROIHeads"),
    ("MODEL.BACKBONE.NAME", "build_p67_timm_fpn_backbone"): ("MODEL.BACKBONE.NAME", "build_pomp_timm_p67_fpn_backbone"),
    ("INPUT.CUSTOM_AUG", "EfficientDetResizeCrop"): ("INPUT.DATASET_AUG", "resize_scale_crop"),
    ("INPUT.CUSTOM_AUG", "ResizeShortestEdge"): ("INPUT.DATASET_AUG", "resize_shortest_edge"),
    ("DATALOADER.SAMPLER_TRAIN", "MultiDatasetSampler"): ("DATALOADER.MULTI_DATASET", True),
    ("INPUT.TRAIN_SIZE", 640): ("INPUT.DATASET_INPUT_SIZE", [640]),
    ("INPUT.TRAIN_SIZE", 896): ("INPUT.DATASET_INPUT_SIZE", [896]),
}
# accepted with no effect: the config stays as it was
NO_EFFECT = {"MODEL.CENTERNET.NUM_CLASSES", "MODEL.CENTERNET.NOT_NORM_REG", "SOLVER.USE_CUSTOM_SOLVER",
             "MODEL.RESET_CLS_TESTS", "MODEL.TEST_NUM_CLASSES", "EVAL_PROPOSAL_AR",
             "MODEL.ROI_BOX_HEAD.USE_ZEROSHOT_CLS", "DATALOADER.USE_DIFF_BS_SIZE",
             "DATALOADER.MULTI_DATASET_GROUPING"}
# Detic key (with the value, where only some values are refused) -> the key of ours the refusal names
REFUSED = {
    ("DATALOADER.DATASET_ANN", ("box", "captiontag")): "DATALOADER.DATASET_ANN_TYPE",
    ("DATALOADER.DATASET_ANN", ("box", "caption")): "DATALOADER.DATASET_ANN_TYPE",
    ("MODEL.META_ARCHITECTURE", "DeformableDetr"): "MODEL.PROPOSAL_GENERATOR.NAME",
    ("MODEL.BACKBONE.NAME", "build_swintransformer_fpn_backbone"): "MODEL.BACKBONE.NAME",
    ("MODEL.ROI_HEADS.NAME", "CustomRes5ROIHeads"): "MODEL.ROI_HEADS.NAME",
    ("INPUT.CUSTOM_AUG", "DETR"): "MODEL.PROPOSAL_GENERATOR.NAME",
    ("MODEL.DYNAMIC_CLASSIFIER", None): "MODEL.POMP.FED_LOSS_NUM_CLASSES",
    ("MODEL.WITH_CAPTION", None): "MODEL.POMP.IMAGE_LABEL_LOSS",
    ("MODEL.SYNC_CAPTION_BATCH", None): "MODEL.POMP.IMAGE_LABEL_LOSS",
    ("MODEL.ROI_BOX_HEAD.NEG_CAP_WEIGHT", None): "MODEL.POMP.IMAGE_LABEL_LOSS",
    ("MODEL.ROI_BOX_HEAD.ADD_IMAGE_BOX", None): "MODEL.POMP.IMAGE_LABEL_LOSS",
    ("MODEL.ROI_BOX_HEAD.IGNORE_ZERO_CATS", None): "MODEL.POMP.FED_LOSS_WEIGHTS",
    ("MODEL.TIMM.PRETRAINED", None): "MODEL.TIMM.CHECKPOINT",
    ("DATALOADER.USE_TAR_DATASET", None): "DATASETS.TRAIN",
    ("MODEL.SWIN.SIZE", None): "MODEL.BACKBONE.NAME",
    ("SOLVER.CUSTOM_MULTIPLIER", None): "MODEL.PROPOSAL_GENERATOR.NAME",
    ("SOLVER.CUSTOM_MULTIPLIER_NAME", None): "MODEL.PROPOSAL_GENERATOR.NAME",
    **{(k, None): "MODEL.PROPOSAL_GENERATOR.NAME" for k in DETIC_KEYS if k.startswith("MODEL.DETR.")},
}


def _plain(v):
    """Tuples as lists, throughout (yacs keeps either)."""
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def _nested(key: str, value) -> CfgNode:
    node: dict = {}
    *parents, last = key.split(".")
    inner = node
    for p in parents:
        inner = inner.setdefault(p, {})
    inner[last] = value
    return CfgNode(node)


def _get(cfg, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def _cases():
    for key, entry in DETIC_KEYS.items():
        for value in entry["values"]:
            yield pytest.param(key, value, id=f"{key}={value}"[:90])


def _hashable(value):
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def _refusal(key, value):
    return REFUSED.get((key, _hashable(value))) or REFUSED.get((key, None))


@pytest.mark.parametrize("key,value", list(_cases()))
def test_every_detic_config_key_is_ours_or_refused_in_one_line(key, value):
    cfg = pomp_det.get_pomp_cfg()
    before = flatten(dict(cfg))
    named = _refusal(key, value)
    if named:
        with pytest.raises(UnsupportedDeticKey) as err:
            cfg.merge_from_other_cfg(_nested(key, value))
        msg = str(err.value)
        assert "\n" not in msg and key in msg and named in msg, msg
        return
    cfg.merge_from_other_cfg(_nested(key, value))  # yacs: a key we lack would raise here
    decoded = _plain(CfgNode._decode_cfg_value(value))
    if key in NO_EFFECT:
        assert flatten(dict(cfg)) == before
    elif (key, _hashable(value)) in TRANSLATED:
        ours, want = TRANSLATED[key, _hashable(value)]
        assert _plain(_get(cfg, ours)) == want
    elif key in RENAMED:
        assert _plain(_get(cfg, RENAMED[key])) == decoded
    else:  # detectron2's key, or ours under Detic's name
        assert _plain(_get(cfg, key)) == decoded


def test_the_table_covers_the_fixture_and_the_fixture_covers_the_release_configs():
    import yaml

    seen = set(DETIC_KEYS)
    assert len(seen) == 122
    for key, _ in REFUSED:
        assert key in seen
    assert set(RENAMED) | NO_EFFECT <= seen
    release = set()
    for path in RELEASE.glob("*.yaml"):
        release |= {k for k in flatten(yaml.safe_load(path.read_text())) if k != "_BASE_"}
    assert release <= seen


def _recipe(cfg) -> dict:
    out = {k: _plain(v) for k, v in flatten(dict(cfg)).items()}
    if not cfg.DATALOADER.MULTI_DATASET:  # one dataset reads entry 0 of the per-dataset lists
        out.update({k: v[0] for k, v in out.items() if k.startswith("INPUT.DATASET_") and isinstance(v, list)})
    return out


# what the release's files set differently from ours, and why it may
PATHS = {"MODEL.WEIGHTS", "MODEL.POMP.EMBEDDINGS", "OUTPUT_DIR"}  # their folders, ours
OURS = {
    "MODEL.POMP.PROMPT": "ours also names the prompt, to encode other vocabularies",
    "MODEL.TIMM.CHECKPOINT": "Detic's Base-C2 loads the backbone through MODEL.WEIGHTS (a .pkl)",
    "SOLVER.CHECKPOINT_PERIOD": "periodic checkpoints (5000) by default: requeue-safe",
    "DATALOADER.SAMPLER_TRAIN": "Detic names its multi-dataset loader by this sampler; ours by MULTI_DATASET",
}


@pytest.mark.parametrize("release,ours,train", [
    ("BoxSup-C2_Lbase_CLIP_R5021k_640b64_4x_pomp.yaml", "BoxSup-C2_Lbase_pomp_R5021k_640b64_4x.yaml", None),
    ("Detic_LbaseI_CLIP_R5021k_640b64_4x_ft4x_max-size_pomp.yaml",
     "Detic_LbaseI_pomp_R5021k_640b64_4x_ft4x_max-size.yaml", None),
    ("Detic_LI_CLIP_R5021k_640b64_4x_ft4x_max-size_pomp.yaml",
     "Detic_LbaseI_pomp_R5021k_640b64_4x_ft4x_max-size.yaml", '("lvis_v1_train", "imagenet_lvis_v1")'),
])
def test_release_pomp_configs_load_as_our_recipe(release, ours, train):
    """The release's files through the tools' loader equal our configs but for paths and the
    named deviations: the same model, data, batches, augmentation, schedule, fp16 and test size."""
    theirs = load_cfg_checked(str(RELEASE / release), [])
    mine = load_cfg_checked(str(C2 / ours), ["DATASETS.TRAIN", train] if train else [])
    a, b = _recipe(theirs), _recipe(mine)
    differ = {k for k in a if a[k] != b[k]}
    assert differ <= PATHS | set(OURS), {k: (a[k], b[k]) for k in differ - PATHS - set(OURS)}
    assert theirs.MODEL.POMP.EMBEDDINGS == "datasets/metadata/lvis_v1_clip_pomp+cname.npy"
    assert (theirs.SOLVER.CHECKPOINT_PERIOD, mine.SOLVER.CHECKPOINT_PERIOD) == (1000000000, 5000)
    # Detic's semantics, read from Detic's own files
    assert theirs.FP16 and not theirs.SOLVER.AMP.ENABLED
    assert (theirs.INPUT.MIN_SIZE_TEST, theirs.INPUT.MAX_SIZE_TEST) == (800, 1333)
    assert theirs.INPUT.DATASET_AUG == "resize_scale_crop" and theirs.SOLVER.IMS_PER_BATCH == 64
    if "BoxSup" in release:
        assert not theirs.DATALOADER.MULTI_DATASET
        assert theirs.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler"
    else:
        assert theirs.DATALOADER.MULTI_DATASET and list(theirs.DATALOADER.DATASET_BATCH_SIZE) == [8, 32]


def test_a_refused_detic_key_is_one_user_error_line_from_the_tools(tmp_path):
    yaml = tmp_path / "swin.yaml"
    yaml.write_text(f'_BASE_: "{RELEASE / "Base-C2_L_R5021k_640b64_4x.yaml"}"\nMODEL:\n  SWIN:\n    SIZE: B-22k\n')
    with pytest.raises(UserError) as err:
        load_cfg_checked(str(yaml), [])
    msg = str(err.value)
    assert "\n" not in msg and "MODEL.SWIN.SIZE" in msg and "build_pomp_timm_p67_fpn_backbone" in msg
