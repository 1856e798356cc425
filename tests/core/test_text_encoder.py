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


class CountingTokenizer:
    """open_clip's tokenizer, keeping every text it is asked to encode."""

    def __init__(self, tokenizer):
        self.tokenizer, self.texts = tokenizer, []

    def encode(self, text):
        self.texts.append(text)
        return self.tokenizer.encode(text)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_names_and_prompt_strings_are_tokenized_once_each(tiny_clip):
    model, tokenizer, _ = tiny_clip
    counting = CountingTokenizer(tokenizer)
    enc = PromptedTextEncoder(model, counting)
    counting.texts.clear()
    first = enc.token_ids(["hot_air_balloon", "tv"], 4, "front")
    again = enc.token_ids(["tv", "hot_air_balloon"], 4, "front")
    # the whole string "X .. X {name}." (module docstring), then the name alone for its length
    assert counting.texts == ["X X X X hot air balloon.", "hot air balloon", "X X X X tv.", "tv"]
    assert torch.equal(again[0], first[0].flip(0)) and torch.equal(again[1], first[1].flip(0))
    enc.token_ids(["tv"], 5, "end")  # another context length: another string, the same name
    assert counting.texts[4:] == ["X X X X X tv."]


WORDS = ["cat", "dog", "red", "blue", "green", "tree", "car", "sun", "sky", "sea", "box"]


def test_too_long_messages_give_the_sizes_and_the_first_ten_cut_names(tiny_clip, caplog):
    model, tokenizer, _ = tiny_clip
    name = " ".join(["word"] * 70)
    assert len(tokenizer.encode(name)) == 70  # with 16 context vectors 77 - 16 - 3 = 58 fit
    with pytest.raises(ValueError) as err:
        PromptedTextEncoder(model, tokenizer).token_ids(["cat", name], 16, "end")
    assert str(err.value) == (f"class name '{name}' is 70 tokens; with 16 context vectors at most 58 fit in the "
                              "77-token context. Shorten the name, or pass truncate_names=True to cut it to fit.")
    names = [f"{w} {name}" for w in WORDS]  # 11 names to cut: the message lists the first 10
    with caplog.at_level(logging.WARNING):
        PromptedTextEncoder(model, tokenizer, truncate_names=True).token_ids(["cat"] + names, 16, "end")
    messages = [r.getMessage() for r in caplog.records if r.name == "pomp_core.text_encoder"]
    assert messages == [f"cut 11 class names to 58 tokens to fit the context: {names[:10]}"]


def test_a_prompt_that_leaves_two_places_takes_a_one_token_name(tiny_clip):
    model, tokenizer, _ = tiny_clip
    enc = PromptedTextEncoder(model, tokenizer)
    ids, is_ctx = enc.token_ids(["cat"], 73, "end")  # SOS, 73 vectors, cat, period, EOT: 77
    assert torch.equal(ids, tokenizer([" ".join(["X"] * 73) + " cat."]))
    assert is_ctx[0].tolist() == [False] + [True] * 73 + [False] * 3


@pytest.mark.parametrize("position", POSITIONS)
def test_a_name_that_exactly_fills_the_context_fits_in_every_position(tiny_clip, position):
    model, tokenizer, _ = tiny_clip
    name = " ".join(["zebra"] * 70)  # 70 tokens and the period: the 71 places that 4 context vectors leave
    enc = PromptedTextEncoder(model, tokenizer)
    ids, is_ctx = enc.token_ids([name, "cat"], 4, position)
    assert torch.equal(ids, tokenizer([hand_text("X X X X", n, position) for n in (name, "cat")]))
    assert ids[0, -1] == tokenizer.eot_token_id
    assert (is_ctx.sum(1) == 4).all() and (ids[is_ctx] == enc.placeholder_id).all()


def test_a_tower_without_a_causal_mask_runs_all_positions(tiny_clip, monkeypatch):
    """Without the causal mask positions after the EOT reach its feature: no truncation."""
    model, tokenizer, _ = tiny_clip
    ids = tokenizer(["a small red striped circle", "x"])
    with torch.no_grad():
        causal = model.encode_text(ids)
    monkeypatch.setattr(model, "attn_mask", None)
    enc = PromptedTextEncoder(model, tokenizer)
    assert not enc.causal
    names = ["cat", "hot_air_balloon"]
    prompt = PromptLearner.from_words("a photo of a", model, tokenizer)
    with torch.no_grad():
        plain = model.encode_text(ids)
        torch.testing.assert_close(enc.encode_ids(ids), plain, atol=1e-5, rtol=0)
        want = model.encode_text(tokenizer([hand_text("a photo of a", n, "end") for n in names]))
        torch.testing.assert_close(enc(prompt, names), want, atol=1e-5, rtol=0)
    assert (plain - causal).abs().max() > 1e-3  # the mask matters: the test can fail


def test_an_eos_pooled_tower_reads_the_feature_at_the_first_eos_token(tiny_clip, monkeypatch):
    model, tokenizer, _ = tiny_clip
    dot = tokenizer.encode(".")[0]
    monkeypatch.setattr(model, "text_pool_type", "eos", raising=False)
    monkeypatch.setattr(model, "text_eos_id", dot, raising=False)
    enc = PromptedTextEncoder(model, tokenizer)
    assert (enc.tower.pool_type, enc.tower.eos_id) == ("eos", dot)
    ids = tokenizer(["a red circle.", "x. y.", "tv ."])
    # the first '.' of each row, not the largest id (the EOT)
    assert enc.eot_index(ids).tolist() == [row.tolist().index(dot) for row in ids]
    assert enc.eot_index(ids).tolist() != ids.argmax(dim=-1).tolist()


def test_prompt_width_message_names_the_model_the_prompt_was_made_for(tiny_clip):
    model, tokenizer, _ = tiny_clip
    enc = PromptedTextEncoder(model, tokenizer)
    advice = "the prompt was trained for another CLIP model; load the model it was made for "
    for model_name, said in ((None, "see the prompt file metadata"), ("ViT-L-14", "ViT-L-14")):
        with pytest.raises(ValueError) as err:
            enc(PromptLearner(n_ctx=4, width=512, model_name=model_name), ["cat"])
        assert str(err.value) == f"prompt width 512 does not match the text tower width 64: {advice}({said})."


def test_a_tokenizer_without_open_clips_interface_is_refused(tiny_clip):
    from types import SimpleNamespace

    model, tokenizer, _ = tiny_clip
    parts = {"encode": tokenizer.encode, "sot_token_id": tokenizer.sot_token_id, "eot_token_id": tokenizer.eot_token_id}
    for missing in parts:
        fake = SimpleNamespace(**{k: v for k, v in parts.items() if k != missing})
        with pytest.raises(TypeError) as err:
            PromptedTextEncoder(model, fake)
        assert str(err.value) == (f"SimpleNamespace is not an open_clip SimpleTokenizer (no '{missing}'); "
                                  "pass open_clip.get_tokenizer(model_name)")
    enc = PromptedTextEncoder(model, SimpleNamespace(**parts))  # the three are all it needs
    assert enc.placeholder_id == tokenizer.encode("X")[0] and enc.dot_ids == tokenizer.encode(".")
    assert enc.truncate_names is False and enc.min_group_rows == 16


def test_rows_are_cut_after_the_longest_eot_with_sos_and_a_shared_context_computed_once(tiny_clip, monkeypatch):
    """What the encoder hands pomp_core.length_aware: embeddings up to the batch's longest EOT,
    the positions every row shares (SOS, and the context slots before the name unless the
    context is class-specific) and the group size; truncate=False runs the plain computation."""
    import pomp_core.text_encoder as te

    model, tokenizer, _ = tiny_clip
    calls = []
    real = te.encode_causal

    def spy(tower, x, eot, shared, min_rows):
        calls.append((x.shape[1], int(eot.max()), shared, min_rows))
        return real(tower, x, eot, shared, min_rows)

    monkeypatch.setattr(te, "encode_causal", spy)
    enc = PromptedTextEncoder(model, tokenizer)
    names = ["cat", "hot_air_balloon", "tv"]  # 1, 3 and 1 name tokens
    ids = tokenizer(["a cat", "a tv"])
    with torch.no_grad():
        enc(PromptLearner(n_ctx=4, width=64), names)  # SOS, 4 slots, hot air balloon, ".", EOT: 10
        enc(PromptLearner(n_ctx=5, width=64, position="middle"), names)  # 11, sharing SOS + 2 slots
        enc(PromptLearner(n_ctx=4, width=64, class_specific=True, n_classes=3), names)  # SOS only
        enc.encode_ids(ids)  # SOS a cat EOT, sharing SOS and "a"
        enc.forward_embeddings(model.token_embedding(ids), ids)  # length-aware by default, uncut ids
        assert calls == [(10, 9, 5, 16), (11, 10, 3, 16), (10, 9, 1, 16), (4, 3, 2, 16), (77, 3, 2, 16)]
        enc(PromptLearner(n_ctx=4, width=64), names, truncate=False)
        enc.encode_ids(ids, truncate=False)
        enc.forward_embeddings(model.token_embedding(ids), ids, truncate=False)
    assert len(calls) == 5  # the plain computation: no length-aware encoding


@pytest.mark.parametrize("position", ["middle", "front"])
def test_a_name_token_with_the_placeholders_id_is_no_context_slot(tiny_clip, position):
    """"malcolm x": its "x" has the placeholder's id where "malcolm" has a context slot; the
    length-aware features must still equal the plain ones."""
    model, tokenizer, _ = tiny_clip
    torch.manual_seed(2)
    prompt = PromptLearner(n_ctx=4, width=64, position=position, init_std=0.5)
    enc = PromptedTextEncoder(model, tokenizer)
    names = ["malcolm", "malcolm x"]
    with torch.no_grad():
        torch.testing.assert_close(enc(prompt, names), enc(prompt, names, truncate=False), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16])  # float16 the same, but slow on CPUs
def test_a_low_precision_tower_gets_the_context_and_token_embeddings_in_its_dtype(dtype):
    """open_clip's fp16/bf16 precision (convert_weights_to_lp) lowers the blocks and the projection
    but keeps the token and position embeddings in float32: the encoder casts them to the blocks'."""
    import pomp_core
    from open_clip.model import convert_weights_to_lp

    torch.manual_seed(3)
    model, tokenizer, _ = pomp_core.load_clip("pomp-tiny")
    prompt = PromptLearner(n_ctx=4, width=64, init_std=0.3)  # float32, as trained
    enc = PromptedTextEncoder(model, tokenizer)
    ids = tokenizer(NAMES)
    with torch.no_grad():
        ref = [enc(prompt, NAMES), enc(prompt, NAMES, truncate=False), enc.encode_ids(ids)]
        convert_weights_to_lp(model, dtype=dtype)
        assert model.token_embedding.weight.dtype == torch.float32 and enc.cast_dtype == dtype
        got = [enc(prompt, NAMES), enc(prompt, NAMES, truncate=False), enc.encode_ids(ids)]
    for g, r in zip(got, ref):
        assert g.dtype == dtype
        assert ((g.float() - r).norm(dim=1) / r.norm(dim=1)).max() < 0.05


@pytest.mark.parametrize("class_specific", [False, True])
def test_ids_masks_and_context_follow_the_towers_device(class_specific):
    """Token ids and masks are built on the CPU; a tower on another device (the meta device
    here: no accelerator needed, and it mixes with CPU tensors no more than CUDA does) gets them
    on its own device, with the prompt's context."""
    import pomp_core

    model, tokenizer, _ = pomp_core.load_clip("pomp-tiny")
    model.to("meta")
    prompt = PromptLearner(n_ctx=4, width=64, class_specific=class_specific, n_classes=len(NAMES))
    out = PromptedTextEncoder(model, tokenizer)(prompt, NAMES, truncate=False)
    assert out.device.type == "meta" and out.shape == (len(NAMES), 48)


class MergingTokenizer(CountingTokenizer):
    """A tokenizer whose BPE merges a leading "@" of a name into the placeholder before it."""

    def encode(self, text):
        ids = self.tokenizer.encode(text)
        if " @" in text:
            at = text.split().index(next(w for w in text.split() if w.startswith("@")))
            ids[at - 1:at + 1] = [ids[at - 1] + 1]
        return ids


def test_a_name_that_merges_with_the_placeholders_is_named(tiny_clip):
    model, tokenizer, _ = tiny_clip
    enc = PromptedTextEncoder(model, MergingTokenizer(tokenizer))
    assert enc.prompt_tail("cat", 3) == tokenizer.encode("cat.")
    ids = MergingTokenizer(tokenizer).encode("X X X @big red home.")
    assert len(ids) == 7  # x x x@ big red home . : the message shows the first M + 2
    with pytest.raises(ValueError) as err:
        enc.prompt_tail("@big red home", 3)
    assert str(err.value) == (f"class name '@big red home' merges with the context placeholders when tokenized "
                              f"({ids[:5]}); strip its leading symbols")
