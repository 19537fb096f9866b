"""Several reward models as one conservative reward: for RL and best-of-n, where a single RM gets hacked.

Coste et al. (ICLR 2024, "Reward Model Ensembles Help Mitigate Overoptimization") score a response with
every member and aggregate:

- ``mean``: the average of the members;
- ``min``: worst-case optimisation, the lowest member;
- ``uwo``: uncertainty-weighted optimisation, ``mean - lambda * var`` over members (their code uses
  lambda 0.5 for best-of-n and 0.1 for PPO).

Members may have different backbones and reward scales, so each member's reward is first normalised
(``zscore``: ``(r - mu_m) / sigma_m`` with the member's mean and std on a reference set), unless
``normalize="none"``. A member scaled by 100 then counts as much as the others.

    ens = EnsembleRewardModel.from_pretrained(["runs/rm0/model", "runs/rm1/model", "OpenAssistant/..."],
                                              aggregation="uwo", uwo_lambda=0.5)
    ens.fit_normalization(prompts, responses)   # reference set: e.g. the prompts and chosen responses
    ens.score(prompts, responses)               # (B,) the aggregate
    ens.member_scores(prompts, responses)       # (M, B) normalised member rewards
    ens.save_pretrained("runs/ens")             # a folder of member paths and statistics; load_reward_model()
                                                # reads it back, as it reads one RM's folder

`aggregate` is the pure function behind it, over an ``(M, B)`` array of member rewards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .data import Message
from .files import write_json
from .models import RewardModel

AGGREGATIONS = ("mean", "min", "uwo")
ENSEMBLE_FILE = "rmkit_ensemble.json"


def aggregate(member_rewards: np.ndarray, how: str = "mean", *, uwo_lambda: float = 0.5) -> np.ndarray:
    """One reward per response from ``member_rewards (M, B)``: ``mean``, ``min`` or ``uwo`` (mean - lambda * var,
    population variance over members)."""
    r = np.asarray(member_rewards, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"member_rewards must be (members, responses), got shape {r.shape}")
    if how == "mean":
        return r.mean(0)
    if how == "min":
        return r.min(0)
    if how == "uwo":
        return r.mean(0) - uwo_lambda * r.var(0)
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {how!r}")


class EnsembleRewardModel:
    """Reward models as one: ``score`` gives the aggregate, ``member_scores`` every member's normalised reward."""

    def __init__(self, members: Sequence[RewardModel], *, aggregation: str = "mean", uwo_lambda: float = 0.5,
                 normalize: str = "zscore", names: Sequence[str] | None = None,
                 stats: Sequence[tuple[float, float]] | None = None):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if normalize not in ("zscore", "none"):
            raise ValueError(f"normalize must be zscore or none, got {normalize!r}")
        self.members = list(members)
        self.aggregation, self.uwo_lambda, self.normalize = aggregation, uwo_lambda, normalize
        self.names = list(names) if names is not None else [f"member{m}" for m in range(len(self.members))]
        self.stats = [tuple(s) for s in stats] if stats is not None else None

    @classmethod
    def from_pretrained(cls, paths: Sequence[str], **kw) -> "EnsembleRewardModel":
        return cls([RewardModel.from_pretrained(p) for p in paths], names=list(paths), **kw)

    def to(self, device) -> "EnsembleRewardModel":
        for m in self.members:
            m.to(device)
        return self

    def eval(self) -> "EnsembleRewardModel":
        for m in self.members:
            m.eval()
        return self

    def requires_grad_(self, flag: bool) -> "EnsembleRewardModel":
        for m in self.members:
            m.requires_grad_(flag)
        return self

    def raw_member_scores(self, prompts: Sequence[Sequence[Message]], responses: Sequence[Sequence[Message]], *,
                          batch_size: int = 32) -> np.ndarray:
        """Every member's own reward ``(M, B)``, each rendered by its own template and tokenizer."""
        return np.stack([m.score(prompts, responses, batch_size=batch_size).numpy() for m in self.members])

    def fit_normalization(self, prompts, responses, *, batch_size: int = 32) -> list[tuple[float, float]]:
        """Each member's mean and std of reward on a reference set (the z-score statistics)."""
        return self.fit_normalization_raw(self.raw_member_scores(prompts, responses, batch_size=batch_size))

    def fit_normalization_raw(self, raw: np.ndarray) -> list[tuple[float, float]]:
        """`fit_normalization` from raw member rewards ``(M, B)`` already computed (`raw_member_scores`)."""
        self.stats = [(float(r.mean()), float(r.std()) or 1.0) for r in raw]
        return self.stats

    def member_scores(self, prompts, responses, *, batch_size: int = 32) -> np.ndarray:
        """Normalised member rewards ``(M, B)``."""
        return self.normalized(self.raw_member_scores(prompts, responses, batch_size=batch_size))

    def normalized(self, raw: np.ndarray) -> np.ndarray:
        """Raw member rewards ``(M, B)`` in the ensemble's normalisation."""
        if self.normalize == "none":
            return raw
        if self.stats is None:
            raise ValueError("zscore normalisation needs statistics: call fit_normalization(prompts, responses) on a "
                             "reference set first (or normalize='none')")
        mu = np.array([s[0] for s in self.stats])[:, None]
        sd = np.array([s[1] for s in self.stats])[:, None]
        return (raw - mu) / sd

    def combine(self, members: np.ndarray) -> np.ndarray:
        """The ensemble's reward ``(B,)`` from normalised member rewards ``(M, B)``: its aggregation and lambda."""
        return aggregate(members, self.aggregation, uwo_lambda=self.uwo_lambda)

    def score(self, prompts, responses, *, batch_size: int = 32) -> torch.Tensor:
        """The aggregate reward ``(B,)`` (a tensor, like `RewardModel.score`)."""
        r = self.combine(self.member_scores(prompts, responses, batch_size=batch_size))
        return torch.as_tensor(r, dtype=torch.float32)

    @property
    def max_length(self) -> int:
        return min(m.max_length for m in self.members)

    def save_pretrained(self, path: str | Path) -> None:
        """A folder with ``rmkit_ensemble.json``: member paths (as given), aggregation, lambda, statistics."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / ENSEMBLE_FILE, {
            "members": self.names, "aggregation": self.aggregation, "uwo_lambda": self.uwo_lambda,
            "normalize": self.normalize, "stats": self.stats})


def load_reward_model(path: str, *, aggregation: str | None = None, uwo_lambda: float | None = None):
    """A `RewardModel`, or an `EnsembleRewardModel` when ``path`` is a folder written by its ``save_pretrained``
    or a comma-separated list of members (normalised by z-score once `fit_normalization` runs)."""
    p = Path(path)
    if (p / ENSEMBLE_FILE).exists():
        spec = json.loads((p / ENSEMBLE_FILE).read_text())
        return EnsembleRewardModel.from_pretrained(
            spec["members"], aggregation=aggregation or spec["aggregation"],
            uwo_lambda=spec["uwo_lambda"] if uwo_lambda is None else uwo_lambda, normalize=spec["normalize"],
            stats=spec.get("stats"))
    if "," in path and not p.exists():
        return EnsembleRewardModel.from_pretrained([x.strip() for x in path.split(",") if x.strip()],
                                                   aggregation=aggregation or "mean",
                                                   uwo_lambda=0.5 if uwo_lambda is None else uwo_lambda)
    return RewardModel.from_pretrained(path)
