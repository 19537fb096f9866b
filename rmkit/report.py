"""The audit's figures and its one-page HTML report, which leads with how far the audit can be trusted.

Order of the page: trust (held-out agreement with its interval, calibration, the estimated share of
labels the ensemble contradicts, subsets it cannot judge, length bias), then what to do, then counts,
figures and the pairs themselves.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from .data import ROLE_NAMES, pairs_by_id
from .strength import CATEGORIES

COLORS = {"likely_mislabeled": "#cc3311", "ambiguous": "#ee7733", "consistent": "#999999", "strong": "#009988",
          "unjudged": "#dddddd"}


SCATTER_POINTS = 20_000


def write_figures(result, out: Path) -> dict[str, Path]:
    """fig_*.png: strength histogram, 20 groups, std vs mean, categories per subset, reliability, length bias."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    t = result.table[result.table["category"] != "unscored"]
    # Scatter plots draw a seeded sample: their time and size stay flat as N grows (the histogram and the tables
    # keep every pair); the flagged pairs are always drawn.
    dots = t if len(t) <= SCATTER_POINTS else pd.concat([t[t["category"] == "likely_mislabeled"], t.sample(
        SCATTER_POINTS, random_state=0)]).drop_duplicates("id")
    s = result.summary
    groups = pd.DataFrame(s["groups"])
    scoring = s["scoring"]
    paths: dict[str, Path] = {}

    def save(name: str, f, file: str) -> None:
        paths[name] = out / file
        f.tight_layout()
        f.savefig(paths[name], dpi=110)
        plt.close(f)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(t["mean"], bins=60, color="#4477aa")
    ax.axvline(0, color="k", lw=0.8)
    ax.set(xlabel="mean reward difference (chosen - rejected)", ylabel="pairs",
           title=f"Preference strength, {len(t)} pairs; {s['share_mean_below_zero']:.1%} below 0")
    ax.text(0.01, 0.97, scoring, transform=ax.transAxes, va="top", fontsize=7)
    save("hist", fig, "fig_strength_hist.png")

    rel = s["trust"]["reliability"]
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--")
    if rel:
        pred = [r["predicted"] for r in rel]
        obs = [r["observed"] for r in rel]
        size = np.array([r["count"] for r in rel], float)
        ax.scatter(pred, obs, s=20 + 200 * size / size.max(), color="#4477aa", zorder=3)
        ax.plot(pred, obs, color="#4477aa")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted P(label right)", ylabel="observed share of labels",
           title=f"Reliability ({s['trust']['calibration']}, ECE {s['trust']['ece']:.3f})")
    save("reliability", fig, "fig_reliability.png")

    lb = s["trust"]["length_bias"]
    fig, ax = plt.subplots(figsize=(5, 3.8))
    x = np.sign(dots["length_diff"]) * np.log1p(np.abs(dots["length_diff"]))
    for cat, g in dots.groupby("category"):
        gx = np.sign(g["length_diff"]) * np.log1p(np.abs(g["length_diff"]))
        ax.scatter(gx, g["mean"], s=3, alpha=0.4, color=COLORS.get(cat, "k"), label=cat)
    ax.axhline(0, color="k", lw=0.6)
    ax.axvline(0, color="k", lw=0.6)
    ax.set(xlabel=f"length difference, chosen - rejected (signed log1p {lb['unit']})", ylabel="mean strength",
           title=f"Length bias: Spearman {lb['spearman']:+.2f}")
    if len(x):
        ax.legend(markerscale=4, fontsize=7)
    save("length", fig, "fig_length_bias.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(groups["group"], groups["mean_of_mean"], color="#88ccee", label="mean of mean")
    ax.set(xlabel="group (pairs sorted by mean strength)", ylabel="mean of mean")
    ax2 = ax.twinx()
    ax2.plot(groups["group"], groups["mean_of_std"], "o-", color="#cc6677", label="mean of std")
    ax2.set_ylabel("mean of std")
    ax.set_title(f"Strength by group ({len(groups)} groups); std U-shaped: {s['std_u_shape']['u_shaped']}")
    ax.text(0.01, 0.97, scoring, transform=ax.transAxes, va="top", fontsize=7)
    save("groups", fig, "fig_groups.png")

    fig, ax = plt.subplots(figsize=(5, 4))
    for cat, g in dots.groupby("category"):
        ax.scatter(g["mean"], g["std"], s=3, alpha=0.5, color=COLORS.get(cat, "k"), label=cat)
    ax.set(xlabel="mean", ylabel="std", title="Std against mean")
    ax.legend(markerscale=4, fontsize=7)
    save("scatter", fig, "fig_std_vs_mean.png")

    cats = [*CATEGORIES, "unjudged"]
    per = pd.DataFrame(s["per_subset"]).T.reindex(columns=cats, fill_value=0)
    fig, ax = plt.subplots(figsize=(7.5, 3.5))
    shares = per.div(per.sum(axis=1).clip(lower=1), axis=0)
    shares.plot.barh(stacked=True, ax=ax, color=[COLORS[c] for c in cats], width=0.7)
    ax.set(xlabel="share of scored pairs", title="Categories per subset")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save("subsets", fig, "fig_categories_per_subset.png")
    return paths


def _turn(m) -> str:
    who = ROLE_NAMES.get(m["role"], m["role"])
    return f"<div class='turn {html.escape(m['role'])}'><b>{html.escape(who)}:</b> {html.escape(m['content'])}</div>"


def _dialogue_html(pair, context_turns: int = 4) -> str:
    shown = pair.prompt[-context_turns:]
    cut = len(pair.prompt) - len(shown)
    more = (f"<div class='cut'>&hellip; {cut} earlier turn{'s' if cut > 1 else ''} not shown</div>" if cut else "")
    return ("<div class='prompt'>" + more + "".join(_turn(m) for m in shown) + "</div>"
            "<div class='sides'><div class='side chosen'><h4>chosen</h4>" + "".join(_turn(m) for m in pair.chosen)
            + "</div><div class='side rejected'><h4>rejected</h4>" + "".join(_turn(m) for m in pair.rejected)
            + "</div></div>")


def _num(x: float) -> str:
    """Enough digits to tell small values apart (ambiguous pairs sit near zero)."""
    return f"{x:+.2e}" if x != 0 and abs(x) < 1e-3 else f"{x:+.4f}"


def _pct(x) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    return f"{x:.2%}" if 0 < x < 0.01 else f"{x:.1%}"


def _sampled(s: dict) -> str:
    """What a capped audit (``max_pairs``) left out, said where the report counts its pairs."""
    left = s["load_report"]["statuses"].get("not_sampled", 0)
    if not left:
        return ""
    return (f" (a seeded sample, each subset in proportion: <code>--max-pairs {s['settings']['max_pairs']}</code>; "
            f"the other {left} usable pairs "
            "were not audited and are in the tables as <code>not_sampled</code>)")


def _trust_html(s: dict) -> str:
    t = s["trust"]
    a = t["agreement"]
    settings = s["settings"]
    crossfit = settings.get("mode", "crossfit") == "crossfit" and "in-sample" not in s["scoring"]
    chance = a["ci_low"] <= 0.5
    verdict = ("<b>The ensemble is not better than chance on these labels: read nothing below as a finding.</b>"
               if chance else
               "<b>The ensemble agrees with the labels well short of a strong reward model:</b> its verdicts rank "
               "pairs for review; they are not decisions." if a["agreement"] < 0.7 else
               "The ensemble agrees with most labels; flagged pairs are worth a look, one by one.")
    rows = "".join(
        f"<tr class='{'bad' if not v['judged'] else ''}'><td>{html.escape(k)}</td><td>{v['pairs']}</td>"
        f"<td>{v['agreement']:.3f}</td><td>{v['ci_low']:.3f}&ndash;{v['ci_high']:.3f}</td>"
        f"<td>{'yes' if v['judged'] else '<b>no</b>: interval includes chance'}</td>"
        f"<td>{s['per_subset'].get(k, {}).get('likely_mislabeled', 0)}</td></tr>"
        for k, v in t["per_subset"].items())
    lb = t["length_bias"]
    unjudged = ", ".join(html.escape(x) for x in t["unjudged_subsets"])
    if settings.get("rules") == "calibrated":
        what = ("calibrated probability of a wrong label" if settings.get("noise_rate") is None else
                f"probability of having been flipped (<code>p_flipped</code>, for the {_pct(settings['noise_rate'])} "
                "of flipped labels you gave as <code>noise_rate</code>)")
        rule = (f"A pair is flagged <i>likely mislabeled</i> only when its {what} "
                f"reaches {settings['min_confidence']:.2f}"
                + ("" if settings.get("flag_unjudged") else ", and only in subsets the audit can judge") + ". ")
    else:
        rule = ("Rule set <b>paper</b>: every pair with mean strength below "
                f"{settings.get('mislabeled_below', 0)} is flagged, without calibration. ")
    flagged_lb = (f"{_pct(lb['rejected_longer_flagged'])} of the {t['flagged']} flagged pairs have the longer rejected "
                  f"response (all pairs: {_pct(lb['rejected_longer_overall'])}; pairs with mean &lt; 0: "
                  f"{_pct(lb['rejected_longer_mean_below_zero'])})" if t["flagged"] else
                  f"the rejected response is the longer one in {_pct(lb['rejected_longer_overall'])} of all pairs and "
                  f"{_pct(lb['rejected_longer_mean_below_zero'])} of pairs with mean &lt; 0 (no pair is flagged)")
    corrected = (f" after removing the length effect (was {lb['spearman_before_correction']:+.2f})"
                 if lb["corrected"] else "")
    advice = ("" if lb["corrected"] else "A strong correlation means the ensemble partly scores length: "
              "<code>--length-correction true</code> removes it.")
    # posterior acts on every training pair by p_flipped, which only an audit given a flip rate has.
    soft = (" To train without picking pairs, <code>rmkit denoise STRENGTH --preset posterior</code> gives every "
            "training pair the soft label 1 &minus; <code>p_flipped</code>." if settings.get("noise_rate") is not None
            else " With a flip rate from a review of random pairs (<code>rmkit audit --noise-rate R</code>), "
            "<code>rmkit denoise --preset posterior</code> soft-labels every training pair by its "
            "<code>p_flipped</code> instead of picking pairs.")
    return f"""
<div class='trust'><h2>How far to trust this audit</h2>
<p>{verdict}</p>
<ul>
<li><b>Agreement with the labels:</b> {a['agreement']:.1%} (95% CI {a['ci_low']:.1%}&ndash;{a['ci_high']:.1%}, {a['pairs']}
pairs), {'held out: each pair scored only by members that never trained on it' if crossfit else
'<b>in-sample</b>: the members trained on these pairs, so this overstates what they know'}. A perfect judge of
noisy human labels does not reach 100%; a coin reaches 50%.</li>
<li><b>Calibration:</b> <code>p_label_wrong</code> maps mean strength to a probability with a {html.escape(t['calibration'])}
map fitted on the data's own labels, cross-fitted (no pair's probability comes from a map that saw its label){_apart(t)}.
Expected calibration error {t['ece']:.3f}; the highest <code>p_label_wrong</code> of any pair is
{t['max_p_label_wrong']:.2f}. Calibrated on these labels, it is the chance that a label disagrees with what the
ensemble learned, its own mistakes included: against a known truth (rmkit's gold-standard lab,
docs/lab-notebook.md) its calibration error is 0.13&ndash;0.23, where <code>p_flipped</code> (an audit given
<code>--noise-rate</code>) stays within 0.06.</li>
<li><b>Estimated share of labels the ensemble contradicts:</b> {_pct(t['wrong_share']['share'])}
(95% CI {_pct(t['wrong_share']['ci_low'])}&ndash;{_pct(t['wrong_share']['ci_high'])}): the sum of
<code>p_label_wrong</code>. Near 50% it says the ensemble cannot tell, not that half the labels are wrong.</li>
<li><b>Subsets the audit cannot judge:</b> {unjudged or 'none'}{'' if not unjudged else
' (held-out agreement interval includes chance: no pair there is flagged' + (')' if not settings.get('flag_unjudged')
else '; flag_unjudged is on, so they are flagged anyway)')}.</li>
<li><b>Length bias:</b> Spearman of mean strength with the length difference (chosen minus rejected, in
{lb['unit']}) is {lb['spearman']:+.2f}{corrected}; {flagged_lb}. {advice}{_length_term_html(t)}</li>
</ul>
<h3>What to do</h3>
<p>{rule}<b>{t['flagged']}</b> {'pair is' if t['flagged'] == 1 else 'pairs are'} flagged ({_pct(t['flagged_share'])};
the paper's <code>mean &lt; 0</code> rule would flag {_pct(t['flagged_share_paper_rule'])}). Review them in
<code>flagged.csv</code> (texts, probability, member diffs and a blank <code>review</code> column: keep, flip or
drop), then <code>rmkit denoise STRENGTH --reviews flagged.csv</code>: reviewed decisions win over any preset. No
reviewer? A judge that never saw these labels can decide the same pairs: <code>rmkit judge DATA --ids
flagged.csv</code>, then <code>--reviews judge_labels.parquet</code> (this ensemble learns from the labels your RM
learns from, so the flips it finds alone are mostly ones your RM would overrule anyway).{soft} Do not flip pairs
blindly: a refusal chosen over a harmful answer is a correct label that a helpfulness-minded ensemble contradicts.</p>
<table><tr><th>subset</th><th>pairs</th><th>agreement</th><th>95% CI</th><th>judged</th><th>flagged</th></tr>{rows}</table>
{_budget_html(t)}
</div>"""


def _apart(t: dict) -> str:
    """Which subsets the calibration was fitted within (calibration_by_subset), as a clause."""
    apart = t.get("calibrated_apart") or []
    if not apart:
        return ""
    return (f", within each of {html.escape(', '.join(apart))} apart (a subset's labels carry their own noise; "
            "smaller subsets share one map)")


def _length_term_html(t: dict) -> str:
    term = t.get("length_term")
    if not term:
        return ""
    leans = [f"{html.escape(s)} " + ("next to nothing" if v["leans"] == "neither" else f"favours the {v['leans']} "
                                      "response") + f" ({v['log_odds_at_median_length_diff']:.2f})"
             for s, v in (term.get("by_subset") or {}).items()]
    within = (" Within each subset calibrated apart, log-odds at its median length difference: " + "; ".join(leans)
              + ".") if leans else ""
    return (f" The calibration models each label on the ensemble's strength <i>and</i> the length difference: "
            f"{html.escape(term['says'])}.{within} A label that length alone explains is therefore not called wrong; each "
            "flagged pair below says how much of its verdict length makes (<code>length_share</code> in the "
            "tables). If length is a bias in these labels rather than quality, audit with "
            "<code>--calibration temperature</code>: in rmkit's lab, where labels carried a length bonus the truth "
            "lacked, it ranked the labels that go against the truth 0.09 AUROC better (benchmarks/results/"
            "verdicts.json, <code>vs_gold</code>).")


def _budget_html(t: dict) -> str:
    """What reviewing the k most suspect pairs is expected to find: precision and recall from the calibration."""
    rows = t.get("review_budget") or []
    if not rows:
        return ""
    body = "".join(f"<tr><td>{r['k']}</td><td>{_pct(r['share'])}</td><td>{_pct(r['expected_precision'])}</td>"
                   f"<td>{_pct(r['expected_recall'])}</td></tr>" for r in rows)
    return ("<h3>What a review budget buys</h3><p>Review the <i>k</i> most suspect pairs (the order of "
            "<code>flagged.csv</code>; <code>--review-pairs k</code> lists them): the share of their labels the "
            "calibrated ensemble expects to be wrong, and the share of all such labels they hold. Calibrated on "
            "these labels, so <i>wrong</i> includes the ensemble's own mistakes and the annotators' close calls. "
            "Against a known truth it is lower: with 20% flips planted in hh-rlhf's human labels, the default "
            "MiniLM ensemble expected 65% wrong labels among its 5% most suspect pairs, and 42% were planted flips "
            "(base rate 20%; benchmarks/results/verdicts.json, <code>hh_flips</code>).</p>"
            "<table><tr><th>k</th><th>of the judged pairs</th><th>expected precision</th><th>expected recall</th>"
            f"</tr>{body}</table>")


def write_html_report(result, ds, figures: dict[str, Path], path: Path, *, n_pairs: int = 10) -> None:
    s = result.summary
    ens = s.get("ensemble", {})
    settings = s["settings"]
    reads = (f" (hidden layers {', '.join(map(str, sorted(set(ens['member_layers']))))}; head L2 per layer "
             f"{html.escape(json.dumps(ens.get('head_l2')))})" if ens.get("member_layers") else "")
    if ens.get("precision"):  # bf16 where `auto` measured this machine's bf16 matmuls fast enough
        reads += f"; features encoded in {ens['precision']}"
    own = {k: v for k, v in (ens.get("heads_by_subset") or {}).items() if v.get("heads") == "own"}
    if own:  # heads_by_subset: which subsets got heads of their own, and what that bought on their labels
        reads += "; heads trained within " + ", ".join(
            f"{html.escape(k)} (out-of-fold agreement {v['agreement_own']:.3f}, pooled heads {v['agreement_pooled']:.3f})"
            for k, v in own.items())
    t = result.table
    imgs = "".join(
        f"<img src='data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}' alt='{k}'>"
        for k, p in figures.items()
    )
    members = settings.get("members")
    per_pair = s["trust"]["members_per_pair"]
    given = settings.get("member_models")
    if given:
        members = len(given)
        who = f"{members} given reward models: " + ", ".join(f"<code>{html.escape(str(m))}</code>" for m in given)
    else:
        who = f"{members} members on <code>{html.escape(str(settings.get('model')))}</code>"
    why_members = (f" Each pair shows {per_pair} member values, not {members}: with {settings.get('folds')} folds, a pair "
                   f"is scored only by the members that did not train on it." if members and per_pair < members else "")

    def pair_section(title: str, rows) -> str:
        parts = [f"<h2>{html.escape(title)}</h2>"]
        if len(rows) == 0:
            parts.append("<p>None.</p>")
        for r in rows.itertuples():
            diffs = ", ".join(f"{d:+.3f}" for d in r.member_diffs if np.isfinite(d))
            parts.append(
                f"<div class='pair'><div class='meta'><b>{html.escape(str(r.id))}</b> ({html.escape(str(r.subset))})"
                f" &mdash; <b>p_label_wrong {r.p_label_wrong:.2f}</b>"
                + (f", p_flipped {r.p_flipped:.2f}" if hasattr(r, "p_flipped") else "")
                + f", mean {_num(r.mean)}, std {_num(r.std)}, "
                f"z {r.z:+.2f}, category {html.escape(r.category)}, rank {r.rank}, length difference "
                f"{r.length_diff:+.0f}" + (f"; <b>length makes {r.length_share:.0%} of this verdict</b>"
                                           if hasattr(r, "length_share") and r.length_share > 0 else "")
                + f"<br><small>members: {diffs}</small></div>{_dialogue_html(by_id[r.id])}</div>")
        return "".join(parts)

    scored = t[t["category"] != "unscored"]
    flagged = scored[scored["category"] == "likely_mislabeled"].nsmallest(n_pairs, "rank")
    suspect = scored.nsmallest(n_pairs, "rank") if len(flagged) == 0 else flagged
    suspect_title = (f"The {len(flagged)} flagged pairs with the highest p_label_wrong" if len(flagged) else
                     f"No pair is flagged; the {len(suspect)} with the highest p_label_wrong, for reference")
    ambiguous = scored[scored["category"] == "ambiguous"].assign(absz=lambda d: d["z"].abs())
    ambiguous = ambiguous.nsmallest(n_pairs, "absz")
    by_id = pairs_by_id(ds.pairs, [*suspect["id"], *ambiguous["id"]])
    cats_all = (*CATEGORIES, "unjudged", "unscored")
    cats = "".join(f"<tr><td>{c}</td><td>{k}</td></tr>" for c, k in s["categories"].items())
    subsets = "".join(
        f"<tr><td>{html.escape(sub)}</td>" + "".join(f"<td>{counts.get(c, 0)}</td>" for c in cats_all)
        + f"<td>{s['share_mean_below_zero_per_subset'].get(sub, float('nan')):.1%}</td></tr>"
        for sub, counts in s["per_subset"].items())
    head = "".join(f"<th>{c}</th>" for c in cats_all)
    load = s["load_report"]
    broken = "".join(f"<li>{html.escape(str(e['file']))}: {html.escape(str(e['reason']))} ({e['rows_read']} rows read "
                     "before the break)</li>" for e in load.get("file_errors", []))
    skipped = "".join(f"<li>{html.escape(x['file'])}: {html.escape(x['reason'])}</li>"
                      for x in load.get("skipped_files", []))
    page = f"""<!doctype html><html><head><meta charset='utf-8'><title>rmkit audit</title><style>
body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.4}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
tr.bad td{{background:#fdecea}}img{{max-width:49%;margin:2px}}.pair{{border:1px solid #ddd;margin:1em 0;padding:.6em}}
.turn{{white-space:pre-wrap;margin:.2em 0}}.sides{{display:flex;gap:1em}}.side{{flex:1;padding:.3em}}
.chosen{{background:#eef7ee}}.rejected{{background:#f9eeee}}.prompt{{color:#555}}h4{{margin:.2em 0}}
code{{white-space:nowrap}}.cut{{color:#888;font-style:italic}}
.trust{{border:2px solid #4477aa;padding:.2em 1em;background:#f5f8fc}}
</style></head><body>
<h1>Preference-strength audit</h1>
<p>{s['rows']} rows, {s['scored_pairs']} scored pairs{_sampled(s)}. Scoring: {html.escape(s['scoring'])};
{who}{reads}.{why_members}</p>
{_trust_html(s)}
<h2>Categories</h2>
<table><tr><th>category</th><th>rows</th></tr>{cats}</table>
<table><tr><th>subset</th>{head}<th>mean &lt; 0</th></tr>{subsets}</table>
{'<p>Files that broke part-way:</p><ul>' + broken + '</ul>' if broken else ''}
{'<p>Files not read:</p><ul>' + skipped + '</ul>' if skipped else ''}
{imgs}
{pair_section(suspect_title, suspect)}
{pair_section(f"The {len(ambiguous)} most ambiguous pairs (mean nearest zero in units of the members' spread)",
              ambiguous)}
<p><small>Generated by rmkit; settings in config.yaml beside this page.</small></p>
</body></html>"""
    path.write_text(page)
