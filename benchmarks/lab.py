"""The gold-standard lab on hh-rlhf: learnability, strength fidelity, planted flips and denoising, graded
against the gold (`rmkit.lab`).

    .venv/bin/python benchmarks/lab.py                 # reuses benchmarks/lab/gold_hh.parquet when present
    .venv/bin/python benchmarks/lab.py --fresh-gold    # encodes every text with the gold again (~30 min)

Writes benchmarks/results/lab.json, and the small derived artifacts benchmarks/lab/gold_hh.parquet (gold
difference per pair id; no third-party text) and gold_hh.json (how the gold was made).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from rmkit.config import load_config
from rmkit.files import write_json
from rmkit.lab import LabConfig, run_lab

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "lab_cpu.yaml"))
    parser.add_argument("--fresh-gold", action="store_true")
    parser.add_argument("--studies", default=None, help="comma-separated subset of the config's studies")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "lab.json"))
    args = parser.parse_args()
    cfg: LabConfig = load_config(LabConfig, args.config)
    cfg.data = str((ROOT / cfg.data).resolve()) if not Path(cfg.data).is_absolute() else cfg.data
    cfg.output_dir = str(ROOT / "runs" / "lab")
    gold = ROOT / "benchmarks" / "lab" / "gold_hh.parquet"
    if gold.exists() and not args.fresh_gold:
        cfg.gold_scores = str(gold)
    if args.studies:
        cfg.studies = args.studies.split(",")
    result = run_lab(cfg)
    gold.parent.mkdir(parents=True, exist_ok=True)
    if not cfg.gold_scores:
        shutil.copy(Path(cfg.output_dir) / "gold.parquet", gold)
    shutil.copy(Path(cfg.output_dir) / "gold.json", gold.with_suffix(".json"))
    if (Path(cfg.output_dir) / "gold_head.npy").exists():  # the gold's head: to score new responses (best-of-n)
        shutil.copy(Path(cfg.output_dir) / "gold_head.npy", gold.with_name("gold_hh_head.npy"))
    result["data"] = os.path.relpath(cfg.data, ROOT)  # the committed file names no machine's path
    write_json(args.results, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("flips", "denoise")}, indent=1, default=float))


if __name__ == "__main__":
    main()
