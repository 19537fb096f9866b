"""Learnability in the lab with the proxy `rmkit train` makes: MiniLM fine-tuned end to end.

The lab's learnability study uses heads on frozen MiniLM features (the audit's proxies); their accuracy
against the gold's sign stops at 0.738, and 0.746 even with noise-free labels (results/lab_gold_choice.json).
This trains the CPU default RM (`configs/train_default.yaml`: all of MiniLM, max length 128) on the lab's
sampled labels (seed 0, 22.5% against the gold) of the seeded train split, and grades it on the test split
against the gold's sign, beside the frozen-feature proxies trained on the same pairs and graded on the same
test pairs.

    .venv/bin/python benchmarks/lab_finetune.py --gold smollm2        # the default gold: lab_finetune_smollm2.json
    .venv/bin/python benchmarks/lab_finetune.py --epochs 1             # the MPNet gold, as first run: lab_finetune.json
    .venv/bin/python benchmarks/lab_finetune.py --epochs 2 --output-dir runs/lab/finetune_epochs2 \
        --result benchmarks/results/lab_finetune_epochs2.json

Writes benchmarks/results/lab_finetune<suffix>.json (the gold's suffix, `hh_lab.GOLDS`). A killed run resumes from
its checkpoint (runs/lab/finetune<suffix>); lab_metarm.py starts from the model there.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace

import numpy as np
from rmkit.provenance import write_result
from rmkit.lab.hh import DATA, GOLDS, ROOT, load_hh_lab
from rmkit.config import load_config, to_dict
from rmkit.ensemble import EnsembleConfig
from rmkit.lab import gold_accuracy, head_rewards, proxy_features, proxy_heads
from rmkit.scoring import score_pairs
from rmkit.training import TrainConfig, train_reward_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=float, default=None, help="default: the config's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gold", choices=tuple(GOLDS), default="mpnet", help="which of the lab's golds")
    parser.add_argument("--output-dir", default=None, help="default: runs/lab/finetune<suffix> (the gold's suffix)")
    parser.add_argument("--result", default=None, help="default: benchmarks/results/lab_finetune<suffix>.json")
    args = parser.parse_args()
    the = GOLDS[args.gold]
    args.output_dir = args.output_dir or str(ROOT / "runs" / "lab" / f"finetune{the.suffix}")
    args.result = args.result or str(the.result("lab_finetune.json"))
    hl = load_hh_lab(seed=args.seed, gold=args.gold)
    pairs, ids, gold = hl.ds.pairs, hl.ids, hl.gold
    labels = hl.labels(args.seed)
    y = labels["label"].to_numpy().astype(bool)
    part = {name: hl.labelled(name, args.seed) for name in ("train", "validation", "test")}
    where = {i: k for k, i in enumerate(ids)}
    test_idx = np.array([where[i] for i in hl.splits["test"]])

    cfg = load_config(TrainConfig, ROOT / "configs" / "train_default.yaml")
    cfg = replace(cfg, data=str(DATA), output_dir=args.output_dir, seed=args.seed,
                  epochs=cfg.epochs if args.epochs is None else args.epochs)
    t0 = time.time()
    trained = train_reward_model(cfg, train_pairs=part["train"], eval_pairs=part["validation"])
    train_s = time.time() - t0
    # Graded on the source sides of the test pairs against the gold's sign (never against the lab's labels).
    source_test = [pairs[k] for k in test_idx]
    diff = score_pairs(trained.model, source_test, batch_size=cfg.eval_batch_size)["diff"].to_numpy()
    finetuned = gold_accuracy(diff, gold[test_idx])

    # The frozen-feature proxies (the lab's learnability study), trained on the same train pairs.
    proxy = proxy_features(EnsembleConfig(precision="fp32"), pairs)
    train = hl.mask("train")
    heads = proxy_heads(proxy, y, train, seed=args.seed)
    frozen = {}
    for name, h in heads.items():
        d = head_rewards(proxy.fc[test_idx] - proxy.fr[test_idx], proxy.views, h).mean(axis=0)
        frozen[name] = gold_accuracy(d, gold[test_idx])
    out = {
        "what": "accuracy against the gold's sign on the seeded test split, proxies trained on the lab's sampled "
                "labels (seed 0) of the train split",
        "gold": os.path.relpath(GOLDS[args.gold].file(".parquet"), ROOT), "train_pairs": len(part["train"]),
        "test_pairs": len(test_idx),
        "labels_with_gold_train": float(1 - labels["against_gold"].to_numpy()[train].mean()),
        "finetuned_minilm": finetuned,
        "frozen_single": frozen["single"], "frozen_ensemble_mean": frozen["ensemble"],
        "finetuned_eval_accuracy_vs_lab_labels": trained.metrics.get("eval/accuracy"),
        "train_seconds": train_s, "train_pairs_per_s": trained.metrics.get("train_pairs_per_s"),
        "config": to_dict(replace(cfg, data=os.path.relpath(cfg.data, ROOT))),  # no machine's path committed
    }
    write_result(args.result, out)
    print(json.dumps({k: v for k, v in out.items() if k != "config"}, indent=1))


if __name__ == "__main__":
    main()
