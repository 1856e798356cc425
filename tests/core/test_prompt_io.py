import pytest
import torch

import pomp_core
from pomp_core import PromptedTextEncoder, PromptLearner


def test_roundtrip_keeps_context_and_metadata(tiny_clip, tmp_path):
    model, tokenizer, _ = tiny_clip
    prompt = PromptLearner.from_words("a photo of a", model, tokenizer, position="middle")
    path = pomp_core.save_prompt(prompt, tmp_path / "p" / "prompt.pth", epoch=5)
    assert sorted(p.name for p in path.parent.iterdir()) == ["prompt.pth"]  # no temp file left
    loaded = pomp_core.load_prompt(path)
    assert torch.equal(loaded.ctx, prompt.ctx)
    assert (loaded.position, loaded.n_ctx, loaded.width, loaded.class_specific) == ("middle", 4, 64, False)
    assert loaded.model_name == "pomp-tiny" and loaded.init_words == "a photo of a"
    assert torch.load(path, weights_only=True)["extra"] == {"epoch": 5}


def test_class_specific_roundtrip(tmp_path):
    prompt = PromptLearner(n_ctx=2, width=8, class_specific=True, n_classes=3)
    loaded = pomp_core.load_prompt(pomp_core.save_prompt(prompt, tmp_path / "csc.pth"))
    assert loaded.class_specific and loaded.n_classes == 3 and torch.equal(loaded.ctx, prompt.ctx)


def test_loads_the_pomp_release_format(tiny_clip, tmp_path):
    """The release's .pth.tar: ctx plus token buffers of a fixed class list, which are ignored."""
    model, tokenizer, _ = tiny_clip
    ctx = torch.randn(4, 64) * 0.02
    release = {
        "state_dict": {"ctx": ctx, "token_prefix": torch.randn(7, 1, 64), "token_suffix": torch.randn(7, 72, 64)},
        "epoch": 20,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.002, "momentum": 0.9}]},
    }
    path = tmp_path / "model.pth.tar-20"
    torch.save(release, path)
    prompt = pomp_core.load_prompt(path)
    assert torch.equal(prompt.ctx.data, ctx) and prompt.position == "end" and not prompt.class_specific
    emb = pomp_core.class_embeddings(model, tokenizer, prompt, ["cat", "dog", "car"])
    assert emb.shape == (3, 48)
    # the tiny model's width is 64; a real release prompt is 512 wide and must be refused
    release["state_dict"]["ctx"] = torch.randn(4, 512)
    torch.save(release, path)
    with pytest.raises(ValueError, match="prompt width 512 does not match"):
        PromptedTextEncoder(model, tokenizer)(pomp_core.load_prompt(path), ["cat"])


def test_files_that_are_not_prompts(tmp_path):
    missing = tmp_path / "missing.pth"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pomp_core.load_prompt(missing)
    other = tmp_path / "checkpoint.pth"
    torch.save({"model": {"weight": torch.zeros(2)}}, other)
    with pytest.raises(ValueError, match="is not a prompt file"):
        pomp_core.load_prompt(other)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="not a readable torch file|safe load"):
        pomp_core.load_prompt(garbage)
