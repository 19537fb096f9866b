"""Fuzz the readers with generated malformed files, and kill and resume the long jobs at random points.

1. Files: ``--files`` generated files (JSON lines, gzip, JSON arrays, CSV, zip; valid rows mixed with
   wrong types, missing fields, JSON-legal line separators, non-UTF-8 bytes, BOMs, cut gzip streams,
   deep nesting, ragged and latin-1 CSV rows). Every file is loaded; counted: rows in (what the file
   holds up to its break), rows out (rows with a status), crashes (any exception but a `DataError` that
   names the file).
2. Resume trials: ``rmkit audit`` and ``rmkit train`` on small real data are killed (SIGKILL) at a random
   moment and started again with a changed non-semantic setting (batch size for the audit, evaluation
   batch size for training; and for training also the batch size, which must be refused by name).
   A trial passes when the resumed outputs equal a straight run's, or the refusal names the setting.

    .venv/bin/python benchmarks/fuzz.py [--files 1000] [--trials 20]

Writes benchmarks/results/fuzz.json with files, rows_in, rows_out, crashes, resume_trials,
resume_mismatches.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from rmkit.provenance import write_result
from rmkit.data import DataError, load_preferences

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ODD = ["\u2028", "\u2029", "\x85", "\ufeff", "\x00", "\n\nHuman: a\n\nAssistant: b", "", " ", "é", "\U0001f600"]


def _text(rng: random.Random) -> str:
    return "".join(rng.choice([chr(rng.randint(32, 0x2FFF)), rng.choice(ODD), "x"]) for _ in range(rng.randint(0, 8)))


def _value(rng: random.Random, depth: int = 0):
    kind = rng.randint(0, 7 if depth < 3 else 4)
    makers = [lambda: None, lambda: True, lambda: rng.randint(-5, 5), rng.random, lambda: _text(rng),
              lambda: [_value(rng, depth + 1)], lambda: {_text(rng): _value(rng, depth + 1)},
              lambda: [{"role": "user", "content": _text(rng)}]]
    return makers[kind]()


def _record(rng: random.Random):
    r = rng.random()
    if r < 0.45:
        return {"prompt": _text(rng), "chosen": _text(rng) or "a", "rejected": _text(rng) or "b"}
    if r < 0.6:
        return {"chosen": f"\n\nHuman: {_text(rng)}\n\nAssistant: {_text(rng)}",
                "rejected": f"\n\nHuman: {_text(rng)}\n\nAssistant: {_text(rng)}"}
    if r < 0.85:
        keys = ["prompt", "chosen", "rejected", "id", "margin", "label", "response1", "response2", "human"]
        return {rng.choice(keys): _value(rng) for _ in range(rng.randint(0, 5))}
    return _value(rng)


def _jsonl_bytes(rng: random.Random, rows: list) -> bytes:
    data = b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n" for r in rows)
    if rng.random() < 0.3:  # a stray non-UTF-8 line
        data += b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n'
    if rng.random() < 0.2:
        data = b"\xef\xbb\xbf" + data
    if rng.random() < 0.2:  # a cut last line
        data = data[: max(1, len(data) - rng.randint(1, 20))]
    return data


def make_file(rng: random.Random, folder: Path, k: int) -> tuple[Path, int, bool]:
    """A generated file, the rows it holds, and whether it is broken part-way (rows in = rows read then)."""
    rows = [_record(rng) for _ in range(rng.randint(1, 15))]
    kind = rng.choice(["jsonl", "gz", "gzcut", "json", "deep", "csv", "zip"])
    if kind in ("jsonl", "gz", "gzcut", "zip"):
        data = _jsonl_bytes(rng, rows)
        n = sum(1 for line in data.split(b"\n") if line.strip())
        if kind == "jsonl":
            path = folder / f"{k}.jsonl"
            path.write_bytes(data)
        elif kind == "zip":
            path = folder / f"{k}.zip"
            with zipfile.ZipFile(path, "w") as zf:
                zf.writestr("rows.jsonl", data)
        else:
            blob = gzip.compress(data)
            if kind == "gzcut":
                blob = blob[: rng.randint(1, len(blob) - 1)]
            path = folder / f"{k}.jsonl.gz"
            path.write_bytes(blob)
        return path, n, kind == "gzcut"
    if kind == "json":
        path = folder / f"{k}.json"
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8", errors="surrogatepass")
        return path, len(rows), False
    if kind == "deep":
        path = folder / f"{k}.json"
        d = rng.randint(2_000, 100_000)
        path.write_text("[" * d + "]" * d)
        return path, 0, True
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["prompt", "chosen", "rejected"])
    n = 0
    for _ in rows:
        vals = [_text(rng) for _ in range(rng.choice([3, 3, 3, 2, 4]))]
        w.writerow(vals)
        n += bool(vals)
    data = buf.getvalue().encode("utf-8", "surrogatepass")
    if rng.random() < 0.3:
        data += "caf\u00e9,a,b\n".encode("latin-1")
        n += 1
    path = folder / f"{k}.csv"
    path.write_bytes(data)
    return path, n, False


def fuzz_files(n_files: int, seed: int) -> dict:
    rng = random.Random(seed)
    stats = {"files": 0, "rows_in": 0, "rows_out": 0, "crashes": 0, "clear_errors": 0, "file_errors": 0,
             "broken_files": 0, "lost_rows": 0, "crash_examples": []}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(n_files):
            path, n_in, broken = make_file(rng, Path(tmp), k)
            stats["files"] += 1
            stats["broken_files"] += broken
            try:
                ds = load_preferences(path)
            except DataError:
                stats["clear_errors"] += 1  # names the file; counts as every row accounted for (nothing usable)
                stats["rows_in"] += n_in
                stats["rows_out"] += n_in
                continue
            except Exception:  # noqa: BLE001 - a crash: what this benchmark looks for
                stats["crashes"] += 1
                if len(stats["crash_examples"]) < 5:
                    stats["crash_examples"].append({"file": path.name, "error": traceback.format_exc(limit=3)})
                continue
            stats["file_errors"] += bool(ds.file_errors)
            out = len(ds.rows)
            if broken:
                n_in = min(n_in, out) if ds.file_errors else n_in  # rows before the break are what came in
            stats["rows_in"] += n_in
            stats["rows_out"] += out
            stats["lost_rows"] += max(0, n_in - out)
    return stats


# ----------------------------------------------------------------------------------------------
# Kill and resume


def _run(args: list[str], env: dict, kill_after: float | None = None) -> subprocess.CompletedProcess | None:
    proc = subprocess.Popen([sys.executable, "-m", "rmkit.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    if kill_after is not None:
        try:
            out, err = proc.communicate(timeout=kill_after)
            return subprocess.CompletedProcess(args, proc.returncode, out, err)  # finished before the kill
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return None
    out, err = proc.communicate()
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def resume_trials(n: int, seed: int, work: Path) -> dict:
    rng = random.Random(seed)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    small = work / "small.jsonl"
    src = DATA / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"
    with gzip.open(src, "rt") as f:
        small.write_text("".join(next(f) for _ in range(120)))
    audit = ["audit", str(small), "--max-length", "64", "--members", "4"]
    train = ["train", str(small), "--max-length", "48", "--epochs", "1", "--batch-size", "8", "--eval-every", "2",
             "--save-every", "2", "--max-pairs", "16"]
    # Straight runs, the reference (their own caches, so nothing is shared with the trials).
    t0 = time.time()
    ref_a = _run([*audit, "--output-dir", str(work / "ref_audit"), "--cache-dir", str(work / "ref_cache")], env)
    audit_s = time.time() - t0
    t0 = time.time()
    ref_t = _run([*train, "--output-dir", str(work / "ref_train")], env)
    train_s = time.time() - t0
    assert ref_a.returncode == 0 and ref_t.returncode == 0, (ref_a.stderr[-1500:], ref_t.stderr[-1500:])
    ref_strength = pd.read_parquet(work / "ref_audit" / "strength.parquet").set_index("id")
    ref_train = json.loads((work / "ref_train" / "results.json").read_text())
    trials = []
    for k in range(n):
        job = "audit" if k % 2 == 0 else "train"
        out = work / f"trial{k}"
        when = rng.uniform(0.2, 0.9) * (audit_s if job == "audit" else train_s)
        if job == "audit":
            first = [*audit, "--output-dir", str(out), "--cache-dir", str(work / f"cache{k}"), "--batch-size", "8"]
            _run(first, env, kill_after=when)
            again = _run([*first[:-1], "32"], env)
            ok = again.returncode == 0
            if ok:
                got = pd.read_parquet(out / "strength.parquet").set_index("id").loc[ref_strength.index]
                ok = bool(np.allclose(got["mean"].to_numpy(dtype=float), ref_strength["mean"].to_numpy(dtype=float),
                                      atol=1e-4, equal_nan=True))
            trials.append({"trial": k, "job": job, "killed_after_s": when, "change": "batch_size 8 -> 32",
                           "outcome": "identical" if ok else "mismatch",
                           "stderr": "" if ok else again.stderr[-800:]})
            continue
        first = [*train, "--output-dir", str(out)]
        _run(first, env, kill_after=when)
        refuse = rng.random() < 0.3 and (out / "checkpoint").exists()
        if refuse:  # a semantic change must be refused, naming the setting
            again = _run([*train[:-6], "--batch-size", "4", *train[-4:], "--output-dir", str(out)], env)
            ok = again.returncode != 0 and "batch_size" in again.stderr
            outcome = "refused naming batch_size" if ok else "mismatch"
        else:
            again = _run([*first, "--eval-batch-size", "5"], env)
            ok = again.returncode == 0
            if ok:
                got = json.loads((out / "results.json").read_text())
                ok = abs(got["eval/accuracy"] - ref_train["eval/accuracy"]) < 1e-9 and \
                    abs(got["eval/loss"] - ref_train["eval/loss"]) < 1e-5
                lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
                ok = ok and len({r["step"] for r in lines}) == len(lines)  # no step logged twice
            outcome = "identical" if ok else "mismatch"
        trials.append({"trial": k, "job": job, "killed_after_s": when, "outcome": outcome,
                       "stderr": "" if ok else again.stderr[-800:]})
    return {"resume_trials": len(trials), "resume_mismatches": sum(t["outcome"] == "mismatch" for t in trials),
            "trials": trials, "straight_audit_s": audit_s, "straight_train_s": train_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "fuzz.json"))
    args = parser.parse_args()
    t0 = time.time()
    result = fuzz_files(args.files, args.seed)
    result["files_seconds"] = time.time() - t0
    print(json.dumps({k: v for k, v in result.items() if k != "crash_examples"}, indent=1), flush=True)
    work = Path(tempfile.mkdtemp(prefix="rmkit-fuzz-"))
    try:
        result.update(resume_trials(args.trials, args.seed, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = time.time() - t0
    write_result(args.results, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("trials", "crash_examples")}, indent=1))


if __name__ == "__main__":
    main()
