import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pomp_core
from pomp_core import PromptLearner
from tests.tool_scripts import load_tool

VOCAB = ["cat", "hot_air_balloon", "tv", "fire hydrant", "a kind of tropical fish", "dog"]


def test_vocabulary_sources(tmp_path):
    txt = tmp_path / "names.txt"
    txt.write_text("# animals\ncat\n\ndog\n")
    assert pomp_core.load_vocabulary(txt) == ["cat", "dog"]
    assert pomp_core.load_vocabulary("cat, dog ,bird") == ["cat", "dog", "bird"]
    assert pomp_core.load_vocabulary(("a", "b")) == ["a", "b"]
    lvis = tmp_path / "lvis.json"
    lvis.write_text(json.dumps({"categories": [
        {"id": 3, "name": "zebra", "frequency": "f"},
        {"id": 1, "name": "aerosol_can", "frequency": "c"},
        {"id": 2, "name": "air_conditioner", "frequency": "r"}]}))
    assert pomp_core.load_vocabulary(lvis) == ["aerosol can", "air conditioner", "zebra"]


def test_bad_vocabularies(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        pomp_core.load_vocabulary([])
    with pytest.raises(ValueError, match=r"repeats class names \['cat'\]"):
        pomp_core.load_vocabulary(["cat", "dog", "cat"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pomp_core.load_vocabulary(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(ValueError, match="empty"):
        pomp_core.load_vocabulary(tmp_path / "empty.txt")
    (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="no 'categories'"):
        pomp_core.load_vocabulary(tmp_path / "bad.json")


def test_class_embeddings_order_and_normalisation(tiny_clip):
    model, tokenizer, _ = tiny_clip
    prompt = PromptLearner(n_ctx=4, width=64, init_std=0.3)
    raw = pomp_core.class_embeddings(model, tokenizer, prompt, VOCAB, normalize=False, batch_size=2)
    emb = pomp_core.class_embeddings(model, tokenizer, prompt, VOCAB)
    assert emb.shape == (len(VOCAB), 48)
    torch.testing.assert_close(emb, F.normalize(raw, dim=-1), atol=1e-6, rtol=0)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(len(VOCAB)))
    # length-sorted batching must hand rows back in vocabulary order
    enc = pomp_core.PromptedTextEncoder(model, tokenizer)
    with torch.no_grad():
        one_by_one = torch.cat([enc(prompt, [n]) for n in VOCAB])
    torch.testing.assert_close(raw, one_by_one, atol=1e-5, rtol=0)


def test_class_specific_prompt_needs_matching_vocabulary(tiny_clip):
    model, tokenizer, _ = tiny_clip
    csc = PromptLearner(n_ctx=4, width=64, class_specific=True, n_classes=2)
    with pytest.raises(ValueError, match="2 contexts but the vocabulary has 6"):
        pomp_core.class_embeddings(model, tokenizer, csc, VOCAB)


def test_save_embeddings_formats(tmp_path):
    emb = torch.randn(5, 8) * 3
    detic = np.load(pomp_core.save_embeddings(emb, tmp_path / "d.npy"))
    assert detic.dtype == np.float16 and detic.shape == (5, 8)
    np.testing.assert_allclose(detic, emb.numpy(), rtol=1e-3, atol=1e-2)
    norm = np.load(pomp_core.save_embeddings(emb, tmp_path / "n.npy", fmt="normalized"))
    assert norm.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(norm, axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="unknown embedding format"):
        pomp_core.save_embeddings(emb, tmp_path / "x.npy", fmt="bf16")


def test_export_tool_writes_detector_and_normalised_files(tiny_clip, tmp_path):
    export_embeddings = load_tool("export_embeddings")
    model, tokenizer, _ = tiny_clip
    weights = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), weights)
    prompt = PromptLearner(n_ctx=4, width=64, init_std=0.3)
    prompt_path = pomp_core.save_prompt(prompt, tmp_path / "prompt.pth")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB))
    out = tmp_path / "out" / "vocab.npy"
    written = export_embeddings.main([
        "--model", "pomp-tiny", "--pretrained", str(weights), "--prompt", str(prompt_path),
        "--vocabulary", str(vocab), "--out", str(out), "--format", "detic", "normalized"])
    assert [p.name for p in written] == ["vocab.npy", "vocab_normalized.npy"]
    detic, norm = np.load(written[0]), np.load(written[1])
    assert detic.dtype == np.float16 and detic.shape == (len(VOCAB), 48)
    expected = pomp_core.class_embeddings(model, tokenizer, prompt, VOCAB, normalize=False)
    np.testing.assert_allclose(detic.astype(np.float32), expected.numpy(), rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(norm, F.normalize(expected, dim=-1).numpy(), atol=1e-5)
