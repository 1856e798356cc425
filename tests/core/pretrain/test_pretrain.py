import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pomp_core
from pomp_core import images
from pomp_core.pretrain import data as pdata
from pomp_core.pretrain.config import load_config
from pomp_core.pretrain.trainer import Pretrainer, lr_at
from pomp_core.text_tower import text_tower
from tests.tool_scripts import load_tool

REPO = Path(__file__).resolve().parents[3]
NAMES = ["red square", "green circle", "blue triangle", "yellow star", "purple ring", "orange cross"]


def make_class_folders(root: Path, per_class: int = 6, classes=NAMES) -> Path:
    """Folder per class (wnid-like ids), images whose colour depends on the class."""
    rng = np.random.default_rng(0)
    lines = []
    for c, name in enumerate(classes):
        wnid = f"n{c:08d}"
        (root / wnid).mkdir(parents=True)
        for i in range(per_class):
            base = np.array([(37 * c) % 256, (91 * c) % 256, (151 * c) % 256])
            img = np.clip(base + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / wnid / f"{i}.png")
        lines.append(f"{wnid} {name}")
    (root.parent / "names.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def world(tmp_path):
    root = make_class_folders(tmp_path / "images")
    return root, root.parent / "names.txt"


def overrides(root, names, out, **extra):
    base = {
        "model.name": "pomp-tiny", "model.pretrained": "null", "data.root": str(root),
        "data.names_file": str(names), "data.shots": 4, "data.views": 2, "data.image_size": 32,
        "data.workers": 0, "sampling.k": 4, "optim.batch_size": 4, "optim.epochs": 2,
        "optim.lr": 0.5, "optim.warmup_epochs": 0, "train.output_dir": str(out),
        "train.log_every": 1, "train.tensorboard": "false", "train.device": "cpu",
        "data.index_cache": str(out.parent / "index"),
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def run_tool(argv):
    return load_tool("pretrain").main(argv)


# ---------------------------------------------------------------- config
def test_shipped_configs_load():
    c4 = load_config(str(REPO / "configs/pomp/vit_b16_ctx4_k1000_5ep.yaml"))
    assert (c4.model.name, c4.prompt.n_ctx, c4.sampling.k, c4.optim.epochs) == ("ViT-B-16-quickgelu", 4, 1000, 5)
    c16 = load_config(str(REPO / "configs/pomp/vit_b16_ctx16_k1000_20ep.yaml"), ["sampling.k=256"])
    assert (c16.prompt.n_ctx, c16.optim.epochs, c16.sampling.k, c16.optim.lr) == (16, 20, 256, 0.002)
    assert load_config(str(REPO / "configs/pomp/vit_b32_ctx4_k1000_5ep.yaml")).model.name == "ViT-B-32-quickgelu"


def test_unknown_config_keys_are_named():
    with pytest.raises(KeyError, match=r"'sampling.kk' is not a config key.*did you mean \['k'\]"):
        load_config(None, ["sampling.kk=3"])
    with pytest.raises(KeyError, match="has no 'optimizer'"):
        load_config(None, ["optimizer.lr=3"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        load_config(None, ["sampling.k"])
    with pytest.raises(FileNotFoundError):
        load_config("/no/such.yaml")


def test_lr_schedule_warmup_then_cosine():
    cfg = load_config(None, ["optim.epochs=3", "optim.warmup_epochs=1", "optim.lr=0.002", "optim.warmup_lr=1e-5",
                             "optim.schedule=step_cosine"])
    assert lr_at(0, 10, cfg) == lr_at(9, 10, cfg) == 1e-5
    assert lr_at(10, 10, cfg) == pytest.approx(0.002)
    assert lr_at(20, 10, cfg) == pytest.approx(0.001)
    assert lr_at(29, 10, cfg) < 1e-4


# ------------------------------------------------------------------ data
def test_split_index_is_seeded_and_cached(world, tmp_path):
    root, _ = world
    a = pdata.build_split_index(root, shots=3, val_per_class=2, seed=42, cache_dir=tmp_path / "c")
    assert len(a.train) == 18 and len(a.val) == 12
    assert not set(a.train) & set(a.val)
    assert sorted({y for _, y in a.train}) == list(range(6))
    # the cached index is reused without rescanning: a new image does not show up
    Image.new("RGB", (8, 8)).save(root / "n00000000" / "new.png")
    b = pdata.build_split_index(root, shots=3, val_per_class=2, seed=42, cache_dir=tmp_path / "c")
    assert b.train == a.train and b.val == a.val
    other = pdata.build_split_index(root, shots=3, val_per_class=2, seed=7, cache_dir=tmp_path / "c")
    assert other.train != a.train


def test_class_names_sources(world, tmp_path):
    root, names = world
    folders = pdata.list_class_folders(root)
    assert pdata.read_class_names(folders, names_file=names) == NAMES
    plain = tmp_path / "plain.txt"
    plain.write_text("\n".join(n.replace(" ", "_") for n in NAMES))
    assert pdata.read_class_names(folders, names_file=plain) == NAMES
    tree = tmp_path / "imagenet21k_miil_tree.pth"
    torch.save({"class_list": folders, "child_2_parent": {}, "class_tree_list": [],
                "class_description": dict(zip(folders, NAMES))}, tree)
    assert pdata.read_class_names(folders, miil_tree=tree) == NAMES
    short = tmp_path / "short.txt"
    short.write_text("\n".join(f"{f} x{i}" for i, f in enumerate(folders[:4])))
    with pytest.raises(ValueError, match=r"no class name for 2 folders.*n00000004"):
        pdata.read_class_names(folders, names_file=short)
    short.write_text("\n".join(NAMES[:4]))
    with pytest.raises(ValueError, match="4 lines for 6 class folders"):
        pdata.read_class_names(folders, names_file=short)
    with pytest.raises(ValueError, match="no class name for 1 folders"):
        torch.save({"class_description": dict(zip(folders[:5], NAMES))}, tree)
        pdata.read_class_names(folders, miil_tree=tree)


def test_empty_class_folder_fails_before_training(world, tmp_path):
    root, _ = world
    (root / "n99999999").mkdir()
    with pytest.raises(ValueError, match="1 class folders hold no images.*n99999999"):
        pdata.build_split_index(root, cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="one folder per class"):
        pdata.build_split_index(tmp_path / "missing")


def test_corrupt_images_are_skipped_and_counted(world, tmp_path):
    root, names = world
    (root / "n00000001" / "0.png").write_bytes(b"\x89PNG broken")
    index = pdata.build_split_index(root, shots=100, cache_dir=tmp_path)
    ds = images.ImageListDataset(root, index.train, images.eval_transform(32), views=2)
    batch = images.collate_skipping([ds[i] for i in range(len(ds))])
    assert int(batch["skipped"]) == 1 and batch["images"].shape == (35, 2, 3, 32, 32)
    # more unreadable images than tolerated: a clear error, the checkpoint kept
    for f in (root / "n00000002").iterdir():
        f.write_bytes(b"garbage")
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match=r"unreadable images, more than data.max_skipped=2"):
        run_tool(overrides(root, names, out, **{"data.max_skipped": 2, "data.shots": 6, "optim.batch_size": 36,
                                                 "optim.epochs": 1}))


def test_augmentation_is_seeded_per_sample(world, tmp_path):
    root, _ = world
    index = pdata.build_split_index(root, cache_dir=tmp_path)
    ds = images.ImageListDataset(root, index.train, pdata.train_transform(32), views=2, seed=3)
    a, b = ds[5][0], ds[5][0]
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])
    ds.set_epoch(1)
    assert not torch.equal(ds[5][0], a)


# -------------------------------------------------------------- training
def test_short_run_learns_and_writes_its_outputs(world, tmp_path):
    """The training objective (full softmax over all classes, every training image) goes down."""
    root, names = world
    out = tmp_path / "run"
    trainer = Pretrainer(load_config(None, overrides(root, names, out, **{"optim.epochs": 10})))
    trainer.setup()
    ds = images.ImageListDataset(root, trainer.index.train, images.eval_transform(32))
    batch = images.collate_skipping([ds[i] for i in range(len(ds))])

    def full_loss() -> float:
        with torch.no_grad():
            img = torch.nn.functional.normalize(trainer.model.encode_image(batch["images"][:, 0]), dim=-1)
            logits = trainer.model.logit_scale.exp() * img @ trainer.encode_all_classes().t()
        return torch.nn.functional.cross_entropy(logits, batch["labels"]).item()

    before = full_loss()
    final = trainer.fit()
    after = full_loss()
    assert after < before - 0.05, (before, after)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 61))
    assert all({"loss", "acc_k", "lr", "images_per_s"} <= r.keys() for r in rows)
    prompt = pomp_core.load_prompt(final)
    assert prompt.n_ctx == 4 and prompt.model_name == "pomp-tiny"
    torch.testing.assert_close(prompt.ctx, trainer.prompt.ctx.detach())
    assert (out / "training_curves.png").stat().st_size > 1000
    assert (out / "checkpoint.pth").is_file() and not list(out.glob("*.tmp"))


def test_resume_after_interrupt_gives_the_uninterrupted_prompt(world, tmp_path, monkeypatch):
    root, names = world
    args = dict(**{"optim.epochs": 3, "optim.lr": 0.2, "optim.warmup_epochs": 1, "optim.warmup_lr": 0.01,
                   "sampling.proposal": "similarity", "sampling.refresh_steps": 4})
    full = pomp_core.load_prompt(run_tool(overrides(root, names, tmp_path / "a", **args)))

    real_step = Pretrainer.train_step

    def interrupting(self, batch):
        if self.step == 7:  # mid-epoch 2 (6 steps per epoch)
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(Pretrainer, "train_step", interrupting)
    with pytest.raises(KeyboardInterrupt):
        run_tool(overrides(root, names, tmp_path / "b", **args))
    assert torch.load(tmp_path / "b" / "checkpoint.pth", weights_only=True)["step"] == 7
    monkeypatch.setattr(Pretrainer, "train_step", real_step)
    resumed = pomp_core.load_prompt(run_tool(["--resume"] + overrides(root, names, tmp_path / "b", **args)))
    torch.testing.assert_close(resumed.ctx, full.ctx, atol=1e-6, rtol=0)
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), "metrics after the checkpoint must not be duplicated"


@pytest.mark.parametrize("proposal", ["frequency", "similarity"])
def test_other_proposals_train(world, tmp_path, proposal):
    root, names = world
    out = tmp_path / proposal
    run_tool(overrides(root, names, out, **{"sampling.proposal": proposal, "optim.epochs": 1,
                                            "sampling.refresh_steps": 2}))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in rows if "loss" in r)


def test_feature_cache_runs_the_image_tower_once(world, tmp_path, monkeypatch):
    root, names = world
    calls = []
    real = Pretrainer.image_features

    def counting(self, batch):
        calls.append(batch["images"].dim())
        return real(self, batch)

    monkeypatch.setattr(Pretrainer, "image_features", counting)
    out = tmp_path / "cached"
    run_tool(overrides(root, names, out, **{"train.feature_cache": "true", "train.cache_views": 3,
                                            "optim.epochs": 3}))
    pixel_calls = sum(1 for d in calls if d == 5)
    assert pixel_calls == 3  # 24 images in one batch of 64, once per cached view
    assert sum(1 for d in calls if d == 3) == 18  # 3 epochs x 6 steps from cached features
    assert len(list((out / "feature_cache").glob("*.valid.npy"))) == 1


@pytest.mark.xdist_group("two-process")  # ranks on both cores: never beside another two-process test
@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(world, tmp_path):
    """torchrun, gloo, 2 x batch 2 == 1 x batch 4 (K = N: the negatives are every class)."""
    root, names = world
    common = {"sampling.k": 6, "optim.epochs": 2, "optim.lr": 0.2}
    one = pomp_core.load_prompt(run_tool(overrides(root, names, tmp_path / "one", **common)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", str(REPO / "tools/pretrain.py")] + \
        overrides(root, names, tmp_path / "two", **{**common, "optim.batch_size": 2})
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = pomp_core.load_prompt(tmp_path / "two" / "prompt.pth")
    torch.testing.assert_close(two.ctx, one.ctx, atol=1e-5, rtol=1e-4)
    assert (one.ctx - pomp_core.PromptLearner(4, 64).ctx).abs().max() > 1e-3


def test_validation_tensorboard_bf16_and_checkpointing(world, tmp_path):
    root, names = world
    out = tmp_path / "val"
    run_tool(overrides(root, names, out, **{"data.shots": 3, "data.val_per_class": 2, "optim.epochs": 2,
                                            "train.tensorboard": "true", "train.precision": "bf16",
                                            "model.grad_checkpointing": "true"}))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_top1"] for r in rows if "val_top1" in r]
    assert len(val) == 2 and all(0.0 <= v <= 1.0 for v in val)
    assert all(math.isfinite(r["loss"]) for r in rows if "loss" in r)
    assert list((out / "tb").glob("events.out.tfevents.*"))


def test_gradient_checkpointing_gives_the_same_gradient(tiny_clip):
    model, tokenizer, _ = tiny_clip
    tower = text_tower(model).transformer
    grads = []
    for ckpt in (False, True):
        tower.grad_checkpointing = ckpt
        prompt = pomp_core.PromptLearner(4, 64, ctx=torch.ones(4, 64) * 0.01)
        pomp_core.PromptedTextEncoder(model, tokenizer)(prompt, ["cat", "hot air balloon"]).sum().backward()
        grads.append(prompt.ctx.grad)
    tower.grad_checkpointing = False
    torch.testing.assert_close(grads[0], grads[1])


def test_missing_data_root_is_named(tmp_path):
    with pytest.raises(ValueError, match="data.root is not set"):
        Pretrainer(load_config(None, ["train.output_dir=" + str(tmp_path), "train.device=cpu"])).setup()
