"""pomp_core by value: class-specific contexts reach their own class whatever the length
order, truncated names, template ensembles, batching and progress of class embeddings, the
embedding export formats, the durable-file helpers, the pre-training proposal distributions
and their registry, RandAugment2 against Dassl's own loop, and tools/export_prompt.py."""
import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps

from pomp_core import PromptLearner, PromptedTextEncoder
from pomp_core import durable
from pomp_core.embeddings import class_embeddings, save_embeddings
from pomp_core.pretrain.augment import OPS, RandAugment2
from pomp_core.pretrain.config import distribution_config
from pomp_core.pretrain.proposals import (FrequencyProposal, SimilarityOptions, SimilarityProposal, UniformProposal,
                                         build_proposal)

REPO = Path(__file__).resolve().parents[2]
# token lengths differ and are not in vocabulary order: the encoder sorts by length
NAMES = ["a rather long kind of tropical fish", "cat", "hot_air_balloon", "tv", "red double decker bus"]


# ------------------------------------------------------------------ class embeddings
def test_class_specific_contexts_each_reach_their_own_class(tiny_clip):
    model, tokenizer, _ = tiny_clip
    torch.manual_seed(3)
    prompt = PromptLearner(n_ctx=3, width=64, class_specific=True, n_classes=len(NAMES), init_std=0.5)
    got = class_embeddings(model, tokenizer, prompt, NAMES, normalize=False, batch_size=2)
    enc = PromptedTextEncoder(model, tokenizer)
    with torch.no_grad():
        for i, name in enumerate(NAMES):
            own = PromptLearner(n_ctx=3, width=64, ctx=prompt.ctx[i].detach())
            torch.testing.assert_close(got[i], enc(own, [name], truncate=False)[0], atol=1e-5, rtol=1e-4)
    unit = class_embeddings(model, tokenizer, prompt, NAMES, batch_size=3)
    torch.testing.assert_close(unit, F.normalize(got, dim=1), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="5 contexts but the vocabulary has 2"):
        class_embeddings(model, tokenizer, prompt, NAMES[:2])


def test_shared_context_rows_come_back_in_vocabulary_order(tiny_clip):
    model, tokenizer, _ = tiny_clip
    prompt = PromptLearner.from_words("a photo of a", model, tokenizer)
    got = class_embeddings(model, tokenizer, prompt, NAMES, batch_size=2)
    with torch.no_grad():
        ref = model.encode_text(tokenizer([f"a photo of a {n.replace('_', ' ')}." for n in NAMES]))
    torch.testing.assert_close(got, F.normalize(ref, dim=1), atol=1e-5, rtol=1e-4)


def test_save_embeddings_formats(tmp_path):
    emb = torch.tensor([[3.0, 4.0], [0.5, -0.5], [1.0, 0.0]])
    raw = np.load(save_embeddings(emb, tmp_path / "d.npy"))  # default: detic
    assert raw.dtype == np.float16 and np.array_equal(raw, emb.numpy().astype(np.float16))
    unit = np.load(save_embeddings(emb, tmp_path / "n.npy", fmt="normalized"))
    assert unit.dtype == np.float32
    np.testing.assert_allclose(unit, F.normalize(emb, dim=1).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="'detic' or 'normalized'"):
        save_embeddings(emb, tmp_path / "x.npy", fmt="fp16")


# ------------------------------------------------------------------ truncated names
LONG = " ".join(["giraffe", "zebra", "lemon", "table"] * 20)  # 80 words, one token each


def test_a_truncated_name_keeps_its_first_tokens_then_the_period(tiny_clip, caplog):
    model, tokenizer, _ = tiny_clip
    prompt = PromptLearner.from_words("a photo of", model, tokenizer)
    enc = PromptedTextEncoder(model, tokenizer, truncate_names=True)
    limit = 77 - 3 - 2  # room for the name and its period
    name_ids = tokenizer.encode(LONG)
    assert len(name_ids) == 80
    seq = [tokenizer.sot_token_id] + tokenizer.encode("a photo of") + name_ids[: limit - 1] \
        + tokenizer.encode(".") + [tokenizer.eot_token_id]
    assert len(seq) == 77
    ids, is_ctx = enc.token_ids([LONG, "cat"], 3, "end")
    ph = enc.placeholder_id
    assert ids[0].tolist() == [seq[0], ph, ph, ph] + seq[4:]
    assert is_ctx[0].tolist() == [False, True, True, True] + [False] * 73
    assert "cut 1 class names to 71 tokens" in caplog.text and "giraffe" in caplog.text
    with torch.no_grad():
        got = enc(prompt, [LONG, "cat"])
        ref = model.encode_text(torch.tensor([seq]))
    torch.testing.assert_close(got[0], ref[0], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="is 80 tokens; with 3 context vectors at most 71 fit"):
        PromptedTextEncoder(model, tokenizer).token_ids([LONG], 3, "end")


def test_the_longest_name_that_fits_is_not_cut(tiny_clip, caplog):
    model, tokenizer, _ = tiny_clip
    enc = PromptedTextEncoder(model, tokenizer)
    name = " ".join(["zebra"] * 71)  # 71 tokens + period = the 72 places of 3 context vectors
    ids, _ = enc.token_ids([name], 3, "end")
    assert ids[0, -1] == tokenizer.eot_token_id and ids[0, -2] == tokenizer.encode(".")[0]
    assert "cut" not in caplog.text
    with pytest.raises(ValueError, match="no room"):
        enc.token_ids(["cat"], 74, "end")


# ------------------------------------------------------------------ durable files
def test_kill_point_matches_the_name_or_name_and_step(monkeypatch):
    kills = []
    monkeypatch.setattr(durable.os, "kill", lambda pid, sig: kills.append((pid, sig)))
    monkeypatch.setattr(durable.logging, "shutdown", lambda: None)
    table = [("save", "save", None, True), ("save", "save", 3, True), ("save:3", "save", 3, True),
             ("save:3", "save", 4, False), ("save:3", "save", None, False), ("load", "save", None, False),
             ("", "save", None, False), ("", "", None, False)]  # an empty POMP_KILL_AT names no point
    for env, name, step, killed in table:
        kills.clear()
        monkeypatch.setenv(durable.KILL_ENV, env)
        durable.kill_point(name, step)
        assert kills == ([(os.getpid(), durable.signal.SIGKILL)] if killed else []), (env, name, step)


def test_temporary_names_are_unique_per_host_and_process(tmp_path):
    a, b = durable.temporary_name(tmp_path / "f.pt"), durable.temporary_name(tmp_path / "f.pt", ".part")
    host = re.escape(socket.gethostname())
    assert re.fullmatch(rf"f\.pt\.{host}-{os.getpid()}-[0-9a-f]{{8}}\.tmp", a.name)
    assert b.name.endswith(".part") and a.parent == tmp_path and a != b


def test_stale_temporaries_of_dead_processes_only_are_removed(tmp_path):
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a writer still at work
    names = {"dead": f"f.pt.{host}-{dead.pid}-aaaa.tmp", "mine": f"f.pt.{host}-{os.getpid()}-bbbb.tmp",
             "live": f"f.pt.{host}-{live.pid}-cccc.tmp", "other_host": f"f.pt.elsewhere-{dead.pid}-dddd.tmp",
             "odd": f"f.pt.{host}-xyz-eeee.tmp", "other_file": f"g.pt.{host}-{dead.pid}-ffff.tmp"}
    for n in names.values():
        (tmp_path / n).write_text("x")
    try:
        durable.remove_stale_temporaries(tmp_path, "f.pt")
        assert live.poll() is None  # asked whether it lives, not signalled
    finally:
        live.kill()
        code = live.wait()
    assert code == -signal.SIGKILL  # killed by us, not by a signal of the check
    left = {p.name for p in tmp_path.iterdir()}
    assert left == set(names.values()) - {names["dead"]}


class NameOrdered(type(Path())):
    """A folder whose listing comes in name order (the file system's order is arbitrary)."""

    def glob(self, pattern):
        return iter(sorted(super().glob(pattern)))


def test_stale_temporaries_of_any_suffix_go_past_odd_names_and_undeletable_ones(tmp_path):
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    odd = f"f.pt.{host}--1-aaaa.tmp"  # no pid: kept, and the search goes on (it lists first)
    stuck = f"f.pt.{host}-{dead.pid}-bbbb.tmp"  # a folder: unlink fails, kept, the search goes on
    dashed = f"f.pt.{host}-{dead.pid}-cccc.part-2"  # temporary_name(path, suffix=".part-2")
    plain = f"f.pt.{host}-{dead.pid}-dddd.tmp"
    (tmp_path / odd).write_text("x")
    (tmp_path / stuck).mkdir()
    (tmp_path / dashed).write_text("x")
    (tmp_path / plain).write_text("x")
    folder = NameOrdered(tmp_path)
    assert [p.name for p in folder.glob("f.pt.*")] == [odd, stuck, dashed, plain]
    durable.remove_stale_temporaries(folder, "f.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [odd, stuck]


def test_fsync_dir_passes_over_a_folder_it_cannot_open(tmp_path):
    durable._fsync_dir(tmp_path / "missing")  # os.open fails: nothing to sync, no error
    durable._fsync_dir(tmp_path)


def test_atomic_write_json_returns_the_path_of_the_complete_file(tmp_path):
    path = tmp_path / "sub" / "state.json"
    data = {"epoch": 3, "best": [0.5, None], "name": "z\u00fcrich"}
    assert durable.atomic_write_json(str(path), data) == path
    assert json.loads(path.read_text()) == data
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temporary left


def test_atomic_write_keeps_the_old_file_on_error_and_renames_after_the_kill_point(tmp_path, monkeypatch):
    path = tmp_path / "state.txt"
    durable.atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with durable.atomic_write(path, "w") as f:
            f.write("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.txt"]
    seen = []

    def at_kill(pid, sig):  # what a killed process leaves: the complete temporary, the old file
        seen.append((path.read_text(), sorted(p.read_text() for p in tmp_path.glob("state.txt.*"))))
    monkeypatch.setattr(durable.os, "kill", at_kill)
    monkeypatch.setattr(durable.logging, "shutdown", lambda: None)
    monkeypatch.setenv(durable.KILL_ENV, "ckpt:7")
    with durable.atomic_write(path, "w", kill_name="ckpt", step=7) as f:
        f.write("new")
    assert seen == [("old", ["new"])] and path.read_text() == "new"
    durable.atomic_torch_save({"a": torch.arange(3)}, tmp_path / "sub" / "t.pt")
    assert torch.equal(torch.load(tmp_path / "sub" / "t.pt")["a"], torch.arange(3))


# ------------------------------------------------------------------ proposals
def test_frequency_proposal_is_the_label_share_with_absent_classes_at_zero():
    q = FrequencyProposal(None, [2, 0, 2, 2, 4], num_classes=6).distribution(torch.tensor([0]))
    torch.testing.assert_close(q, torch.tensor([1, 0, 3, 0, 1, 0], dtype=torch.float64) / 5)


def similarity(n, refresh_steps, temperature, uniform_mix):
    return SimilarityProposal(SimilarityOptions(refresh_steps, temperature, uniform_mix), [], n)


def test_similarity_proposal_by_hand():
    bank = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0], [0.6, -0.8]])  # unit rows
    p = similarity(5, 3, 0.5, 0.25)
    p.refresh(0, lambda: bank * 4)  # normalised on the way in
    q = p.distribution(torch.tensor([0, 2, 0]))
    cos = bank[[0, 2]] @ bank.t()
    score = cos.max(0).values / 0.5
    hard = torch.zeros(5, dtype=torch.float64)
    others = [1, 3, 4]
    e = torch.exp(score[others].double())
    hard[others] = e / e.sum()
    torch.testing.assert_close(q, 0.75 * hard + 0.25 / 5)
    assert float(q.sum()) == pytest.approx(1.0) and q[0] == q[2] == pytest.approx(0.05)


def test_similarity_bank_refreshes_every_refresh_steps_and_round_trips():
    calls = []

    def encode():
        calls.append(1)
        return torch.randn(4, 3)

    p = similarity(4, 3, 0.1, 1.0)
    for step in range(8):
        p.refresh(step, encode)
    assert len(calls) == 3 and p.bank_step == 6  # steps 0, 3, 6
    q = p.distribution(torch.tensor([1]))
    torch.testing.assert_close(q, torch.full((4,), 0.25, dtype=torch.float64))  # mix 1: uniform
    other = similarity(4, 3, 0.1, 1.0)
    other.load_state_dict(p.state_dict())
    assert torch.equal(other.bank, p.bank) and other.bank_step == 6
    assert similarity(4, 3, 0.1, 0.5).state_dict() == {}
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="uniform_mix"):
            similarity(4, 3, 0.1, bad)


def test_build_proposal_kinds_and_defaults():
    def build(name, labels, n):
        distribution = distribution_config()
        distribution.name = name
        return build_proposal(distribution, labels, n)

    u = build("uniform", [], 3)
    assert isinstance(u, UniformProposal) and u.distribution(torch.tensor([0])) is None
    assert isinstance(build("frequency", [0, 1], 3), FrequencyProposal)
    s = build("similarity", [], 7)
    assert (s.num_classes, s.refresh_steps, s.temperature, s.uniform_mix) == (7, 200, 0.05, 0.5)
    with pytest.raises(ValueError, match=r"unknown sampling.distribution.name 'hard': registered are "
                                         r"frequency, similarity, uniform"):
        build("hard", [], 3)


# ------------------------------------------------------------------ RandAugment2
def dassl_randaugment2(img, n, p, rnd):
    """Dassl's RandAugment2.__call__ and ops (dassl/data/transforms/randaugment.py), written out."""
    def flip(v):
        return -v if rnd.random() > 0.5 else v
    ops = [("AutoContrast", 0, 1, lambda im, v: ImageOps.autocontrast(im)),
           ("Brightness", 0.1, 1.9, lambda im, v: ImageEnhance.Brightness(im).enhance(v)),
           ("Color", 0.1, 1.9, lambda im, v: ImageEnhance.Color(im).enhance(v)),
           ("Contrast", 0.1, 1.9, lambda im, v: ImageEnhance.Contrast(im).enhance(v)),
           ("Equalize", 0, 1, lambda im, v: ImageOps.equalize(im)),
           ("Identity", 0, 1, lambda im, v: im),
           ("Invert", 0, 1, lambda im, v: ImageOps.invert(im)),
           ("Posterize", 4, 8, lambda im, v: ImageOps.posterize(im, int(v))),
           ("Rotate", -30, 30, lambda im, v: im.rotate(flip(v))),
           ("Sharpness", 0.1, 1.9, lambda im, v: ImageEnhance.Sharpness(im).enhance(v)),
           ("ShearX", -0.3, 0.3, lambda im, v: im.transform(im.size, Image.AFFINE, (1, flip(v), 0, 0, 1, 0))),
           ("ShearY", -0.3, 0.3, lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, 0, flip(v), 1, 0))),
           ("Solarize", 0, 256, lambda im, v: ImageOps.solarize(im, v)),
           ("TranslateX", -0.3, 0.3,
            lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, flip(v) * im.size[0], 0, 1, 0))),
           ("TranslateY", -0.3, 0.3,
            lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, flip(v) * im.size[1])))]
    names = []
    for name, lo, hi, op in rnd.choices(ops, k=n):
        if rnd.random() > p:
            continue
        img = op(img, rnd.random() * (hi - lo) + lo)
        names.append(name)
    return img, names


def test_op_list_is_dassls_randaugment_list2():
    assert [(n, lo, hi, s) for n, lo, hi, s, _ in OPS] == [
        ("AutoContrast", 0, 1, False), ("Brightness", 0.1, 1.9, False), ("Color", 0.1, 1.9, False),
        ("Contrast", 0.1, 1.9, False), ("Equalize", 0, 1, False), ("Identity", 0, 1, False),
        ("Invert", 0, 1, False), ("Posterize", 4, 8, False), ("Rotate", -30, 30, True),
        ("Sharpness", 0.1, 1.9, False), ("ShearX", -0.3, 0.3, True), ("ShearY", -0.3, 0.3, True),
        ("Solarize", 0, 256, False), ("TranslateX", -0.3, 0.3, True), ("TranslateY", -0.3, 0.3, True)]


def test_randaugment2_replays_dassls_draws_and_images():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (21, 34, 3), dtype=np.uint8))  # non-square
    applied = set()
    for seed in range(40):
        for n, p in ((2, 0.6), (3, 0.9)):
            ours = RandAugment2(n, p, rng=random.Random(seed))(img)
            want, names = dassl_randaugment2(img, n, p, random.Random(seed))
            applied.update(names)
            assert np.array_equal(np.asarray(ours), np.asarray(want)), (seed, n, p, names)
    assert len(applied) == 15  # every op was compared at least once


def test_randaugment2_plan_by_hand():
    class Script:
        def __init__(self, values):
            self.values = list(values)

        def random(self):
            return self.values.pop(0)

    # op draws 8/15 -> Rotate, 0.0 -> AutoContrast; Rotate: applied (0.6 <= p), m 0.25, sign flip (0.7)
    # AutoContrast: 0.61 > 0.6 skipped
    plan = RandAugment2(2, 0.6, rng=Script([8.5 / 15, 0.0, 0.6, 0.25, 0.7, 0.61])).plan()
    assert plan == [("Rotate", -(0.25 * 60 - 30)), ("AutoContrast", None)]
    plan = RandAugment2(1, 0.6, rng=Script([14.99 / 15, 0.1, 0.75, 0.5])).plan()
    assert plan == [("TranslateY", pytest.approx(0.15))]  # 0.5 is not > 0.5: no flip
    assert repr(RandAugment2()) == "RandAugment2(n=2, p=0.6)"


def test_randaugment2_draws_from_torchs_generator_by_default():
    torch.manual_seed(5)
    plan = RandAugment2(3, 0.6).plan()
    torch.manual_seed(5)
    draws = [float(torch.rand(())) for _ in range(12)]

    class Replay:
        def random(self):
            return draws.pop(0)

    assert plan == RandAugment2(3, 0.6, rng=Replay()).plan()
    torch.manual_seed(6)
    assert RandAugment2(3, 0.6).plan() != plan


# ------------------------------------------------------------------ tools/export_prompt.py
@pytest.fixture()
def export_prompt():
    import importlib.util

    # named by its path in the repository (mutmut traces tools.export_prompt); loaded from the
    # file, as detectron2's wheel installs a top-level package named tools
    spec = importlib.util.spec_from_file_location("tools.export_prompt", REPO / "tools" / "export_prompt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def root_messages(caplog, level=logging.INFO):
    """What the tool itself logged (logging.info / logging.warning: the root logger) at ``level``."""
    return [r.getMessage() for r in caplog.records if r.name == "root" and r.levelno == level]


def test_export_prompt_defaults_fp16_no_best_and_the_prompts_epoch(tmp_path, export_prompt, caplog):
    import pomp_core

    caplog.set_level(logging.INFO)
    prompt = PromptLearner(n_ctx=2, width=8, init_std=0.3)
    src = pomp_core.save_prompt(prompt, tmp_path / "p.pth", epoch=4)
    path = export_prompt.main(["--prompt", str(src), "--out", str(tmp_path / "rel")])
    folder = tmp_path / "rel" / "prompt_learner"
    assert path == folder / "model.pth.tar-4"
    assert root_messages(caplog) == [f"wrote {path} (epoch 4, fp16 ctx (2, 8))"]
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint", "model.pth.tar-4"]
    raw = torch.load(path, weights_only=True)
    assert raw["epoch"] == 4 and raw["state_dict"]["ctx"].dtype == torch.float16
    torch.testing.assert_close(raw["state_dict"]["ctx"], prompt.ctx.detach().half())
    args = export_prompt.parse_args(["--prompt", "a", "--out", "b"])
    assert (args.epoch, args.dtype, args.best, args.trusted) == (None, "fp16", False, False)


@pytest.mark.parametrize("epoch", ["0", "9"])
def test_export_prompt_epoch_flag_overrides_the_prompts(tmp_path, export_prompt, epoch):
    import pomp_core

    src = pomp_core.save_prompt(PromptLearner(n_ctx=2, width=8), tmp_path / "p.pth", epoch=4)
    path = export_prompt.main(["--prompt", str(src), "--out", str(tmp_path / "rel"), "--epoch", epoch,
                               "--dtype", "fp32"])
    assert path.name == f"model.pth.tar-{epoch}"
    raw = torch.load(path, weights_only=True)
    assert raw["epoch"] == int(epoch) and raw["state_dict"]["ctx"].dtype == torch.float32


def test_similarity_proposal_needs_a_refresh_first():
    with pytest.raises(AssertionError, match=r"^refresh\(\) must run before the first step$"):
        similarity(4, 3, 0.1, 0.5).distribution(torch.tensor([0]))


def test_a_process_of_another_user_counts_as_alive(monkeypatch):
    def denied(pid, sig):
        raise PermissionError(pid)
    monkeypatch.setattr(durable.os, "kill", denied)
    assert durable._alive(12345) is True

    def gone(pid, sig):
        raise ProcessLookupError(pid)
    monkeypatch.setattr(durable.os, "kill", gone)
    assert durable._alive(12345) is False


def test_fsync_file_keeps_the_content(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc")
    durable.fsync_file(path)
    assert path.read_bytes() == b"abc"


def test_atomic_torch_save_passes_its_kill_point(tmp_path, monkeypatch):
    kills = []
    monkeypatch.setattr(durable.os, "kill", lambda pid, sig: kills.append(sig))
    monkeypatch.setattr(durable.logging, "shutdown", lambda: None)
    monkeypatch.setenv(durable.KILL_ENV, "ckpt:3")
    durable.atomic_torch_save({"a": 1}, tmp_path / "a.pt", kill_name="ckpt", step=2)
    assert kills == []
    durable.atomic_torch_save({"a": 1}, tmp_path / "a.pt", kill_name="ckpt", step=3)
    assert kills == [durable.signal.SIGKILL]


def test_export_prompt_flags_best_trusted_and_bad_values(tmp_path, export_prompt):
    import argparse

    ctx = torch.randn(3, 8)
    raw = tmp_path / "model.pth.tar-6"  # a raw Dassl checkpoint: pickles an object
    torch.save({"state_dict": {"ctx": ctx}, "epoch": 6, "scheduler": argparse.Namespace(step=1)}, raw)
    with pytest.raises(ValueError, match="trusted=True"):
        export_prompt.main(["--prompt", str(raw), "--out", str(tmp_path / "a")])
    path = export_prompt.main(["--prompt", str(raw), "--out", str(tmp_path / "b"), "--trusted", "--best"])
    assert path == tmp_path / "b" / "prompt_learner" / "model.pth.tar-6"
    best = torch.load(path.parent / "model-best.pth.tar", weights_only=True)
    assert best["epoch"] == 6 and torch.equal(best["state_dict"]["ctx"], ctx.half())
    for bad in (["--out", "x"], ["--prompt", "p"], ["--prompt", "p", "--out", "x", "--dtype", "bf16"],
                ["--prompt", "p", "--out", "x", "--epoch", "five"]):
        with pytest.raises(SystemExit):
            export_prompt.parse_args(bad)
    import pomp_core

    plain = pomp_core.save_prompt(PromptLearner(n_ctx=2, width=8), tmp_path / "plain.pth")
    with pytest.raises(ValueError, match="records no epoch: pass --epoch N"):
        export_prompt.main(["--prompt", str(plain), "--out", str(tmp_path / "c")])


EXPORT_OPTIONS = {  # option -> its line in --help
    "--prompt PROMPT": "prompt file (tools/pretrain.py output or a release .pth.tar)",
    "--run RUN": "a tools/pretrain.py output folder: every epoch and the best",
    "--out OUT": "output directory (the release's --model-dir)",
    "--epoch EPOCH": "with --prompt: epoch to record and name the file by (default: the prompt's own)",
    "--dtype {fp16,fp32}": "",
    "--best": "with --prompt: also write model-best.pth.tar",
    "--trusted": "unpickle the prompt file fully (a raw Dassl checkpoint); only for files you trust",
}


def test_export_prompt_help_shows_the_usage_text_and_every_option(export_prompt, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # wide enough for one line per option
    with pytest.raises(SystemExit) as exited:
        export_prompt.parse_args(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert export_prompt.__doc__.strip() in out  # the module's text, line for line
    lines = [" ".join(line.split()) for line in out.splitlines()]
    for option, text in EXPORT_OPTIONS.items():
        assert f"{option} {text}".strip() in lines, option


def test_export_prompt_paths_parse_as_paths(export_prompt):
    args = export_prompt.parse_args(["--run", "runs/a", "--out", "rel"])
    assert (args.run, args.out, args.prompt) == (Path("runs/a"), Path("rel"), None)
    assert isinstance(args.run, Path) and isinstance(args.out, Path)
    args = export_prompt.parse_args(["--prompt", "p.pth", "--out", "rel", "--epoch", "3", "--best", "--trusted"])
    assert (args.prompt, args.run, args.epoch, args.best, args.trusted) == ("p.pth", None, 3, True, True)


def release_file(path):
    raw = torch.load(path, weights_only=True)
    return raw["epoch"], raw["state_dict"]["ctx"]


def test_export_prompt_run_writes_every_kept_epoch_and_the_best_one(tmp_path, export_prompt, caplog):
    import pomp_core
    from pomp_core.pretrain.selection import BEST, epoch_prompt_path

    caplog.set_level(logging.INFO)
    run = tmp_path / "run"
    torch.manual_seed(8)
    prompts = {e: PromptLearner(n_ctx=2, width=8, init_std=0.3) for e in (1, 2, 3)}
    for e, prompt in prompts.items():
        pomp_core.save_prompt(prompt, epoch_prompt_path(run, e), epoch=e)
    pomp_core.save_prompt(prompts[2], run / BEST, epoch=2, val_top1=0.5)  # validation chose epoch 2 of 3
    path = export_prompt.main(["--run", str(run), "--out", str(tmp_path / "rel")])
    folder = tmp_path / "rel" / "prompt_learner"
    assert path == folder / "model.pth.tar-3"  # the last epoch's
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint", "model-best.pth.tar", "model.pth.tar-1",
                                                        "model.pth.tar-2", "model.pth.tar-3"]
    for name, e in (("model.pth.tar-1", 1), ("model.pth.tar-2", 2), ("model.pth.tar-3", 3), ("model-best.pth.tar", 2)):
        epoch, ctx = release_file(folder / name)
        assert epoch == e and ctx.dtype == torch.float16, name  # fp16 by default
        assert torch.equal(ctx, prompts[e].ctx.detach().half()), name
    assert root_messages(caplog) == [f"wrote {folder / 'model.pth.tar-1'}",
                                     f"wrote {folder / 'model.pth.tar-2'} and model-best.pth.tar",
                                     f"wrote {folder / 'model.pth.tar-3'}"]
    assert root_messages(caplog, logging.WARNING) == []


def test_export_prompt_run_without_validation_warns_and_writes_no_best(tmp_path, export_prompt, caplog):
    import pomp_core
    from pomp_core.pretrain.selection import epoch_prompt_path

    run = tmp_path / "run"
    prompts = {e: PromptLearner(n_ctx=2, width=8, init_std=0.3) for e in (2, 5)}
    for e, prompt in prompts.items():
        pomp_core.save_prompt(prompt, epoch_prompt_path(run, e), epoch=e)
    path = export_prompt.main(["--run", str(run), "--out", str(tmp_path / "rel"), "--dtype", "fp32"])
    folder = tmp_path / "rel" / "prompt_learner"
    assert path == folder / "model.pth.tar-5"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint", "model.pth.tar-2", "model.pth.tar-5"]
    for e in (2, 5):
        epoch, ctx = release_file(folder / f"model.pth.tar-{e}")
        assert epoch == e and ctx.dtype == torch.float32 and torch.equal(ctx, prompts[e].ctx.detach())
    assert root_messages(caplog, logging.WARNING) == [
        f"{run} has no prompt_best.pth (it ran without validation): no model-best.pth.tar"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty holds no prompts/epoch_<e>\.pth: pass a tools/pretrain\.py"):
        export_prompt.main(["--run", str(tmp_path / "empty"), "--out", str(tmp_path / "rel2")])


# ------------------------------------------------------------------ proposal registry
@dataclass
class CountOptions:
    """Options of a test distribution (a registered one must take a dataclass)."""
    size: int = 3


def test_register_proposal_adds_refuses_repeats_and_passes_options_only_with_a_dataclass(monkeypatch):
    from pomp_core.pretrain import proposals

    monkeypatch.setattr(proposals, "PROPOSALS", dict(proposals.PROPOSALS))  # the registry comes back after
    seen = []

    class Recorder(proposals.Proposal):
        def __init__(self, options, train_labels, num_classes):
            seen.append((options, list(train_labels), num_classes))

    assert proposals.register_proposal("plain")(Recorder) is Recorder
    assert proposals.register_proposal("counted", options=CountOptions)(Recorder) is Recorder
    assert proposals.PROPOSALS["plain"] == proposals.ProposalEntry(Recorder, None)
    assert proposals.PROPOSALS["counted"] == proposals.ProposalEntry(Recorder, CountOptions)
    with pytest.raises(ValueError) as err:
        proposals.register_proposal("frequency")(Recorder)
    assert str(err.value) == "proposal distribution 'frequency' is already registered (FrequencyProposal)"
    with pytest.raises(TypeError) as err:
        proposals.register_proposal("bad", options=dict)(Recorder)
    assert str(err.value) == "options of proposal 'bad' must be a dataclass, got <class 'dict'>"
    assert "bad" not in proposals.PROPOSALS and proposals.PROPOSALS["frequency"].cls is FrequencyProposal
    # a distribution without options gets None even where the config has a section of its name
    build_proposal(SimpleNamespace(name="plain", plain="a section"), (1, 1, 0), 4)
    build_proposal(SimpleNamespace(name="counted", counted=CountOptions(5)), [2], 3)
    build_proposal(SimpleNamespace(name="counted"), [], 2)  # registered after the config was made
    assert seen == [(None, [1, 1, 0], 4), (CountOptions(5), [2], 3), (None, [], 2)]
    assert proposals.proposal_entry("counted").options is CountOptions
    with pytest.raises(ValueError) as err:
        proposals.proposal_entry("hard")
    assert str(err.value) == ("unknown sampling.distribution.name 'hard': registered are counted, frequency, plain, "
                              "similarity, uniform (pomp_core.pretrain.proposals.register_proposal adds one)")


def test_built_frequency_proposal_counts_the_given_labels():
    distribution = distribution_config()
    distribution.name = "frequency"
    q = build_proposal(distribution, [3, 1, 3, 3, 0, 1], 5).distribution(torch.tensor([1, 2]))
    torch.testing.assert_close(q, torch.tensor([1, 2, 0, 3, 0], dtype=torch.float64) / 6)


def test_similarity_options_reach_the_proposal_and_bad_mixes_are_named():
    distribution = distribution_config()
    distribution.name = "similarity"
    distribution.similarity.refresh_steps, distribution.similarity.temperature = 7, 0.25
    distribution.similarity.uniform_mix = 0.125
    s = build_proposal(distribution, [0, 1], 6)
    assert (s.num_classes, s.refresh_steps, s.temperature, s.uniform_mix) == (6, 7, 0.25, 0.125)
    for bad in (0.0, -0.5, 1.0001):
        with pytest.raises(ValueError) as err:
            similarity(4, 3, 0.1, bad)
        assert str(err.value) == f"sampling.distribution.similarity.uniform_mix must be in (0, 1], got {bad}"
    assert similarity(4, 3, 0.1, 1.0).uniform_mix == 1.0  # the bound itself is allowed


def test_similarity_distribution_by_hand_with_the_bank_normalised_per_row():
    # rows of different norms; the own classes 1 and 3 are excluded from the hard part
    raw = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 4.0], [1.0, 1.0, 0.0], [0.0, 0.0, -2.0], [3.0, -4.0, 0.0],
                        [0.5, 0.5, 0.5]])
    p = similarity(6, 5, 0.2, 0.4)
    p.refresh(2, lambda: raw)
    unit = raw / raw.norm(dim=1, keepdim=True)
    torch.testing.assert_close(p.bank, unit)
    q = p.distribution(torch.tensor([3, 1, 3, 1]))
    score = torch.maximum(unit[1] @ unit.t(), unit[3] @ unit.t()) / 0.2
    others = [0, 2, 4, 5]
    hard = torch.zeros(6, dtype=torch.float64)
    hard[others] = torch.softmax(score[others].double(), dim=0)
    torch.testing.assert_close(q, 0.6 * hard + 0.4 / 6)
    assert q.dtype == torch.float64
    p.refresh(6, lambda: -raw)  # 4 steps after the last refresh: too early, the bank stays
    torch.testing.assert_close(p.bank, unit)
    p.refresh(7, lambda: -raw)
    torch.testing.assert_close(p.bank, -unit)
    assert p.bank_step == 7


def test_similarity_state_without_a_bank_loads_as_no_bank():
    p = similarity(4, 3, 0.1, 0.5)
    p.load_state_dict({})
    assert p.bank is None and p.bank_step == -1
    p.refresh(4, lambda: torch.eye(4))
    state = p.state_dict()
    assert sorted(state) == ["bank", "bank_step"] and int(state["bank_step"]) == 4
    p.load_state_dict({})  # a checkpoint from before the bank existed changes nothing
    assert torch.equal(p.bank, torch.eye(4)) and p.bank_step == 4
    base = UniformProposal(None, [], 3)
    assert base.state_dict() == {} and base.load_state_dict({"x": torch.zeros(1)}) is None
    assert base.refresh(0, lambda: 1 / 0) is None  # the uniform proposal never encodes


# ------------------------------------------------------------------ class embeddings: templates and progress
@pytest.fixture()
def progress_log(caplog, monkeypatch):
    """Progress as log lines (what a redirected run shows), whatever the terminal and the environment."""
    import pomp_core.progress

    monkeypatch.setattr(pomp_core.progress, "interactive", lambda: False)
    monkeypatch.delenv("POMP_PROGRESS_SECONDS", raising=False)
    caplog.set_level(logging.INFO, logger="pomp_core.progress")
    return caplog


def progress_lines(caplog):
    """Each progress line up to its first comma (the rate after it varies)."""
    return [r.getMessage().split(",")[0] for r in caplog.records if r.name == "pomp_core.progress"]


def test_template_ensemble_is_the_mean_of_unit_features(tiny_clip):
    model, tokenizer, _ = tiny_clip
    names = ["cat", "hot_air_balloon", "tv"]
    templates = ["a photo of a {}.", lambda n: f"{n} in the wild", "a drawing of the {}"]
    with torch.no_grad():
        feats = [F.normalize(model.encode_text(tokenizer([t.format(n) if isinstance(t, str) else t(n)
                                                          for n in ("cat", "hot air balloon", "tv")])), dim=-1)
                 for t in templates]
    mean = (feats[0] + feats[1] + feats[2]) / 3
    raw = class_embeddings(model, tokenizer, templates, names, normalize=False)
    torch.testing.assert_close(raw, mean, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(3))  # three different directions: not unit
    unit = class_embeddings(model, tokenizer, templates, names)
    torch.testing.assert_close(unit, F.normalize(mean, dim=-1), atol=1e-5, rtol=1e-4)
    one = class_embeddings(model, tokenizer, "a photo of a {}.", names, normalize=False)
    torch.testing.assert_close(one, feats[0], atol=1e-5, rtol=1e-4)  # a single template: its unit features
    lone = class_embeddings(model, tokenizer, [templates[1]], names)
    torch.testing.assert_close(lone, feats[1], atol=1e-5, rtol=1e-4)


def test_template_ensemble_of_more_than_512_names_encodes_every_one(tiny_clip):
    model, tokenizer, _ = tiny_clip
    names = [f"thing {i}" for i in range(513)]  # texts go in chunks of 512: one more name, one more chunk
    got = class_embeddings(model, tokenizer, "{}", names, normalize=False)
    assert got.shape == (513, 48)
    rows = [0, 1, 510, 511, 512]  # either side of the chunk boundary (the plain encoder is slow on 513 rows)
    with torch.no_grad():
        want = F.normalize(model.encode_text(tokenizer([names[i] for i in rows])), dim=-1)
    torch.testing.assert_close(got[rows], want, atol=1e-5, rtol=1e-4)


def test_progress_shows_for_eight_templates_and_for_more_than_one_batch(tiny_clip, progress_log):
    model, tokenizer, _ = tiny_clip
    caplog = progress_log
    class_embeddings(model, tokenizer, ["a {}"] * 7, ["cat", "tv"])
    assert progress_lines(caplog) == []  # fewer than 8 templates: no progress
    class_embeddings(model, tokenizer, ["a {}"] * 8, ["cat", "tv"])
    assert progress_lines(caplog) == ["templates: 8/8 template (100%)"]
    caplog.clear()
    prompt = PromptLearner(n_ctx=2, width=64, init_std=0.3)
    class_embeddings(model, tokenizer, prompt, NAMES, batch_size=5)  # one batch
    class_embeddings(model, tokenizer, prompt, NAMES, batch_size=2, progress=False)
    assert progress_lines(caplog) == []
    class_embeddings(model, tokenizer, prompt, NAMES, batch_size=2)  # three batches: shown by default
    class_embeddings(model, tokenizer, prompt, NAMES, batch_size=5, progress=True)
    assert progress_lines(caplog) == [
        "class embeddings: 3/3 batch (100%)", "class embeddings: 1/1 batch (100%)"]


def test_prompted_embeddings_default_to_one_batch_of_256(tiny_clip, progress_log):
    model, tokenizer, _ = tiny_clip
    caplog = progress_log
    prompt = PromptLearner(n_ctx=2, width=64, init_std=0.3)
    names = [f"thing {i}" for i in range(257)]
    emb = class_embeddings(model, tokenizer, prompt, names[:256])
    assert progress_lines(caplog) == []
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(256))  # unit rows by default
    class_embeddings(model, tokenizer, prompt, names)
    assert progress_lines(caplog) == ["class embeddings: 2/2 batch (100%)"]


def test_class_embeddings_truncate_names_only_when_asked(tiny_clip):
    model, tokenizer, _ = tiny_clip
    prompt = PromptLearner.from_words("a photo of", model, tokenizer)
    with pytest.raises(ValueError, match="truncate_names=True"):
        class_embeddings(model, tokenizer, prompt, ["cat", LONG])
    got = class_embeddings(model, tokenizer, prompt, ["cat", LONG], normalize=False, truncate_names=True)
    cut = tokenizer.encode("a photo of") + tokenizer.encode(LONG)[:71] + tokenizer.encode(".")
    with torch.no_grad():
        want = model.encode_text(torch.tensor([[tokenizer.sot_token_id] + cut + [tokenizer.eot_token_id]]))
    torch.testing.assert_close(got[1], want[0], atol=1e-5, rtol=1e-4)


def test_repeated_names_share_the_first_rows_feature(tiny_clip):
    model, tokenizer, _ = tiny_clip
    names = ["tv", "cat", "tv", "hot_air_balloon", "cat"]
    for clf in (PromptLearner(n_ctx=3, width=64, init_std=0.4), "a photo of a {}."):
        got = class_embeddings(model, tokenizer, clf, names, allow_duplicates=True)
        want = class_embeddings(model, tokenizer, clf, ["tv", "cat", "hot_air_balloon"])
        torch.testing.assert_close(got, want[[0, 1, 0, 2, 1]])
    with pytest.raises(ValueError, match="repeats class names"):
        class_embeddings(model, tokenizer, "a photo of a {}.", names)


# ------------------------------------------------------------------ durable files: more
def test_atomic_write_makes_missing_parents_and_clears_dead_writers_temporaries(tmp_path):
    path = tmp_path / "a" / "b" / "c.json"
    assert durable.atomic_write_json(path, [1, 2]) == path and json.loads(path.read_text()) == [1, 2]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = path.with_name(f"c.json.{socket.gethostname()}-{dead.pid}-0000.tmp")  # a killed run's
    stale.write_text("half")
    durable.atomic_write_text(path, "[3]")
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.json"] and path.read_text() == "[3]"


def test_atomic_write_raises_the_bodys_error_even_when_its_temporary_is_gone(tmp_path):
    path = tmp_path / "x.txt"
    with pytest.raises(RuntimeError, match="the body failed"):
        with durable.atomic_write(path, "w") as f:
            os.unlink(f.name)  # the temporary cannot be removed any more
            raise RuntimeError("the body failed")
    assert list(tmp_path.iterdir()) == []


def test_export_prompt_explicit_fp16_and_a_best_flag_on_an_epoch_zero(tmp_path, export_prompt):
    import pomp_core

    prompt = PromptLearner(n_ctx=3, width=8, init_std=0.3)
    src = pomp_core.save_prompt(prompt, tmp_path / "p.pth", epoch=0)  # epoch 0 is an epoch, not "none"
    path = export_prompt.main(["--prompt", str(src), "--out", str(tmp_path / "rel"), "--dtype", "fp16", "--best"])
    assert path == tmp_path / "rel" / "prompt_learner" / "model.pth.tar-0"
    for name in ("model.pth.tar-0", "model-best.pth.tar"):
        epoch, ctx = release_file(path.parent / name)
        assert epoch == 0 and ctx.dtype == torch.float16 and torch.equal(ctx, prompt.ctx.detach().half())


def test_atomic_write_syncs_the_whole_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    import stat

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync folder",) if stat.S_ISDIR(st.st_mode) else ("fsync file", st.st_size))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(src).parent == Path(dst).parent, Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(durable.os, "fsync", fsync)
    monkeypatch.setattr(durable.os, "replace", replace)
    durable.atomic_write_text(tmp_path / "a.txt", "hello")
    # the temporary sits beside the target (an atomic rename), complete on disk before it
    assert events == [("fsync file", 5), ("replace", True, "a.txt"), ("fsync folder",)]
    assert (tmp_path / "a.txt").read_text() == "hello"


def test_kill_point_flushes_the_logs_before_the_kill(monkeypatch):
    events = []
    monkeypatch.setattr(durable.logging, "shutdown", lambda: events.append("logs flushed"))
    monkeypatch.setattr(durable.os, "kill", lambda pid, sig: events.append(("kill", pid, sig)))
    monkeypatch.setenv(durable.KILL_ENV, "save:2")
    durable.kill_point("save", 1)
    assert events == []
    durable.kill_point("save", 2)
    assert events == ["logs flushed", ("kill", os.getpid(), signal.SIGKILL)]


def test_prompted_names_are_batched_by_token_length(tiny_clip, monkeypatch):
    """Batches of similar length (each is cut after its longest name), each with its class rows."""
    model, tokenizer, _ = tiny_clip
    batches = []
    real = PromptedTextEncoder.__call__

    def spy(self, prompt, names, class_ids=None, truncate=True):
        batches.append((list(names), class_ids.tolist()))
        return real(self, prompt, names, class_ids=class_ids, truncate=truncate)

    monkeypatch.setattr(PromptedTextEncoder, "__call__", spy)
    class_embeddings(model, tokenizer, PromptLearner(n_ctx=2, width=64), NAMES, batch_size=2)
    # name tokens: fish 7, cat 1, hot air balloon 3, tv 1, bus 4; equal lengths keep vocabulary order
    assert batches == [(["cat", "tv"], [1, 3]), (["hot_air_balloon", "red double decker bus"], [2, 4]),
                       (["a rather long kind of tropical fish"], [0])]
