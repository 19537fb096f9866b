"""What does a bounded feature cache cost? float16 storage and random projections, measured in the lab before any
becomes a default.

The audit's cache holds 2 N V H numbers (an 8B decoder's 5 layers of 1M pairs: ~160 GB in float32).
`EnsembleConfig.feature_store` float16 halves it; ``feature_dim`` projects each view to a fixed width with a seeded
Gaussian random projection (`rmkit.ensemble.random_projection`). Here both are applied to the lab's cached MiniLM
features exactly as the cache would store them, and the audit's ensemble is graded against the gold: flip AUROC at
20% planted flips and the proxy's accuracy against the gold's sign, 3 seeds, beside the bytes per pair.

    .venv/bin/python benchmarks/bounded_features.py          # about 10 minutes on 2 cores (features cached)

Writes benchmarks/results/bounded_features.json.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from rmkit.config import load_config
from rmkit.ensemble import random_projection
from rmkit.lab import (LabConfig, as_labelled, choose_temperature, detection_metrics, gold_accuracy, load_lab_inputs,
                       sample_labels)
from rmkit.provenance import write_result
from rmkit.strength import pair_quality_scores

ROOT = Path(__file__).resolve().parents[1]
GOLD = ROOT / "benchmarks" / "lab" / "gold_hh_smollm2.parquet"


def bounded(proxy, store: str, dim: int | None):
    """The proxy's features as a bounded cache would hold them (projected in float32, then stored)."""
    fc, fr = proxy.fc, proxy.fr
    if dim is not None:
        p = random_projection(fc.shape[2], dim)
        fc, fr = fc @ p, fr @ p
    return replace(proxy, fc=fc.astype(store), fr=fr.astype(store))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bounded_features.json"))
    args = parser.parse_args()
    cfg = load_config(LabConfig, ROOT / "configs" / "lab_cpu.yaml")
    cfg.data = str((ROOT / cfg.data).resolve())
    inputs = load_lab_inputs(cfg, GOLD)
    gold, ids = inputs.gold, inputs.proxy.ids
    temperature = choose_temperature(gold, cfg.against_gold)
    variants = {"float32": ("float32", None), "float16": ("float16", None), "dim256": ("float32", 256),
                "dim128": ("float32", 128), "dim64": ("float32", 64), "float16_dim128": ("float16", 128)}
    result: dict = {"variants": {}}
    for name, (store, dim) in variants.items():
        t0 = time.time()
        proxy = bounded(inputs.proxy, store, dim)
        rows = []
        for s in range(args.seeds):
            clean = sample_labels(ids, gold, temperature, seed=s)["label"].to_numpy().astype(bool)
            learn = gold_accuracy(as_labelled(np.nanmean(proxy.ensemble(clean, seed=s), 0), clean),
                                  as_labelled(gold, clean))
            lab = sample_labels(ids, gold, temperature, flips=0.2, seed=s)
            y = lab["label"].to_numpy().astype(bool)
            det = detection_metrics(1 - pair_quality_scores(proxy.ensemble(y, seed=s)), lab["flipped"].to_numpy())
            rows.append({"proxy_gold_accuracy": learn, "flip_auroc": det["auroc"],
                         "flip_precision_top5pct": det["precision_top5pct"]})
        views, width = proxy.fc.shape[1], proxy.fc.shape[2]
        result["variants"][name] = {
            **{k: float(np.mean([r[k] for r in rows])) for k in rows[0]},
            **{f"{k}_std": float(np.std([r[k] for r in rows])) for k in rows[0]},
            "bytes_per_pair": int(2 * views * width * np.dtype(store).itemsize), "seconds": time.time() - t0}
        print(name, {k: round(v, 4) for k, v in result["variants"][name].items()}, flush=True)
        write_result(args.out, result)
    base = result["variants"]["float32"]
    result["cost_vs_float32"] = {k: {"flip_auroc": v["flip_auroc"] - base["flip_auroc"],
                                     "proxy_gold_accuracy": v["proxy_gold_accuracy"] - base["proxy_gold_accuracy"],
                                     "size": v["bytes_per_pair"] / base["bytes_per_pair"]}
                                 for k, v in result["variants"].items()}
    write_result(args.out, result)


if __name__ == "__main__":
    main()
