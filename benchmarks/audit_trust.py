"""Can a user trust the audit's verdicts? Calibration, flags, per-subset trust, length bias, ties, planted flips.

- ``hh``: the default audit of all hh-rlhf pairs (MiniLM, 10 cross-fitted members): share flagged under the
  calibrated rules and under the paper's ``mean < 0``, subsets judged at chance, ECE of ``p_label_wrong``
  (temperature and isotonic), Spearman of strength with the length difference before and after
  ``length_correction``, and the effect of the correction on agreement.
- ``llmeval2``: LLMEval² with its 482 human ties kept (label 0.5): how well the audit's ambiguity scores
  separate ties from decided pairs (AUROC; candidates ``-|mean|``, ``-|z|``, ``std``).
- ``flips``: 20% planted flips on the decided LLMEval² pairs and in the gold-standard lab (``--lab``, a
  lab.json from ``benchmarks/lab.py``): share of flagged pairs that were planted, ECE of
  ``p_label_wrong`` against the planted flips.

    .venv/bin/python benchmarks/audit_trust.py [--seeds 3]

Writes benchmarks/results/audit_trust.json.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from rmkit.provenance import write_result
from rmkit.audit import AuditConfig, audit_diffs, response_length_diff
from rmkit.calibration import (agreement, crossfit_calibration, expected_calibration_error, symmetric_points)
from rmkit.data import load_preferences
from rmkit.ensemble import ensemble_diffs, heads_on_features, member_layers
from rmkit.heads import fold_of
from rmkit.lab import proxy_features

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def hh_block(work: Path) -> dict:
    ds = load_preferences(DATA / "hh-rlhf")
    # fp32 on every machine, so the committed numbers reproduce (auto picks bf16 on CPUs with fast bf16 matmuls)
    cfg = AuditConfig(data=str(DATA / "hh-rlhf"), output_dir=str(work / "hh"), precision="fp32")
    t0 = time.time()
    diffs, info = ensemble_diffs(cfg, ds.pairs, work_dir=work / "hh" / "work")
    length, unit = response_length_diff(ds.pairs, cfg.model)
    base = audit_diffs(ds, diffs, cfg, info=info, length_diff=length)
    corrected = audit_diffs(ds, diffs, replace(cfg, length_correction=True), info=info, length_diff=length)
    t = base.summary["trust"]
    tc = corrected.summary["trust"]
    mean = np.nanmean(diffs, axis=0)
    fold = fold_of([p.id for p in ds.pairs], 2, seed=cfg.seed + 101)
    ece = {m: expected_calibration_error(*symmetric_points(crossfit_calibration(mean, fold, method=m)))
           for m in ("temperature", "isotonic")}
    flagged_by_subset = base.summary["per_subset"]
    return {
        "pairs": len(ds.pairs),
        "agreement": t["agreement"],
        "per_subset": t["per_subset"],
        "flagged_share": t["flagged_share"],
        "flagged": t["flagged"],
        "flagged_share_paper_rule": t["flagged_share_paper_rule"],
        "unjudged_subsets": t["unjudged_subsets"],
        "flags_in_unjudged_subsets": int(sum(flagged_by_subset[s]["likely_mislabeled"] for s in t["unjudged_subsets"])),
        "ece": t["ece"],
        "ece_by_method": ece,
        "max_p_label_wrong": t["max_p_label_wrong"],
        "wrong_share": t["wrong_share"],
        "length_unit": unit,
        "length_spearman": t["length_bias"]["spearman"],
        "length_spearman_corrected": tc["length_bias"]["spearman"],
        "agreement_corrected": tc["agreement"]["agreement"],
        "flagged_share_corrected": tc["flagged_share"],
        "rejected_longer_overall": t["length_bias"]["rejected_longer_overall"],
        "rejected_longer_mean_below_zero": t["length_bias"]["rejected_longer_mean_below_zero"],
        "seconds": time.time() - t0,
    }


def llmeval2_blocks(seeds: int) -> tuple[dict, dict]:
    ds = load_preferences(DATA / "llmeval2", allow_ties=True)
    pairs = ds.pairs
    ids = [p.id for p in pairs]
    labels = np.array([p.label for p in pairs])
    tie = labels == 0.5
    cfg = AuditConfig(data=str(DATA / "llmeval2"))
    proxy = proxy_features(cfg, pairs)
    # Ties: the ensemble learns ties as 0.5 (cross-fitted), and its ambiguity scores are compared.
    layers = member_layers(cfg, proxy.num_layers)
    pick = [proxy.views.index(x) for x in sorted(set(layers))]
    diffs, _, _ = heads_on_features(cfg, proxy.fc[:, pick], proxy.fr[:, pick], ids, layers, labels=labels)
    mean = np.nanmean(diffs, axis=0)
    std = np.nanstd(diffs, axis=0)
    z = mean / np.maximum(std, 1e-12)
    ties = {
        "pairs": len(pairs), "ties": int(tie.sum()),
        "agreement_decided": agreement(mean[~tie], labels[~tie]),
        "tie_auroc": {"neg_abs_mean": float(roc_auc_score(tie, -np.abs(mean))),
                      "neg_abs_z": float(roc_auc_score(tie, -np.abs(z))),
                      "std": float(roc_auc_score(tie, std))},
    }
    ties["tie_auroc_best"] = max(ties["tie_auroc"].values())
    # Planted flips on the decided pairs (their human labels as the clean truth).
    dec = np.flatnonzero(~tie)
    sub = replace(proxy, fc=proxy.fc[dec], fr=proxy.fr[dec], ids=[ids[i] for i in dec])
    y_clean = labels[dec] > 0.5
    rows = []
    for s in range(seeds):
        rng = np.random.default_rng(s)
        flipped = np.zeros(len(dec), bool)
        flipped[rng.choice(len(dec), size=int(round(0.2 * len(dec))), replace=False)] = True
        d = sub.ensemble(y_clean ^ flipped, seed=s)
        m = np.nanmean(d, axis=0)
        row = {}
        for method in ("temperature", "isotonic"):
            p_wrong = 1 - crossfit_calibration(m, fold_of(sub.ids, 2, seed=s + 101), method=method)
            flags = p_wrong >= 0.8
            key = "" if method == "temperature" else "_isotonic"
            row.update({f"flagged_share{key}": float(flags.mean()),
                        f"precision_flagged{key}": float(flipped[flags].mean()) if flags.any() else float("nan"),
                        f"ece{key}": expected_calibration_error(p_wrong, flipped),
                        f"auroc{key}": float(roc_auc_score(flipped, p_wrong)),
                        f"max_p_label_wrong{key}": float(np.nanmax(p_wrong))})
        rows.append(row)
    flips = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
    flips.update({"seeds": seeds, "noise": 0.2, "pairs": len(dec), "runs": rows})
    return ties, flips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench_audit_trust"))
    parser.add_argument("--lab", default=str(ROOT / "benchmarks" / "results" / "lab.json"))
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "audit_trust.json"))
    parser.add_argument("--only-lab", action="store_true", help="only (re)read the lab's flips into the results")
    args = parser.parse_args()
    work = Path(args.work)
    out: dict = {}
    path = Path(args.results)
    if path.exists():
        out = json.loads(path.read_text())
    if not args.only_lab:
        out["hh"] = hh_block(work)
        write_result(path, out)
        print(json.dumps(out["hh"], indent=1), flush=True)
        out["llmeval2"], flips_llm = llmeval2_blocks(args.seeds)
        out["flips"] = {"llmeval2": flips_llm}
    lab = Path(args.lab)
    if lab.exists():
        res = json.loads(lab.read_text())
        if "flips" in res and "0.2" in res["flips"]:
            cal = res["flips"]["0.2"]["calibrated_flags"]
            out["flips"]["lab"] = {**{k: v for k, v in cal.items() if not k.endswith("_std")},
                                   "ece": cal["ece_vs_flipped"],
                                   "isotonic": res["flips"]["0.2"].get("calibrated_flags_isotonic"),
                                   "source": str(lab.relative_to(ROOT)) if lab.is_relative_to(ROOT) else str(lab)}
    out["flips"]["data"] = [k for k in ("lab", "llmeval2") if k in out["flips"]]
    out["flips"]["precision_flagged"] = out["flips"][out["flips"]["data"][0]]["precision_flagged"]
    out["flips"]["ece"] = out["flips"][out["flips"]["data"][0]]["ece"]
    write_result(path, out)
    print(json.dumps({k: v for k, v in out.items() if k != "hh"}, indent=1))


if __name__ == "__main__":
    main()
