import logging

import pytest
import torch

from pomp_core import PromptedTextEncoder, PromptLearner

NAMES = ["cat", "hot_air_balloon", "a very long and rather specific kind of tropical fish", "tv"]
POSITIONS = ["end", "middle", "front"]


def hand_text(words: str, name: str, position: str) -> str:
    """The plain sentence that a words-initialised prompt must reproduce exactly."""
    name = name.replace("_", " ")
    w = words.split()
    if position == "end":
        return f"{words} {name}."
    if position == "front":
        return f"{name} {words}."
    half = len(w) // 2
    return f"{' '.join(w[:half])} {name} {' '.join(w[half:])}."


@pytest.mark.parametrize("position", POSITIONS)
def test_token_ids_are_the_placeholder_sentence(tiny_clip, position):
    model, tokenizer, _ = tiny_clip
    enc = PromptedTextEncoder(model, tokenizer)
    ids, is_ctx = enc.token_ids(NAMES, 4, position)
    expected = tokenizer([hand_text("X X X X", n, position) for n in NAMES])
    assert torch.equal(ids, expected)
    # exactly M context slots per row, all on placeholder tokens, never on SOS/EOT
    assert (is_ctx.sum(1) == 4).all()
    assert (ids[is_ctx] == enc.placeholder_id).all()
    assert not is_ctx[:, 0].any()
    assert not is_ctx[torch.arange(len(NAMES)), enc.eot_index(ids)].any()


@pytest.mark.parametrize("position", POSITIONS)
def test_words_prompt_equals_open_clip_encode_text(tiny_clip, position):
    """A prompt initialised from words reproduces open_clip's own features for the sentence."""
    model, tokenizer, _ = tiny_clip
    words = "a photo of a"
    prompt = PromptLearner.from_words(words, model, tokenizer, position=position)
    assert prompt.n_ctx == 4 and prompt.init_words == words
    with torch.no_grad():
        ours = PromptedTextEncoder(model, tokenizer)(prompt, NAMES)
        ref = model.encode_text(tokenizer([hand_text(words, n, position) for n in NAMES]))
    assert ours.shape == (len(NAMES), 48)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("class_specific", [False, True])
def test_truncation_matches_all_77_positions(tiny_clip, position, class_specific):
    model, tokenizer, _ = tiny_clip
    torch.manual_seed(1)
    prompt = PromptLearner(n_ctx=16, width=64, position=position, class_specific=class_specific,
                           n_classes=len(NAMES), init_std=0.5)
    enc = PromptedTextEncoder(model, tokenizer)
    with torch.no_grad():
        short = enc(prompt, NAMES, truncate=True)
        full = enc(prompt, NAMES, truncate=False)
    torch.testing.assert_close(short, full, atol=1e-5, rtol=0)
    # the hand prompt differs, so the comparison is not vacuous
    with torch.no_grad():
        other = enc(PromptLearner(n_ctx=16, width=64, position=position,
                                  class_specific=class_specific, n_classes=len(NAMES)), NAMES)
    assert (other - full).abs().max() > 1e-3


@pytest.mark.parametrize("position", POSITIONS)
def test_every_context_vector_reaches_the_feature(tiny_clip, position):
    model, tokenizer, _ = tiny_clip
    prompt = PromptLearner(n_ctx=6, width=64, position=position)
    PromptedTextEncoder(model, tokenizer)(prompt, NAMES).pow(2).sum().backward()
    assert prompt.ctx.grad is not None
    assert (prompt.ctx.grad.abs().sum(dim=1) > 0).all(), "a context vector was dropped"
    assert not any(p.grad is not None for p in model.parameters()), "the text tower must stay frozen"


def test_class_specific_rows_use_their_own_context(tiny_clip):
    model, tokenizer, _ = tiny_clip
    csc = PromptLearner(n_ctx=4, width=64, class_specific=True, n_classes=3, init_std=0.3)
    enc = PromptedTextEncoder(model, tokenizer)
    names = ["cat", "dog", "bird"]
    with torch.no_grad():
        out = enc(csc, names)
        picked = enc(csc, ["dog"], class_ids=torch.tensor([1]))
        for i, name in enumerate(names):
            shared = PromptLearner(n_ctx=4, width=64, ctx=csc.ctx[i])
            torch.testing.assert_close(out[i : i + 1], enc(shared, [name]), atol=1e-5, rtol=0)
    torch.testing.assert_close(picked, out[1:2], atol=1e-5, rtol=0)


def test_name_too_long_for_the_context(tiny_clip, caplog):
    model, tokenizer, _ = tiny_clip
    long_name = " ".join(["word"] * 80)
    prompt = PromptLearner(n_ctx=16, width=64)
    with pytest.raises(ValueError, match="at most 58 fit.*truncate_names=True"):
        PromptedTextEncoder(model, tokenizer)(prompt, ["cat", long_name])
    with caplog.at_level(logging.WARNING):
        out = PromptedTextEncoder(model, tokenizer, truncate_names=True)(prompt, ["cat", long_name])
    assert out.shape == (2, 48) and torch.isfinite(out).all()
    assert "cut 1 class names to 58 tokens" in caplog.text


def test_prompt_width_must_match_the_model(tiny_clip):
    model, tokenizer, _ = tiny_clip
    with pytest.raises(ValueError, match="prompt width 512 does not match the text tower width 64"):
        PromptedTextEncoder(model, tokenizer)(PromptLearner(n_ctx=4, width=512), ["cat"])


def test_prompt_learner_validates_its_arguments():
    with pytest.raises(ValueError, match="position"):
        PromptLearner(position="left")
    with pytest.raises(ValueError, match="n_classes"):
        PromptLearner(class_specific=True)
    p = PromptLearner(n_ctx=4, width=32)
    assert p.ctx.shape == (4, 32) and abs(p.ctx.std().item() - 0.02) < 0.01


def test_encode_ids_equals_open_clip_encode_text(tiny_clip):
    model, tokenizer, _ = tiny_clip
    ids = tokenizer(["a small red striped circle", "this shape is blue", "x"])
    with torch.no_grad():
        ours = PromptedTextEncoder(model, tokenizer).encode_ids(ids)
        ref = model.encode_text(ids)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


PUNCTUATED = ["bow_(weapon)", "st. bernard", "mr. potato head!", "jack-o'-lantern", "a...", "cat",
              "3.5 inch floppy"]


def release_features(model, tokenizer, ctx: torch.Tensor, names, position: str) -> torch.Tensor:
    """The POMP release's computation, over all 77 positions: tokenize the whole string
    "X .. X {name}.", swap in the context by slicing (the release's prefix/ctx/suffix), and
    read the feature at the argmax token of the whole string."""
    n_ctx = ctx.shape[0]
    texts = [" ".join(["X"] * n_ctx) + " " + n.replace("_", " ") + "." for n in names]
    ids = tokenizer(texts)
    emb = model.token_embedding(ids)
    rows = []
    for i, name in enumerate(names):
        prefix, suffix = emb[i, :1], emb[i, 1 + n_ctx:]
        name_len = len(tokenizer.encode(name.replace("_", " ")))
        if position == "end":
            parts = [prefix, ctx, suffix]
        elif position == "middle":
            half = n_ctx // 2
            parts = [prefix, ctx[:half], suffix[:name_len], ctx[half:], suffix[name_len:]]
        else:
            parts = [prefix, suffix[:name_len], ctx, suffix[name_len:]]
        rows.append(torch.cat(parts))
    x = torch.stack(rows) + model.positional_embedding
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
    return x[torch.arange(len(names)), ids.argmax(dim=-1)] @ model.text_projection


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("n_ctx", [4, 5])
def test_punctuated_names_equal_the_whole_string_computation(tiny_clip, position, n_ctx):
    model, tokenizer, _ = tiny_clip
    torch.manual_seed(3)
    prompt = PromptLearner(n_ctx=n_ctx, width=64, position=position, init_std=0.5)
    with torch.no_grad():
        ours = PromptedTextEncoder(model, tokenizer)(prompt, PUNCTUATED)
        ref = release_features(model, tokenizer, prompt.ctx, PUNCTUATED, position)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    # the test can fail: tokenizing name and "." apart gives other tokens for these names
    apart = [tokenizer.encode(n.replace("_", " ")) + tokenizer.encode(".") for n in PUNCTUATED]
    whole = [tokenizer.encode(n.replace("_", " ") + ".") for n in PUNCTUATED]
    assert sum(a != w for a, w in zip(apart, whole)) == 3  # bow_(weapon), potato head!, a...


def test_whole_string_ids_with_context_placeholders_are_open_clips(tiny_clip):
    """At the end position the ids are exactly open_clip's tokens of the whole string."""
    model, tokenizer, _ = tiny_clip
    enc = PromptedTextEncoder(model, tokenizer)
    ids, is_ctx = enc.token_ids(PUNCTUATED, 4, "end")
    assert torch.equal(ids, tokenizer(["X X X X " + n.replace("_", " ") + "." for n in PUNCTUATED]))
    assert (is_ctx.sum(1) == 4).all() and is_ctx[:, 1:5].all()


def test_encoder_follows_the_model_moved_after_it_was_built():
    """detectron2 and mmengine move the model after building it: ``.to()`` replaces buffers
    such as the causal mask, so the encoder must read them from the model, not keep its own."""
    import pomp_core

    torch.manual_seed(3)
    model, tokenizer, _ = pomp_core.load_clip("pomp-tiny")
    encoder = PromptedTextEncoder(model, tokenizer)
    prompt = PromptLearner(n_ctx=5, width=encoder.tower.width)
    with torch.no_grad():
        before = encoder(prompt, NAMES)
        model.to(torch.float64)
        prompt.to(torch.float64)
        after = encoder(prompt, NAMES)
    assert encoder.tower.attn_mask is model.attn_mask and encoder.tower.attn_mask.dtype == torch.float64
    assert after.dtype == torch.float64
    torch.testing.assert_close(after.float(), before, atol=1e-5, rtol=0)
