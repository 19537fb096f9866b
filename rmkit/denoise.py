"""Denoising strategies that act on the data from its preference strength (Sec. 4 of the paper).

Input: the pairs and their mean strength (``strength.parquet`` from ``rmkit audit``). Output: a
training set in TRL's format (``prompt``/``chosen``/``rejected`` message lists) with the columns the
trainers read (``margin``, ``weight``, ``label``) and a ``denoise_action`` per row, plus a table of
every input row and what was done to it. Nothing is removed without a row saying so.

Presets (``DenoiseConfig.preset``):

- ``flip``: swap chosen and rejected for the selected pairs (the lowest ``fraction`` by mean
  strength, or those below ``threshold``);
- ``margin``: every pair gets ``margin = scale * max(mean, 0)`` (``negative="clip"``, Eq. 6);
- ``flip+margin``: flip, then ``margin = scale * |mean|`` (a flipped pair's strength changes sign);
- ``soft+margin``: the selected pairs get the soft label ``1 - alpha`` (Eq. 5) instead of 1, and every
  pair a margin as in ``margin``;
- ``drop``: the selected pairs leave the training set (their rows stay in the actions table).

Train on the result with ``rmkit train OUT/pairs.jsonl --objective <bt|margin|soft>`` (the
preset's objective is written to ``OUT/recommended.yaml``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .config import save_config, setting
from .data import PreferencePair, load_preferences

PRESETS = ("flip", "margin", "flip+margin", "soft+margin", "drop")
OBJECTIVE_FOR = {"flip": "bt", "drop": "bt", "margin": "margin", "flip+margin": "margin", "soft+margin": "soft"}


@dataclass
class DenoiseConfig:
    """Settings of ``rmkit denoise``."""

    strength: str = setting("", "strength.parquet written by `rmkit audit` (its config.yaml names the data)")
    output_dir: str = setting("runs/denoised", "where pairs.jsonl, pairs.parquet, actions.parquet go")
    preset: str = setting("flip", "flip, margin, flip+margin, soft+margin or drop")
    fraction: float = setting(0.1, "select the lowest this fraction of pairs by mean strength (paper: 0.1)")
    threshold: float | None = setting(None, "select pairs with mean strength below this instead of a fraction")
    margin_scale: float = setting(1.0, "margin = scale * strength (the paper gives no scale)")
    negative: str = setting("clip", "margin of pairs with negative strength: clip (to 0) or abs")
    soft_alpha: float = setting(0.25, "soft label of selected pairs is 1 - alpha (Eq. 5; the paper gives no alpha)")
    data: str | None = setting(None, "the audited data (default: read from the audit's config.yaml)")


def select_pairs(mean: np.ndarray, *, fraction: float | None = None, threshold: float | None = None) -> np.ndarray:
    """Boolean mask of the pairs to act on: below ``threshold``, else the lowest ``fraction`` by mean."""
    mean = np.asarray(mean, dtype=float)
    ok = np.isfinite(mean)
    if threshold is not None:
        return ok & (mean < threshold)
    if fraction is None or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    k = int(round(fraction * ok.sum()))
    mask = np.zeros(len(mean), dtype=bool)
    order = np.flatnonzero(ok)[np.argsort(mean[ok], kind="stable")]
    mask[order[:k]] = True
    return mask


def denoise_pairs(
    pairs: Sequence[PreferencePair],
    mean: np.ndarray,
    cfg: DenoiseConfig,
) -> tuple[list[PreferencePair], list[str]]:
    """Apply a preset; returns the training pairs and, for every input pair, its action."""
    if cfg.preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {cfg.preset!r}")
    if cfg.negative not in ("clip", "abs"):
        raise ValueError(f"negative must be 'clip' or 'abs', got {cfg.negative!r}")
    mean = np.asarray(mean, dtype=float)
    selected = select_pairs(mean, fraction=None if cfg.threshold is not None else cfg.fraction,
                            threshold=cfg.threshold)
    flip = cfg.preset in ("flip", "flip+margin")
    with_margin = cfg.preset in ("margin", "flip+margin", "soft+margin")
    out: list[PreferencePair] = []
    actions: list[str] = []
    for p, mu, sel in zip(pairs, mean, selected):
        if not np.isfinite(mu):
            actions.append("kept (no strength)")
            out.append(replace(p, margin=0.0) if with_margin else p)
            continue
        action, q = "kept", p
        if sel and cfg.preset == "drop":
            actions.append(f"dropped (mean strength {mu:+.3f})")
            continue
        if sel and flip:
            q, mu, action = replace(q, chosen=p.rejected, rejected=p.chosen), -mu, f"flipped (mean strength {mu:+.3f})"
        if sel and cfg.preset == "soft+margin":
            q = replace(q, label=1.0 - cfg.soft_alpha)
            action = f"soft label {1 - cfg.soft_alpha:g} (mean strength {mu:+.3f})"
        if with_margin:
            m = cfg.margin_scale * (abs(mu) if cfg.negative == "abs" or flip else max(mu, 0.0))
            q = replace(q, margin=float(m))
            action += f"; margin {m:.3f}"
        out.append(q)
        actions.append(action)
    return out, actions


def run_denoise(cfg: DenoiseConfig) -> dict:
    """Read an audit's strength table and its data, apply the preset, write the cleaned dataset."""
    import pandas as pd
    import yaml

    if not cfg.strength:
        raise ValueError("rmkit denoise needs the strength table of an audit")
    strength_path = Path(cfg.strength)
    table = pd.read_parquet(strength_path)
    data = cfg.data
    if data is None:
        audit_cfg = strength_path.parent / "config.yaml"
        if not audit_cfg.exists():
            raise ValueError(f"{audit_cfg} not found: pass data= to name the audited data")
        data = yaml.safe_load(audit_cfg.read_text())["data"]
    ds = load_preferences(data)
    mean_by_id = dict(zip(table["id"], table["mean"]))
    pairs = ds.pairs
    missing = [p.id for p in pairs if p.id not in mean_by_id]
    if missing:
        raise ValueError(f"{len(missing)} pairs of {data} are not in {strength_path} (first: {missing[0]})")
    mean = np.array([mean_by_id[p.id] for p in pairs], dtype=float)
    cleaned, actions = denoise_pairs(pairs, mean, cfg)

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(replace(cfg, data=data), out / "config.yaml")
    records = [{"id": p.id, "subset": p.subset, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
                "margin": p.margin, "weight": p.weight, "label": p.label} for p in cleaned]
    action_by_id = dict(zip([p.id for p in pairs], actions))
    for r in records:
        r["denoise_action"] = action_by_id[r["id"]]
    with (out / "pairs.jsonl").open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    pd.DataFrame(records).to_parquet(out / "pairs.parquet", index=False)
    rows = ds.status_table()
    rows["mean"] = rows["id"].map(mean_by_id)
    rows["denoise_action"] = [action_by_id.get(i, f"not a pair ({s})") for i, s in zip(rows["id"], rows["status"])]
    rows.to_parquet(out / "actions.parquet", index=False)
    (out / "recommended.yaml").write_text(yaml.safe_dump({"data": str(out / "pairs.jsonl"),
                                                          "objective": OBJECTIVE_FOR[cfg.preset]}))
    kinds = pd.Series([a.split(" ")[0].rstrip(";") for a in rows["denoise_action"]]).value_counts()
    return {"rows": len(rows), "training_pairs": len(records), "actions": kinds.to_dict(),
            "objective": OBJECTIVE_FOR[cfg.preset], "output": str(out / "pairs.jsonl")}
