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
