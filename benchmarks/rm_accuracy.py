"""Train the default reward model on the seeded train split of all 8,552 hh-rlhf pairs and report
validation and test accuracy (overall and per subset), training and scoring throughput.

    .venv/bin/python benchmarks/rm_accuracy.py [--config configs/train_default.yaml] [--key value ...]

Writes benchmarks/results/rm_accuracy.json. A killed run resumes from its checkpoint.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from rmkit.provenance import write_result
from rmkit.config import add_arguments, config_from_args, to_dict
from rmkit.training import TrainConfig, train_reward_model

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "train_default.yaml"))
    parser.add_argument("--result", default=str(ROOT / "benchmarks" / "results" / "rm_accuracy.json"))
    add_arguments(parser, TrainConfig)
    args = parser.parse_args()
    cfg = config_from_args(TrainConfig, args)
    if "output_dir" not in vars(args):
        cfg.output_dir = str(ROOT / "runs" / "bench_rm_accuracy")
    t0 = time.time()
    trained = train_reward_model(cfg)
    res = dict(trained.metrics)
    if "test/accuracy" not in res:  # a run finished before test scoring existed: score its test split now
        from rmkit.data import load_preferences, load_splits
        from rmkit.training import evaluate_pairs

        ds = load_preferences(cfg.data, format=cfg.data_format)
        by_id = {p.id: p for p in ds.pairs}
        test = [by_id[i] for i in load_splits(Path(cfg.output_dir) / "splits.json")["test"]]
        res.update(evaluate_pairs(trained.model, test, prefix="test", batch_size=cfg.eval_batch_size))
    out = {
        "backbone": cfg.model,
        "test_accuracy": res["test/accuracy"],
        "val_accuracy": res["eval/accuracy"],
        "per_subset": res["test/per_subset"],
        "test_pairs": res["test/pairs"],
        "val_pairs": res["eval/pairs"],
        "train_pairs": res["train_pairs"],
        "train_pairs_per_s": res["train_pairs_per_s"],
        "score_pairs_per_s": res["test/score_pairs_per_s"],
        "train_seconds": res["train_seconds"],
        "wall_seconds": time.time() - t0,
        "config": to_dict(cfg),
        "machine": {"cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
                    "python": platform.python_version(), "torch": torch.__version__},
    }
    Path(args.result).parent.mkdir(parents=True, exist_ok=True)
    write_result(Path(args.result), out)
    print(json.dumps({k: out[k] for k in ("test_accuracy", "val_accuracy", "per_subset", "train_pairs_per_s",
                                          "score_pairs_per_s")}, indent=1))


if __name__ == "__main__":
    main()
