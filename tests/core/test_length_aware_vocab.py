"""Length-aware encoding is exact on any vocabulary: a batch gives every name the feature it
gets alone and the feature of the plain computation over all 77 positions.

Random vocabularies mix the cases that break a prefix shared by ids alone: names that begin
alike and go on with the placeholder word "x" (its id is the context slots' id), names of mixed
lengths, duplicates, punctuation that merges with the period, and class-specific contexts with
repeated classes.
"""
import random

import pytest
import torch

from pomp_core import PromptedTextEncoder, PromptLearner
from pomp_core.length_aware import shared_prefix

WORDS = ["x", "X", "malcolm", "cat", "fish", "red", "of", "the", "x-ray", "ox", "xx", "tv", "sea", "anemone",
         "bow_(weapon)", "st.", "head!", "great", "white", "shark", "king", "penguin"]


def vocabulary(rng: random.Random, size: int):
    """``size`` names that all begin with one random stem of 1-2 words and go on, if at all,
    with "x" and 0-4 random words, so that every row agrees on the ids up to where the bare
    stem's context slots meet the others' "x" (there a prefix shared by ids alone runs too
    far); the bare stem and a few duplicates included."""
    stem = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 2)))
    names = [stem + (rng.choice(["", " x", " X"]) if rng.random() < 0.5 else
                     " x " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))) for _ in range(size)]
    names += [stem] + [rng.choice(names) for _ in range(2)]
    rng.shuffle(names)
    return names


def relative_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).norm(dim=1) / b.norm(dim=1)


# (seed, position, class_specific, n_ctx, min_rows): odd and even M (middle splits M // 2),
# groups of one row and one group of all rows
CASES = [(seed, position, csc, n_ctx, min_rows)
         for seed, (n_ctx, min_rows) in enumerate([(4, 1), (5, 3), (1, 16), (7, 2)])
         for position in ("end", "middle", "front") for csc in (False, True)]


@pytest.mark.parametrize("seed,position,class_specific,n_ctx,min_rows", CASES)
def test_batch_equals_one_by_one_and_the_plain_computation(tiny_clip, seed, position, class_specific, n_ctx,
                                                           min_rows):
    model, tokenizer, _ = tiny_clip
    rng = random.Random(seed)
    names = vocabulary(rng, 10)
    enc = PromptedTextEncoder(model, tokenizer)
    enc.min_group_rows = min_rows
    torch.manual_seed(seed)
    n_classes = 6
    prompt = PromptLearner(n_ctx=n_ctx, width=64, position=position, class_specific=class_specific,
                           n_classes=n_classes, init_std=0.5)
    # repeated classes: rows with equal names and contexts, and equal names with other contexts
    class_ids = torch.tensor([rng.randrange(n_classes) for _ in names]) if class_specific else None
    with torch.no_grad():
        batch = enc(prompt, names, class_ids=class_ids)
        alone = torch.cat([enc(prompt, [name], class_ids=None if class_ids is None else class_ids[i:i + 1])
                           for i, name in enumerate(names)])
        plain = enc(prompt, names, class_ids=class_ids, truncate=False)
    assert relative_error(batch, alone).max() < 2e-6, names
    assert relative_error(batch, plain).max() < 2e-6, names
    # the names differ in their features (the comparison is not between equal rows)
    assert relative_error(plain[:1].expand_as(plain), plain).max() > 0.05


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_prompt_gradient_of_an_x_vocabulary_equals_the_plain_one(tiny_clip, position):
    model, tokenizer, _ = tiny_clip
    names = ["malcolm", "malcolm x", "malcolm x x", "malcolm x ray", "malcolm X", "malcolm"]
    enc = PromptedTextEncoder(model, tokenizer)
    enc.min_group_rows = 1
    torch.manual_seed(4)
    prompt = PromptLearner(n_ctx=4, width=64, position=position, init_std=0.5)
    weights = torch.randn(len(names), 48)
    grads = []
    for truncate in (True, False):
        prompt.ctx.grad = None
        (enc(prompt, names, truncate=truncate) * weights).sum().backward()
        grads.append(prompt.ctx.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)
    assert grads[1].abs().max() > 1e-2


def test_a_real_x_token_ends_the_shared_prefix(tiny_clip):
    """"malcolm x": its "x" token has the placeholder's id where "malcolm" has a context slot."""
    model, tokenizer, _ = tiny_clip
    enc = PromptedTextEncoder(model, tokenizer)
    assert len(enc.name_tokens("malcolm")) == 1 and enc.name_tokens("malcolm x")[1] == enc.placeholder_id
    # M = 4: SOS, then (end) 4 slots and "malcolm"; (middle) 2 slots and "malcolm"; (front) "malcolm"
    # (position, shared by ids alone, exact, exact with class-specific contexts)
    for position, by_ids, exact, csc in [("end", 6, 6, 1), ("middle", 6, 4, 1), ("front", 6, 2, 2)]:
        ids, is_ctx = enc.token_ids(["malcolm", "malcolm x"], 4, position)
        eot = enc.eot_index(ids)
        assert shared_prefix(ids, eot) == by_ids, position  # ids alone: past the first difference
        assert shared_prefix(ids, eot, is_ctx=is_ctx) == exact, position
        assert shared_prefix(ids, eot, per_row=is_ctx, is_ctx=is_ctx) == csc, position
