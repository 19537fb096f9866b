"""PPO of SmolLM2-135M-Instruct against the default reward model on this machine: the held-out RM
reward and KL to the reference at the start and the end, and the throughput.

    .venv/bin/python benchmarks/ppo.py --reward-model runs/rm_default/model [--config configs/ppo_cpu.yaml] [--set k=v ...]

The run itself is ``rmkit.rl.train_ppo`` (so it resumes if killed); its config, metrics.jsonl and
final policy are in --output-dir. Writes benchmarks/results/ppo.json: reward_start, reward_end,
kl_start, kl_end, steps, rollout_tokens_per_s, s_per_step, the config and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from dataclasses import asdict
from pathlib import Path

import torch

from rmkit.provenance import write_result
from rmkit.config import load_config
from rmkit.rl import PPOConfig, train_ppo

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reward-model", required=True)
    ap.add_argument("--policy", default="smollm2")
    ap.add_argument("--config", default=str(ROOT / "configs" / "ppo_cpu.yaml"))
    ap.add_argument("--output-dir", default=str(ROOT / "runs" / "bench_ppo"))
    ap.add_argument("--set", nargs="*", default=[], help="further PPOConfig settings as key=value")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ppo.json"))
    args = ap.parse_args()
    settings = {"reward_model": args.reward_model, "policy": args.policy, "output_dir": args.output_dir,
                **dict(kv.split("=", 1) for kv in args.set)}
    cfg = load_config(PPOConfig, args.config, settings)
    summary = train_ppo(cfg)
    result = {**summary, "config": asdict(cfg),
              "machine": {"device": "cuda" if torch.cuda.is_available() else "cpu", "cpu_threads": torch.get_num_threads(),
                          "cpus": os.cpu_count(), "platform": platform.platform()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, result, relative_to=ROOT)
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=1))


if __name__ == "__main__":
    main()
