"""Pairwise reward-model losses as pure tensor functions.

Shapes: ``chosen_rewards (B,)``, ``rejected_rewards (B,)``; optional per-pair ``margin (B,)``,
``weights (B,)`` and ``labels (B,)`` (probability that the chosen response is preferred).
Every loss returns a scalar: the weighted mean over pairs. Equation numbers refer to
Wang et al. 2024, "Secrets of RLHF in Large Language Models Part II: Reward Modeling" (arXiv 2401.06080).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _weighted_mean(per_pair: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return per_pair.mean()
    weights = weights.to(per_pair.dtype)
    return (per_pair * weights).sum() / weights.sum().clamp_min(1e-12)


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    *,
    margin: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bradley-Terry loss ``-log sigmoid(r_c - r_r - m)`` (Eq. 1; with a margin, Eq. 6).

    With ``margin=None`` this is the plain BT loss. The margin form is Llama-2's and TRL's
    (``RewardTrainer`` subtracts the dataset's ``margin`` column the same way).
    """
    diff = chosen_rewards - rejected_rewards  # (B,)
    if margin is not None:
        diff = diff - margin.to(diff.dtype)
    return _weighted_mean(-F.logsigmoid(diff), weights)


def soft_label_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    *,
    labels: torch.Tensor,
    margin: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy against a soft target: ``-(y log p + (1-y) log(1-p))``, p = sigmoid(r_c - r_r - m).

    With ``y = 1 - alpha`` this is the paper's label smoothing (Eq. 5); ``y = 0.5`` is a tie.
    Uses logsigmoid on both sides (``log(1-p) = logsigmoid(-d)``) so it stays finite for large |d|.
    """
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin.to(diff.dtype)
    labels = labels.to(diff.dtype)
    per_pair = -(labels * F.logsigmoid(diff) + (1.0 - labels) * F.logsigmoid(-diff))
    return _weighted_mean(per_pair, weights)
