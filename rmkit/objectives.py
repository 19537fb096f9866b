"""Objectives: what one training step of a reward model computes, between the losses and the trainer.

`OBJECTIVES` names the per-pair loss ``objective(chosen_rewards, rejected_rewards, batch) -> loss``
(Bradley-Terry Eq. 1, with margin Eq. 6, soft labels Eq. 5); `compute_loss` is the single step function
that the trainer, MetaRM (`rmkit.metarm`) and ensembles reuse; `ContrastiveTerm` adds SimCSE or SwAV
(Section 3) on two dropout views; `make_batch` collates them.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from .data import PreferencePair
from .losses import bradley_terry_loss, contrastive_instances, simcse_loss, soft_label_loss, swav_loss


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
OBJECTIVES: dict[str, Objective] = {"bt": _bt, "margin": _bt_margin, "soft": _soft}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name]


def compute_loss(model, batch: dict[str, Any], objective: Objective,
                 contrastive: "ContrastiveTerm | None" = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass over chosen and rejected texts together; returns the loss and its parts.

    ``batch`` holds ``input_ids``/``attention_mask`` of shape (2B, T) (chosen rows first), and
    optional per-pair tensors (``margin``, ``weight``, ``label``) of shape (B,).

    With a contrastive term the batch goes through the model twice in one pass, stacked (4B, T): each
    row draws its own dropout mask, so the copies are the two views (as two passes would give, but
    one graph, which DDP needs). The RM loss reads the first copy's rewards; the total is
    ``L_rm + beta * L_cl``.
    """
    ids, mask = batch["input_ids"], batch["attention_mask"]
    b = ids.shape[0] // 2
    if contrastive is not None:
        ids, mask = torch.cat([ids, ids]), torch.cat([mask, mask])
    out = model(input_ids=ids, attention_mask=mask)
    chosen, rejected = out.rewards[:b], out.rewards[b: 2 * b]  # (B,), (B,)
    loss = objective(chosen, rejected, batch)
    parts = {"chosen": chosen, "rejected": rejected, "features": out.features[: 2 * b], "rm_loss": loss.detach()}
    if contrastive is not None:
        f = out.features
        cl = contrastive(f[:b], f[b: 2 * b], f[2 * b: 3 * b], f[3 * b:])
        parts["contrastive_loss"] = cl.detach()
        loss = loss + contrastive.beta * cl
    return loss, parts


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
               idx: Sequence[int], device) -> dict[str, Any]:
    """Collate pairs ``idx`` into one padded (2B, T) batch plus per-pair fields."""
    batch: dict[str, Any] = model.collate([chosen_ids[i] for i in idx] + [rejected_ids[i] for i in idx], device)
    for key in ("margin", "weight"):
        vals = [getattr(pairs[i], key) for i in idx]
        if all(v is not None for v in vals):
            batch[key] = torch.tensor(vals, dtype=torch.float32, device=device)
        elif any(v is not None for v in vals):
            raise ValueError(f"some training pairs have a {key} and some do not; fill it for all or none")
    batch["label"] = torch.tensor([pairs[i].label for i in idx], dtype=torch.float32, device=device)
    return batch
