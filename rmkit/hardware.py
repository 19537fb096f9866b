"""Where a job's models run and in what precision: ``device`` and ``precision`` settings, resolved once at the
start of a job and said in one line, so a user sees which was chosen and why.

    device = resolve_device("auto")                 # cuda if there is one, else cpu
    precision = resolve_precision("auto", device)   # bf16 where the hardware runs it fast, else fp32
    with autocast(device, precision): ...           # matmuls in bfloat16, weights and outputs stay fp32

``auto`` picks bf16 on a GPU that supports it. On a CPU it measures: CPUs that have bfloat16 instructions differ
in what they get from them. On one 2-core machine of this project (AVX-512 BF16, no AMX, torch 2.13) bfloat16
matmuls ran at 0.7-0.9x the fp32 rate and autocast made the cold audit 1.35x as slow; on another (an AMD EPYC
with AVX-512 BF16) they ran at 2.5-3x and autocast encoded MiniLM 1.9x as fast, with features of cosine
0.99996 to fp32, and the cold audit took 0.53 of its fp32 time (`benchmarks/results/speed.json`,
`speed_amd_epyc_avx512.json`). So ``auto`` times one transformer-sized matmul in each
precision (about 0.2 s, once per machine: kept in ``$RMKIT_CACHE/hardware.json``) and picks bf16 where it is at
least `BF16_MIN_SPEEDUP` times faster.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sys
import time
from pathlib import Path

import torch

from .assets import cache_dir
from .files import write_json

from .configs.hardware import DEVICES_HELP, PRECISION_HELP, PRECISIONS, check_device  # noqa: F401 - re-exported


def resolve_device(spec: str | None = "auto") -> torch.device:
    """``auto``/None: cuda when available (under a multi-process launch, this process's GPU: ``LOCAL_RANK``), else
    cpu. Asking for cuda where there is none is an error."""
    check_device(spec)
    if spec in (None, "auto"):
        if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
            return torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}")
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {spec} asked for, but torch sees no CUDA device")
    return torch.device(spec)


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """The CPU has native bfloat16 matmuls (AVX-512 BF16 or AMX); without them bf16 is emulated and slow."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


BF16_MIN_SPEEDUP = 1.5  # matmul speedup below which autocast's casts and fp32 ops eat the gain (0.8x: 0.66x slower)


def measure_cpu_bf16_speedup() -> float:
    """How many times faster this CPU multiplies bfloat16 matrices than float32 ones: one matmul of MiniLM's
    feed-forward shape (1024 tokens), best of 5 of each, interleaved so a change in the machine's load hits both
    alike; 0.0 where the CPU has no bfloat16 instructions (emulated: never faster)."""
    if not cpu_has_bf16():
        return 0.0
    g = torch.Generator().manual_seed(0)  # its own generator: the probe must not move a job's seeded global RNG
    mats = {dt: (torch.randn(1024, 384, generator=g).to(dt), torch.randn(384, 1536, generator=g).to(dt))
            for dt in (torch.float32, torch.bfloat16)}
    best = {dt: float("inf") for dt in mats}
    with torch.inference_mode():
        for _ in range(5):
            for dt, (a, b) in mats.items():
                t = time.perf_counter()
                a @ b
                best[dt] = min(best[dt], time.perf_counter() - t)
    return best[torch.float32] / best[torch.bfloat16]


def probe_file() -> Path:
    return cache_dir() / "hardware.json"


def _machine_key() -> str:
    from .provenance import cpu_model

    return f"{cpu_model() or 'unknown cpu'} | torch {torch.__version__} | {torch.get_num_threads()} threads"


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """`measure_cpu_bf16_speedup`, measured once per machine (CPU model, torch version, threads) and kept in
    `probe_file` (``$RMKIT_CACHE/hardware.json``): on a loaded machine the ratio sank from 2.9 to 1.5 and ``auto``
    turned to fp32 mid-project, so a second job, or a resumed one, would have run in another precision (other
    numbers, another feature-cache entry). Delete the file to measure again."""
    key, path = _machine_key(), probe_file()
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = {}
    if isinstance(saved.get(key), (int, float)):
        return float(saved[key])
    gain = measure_cpu_bf16_speedup()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {**saved, key: gain})
    except OSError:  # a read-only cache still gets this process's measurement
        pass
    return gain


def native_bf16(device: torch.device) -> bool:
    """bfloat16 runs natively on ``device``: a GPU that supports it, or a CPU with bf16 instructions (fast or not:
    `cpu_bf16_speedup` measures that); elsewhere it is emulated."""
    return torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()


def resolve_precision(spec: str, device: torch.device, *, announce: bool = True, training: bool = False) -> str:
    """``fp32`` or ``bf16`` for ``spec`` on ``device``, with one line on stderr saying which and why.
    ``training``: a job that updates weights (PPO), whose ``auto`` stays fp32 on CPUs, as training's does."""
    if spec not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {spec!r}")
    if spec == "auto":
        if device.type == "cuda" and native_bf16(device):
            chosen, why = "bf16", "the GPU supports bfloat16"
        elif device.type == "cuda":
            chosen, why = "fp32", "the GPU has no bfloat16"
        elif training:
            chosen, why = "fp32", "auto keeps fp32 for training on CPUs: bf16 updates were not measured there"
        elif not native_bf16(device):
            chosen, why = "fp32", "this CPU has no native bfloat16"
        elif (gain := cpu_bf16_speedup()) >= BF16_MIN_SPEEDUP:
            chosen, why = "bf16", f"this CPU's bfloat16 matmuls measured {gain:.1f}x its fp32 ones"
        else:
            chosen, why = "fp32", f"this CPU's bfloat16 matmuls measured only {gain:.1f}x its fp32 ones"
    elif spec == "bf16" and device.type == "cpu" and not native_bf16(device):
        # Emulated: a bf16 matmul ran at 1.8 GFLOPS against 126 in fp32 on an AVX2-only EPYC (speed.py).
        chosen, why = "bf16", "asked for; this CPU has no native bfloat16: emulated, many times slower than fp32"
    elif spec == "bf16" and device.type == "cuda" and not native_bf16(device):
        raise ValueError("precision bf16 asked for, but this GPU does not support bfloat16")
    else:
        chosen, why = spec, "asked for"
    if announce:
        print(f"rmkit: running on {device} in {chosen} ({why})", file=sys.stderr)
    return chosen


def autocast(device: torch.device, precision: str):
    """bfloat16 autocast for ``bf16``; nothing for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def process_group() -> tuple[int, int]:
    """``(rank, world size)`` of this process. Under a multi-process launch (``accelerate launch --num_processes K``,
    torchrun: ``WORLD_SIZE`` > 1) it joins the launch's process group on first use (gloo on CPUs, nccl on GPUs), so
    sharded jobs (`rmkit score`, the audit's encoding) can wait for each other; ``(0, 1)`` in a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():  # nccl's barrier runs on this process's GPU
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def cpu_launch(processes: int = 2) -> tuple[list[str], list[str], dict[str, str]]:
    """``(launch, one, env)``: the argv prefix that runs ``rmkit`` under torchrun with ``processes`` CPU processes
    (gloo), the one that runs it in a single process, and the environment both run in (one thread per process, no
    GPU). A multi-process launch tried on a machine without GPUs, as the tests and `benchmarks/scale.py` do:
    ``subprocess.run(launch + ["audit", data, ...], env=env)``."""
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
              "-m", "rmkit.cli"]
    return launch, [sys.executable, "-m", "rmkit.cli"], env


def barrier() -> None:
    """Wait for every process of a multi-process launch (nothing in a single process)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()


def end_distributed() -> None:
    """Close the process group of a multi-process run (torchrun, accelerate launch) once its work is done.

    A process that exits with its gloo group alive can abort in the interpreter's shutdown (SIGABRT,
    "terminate called without an active exception": gloo's worker threads still hold tensors then); CI
    saw it once in the two-process training test. The barrier comes first so that no rank closes the
    group while another still writes its outputs. Call it on success only: after a failure the launcher
    stops the other ranks. Every ``rmkit`` command ends this way; a script of your own that calls rmkit's
    functions under torchrun should too. Nothing happens in a single process.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
