"""Length-aware encoding (groups by length, shared leading positions once) equals the plain
computation over all 77 positions: features, the local-contrast loss and its gradient."""
import pytest
import torch

from pomp_core import PromptedTextEncoder, PromptLearner, length_aware
from pomp_core.length_aware import length_groups, shared_prefix
from pomp_core.pretrain.contrast import build_contrast_batch, local_contrast_logits, local_contrast_loss

# 13 names of 1 to 11 tokens, one repeated: several length groups of odd sizes
NAMES = ["cat", "tv", "dog", "hot_air_balloon", "red fox", "a very long and rather specific kind of tropical fish",
         "x", "sea anemone", "great white shark", "cat", "electric ray", "king penguin of the south", "ox"]


def step(enc, prompt, truncate):
    """Features, loss and gradient of one local-contrast step over NAMES (7 image rows)."""
    prompt.ctx.grad = None
    gen = torch.Generator().manual_seed(3)
    labels = torch.tensor([0, 3, 5, 5, 8, 11, 12])
    image = torch.randn(len(labels), 48, generator=gen)
    cb = build_contrast_batch(labels, torch.tensor([1, 2, 4, 6, 7, 10]), num_classes=len(NAMES))
    text = enc(prompt, NAMES, class_ids=torch.arange(len(NAMES)), truncate=truncate)
    loss = local_contrast_loss(local_contrast_logits(image, text[cb.classes], cb, 10.0))
    loss.backward()
    return text.detach(), loss.detach(), prompt.ctx.grad.clone()


@pytest.mark.parametrize("position,class_specific,min_rows,ckpt", [
    ("end", False, 1, False), ("end", False, 3, True), ("end", True, 3, False),
    ("middle", False, 5, False), ("front", False, 1, False), ("front", True, 3, True)])
def test_length_aware_step_equals_the_plain_one(tiny_clip, position, class_specific, min_rows, ckpt, monkeypatch):
    model, tokenizer, _ = tiny_clip
    torch.manual_seed(5)
    prompt = PromptLearner(n_ctx=5, width=64, position=position, class_specific=class_specific,
                           n_classes=len(NAMES), init_std=0.5)
    enc = PromptedTextEncoder(model, tokenizer)
    enc.min_group_rows = min_rows
    monkeypatch.setattr(enc.tower.transformer, "grad_checkpointing", ckpt)
    text, loss, grad = step(enc, prompt, truncate=True)
    monkeypatch.setattr(enc.tower.transformer, "grad_checkpointing", False)
    ref_text, ref_loss, ref_grad = step(enc, prompt, truncate=False)
    torch.testing.assert_close(text, ref_text, atol=2e-5, rtol=0)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(grad, ref_grad, atol=1e-4, rtol=1e-4)
    assert grad.abs().max() > 1e-2  # the comparison is not between two zeros
    assert not any(p.grad is not None for p in model.parameters())


def test_unsupported_blocks_fall_back_to_groups_without_sharing(tiny_clip, monkeypatch):
    model, tokenizer, _ = tiny_clip
    prompt = PromptLearner(n_ctx=3, width=64, init_std=0.5)
    enc = PromptedTextEncoder(model, tokenizer)
    enc.min_group_rows = 2
    monkeypatch.setattr(length_aware, "supports_prefix_sharing", lambda transformer: False)
    monkeypatch.setattr(length_aware, "_block", None)  # the open_clip blocks run, not ours
    text, loss, grad = step(enc, prompt, truncate=True)
    ref_text, ref_loss, ref_grad = step(enc, prompt, truncate=False)
    torch.testing.assert_close(text, ref_text, atol=2e-5, rtol=0)
    torch.testing.assert_close(grad, ref_grad, atol=1e-4, rtol=1e-4)


def test_each_group_runs_only_its_own_positions(tiny_clip, monkeypatch):
    model, tokenizer, _ = tiny_clip
    enc = PromptedTextEncoder(model, tokenizer)
    enc.min_group_rows = 2
    seen = []
    block = length_aware._block
    monkeypatch.setattr(length_aware, "_block", lambda b, h, mask, pk, pv: seen.append(
        (h.shape[0], h.shape[1], 0 if pk is None else pk.shape[2], tuple(mask.shape))) or block(b, h, mask, pk, pv))
    # name tokens: cat 1, tv 1, red fox 2, great white shark 3, hot air balloon 3
    enc(PromptLearner(n_ctx=4, width=64), ["cat", "hot_air_balloon", "tv", "red fox", "great white shark"])
    layers = len(enc.tower.transformer.resblocks)
    assert seen[::layers] == [
        (1, 5, 0, (5, 5)),  # SOS + 4 shared context vectors, once
        (2, 3, 5, (3, 8)),  # cat, tv: name + "." + EOT, attending to the 5 shared positions
        (3, 5, 5, (5, 10)),  # red fox joins the two 3-token names (a group of one is too small)
    ]
    assert len(seen) == 3 * layers


def test_length_groups_cover_every_row_once():
    lengths = torch.tensor([5, 3, 3, 9, 5, 5, 4])
    groups = length_groups(lengths, min_rows=2)
    assert [(sorted(r.tolist()), n) for r, n in groups] == [([1, 2], 3), ([0, 4, 5, 6], 5), ([3], 9)]
    assert [n for _, n in length_groups(lengths, min_rows=1)] == [3, 4, 5, 9]
    assert [n for _, n in length_groups(lengths, min_rows=100)] == [9]
    for rows, n in groups:
        assert (lengths[rows] <= n).all()


def test_shared_prefix(tiny_clip):
    model, tokenizer, _ = tiny_clip
    enc = PromptedTextEncoder(model, tokenizer)
    names = ["cat", "cat fish", "dog"]
    for position, expected in [("end", 7), ("middle", 4), ("front", 1)]:
        ids, is_ctx = enc.token_ids(names, 6, position)
        eot = enc.eot_index(ids)
        assert shared_prefix(ids, eot) == expected, position
        assert shared_prefix(ids, eot, per_row=is_ctx) == 1, position  # class-specific: SOS only
    ids, _ = enc.token_ids(["cat", "cat fish"], 6, "front")
    assert shared_prefix(ids, enc.eot_index(ids)) == 2  # SOS and "cat"
    ids, _ = enc.token_ids(["cat", "cat"], 6, "end")
    assert shared_prefix(ids, enc.eot_index(ids)) == 9  # identical rows keep their EOT: SOS..".", not EOT
