"""Prompts both ways with the POMP release: raw Dassl checkpoints in, load_model's layout out."""
from pathlib import Path

import pytest
import torch
from torch import nn

import pomp_core
from tests.frameworks import require
from pomp_core import PromptLearner
from tests.tool_scripts import load_tool



class WarmupScheduler(torch.optim.lr_scheduler.LRScheduler):
    """Like Dassl's ConstantWarmupScheduler: its state_dict holds the successor scheduler object."""

    def __init__(self, optimizer, successor):
        self.successor = successor
        super().__init__(optimizer)

    def get_lr(self):
        return [1e-5 for _ in self.base_lrs]


class ReleaseLearner(nn.Module):
    """The release's PromptLearner state: ctx plus the token buffers of a fixed class list."""

    def __init__(self, n_ctx: int, width: int, n_cls: int, dtype=torch.float16):
        super().__init__()
        self.ctx = nn.Parameter(torch.zeros(n_ctx, width, dtype=dtype))
        for name in ("train_token_prefix", "test_token_prefix"):
            self.register_buffer(name, torch.randn(n_cls, 1, width, dtype=dtype))
        for name in ("train_token_suffix", "test_token_suffix"):
            self.register_buffer(name, torch.randn(n_cls, 72, width, dtype=dtype))


def release_load_model(directory: Path, epoch, module: nn.Module) -> int:
    """The release's POMP.load_model: <dir>/prompt_learner/model.pth.tar-<epoch> (model-best
    without an epoch), state_dict minus token buffers, load_state_dict(strict=False)."""
    name = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
    checkpoint = torch.load(directory / "prompt_learner" / name, map_location="cpu", weights_only=True)
    state = {k: v for k, v in checkpoint["state_dict"].items() if not k.endswith(("token_prefix", "token_suffix"))}
    module.load_state_dict(state, strict=False)
    return checkpoint["epoch"]


def write_raw_dassl_checkpoint(path: Path) -> ReleaseLearner:
    """A Dassl checkpoint of the release's prompt learner, as its trainer saves it."""
    torch.manual_seed(0)
    learner = ReleaseLearner(4, 64, n_cls=7)
    with torch.no_grad():
        learner.ctx.normal_(0, 0.02)
    optim = torch.optim.SGD(learner.parameters(), lr=0.002, momentum=0.9)
    sched = WarmupScheduler(optim, torch.optim.lr_scheduler.CosineAnnealingLR(optim, 5.0))
    torch.save({"state_dict": learner.state_dict(), "epoch": 5, "optimizer": optim.state_dict(),
                "scheduler": sched.state_dict(), "val_result": None}, path)
    return learner


def test_raw_dassl_checkpoint_needs_trust_then_loads(tmp_path):
    path = tmp_path / "model.pth.tar-5"
    learner = write_raw_dassl_checkpoint(path)
    with pytest.raises(ValueError, match="trusted=True"):
        pomp_core.load_prompt(path)
    prompt = pomp_core.load_prompt(path, trusted=True)
    assert (prompt.n_ctx, prompt.width, prompt.position) == (4, 64, "end")
    assert torch.equal(prompt.ctx, learner.ctx.detach().float())
    # trust is explicit in the tools too
    export_embeddings, export_prompt = load_tool("export_embeddings"), load_tool("export_prompt")
    voc = tmp_path / "voc.txt"
    voc.write_text("cat\nbow (weapon)\n")
    args = ["--model", "pomp-tiny", "--pretrained", "", "--prompt", str(path), "--vocabulary", str(voc),
            "--out", str(tmp_path / "emb.npy"), "--device", "cpu"]
    with pytest.raises(ValueError, match="trusted=True"):
        export_embeddings.main(args)
    assert export_embeddings.main(args + ["--trusted"])[0].is_file()
    out = export_prompt.main(["--prompt", str(path), "--out", str(tmp_path / "again"), "--trusted"])
    assert out.name == "model.pth.tar-5"  # the epoch of the raw checkpoint


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_export_for_the_release_load_model_round_trip(tmp_path, dtype):
    torch.manual_seed(1)
    prompt = PromptLearner(n_ctx=4, width=64, init_std=0.02)
    ours = pomp_core.save_prompt(prompt, tmp_path / "prompt.pth", step=30, epoch=5)
    export_prompt = load_tool("export_prompt")
    path = export_prompt.main(["--prompt", str(ours), "--out", str(tmp_path / "release"), "--best",
                               "--dtype", dtype])
    folder = tmp_path / "release" / "prompt_learner"
    assert path == folder / "model.pth.tar-5"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint", "model-best.pth.tar", "model.pth.tar-5"]
    assert (folder / "checkpoint").read_text().strip() == "model.pth.tar-5"
    torch_dtype = torch.float16 if dtype == "fp16" else torch.float32
    for epoch in (5, None):
        learner = ReleaseLearner(4, 64, n_cls=3, dtype=torch_dtype)
        assert release_load_model(tmp_path / "release", epoch, learner) == 5
        assert learner.ctx.dtype == torch_dtype
        torch.testing.assert_close(learner.ctx.float(), prompt.ctx.detach(),
                                   atol=1e-4 if dtype == "fp16" else 0, rtol=0)
    raw = torch.load(path, weights_only=True)
    assert raw["state_dict"]["ctx"].dtype == torch_dtype and raw["epoch"] == 5
    # and back: the exported file loads as a prompt (safely: only tensors and plain values)
    back = pomp_core.load_prompt(path)
    torch.testing.assert_close(back.ctx, raw["state_dict"]["ctx"].float(), atol=0, rtol=0)
    with pytest.raises(ValueError, match="records no epoch"):
        plain = pomp_core.save_prompt(prompt, tmp_path / "plain.pth")
        export_prompt.main(["--prompt", str(plain), "--out", str(tmp_path / "x")])


def test_detector_and_segmentor_pass_trust_explicitly(tmp_path):
    """pomp_det (MODEL.POMP.PROMPT_TRUSTED) and pomp_seg (prompt_trusted) refuse a raw Dassl
    checkpoint unless trust is given, then encode with its context."""
    require("detectron2")
    require("mmseg")
    from pomp_det.embeddings import cached_class_embeddings
    from pomp_seg.text_encoder import POMPTextEncoder

    path = tmp_path / "model.pth.tar-5"
    learner = write_raw_dassl_checkpoint(path)
    names = ["cat", "bow (weapon)", "traffic light"]
    with pytest.raises(ValueError, match="trusted=True"):
        cached_class_embeddings(names, "pomp-tiny", "", prompt=str(path), cache_dir=None)
    emb = cached_class_embeddings(names, "pomp-tiny", "", prompt=str(path), cache_dir=None, prompt_trusted=True)
    model, tokenizer, _ = pomp_core.load_clip("pomp-tiny")
    with pytest.raises(ValueError, match="trusted=True"):
        POMPTextEncoder(vocabulary=names, clip=(model, tokenizer), prompt=str(path))
    encoder = POMPTextEncoder(vocabulary=names, clip=(model, tokenizer), prompt=str(path), prompt_trusted=True)
    assert torch.equal(encoder.prompt.ctx, learner.ctx.detach().float())
    assert emb.shape == (3, model.text_projection.shape[1])
