"""Losses against numbers computed by hand."""

import math

import pytest
import torch

from rmkit.losses import bradley_terry_loss, soft_label_loss

C = torch.tensor([2.0, 0.0, -1.0])
R = torch.tensor([1.0, 0.0, 1.0])
# d = [1, 0, -2]; -log sigmoid(d) = log(1 + e^-d)
BT = [math.log(1 + math.exp(-1)), math.log(2), math.log(1 + math.exp(2))]  # 0.31326, 0.69315, 2.12693


def test_bradley_terry_by_hand():
    assert bradley_terry_loss(C, R).item() == pytest.approx(sum(BT) / 3, abs=1e-6)
    assert bradley_terry_loss(C, R).item() == pytest.approx(1.044447, abs=1e-5)


def test_bradley_terry_margin_and_weights():
    m = torch.tensor([1.0, -1.0, 0.0])  # d - m = [0, 1, -2]
    expected = (math.log(2) + math.log(1 + math.exp(-1)) + math.log(1 + math.exp(2))) / 3
    assert bradley_terry_loss(C, R, margin=m).item() == pytest.approx(expected, abs=1e-6)
    w = torch.tensor([1.0, 0.0, 3.0])
    assert bradley_terry_loss(C, R, weights=w).item() == pytest.approx((BT[0] + 3 * BT[2]) / 4, abs=1e-6)


def test_bradley_terry_is_stable_for_large_gaps():
    loss = bradley_terry_loss(torch.tensor([-200.0]), torch.tensor([200.0]))
    assert loss.item() == pytest.approx(400.0, rel=1e-6)  # the 1e-5-epsilon form would give 11.5
    assert bradley_terry_loss(torch.tensor([200.0]), torch.tensor([-200.0])).item() == pytest.approx(0.0, abs=1e-12)


def test_soft_label_by_hand():
    # alpha = 0.1: y = 0.9; loss = -(0.9 log s(d) + 0.1 log s(-d))
    y = torch.full((3,), 0.9)
    per = [0.9 * BT[i] + 0.1 * (BT[i] + d) for i, d in enumerate([1.0, 0.0, -2.0])]  # -log s(-d) = -log s(d) + d
    assert soft_label_loss(C, R, labels=y).item() == pytest.approx(sum(per) / 3, abs=1e-6)
    # y = 1 is plain BT; y = 0.5 (a tie) is minimised at d = 0
    assert soft_label_loss(C, R, labels=torch.ones(3)).item() == pytest.approx(sum(BT) / 3, abs=1e-6)
    d = torch.zeros(1, requires_grad=True)
    soft_label_loss(d, torch.zeros(1), labels=torch.tensor([0.5])).backward()
    assert d.grad.item() == pytest.approx(0.0, abs=1e-7)


# ---- contrastive losses, on numbers worked out by hand


def test_simcse_matches_hand_computation():
    from rmkit.losses import simcse_loss

    v1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v2 = torch.tensor([[3.0, 3.0], [0.0, 2.0]])  # unit vectors (.7071, .7071) and (0, 1): norms do not matter
    # tau = 1: logits [[.7071, 0], [.7071, 1]]; row 0: log(1 + e^-.7071), row 1: log(1 + e^-(1 - .7071))
    expected = 0.5 * (math.log1p(math.exp(-0.5 ** 0.5)) + math.log1p(math.exp(-(1 - 0.5 ** 0.5))))
    assert simcse_loss(v1, v2, temperature=1.0).item() == pytest.approx(expected, abs=1e-6)
    # identical orthogonal views at tau 0.5: logits [[2, 0], [0, 2]], each row log(1 + e^-2)
    assert simcse_loss(v1, v1, temperature=0.5).item() == pytest.approx(math.log1p(math.exp(-2)), abs=1e-6)


def test_sinkhorn_codes_are_a_balanced_rescaling_of_the_scores():
    from rmkit.losses import sinkhorn

    torch.manual_seed(0)
    scores = torch.randn(12, 3)
    q = sinkhorn(scores, epsilon=0.5, iters=50)
    torch.testing.assert_close(q.sum(1), torch.ones(12))  # every instance: a distribution over prototypes
    torch.testing.assert_close(q.sum(0), torch.full((3,), 4.0), atol=1e-4, rtol=0)  # equal share per prototype
    # Q = diag(a) exp(S / eps) diag(b): log Q - S/eps is a row term plus a column term.
    r = q.log() - scores / 0.5
    torch.testing.assert_close(r - r[:, :1] - r[:1, :] + r[0, 0], torch.zeros_like(r), atol=1e-4, rtol=0)


def test_swav_swapped_prediction_by_hand():
    from rmkit.losses import swav_loss

    eye = torch.eye(2)
    # Features on the prototypes: codes are one-hot; each view predicts the other's prototype with
    # softmax([10, 0]) (tau 0.1), so the loss is log(1 + e^-10).
    assert swav_loss(eye, eye, eye, temperature=0.1).item() == pytest.approx(math.log1p(math.exp(-10)), rel=1e-3)
    # Views that swap prototypes: the target is the other prototype, -log softmax([10, 0])[1] = 10 + log(1 + e^-10).
    swapped = eye.flip(0)
    assert swav_loss(eye, swapped, eye, temperature=0.1).item() == pytest.approx(10 + math.log1p(math.exp(-10)), rel=1e-5)


def test_contrastive_instances_variants():
    from rmkit.losses import contrastive_instances

    c, r = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, -1.0]])
    torch.testing.assert_close(contrastive_instances(c, r, "pairs"), torch.tensor([[1.0, 2.0], [0.5, -1.0]]))
    torch.testing.assert_close(contrastive_instances(c, r, "diff"), torch.tensor([[0.5, 3.0], [-0.5, -3.0]]))
    with pytest.raises(ValueError, match="pairs' or 'diff'"):
        contrastive_instances(c, r, "both")
