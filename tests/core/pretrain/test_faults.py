"""Pre-training killed (a real SIGKILL of the real process, through POMP_KILL_AT) at each
moment a long run can die, requeued each time with the same ``--resume`` command line,
ends with the uninterrupted run's prompt bit for bit and each metrics row once."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pomp_core
from pomp_core.durable import KILL_ENV
from pomp_core.pretrain.checkpoint import CHECKPOINT, PREVIOUS, load_checkpoint, save_checkpoint
from pomp_core.pretrain.config import load_config
from pomp_core.pretrain.feature_cache import build_feature_cache
from pomp_core.pretrain.trainer import Pretrainer
from tests.core.pretrain.test_pretrain import REPO, make_class_folders, overrides, run_tool

# 24 training images, batch 4: 6 steps per epoch, 18 in all; checkpoints every 2 steps and at
# epoch ends, metrics every 3, validation at steps 6, 12 and 18
ARGS = {"data.shots": 4, "data.val_per_class": 1, "optim.epochs": 3, "optim.lr": 0.2,
        "optim.warmup_epochs": 1, "optim.warmup_lr": 0.01, "sampling.proposal": "similarity",
        "sampling.refresh_steps": 4, "train.log_every": 3, "train.save_every": 2,
        "train.feature_cache": "true", "train.cache_views": 2, "train.tensorboard": "true"}


def run_args(root, names, out):
    return ["--resume"] + overrides(root, names, out, **ARGS, **{"train.feature_cache_dir": str(out / "cache")})


def killed_at(point, argv):
    env = {**os.environ, KILL_ENV: point, "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same float sums as this process
    proc = subprocess.run([sys.executable, str(REPO / "tools/pretrain.py"), *argv], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr[-3000:])
    return proc.stderr


def rows_without_timing(out):
    return [{k: v for k, v in r.items() if k != "images_per_s"}
            for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


def tensorboard_steps(out, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = make_class_folders(tmp_path_factory.mktemp("faults") / "images")
    return root, root.parent / "names.txt"


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    root, names = world
    out = tmp_path_factory.mktemp("reference") / "run"
    return out, pomp_core.load_prompt(run_tool(run_args(root, names, out)))


@pytest.mark.slow
def test_killed_at_every_moment_and_requeued_gives_the_uninterrupted_run(world, reference, tmp_path):
    root, names = world
    ref_out, ref_prompt = reference
    out = tmp_path / "run"
    argv = run_args(root, names, out)
    index = out.parent / "index"

    killed_at("scan", argv)  # while scanning the class folders
    assert not list(index.glob("*.json"))
    killed_at("feature_cache", argv)  # while building the image-feature cache
    assert list((out / "cache").glob("*.tmp.npy")) and not list((out / "cache").glob("*[0-9a-f].npy"))
    log = killed_at("step:2", argv)  # after the first checkpoint, before the first metrics line
    assert "no checkpoint" in log and "starting from scratch" in log
    assert load_checkpoint(out / CHECKPOINT)["step"] == 2 and not (out / "metrics.jsonl").exists()
    killed_at("step:9", argv)  # mid-epoch, a metrics line written after the last checkpoint (8)
    assert [r["step"] for r in rows_without_timing(out)][-1] == 9
    killed_at("checkpoint_rotate:10", argv)  # while saving: the newest moved aside, the new not in place
    assert not (out / CHECKPOINT).exists() and load_checkpoint(out / PREVIOUS)["step"] == 8
    killed_at("validation:12", argv)  # during the epoch-end validation
    assert load_checkpoint(out / CHECKPOINT)["pending_validation"]
    killed_at("curves", argv)  # the final prompt written, the curves being written
    assert (out / "prompt.pth").is_file() and not (out / "training_curves.png").exists()

    final = pomp_core.load_prompt(run_tool(argv))
    assert torch.equal(final.ctx, ref_prompt.ctx)
    rows = rows_without_timing(out)
    assert rows == rows_without_timing(ref_out)  # each row once, the same losses bit for bit
    assert [r["step"] for r in rows if "val_top1" in r] == [6, 12, 18]
    assert tensorboard_steps(out, "loss") == tensorboard_steps(ref_out, "loss")
    assert [s for s, _ in tensorboard_steps(out, "val_top1")] == [6, 12, 18]
    assert (out / "training_curves.png").stat().st_size > 1000
    leftovers = [p.name for p in [*out.rglob("*"), *index.rglob("*")] if "tmp" in p.name]
    assert not leftovers, leftovers
    assert len(list((out / "cache").glob("*.npy"))) == 2  # features and readable-image mask

    # a truncated newest checkpoint (a full disk): the error names it; the previous one resumes
    ckpt = out / CHECKPOINT
    ckpt.write_bytes(ckpt.read_bytes()[:2000])
    with pytest.raises(ValueError, match=rf"checkpoint {ckpt} is damaged.*--checkpoint {out / PREVIOUS}"):
        run_tool(argv)
    again = pomp_core.load_prompt(run_tool(["--checkpoint", str(out / PREVIOUS)] + argv[1:]))
    assert torch.equal(again.ctx, ref_prompt.ctx)


def test_explicit_checkpoint_must_exist(world, tmp_path):
    root, names = world
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=f"--checkpoint {missing} does not exist"):
        run_tool(["--checkpoint", str(missing)] + overrides(root, names, tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # failed before any set-up


def test_keeps_the_last_two_checkpoints(tmp_path):
    for step in (2, 4, 6):
        save_checkpoint({"format": "pomp-pretrain-checkpoint", "step": step}, tmp_path, step)
    assert load_checkpoint(tmp_path / CHECKPOINT)["step"] == 6
    assert load_checkpoint(tmp_path / PREVIOUS)["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT, PREVIOUS]
    (tmp_path / PREVIOUS).write_bytes(b"")
    with pytest.raises(ValueError, match=rf"{tmp_path / PREVIOUS} is damaged.*start again"):
        load_checkpoint(tmp_path / PREVIOUS)


def test_runs_sharing_a_feature_cache_folder_do_not_clash(world, tmp_path):
    """A second run completes the same cache while the first is building it: the first
    publishes nothing of its own and reads the completed cache."""
    root, names = world
    trainer = Pretrainer(load_config(None, overrides(root, names, tmp_path / "run", **ARGS)))
    trainer.setup()  # builds and publishes the cache in <run>/feature_cache
    from pomp_core.images import ImageListDataset, eval_transform

    images = ImageListDataset(trainer.index.root, trainer.index.train, eval_transform(32), views=1, seed=1)
    folder, real, inner = tmp_path / "shared", trainer.image_features, []

    def image_features(batch):
        if not inner:  # the other run starts and finishes during this run's first batch
            trainer.image_features = real
            inner.append(build_feature_cache(trainer, images, folder))
            trainer.image_features = image_features
        return real(batch) + 1.0  # this run's features differ: whose file is read shows

    trainer.image_features = image_features
    feats, valid = build_feature_cache(trainer, images, folder)
    np.testing.assert_array_equal(feats, inner[0][0])  # the first complete cache won
    assert valid.all() and feats.shape[:2] == (24, 2)
    assert sorted(p.suffix for p in folder.iterdir()) == [".npy", ".npy"]
