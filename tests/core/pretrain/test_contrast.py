import math

import pytest
import torch
import torch.nn.functional as F

from pomp_core.pretrain.contrast import (build_contrast_batch, local_contrast_logits,
                                         local_contrast_loss, sample_negatives)


def test_negatives_are_distinct_and_shared():
    g = torch.Generator().manual_seed(0)
    neg = sample_negatives(50, 20, generator=g)
    assert len(neg) == 19 and len(set(neg.tolist())) == 19 and neg.max() < 50
    assert sample_negatives(10, 10).tolist() == list(range(10))  # K = N: every class
    with pytest.raises(ValueError, match="at least 2"):
        sample_negatives(10, 1)
    freq = torch.tensor([0.0, 0.5, 0.5, 0.0])
    assert sorted(sample_negatives(4, 3, proposal=freq, generator=g).tolist()) == [1, 2]


def test_margin_matches_the_published_values():
    """log10((N-1)/(K-1-r_i)): 1.0 at K=1000 and 1.5 at K=319 with N=10,450."""
    n = 10450
    for k, expected in [(1000, 1.0195), (319, 1.5166)]:
        labels = torch.tensor([0, 5])
        negatives = torch.arange(5, 5 + k - 1)  # contains label 5, not label 0
        b = build_contrast_batch(labels, negatives, n)
        assert b.margin[0, 0].item() == pytest.approx(expected, abs=1e-4)
        assert b.margin[0, 0].item() == pytest.approx(math.log10((n - 1) / (k - 1)), abs=1e-5)
        # row 1 drew its own class: masked, and its margin uses K-1-1 valid negatives
        assert b.margin[1, 0] == float("-inf")
        assert b.margin[1, 1].item() == pytest.approx(math.log10((n - 1) / (k - 2)), abs=1e-5)
    nat = build_contrast_batch(torch.tensor([0]), torch.arange(1, 100), n, log_base=math.e)
    assert nat.margin[0, 0].item() == pytest.approx(math.log((n - 1) / 99), abs=1e-5)
    off = build_contrast_batch(torch.tensor([0, 3]), torch.arange(1, 100), n, log_base=None)
    assert (off.margin[0] == 0).all() and off.margin[1, 2] == float("-inf")


def test_each_class_is_encoded_once():
    labels = torch.tensor([4, 4, 7, 2, 7])
    negatives = torch.tensor([7, 9, 1])
    b = build_contrast_batch(labels, negatives, 10)
    assert b.classes.tolist() == [1, 2, 4, 7, 9]
    assert b.classes[b.pos_index].tolist() == labels.tolist()
    assert b.classes[b.neg_index].tolist() == negatives.tolist()


def test_logits_layout_and_masking():
    torch.manual_seed(0)
    labels = torch.tensor([1, 3])
    negatives = torch.tensor([3, 0])
    b = build_contrast_batch(labels, negatives, 5, log_base=None)
    img, txt = torch.randn(2, 8), torch.randn(len(b.classes), 8)
    logits = local_contrast_logits(img, txt, b, logit_scale=10.0)
    cos = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()
    cls = {c: i for i, c in enumerate(b.classes.tolist())}
    assert logits[0].tolist() == pytest.approx([10 * cos[0, cls[c]].item() for c in (1, 3, 0)], abs=1e-5)
    assert logits[1, 0].item() == pytest.approx(10 * cos[1, cls[3]].item(), abs=1e-5)
    assert logits[1, 1] == float("-inf")  # its own class among the negatives
    assert torch.isfinite(local_contrast_loss(logits))


@pytest.mark.parametrize("proposal", [None, "frequency"])
def test_k_equal_n_is_the_full_softmax(proposal):
    torch.manual_seed(0)
    n, dim = 12, 16
    q = torch.rand(n) + 0.1 if proposal else None
    q = q / q.sum() if q is not None else None
    labels = torch.tensor([0, 5, 5, 11])
    negatives = sample_negatives(n, n, proposal=q)
    b = build_contrast_batch(labels, negatives, n, proposal=q)
    img, txt_all = torch.randn(4, dim), torch.randn(n, dim)
    loss = local_contrast_loss(local_contrast_logits(img, txt_all[b.classes], b, 50.0))
    full = 50.0 * F.normalize(img, dim=-1) @ F.normalize(txt_all, dim=-1).t()
    assert loss.item() == pytest.approx(F.cross_entropy(full, labels).item(), abs=1e-5)


def test_non_uniform_correction_against_a_hand_computation():
    q = torch.tensor([0.4, 0.3, 0.2, 0.1])
    b = build_contrast_batch(torch.tensor([0, 1]), torch.tensor([1, 3]), 4, proposal=q)
    # row 0: two valid negatives, q renormalised without class 0 -> q_j / 0.6
    assert b.margin[0].tolist() == pytest.approx([-math.log10(2 * 0.3 / 0.6), -math.log10(2 * 0.1 / 0.6)], abs=1e-6)
    # row 1 drew its own class: one valid negative, q renormalised without class 1
    assert b.margin[1, 0] == float("-inf")
    assert b.margin[1, 1].item() == pytest.approx(-math.log10(1 * 0.1 / 0.7), abs=1e-6)


def hand_margins(labels, negatives, n, base, q=None):
    """POMP_NOTES §4 written out row by row: m_ij = log_b((N-1)/(K-1-r_i)) for the uniform
    proposal, -log_b(n_i q_j / (1 - q_{y_i})) for another, -inf where j is the row's own class."""
    rows = []
    for y in labels:
        valid = [j for j in negatives if j != y]  # n_i = K-1-r_i
        rows.append([float("-inf") if j == y
                     else math.log((n - 1) / len(valid), base) if q is None
                     else -math.log(len(valid) * q[j] / (1 - q[y]), base) for j in negatives])
    return torch.tensor(rows)


@pytest.mark.parametrize("base", [10.0, 2.0, math.e])
def test_margins_of_several_rows_by_hand(base):
    # 9 classes, K-1 = 4 negatives; rows 1, 2 and 3 drew their own class (one each), rows 0 and 4 did not
    labels, negatives = [0, 2, 2, 7, 8], [2, 5, 7, 1]
    b = build_contrast_batch(torch.tensor(labels), torch.tensor(negatives), 9, log_base=base)
    torch.testing.assert_close(b.margin, hand_margins(labels, negatives, 9, base), atol=1e-6, rtol=1e-6)
    assert b.margin.dtype == torch.float32
    q = [0.05, 0.2, 0.15, 0.1, 0.02, 0.08, 0.12, 0.18, 0.1]  # non-uniform, sums to 1
    b = build_contrast_batch(torch.tensor(labels), torch.tensor(negatives), 9, proposal=torch.tensor(q), log_base=base)
    torch.testing.assert_close(b.margin, hand_margins(labels, negatives, 9, base, q), atol=1e-5, rtol=1e-5)


def test_one_negative_that_is_the_own_class_leaves_the_row_its_positive_only():
    # K = 2: a single negative; the row that drew its own class has no valid negative (n_i clamps to 1)
    b = build_contrast_batch(torch.tensor([3, 1]), torch.tensor([3]), 5)
    assert b.margin[0, 0] == float("-inf")
    assert b.margin[1, 0].item() == pytest.approx(math.log10(4 / 1), abs=1e-6)
    logits = local_contrast_logits(torch.eye(2, 3), torch.eye(2, 3)[[1, 0]], b, 1.0)
    assert local_contrast_loss(logits[:1]).item() == pytest.approx(0.0, abs=1e-7)  # softmax of [x, -inf]


def test_the_batch_records_the_negatives_and_the_encoded_classes():
    labels, negatives = torch.tensor([6, 0, 6]), torch.tensor([4, 0, 9, 2])
    b = build_contrast_batch(labels, negatives, 12)
    assert b.classes.tolist() == [0, 2, 4, 6, 9]
    assert b.pos_index.tolist() == [3, 0, 3] and b.neg_index.tolist() == [2, 0, 4, 1]
    assert b.negatives.tolist() == [4, 0, 9, 2]
    assert b.margin.shape == (3, 4) and b.margin[1, 1] == float("-inf")


def test_negatives_are_the_seeded_generators_draws():
    """Uniform: randperm's first K-1; a proposal: multinomial without replacement; same seed, same draw."""
    neg = sample_negatives(50, 20, generator=torch.Generator().manual_seed(4))
    assert neg.tolist() == torch.randperm(50, generator=torch.Generator().manual_seed(4))[:19].tolist()
    q = torch.linspace(1.0, 3.0, 50, dtype=torch.float64)
    q = q / q.sum()
    neg = sample_negatives(50, 20, proposal=q, generator=torch.Generator().manual_seed(4))
    want = torch.multinomial(q, 19, replacement=False, generator=torch.Generator().manual_seed(4))
    assert neg.tolist() == want.tolist() and len(set(neg.tolist())) == 19
    # K = 2 is the smallest: one negative; K = N - 1 still samples (8 of 10), K > N takes every class
    assert len(sample_negatives(10, 2, generator=torch.Generator().manual_seed(0))) == 1
    eight = sample_negatives(10, 9, generator=torch.Generator().manual_seed(0))
    assert len(eight) == 8 and len(set(eight.tolist())) == 8
    assert sample_negatives(10, 11).tolist() == list(range(10))
    # three classes with mass and three to draw: without replacement they are exactly those three
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        drawn = sample_negatives(8, 4, proposal=torch.tensor([0, 0.7, 0, 0.2, 0, 0, 0.1, 0]), generator=g)
        assert sorted(drawn.tolist()) == [1, 3, 6]


def test_logits_keep_the_features_dtype_and_scale_by_hand():
    labels, negatives = torch.tensor([2, 0]), torch.tensor([1, 2])
    b = build_contrast_batch(labels, negatives, 6)
    img = torch.tensor([[3.0, 4.0, 0.0], [0.0, 1.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 5.0]])  # classes 0, 1, 2
    logits = local_contrast_logits(img, txt, b, torch.tensor(20.0))
    m = math.log10(5 / 2)  # row 0 drew its own class: n_0 = 1
    want = torch.tensor([[20 * 0.0, 20 * 0.8 + math.log10(5 / 1), float("-inf")],
                         [20 * 0.0, 20 * 2 ** -0.5 + m, 20 * 2 ** -0.5 + m]])
    torch.testing.assert_close(logits, want)
    half = local_contrast_logits(img.bfloat16(), txt.bfloat16(), b, 20.0)
    assert half.dtype == torch.bfloat16
    loss = local_contrast_loss(want)
    hand = -torch.log_softmax(want, dim=1)[:, 0].mean()
    assert loss.item() == pytest.approx(hand.item(), abs=1e-6)


def test_logits_and_loss_follow_the_features_device():
    """The batch is laid out on the CPU; the features live on the accelerator (here the meta
    device, which mixes with CPU tensors no more than CUDA does): margins and targets must follow."""
    b = build_contrast_batch(torch.tensor([2, 0]), torch.tensor([1, 2]), 6)
    img, txt = torch.randn(2, 3, device="meta"), torch.randn(3, 3, device="meta")
    logits = local_contrast_logits(img, txt, b, 10.0)
    assert logits.device.type == "meta" and logits.shape == (2, 3)
    assert local_contrast_loss(logits).device.type == "meta"
