"""``rmkit audit DATA``: preference strength for every pair, categories, figures and an HTML report.

Outputs in ``output_dir``:

- ``strength.parquet`` (and ``.csv``): every input row with its id, subset, load status, mean and std
  of the ensemble's reward differences, each member's difference, quality score, category and rank
  (1 = most suspect). Rows that could not be scored keep their status and get category ``unscored``.
- ``summary.json``: counts per category (overall and per subset), the share of pairs with mean < 0,
  the 20-group statistics, the load report, the layers and L2 penalties the ensemble used, settings
  and timings.
- ``fig_*.png``: histogram of mean strength; the paper's 20-group figure; std against mean;
  categories per subset.
- ``report.html``: one self-contained page with the summary, the figures and the most suspect and
  most ambiguous pairs as dialogues.
- ``config.yaml``: the settings, to repeat the run.
"""

from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import save_config, setting, to_dict
from .data import PreferenceDataset, load_preferences
from .ensemble import EnsembleConfig, ensemble_diffs
from .strength import CATEGORIES, CategoryRules, StrengthReport, group_statistics, strength_table


@dataclass
class AuditConfig(EnsembleConfig):
    """Settings of ``rmkit audit``: the ensemble's, plus data, outputs and category rules."""

    data: str = setting("", "preference data: a file, a directory, or a hub dataset name")
    output_dir: str = setting("runs/audit", "where strength.parquet, summary.json, figures and report.html go")
    data_format: str | None = setting(None, "force a reader: hh, trl, conversational, moss, pairwise")
    mislabeled_below: float = setting(0.0, "likely mislabeled: mean strength below this")
    ambiguous_z: float = setting(1.0, "ambiguous: mean below this many of the pair's own stds")
    strong_quantile: float = setting(0.9, "strong: mean at or above this quantile")
    n_groups: int = setting(20, "groups for the paper's mean/std-by-strength figure")
    report_pairs: int = setting(10, "suspect and ambiguous pairs shown in report.html")

    @property
    def rules(self) -> CategoryRules:
        return CategoryRules(self.mislabeled_below, self.ambiguous_z, self.strong_quantile)


@dataclass
class AuditResult:
    table: Any  # pandas DataFrame, one row per input row
    summary: dict
    output_dir: Path

    def report(self) -> str:
        """Print the summary, the ensemble's agreement with the labels, and the most suspect pairs."""
        kind = "held-out accuracy" if self.summary["settings"]["mode"] == "crossfit" else "in-sample accuracy"
        print(f"ensemble {kind} on the labels: {self.summary['ensemble_accuracy']:.3f} "
              f"({self.summary['scoring']})")
        return StrengthReport(self.table[self.table["category"] != "unscored"]).report()


def audit_pairs(ds: PreferenceDataset, cfg: AuditConfig, *, progress: bool = True) -> AuditResult:
    """Score every usable pair with the ensemble and join the strength back onto every row."""
    t0 = time.time()
    out = Path(cfg.output_dir)
    pairs = ds.pairs
    if not pairs:
        raise ValueError(f"{cfg.data}: no usable pairs to audit (statuses: {ds.status_counts()})")
    diffs, info = ensemble_diffs(cfg, pairs, work_dir=out / "work", progress=progress)
    strength = strength_table(diffs, ids=[p.id for p in pairs], rules=cfg.rules)
    table = ds.status_table().merge(strength, on="id", how="left")
    table["category"] = table["category"].fillna("unscored")
    table["rank"] = table["rank"].fillna(-1).astype(int)
    table["members_scored"] = table["members_scored"].fillna(0).astype(int)
    scored = table[table["category"] != "unscored"]
    groups = group_statistics(scored["mean"].to_numpy(), scored["std"].to_numpy(), n_groups=cfg.n_groups)
    summary = {
        "rows": int(len(table)),
        "scored_pairs": int(len(scored)),
        "share_mean_below_zero": float((scored["mean"] < 0).mean()),
        # With cross-fitting every score is out-of-sample: the share of pairs whose label the ensemble
        # agrees with is its held-out accuracy on this data.
        "ensemble_accuracy": float((scored["mean"] > 0).mean()),
        "categories": {c: int((table["category"] == c).sum()) for c in (*CATEGORIES, "unscored")},
        "per_subset": {s: {c: int((g["category"] == c).sum()) for c in (*CATEGORIES, "unscored")}
                       for s, g in table.groupby("subset")},
        "share_mean_below_zero_per_subset": {s: float((g["mean"] < 0).mean()) for s, g in scored.groupby("subset")},
        "groups": groups.to_dict(orient="records"),
        "std_u_shape": _u_shape(groups),
        "scoring": f"{cfg.mode} ({'out-of-sample' if cfg.mode == 'crossfit' else 'in-sample'}), backbone {cfg.backbone}",
        "load_report": ds.report(),
        "settings": to_dict(cfg),
        "ensemble": {k: v for k, v in info.items() if not k.endswith("_seconds")},  # layers and L2 it used
        "timings": {**{k: v for k, v in info.items() if k.endswith("_seconds")}, "total_seconds": time.time() - t0},
    }
    return AuditResult(table, summary, out)


def _u_shape(groups) -> dict:
    """Is the mean of std higher at both ends than in the middle? (The paper's Fig. 2 finding.)"""
    s = groups["mean_of_std"].to_numpy()
    if len(s) < 5:
        return {"u_shaped": False}
    k = max(1, len(s) // 5)
    ends_low, mid, ends_high = s[:k].mean(), s[2 * k: len(s) - 2 * k].mean(), s[-k:].mean()
    return {"low_end": float(ends_low), "middle": float(mid), "high_end": float(ends_high),
            "u_shaped": bool(ends_low > mid and ends_high > mid)}


def run_audit(cfg: AuditConfig, *, progress: bool = True) -> AuditResult:
    """Load the data, audit it, and write every output (see the module docstring)."""
    if not cfg.data:
        raise ValueError("rmkit audit needs a data source")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    ds = load_preferences(cfg.data, format=cfg.data_format)
    result = audit_pairs(ds, cfg, progress=progress)
    table = result.table
    table.to_parquet(out / "strength.parquet", index=False)
    flat = table.copy()
    flat["member_diffs"] = flat["member_diffs"].map(lambda v: json.dumps(v) if isinstance(v, list) else "")
    flat.to_csv(out / "strength.csv", index=False)
    figures = write_figures(result, out)
    (out / "summary.json").write_text(json.dumps(result.summary, indent=1))
    write_html_report(result, ds, figures, out / "report.html", n_pairs=cfg.report_pairs)
    return result


# ----------------------------------------------------------------------------------------------
# Figures and the HTML page


def write_figures(result: AuditResult, out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    t = result.table[result.table["category"] != "unscored"]
    groups = pd.DataFrame(result.summary["groups"])
    scoring = result.summary["scoring"]
    paths: dict[str, Path] = {}

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(t["mean"], bins=60, color="#4477aa")
    ax.axvline(0, color="k", lw=0.8)
    ax.set(xlabel="mean reward difference (chosen - rejected)", ylabel="pairs",
           title=f"Preference strength, {len(t)} pairs; {result.summary['share_mean_below_zero']:.1%} below 0")
    ax.text(0.01, 0.97, scoring, transform=ax.transAxes, va="top", fontsize=7)
    paths["hist"] = out / "fig_strength_hist.png"

    def save(name: str, f) -> None:
        f.tight_layout()
        f.savefig(paths[name], dpi=110)
        plt.close(f)

    save("hist", fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(groups["group"], groups["mean_of_mean"], color="#88ccee", label="mean of mean")
    ax.set(xlabel="group (pairs sorted by mean strength)", ylabel="mean of mean")
    ax2 = ax.twinx()
    ax2.plot(groups["group"], groups["mean_of_std"], "o-", color="#cc6677", label="mean of std")
    ax2.set_ylabel("mean of std")
    ax.set_title(f"Strength by group ({len(groups)} groups); std U-shaped: {result.summary['std_u_shape']['u_shaped']}")
    ax.text(0.01, 0.97, scoring, transform=ax.transAxes, va="top", fontsize=7)
    paths["groups"] = out / "fig_groups.png"
    save("groups", fig)

    fig, ax = plt.subplots(figsize=(5, 4))
    colors = {"likely_mislabeled": "#cc3311", "ambiguous": "#ee7733", "consistent": "#999999", "strong": "#009988"}
    for cat, g in t.groupby("category"):
        ax.scatter(g["mean"], g["std"], s=3, alpha=0.5, color=colors.get(cat, "k"), label=cat)
    ax.set(xlabel="mean", ylabel="std", title="Std against mean")
    ax.legend(markerscale=4, fontsize=7)
    paths["scatter"] = out / "fig_std_vs_mean.png"
    save("scatter", fig)

    per = pd.DataFrame(result.summary["per_subset"]).T[[*CATEGORIES]]
    fig, ax = plt.subplots(figsize=(7.5, 3.5))
    shares = per.div(per.sum(axis=1).clip(lower=1), axis=0)
    shares.plot.barh(stacked=True, ax=ax, color=[colors[c] for c in CATEGORIES], width=0.7)
    ax.set(xlabel="share of scored pairs", title="Categories per subset")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    paths["subsets"] = out / "fig_categories_per_subset.png"
    save("subsets", fig)
    return paths


def _dialogue_html(pair) -> str:
    def turn(m) -> str:
        who = {"user": "Human", "assistant": "Assistant"}.get(m["role"], m["role"])
        return f"<div class='turn {html.escape(m['role'])}'><b>{who}:</b> {html.escape(m['content'])}</div>"

    return ("<div class='prompt'>" + "".join(turn(m) for m in pair.prompt[-4:]) + "</div>"
            "<div class='sides'><div class='side chosen'><h4>chosen</h4>" + "".join(turn(m) for m in pair.chosen)
            + "</div><div class='side rejected'><h4>rejected</h4>" + "".join(turn(m) for m in pair.rejected)
            + "</div></div>")


def write_html_report(result: AuditResult, ds: PreferenceDataset, figures: dict[str, Path], path: Path,
                      *, n_pairs: int = 10) -> None:
    s = result.summary
    ens = s.get("ensemble", {})
    reads = (f" (hidden layers {', '.join(map(str, sorted(set(ens['member_layers']))))}; head L2 per layer "
             f"{html.escape(json.dumps(ens.get('head_l2')))})" if ens.get("member_layers") else "")
    t = result.table
    by_id = {p.id: p for p in ds.pairs}
    imgs = "".join(
        f"<img src='data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}' alt='{k}'>"
        for k, p in figures.items()
    )

    def pair_section(title: str, rows) -> str:
        parts = [f"<h2>{html.escape(title)}</h2>"]
        for r in rows.itertuples():
            diffs = ", ".join(f"{d:+.2f}" for d in r.member_diffs if np.isfinite(d))
            parts.append(
                f"<div class='pair'><div class='meta'><b>{html.escape(str(r.id))}</b> ({html.escape(str(r.subset))})"
                f" &mdash; mean {r.mean:+.3f}, std {r.std:.3f}, quality {r.quality:.3f}, rank {r.rank}"
                f"<br><small>members: {diffs}</small></div>{_dialogue_html(by_id[r.id])}</div>")
        return "".join(parts)

    scored = t[t["category"] != "unscored"]
    suspect = scored.nsmallest(n_pairs, "rank")
    ambiguous = scored[scored["category"] == "ambiguous"].assign(absmean=lambda d: d["mean"].abs())
    ambiguous = ambiguous.nsmallest(n_pairs, "absmean")
    cats = "".join(f"<tr><td>{c}</td><td>{k}</td></tr>" for c, k in s["categories"].items())
    subsets = "".join(
        f"<tr><td>{html.escape(sub)}</td>" + "".join(f"<td>{v}</td>" for v in counts.values())
        + f"<td>{s['share_mean_below_zero_per_subset'].get(sub, float('nan')):.1%}</td></tr>"
        for sub, counts in s["per_subset"].items())
    head = "".join(f"<th>{c}</th>" for c in (*CATEGORIES, "unscored"))
    page = f"""<!doctype html><html><head><meta charset='utf-8'><title>rmkit audit</title><style>
body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
img{{max-width:49%;margin:2px}}.pair{{border:1px solid #ddd;margin:1em 0;padding:.6em}}
.turn{{white-space:pre-wrap;margin:.2em 0}}.sides{{display:flex;gap:1em}}.side{{flex:1;padding:.3em}}
.chosen{{background:#eef7ee}}.rejected{{background:#f9eeee}}.prompt{{color:#555}}h4{{margin:.2em 0}}
</style></head><body>
<h1>Preference-strength audit</h1>
<p>{s['rows']} rows, {s['scored_pairs']} scored pairs. Scoring: {html.escape(s['scoring'])};
{s['settings']['members']} members on <code>{html.escape(str(s['settings']['model']))}</code>{reads}, which agree
with {s['ensemble_accuracy']:.1%} of the labels (the ensemble's accuracy: strength ranks pairs only as
well as that allows).
<b>{s['share_mean_below_zero']:.1%}</b> of pairs have mean strength below zero. Std across the
{len(s['groups'])} strength groups U-shaped: {s['std_u_shape']['u_shaped']}.</p>
<table><tr><th>category</th><th>rows</th></tr>{cats}</table>
<table><tr><th>subset</th>{head}<th>mean &lt; 0</th></tr>{subsets}</table>
{imgs}
{pair_section(f"The {len(suspect)} most suspect pairs (lowest quality)", suspect)}
{pair_section(f"The {len(ambiguous)} most ambiguous pairs (mean nearest zero)", ambiguous)}
<p><small>Generated by rmkit; settings in config.yaml beside this page.</small></p>
</body></html>"""
    path.write_text(page)
