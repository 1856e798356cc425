"""The POMP release's recipe (Dassl): per-epoch lr schedule, RandAugment2, precision options."""
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pomp_core.pretrain import augment, data as pdata
from pomp_core.pretrain.config import load_config
from pomp_core.pretrain.trainer import Pretrainer, lr_at

REPO = Path(__file__).resolve().parents[3]
RELEASE_CONFIGS = ["vit_b16_ctx4_k1000_5ep.yaml", "vit_b16_ctx16_k1000_20ep.yaml", "vit_b32_ctx4_k1000_5ep.yaml"]

# Dassl's randaugment_list2 as (name, min, max); Rotate/Shear/Translate flip their sign at p=1/2
DASSL_LIST2 = [("AutoContrast", 0, 1), ("Brightness", 0.1, 1.9), ("Color", 0.1, 1.9), ("Contrast", 0.1, 1.9),
               ("Equalize", 0, 1), ("Identity", 0, 1), ("Invert", 0, 1), ("Posterize", 4, 8),
               ("Rotate", -30, 30), ("Sharpness", 0.1, 1.9), ("ShearX", -0.3, 0.3), ("ShearY", -0.3, 0.3),
               ("Solarize", 0, 256), ("TranslateX", -0.3, 0.3), ("TranslateY", -0.3, 0.3)]
SIGNED = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"}


def dassl_schedule(lr, warmup_lr, warmup_epochs, epochs):
    """Per-epoch lr of Dassl's ConstantWarmupScheduler over torch's CosineAnnealingLR(T_max=epochs),
    stepped at each epoch end (WARMUP_RECOUNT=True)."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(epochs))
    out = []
    for epoch in range(epochs):
        if epoch < warmup_epochs:
            out.append(warmup_lr)
        else:
            out.append(cosine.get_last_lr()[0])
            optimizer.step()  # (no gradient: only keeps torch from warning about the order)
            cosine.step()
    return out


@pytest.mark.parametrize("config", RELEASE_CONFIGS)
def test_release_configs_use_the_dassl_recipe(config):
    cfg = load_config(str(REPO / "configs/pomp" / config))
    assert (cfg.optim.schedule, cfg.data.randaugment, cfg.data.augment) == ("epoch_cosine", "dassl", True)
    assert (cfg.optim.warmup_epochs, cfg.optim.warmup_lr, cfg.optim.lr) == (1, 1e-5, 0.002)
    steps = 7
    ours = [lr_at(e * steps + s, steps, cfg) for e in range(cfg.optim.epochs) for s in range(steps)]
    ref = dassl_schedule(0.002, 1e-5, 1, cfg.optim.epochs)
    np.testing.assert_allclose(ours, np.repeat(ref, steps), rtol=1e-9, atol=0)  # constant within an epoch


def test_epoch_cosine_values_and_the_step_option():
    cfg = load_config(None, ["optim.epochs=5"])
    per_epoch = [lr_at(e * 3, 3, cfg) for e in range(5)]
    np.testing.assert_allclose(per_epoch, [1e-5, 2e-3, 1.809e-3, 1.309e-3, 0.691e-3], atol=1e-6)
    np.testing.assert_allclose(lr_at(0, 3, load_config(None, ["optim.epochs=4", "optim.warmup_epochs=0"])), 2e-3)
    step = load_config(None, ["optim.epochs=5", "optim.schedule=step_cosine"])
    assert lr_at(3, 3, step) == pytest.approx(2e-3) and lr_at(4, 3, step) < 2e-3  # moves within an epoch
    with pytest.raises(ValueError, match="optim.schedule must be epoch_cosine or step_cosine"):
        lr_at(0, 3, load_config(None, ["optim.schedule=linear"]))


def release_plan(rng: random.Random, n: int = 2, p: float = 0.6):
    """Dassl's RandAugment2.__call__ draws: random.choices, then per op skip / magnitude / sign."""
    out = []
    for name, low, high in rng.choices(DASSL_LIST2, k=n):
        if rng.random() > p:
            out.append((name, None))
            continue
        value = rng.random() * (high - low) + low
        if name in SIGNED and rng.random() > 0.5:
            value = -value
        out.append((name, value))
    return out


def test_randaugment2_draws_follow_dassl():
    assert [(name, lo, hi) for name, lo, hi, _, _ in augment.OPS] == DASSL_LIST2
    ours = augment.RandAugment2(rng=random.Random(5))
    ref = random.Random(5)
    for _ in range(500):
        assert ours.plan() == release_plan(ref)
    # torch-seeded draws: each op applied on its own at p = 0.6, magnitudes across the range
    torch.manual_seed(0)
    plans = [augment.RandAugment2().plan() for _ in range(3000)]
    ops = [op for plan in plans for op in plan]
    applied = np.mean([v is not None for _, v in ops])
    assert abs(applied - 0.6) < 0.02
    assert {name for name, _ in ops} == {name for name, _, _ in DASSL_LIST2}
    both = np.mean([all(v is not None for _, v in plan) for plan in plans])
    assert abs(both - 0.36) < 0.03  # independent per op, not one block at 0.6
    rot = [v for name, v in ops if name == "Rotate" and v is not None]
    assert min(rot) < -25 and max(rot) > 25


def test_randaugment2_ops_and_seeding():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (17, 20, 3), dtype=np.uint8))
    ops = {name: op for name, _, _, _, op in augment.OPS}
    assert np.array_equal(np.asarray(ops["Invert"](img, 0.3)), 255 - np.asarray(img))
    assert np.array_equal(np.asarray(ops["Identity"](img, 0.3)), np.asarray(img))
    assert np.array_equal(np.asarray(ops["Posterize"](img, 4.9)), np.asarray(img) & 0xF0)
    shifted = np.asarray(ops["TranslateX"](img, 0.3))  # content moves left by 0.3 * width (6 px)
    assert np.array_equal(shifted[:, :14], np.asarray(img)[:, 6:]) and not shifted[:, 14:].any()
    outs = []
    for _ in range(2):
        torch.manual_seed(11)
        outs.append(np.asarray(pdata.train_transform(16)(img)))
    assert np.array_equal(outs[0], outs[1])
    assert pdata.train_transform(16, "torchvision")(img).shape == (3, 16, 16)
    with pytest.raises(ValueError, match="data.randaugment must be 'dassl' or 'torchvision'"):
        pdata.train_transform(16, "autoaugment")


def test_fp16_weights_needs_a_gpu(tmp_path):
    (tmp_path / "img" / "n00000001").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "n00000001" / "a.png")
    cfg = load_config(None, [f"data.root={tmp_path / 'img'}", f"train.output_dir={tmp_path / 'out'}",
                             "train.device=cpu", "train.precision=fp16_weights"])
    with pytest.raises(ValueError, match="fp16_weights .* needs a GPU"):
        Pretrainer(cfg).setup()


def test_repeated_names_policy(tiny_clip):
    """Label-indexed vocabularies (training) allow repeats; name-labelled ones reject them."""
    import pomp_core

    model, tokenizer, _ = tiny_clip
    prompt = pomp_core.PromptLearner(n_ctx=4, width=64, init_std=0.3)
    names = ["crane", "bow (weapon)", "crane", "cat"]
    with pytest.raises(ValueError, match=r"repeats class names \['crane'\] \(1 in all\).*Rename them apart"):
        pomp_core.class_embeddings(model, tokenizer, prompt, names)
    emb = pomp_core.class_embeddings(model, tokenizer, prompt, names, allow_duplicates=True)
    torch.testing.assert_close(emb[0], emb[2])
    assert (emb[0] - emb[1]).abs().max() > 1e-3
    assert pomp_core.load_vocabulary("a,b,a", allow_duplicates=True) == ["a", "b", "a"]
