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
