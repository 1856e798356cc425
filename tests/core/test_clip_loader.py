import pytest
import torch

import pomp_core
from pomp_core.clip_loader import is_torchscript_archive, resolve_model_name


def test_openai_weights_get_quickgelu():
    assert resolve_model_name("ViT-B-16", "openai") == "ViT-B-16-quickgelu"
    assert resolve_model_name("RN50", "openai") == "RN50-quickgelu"
    assert resolve_model_name("ViT-B-16-quickgelu", "openai") == "ViT-B-16-quickgelu"
    # LAION weights were trained with GELU: keep the plain architecture
    assert resolve_model_name("ViT-B-16", "laion2b_s34b_b88k") == "ViT-B-16"


def test_unknown_model_name_suggests_close_matches():
    with pytest.raises(ValueError, match="ViT-B-16"):
        pomp_core.load_clip("ViT-B-61")


def test_missing_checkpoint_file():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pomp_core.load_clip("pomp-tiny", pretrained="/no/such/ViT-B-16.pt")


def _text_features(model, tokenizer):
    with torch.no_grad():
        return model.encode_text(tokenizer(["a photo of a cat.", "a dog"]))


def test_loaded_model_is_frozen_and_in_eval_mode(tiny_clip):
    model, tokenizer, preprocess = tiny_clip
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert model.pomp_model_name == "pomp-tiny"
    assert callable(preprocess)


@pytest.mark.parametrize("layout", ["openai_state_dict", "open_clip_training_checkpoint"])
def test_local_checkpoint_files(tiny_clip, tmp_path, layout):
    model, tokenizer, _ = tiny_clip
    state = model.state_dict()
    path = tmp_path / "weights.pt"
    if layout == "openai_state_dict":
        torch.save(state, path)
    else:  # what open_clip's trainer writes under DDP
        torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    loaded, tok, _ = pomp_core.load_clip("pomp-tiny", pretrained=str(path))
    torch.testing.assert_close(_text_features(loaded, tok), _text_features(model, tokenizer))


def test_torchscript_archive_loads_with_quickgelu(tmp_path):
    """OpenAI's TorchScript archives need a full unpickle and always use QuickGELU."""
    torch.manual_seed(0)
    src, tokenizer, _ = pomp_core.load_clip("pomp-tiny-rn", quick_gelu=True)
    path = tmp_path / "RN-tiny.pt"
    # Like OpenAI's archives: the causal mask is a traced constant, not a buffer, and the
    # archive carries the scalar buffers input_resolution / context_length / vocab_size.
    mask = src._buffers.pop("attn_mask")
    src.attn_mask = mask
    for key, value in [("input_resolution", 32), ("context_length", 77), ("vocab_size", 49408)]:
        src.__dict__.pop(key, None)
        src.register_buffer(key, torch.tensor(value))
    torch.jit.save(torch.jit.trace_module(src, {"encode_text": tokenizer(["a cat"])}), path)
    assert is_torchscript_archive(path)
    loaded, tok, _ = pomp_core.load_clip("pomp-tiny-rn", pretrained=str(path))
    acts = {type(m).__name__ for m in loaded.transformer.modules()}
    assert "QuickGELU" in acts and "GELU" not in acts
    torch.testing.assert_close(_text_features(loaded, tok), _text_features(src, tokenizer))
    plain, _, _ = pomp_core.load_clip("pomp-tiny-rn")
    assert "QuickGELU" not in {type(m).__name__ for m in plain.transformer.modules()}
