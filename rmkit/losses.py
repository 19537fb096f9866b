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


# ------------------------------------------------------------------------------------------
# Contrastive losses on features (Section 3 of the paper). ``view1``/``view2`` (N, H) are the same N
# instances seen through two independent dropout masks.


def simcse_loss(view1: torch.Tensor, view2: torch.Tensor, *, temperature: float = 0.05) -> torch.Tensor:
    """InfoNCE over cosine similarity (Eq. 9): instance i's positive is its own second view,
    the other N-1 second views are its negatives. Mean over instances."""
    z1 = F.normalize(view1.float(), dim=-1)
    z2 = F.normalize(view2.float(), dim=-1)
    logits = z1 @ z2.T / temperature  # (N, N): row i scores instance i's view 1 against every view 2
    return F.cross_entropy(logits, torch.arange(len(z1), device=z1.device))


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, *, epsilon: float = 0.05, iters: int = 3) -> torch.Tensor:
    """Soft codes (N, K) from prototype scores (N, K): each row sums to 1, and over the batch every
    prototype receives an equal share (the equipartition constraint that stops SwAV collapsing)."""
    q = torch.exp((scores.float() - scores.float().max()) / epsilon).T  # (K, N); shift for stability
    q = q / q.sum()
    k, n = q.shape
    for _ in range(iters):
        q = q / q.sum(dim=1, keepdim=True) / k  # rows: prototypes, each with mass 1/K
        q = q / q.sum(dim=0, keepdim=True) / n  # columns: instances, each with mass 1/N
    return (q * n).T  # (N, K), rows sum to 1


def swav_loss(view1: torch.Tensor, view2: torch.Tensor, prototypes: torch.Tensor, *, temperature: float = 0.1,
              epsilon: float = 0.05, sinkhorn_iters: int = 3) -> torch.Tensor:
    """Swapped prediction (Eqs. 7-8): the code of one view (Sinkhorn, no gradient) is the target of the
    other view's softmax over prototype similarities, both ways, averaged.

    ``prototypes`` (K, H) are learnable; they are L2-normalised here, as are the features.
    """
    c = F.normalize(prototypes.float(), dim=-1)
    s1 = F.normalize(view1.float(), dim=-1) @ c.T  # (N, K)
    s2 = F.normalize(view2.float(), dim=-1) @ c.T
    q1 = sinkhorn(s1, epsilon=epsilon, iters=sinkhorn_iters)
    q2 = sinkhorn(s2, epsilon=epsilon, iters=sinkhorn_iters)
    l12 = -(q2 * F.log_softmax(s1 / temperature, dim=-1)).sum(-1).mean()  # view 1 predicts view 2's code
    l21 = -(q1 * F.log_softmax(s2 / temperature, dim=-1)).sum(-1).mean()
    return 0.5 * (l12 + l21)


def contrastive_instances(chosen: torch.Tensor, rejected: torch.Tensor, on: str) -> torch.Tensor:
    """What is contrasted (the paper's two variants): ``pairs``: the chosen and rejected features as
    2B separate instances; ``diff``: the difference ``f_c - f_r`` and its negation, 2B instances."""
    if on == "pairs":
        return torch.cat([chosen, rejected])
    if on == "diff":
        d = chosen - rejected
        return torch.cat([d, -d])
    raise ValueError(f"contrastive instances must be 'pairs' or 'diff', got {on!r}")


# ------------------------------------------------------------------------------------------
# PPO (PPO-max, the setting of Part I that Part II uses). Per-token tensors (B, T) with a 0/1 ``mask``
# of the response tokens; means are over the masked tokens of the batch.


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp_min(1)


def ppo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                    clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped surrogate ``-min(rho A, clip(rho, 1-eps, 1+eps) A)`` with ``rho = pi / pi_old``;
    returns the loss and the share of tokens where the clip was active."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).float(), mask)


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, *,
                   clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """``0.5 * max((V - R)^2, (V_clip - R)^2)`` where ``V_clip`` stays within ``clip`` of the rollout's
    values; returns the loss and the share of tokens where the clipped error was the larger."""
    v_clipped = old_values + (values - old_values).clamp(-clip, clip)
    err, err_clipped = (values - returns) ** 2, (v_clipped - returns) ** 2
    return 0.5 * masked_mean(torch.maximum(err, err_clipped), mask), masked_mean((err_clipped > err).float(), mask)


def difference_loss(rewards: torch.Tensor) -> torch.Tensor:
    """J (Eq. 11) for rewards of shape (P, k), k responses per prompt, averaged over the P prompts:
    ``(2 / k^2) * sum_{i<j} sigmoid(|r_i - r_j|)``."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"difference_loss needs rewards of shape (prompts, k >= 2), got {tuple(rewards.shape)}")
    k = rewards.shape[1]
    gaps = (rewards.unsqueeze(2) - rewards.unsqueeze(1)).abs()  # (P, k, k)
    upper = torch.triu(torch.ones(k, k, dtype=torch.bool, device=rewards.device), diagonal=1)
    return (2.0 / k ** 2) * torch.sigmoid(gaps[:, upper]).sum(1).mean()


def pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of two ``(N,)`` vectors, differentiable (ODIN's correlation losses)."""
    a, b = a - a.mean(), b.to(a.dtype) - b.to(a.dtype).mean()
    return (a * b).sum() / (a.norm() * b.norm()).clamp_min(eps)


def odin_length_loss(quality: torch.Tensor, length_reward: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """ODIN's length loss (Chen et al. 2024, "ODIN: Disentangled Reward Mitigates Hacking in RLHF", Eq. 4):
    ``-rho(r_L, L) + |rho(r_Q, L)|`` over ``(N,)`` responses (or, as `objectives.LengthTerm` uses it, pairs'
    differences): the length head carries the correlation with the length ``L``, the quality head (the served
    reward) none."""
    return -pearson(length_reward, lengths) + pearson(quality, lengths).abs()


def orthogonality_loss(w_quality: torch.Tensor, w_length: torch.Tensor) -> torch.Tensor:
    """ODIN's orthogonality loss (Eq. 5) on the two heads' weights ``(H,)``: ``|cos(w_Q, w_L)|``, so the heads read
    different directions of the shared features."""
    return F.cosine_similarity(w_quality.flatten(), w_length.flatten(), dim=0).abs()
