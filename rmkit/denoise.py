"""Denoising strategies that act on the data from its preference strength (Sec. 4 of the paper).

Input: the pairs and their mean strength (``strength.parquet`` from ``rmkit audit``). Output: a
training set in TRL's format (``prompt``/``chosen``/``rejected`` message lists) with the columns the
trainers read (``margin``, ``weight``, ``label``) and a ``denoise_action`` per row, plus a table of
every input row and what was done to it. Nothing is removed without a row saying so.

Denoising never grades itself: only the pairs of the training split are acted on (the split that
``rmkit train`` makes, or ``splits_file``; it is written beside the output and named in
``recommended.yaml``), and every written pair carries ``original_label``, the label it had in the
data, so validation and test are graded against the data's labels even if a split is redrawn.

Presets (``DenoiseConfig.preset``) act on the selected training pairs (the lowest ``fraction`` by mean
strength, those below ``threshold``, or those whose calibrated ``p_label_wrong`` reaches
``min_confidence``; with ``confidence: p_flipped`` the audit's P(flipped), from ``rmkit audit --noise-rate``,
where ``min_confidence 0.5`` is Bayes' rule: act where a flip is more likely than not):

- ``flip``: swap chosen and rejected;
- ``margin``: every pair gets ``margin = scale * max(mean, 0)`` (``negative="clip"``, Eq. 6; ``abs``
  uses ``|mean|``);
- ``flip+margin``: flip, then margins as in ``margin`` from the strength after the flip (a flipped
  pair's strength changes sign);
- ``soft+margin``: the selected pairs get the soft label ``1 - alpha`` (Eq. 5) instead of 1, and every
  pair a margin as in ``margin``;
- ``drop``: the selected pairs leave the training set (their rows stay in the actions table);
- ``posterior``: no pair is selected; every training pair gets the soft label ``1 - p_flipped`` (the audit's
  P(flipped | the ensemble's view), ``rmkit audit --noise-rate R``): the expected label under the noise model, so
  a pair the ensemble doubts costs in proportion to the doubt instead of at a cut. In the lab
  (benchmarks/lab_denoise_variants.py, 10 seeds) it recovers as much of what 20% flips cost as flip+margin and,
  unlike the presets that act on a fixed 10%, gains at 0% flips.

Reviewed decisions (``reviews``: the audit's ``flagged.csv`` with its ``review`` column filled with
keep, flip or drop, or an independent judge's labels of those pairs from ``rmkit judge DATA --ids
flagged.csv``) win over the preset, on any split. A judge pays where the ensemble alone does not: the
ensemble learns from the same labels as the RM it cleans for, so the flips it finds are mostly ones the RM
already overrules. In the lab (benchmarks/lab_denoise_verify.py, 10 seeds) a simulated judge right on 80% of
pairs, deciding the ensemble's lowest 20% of training pairs, recovers 0.77 of what 20% flipped labels cost;
``flip`` on the ensemble's lowest 10% alone, 0.48.

Train on the result with ``rmkit train --config OUT/recommended.yaml`` (data, split and the preset's
objective).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from .config import save_config, setting, validate
from .data import DataError, DataSource, PreferencePair, load_splits, read_table, save_splits, split_ids
from .files import write_jsonl

Preset = Literal["flip", "margin", "flip+margin", "soft+margin", "drop", "posterior"]
PRESETS: tuple[str, ...] = typing.get_args(Preset)
# The presets that act on pairs picked by strength; posterior picks none (it reads p_flipped on every pair).
RANKED: tuple[str, ...] = tuple(p for p in PRESETS if p != "posterior")
REVIEW_DECISIONS = ("keep", "flip", "drop")
OBJECTIVE_FOR = {"flip": "bt", "drop": "bt", "margin": "margin", "flip+margin": "margin", "soft+margin": "soft",
                 "posterior": "soft"}


@dataclass
class DenoiseConfig(DataSource):
    """Settings of ``rmkit denoise``."""

    strength: str = setting("", "strength.parquet written by `rmkit audit` (its config.yaml names the data)")
    output_dir: str = setting("runs/denoised", "where pairs.jsonl, pairs.parquet, actions.parquet go")
    preset: Preset = setting(
        "flip", "flip, margin, flip+margin, soft+margin, drop (on the selected pairs), or posterior (every training "
                "pair's label 1 - p_flipped; the audit run with --noise-rate R)")
    fraction: float = setting(0.1, "select the lowest this fraction of training pairs by mean strength (paper: 0.1)")
    threshold: float | None = setting(None, "select pairs with mean strength below this instead of a fraction")
    min_confidence: float | None = setting(None, "select pairs whose calibrated p_label_wrong (from the audit) is at "
                                                 "least this, instead of a fraction")
    confidence: Literal["p_label_wrong", "p_flipped"] = setting(
        "p_label_wrong", "the column min_confidence reads: p_label_wrong (every reason a label disagrees), or "
                         "p_flipped (only flips; the audit run with --noise-rate R); p_flipped >= 0.5 flips where a "
                         "flip is more likely than not")
    margin_scale: float = setting(1.0, "margin = scale * strength (the paper gives no scale)")
    negative: Literal["clip", "abs"] = setting(
        "clip", "margin of pairs whose strength (after any flip) is negative: clip (to 0) or abs")
    soft_alpha: float = setting(0.25, "soft label of selected pairs is 1 - alpha (Eq. 5; the paper gives no alpha)")
    data: str | None = setting(None, "the audited data (default: read from the audit's config.yaml)")
    reviews: str | None = setting(None, "a reviewed flagged.csv/.jsonl from `rmkit audit` (rows whose review column "
                                        "says keep, flip or drop get that, whatever the preset says), or a judge's "
                                        "judge_labels from `rmkit judge` (0 flips, 1 keeps)")
    splits_file: str | None = setting(None, "splits.json of the training run; only its train pairs are denoised "
                                             "(default: the split `rmkit train` makes with split_seed and "
                                             "split_fractions, written to OUTPUT_DIR/splits.json)")
    split_seed: int = setting(0, "seed of the default split (as rmkit train's)")
    split_fractions: list[float] = setting([0.7, 0.1, 0.2], "train, validation, test fractions of the default split")

    def check(self) -> None:
        # preset, negative and confidence are Literals: `config.validate` checks them before this
        if self.min_confidence is not None and not 0.5 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0.5, 1], got {self.min_confidence}")
        if self.preset not in RANKED and (self.min_confidence is not None or self.threshold is not None):
            raise ValueError(f"preset {self.preset} acts on every training pair: min_confidence and threshold "
                             "select pairs for the other presets; leave them unset")

    def column(self) -> str:
        """The audit's probability column this config reads: p_flipped for posterior, else ``confidence``."""
        return self.confidence if self.preset in RANKED else "p_flipped"


def select_pairs(mean: np.ndarray, *, fraction: float | None = None, threshold: float | None = None,
                 p_label_wrong: np.ndarray | None = None, min_confidence: float | None = None,
                 eligible: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the pairs to act on, among ``eligible`` ones (default all): ``p_label_wrong`` (or whichever
    calibrated probability is passed in its place, e.g. ``p_flipped``) at least ``min_confidence``, else mean below
    ``threshold``, else the lowest ``fraction`` by mean."""
    mean = np.asarray(mean, dtype=float)
    ok = np.isfinite(mean) & (np.ones(len(mean), bool) if eligible is None else np.asarray(eligible, bool))
    if min_confidence is not None:
        if p_label_wrong is None:
            raise ValueError("min_confidence needs the audit's p_label_wrong")
        return ok & (np.nan_to_num(np.asarray(p_label_wrong, float), nan=0.0) >= min_confidence)
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
    *,
    p_label_wrong: np.ndarray | None = None,
    eligible: np.ndarray | None = None,
    reviews: dict[str, str] | None = None,
) -> tuple[list[PreferencePair], list[str]]:
    """Apply a preset to the ``eligible`` pairs (default all; `run_denoise` passes the training split); returns
    the training pairs and, for every input pair, its action. ``reviews`` (id -> keep/flip/drop) win over the
    preset. Every output pair records ``original_label``, so evaluation grades against the data's labels.
    ``p_label_wrong (N,)``: the column ``cfg.column()`` names (p_flipped for posterior, which needs it)."""
    validate(cfg)
    mean = np.asarray(mean, dtype=float)
    eligible = np.ones(len(pairs), bool) if eligible is None else np.asarray(eligible, bool)
    posterior = cfg.preset == "posterior"
    if posterior and p_label_wrong is None:
        raise ValueError("preset posterior needs the audit's p_flipped (run rmkit audit with --noise-rate R)")
    selected = (np.zeros(len(pairs), bool) if posterior else
                select_pairs(mean, fraction=cfg.fraction, threshold=cfg.threshold, p_label_wrong=p_label_wrong,
                             min_confidence=cfg.min_confidence, eligible=eligible))
    p_flip = np.asarray(p_label_wrong, float) if posterior else np.full(len(pairs), np.nan)
    reviews = reviews or {}
    flip = cfg.preset in ("flip", "flip+margin")
    with_margin = cfg.preset in ("margin", "flip+margin", "soft+margin")
    out: list[PreferencePair] = []
    actions: list[str] = []
    for p, mu, sel, ok, pf in zip(pairs, mean, selected, eligible, p_flip):
        base = p.label if p.original_label is None else p.original_label
        decision = reviews.get(p.id)
        if decision == "drop":
            actions.append("dropped (review)")
            continue
        if decision == "flip":
            q = replace(p, chosen=p.rejected, rejected=p.chosen, original_label=1.0 - base)
            out.append(replace(q, margin=0.0) if with_margin else q)
            actions.append("flipped (review)")
            continue
        if decision == "keep" or not ok or not np.isfinite(mu) or (posterior and not np.isfinite(pf)):
            why = "review" if decision == "keep" else ("held out" if not ok else
                                                       "no strength" if not np.isfinite(mu) else "no p_flipped")
            out.append(replace(p, original_label=base, margin=0.0 if with_margin else p.margin))
            actions.append(f"kept ({why})")
            continue
        action, q = "kept", replace(p, original_label=base)
        if sel and cfg.preset == "drop":
            actions.append(f"dropped (mean strength {mu:+.3f})")
            continue
        if sel and flip:
            q = replace(q, chosen=p.rejected, rejected=p.chosen, original_label=1.0 - base)
            mu, action = -mu, f"flipped (mean strength {mu:+.3f})"
        if posterior:
            q = replace(q, label=float(1.0 - pf))
            action = f"soft label {1 - pf:.3f} (p_flipped {pf:.3f})"
        if sel and cfg.preset == "soft+margin":
            q = replace(q, label=1.0 - cfg.soft_alpha)
            action = f"soft label {1 - cfg.soft_alpha:g} (mean strength {mu:+.3f})"
        if with_margin:
            m = cfg.margin_scale * (abs(mu) if cfg.negative == "abs" else max(mu, 0.0))
            q = replace(q, margin=float(m))
            action += f"; margin {m:.3f}"
        out.append(q)
        actions.append(action)
    return out, actions


def read_reviews(path: str | Path) -> dict[str, str]:
    """Reviewed decisions, id -> keep, flip or drop, from either

    - a reviewed flagged.csv/.jsonl of `rmkit audit` (its ``review`` column; blank rows carry none), or
    - a judge's labels (``rmkit judge``'s judge_labels.parquet/.csv: ``id``, ``judge_label``): 0 (the judge
      prefers the rejected side) flips, 1 keeps; a tie (0.5), a judgment split between two orders or a failed
      one carries no decision, so the preset decides there.
    """
    table = read_table(path)
    if "review" not in table.columns and "judge_label" in table.columns:
        return _judge_reviews(path, table)
    for col in ("id", "review"):
        if col not in table.columns:
            raise DataError(f"{path}: a review table needs columns id and review (or judge_label, as rmkit judge "
                            f"writes); {col!r} is missing")
    out: dict[str, str] = {}
    for row, (i, v) in enumerate(zip(table["id"].astype(str), table["review"])):
        if v is None or (isinstance(v, float) and np.isnan(v)) or not str(v).strip():
            continue
        v = str(v).strip().lower()
        if v not in REVIEW_DECISIONS:
            raise DataError(f"{path}, row {_table_row(path, row)}, field review: {v!r} is not one of "
                            f"{REVIEW_DECISIONS} (or blank)")
        out[i] = v
    return out


def _table_row(path: str | Path, row: int) -> int:
    """The row number a user sees: a CSV's header is line 1, JSON lines count from 1."""
    return row + 2 if str(path).endswith(".csv") else row + 1


def _judge_reviews(path: str | Path, table) -> dict[str, str]:
    import pandas as pd

    if "id" not in table.columns:
        raise DataError(f"{path}: a judge table needs columns id and judge_label; 'id' is missing")
    labels = pd.to_numeric(table["judge_label"], errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(np.isfinite(labels) & ((labels < 0) | (labels > 1)))
    if len(bad):
        raise DataError(f"{path}, row {_table_row(path, int(bad[0]))}, field judge_label: {float(labels[bad[0]])!r} is not "
                        f"in [0, 1] (1: the chosen side is better, 0: the rejected, 0.5: a tie)")
    return {i: ("flip" if v == 0.0 else "keep") for i, v in zip(table["id"].astype(str), labels) if v in (0.0, 1.0)}


def run_denoise(cfg: DenoiseConfig) -> dict:
    """Read an audit's strength table and its data, apply the preset to the training split, write the result."""
    import pandas as pd
    import yaml

    validate(cfg)
    if not cfg.strength:
        raise ValueError("rmkit denoise needs the strength table of an audit")
    strength_path = Path(cfg.strength)
    if not strength_path.is_file():
        raise FileNotFoundError(f"{strength_path} not found: the strength table is what rmkit audit writes "
                                "(OUTPUT_DIR/strength.parquet)")
    table = pd.read_parquet(strength_path)
    data, reader = cfg.data, cfg
    audit = {}
    audit_cfg = strength_path.parent / "config.yaml"
    if audit_cfg.exists():
        audit = yaml.safe_load(audit_cfg.read_text()) or {}
    if data is None:
        if "data" not in audit:
            raise ValueError(f"{audit_cfg} not found: pass data= to name the audited data")
        # Read the data exactly as the audit read it: same reader, same tie handling.
        data = audit["data"]
        reader = DataSource(**{k: audit.get(k, v) for k, v in cfg.source_settings().items()})
        if cfg.strict:
            reader.strict = True
    ds = reader.read(data)
    mean_by_id = dict(zip(table["id"], table["mean"]))
    column = cfg.column()
    if (cfg.min_confidence is not None or cfg.preset not in RANKED) and column not in table:
        raise ValueError(f"{strength_path} has no {column} column for "
                         + ("min_confidence" if cfg.preset in RANKED else f"preset {cfg.preset}")
                         + (" (run rmkit audit with --noise-rate R)" if column == "p_flipped" else ""))
    p_by_id = dict(zip(table["id"], table[column])) if column in table else {}
    pairs = ds.pairs
    missing = [p.id for p in pairs if p.id not in mean_by_id]
    if missing:
        raise ValueError(f"{len(missing)} pairs of {data} are not in {strength_path} (first: {missing[0]})")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.splits_file:
        splits = load_splits(cfg.splits_file)
    else:
        splits = split_ids(ds, fractions=tuple(cfg.split_fractions), seed=cfg.split_seed)
    train = set(splits["train"])
    mean = np.array([mean_by_id[p.id] for p in pairs], dtype=float)
    p_wrong = np.array([p_by_id.get(p.id, np.nan) for p in pairs], dtype=float) if p_by_id else None
    reviews = read_reviews(cfg.reviews) if cfg.reviews else {}
    unknown = [i for i in reviews if i not in mean_by_id]
    if unknown:
        raise ValueError(f"{cfg.reviews}: {len(unknown)} reviewed ids are not in {strength_path} (first: {unknown[0]})")
    cleaned, actions = denoise_pairs(pairs, mean, cfg, p_label_wrong=p_wrong,
                                     eligible=np.array([p.id in train for p in pairs]), reviews=reviews)

    save_config(replace(cfg, data=data, **reader.source_settings()), out / "config.yaml")
    kept = {p.id for p in cleaned}
    # The split travels with the data: dropped pairs leave it, the rest stay where they were.
    save_splits({k: [i for i in v if i in kept] for k, v in splits.items()}, out / "splits.json",
                source=cfg.splits_file or "split_ids", seed=cfg.split_seed)
    records = [{"id": p.id, "subset": p.subset, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
                "margin": p.margin, "weight": p.weight, "label": p.label, "original_label": p.original_label}
               for p in cleaned]
    action_by_id = dict(zip([p.id for p in pairs], actions))
    for r in records:
        r["denoise_action"] = action_by_id[r["id"]]
    write_jsonl(out / "pairs.jsonl", records)
    pd.DataFrame(records).to_parquet(out / "pairs.parquet", index=False)
    rows = ds.status_table()
    rows["mean"] = rows["id"].map(mean_by_id)
    if p_by_id:
        rows[column] = rows["id"].map(p_by_id)
    split_of = {i: k for k, v in splits.items() for i in v}
    rows["split"] = rows["id"].map(split_of)
    rows["denoise_action"] = [action_by_id.get(i, f"not a pair ({s})") for i, s in zip(rows["id"], rows["status"])]
    rows.to_parquet(out / "actions.parquet", index=False)
    (out / "recommended.yaml").write_text(yaml.safe_dump({"data": str(out / "pairs.jsonl"),
                                                          "splits_file": str(out / "splits.json"),
                                                          "objective": OBJECTIVE_FOR[cfg.preset]}))
    kinds = pd.Series([a.split(" ")[0].rstrip(";") for a in rows["denoise_action"]]).value_counts()
    acted = [a for a, p in zip(actions, pairs) if not a.startswith(("kept", "dropped (review)", "flipped (review)"))
             or "margin" in a]
    return {"rows": len(rows), "training_pairs": len(records), "actions": kinds.to_dict(),
            "acted_on_train_only": all(p.id in train for a, p in zip(actions, pairs) if not a.startswith("kept")
                                       and "review" not in a),
            "reviewed": len(reviews), "acted": len(acted),
            "objective": OBJECTIVE_FOR[cfg.preset], "output": str(out / "pairs.jsonl"),
            "train_with": f"rmkit train --config {out / 'recommended.yaml'}"}
