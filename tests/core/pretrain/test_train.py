"""Pre-training as the release runs it: nested sampling keys and the proposal registry, model
selection (every epoch kept, the best on validation), ranks in lockstep whatever their data,
micro-batch accumulation, the release's seed, K >= N and fp16."""
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

import pomp_core
from tests.tool_scripts import load_tool
from pomp_core.prompt_io import read_extra
from pomp_core.pretrain import proposals
from pomp_core.pretrain.config import RENAMED, load_config
from pomp_core.pretrain.contrast import build_contrast_batch, local_contrast_logits, local_contrast_loss
from pomp_core.images import ImageListDataset
from pomp_core.pretrain.trainer import Pretrainer, step_generator
from tests.core.pretrain.test_pretrain import REPO, make_class_folders, overrides, run_tool


@pytest.fixture
def world(tmp_path):
    root = make_class_folders(tmp_path / "images")
    return root, root.parent / "names.txt"


def rows(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------ config and registry
@pytest.mark.parametrize("old, value, new", [
    ("sampling.proposal", "similarity", ("name",)),
    ("sampling.refresh_steps", 7, ("similarity", "refresh_steps")),
    ("sampling.temperature", 0.2, ("similarity", "temperature")),
    ("sampling.uniform_mix", 0.25, ("similarity", "uniform_mix")),
])
def test_old_flat_sampling_keys_are_read_as_the_new_ones(old, value, new, caplog):
    cfg = load_config(None, [f"{old}={value}"])
    node = cfg.sampling.distribution
    for part in new:
        node = getattr(node, part)
    assert node == value
    assert f"'{old}' is now 'sampling.distribution.{'.'.join(new)}'" in caplog.text
    assert RENAMED[old] == "sampling.distribution." + ".".join(new)


def test_nested_distribution_keys_and_their_errors(tmp_path):
    cfg = load_config(None, ["sampling.distribution.name=similarity",
                             "sampling.distribution.similarity.temperature=0.1"])
    d = cfg.sampling.distribution
    assert (d.name, d.similarity.temperature, d.similarity.refresh_steps) == ("similarity", 0.1, 200)
    assert load_config(None, ["sampling.distribution=frequency"]).sampling.distribution.name == "frequency"
    yaml = tmp_path / "c.yaml"
    yaml.write_text("sampling:\n  distribution:\n    name: similarity\n    similarity: {uniform_mix: 0.3}\n")
    assert load_config(str(yaml)).sampling.distribution.similarity.uniform_mix == 0.3
    assert cfg.to_dict()["sampling"]["distribution"]["similarity"]["temperature"] == 0.1
    with pytest.raises(ValueError, match="unknown sampling.distribution.name 'hardest': registered are "
                                         "frequency, similarity, uniform"):
        load_config(None, ["sampling.distribution.name=hardest"])
    with pytest.raises(KeyError, match=r"'sampling.distribution.similarity.temprature'.*did you mean \['temperature'\]"):
        load_config(None, ["sampling.distribution.similarity.temprature=1"])


def test_a_new_distribution_is_one_class_and_a_registration(world, tmp_path):
    @dataclass
    class LastOptions:
        weight: float = 1.0

    @proposals.register_proposal("last_classes", options=LastOptions)
    class LastClasses(proposals.Proposal):
        """q ∝ weight on the last two classes, 1 elsewhere."""

        def __init__(self, options, train_labels, num_classes):
            self.q = torch.ones(num_classes, dtype=torch.float64)
            self.q[-2:] = options.weight
            self.q /= self.q.sum()

        def distribution(self, labels):
            return self.q

    try:
        with pytest.raises(ValueError, match="'last_classes' is already registered"):
            proposals.register_proposal("last_classes")(LastClasses)
        root, names = world
        cfg = load_config(None, overrides(root, names, tmp_path / "run", **{
            "sampling.distribution.name": "last_classes", "sampling.distribution.last_classes.weight": 3,
            "optim.epochs": 1}))
        trainer = Pretrainer(cfg)
        trainer.setup()
        assert isinstance(trainer.proposal, LastClasses)
        torch.testing.assert_close(trainer.proposal.q, torch.tensor([1, 1, 1, 1, 3, 3.0], dtype=torch.float64) / 10)
        trainer.fit()
        assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows(tmp_path / "run"))
    finally:
        proposals.PROPOSALS.pop("last_classes")


# ------------------------------------------------------------ model selection
def test_every_epoch_kept_and_the_best_one_selected(world, tmp_path, monkeypatch):
    root, names = world
    scores = iter([0.25, 0.5, 0.5])  # epoch 3 ties epoch 2: the earlier one stays, as the release's
    monkeypatch.setattr(Pretrainer, "evaluate", lambda self: next(scores))
    out = tmp_path / "run"
    argv = overrides(root, names, out, **{"data.shots": 3, "data.val_per_class": 1, "optim.epochs": 3,
                                          "train.final_prompt": "best"})
    final = Path(run_tool(argv))
    assert final == out / "prompt_best.pth"
    epochs = {e: pomp_core.load_prompt(out / "prompts" / f"epoch_{e}.pth") for e in (1, 2, 3)}
    assert sorted(p.name for p in (out / "prompts").iterdir()) == ["epoch_1.pth", "epoch_2.pth", "epoch_3.pth"]
    assert all((out / "prompts" / f"epoch_{e}.pth").stat().st_size < 8000 for e in epochs)  # a few KB
    assert [read_extra(out / "prompts" / f"epoch_{e}.pth")["step"] for e in (1, 2, 3)] == [4, 8, 12]
    assert not torch.equal(epochs[1].ctx, epochs[2].ctx)
    best = pomp_core.load_prompt(final)
    assert torch.equal(best.ctx, epochs[2].ctx)
    assert read_extra(final)["epoch"] == 2 and read_extra(final)["val_top1"] == 0.5
    assert torch.equal(pomp_core.load_prompt(out / "prompt.pth").ctx, epochs[3].ctx)  # the last step
    assert torch.load(out / "checkpoint.pth", weights_only=True)["selection"] == {"best_epoch": 2, "best_top1": 0.5}

    # the release's files: model.pth.tar-<e> per epoch, model-best.pth.tar = epoch 2, fp16 ctx
    export_prompt = load_tool("export_prompt")
    release = tmp_path / "release"
    export_prompt.main(["--run", str(out), "--out", str(release)])
    folder = release / "prompt_learner"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint", "model-best.pth.tar", "model.pth.tar-1",
                                                         "model.pth.tar-2", "model.pth.tar-3"]
    for e in (1, 2, 3):
        saved = torch.load(folder / f"model.pth.tar-{e}", weights_only=True)
        assert saved["epoch"] == e and saved["state_dict"]["ctx"].dtype == torch.float16
        assert torch.equal(saved["state_dict"]["ctx"], epochs[e].ctx.half())
    best_file = torch.load(folder / "model-best.pth.tar", weights_only=True)
    assert best_file["epoch"] == 2 and torch.equal(best_file["state_dict"]["ctx"], epochs[2].ctx.half())


def test_best_prompt_needs_validation(world, tmp_path):
    root, names = world
    with pytest.raises(ValueError, match="train.final_prompt=best picks the epoch by validation, which is off"):
        Pretrainer(load_config(None, overrides(root, names, tmp_path / "r", **{"train.final_prompt": "best"}))).setup()


# ------------------------------------------------------------ accumulation, lockstep
def test_two_micro_batches_give_the_mean_of_their_losses_and_gradients(world, tmp_path):
    """One step of optim.accumulate=2 against the two micro-batches computed by hand, each with
    the negatives its virtual rank (0, 1) draws."""
    root, names = world
    cfg = load_config(None, overrides(root, names, tmp_path / "run", **{"optim.accumulate": 2, "optim.batch_size": 3,
                                                                        "optim.momentum": 0, "optim.weight_decay": 0}))
    trainer = Pretrainer(cfg)
    trainer.setup()
    loader = iter(trainer.data.loader())
    batches = [next(loader), next(loader)]
    ctx0 = trainer.prompt.ctx.detach().clone()
    losses, grads = [], []
    for j, batch in enumerate(batches):  # by hand, from the building blocks
        prompt = pomp_core.PromptLearner(4, 64, ctx=ctx0.clone())
        labels = batch["labels"].repeat_interleave(2)
        feats = trainer.model.encode_image(batch["images"].flatten(0, 1)).detach()
        negatives = torch.randperm(6, generator=step_generator(cfg.train.seed, j, 0))[:3]
        cb = build_contrast_batch(labels, negatives, 6, None, 10.0)
        text = trainer.encoder(prompt, [trainer.class_names[c] for c in cb.classes.tolist()])
        loss = local_contrast_loss(local_contrast_logits(feats, text, cb, trainer.model.logit_scale.exp()))
        loss.backward()
        losses.append(loss.item())
        grads.append(prompt.ctx.grad)
    metrics = trainer.train_step(batches)
    assert metrics["loss"] == pytest.approx(sum(losses) / 2, rel=1e-6)
    assert abs(losses[0] - losses[1]) > 1e-3  # two different micro-batches
    step = ctx0 - trainer.prompt.ctx.detach()  # plain SGD: lr x gradient
    torch.testing.assert_close(step / cfg.optim.lr, (grads[0] + grads[1]) / 2, atol=1e-6, rtol=1e-5)

    # micro-batch 1 unreadable: the step is micro-batch 0's mean gradient, not half of it
    again = Pretrainer(cfg)
    again.setup()
    assert torch.equal(again.prompt.ctx.detach(), ctx0)
    metrics = again.train_step([batches[0], {"skipped": torch.tensor(3)}])
    assert metrics["loss"] == pytest.approx(losses[0], rel=1e-6) and again.skipped == 3
    torch.testing.assert_close((ctx0 - again.prompt.ctx.detach()) / cfg.optim.lr, grads[0], atol=1e-6, rtol=1e-5)
    assert again.train_step([{"skipped": torch.tensor(3)}] * 2) is None  # nothing readable: no update
    assert again.skipped == 9


def torchrun(tmp_path, argv, unreadable_rank=None):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "UNREADABLE_RANK": str(unreadable_rank)}
    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    proc = subprocess.run([exe, "--standalone", "--nproc_per_node", "2", str(driver), str(REPO / "tools/pretrain.py"),
                           *argv], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


DRIVER = """
import os, runpy, sys
from pomp_core.images import ImageListDataset
if os.environ["RANK"] == os.environ["UNREADABLE_RANK"]:  # every image this rank reads is unreadable
    ImageListDataset.__getitem__ = lambda self, i: None
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.xdist_group("two-process")  # ranks on both cores: never beside another two-process test
@pytest.mark.slow
def test_one_process_with_two_micro_batches_equals_two_processes(world, tmp_path, monkeypatch):
    """K=4 < N=6, so each micro-batch / process draws its own negatives: 2 processes x batch 2 and
    1 process x 2 micro-batches of 2 see the same images and negatives, so the same losses and prompt.
    Then rank 1's images all unreadable: the run finishes with a warning, and equals one process
    whose second micro-batch (rank 1's images) is unreadable: the step is rank 0's gradient alone."""
    root, names = world
    common = {"optim.batch_size": 2, "optim.epochs": 2, "optim.lr": 0.2, "data.max_skipped": 1000}
    torchrun(tmp_path, overrides(root, names, tmp_path / "two", **common))
    one = pomp_core.load_prompt(run_tool(overrides(root, names, tmp_path / "one", **common, **{"optim.accumulate": 2})))
    two = pomp_core.load_prompt(tmp_path / "two" / "prompt.pth")
    torch.testing.assert_close(two.ctx, one.ctx, atol=1e-5, rtol=1e-4)
    loss = lambda out: [r["loss"] for r in rows(out) if "loss" in r]  # noqa: E731
    assert len(loss(tmp_path / "one")) == 12
    torch.testing.assert_close(torch.tensor(loss(tmp_path / "two")), torch.tensor(loss(tmp_path / "one")),
                               atol=1e-5, rtol=1e-5)
    plain = pomp_core.load_prompt(run_tool(overrides(root, names, tmp_path / "plain",
                                                     **{**common, "optim.batch_size": 4})))
    assert (plain.ctx - one.ctx).abs().max() > 1e-3  # batch 4 in one draw is not the same run

    log = torchrun(tmp_path, overrides(root, names, tmp_path / "half", **common), unreadable_rank=1)
    assert "rank 1, step 0: no readable image in micro-batch 0; it joins the step with no gradient" in log
    assert "step 0: 1 of 2 micro-batches had no readable image; the step averages the other 1" in log
    half = pomp_core.load_prompt(tmp_path / "half" / "prompt.pth")
    assert torch.load(tmp_path / "half" / "checkpoint.pth", weights_only=True)["skipped"] == 12 * 2

    real = ImageListDataset.__getitem__

    def second_micro_batch_unreadable(self, i):  # the images virtual rank 1 (micro-batch 1) reads
        part = DistributedSampler(self, num_replicas=2, rank=1, shuffle=True, seed=1, drop_last=True)
        part.set_epoch(self.epoch)
        return None if i in set(part) else real(self, i)

    monkeypatch.setattr(ImageListDataset, "__getitem__", second_micro_batch_unreadable)
    alone = pomp_core.load_prompt(run_tool(overrides(root, names, tmp_path / "alone", **common,
                                                     **{"optim.accumulate": 2})))
    torch.testing.assert_close(half.ctx, alone.ctx, atol=1e-5, rtol=1e-4)
    assert (half.ctx - one.ctx).abs().max() > 1e-3


# ------------------------------------------------------------ the release's recipe
def test_release_configs_seed_validation_and_recipes():
    c = {name: load_config(str(REPO / "configs/pomp" / f"{name}.yaml")) for name in (
        "vit_b16_ctx4_k1000_5ep", "vit_b16_ctx16_k1000_20ep", "vit_b32_ctx4_k1000_20ep", "vit_l14_ctx4_k1000_5ep")}
    for cfg in c.values():
        assert (cfg.train.seed, cfg.train.final_prompt, cfg.data.val_per_class) == (42, "best", 0)
        assert cfg.data.val_root.endswith("imagenet21k_val")
        assert (cfg.sampling.k, cfg.sampling.distribution.name, cfg.optim.lr) == (1000, "uniform", 0.002)
    b32 = c["vit_b32_ctx4_k1000_20ep"]
    assert (b32.model.name, b32.optim.epochs, b32.prompt.n_ctx) == ("ViT-B-32-quickgelu", 20, 4)
    l14 = c["vit_l14_ctx4_k1000_5ep"]
    assert (l14.model.name, l14.model.pretrained, l14.optim.epochs, l14.model.grad_checkpointing) == \
        ("ViT-L-14-quickgelu", "openai", 5, True)
    assert load_config(None).train.seed == 1  # the library default stays


def test_k_equal_n_release_margin_and_ours():
    """The release at K = N draws N-1 of the N classes and adds log10((N-1)/(N-1-r_i)); ours takes all N
    (the exact full softmax, no margin). Given the release's N-1 negatives, our margin is the release's."""
    n = 6
    labels = torch.tensor([0, 3, 5, 5])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))[: n - 1]  # the release's draw
    ours_all = build_contrast_batch(labels, torch.arange(n), n, None, 10.0)
    assert torch.equal(torch.isinf(ours_all.margin), labels[:, None] == torch.arange(n)[None])
    assert (ours_all.margin[torch.isfinite(ours_all.margin)] == 0).all()
    release = build_contrast_batch(labels, perm, n, None, 10.0)
    reject = labels[:, None] == perm[None]
    expected = torch.log10(torch.tensor(n - 1.0)) - torch.log10((n - 1) - reject.sum(1, keepdim=True).float())
    finite = ~reject
    torch.testing.assert_close(release.margin[finite], expected.expand_as(reject)[finite])
    dropped = int(set(range(n)).difference(perm.tolist()).pop())
    assert (expected[labels == dropped] == 0).all() and (expected[labels != dropped] > 0.09).all()


def test_fp16_context_rounds_away_warmup_updates():
    """The release's PREC fp16: plain SGD on an fp16 ctx. An update lr*g survives only where it is at
    least half the fp16 spacing of the entry: with lr 1e-5 and |g| = 0.05, entries |x| >= 2^-9 stay.
    torch's vectorised CPU kernels form lr*g in float32 (5e-7), its portable ones in fp16 (4.77e-7,
    ATEN_CPU_CAPABILITY=default): the entries that move are those of one of the two by hand."""
    ctx = (torch.randn(4, 512, generator=torch.Generator().manual_seed(0)) * 0.02).half()
    grad = torch.full_like(ctx, 0.05)
    moved = {}
    for lr in (1e-5, 2e-3):
        p = torch.nn.Parameter(ctx.clone())
        opt = torch.optim.SGD([p], lr=lr, momentum=0.9)
        p.grad = grad.clone()
        opt.step()
        moved[lr] = (p.detach() != ctx).float().mean().item()
    fp16_step = float(torch.tensor(1e-5, dtype=torch.half) * torch.tensor(0.05, dtype=torch.half))  # 2^-21
    # the exact difference rounded to fp16 (to nearest, ties to even: a step of exactly half the
    # spacing moves only odd entries)
    by_hand = {step: ((ctx.double() - step).half() != ctx).float().mean().item() for step in (1e-5 * 0.05, fp16_step)}
    assert moved[1e-5] in by_hand.values(), (moved, by_hand)
    assert by_hand[1e-5 * 0.05] != by_hand[fp16_step]  # the two roundings are told apart
    assert moved[1e-5] < 0.15 and moved[2e-3] > 0.99
