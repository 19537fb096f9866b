"""The lab's second domain: the hh-rlhf gold labels LLMEval², as the same human would label other data.

1. `rmkit.lab.run_lab` on LLMEval² (all 2,536 usable comparisons, human ties kept as pairs: the gold decides
   them) with the hh-rlhf gold (`benchmarks/lab/gold_hh_head.npy`, `gold_head`): the same four studies as
   on hh-rlhf (learnability, strength, flips, denoise), proxies trained and graded within LLMEval².
2. How the gold sees LLMEval²'s humans: agreement with their decided labels, and whether the pairs humans
   called a tie are the ones the gold finds close (AUROC of -|gold difference| for a human tie).
3. Across domains: proxies (the audit's 5-head ensemble and a single head) trained on the lab's labels of all
   hh-rlhf pairs, graded against the gold's sign on every LLMEval² pair, and the reverse; beside the
   in-domain (cross-fitted) accuracy of step 1.
4. MetaRM out of distribution, with a gold (the paper's Sec. 4.3 claim; `benchmarks/metarm_ood.py` could only
   grade against LLMEval²'s humans, where every RM here is near chance): `rmkit.lab.study_shift` with the
   hh-rlhf head as vanilla, half of LLMEval²'s queries (both responses, no labels) as the meta set, the other
   half's pairs graded against the gold.

    .venv/bin/python benchmarks/lab_domains.py      # ~15 minutes on 2 cores the first time (the gold encodes LLMEval²)

Writes benchmarks/results/lab_llmeval2.json and benchmarks/lab/gold_llmeval2.parquet (gold difference per pair
id; no text), which later runs reuse.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from rmkit.provenance import write_result
from rmkit.lab.hh import ROOT, load_hh_lab
from rmkit.config import load_config
from rmkit.data import load_preferences
from rmkit.lab import (LabConfig, ProxyFeatures, as_labelled, detection_metrics, gold_accuracy, head_rewards, orient,
                       proxy_features, proxy_heads, read_gold_scores, run_lab, sample_labels, study_shift)

DATA = ROOT.parent / "shared" / "data"
LAB = ROOT / "benchmarks" / "lab"


def _summary(rows: list[dict]) -> dict:
    """Mean and std over seeds of each metric."""
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} | \
           {f"{k}_std": float(np.std([r[k] for r in rows])) for k in rows[0]}


def across(src, src_gold, temperature: float, dst, dst_gold, seeds: int) -> dict:
    """Proxies trained on the lab's sampled labels of every ``src`` pair, graded on every ``dst`` pair."""
    rows = []
    for s in range(seeds):
        y = sample_labels(src.ids, src_gold, temperature, seed=s)["label"].to_numpy().astype(bool)
        heads = proxy_heads(src, y, np.ones(len(src.ids), bool), seed=s)
        d = dst.fc - dst.fr  # linear heads: a difference of features gives a difference of rewards
        rows.append({"ensemble": gold_accuracy(head_rewards(d, dst.views, heads["ensemble"]).mean(0), dst_gold),
                     "single_rm": gold_accuracy(head_rewards(d, dst.views, heads["single"])[0], dst_gold)})
    return _summary(rows)


def gold_vs_humans(pairs, gold: np.ndarray) -> dict:
    """How the gold sees a domain's human labels: agreement on the decided ones, and whether the pairs humans
    called a tie are those with a small gold gap (AUROC of -|gold difference|)."""
    tie = np.array([p.label for p in pairs]) == 0.5
    return {"decided_pairs": int((~tie).sum()), "human_ties": int(tie.sum()),
            "agreement_on_decided": gold_accuracy(gold[~tie], np.ones((~tie).sum())),
            "tie_auroc_of_small_gold_gap": detection_metrics(-np.abs(gold), tie)["auroc"],
            "abs_gold_diff_median": {"human_ties": float(np.median(np.abs(gold[tie]))),
                                     "decided": float(np.median(np.abs(gold[~tie])))}}


def pooled_training(hl, hh, other, other_gold: np.ndarray, other_temperature: float, seeds: int) -> dict:
    """Does a second domain's labelled data lift the first's learnability (its gate is short of pairs)? On
    hh-rlhf's test split: proxies trained on its train split alone, and with every pair of ``other`` added."""
    test, n = hl.mask("test"), len(hl.ids)
    pooled = ProxyFeatures(np.concatenate([hh.fc, other.fc]), np.concatenate([hh.fr, other.fr]), hh.views, hh.cfg,
                           hl.ids + other.ids, hh.num_layers)
    hh_train = np.r_[hl.mask("train"), np.zeros(len(other.ids), bool)]
    trains = {"hh_rlhf_train": hh_train, "hh_rlhf_train_plus_llmeval2": hh_train | (np.arange(len(pooled.ids)) >= n)}
    rows: dict[str, list] = {name: [] for name in trains}
    for s in range(seeds):
        y = np.r_[hl.label(s), sample_labels(other.ids, other_gold, other_temperature, seed=s)["label"].to_numpy()
                  .astype(bool)]
        g = as_labelled(hl.gold, y[:n])[test]  # gold difference, sides as labelled
        c, r = orient(hh.fc[test], hh.fr[test], y[:n][test])
        for name, train in trains.items():
            heads = proxy_heads(pooled, y, train, seed=s)
            rows[name].append({"ensemble": gold_accuracy(head_rewards(c - r, hh.views, heads["ensemble"]).mean(0), g),
                               "single_rm": gold_accuracy(head_rewards(c - r, hh.views, heads["single"])[0], g)})
    return {"test_pairs": int(test.sum()), "train_pairs": {"hh_rlhf": int(hh_train.sum()),
                                                           "llmeval2": len(other.ids)}} | \
        {name: _summary(rs) for name, rs in rows.items()}


def metarm_ood(hl, hh, pairs, feats, gold: np.ndarray, seeds: int, meta_prompts: int = 32) -> dict:
    """MetaRM adapting the hh-rlhf head (`rmkit.lab.study_shift`) to another domain's responses (no labels),
    graded against the gold there. Queries, not pairs, are split, so no meta query is graded; an empty query
    (mt-bench) is its own group."""
    groups = [p.prompt[-1]["content"].strip() if p.prompt and p.prompt[-1]["content"].strip() else p.id
              for p in pairs]
    names = sorted(set(groups))
    meta_names = set(np.random.default_rng(0).permutation(names)[: len(names) // 2])
    meta = np.array([g in meta_names for g in groups])
    last = feats.views.index(feats.num_layers)
    both = np.stack([feats.fc[:, last], feats.fr[:, last]], 1)  # (N, 2 responses, H)
    # With two samples a prompt, grading needs only their gold difference: (gold_diff, 0) stands for the two rewards.
    eval_gold = np.stack([gold[~meta], np.zeros((~meta).sum())], 1)
    v = hh.views.index(hh.num_layers)
    shifts = []
    for s in range(seeds):
        c, r = orient(hh.fc[:, v], hh.fr[:, v], hl.label(s))
        shifts.append(study_shift(c, r, np.ones(len(hl.ids), bool), both[meta], both[~meta], eval_gold,
                                  meta_prompts=meta_prompts, seed=s))
    runs = {"vanilla": [x["vanilla"] for x in shifts], "control": [x["vanilla_more_steps"] for x in shifts]} | {
        f"metarm_{eta}": [x["metarm"][eta] for x in shifts] for eta in shifts[0]["metarm"]}
    out = {"meta_pairs": int(meta.sum()), "eval_pairs": int((~meta).sum()), "steps": shifts[0]["steps"],
           "meta_prompts_per_step": meta_prompts}
    for k, rs in runs.items():
        out[k] = {m: float(np.mean([x[m] for x in rs])) for m in rs[0]} | {
            "accuracy_std": float(np.std([x["accuracy"] for x in rs]))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "lab_cpu.yaml"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "lab_llmeval2.json"))
    args = parser.parse_args()
    t0 = time.time()

    # 1. The hh-rlhf gold on LLMEval², and the lab's studies there.
    cfg: LabConfig = load_config(LabConfig, args.config)
    cfg.data, cfg.allow_ties, cfg.output_dir = str(DATA / "llmeval2"), True, str(ROOT / "runs" / "lab_llmeval2")
    # The gold of these results is the lab's first, MPNet's (gold_hh_head.npy), whatever the config's gold now is.
    cfg.gold_model, cfg.gold_layer, cfg.precision = "mpnet", None, "fp32"
    cached = LAB / "gold_llmeval2.parquet"
    if cached.exists():
        cfg.gold_scores = str(cached)
    else:
        cfg.gold_head = str(LAB / "gold_hh_head.npy")
    lab = run_lab(cfg)
    if not cached.exists():
        shutil.copy(Path(cfg.output_dir) / "gold.parquet", cached)
        info = json.loads((Path(cfg.output_dir) / "gold.json").read_text())
        info["head"] = str(Path(info["head"]).relative_to(ROOT))  # the committed file names no machine's path
        cached.with_suffix(".json").write_text(json.dumps(info, indent=1))
    lab["data"] = os.path.relpath(cfg.data, ROOT)  # the committed file names no machine's path
    lab["gold"] = json.loads(cached.with_suffix(".json").read_text()) | {
        k: lab["gold"][k] for k in ("length_spearman", "length_unit", "abs_diff_median")}

    # 2. The gold against LLMEval²'s humans.
    ll = load_preferences(DATA / "llmeval2", allow_ties=True).pairs
    ll_gold = read_gold_scores(cached, [p.id for p in ll])
    humans = gold_vs_humans(ll, ll_gold)

    # 3. Across domains, both ways, beside the in-domain accuracy; then both domains' pairs pooled.
    hl = load_hh_lab()
    hh = proxy_features(cfg.proxy_config(), hl.ds.pairs)
    llf = proxy_features(cfg.proxy_config(), ll)
    hh_lab_result = json.loads((ROOT / "benchmarks" / "results" / "lab.json").read_text())
    cross = {"hh_rlhf_to_llmeval2": across(hh, hl.gold, hl.temperature, llf, ll_gold, args.seeds),
             "llmeval2_to_hh_rlhf": across(llf, ll_gold, lab["temperature"], hh, hl.gold, args.seeds),
             "llmeval2_in_domain": {k: lab["learnability"][k] for k in ("ensemble", "single_rm")},
             "hh_rlhf_in_domain": {k: hh_lab_result["learnability"][k] for k in ("ensemble", "single_rm")}}
    pooling = pooled_training(hl, hh, llf, ll_gold, lab["temperature"], args.seeds)

    # 4. MetaRM out of distribution, graded against the gold.
    shift = metarm_ood(hl, hh, ll, llf, ll_gold, args.seeds)

    out = {"what": "the hh-rlhf gold (MPNet, head on hh-rlhf's human labels) labels LLMEval²; proxies on MiniLM",
           "lab": lab, "gold_vs_llmeval2_humans": humans, "across_domains": cross, "pooled_training": pooling,
           "metarm_ood": shift, "seconds": time.time() - t0}
    write_result(args.results, out)
    print(json.dumps({k: out[k] for k in ("gold_vs_llmeval2_humans", "across_domains", "pooled_training",
                                          "metarm_ood")}, indent=1, default=float))


if __name__ == "__main__":
    main()
