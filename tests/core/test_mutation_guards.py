"""Behaviours that plausible one-line bugs broke without any other test noticing
(each checked by mutating the code): the ``middle`` prompt with an odd number of context
vectors, the cached view drawn per epoch, classify's softmax over classes, and the
federated loss never drawing a present class twice."""
import numpy as np
import pytest
import torch
from PIL import Image

from pomp_core import PromptedTextEncoder, PromptLearner
from pomp_core.pretrain.feature_cache import FeatureCacheDataset
from pomp_core.transfer.predict import classify

NAMES = ["cat", "hot_air_balloon", "tv", "a rather long kind of tropical fish"]


@pytest.mark.parametrize("n_ctx", [1, 3, 5])
def test_middle_with_odd_context_splits_like_coop(tiny_clip, n_ctx):
    """CoOp's ``middle``: the first n_ctx // 2 vectors before the name, the rest after it."""
    model, tokenizer, _ = tiny_clip
    enc = PromptedTextEncoder(model, tokenizer)
    ids, is_ctx = enc.token_ids(NAMES, n_ctx, "middle")
    half = n_ctx // 2
    sentences = [" ".join(["X"] * half + [n.replace("_", " ")] + ["X"] * (n_ctx - half)) + "." for n in NAMES]
    assert torch.equal(ids, tokenizer(sentences))
    assert (is_ctx.sum(1) == n_ctx).all()
    assert (ids[is_ctx] == enc.placeholder_id).all()  # the mask sits on the placeholders
    for row, name in enumerate(NAMES):
        n_name = len(enc.name_tokens(name))
        expected = [False] + [True] * half + [False] * n_name + [True] * (n_ctx - half)
        assert is_ctx[row, : len(expected)].tolist() == expected
        assert not is_ctx[row, len(expected):].any()


def test_middle_words_prompt_with_odd_length_equals_the_sentence(tiny_clip):
    model, tokenizer, _ = tiny_clip
    prompt = PromptLearner.from_words("a photo of", model, tokenizer, position="middle")
    with torch.no_grad():
        ours = PromptedTextEncoder(model, tokenizer)(prompt, NAMES)
        ref = model.encode_text(tokenizer([f"a {n.replace('_', ' ')} photo of." for n in NAMES]))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_cached_views_change_with_the_epoch():
    """With cache_views > views, each epoch draws its own views of an image (seeded)."""
    n, cache_views, dim = 5, 4, 3
    feats = np.arange(n * cache_views * dim, dtype=np.float16).reshape(n, cache_views, dim)
    ds = FeatureCacheDataset((feats, np.ones(n, dtype=bool)), [(f"{i}.png", i % 2) for i in range(n)],
                             views=2, seed=7)

    def picks(epoch):
        ds.set_epoch(epoch)
        return [tuple(ds[i][0][:, 0].tolist()) for i in range(n)]

    epochs = [picks(e) for e in range(6)]
    assert picks(3) == epochs[3]  # the same epoch draws the same views
    for i in range(n):
        assert len({e[i] for e in epochs}) > 1, f"image {i} got the same cached views every epoch"
    for e in epochs:  # two distinct views, each one of the image's own
        for i, views in enumerate(e):
            own = {float(v) for v in feats[i, :, 0]}
            assert len(set(views)) == 2 and set(views) <= own


def test_classify_is_a_softmax_over_classes_per_image(tiny_clip, tmp_path):
    model, tokenizer, preprocess = tiny_clip
    rng = np.random.default_rng(0)
    for i in range(3):  # 3 images, 5 classes: a softmax over images would not sum to 1 per image
        Image.fromarray(rng.integers(0, 255, (40 + 7 * i, 50, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    names = ["cat", "dog", "red circle", "blue square", "tv"]
    rows = classify(model, tokenizer, preprocess, tmp_path, "a photo of a {}.", names, topk=len(names))
    assert len(rows) == 3
    for _, top in rows:
        probs = [p for _, p in top]
        assert sorted({name for name, _ in top}) == sorted(names)
        assert probs == sorted(probs, reverse=True)
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_federated_classes_never_draw_a_present_class_again(seed):
    from pomp_det.fast_rcnn import federated_classes

    torch.manual_seed(seed)
    num_classes = 12
    weight = torch.linspace(0.1, 2.0, num_classes)
    weight[[10, 11]] *= 50  # the present classes are the likeliest draws
    weight[3] = 0  # never drawn
    gt = torch.tensor([11, 10, 11, num_classes, 10])  # num_classes = background
    chosen = federated_classes(gt, num_sample=8, weight=weight)
    assert chosen.numel() == len(set(chosen.tolist()))  # no class twice
    assert 7 <= chosen.numel() <= 8  # Detic counts a present background towards the 8
    assert {10, 11} <= set(chosen.tolist()) and 3 not in chosen.tolist()
    # asking for more than exist: every class of non-zero weight once, plus the present ones
    everything = federated_classes(gt, num_sample=50, weight=weight)
    assert sorted(everything.tolist()) == [c for c in range(num_classes) if c != 3]
