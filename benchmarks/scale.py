"""How do rmkit's commands grow with the number of pairs? Wall time, CPU time and peak memory of `rmkit data`, `audit`,
`score` and `train --max-steps 50` at N pairs, on one machine.

The pairs are hh-rlhf's 8,552 resampled with replacement to N, each with a unique id; the model is a random 2-layer
BERT (`rmkit.assets.tiny_model`), so rmkit's own overhead shows rather than a backbone's. Each command runs in its own
process (one torch thread), measured by the kernel (peak RSS of the child), once with the rows as Python objects and
once held in Arrow (`--columnar true`, `<command>_columnar`). `loader`: the two loaders on one 200k-pair file.

    .venv/bin/python benchmarks/scale.py --sizes 10000,100000           # about 30 minutes on 2 cores
    .venv/bin/python benchmarks/scale.py --sizes 1000000 --commands data,audit   # the 1M row (hours; 24 GB+)

Writes benchmarks/results/scale.json: per command and N the seconds, CPU seconds, peak RSS (GB), seconds per pair,
and the ratio of seconds per pair at the largest N to the smallest; and `sharded`: 1 against 2 processes (gloo) on
the audit's features and the score table, ids, statuses, and a killed shard's resume.
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
from rmkit.hardware import cpu_launch
from rmkit.provenance import run_stamp, write_result

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


def sharded(work: Path, model: str, n: int = 2000) -> dict:
    """1 against 2 processes (torchrun, gloo, CPU) for the audit's features and `rmkit score`'s table on ``n``
    pairs: the largest absolute difference, whether ids and statuses are identical, and a killed shard's resume
    (half the texts marked not done, then finished by one process)."""
    import pandas as pd

    data = resampled(n, work / f"pairs_sharded_{n}.jsonl", seed=1)
    launch, one, env = cpu_launch(2)
    audit = ["audit", str(data), "--model", model, "--max-length", "64", "--members", "4", "--precision", "fp32"]
    score = ["score", str(data), model, "--max-length", "64", "--chunk-rows", "256", "--precision", "fp32"]
    seconds = {}
    for name, cmd in (("audit_2", launch + audit + ["--cache-dir", str(work / "c2")]),
                      ("audit_1", one + audit + ["--cache-dir", str(work / "c1")]),
                      ("score_2", launch + score), ("score_1", one + score)):
        t0 = time.time()
        subprocess.run(cmd + ["--output-dir", str(work / name)], check=True, env=env, capture_output=True)
        seconds[name] = time.time() - t0
    f2, f1 = (np.load(next((work / c).rglob("features.npy"))) for c in ("c2", "c1"))
    a2, a1 = (pd.read_parquet(work / n / "strength.parquet") for n in ("audit_2", "audit_1"))
    s2, s1 = (pd.read_parquet(work / n / "scores.parquet") for n in ("score_2", "score_1"))
    # A killed shard: every other text not done and its rows garbage; one process finishes the cache.
    entry = next((work / "c2").rglob("features.npy")).parent
    feats = np.load(entry / "features.npy", mmap_mode="r+")
    done = np.load(entry / "done.npy")
    done[1::2], feats[1::2] = False, 7.0
    feats.flush()
    del feats
    np.save(entry / "done.npy", done)
    subprocess.run(one + audit + ["--cache-dir", str(work / "c2"), "--output-dir", str(work / "audit_resumed")],
                   check=True, env=env, capture_output=True)
    resumed = np.load(entry / "features.npy")
    d2, d1 = s2["diff"].to_numpy(float), s1["diff"].to_numpy(float)
    return {"pairs": n, "processes": [1, 2], "seconds": seconds,
            "max_abs_diff": {"features": float(np.abs(f2 - f1).max()),
                             "p_label_wrong": float(np.nanmax(np.abs(a2["p_label_wrong"] - a1["p_label_wrong"]))),
                             "score_diff": float(np.nanmax(np.abs(d2 - d1)))},
            "same_ids": bool(list(a2["id"]) == list(a1["id"]) and list(s2["id"]) == list(s1["id"])),
            "same_statuses": bool(list(a2["status"]) == list(a1["status"])),
            "killed_shard_resumed_max_abs_diff": float(np.abs(resumed - f1).max())}


def loader(work: Path, n: int) -> dict:
    """The in-memory loader against the columnar one (rows in a memory-mapped Arrow file) on the same ``n``-pair
    file, each load in its own process: seconds, peak RSS, rows in and out; the columnar one's first load (parse and
    write) and the next (map the file)."""
    data = resampled(n, work / f"pairs_loader_{n}.jsonl", seed=2)
    rows_in = sum(1 for _ in data.open())
    code = ("import sys, json, time; from rmkit.data import load_preferences; t = time.time(); "
            "ds = load_preferences(sys.argv[1], columnar=sys.argv[2] if sys.argv[2] != 'no' else False); "
            "s = ds.summary(); print(json.dumps({'load_seconds': time.time() - t, 'rows': s['rows'], "
            "'usable': s['usable'], 'statuses': s['statuses']}))")
    out = {}
    for name, store in (("previous", "no"), ("columnar_first", str(work / "rows")), ("columnar_again", str(work / "rows"))):
        log = work / f"loader_{name}.log"
        t0 = time.time()
        with log.open("w") as fh:
            proc = subprocess.Popen([sys.executable, "-c", code, str(data), store], stdout=fh, stderr=subprocess.STDOUT,
                                    env={**os.environ, "OMP_NUM_THREADS": "1"})
            _, status, usage = os.wait4(proc.pid, 0)
        got = json.loads(log.read_text().strip().splitlines()[-1])
        out[name] = {**got, "seconds": time.time() - t0, "rss_gb": usage.ru_maxrss / 1e6}
    out["pairs"] = n
    out["rows_in"] = rows_in
    out["rows_out_equal_rows_in"] = all(out[k]["rows"] == rows_in for k in ("previous", "columnar_first",
                                                                              "columnar_again"))
    out["same_statuses"] = out["previous"]["statuses"] == out["columnar_again"]["statuses"]
    out["speedup_vs_previous"] = out["previous"]["load_seconds"] / out["columnar_again"]["load_seconds"]
    out["first_load_cost_vs_previous"] = out["columnar_first"]["load_seconds"] / out["previous"]["load_seconds"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--commands", default="data,audit,score,train")
    parser.add_argument("--sharded-pairs", type=int, default=2000, help="pairs of the 1-vs-2-process check (0: skip)")
    parser.add_argument("--loader-pairs", type=int, default=200000, help="pairs of the loader comparison (0: skip)")
    parser.add_argument("--columnar", default="false,true", help="data paths to measure each command on: false (rows "
                                                                  "as Python objects), true (rows in Arrow)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    args = parser.parse_args()
    run = run_stamp()  # each row says which run measured it
    out_path = Path(args.out)
    result = json.loads(out_path.read_text()) if out_path.exists() else {}
    result.pop("provenance", None)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = tiny_model("bert", work / "tiny_bert")
        if args.loader_pairs:
            result["loader"] = loader(work, args.loader_pairs)
            print("loader", result["loader"], flush=True)
            write_result(out_path, result)
        if args.sharded_pairs:
            result["sharded"] = sharded(work, model, args.sharded_pairs)
            print("sharded", result["sharded"], flush=True)
        train = ["train", "", "--model", model, "--max-steps", "50", "--max-length", "64", "--eval-every", "0",
                 "--save-every", "0", "--eval-test", "false", "--batch-size", "16"]
        for n in (int(x) for x in args.sizes.split(",")):
            data = resampled(n, work / f"pairs_{n}.jsonl")
            runs = {"data": ["data", str(data), "--tokenizer", "none"],
                    "audit": ["audit", str(data), "--model", model, "--max-length", "64", "--members", "4",
                              "--precision", "fp32", "--output-dir",
                              str(work / f"audit_{n}")],
                    "score": ["score", str(data), model, "--max-length", "64", "--output-dir", str(work / f"score_{n}")],
                    "train": [*train[:1], str(data), *train[2:], "--output-dir", str(work / f"train_{n}")]}
            for command in args.commands.split(","):
                for columnar in args.columnar.split(","):
                    name = command + ("_columnar" if columnar == "true" else "")
                    argv = [*runs[command], "--columnar", columnar]
                    if command == "audit":  # a cache of its own: each audit encodes every text, none reads another's
                        argv += ["--cache-dir", str(work / f"cache_{n}_{columnar}")]
                    if "--output-dir" in argv:
                        argv[argv.index("--output-dir") + 1] += f"_{columnar}"
                    m = measure(argv, work / f"{name}_{n}.log")
                    m["seconds_per_pair"] = m["seconds"] / n
                    m["measured_by"] = run
                    result.setdefault(name, {})[str(n)] = m
                    print(name, n, {k: v for k, v in m.items() if k != "log_tail"}, flush=True)
                    write_result(out_path, result)
    for key, by_n in result.items():
        if key in ("loader", "sharded"):
            continue
        ns = sorted((k for k in by_n if k.isdigit()), key=int) if isinstance(by_n, dict) else []
        if len(ns) > 1:
            first, last = by_n[ns[0]], by_n[ns[-1]]  # CPU time as well: wall time moves with the machine's load
            by_n["growth"] = {"seconds_per_pair_largest_over_smallest": last["seconds_per_pair"] / first["seconds_per_pair"],
                              "cpu_seconds_per_pair_largest_over_smallest": (last["cpu_seconds"] / int(ns[-1]))
                              / (first["cpu_seconds"] / int(ns[0])), "from": int(ns[0]), "to": int(ns[-1])}
    write_result(out_path, result)


if __name__ == "__main__":
    main()
