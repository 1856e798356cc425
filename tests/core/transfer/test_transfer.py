"""Zero-shot transfer: feature cache hits and misses, accuracy, the eval_cls / classify tools."""
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import pomp_core
from pomp_core.images import eval_transform
from pomp_core.transfer import FeatureCache, ModelIdentity, evaluate, load_split_json, parse_prompt
from pomp_core.transfer import feature_cache as fc
from pomp_core.transfer.feature_cache import weights_identity
from pomp_core.transfer.report import markdown_table, with_averages
from pomp_world import WorldConfig, write_world
from pomp_world.tiny_clip import MODEL_NAME, WEIGHTS
from pomp_core.embeddings import class_embeddings
from pomp_core.zero_shot import top1
from tests.tool_scripts import load_tool

REPO = Path(__file__).resolve().parents[3]
WORLD = WorldConfig(seed=5, pretrain_per_class=0, eval_per_class=3, eval_classes=24)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The synthetic world's held-out splits as CoOp split files (24 classes x 3 images each)."""
    out = tmp_path_factory.mktemp("world")
    (out / "classification" / "pretrain").mkdir(parents=True)  # no pre-training images needed
    files = write_world(out, WORLD, parts=("classification",))
    return files["eval_unseen"], files["eval_seen"]


@pytest.fixture(scope="module")
def world_clip():
    return pomp_core.load_clip(MODEL_NAME, pretrained=str(WEIGHTS))


class CountingEncoder:
    """Wraps a model's encode_image to count the images the image tower sees."""

    def __init__(self, model, monkeypatch):
        self.images, real = 0, model.encode_image

        def counting(x, *a, **k):
            self.images += x.shape[0]
            return real(x, *a, **k)

        monkeypatch.setattr(model, "encode_image", counting)


# ------------------------------------------------------------------ feature cache
def test_second_prompt_does_not_run_the_image_tower(world, tiny_clip, tmp_path, monkeypatch):
    model, tokenizer, _ = tiny_clip
    transform = eval_transform(32)
    data = load_split_json(world[0])
    counter = CountingEncoder(model, monkeypatch)
    identity = ModelIdentity("pomp-tiny", "tag:test-weights", repr(transform))
    first = FeatureCache(tmp_path, identity)
    r1 = evaluate(model, tokenizer, transform, [data], [parse_prompt("a photo of a {}.")], first)
    assert counter.images == len(data.items) and first.encoded == 1
    second = FeatureCache(tmp_path, identity)  # a new run, same model/weights/transform
    prompt = pomp_core.PromptLearner.from_words("a picture of a", model, tokenizer)
    r2 = evaluate(model, tokenizer, transform, [data], [parse_prompt("hand"), pomp_core_prompt(prompt, tmp_path)],
                  second)
    assert counter.images == len(data.items) and second.encoded == 0  # read from disk
    assert r2["CLIP hand prompt"]["world_unseen"] == r1['"a photo of a {}."']["world_unseen"]
    feats, labels = second.features(model, transform, data)
    direct = pomp_core.zero_shot.image_features(model, data.image_root, data.items, transform)
    torch.testing.assert_close(feats, direct[0])
    assert torch.equal(labels, direct[1])


def pomp_core_prompt(prompt, folder):
    path = pomp_core.save_prompt(prompt, folder / "prompt.pth")
    return parse_prompt(f"POMP={path}")


def test_a_different_model_weights_or_transform_misses(world, tiny_clip, tmp_path, monkeypatch):
    model, tokenizer, preprocess = tiny_clip
    data = load_split_json(world[1])
    counter = CountingEncoder(model, monkeypatch)
    t32, t48 = eval_transform(32), preprocess  # same size, different resize / crop
    base = ModelIdentity("pomp-tiny", "tag:a", repr(t32))
    variants = [(base, t32), (ModelIdentity("pomp-tiny-rn", "tag:a", repr(t32)), t32),
                (ModelIdentity("pomp-tiny", "tag:b", repr(t32)), t32), (ModelIdentity("pomp-tiny", "tag:a", repr(t48)), t48)]
    paths = set()
    for identity, transform in variants:
        cache = FeatureCache(tmp_path, identity)
        cache.features(model, transform, data)
        assert cache.encoded == 1
        paths.add(cache.path(data))
    assert len(paths) == 4 and counter.images == 4 * len(data.items)
    cache = FeatureCache(tmp_path, base)
    cache.features(model, t32, data)
    assert cache.encoded == 0
    # the item list is part of the key too: a changed split misses
    data.items = data.items[:-1]
    cache.features(model, t32, data)
    assert cache.encoded == 1


def test_weights_identity_follows_the_file_content(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"weights one")
    b.write_bytes(b"weights one")
    assert weights_identity(str(a)) == weights_identity(str(b))  # same weights, wherever they lie
    b.write_bytes(b"weights two")
    assert weights_identity(str(a)) != weights_identity(str(b))
    assert weights_identity("openai") != weights_identity("laion2b_s34b_b88k")
    assert weights_identity(None) != weights_identity(None)  # random weights never match a cache


# ------------------------------------------------------------------ accuracy
def test_top1_against_a_hand_count():
    weights = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), dim=-1)
    feats = F.normalize(torch.tensor([[0.9, 0.1], [0.2, 0.8], [-0.7, 0.1], [0.6, 0.5], [0.1, -0.9]]), dim=-1)
    # predicted rows by hand: 0, 1, 2, 0, 0 (the last scores 0.11, -0.99, -0.11 against the three rows)
    labels = torch.tensor([0, 1, 1, 0, 2])  # right, right, wrong, right, wrong
    assert top1(feats, labels, weights) == pytest.approx(3 / 5)


def test_duplicate_benchmark_names_share_a_row_but_user_vocabularies_reject_them(tiny_clip):
    model, tokenizer, _ = tiny_clip
    names = ["missile", "sunglasses", "tench", "missile"]
    for clf in ("a photo of a {}.", ["a photo of a {}.", "a drawing of a {}."],
                pomp_core.PromptLearner(n_ctx=2, width=64)):
        w = class_embeddings(model, tokenizer, clf, names, allow_duplicates=True)
        assert w.shape[0] == 4 and torch.equal(w[0], w[3]) and not torch.equal(w[0], w[1])
    with pytest.raises(ValueError, match="repeats class names"):
        pomp_core.load_vocabulary("missile,tench,missile")


def test_ensemble_matches_open_clip(tiny_clip):
    import open_clip

    model, tokenizer, _ = tiny_clip
    names = ["cat", "hot_air_balloon", "tv"]
    templates = open_clip.OPENAI_IMAGENET_TEMPLATES[:6]
    ours = class_embeddings(model, tokenizer, templates, names, allow_duplicates=True)
    ref = open_clip.build_zero_shot_classifier(model, tokenizer, [n.replace("_", " ") for n in names], templates)
    torch.testing.assert_close(ours, ref.t(), atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------ tools
def test_eval_cls_end_to_end_on_the_world(world, world_clip, tmp_path, monkeypatch):
    model, tokenizer, _ = world_clip
    words = pomp_core.PromptLearner.from_words("a photo of a", model, tokenizer)
    ours = pomp_core.save_prompt(words, tmp_path / "words.pth")
    release = tmp_path / "release.pth.tar"  # the POMP release's layout
    torch.save({"state_dict": {"ctx": words.ctx.detach()}, "epoch": 20}, release)
    common = ["--model", MODEL_NAME, "--pretrained", str(WEIGHTS), "--datasets", *world,
              "--cache-dir", str(tmp_path / "cache"), "--workers", "0"]
    calls = []
    real = fc.encode_images
    monkeypatch.setattr(fc, "encode_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    eval_cls = load_tool("eval_cls")
    res = eval_cls.main(common + ["--prompt", "hand", "--prompt", f"words={ours}", "--out", str(tmp_path / "a")])
    assert len(calls) == 2
    for split in ("world_unseen", "world_seen"):
        # the tiny CLIP reads world names well: far above chance (1/24)
        assert res["CLIP hand prompt"][split] > 0.5
        # context initialised from "a photo of a" is the hand prompt "a photo of a {}."
        assert res["words"][split] == pytest.approx(res["CLIP hand prompt"][split], abs=1 / 72)
    res2 = eval_cls.main(common + ["--prompt", f"POMP release={release}", "--prompt", "ensemble",
                                   "--out", str(tmp_path / "b")])
    assert len(calls) == 2  # both datasets' features came from the cache
    assert res2["POMP release"] == res["words"]
    rows = list(csv.reader(open(tmp_path / "b" / "results.csv")))
    assert rows[0] == ["prompt", "world_unseen", "world_seen", "Avg"]
    assert [r[0] for r in rows[1:]] == ["POMP release", "CLIP 80-template ensemble"]
    for r in rows[1:]:
        vals = res2[r[0]]
        assert [float(x) for x in r[1:]] == pytest.approx(
            [100 * vals["world_unseen"], 100 * vals["world_seen"], 50 * (vals["world_unseen"] + vals["world_seen"])],
            abs=0.006)
    md = (tmp_path / "b" / "results.md").read_text()
    assert "| POMP release |" in md and md.count("\n") == 4
    assert (tmp_path / "b" / "results.png").stat().st_size > 1000


def test_group_averages_in_the_table():
    res = {"p": {"Caltech": 0.9, "DTD": 0.5, "ImageNet-A": 0.4, "ImageNet-R": 0.2, "ImageNet": 0.6}}
    groups = {"cross-dataset": ["Caltech", "DTD", "EuroSAT"], "domain-shift": ["ImageNet-A", "ImageNet-R"],
              "imagenet": ["ImageNet"]}
    table = with_averages(res, groups)
    assert table["p"]["Avg cross-dataset"] == pytest.approx(0.7)
    assert table["p"]["Avg domain-shift"] == pytest.approx(0.3)
    assert table["p"]["Avg"] == pytest.approx(0.52) and "Avg imagenet" not in table["p"]
    assert markdown_table(table).splitlines()[2] == "| p | 90.0 | 50.0 | 40.0 | 20.0 | 60.0 | 70.0 | 30.0 | 52.0 |"
    assert list(with_averages({"p": {"Caltech": 0.9, "DTD": 0.5}}, groups)["p"]) == ["Caltech", "DTD", "Avg"]


def test_classify_tool_agrees_with_the_benchmark_top1(world, world_clip, tmp_path, capsys):
    model, tokenizer, preprocess = world_clip
    data = load_split_json(world[0])
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(data.class_names) + "\n")
    folder = tmp_path / "unseen"  # the eval folder mixes seen and unseen classes: copy the unseen split's images
    for p, _ in data.items:
        (folder / p).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data.image_root / p, folder / p)
    rows = load_tool("classify").main(["--model", MODEL_NAME, "--pretrained", str(WEIGHTS), "--vocabulary", str(vocab),
                                  "--image", str(folder), "--topk", "3"])
    assert len(rows) == len(data.items)
    truth = {str(folder / p): data.class_names[y] for p, y in data.items}
    correct = sum(top[0][0] == truth[path] for path, top in rows)  # the hand count
    feats, labels = pomp_core.zero_shot.image_features(model, data.image_root, data.items, preprocess)
    weights = class_embeddings(model, tokenizer, "a photo of a {}.", data.class_names, allow_duplicates=True)
    assert correct / len(rows) == pytest.approx(top1(feats, labels, weights))
    for _, top in rows:
        scores = [s for _, s in top]
        assert len(top) == 3 and scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
    out = capsys.readouterr().out
    assert out.count("  1. ") == len(rows)
    with pytest.raises(ValueError, match="repeats class names"):
        load_tool("classify").main(["--model", MODEL_NAME, "--pretrained", str(WEIGHTS),
                               "--vocabulary", "cat,dog,cat", "--image", str(data.image_root)])


@pytest.mark.xdist_group("two-process")  # ranks on both cores: never beside another two-process test
@pytest.mark.slow
def test_two_processes_give_the_features_and_table_of_one(world, tmp_path):
    """torchrun, gloo: each rank encodes half the images, rank 0 gathers and writes."""
    args = ["--model", MODEL_NAME, "--pretrained", str(WEIGHTS), "--datasets", world[0], "--prompt", "hand",
            "--workers", "0"]
    one = load_tool("eval_cls").main(args + ["--cache-dir", str(tmp_path / "one"), "--out", str(tmp_path / "o1")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", str(REPO / "tools/eval_cls.py")] + args + \
        ["--cache-dir", str(tmp_path / "two"), "--out", str(tmp_path / "o2")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (f1,), (f2,) = list((tmp_path / "one").glob("*.pt")), list((tmp_path / "two").glob("*.pt"))
    assert f1.name == f2.name
    a, b = torch.load(f1, weights_only=True), torch.load(f2, weights_only=True)
    assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["index"], b["index"])
    torch.testing.assert_close(a["features"], b["features"], atol=1e-5, rtol=1e-4)
    assert (tmp_path / "o2" / "results.md").read_text() == (tmp_path / "o1" / "results.md").read_text()
    assert one["CLIP hand prompt"]["world_unseen"] > 0.5
