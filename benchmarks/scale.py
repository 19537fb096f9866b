"""How do rmkit's commands grow with the number of pairs? Wall time, CPU time and peak memory of `rmkit data`, `audit`,
`score` and `train --max-steps 50` at N pairs, on one machine.

The pairs are hh-rlhf's 8,552 resampled with replacement to N, each with a unique id; the model is a random 2-layer
BERT (`rmkit.assets.tiny_model`), so rmkit's own overhead shows rather than a backbone's. Each command runs in its own
process (one torch thread), measured by the kernel (peak RSS of the child).

    .venv/bin/python benchmarks/scale.py --sizes 10000,100000           # about 30 minutes on 2 cores
    .venv/bin/python benchmarks/scale.py --sizes 1000000 --commands data,audit   # the 1M row (hours; 24 GB+)

Writes benchmarks/results/scale.json: per command and N the seconds, CPU seconds, peak RSS (GB), seconds per pair,
and the ratio of seconds per pair at the largest N to the smallest.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rmkit.assets import tiny_model
from rmkit.provenance import write_result

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hh-rlhf"


def resampled(n: int, out: Path, seed: int = 0) -> Path:
    """hh-rlhf's rows resampled to ``n`` with unique ids, as one JSONL file."""
    rows = []
    for f in sorted(DATA.glob("*/test.jsonl.gz")):
        with gzip.open(f, "rt") as fh:
            rows += [(f.parent.name, line) for line in fh]
    pick = np.random.default_rng(seed).integers(0, len(rows), n)
    with out.open("w") as fh:
        for k, i in enumerate(pick):
            rec = json.loads(rows[i][1])
            fh.write(json.dumps({"id": f"p{k:08d}", "subset": rows[i][0], **rec}) + "\n")
    return out


def measure(args: list[str], log: Path) -> dict:
    """One `rmkit` command in a child process: wall and CPU seconds, that child's peak RSS (os.wait4: its own usage,
    not the largest of every child so far), and its exit code."""
    t0 = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = "import sys, torch; torch.set_num_threads(1); from rmkit.cli import main; sys.exit(main(sys.argv[1:]))"
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    return {"seconds": time.time() - t0, "cpu_seconds": usage.ru_utime + usage.ru_stime, "rss_gb": usage.ru_maxrss / 1e6,
            "rc": rc, "log_tail": log.read_text()[-300:] if rc else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--commands", default="data,audit,score,train")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    args = parser.parse_args()
    out_path = Path(args.out)
    result = json.loads(out_path.read_text()) if out_path.exists() else {}
    result.pop("provenance", None)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = tiny_model("bert", work / "tiny_bert")
        train = ["train", "", "--model", model, "--max-steps", "50", "--max-length", "64", "--eval-every", "0",
                 "--save-every", "0", "--eval-test", "false", "--batch-size", "16"]
        for n in (int(x) for x in args.sizes.split(",")):
            data = resampled(n, work / f"pairs_{n}.jsonl")
            runs = {"data": ["data", str(data), "--tokenizer", "none"],
                    "audit": ["audit", str(data), "--model", model, "--max-length", "64", "--members", "4",
                              "--precision", "fp32", "--cache-dir", str(work / "cache"), "--output-dir",
                              str(work / f"audit_{n}")],
                    "score": ["score", str(data), model, "--max-length", "64", "--output-dir", str(work / f"score_{n}")],
                    "train": [*train[:1], str(data), *train[2:], "--output-dir", str(work / f"train_{n}")]}
            for command in args.commands.split(","):
                m = measure(runs[command], work / f"{command}_{n}.log")
                m["seconds_per_pair"] = m["seconds"] / n
                result.setdefault(command, {})[str(n)] = m
                print(command, n, {k: v for k, v in m.items() if k != "log_tail"}, flush=True)
                write_result(out_path, result)
    for by_n in result.values():
        ns = sorted((k for k in by_n if k.isdigit()), key=int) if isinstance(by_n, dict) else []
        if len(ns) > 1:
            by_n["growth"] = {"seconds_per_pair_largest_over_smallest": by_n[ns[-1]]["seconds_per_pair"]
                              / by_n[ns[0]]["seconds_per_pair"], "from": int(ns[0]), "to": int(ns[-1])}
    write_result(out_path, result)


if __name__ == "__main__":
    main()
