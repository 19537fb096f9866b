"""Learnability in the lab by the number of training pairs: is the 0.75 gate missed for want of data?

The frozen-feature proxies (a single head on MiniLM's last block, and the audit's ensemble of heads on several
blocks) are trained on the first k pairs of the seeded train split (a seeded order; k = 375 ... 5,951) with
the lab's labels, and graded on the whole test split (1,701 pairs) against the gold's sign; with sampled labels
(22.5% against the gold) and near noise-free ones (temperature / 1000). 3 seeds (labels and order).

    .venv/bin/python benchmarks/lab_learning_curve.py

Writes benchmarks/results/lab_learning_curve.json (mean and std over seeds). Needs the MiniLM feature cache
that `benchmarks/lab.py` fills (minutes to fill once, seconds after).
"""

from __future__ import annotations


import numpy as np

from rmkit.provenance import write_result
from rmkit.lab.hh import ROOT, load_hh_lab
from rmkit.ensemble import EnsembleConfig
from rmkit.lab import gold_accuracy, head_rewards, proxy_features, proxy_heads, sample_labels

SIZES = (375, 750, 1500, 3000, None)  # None: the whole train split


def main() -> None:
    hl = load_hh_lab()
    ids, gold, temperature = hl.ids, hl.gold, hl.temperature
    train, test = np.flatnonzero(hl.mask("train")), np.flatnonzero(hl.mask("test"))
    proxy = proxy_features(EnsembleConfig(precision="fp32"), hl.ds.pairs, progress=False)
    runs: dict[str, list[float]] = {}
    for labels, t in (("sampled", temperature), ("noise_free", temperature / 1000)):
        for seed in range(3):
            y = sample_labels(ids, gold, t, seed=seed)["label"].to_numpy().astype(bool)
            order = np.random.default_rng(seed + 1).permutation(train)
            for size in SIZES:
                sub = np.zeros(len(ids), bool)
                sub[order[:size]] = True
                for name, heads in proxy_heads(proxy, y, sub, seed=seed).items():
                    d = head_rewards(proxy.fc[test] - proxy.fr[test], proxy.views, heads).mean(axis=0)
                    key = f"{labels}/{name}/{size or len(train)}"
                    runs.setdefault(key, []).append(gold_accuracy(d, gold[test]))
            print(labels, seed, flush=True)
    out = {"what": "accuracy against the gold's sign on the test split by training pairs (labels/proxy/pairs): "
                   "mean and std over 3 seeds", "test_pairs": len(test),
           "accuracy": {k: {"mean": float(np.mean(v)), "std": float(np.std(v))} for k, v in runs.items()}}
    write_result(ROOT / "benchmarks" / "results" / "lab_learning_curve.json", out)
    for k, v in out["accuracy"].items():
        print(k, round(v["mean"], 4), round(v["std"], 4))


if __name__ == "__main__":
    main()
