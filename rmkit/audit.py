"""``rmkit audit DATA``: preference strength for every pair, categories, figures and an HTML report.

Outputs in ``output_dir``:

- ``strength.parquet`` (and ``.csv``): every input row with its id, subset, load status, mean, std and
  z (mean / std) of the ensemble's reward differences, each member's difference, the calibrated
  ``p_label_wrong``, quality score, length difference, category and rank (1 = most suspect). Rows that
  could not be scored keep their status and get category ``unscored``.
- ``flagged.csv`` / ``flagged.jsonl``: the flagged pairs (then the most suspect others) with their
  texts and a blank ``review`` column, for a spreadsheet or a labeling tool.
- ``summary.json``: ``trust`` first (held-out agreement with a Wilson interval, overall and per subset;
  the subsets the audit cannot judge; calibration method, ECE and reliability table; the estimated
  share of labels the ensemble contradicts with a bootstrap interval; length bias), then counts per
  category, the share of pairs with mean < 0, the 20-group statistics, the load report, the layers and
  L2 penalties the ensemble used, settings and timings.
- ``fig_*.png``: histogram of mean strength; reliability diagram; strength against length difference;
  the paper's 20-group figure; std against mean; categories per subset.
- ``report.html``: one self-contained page that leads with how far to trust the audit, then what to do,
  the figures, and the flagged and most ambiguous pairs as dialogues.
- ``config.yaml``: the settings, to repeat the run.

Rule sets (``rules``): ``calibrated`` (default; cleanlab's rule: flags only from out-of-sample,
calibrated probabilities, and none in a subset the ensemble cannot judge) and ``paper`` (mean < 0).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .calibration import (agreement, crossfit_calibration, crossfit_calibration_by_group, estimate_wrong_share,
                          expected_calibration_error, flip_posterior, length_effect, length_share, reliability_table,
                          signed_log_length, spearman, symmetric_points)
from .config import save_config, to_dict, validate
from .detectors import review_budget
from .data import (PreferenceDataset, data_folder_guard, no_pairs_message, pair_column, pairs_by_id, text_lengths,
                   transcript)
from .files import check_output_dir, write_json, write_table
from .hardware import barrier, process_group, resolve_device, resolve_precision
from .ensemble import EnsembleInfo, ensemble_diffs
from .heads import fold_of
from .models import RewardModel
from .progress import Phases
from .report import write_figures, write_html_report
from .scoring import score_token_pairs
from .strength import (CATEGORIES, StrengthReport, group_statistics, preference_strength,
                       strength_table)
from .configs.audit import AuditConfig  # noqa: F401 - the settings, beside the job


@dataclass
class AuditResult:
    table: Any  # pandas DataFrame, one row per input row
    summary: dict
    output_dir: Path

    def report(self) -> str:
        """Print how far to trust the audit, the categories, and the most suspect pairs (and return it)."""
        s = self.summary
        t = s["trust"]
        kind = "held-out" if s["settings"]["mode"] == "crossfit" else "in-sample (optimistic)"
        lines = [f"ensemble {kind} agreement with the labels: {t['agreement']['agreement']:.3f} "
                 f"(95% CI {t['agreement']['ci_low']:.3f}-{t['agreement']['ci_high']:.3f}; {s['scoring']})",
                 f"calibration: {t['calibration']} (ECE {t['ece']:.3f}); estimated share of labels the ensemble "
                 f"contradicts: {t['wrong_share']['share']:.1%} ({t['wrong_share']['ci_low']:.1%}-"
                 f"{t['wrong_share']['ci_high']:.1%})",
                 f"rules: {s['settings']['rules']}; flagged likely_mislabeled: {s['categories']['likely_mislabeled']}"]
        left = s["load_report"]["statuses"].get("not_sampled", 0)
        if left:
            lines.insert(0, f"a seeded sample of {s['scored_pairs']} pairs, stratified by subset (max_pairs); {left} "
                            "usable pairs not audited (status not_sampled)")
        if t["unjudged_subsets"]:
            lines.append(f"subsets the audit cannot judge (agreement interval includes chance): "
                         f"{', '.join(t['unjudged_subsets'])}")
        lb = t["length_bias"]
        lines.append(f"length bias: Spearman(strength, length difference) {lb['spearman']:+.2f}")
        unjudged = int((self.table["category"] == "unjudged").sum())
        if unjudged:
            lines.append(f"{unjudged} pairs of those subsets are `unjudged`; below, the pairs the audit can judge:")
        print("\n".join(lines))
        judged = self.table[~self.table["category"].isin(["unscored", "unjudged"])]
        what = "pairs in the subsets the audit can judge" if unjudged else "pairs"
        return "\n".join(lines) + "\n" + StrengthReport(judged).report(what=what)


def audit_pairs(ds: PreferenceDataset, cfg: AuditConfig, *, progress: bool = True) -> AuditResult | None:
    """Score every usable pair (or ``cfg.max_pairs`` of them, drawn with ``cfg.seed``) with the ensemble, then
    `audit_diffs`. Under a multi-process launch (``accelerate launch --num_processes K``) the processes share the
    frozen encoding; rank 0 returns the result, the others None."""
    validate(cfg)
    if cfg.max_pairs is not None:
        ds = ds.sample(cfg.max_pairs, seed=cfg.seed)
    pairs = ds.pairs
    if not pairs:
        raise ValueError(no_pairs_message(cfg.data, ds))
    if cfg.member_models:
        diffs, info = member_model_diffs(cfg.member_models, pairs, batch_size=cfg.batch_size, device=cfg.device,
                                         precision=cfg.precision)
        scoring = (f"{len(cfg.member_models)} given reward models; in-sample if they trained on this data "
                   "(agreement and p_label_wrong are then optimistic)")
        return audit_diffs(ds, diffs, cfg, info=info, scoring=scoring)
    diffs, info = ensemble_diffs(cfg, pairs, work_dir=Path(cfg.output_dir) / "work", progress=progress)
    if diffs is None:  # another process of a sharded run: its share of the encoding is done, rank 0 audits
        return None
    return audit_diffs(ds, diffs, cfg, info=info, progress=progress)


def member_model_diffs(models: list[str], pairs, *, batch_size: int = 64, device: str = "auto",
                       precision: str = "auto") -> tuple[np.ndarray, EnsembleInfo]:
    """Reward differences ``(M, N)`` of existing reward models (each with its own template and tokenizer; decoder
    RMs run each pair's prompt once)."""
    t0 = time.time()
    where = resolve_device(device)
    precision = resolve_precision(precision, where)
    rows = []
    for name in models:
        rm = RewardModel.from_pretrained(name).to(where)
        c, r = rm.encode_pairs(pairs)
        rc, rr = score_token_pairs(rm, c, r, batch_size=batch_size, precision=precision, shared_prefix=True)
        rows.append(rc - rr)
    return np.stack(rows), EnsembleInfo(len(models), "given", "given reward models", member_models=list(models),
                                        seconds={"member_models_seconds": time.time() - t0})


def audit_diffs(ds: PreferenceDataset, diffs: np.ndarray, cfg: AuditConfig, *, info: EnsembleInfo | None = None,
                scoring: str | None = None, length_diff: np.ndarray | None = None,
                progress: bool = False) -> AuditResult:
    """The audit of any ensemble's reward differences ``(M, N)`` over ``ds.pairs`` (in that order): strength,
    calibrated ``p_label_wrong``, per-subset trust, length bias, categories, joined onto every row.

    ``scoring`` says how the diffs were made (default: from ``cfg``); pass ``"in-sample ..."`` for members
    that trained on these pairs, and the report says so. ``length_diff (N,)``: response length difference
    (chosen minus rejected) in tokens; default: counted with ``cfg.model``'s tokenizer, else characters.
    """
    t0 = time.time()
    phase = Phases("audit", enabled=progress)
    info = info or EnsembleInfo(len(diffs), "given", "given differences")
    pairs = ds.pairs
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.ndim != 2 or diffs.shape[1] != len(pairs):
        raise ValueError(f"diffs must be (members, {len(pairs)} pairs), got {diffs.shape}")
    ids, subsets = pair_column(pairs, "id"), np.array(pair_column(pairs, "subset"))  # no pair made for these
    labels = np.fromiter((p.label for p in pairs), np.float64, len(pairs))
    if length_diff is None:
        phase(f"counting the response lengths of {len(pairs)} pairs")
        length_diff, length_unit = response_length_diff(pairs, cfg.model)
    else:
        length_unit = "given"
    length_diff = np.asarray(length_diff, np.float64)
    cal_fold = fold_of(ids, 2, seed=cfg.seed + 101)  # calibration folds, independent of the ensemble's
    raw_mean, _ = preference_strength(diffs)
    if cfg.length_correction:
        diffs = diffs - length_effect(diffs, length_diff, cal_fold)
    mean, _ = preference_strength(diffs)
    phase(f"calibrating p_label_wrong ({cfg.calibration}, cross-fitted) and per-subset trust")
    coef: dict = {}
    if cfg.calibration_by_subset:
        p_right, calibrated_apart = crossfit_calibration_by_group(mean, cal_fold, subsets, labels, cfg.calibration,
                                                                  length_diff=length_diff, coefficients=coef)
    else:
        p_right, calibrated_apart = crossfit_calibration(mean, cal_fold, labels, method=cfg.calibration,
                                                         length_diff=length_diff, coefficients=coef), []
    p_wrong = 1.0 - p_right
    per_subset = {s: agreement(mean[subsets == s], labels[subsets == s]) for s in sorted(set(subsets))}
    overall = agreement(mean, labels)
    unjudged = [s for s, a in per_subset.items() if not a["judged"]]
    judged = np.ones(len(pairs), bool) if cfg.flag_unjudged else ~np.isin(subsets, unjudged)
    # The score flags read: p_label_wrong, or with a known flip rate the posterior that the label was flipped.
    p_flag = p_wrong if cfg.noise_rate is None else flip_posterior(p_right, cfg.noise_rate)
    strength = strength_table(diffs, ids=ids, rules=cfg.category_rules,
                              p_label_wrong=p_flag if cfg.rules == "calibrated" else None,
                              judged=judged if cfg.rules == "calibrated" else None)
    if cfg.rules != "calibrated":
        strength.insert(5, "p_label_wrong", p_wrong)
    elif cfg.noise_rate is not None:
        strength["p_label_wrong"] = p_wrong
        strength.insert(6, "p_flipped", p_flag)
    strength["length_diff"] = length_diff
    if cfg.calibration == "length":  # how much of each verdict the length term makes
        strength["length_share"] = length_share(mean, length_diff, coef["a"], coef["b"])
    strength["label"] = labels
    table = ds.status_table().merge(strength, on="id", how="left")
    table["category"] = table["category"].fillna("unscored")
    table["rank"] = table["rank"].fillna(-1).astype(int)
    table["members_scored"] = table["members_scored"].fillna(0).astype(int)
    scored = table[table["category"] != "unscored"]
    groups = group_statistics(scored["mean"].to_numpy(), scored["std"].to_numpy(), n_groups=cfg.n_groups)
    flagged = strength["category"].to_numpy() == "likely_mislabeled"
    sym_p, sym_y = symmetric_points(p_right, labels)
    decided = labels != 0.5
    length_bias = {
        "unit": length_unit,
        "spearman": spearman(mean, length_diff),
        "spearman_before_correction": spearman(raw_mean, length_diff),
        "corrected": bool(cfg.length_correction),
        "rejected_longer_overall": float((length_diff < 0).mean()),
        "rejected_longer_flagged": float((length_diff[flagged] < 0).mean()) if flagged.any() else None,
        "rejected_longer_mean_below_zero": float((length_diff[mean < 0] < 0).mean()) if (mean < 0).any() else None,
    }
    members_per_pair = np.isfinite(diffs).sum(0)
    trust = {
        "agreement": overall,
        "per_subset": per_subset,
        "unjudged_subsets": unjudged,
        "calibration": cfg.calibration,
        "calibrated_apart": calibrated_apart,  # subsets with a calibration of their own (calibration_by_subset)
        "ece": expected_calibration_error(sym_p, sym_y),
        "reliability": reliability_table(sym_p, sym_y),
        "wrong_share": estimate_wrong_share(p_wrong[decided], seed=cfg.seed),
        "flagged": int(flagged.sum()),
        "flagged_share": float(flagged.mean()),
        "flagged_share_paper_rule": float((mean < cfg.mislabeled_below).mean()),
        "max_p_label_wrong": float(np.nanmax(p_wrong)) if np.isfinite(p_wrong).any() else None,
        "noise_rate": cfg.noise_rate,
        "flagged_by": "p_label_wrong" if cfg.noise_rate is None else f"p_flipped (noise_rate {cfg.noise_rate})",
        "length_bias": length_bias,
        "members_per_pair": int(np.median(members_per_pair)) if len(members_per_pair) else 0,
        "length_term": (_length_term(coef, length_unit, length_diff, subsets, calibrated_apart)
                        if cfg.calibration == "length" else None),
        # what reviewing the k most suspect pairs it can judge is expected to find (calibrated on these labels)
        "review_budget": review_budget(np.where(judged, p_flag, np.nan),
                                       budgets=[int(flagged.sum()), getattr(cfg, "review_pairs", 200)],
                                       min_precision=getattr(cfg, "review_precision", None) or cfg.min_confidence),
    }
    mode = getattr(cfg, "mode", "crossfit")
    summary = {
        "rows": int(len(table)),
        "scored_pairs": int(len(scored)),
        "share_mean_below_zero": float((scored["mean"] < 0).mean()),
        # With cross-fitting every score is out-of-sample: the share of pairs whose label the ensemble
        # agrees with is its held-out accuracy on this data.
        "ensemble_accuracy": overall["agreement"],
        "trust": trust,
        "categories": {c: int((table["category"] == c).sum()) for c in (*CATEGORIES, "unjudged", "unscored")},
        "per_subset": {s: {c: int((g["category"] == c).sum()) for c in (*CATEGORIES, "unjudged", "unscored")}
                       for s, g in table.groupby("subset")},
        "share_mean_below_zero_per_subset": {s: float((g["mean"] < 0).mean()) for s, g in scored.groupby("subset")},
        "groups": groups.to_dict(orient="records"),
        "std_u_shape": _u_shape(groups),
        "scoring": scoring or (f"{mode} ({'out-of-sample' if mode == 'crossfit' else 'in-sample'}), "
                               f"backbone {cfg.backbone}"),
        "load_report": ds.summary(),
        "settings": to_dict(cfg),
        "ensemble": info.settings(),  # layers and L2 it used
        "timings": {**info.seconds, "audit_seconds": time.time() - t0},
    }
    phase.done()
    return AuditResult(table, summary, Path(cfg.output_dir))


def _length_term(coef: dict, unit: str, length_diff: np.ndarray, groups: np.ndarray | None = None,
                 apart: Sequence[str] = ()) -> dict:
    """What the calibration's length term says about these labels (its coefficients ``coef["a"], coef["b"] (N,)``,
    each pair's fold's, medians over the pairs), with its effect at these pairs' median length difference: below 0.05
    log-odds (about one point of probability near 0.5) the term is said to add nothing, so a coefficient of -0.002 is
    not read as "favours the shorter".

    With subsets calibrated ``apart`` (``groups (N,)``: each pair's subset), ``by_subset`` says it within each of them
    from its own coefficients, and the top line is the shared calibration's, read on the other subsets' pairs; where
    every subset has its own, the top line says so and carries no coefficients. A median over pairs of different
    calibrations would describe none of them (on hh-rlhf the subsets' terms lean opposite ways)."""
    if apart:
        groups = np.asarray(groups, dtype=object)
        length_diff = np.asarray(length_diff)
        of = lambda m: {"a": np.asarray(coef["a"])[m], "b": np.asarray(coef["b"])[m]}  # noqa: E731
        by_subset = {s: _length_term(of(groups == s), unit, length_diff[groups == s]) for s in apart}
        shared = ~np.isin(groups, list(apart))
        if not shared.any():
            return {"a_strength": None, "b_length": None, "unit": unit, "log_odds_at_median_length_diff": None,
                    "leans": None, "says": "the length term is fitted within each subset apart",
                    "by_subset": by_subset}
        top = _length_term(of(shared), unit, length_diff[shared])
        return {**top, "says": "on the subsets that share one calibration, " + top["says"], "by_subset": by_subset}
    a, b = float(np.median(coef["a"])), float(np.median(coef["b"]))
    typical = float(np.median(np.abs(signed_log_length(length_diff)))) if len(length_diff) else 0.0
    effect = abs(b) * typical
    unit_text = f"per unit of sign(d) log(1 + |d|), d the length difference in {unit}"
    leans = "neither" if effect < 0.05 else "longer" if b > 0 else "shorter"
    if leans == "neither":
        says = (f"beyond what the ensemble's strength says, length adds next to nothing to these labels (log-odds "
                f"{b:+.3f} {unit_text}: {effect:.3f} at the median length difference)")
    else:
        says = (f"beyond what the ensemble's strength says, these labels favour the {leans} "
                f"response (log-odds {abs(b):.2f} {unit_text}: {effect:.2f} at the median length difference)")
    return {"a_strength": a, "b_length": b, "unit": unit, "log_odds_at_median_length_diff": effect, "leans": leans,
            "says": says}


def response_length_diff(pairs, model: str | None) -> tuple[np.ndarray, str]:
    """Length of the chosen minus the rejected response, in the model's tokens (characters if no tokenizer loads).
    One pass over the pairs, the texts counted as they are made (for pairs held in Arrow, none are kept)."""
    n, unit = text_lengths((t for p in pairs for t in (p.chosen_text, p.rejected_text)), model)
    return n[0::2] - n[1::2], unit


def _u_shape(groups) -> dict:
    """Is the mean of std higher at both ends than in the middle? (The paper's Fig. 2 finding.)"""
    s = groups["mean_of_std"].to_numpy()
    if len(s) < 5:
        return {"u_shaped": False}
    k = max(1, len(s) // 5)
    ends_low, mid, ends_high = s[:k].mean(), s[2 * k: len(s) - 2 * k].mean(), s[-k:].mean()
    return {"low_end": float(ends_low), "middle": float(mid), "high_end": float(ends_high),
            "u_shaped": bool(ends_low > mid and ends_high > mid)}


def run_audit(cfg: AuditConfig, *, data: Any = None, progress: bool = True) -> AuditResult | None:
    """Load the data (``cfg.data``, or ``data``: a `PreferenceDataset` or anything `load_preferences` reads, such
    as a DataFrame or a list of dicts), audit it, and write every output (see the module docstring). Under a
    multi-process launch the encoding is shared out and rank 0 writes the outputs and returns the result; the other
    processes return None."""
    validate(cfg)  # before any model loads
    if data is None and not cfg.data:
        raise ValueError("rmkit audit needs a data source")
    rank = process_group()[0]
    if rank == 0:  # one process checks and claims the output folder
        out = check_output_dir(cfg.output_dir, not_in=data_folder_guard(cfg.data if data is None else data))
        save_config(cfg, out / "config.yaml")
    barrier()
    if isinstance(data, PreferenceDataset):
        ds = data
    else:
        ds = cfg.read(cfg.data if data is None else data)
    result = audit_pairs(ds, cfg, progress=progress)
    if result is None:  # a sharded run's other process: rank 0 writes the outputs
        return None
    write_audit(result, ds, n_pairs=cfg.report_pairs, review_pairs=review_count(result.summary, cfg), progress=progress)
    return result


def review_count(summary: dict, cfg: AuditConfig) -> int:
    """How many pairs flagged.csv lists: ``review_pairs``, or with ``review_precision`` the most suspect pairs whose
    expected precision (from the calibration) stays at or above it."""
    if cfg.review_precision is None:
        return cfg.review_pairs
    ok = [b["k"] for b in summary["trust"]["review_budget"] if b["expected_precision"] >= cfg.review_precision]
    return max(ok, default=0)


def write_audit(result: AuditResult, ds: PreferenceDataset, *, n_pairs: int = 10, review_pairs: int = 200,
                progress: bool = False) -> None:
    """Every output of an audit into ``result.output_dir``: tables, review export, summary, figures, report."""
    phase = Phases("audit", enabled=progress)
    out = result.output_dir
    out.mkdir(parents=True, exist_ok=True)
    phase(f"writing the tables ({len(result.table)} rows) and the review export")
    table = result.table
    write_table(out / "strength.parquet", table)
    flat = table.copy()
    flat["member_diffs"] = flat["member_diffs"].map(lambda v: json.dumps(v) if isinstance(v, list) else "")
    write_table(out / "strength.csv", flat)
    write_review_export(table, ds, out, n=review_pairs)
    phase("drawing the figures")
    figures = write_figures(result, out)
    write_json(out / "summary.json", result.summary)
    phase("writing report.html")
    write_html_report(result, ds, figures, out / "report.html", n_pairs=n_pairs)
    phase.done()


REVIEW_DECISIONS = ("keep", "flip", "drop")


def write_review_export(table, ds: PreferenceDataset, out: Path, *, n: int = 200):
    """``flagged.csv`` and ``flagged.jsonl``: the flagged pairs, then the most suspect others up to ``n``, with
    their texts, subset, ``p_label_wrong``, strength, member diffs and a blank ``review`` column to fill with
    keep, flip or drop (`rmkit denoise --reviews` reads it back; reviewed decisions win over a preset)."""
    import pandas as pd

    # The flagged pairs, then the most suspect of the pairs it can judge (a subset it cannot judge has nothing to
    # review: its agreement with the labels is no better than chance).
    scored = table[~table["category"].isin(["unscored", "unjudged"])]
    flagged = scored[scored["category"] == "likely_mislabeled"]
    rest = scored[scored["category"] != "likely_mislabeled"].nsmallest(max(0, n - len(flagged)), "rank")
    picked = pd.concat([flagged.sort_values("rank"), rest])
    by_id = pairs_by_id(ds.pairs, picked["id"])
    rows = []
    for r in picked.itertuples():
        p = by_id[r.id]
        rows.append({"id": r.id, "subset": r.subset, "flagged": r.category == "likely_mislabeled",
                     "listed_because": "flagged: p_label_wrong at or above the threshold" if
                     r.category == "likely_mislabeled" else "not flagged: among the most suspect below the threshold",
                     "category": r.category, "p_label_wrong": r.p_label_wrong, "mean": r.mean, "std": r.std,
                     "z": r.z, "length_diff": r.length_diff,
                     "member_diffs": json.dumps([round(d, 4) for d in r.member_diffs if np.isfinite(d)]),
                     "prompt": transcript(p.prompt), "chosen": transcript(p.chosen),
                     "rejected": transcript(p.rejected), "review": "",
                     **({"p_flipped": r.p_flipped} if hasattr(r, "p_flipped") else {})})
    columns = ["id", "subset", "flagged", "listed_because", "category", "p_label_wrong",
               *(["p_flipped"] if "p_flipped" in picked else []), "mean", "std", "z", "length_diff", "member_diffs",
               "prompt", "chosen", "rejected", "review"]
    export = pd.DataFrame(rows, columns=columns)
    write_table(out / "flagged.csv", export)
    write_table(out / "flagged.jsonl", export)
    return export

