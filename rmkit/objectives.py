"""Objectives: what one training step of a reward model computes, between the losses and the trainer.

`OBJECTIVES` names the per-pair loss ``objective(chosen_rewards, rejected_rewards, batch) -> loss``
(Bradley-Terry Eq. 1, with margin Eq. 6, soft labels Eq. 5); `compute_loss` is the single step function
that the trainer, MetaRM (`rmkit.metarm`) and ensembles reuse; `ContrastiveTerm` adds SimCSE or SwAV
(Section 3) on two dropout views; `make_batch` collates them.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from .data import PreferencePair, pairs_at
from .losses import (bradley_terry_loss, contrastive_instances, odin_length_loss, orthogonality_loss, simcse_loss,
                     soft_label_loss, swav_loss)


def _bt(chosen: torch.Tensor, rejected: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    return bradley_terry_loss(chosen, rejected, weights=batch.get("weight"))


def _bt_margin(chosen: torch.Tensor, rejected: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    if batch.get("margin") is None:
        raise ValueError("objective 'margin' needs a margin for every training pair (a `margin` column)")
    return bradley_terry_loss(chosen, rejected, margin=batch["margin"], weights=batch.get("weight"))


def _soft(chosen: torch.Tensor, rejected: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    return soft_label_loss(chosen, rejected, labels=batch["label"], margin=batch.get("margin"),
                           weights=batch.get("weight"))


Objective = Callable[[torch.Tensor, torch.Tensor, dict[str, Any]], torch.Tensor]
# odin: Bradley-Terry on the quality reward plus the length head's (`LengthTerm`), whose losses keep length out of the
# served reward.
OBJECTIVES: dict[str, Objective] = {"bt": _bt, "margin": _bt_margin, "soft": _soft, "odin": _bt}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name]


def compute_loss(model, batch: dict[str, Any], objective: Objective,
                 contrastive: "ContrastiveTerm | None" = None,
                 length_term: "LengthTerm | None" = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass over chosen and rejected texts together; returns the loss and its parts.

    ``batch`` holds ``input_ids``/``attention_mask`` of shape (2B, T) (chosen rows first), and
    optional per-pair tensors (``margin``, ``weight``, ``label``) of shape (B,).

    With a contrastive term the batch goes through the model twice in one pass, stacked (4B, T): each
    row draws its own dropout mask, so the copies are the two views (as two passes would give, but
    one graph, which DDP needs). The RM loss reads the first copy's rewards; the total is
    ``L_rm + beta * L_cl``.

    With a ``length_term`` (objective odin) the ranking loss reads the quality reward plus the length head's, and
    ODIN's length and orthogonality losses join it; ``parts["chosen"]``/``["rejected"]`` stay the quality reward,
    which is the model's (served) reward. The batch then carries ``length (2B,)``, each text's response length.
    """
    ids, mask = batch["input_ids"], batch["attention_mask"]
    b = ids.shape[0] // 2
    if contrastive is not None:
        ids, mask = torch.cat([ids, ids]), torch.cat([mask, mask])
    out = model(input_ids=ids, attention_mask=mask)
    chosen, rejected = out.rewards[:b], out.rewards[b: 2 * b]  # (B,), (B,)
    if length_term is None:
        loss = objective(chosen, rejected, batch)
    else:
        r_len = length_term(out.features[: 2 * b])  # (2B,)
        loss = objective(chosen + r_len[:b], rejected + r_len[b:], batch)
    parts = {"chosen": chosen, "rejected": rejected, "features": out.features[: 2 * b], "rm_loss": loss.detach()}
    if length_term is not None:
        odin = length_term.loss(out.rewards[: 2 * b], r_len, batch["length"], model)
        parts["odin_loss"] = odin.detach()
        loss = loss + odin
    if contrastive is not None:
        f = out.features
        cl = contrastive(f[:b], f[b: 2 * b], f[2 * b: 3 * b], f[3 * b:])
        parts["contrastive_loss"] = cl.detach()
        loss = loss + contrastive.beta * cl
    return loss, parts


class LengthTerm(torch.nn.Module):
    """ODIN's length head (Chen et al. 2024): a second linear head on the RM's features, trained so that the sum of
    the two heads ranks the pairs while the length head carries the reward's correlation with response length and
    the quality head (the model's own, served) carries none. Only training uses it; the saved RM is the quality
    head, a plain checkpoint."""

    def __init__(self, hidden: int, *, length_weight: float = 1.0, orth_weight: float = 1.0):
        super().__init__()
        self.head = torch.nn.Linear(hidden, 1, bias=False)
        torch.nn.init.normal_(self.head.weight, std=hidden ** -0.5)
        self.length_weight, self.orth_weight = float(length_weight), float(orth_weight)

    @classmethod
    def from_config(cls, cfg: Any, hidden: int) -> "LengthTerm | None":
        if cfg.objective != "odin":
            return None
        return cls(hidden, length_weight=cfg.odin_length_weight, orth_weight=cfg.odin_orth_weight)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features.to(self.head.weight.dtype)).squeeze(-1)

    def loss(self, quality: torch.Tensor, length_reward: torch.Tensor, lengths: torch.Tensor, model) -> torch.Tensor:
        """``length_weight * L_len + orth_weight * L_orth`` (`losses.odin_length_loss`, `orthogonality_loss`) on
        rows ``(2B,)``, chosen then rejected. The correlations are taken over the pairs' differences (chosen minus
        rejected): across texts of different prompts, a reward can hide its length dependence behind how much it
        varies from prompt to prompt (measured on a tiny model: Pearson with length -0.9 within a prompt while
        the batch correlation across prompts read -0.1); within a pair the prompt cancels."""
        b = quality.shape[0] // 2
        core = getattr(model, "module", model)  # under DDP the RewardModel is wrapped
        return (self.length_weight * odin_length_loss(quality[:b] - quality[b:], length_reward[:b] - length_reward[b:],
                                                      lengths[:b] - lengths[b:])
                + self.orth_weight * orthogonality_loss(core.head.weight, self.head.weight))


CONTRASTIVE_PRESETS: dict[str, dict[str, Any]] = {
    # The paper's settings (Section 3); SimCSE's temperature and SwAV's tau/Sinkhorn are the methods' own.
    "simcse": {"method": "simcse", "on": "pairs", "beta": 1.0, "temperature": 0.05},
    "simcse-diff": {"method": "simcse", "on": "diff", "beta": 1.0, "temperature": 0.05},
    "swav": {"method": "swav", "on": "pairs", "beta": 0.1, "temperature": 0.1, "prototypes": 50},
    "swav-diff": {"method": "swav", "on": "diff", "beta": 0.5, "temperature": 0.1, "prototypes": 20},
}


class ContrastiveTerm(torch.nn.Module):
    """The contrastive loss on two views of a batch's features; holds SwAV's learnable prototypes."""

    def __init__(self, method: str, on: str, hidden: int, *, beta: float, temperature: float,
                 prototypes: int = 0, epsilon: float = 0.05, sinkhorn_iters: int = 3):
        super().__init__()
        if method not in ("simcse", "swav"):
            raise ValueError(f"contrastive method must be simcse or swav, got {method!r}")
        self.method, self.on, self.beta, self.temperature = method, on, float(beta), float(temperature)
        self.epsilon, self.sinkhorn_iters = epsilon, sinkhorn_iters
        self.prototypes = torch.nn.Parameter(torch.randn(prototypes, hidden) / hidden ** 0.5) if method == "swav" else None

    @classmethod
    def from_config(cls, cfg: Any, hidden: int) -> "ContrastiveTerm | None":
        if cfg.contrastive == "none":
            return None
        if cfg.contrastive not in CONTRASTIVE_PRESETS:
            raise ValueError(f"contrastive must be none or one of {sorted(CONTRASTIVE_PRESETS)}, got {cfg.contrastive!r}")
        p = dict(CONTRASTIVE_PRESETS[cfg.contrastive])
        for key, value in (("beta", cfg.contrastive_beta), ("temperature", cfg.contrastive_temperature),
                           ("prototypes", cfg.swav_prototypes)):
            if value is not None:
                p[key] = value
        return cls(p["method"], p["on"], hidden, beta=p["beta"], temperature=p["temperature"],
                   prototypes=p.get("prototypes", 0))

    def forward(self, chosen1: torch.Tensor, rejected1: torch.Tensor, chosen2: torch.Tensor,
                rejected2: torch.Tensor) -> torch.Tensor:
        v1 = contrastive_instances(chosen1, rejected1, self.on)
        v2 = contrastive_instances(chosen2, rejected2, self.on)
        if self.method == "simcse":
            return simcse_loss(v1, v2, temperature=self.temperature)
        return swav_loss(v1, v2, self.prototypes, temperature=self.temperature, epsilon=self.epsilon,
                         sinkhorn_iters=self.sinkhorn_iters)


def check_pair_fields(pairs: Sequence[PreferencePair], objective: str) -> None:
    """Before any step: ``margin`` and ``weight`` are given for every training pair or for none (a batch mixing them
    cannot be collated), and objective ``margin`` has a margin for each; the error names the first pair that breaks it
    (its id, file and row), not a batch number mid-training."""
    def where(p: PreferencePair) -> str:
        return f"pair {p.id!r}" + (f" ({p.source_file}, row {p.source_row})" if p.source_file else "")

    for key in ("margin", "weight"):
        given = [getattr(p, key) is not None for p in pairs]
        if objective == "margin" and key == "margin" and not all(given):
            raise ValueError(f"objective 'margin' needs a margin for every training pair; {where(pairs[given.index(False)])}"
                             f" has none ({given.count(False)} of {len(pairs)} lack one)")
        if any(given) and not all(given):
            lacking = pairs[given.index(False)]
            raise ValueError(f"{given.count(True)} training pairs have a {key} and {given.count(False)} do not (first "
                             f"without: {where(lacking)}); fill it for all or none")


def make_batch(model, pairs: Sequence[PreferencePair], chosen_ids, rejected_ids,
               idx: Sequence[int], device, lengths: tuple[Sequence[int], Sequence[int]] | None = None) -> dict[str, Any]:
    """Collate pairs ``idx`` into one padded (2B, T) batch plus per-pair fields; with ``lengths`` (each pair's chosen
    and rejected response length) also ``length (2B,)``, what ODIN correlates with."""
    batch: dict[str, Any] = model.collate([chosen_ids[i] for i in idx] + [rejected_ids[i] for i in idx], device)
    if lengths is not None:
        batch["length"] = torch.tensor([lengths[0][i] for i in idx] + [lengths[1][i] for i in idx],
                                       dtype=torch.float32, device=device)
    some = pairs_at(pairs, idx)
    for key in ("margin", "weight"):
        vals = [getattr(p, key) for p in some]
        if all(v is not None for v in vals):
            batch[key] = torch.tensor(vals, dtype=torch.float32, device=device)
        elif any(v is not None for v in vals):
            raise ValueError(f"some training pairs have a {key} and some do not; fill it for all or none")
    batch["label"] = torch.tensor([p.label for p in some], dtype=torch.float32, device=device)
    return batch
