"""Real scale: the 10,450 winter21 classes from timm's files, and 2 processes with a slow rank 0."""
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pomp_core.pretrain import data as pdata
from pomp_core.pretrain.config import load_config
from pomp_core.pretrain.trainer import Pretrainer

REPO = Path(__file__).resolve().parents[3]


def jpeg_blobs(n: int, size: int = 12):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


def imagenet21k_folders(root: Path, wnids, per_class: int = 1) -> Path:
    """ImageNet-21K layout: <root>/<wnid>/<wnid>_<i>.JPEG."""
    blobs = jpeg_blobs(16)
    for c, wnid in enumerate(wnids):
        (root / wnid).mkdir(parents=True)
        for i in range(per_class):
            (root / wnid / f"{wnid}_{i}.JPEG").write_bytes(blobs[(c + i) % len(blobs)])
    return root


@pytest.mark.slow
def test_winter21_rehearsal_with_duplicates_validation_and_similarity(tmp_path):
    wnids = pdata.timm_info_file("imagenet21k_miil_w21_synsets.txt").read_text().split()
    assert len(wnids) == 10450 and wnids == sorted(wnids)
    names = pdata.read_class_names(wnids, lemmas="timm")
    counts = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    repeated = {n for n, c in counts.items() if c > 1}
    assert len(repeated) == 661  # first-lemma names shared by several winter21 classes
    root = imagenet21k_folders(tmp_path / "imagenet21k_train", wnids)
    val_root = imagenet21k_folders(tmp_path / "imagenet21k_val", wnids[::500], per_class=2)
    out = tmp_path / "out"
    cfg = load_config(str(REPO / "configs/pomp/vit_b16_ctx4_k1000_5ep.yaml"), [
        "model.name=pomp-tiny", "model.pretrained=null", f"data.root={root}", f"data.val_root={val_root}",
        "data.miil_tree=null", "data.lemmas=timm", "data.shots=1", "data.views=2", "data.image_size=32",
        "data.workers=0", "sampling.proposal=similarity", "sampling.refresh_steps=2", "optim.batch_size=4",
        "train.max_steps=3", "train.device=cpu", "train.tensorboard=false", "train.log_every=1",
        f"train.output_dir={out}", f"data.index_cache={tmp_path / 'index'}"])
    assert (cfg.sampling.k, cfg.optim.schedule, cfg.data.randaugment) == (1000, "epoch_cosine", "dassl")
    trainer = Pretrainer(cfg)
    trainer.setup()
    assert trainer.num_classes == 10450 and trainer.class_names == names
    assert len(trainer.index.val) == 2 * len(wnids[::500])
    trainer.fit()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 3 and all(np.isfinite(r["loss"]) for r in steps)
    assert all(r["classes_encoded"] >= 1000 for r in steps)
    assert all(r["lr"] == 1e-5 for r in steps)  # epoch 0 of the release's schedule: constant warmup
    val = [r["val_top1"] for r in rows if "val_top1" in r]
    assert len(val) == 1 and 0.0 <= val[0] <= 1.0
    # the similarity bank was refreshed at step 2 over all classes; repeated names share a row
    bank = trainer.proposal.bank
    assert trainer.proposal.bank_step == 2 and bank.shape[0] == 10450
    first = {}
    for k, n in enumerate(names):
        first.setdefault(n, k)
    twin = torch.tensor([first[n] for n in names])  # row of the first class of each name
    repeats = twin != torch.arange(len(names))
    assert int(repeats.sum()) == 754
    torch.testing.assert_close(bank[repeats], bank[twin[repeats]], atol=1e-5, rtol=0)
    other = torch.tensor([first[n] for n in sorted(first)][:50])  # distinct names differ
    assert (torch.cdist(bank[other], bank[other]) + torch.eye(50)).min() > 1e-3


DRIVER = """
import os, runpy, sys, time
from pomp_core.pretrain import train_data as D, trainer as T
slow = float(os.environ["SLOW_RANK0_S"])
def slowly(fn):
    def wrapped(*args, **kwargs):
        if os.environ["RANK"] == "0":
            time.sleep(slow)
        return fn(*args, **kwargs)
    return wrapped
for name in os.environ["SLOW_IN"].split(","):
    if name == "build_split_index":
        D.build_split_index = slowly(D.build_split_index)
    else:
        setattr(T.Pretrainer, name, slowly(getattr(T.Pretrainer, name)))
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.xdist_group("two-process")  # ranks on both cores: never beside another two-process test
@pytest.mark.slow
def test_slow_rank0_waits_past_a_short_process_group_timeout(tmp_path):
    """2 gloo processes, dist_timeout_s=2: rank 0 sleeps 5 s scanning the folders and validating;
    the other rank waits in the rank-0 group instead of timing out. A step slowed the same way
    (a training collective) does time out, so the short timeout is really in force."""
    root = imagenet21k_folders(tmp_path / "train", [f"n{c:08d}" for c in range(6)], per_class=5)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"

    def run(out: str, slow_in: str):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "SLOW_RANK0_S": "5",
               "SLOW_IN": slow_in}
        args = ["model.name=pomp-tiny", "model.pretrained=null", f"data.root={root}", "data.shots=4",
                "data.val_per_class=1", "data.views=1", "data.image_size=32", "data.workers=0",
                "data.augment=false", "sampling.k=4", "optim.batch_size=2", "optim.epochs=2",
                "train.device=cpu", "train.tensorboard=false", "train.dist_timeout_s=2",
                f"train.output_dir={tmp_path / out}", f"data.index_cache={tmp_path / out / 'index'}"]
        cmd = [torchrun, "--standalone", "--nproc_per_node", "2", str(driver), str(REPO / "tools/pretrain.py")]
        return subprocess.run(cmd + args, env=env, capture_output=True, text=True, timeout=600)

    ok = run("ok", "build_split_index,evaluate")
    assert ok.returncode == 0, ok.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "ok" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if "val_top1" in r]) == 2
    bad = run("bad", "train_step")
    assert bad.returncode != 0
    assert "timed out" in bad.stderr.lower() or "timeout" in bad.stderr.lower(), bad.stderr[-3000:]
