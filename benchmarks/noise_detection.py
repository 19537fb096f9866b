"""How well does the audit find label flips planted in real hh-rlhf pairs? And what does it cost?

For 10%, 20% and 30% flips (fixed seeds) injected into all usable hh-rlhf pairs, each method ranks
the pairs from most to least suspect and is scored against the planted flips: AUROC, average
precision, precision at k (k = number flipped) and precision among the 5% most suspect.

- ``rmkit``: the audit's ensemble (M members, cross-fitted, heads on the cached frozen features, each
  member reading one of several layers, L2 picked per layer on the noisy labels); suspicion = 1 -
  quality score.
- ``single_rm``: one reward model trained the same way (a head on the middle layer, its L2 picked
  the same way, no bootstrap), cross-fitted (each pair scored by the fold model that did not train
  on it); suspicion = minus its reward difference.
- ``cleanlab``: ``cleanlab.rank.get_label_quality_scores`` and ``cleanlab.filter.find_label_issues``
  on the single model's out-of-fold predictions, each pair turned into a two-class example by
  ordering its two responses at random (label = which position holds the chosen response).
- ``cleanlab_ensemble``: the same on the ensemble's mean probabilities.

Cost: wall time of the M-member audit divided by the wall time of training and scoring one model
the same way, both from an empty feature cache, measured in this run.

    .venv/bin/python benchmarks/noise_detection.py [--members 10] [--seeds 3]

Writes benchmarks/results/noise_detection.json and benchmarks/results/audit_cost.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from rmkit.provenance import write_result
from rmkit.data import inject_label_flips, load_preferences
from rmkit.lab import detection_metrics
from rmkit.ensemble import (EnsembleConfig, default_cache_dir, encode_features, ensemble_diffs, heads_on_features,
                            member_layers)
from rmkit.models import RewardModel
from rmkit.strength import pair_quality_scores

ROOT = Path(__file__).resolve().parents[1]


def cleanlab_scores(diff: np.ndarray, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs as 2-class examples: label 0 if the chosen response sits in position A, else 1."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    rng = np.random.default_rng(seed)
    swap = rng.random(len(diff)) < 0.5
    z = np.where(swap, -diff, diff)  # r(A) - r(B)
    p_a = 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))
    pred_probs = np.clip(np.stack([p_a, 1 - p_a], 1), 1e-6, 1 - 1e-6)
    labels = swap.astype(int)
    quality = get_label_quality_scores(labels, pred_probs)
    issues = find_label_issues(labels, pred_probs)
    return 1.0 - quality, issues


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hh-rlhf"))
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--layers", default=None,
                        help="hidden layers the members read, e.g. 3 or 1,2,4,5,6 (default: the audit's)")
    parser.add_argument("--head-l2", type=float, default=None, help="fixed L2 of the heads (default: the audit's choice)")
    parser.add_argument("--pooling", default="mean")
    parser.add_argument("--limit", type=int, default=None, help="rows per file (a smoke test; results not saved)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    clean = load_preferences(args.data, limit=args.limit).pairs
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    ids = [p.id for p in clean]
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    # fp32 on every machine, so the committed numbers reproduce (auto picks bf16 on CPUs with fast bf16 matmuls)
    cfg = EnsembleConfig(model=args.model, members=args.members, max_length=args.max_length, layers=layers,
                         pooling=args.pooling, head_l2=args.head_l2, precision="fp32")
    rm = RewardModel.from_pretrained(cfg.model, max_length=cfg.max_length)
    middle = rm.num_layers // 2  # the single model reads the middle block (hidden layer L // 2)
    single_cfg = replace(cfg, members=2, bootstrap=False, layers=[middle] if cfg.pooling == "mean" else None)

    # ---- cost: the M-member audit against one model, each from an empty cache
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        ensemble_diffs(replace(cfg, cache_dir=f"{tmp}/a"), clean, work_dir=f"{tmp}/wa", progress=False)
        ensemble_s = time.time() - t0
        t0 = time.time()
        ensemble_diffs(replace(single_cfg, cache_dir=f"{tmp}/b"), clean, work_dir=f"{tmp}/wb", progress=False)
        single_s = time.time() - t0
    cost = {"ensemble_s": ensemble_s, "single_s": single_s, "ratio": ensemble_s / single_s,
            "members": args.members, "pairs": len(clean), "backbone": f"{args.model} frozen, {args.pooling} pooling"}
    write_result(results_dir / "audit_cost.json", cost)
    print(cost, flush=True)

    # ---- detection: the features do not depend on labels, so one cached encoding serves every run
    ens_layers = member_layers(cfg, rm.num_layers)
    one_layer = member_layers(single_cfg, rm.num_layers)
    views = sorted(set(ens_layers) | set(one_layer))
    fc, fr = encode_features(rm, clean, cache_dir=cfg.cache_dir or default_cache_dir(), model_id=cfg.model,
                             pooling=cfg.pooling, layers=views, batch_size=cfg.batch_size)
    fc, fr = np.asarray(fc), np.asarray(fr)

    def view(a: np.ndarray, used: list[int]) -> np.ndarray:
        return a[:, [views.index(x) for x in sorted(set(used))]] if cfg.pooling == "mean" else a

    results: dict = {}
    l2_used: dict = {}
    for noise in (0.1, 0.2, 0.3):
        runs: dict[str, list] = {}
        for seed in range(args.seeds):
            _, flipped = inject_label_flips(clean, noise, seed=seed)
            # Flipping a pair swaps its two feature rows.
            c = np.where(flipped[:, None, None], fr, fc)
            r = np.where(flipped[:, None, None], fc, fr)
            diffs, _, used = heads_on_features(replace(cfg, seed=seed), view(c, ens_layers), view(r, ens_layers),
                                               ids, ens_layers)
            single_d, _, used_single = heads_on_features(replace(single_cfg, seed=seed), view(c, one_layer),
                                                         view(r, one_layer), ids, one_layer)
            single = np.nanmean(single_d, axis=0)
            l2_used[f"{noise}/{seed}"] = {"rmkit": used["head_l2"], "single_rm": used_single["head_l2"]}
            quality = pair_quality_scores(diffs)
            cl_single, _ = cleanlab_scores(single, seed=seed)
            ens_mean_logit = np.log(quality.clip(1e-6, 1 - 1e-6) / (1 - quality.clip(1e-6, 1 - 1e-6)))
            cl_ens, _ = cleanlab_scores(ens_mean_logit, seed=seed)
            for name, susp in (("rmkit", 1.0 - quality), ("single_rm", -single), ("cleanlab", cl_single),
                               ("cleanlab_ensemble", cl_ens)):
                runs.setdefault(name, []).append(detection_metrics(susp, flipped))
            runs.setdefault("_rm_accuracy_on_clean_labels", []).append(
                {"single": float(np.mean((single > 0) != flipped)), "ensemble": float(np.mean((quality > 0.5) != flipped))})
        results[str(noise)] = {
            name: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} | {
                f"{k}_std": float(np.std([r[k] for r in rs])) for k in rs[0]}
            for name, rs in runs.items()
        }
        print(noise, json.dumps(results[str(noise)], indent=1), flush=True)
    results["settings"] = {"members": args.members, "seeds": args.seeds, "model": args.model,
                           "max_length": args.max_length, "pooling": args.pooling, "member_layers": ens_layers,
                           "single_rm_layer": one_layer[0], "head_l2": args.head_l2 or l2_used,
                           "bootstrap": used["bootstrap"], "pairs": len(clean), "scoring": "crossfit, 2 folds"}
    write_result(results_dir / "noise_detection.json", results)


if __name__ == "__main__":
    main()
