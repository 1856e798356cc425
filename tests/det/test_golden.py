"""pomp_det against Detic's own code: the golden fixture ``tests/fixtures/golden/detic/`` (written
by ``tests/golden/make_detic_golden.py`` from Detic's and CenterNet2's code, Detic's
``Detic_LbaseI_CLIP_R5021k_640b64_4x_ft4x_max-size`` at reduced widths with random weights) is
converted with ``pomp_det.detic_checkpoint``, loaded into the model of our config at the same
widths, and must give Detic's proposals, per-stage probabilities, detections, masks and training
losses; perturbing one weight or one recipe setting must break that agreement."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "golden" / "detic"
CONFIG = str(ROOT / "configs/det/centernet2/Detic_LbaseI_pomp_R5021k_640b64_4x_ft4x_max-size.yaml")
BOXSUP_CONFIG = str(ROOT / "configs/det/centernet2/BoxSup-C2_Lbase_pomp_R5021k_640b64_4x.yaml")
TIMM_NAME = "resnet_detic_golden"
# max abs difference allowed, by output kind: float32 through a deep random network drifts with the
# CPU's vector kernels (docs/detection.md, "Golden tests"), most in the cascade's probabilities,
# which the classifier's temperature of 50 amplifies
TOL = {"boxes": 5e-3, "scores": 1e-5, "probs": 1e-4, "masks": 1e-5, "classes": 0, "input_size": 0, "loss": 1e-5}


def _generator():
    spec = importlib.util.spec_from_file_location("make_detic_golden", ROOT / "tests/golden/make_detic_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _generator()
META = json.loads((FIXTURE / "meta.json").read_text())
GOLDEN = torch.load(FIXTURE / "detic_outputs.pt", weights_only=True)


def _register_golden_timm_arch() -> None:
    """The fixture's reduced ResNet (Bottleneck blocks: resnet50's key names) as a timm model
    name, so that MODEL.TIMM.BASE_NAME builds it."""
    import timm
    from timm.models import register_model
    from timm.models.resnet import Bottleneck, ResNet

    if TIMM_NAME in timm.list_models(TIMM_NAME):
        return
    arch = META["arch"]

    def resnet_detic_golden(pretrained=False, **kwargs):
        for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(k, None)
        return ResNet(block=Bottleneck, layers=arch["layers"], channels=arch["channels"], **kwargs)

    resnet_detic_golden.__module__ = __name__
    register_model(resnet_detic_golden)


_register_golden_timm_arch()

# our recipe at the fixture's widths; test size and precision set to Detic's explicitly (Detic's
# C2 configs test with detectron2's default mapper, 800 / 1333, and evaluate in float32)
OPTS = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.TIMM.CHECKPOINT", "", "MODEL.TIMM.BASE_NAME", TIMM_NAME,
        "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "32", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
        "MODEL.POMP.EMBED_DIM", str(META["embed_dim"]), "MODEL.ROI_HEADS.NUM_CLASSES", str(META["num_classes"]),
        "MODEL.POMP.PROMPT", "", "MODEL.POMP.CAT_FREQ_PATH", str(FIXTURE / "cat_info.json"),
        "INPUT.MIN_SIZE_TEST", "800", "INPUT.MAX_SIZE_TEST", "1333", "SOLVER.AMP.ENABLED", "False"]
# Detic's loss names -> ours
LOSS_KEYS = [(r"^image_loss_stage(\d)$", r"loss_image_label_stage\1")]


def _kind(key: str) -> str:
    if key.startswith("loss"):
        return "loss"
    name = key.split(".")[-1]
    for kind in ("boxes", "scores", "probs", "masks", "classes", "input_size"):
        if kind in name:
            return kind
    raise KeyError(key)


def differences(ours: Dict[str, torch.Tensor], golden: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Max abs difference per key of ``golden`` (inf where a key is absent or shapes differ)."""
    out = {}
    for key, ref in golden.items():
        mine = ours.get(key)
        if mine is None or tuple(mine.shape) != tuple(ref.shape):
            out[key] = float("inf")
        elif ref.numel():
            out[key] = float((mine.double() - ref.double()).abs().max())
        else:
            out[key] = 0.0
    return out


def mismatches(ours: Dict[str, torch.Tensor], golden: Dict[str, torch.Tensor]) -> List[str]:
    def tol(key):  # losses: relative (sums over many terms, float32)
        return TOL[_kind(key)] * (max(1.0, abs(float(golden[key]))) if _kind(key) == "loss" else 1.0)
    return [f"{k}: {d:.3g}" for k, d in differences(ours, golden).items() if not d <= tol(k)]


def golden_losses(kind: str) -> Dict[str, torch.Tensor]:
    out = {}
    for key, value in GOLDEN["losses"][kind].items():
        for pattern, repl in LOSS_KEYS:
            key = re.sub(pattern, repl, key)
        out[f"loss.{key}"] = torch.tensor(value)
    return out


def golden_outputs(prefix: str = "") -> Dict[str, torch.Tensor]:
    return {k: v for k, v in GOLDEN["outputs"].items() if k.startswith(prefix) and
            (prefix or not k.startswith("custom."))}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The generator ran Detic's code on one thread: matmuls split over two threads sum in
    another order, ~1e-5 off in the later cascade stages, at the tolerance itself."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Dict[str, Path]:
    """``python -m pomp_det.detic_checkpoint`` on the fixture (in this process, where the golden
    timm architecture is registered)."""
    from pomp_det import detic_checkpoint

    out = tmp_path_factory.mktemp("golden")
    args = [str(FIXTURE / "detic_model.pth"), "--out", str(out / "model.pth"), "--embeddings-out",
            str(out / "embeddings.npy"), "--config-file", CONFIG, *OPTS]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        detic_checkpoint.main(args)
    return {"model": out / "model.pth", "embeddings": out / "embeddings.npy", "printed": printed.getvalue()}


def build_ours(converted, extra=(), config=CONFIG):
    from detectron2.modeling import build_model

    from pomp_det import load_pomp_cfg

    cfg = load_pomp_cfg(config, [*OPTS, "MODEL.POMP.EMBEDDINGS", str(converted["embeddings"]), *extra])
    model = build_model(cfg)
    model.load_state_dict(torch.load(converted["model"], weights_only=True)["model"], strict=True)
    return cfg, model.eval()


def our_outputs(cfg, model) -> Dict[str, torch.Tensor]:
    out = gen.run_inference(model, gen.test_inputs(cfg, FIXTURE))
    for key in [k for k in out if k.endswith("proposal_scores")]:
        out[key] = out[key].sigmoid()  # ours carry logit(CenterNet2's score) as objectness_logits
    return out


def replay_detics(kind: str):
    """The proposals Detic's ROI heads trained on for the batch ``kind``, in place of ours (ours
    carry logit(CenterNet2's score) as objectness_logits)."""
    from detectron2.structures import Boxes, Instances

    def replay(ours):
        out = []
        for mine, theirs in zip(ours, GOLDEN["train_proposals"][kind]):
            inst = Instances(mine.image_size)
            inst.proposal_boxes = Boxes(theirs["boxes"].clone())
            inst.objectness_logits = torch.logit(theirs["objectness_logits"])
            out.append(inst)
        return out
    return replay


def our_losses(model, kind: str, replay: bool = True) -> Dict[str, torch.Tensor]:
    """The losses of the fixture's batch ``kind``; with ``replay``, the ROI heads train on Detic's
    recorded proposals (our CenterNet's losses are still ours)."""
    spec = json.loads((FIXTURE / "batches.json").read_text())[kind.replace("boxsup_", "")]
    losses, _ = gen.run_losses(model, gen.load_batch(spec, FIXTURE), META["loss_seeds"][kind.replace("boxsup_", "")],
                               replay_detics(kind) if replay else None)
    return {f"loss.{k}": torch.tensor(v) for k, v in losses.items()}


def test_fixture_is_small_and_float32():
    size = sum(f.stat().st_size for f in FIXTURE.iterdir())
    assert size < 4e6, f"the golden fixture is {size / 1e6:.1f} MB"
    assert np.load(FIXTURE / "class_embeddings.npy").dtype == np.float32
    assert META["test_size"] == [800, 1333]


def test_converter_writes_float32_embeddings(converted):
    state = torch.load(FIXTURE / "detic_model.pth", weights_only=True)["model"]
    emb = np.load(converted["embeddings"])
    assert emb.dtype == np.float32
    zs = state["roi_heads.box_predictor.0.cls_score.zs_weight"]  # D x (C + 1), columns normalised
    assert emb.shape == (META["num_classes"], META["embed_dim"])
    np.testing.assert_array_equal(emb, zs[:, :-1].t().numpy())
    assert "0 unexpected, 0 missing, 0 of another shape" in converted["printed"]


def test_outputs_match_detic(converted):
    cfg, model = build_ours(converted)
    bad = mismatches(our_outputs(cfg, model), golden_outputs())
    assert not bad, bad


@pytest.mark.parametrize("kind", ["box", "image"])
def test_losses_match_detic(converted, kind):
    _, model = build_ours(converted)
    ours, golden = our_losses(model, kind), golden_losses(kind)
    assert sorted(ours) == sorted(golden)
    bad = mismatches(ours, golden)
    assert not bad, bad


def test_training_proposals_match_detics(converted):
    """Our CenterNet's training proposals (PRE/POST_NMS_TOPK_TRAIN, NMS_TH_TRAIN) against the ones
    Detic's ROI heads trained on: most of the same boxes and scores, in nearly the same number. Not
    all: an NMS decision within float32 rounding of its threshold may go either way on another CPU,
    and one box kept or suppressed changes which of its near-duplicates survive (seen: 7% of one
    image's proposals); a wrong top-k, threshold or score changes most of them."""
    _, model = build_ours(converted)
    spec = json.loads((FIXTURE / "batches.json").read_text())["box"]
    _, ours = gen.run_losses(model, gen.load_batch(spec, FIXTURE), META["loss_seeds"]["box"])
    for mine, theirs in zip(ours, GOLDEN["train_proposals"]["box"]):
        n = len(theirs["boxes"])
        assert abs(len(mine["boxes"]) - n) <= 0.01 * n, (len(mine["boxes"]), n)
        close = (mine["boxes"][None] - theirs["boxes"][:, None]).abs().amax(-1) <= TOL["boxes"]
        close &= (mine["objectness_logits"].sigmoid()[None] - theirs["objectness_logits"][:, None]).abs() <= 1e-5
        assert close.any(1).float().mean() >= 0.8


def test_boxsup_stage_matches_detic(converted):
    """The first stage's config (Detic's BoxSup-C2_Lbase: box labels only) on the same weights:
    Detic's detections and box-batch losses, under Detic's loss names only (the stage trains
    through detectron2's loader, without the image-label heads' keys)."""
    cfg, model = build_ours(converted, config=BOXSUP_CONFIG)
    bad = mismatches(our_outputs(cfg, model), golden_outputs())
    ours, golden = our_losses(model, "boxsup_box"), golden_losses("boxsup_box")
    assert sorted(ours) == sorted(golden)
    bad += mismatches(ours, golden)
    assert not bad, bad


def _perturb_weight(model):
    with torch.no_grad():
        model.backbone.bottom_up.base.layer3[0].conv2.weight[0, 0, 1, 1] += 0.05


def _per_stage_objectness(model):
    for predictor in model.roi_heads.box_predictor:
        predictor.proposal_score_in_probs = True  # sqrt(p x obj) per stage, then the mean


PERTURBATIONS = {
    "one weight": ([], _perturb_weight, "outputs"),
    "test size 640": (["INPUT.MIN_SIZE_TEST", "640"], None, "outputs"),
    "max test size 1200": (["INPUT.MAX_SIZE_TEST", "1200"], None, "outputs"),
    "cascade score per stage": ([], _per_stage_objectness, "outputs"),
    "no proposal score": (["MODEL.POMP.MULT_PROPOSAL_SCORE", "False"], None, "outputs"),
    "fed-loss classes 49": (["MODEL.POMP.FED_LOSS_NUM_CLASSES", "49"], None, "box"),
    "fed-loss frequency weight 1.0": (["MODEL.POMP.FED_LOSS_FREQ_WEIGHT", "1.0"], None, "box"),
    "image-loss weight 0.2": (["MODEL.POMP.IMAGE_LABEL_WEIGHT", "0.2"], None, "image"),
    "image loss max_score": (["MODEL.POMP.IMAGE_LABEL_LOSS", "max_score"], None, "image"),
}


@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_perturbation_is_detected(converted, name):
    extra, change, part = PERTURBATIONS[name]
    cfg, model = build_ours(converted, extra)
    if change is not None:
        change(model)
    if part == "outputs":
        bad = mismatches(our_outputs(cfg, model), golden_outputs())
    else:
        bad = mismatches(our_losses(model, part), golden_losses(part))
    assert bad, f"{name}: the golden comparison did not notice"


def test_release_sequence_on_the_golden_fixture(converted, tmp_path):
    """docs/detection.md's sequence for a released Detic / POMP checkpoint: convert (above), then
    tools/demo_det.py with a custom vocabulary (an .npy: Detic's demo swaps it in with
    reset_cls_test) on a golden image, with the converted weights as MODEL.WEIGHTS; it finds the
    detections Detic's code finds above the confidence."""
    import cv2
    import runpy

    demo = runpy.run_path(str(ROOT / "tools/demo_det.py"))  # in this process: the golden timm arch is registered
    scores = GOLDEN["outputs"]["custom.img0.scores"]
    confidence = float(scores[4] + scores[5]) / 2  # between Detic's 5th and 6th detection
    args = ["--config-file", CONFIG, "--input", str(FIXTURE / "image_a.png"), "--output", str(tmp_path / "out"),
            "--vocabulary", str(FIXTURE / "custom_vocabulary.npy"), "--confidence", str(confidence),
            *OPTS, "MODEL.WEIGHTS", str(converted["model"])]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        demo["main"](args)
    assert f"image_a.png: {int((scores > confidence).sum())} detections" in printed.getvalue()
    assert int((scores > confidence).sum()) == 5
    from detectron2.data import MetadataCatalog
    # an .npy vocabulary is drawn as "class i", not with the training set's (LVIS) names
    assert MetadataCatalog.get("__pomp_demo").thing_classes == ["class 0", "class 1", "class 2"]
    drawn = cv2.imread(str(tmp_path / "out" / "image_a.png"))
    assert drawn.shape == cv2.imread(str(FIXTURE / "image_a.png")).shape


def report() -> None:
    """Print the golden figures: the max abs difference of each kind of output and loss."""
    import tempfile

    from pomp_det import detic_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        paths = {"model": Path(tmp) / "model.pth", "embeddings": Path(tmp) / "embeddings.npy"}
        with contextlib.redirect_stdout(io.StringIO()):
            detic_checkpoint.main([str(FIXTURE / "detic_model.pth"), "--out", str(paths["model"]), "--embeddings-out",
                                   str(paths["embeddings"]), "--config-file", CONFIG, *OPTS])
        cfg, model = build_ours(paths)
        diffs = differences(our_outputs(cfg, model), golden_outputs())
        for kind in ("box", "image"):
            diffs.update({f"{k}.{kind}": d for k, d in
                          differences(our_losses(model, kind), golden_losses(kind)).items()})
    worst: Dict[str, float] = {}
    for key, d in diffs.items():
        name = "loss " + key.split(".")[1] if key.startswith("loss") else re.sub(r"^(custom\.)?img\d\.", "", key)
        worst[name] = max(worst.get(name, 0.0), d)
    for name, d in sorted(worst.items()):
        print(f"{name:40s} {d:.3g}")


if __name__ == "__main__":
    report()
