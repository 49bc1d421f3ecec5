"""The triplet loss against a hand computation, and its edge cases."""

import math

import pytest
import torch

from artsim_lib.core import losses


def test_loss_matches_the_formula_by_hand():
    s_pos, s_neg, tau = (
        torch.tensor([0.9, 0.1], dtype=torch.float64),
        torch.tensor([0.2, 0.5], dtype=torch.float64),
        0.1,
    )
    by_hand = [
        -math.log(math.exp(p / tau) / (math.exp(p / tau) + math.exp(n / tau)))
        for p, n in zip(s_pos.tolist(), s_neg.tolist())
    ]
    got = losses.infonce_triplet_loss(s_pos, s_neg, tau, reduction="none")
    assert got.tolist() == pytest.approx(by_hand, rel=1e-6)
    assert losses.infonce_triplet_loss(s_pos, s_neg, tau).item() == pytest.approx(sum(by_hand) / 2, rel=1e-6)


def test_loss_is_stable_at_small_temperature_and_log2_when_tied():
    s = torch.tensor([1.0, -1.0])
    assert torch.isfinite(losses.infonce_triplet_loss(s, -s, 1e-4, reduction="none")).all()
    tied = losses.infonce_triplet_loss(torch.tensor([0.3]), torch.tensor([0.3]), 0.05)
    assert tied.item() == pytest.approx(math.log(2), rel=1e-6)


def test_several_negatives_sum_in_the_denominator():
    s_pos, s_neg, tau = torch.tensor([0.5]), torch.tensor([[0.1, 0.4]]), 0.2
    by_hand = -math.log(math.exp(0.5 / tau) / sum(math.exp(x / tau) for x in (0.5, 0.1, 0.4)))
    assert losses.infonce_triplet_loss(s_pos, s_neg, tau).item() == pytest.approx(by_hand, rel=1e-6)


def test_similarities_and_in_batch_negatives():
    torch.manual_seed(0)
    a = torch.randn(4, 8)
    s_pos, s_neg = losses.triplet_similarities(a, 2 * a, -a)
    assert torch.allclose(s_pos, torch.ones(4)) and torch.allclose(s_neg, -torch.ones(4))
    negs = losses.in_batch_negatives(a, a)
    assert negs.shape == (4, 3) and (negs < 1 - 1e-6).all()


def test_in_batch_negatives_of_the_same_original_are_masked_by_hand():
    # Four items, the first two from one original: a_0 must not see p_1 (a derivative of its own
    # painting) as a negative, nor a_1 p_0; every other entry is the plain cosine a_i . p_j.
    a = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]])
    p = torch.tensor([[1.0, 1.0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    r = 2**-0.5
    full = torch.tensor([[r, 1, 0, 0], [r, 0, 1, 0], [0, 0, 0, 1], [1, r, r, 0]])  # cos(a_i, p_j) by hand
    off = ~torch.eye(4, dtype=torch.bool)
    plain = losses.in_batch_negatives(a, p)
    assert torch.allclose(plain, full[off].view(4, 3), atol=1e-6)
    masked = losses.in_batch_negatives(a, p, torch.tensor([7, 7, 3, 5]))
    expect = full[off].view(4, 3).clone()
    expect[0, 0] = expect[1, 0] = float("-inf")  # row 0: j = 1; row 1: j = 0
    assert torch.equal(torch.isinf(masked), torch.isinf(expect))
    assert torch.allclose(masked[~torch.isinf(masked)], expect[~torch.isinf(expect)], atol=1e-6)
    assert torch.allclose(losses.in_batch_negatives(a, p, torch.arange(4)), plain)  # all distinct: nothing masked
