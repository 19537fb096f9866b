"""Where a job's models run and in what precision: ``device`` and ``precision`` settings, resolved once at the
start of a job and said in one line, so a user sees which was chosen and why.

    device = resolve_device("auto")                 # cuda if there is one, else cpu
    precision = resolve_precision("auto", device)   # bf16 where the hardware runs it fast, else fp32
    with autocast(device, precision): ...           # matmuls in bfloat16, weights and outputs stay fp32

``auto`` picks bf16 on a GPU that supports it, and fp32 on CPUs: on this project's CPU (AVX-512 BF16 and
VNNI, no AMX; 2 cores; torch 2.13) bfloat16 matmuls run at 0.7-0.9x the fp32 rate, and autocast made the cold
audit 1.35x as slow (`benchmarks/results/speed.json`). ``precision: bf16`` still runs it where a CPU does
better (AMX).
"""

from __future__ import annotations

import contextlib
import functools
import re
import sys

import torch

DEVICES_HELP = "where models run: auto (cuda if available, else cpu), cpu, cuda or cuda:N"
PRECISIONS = ("auto", "fp32", "bf16")
PRECISION_HELP = ("auto (bf16 on a GPU that supports it, else fp32), fp32, or bf16 (autocast: matmuls in bfloat16; "
                  "on a CPU fast only with AVX-512 BF16 or AMX)")


def check_device(spec: str | None) -> None:
    if spec is not None and not (spec in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", spec)):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}")


def resolve_device(spec: str | None = "auto") -> torch.device:
    """``auto``/None: cuda when available, else cpu. Asking for cuda where there is none is an error."""
    check_device(spec)
    if spec in (None, "auto"):
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


def resolve_precision(spec: str, device: torch.device, *, announce: bool = True) -> str:
    """``fp32`` or ``bf16`` for ``spec`` on ``device``, with one line on stderr saying which and why."""
    if spec not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {spec!r}")
    if spec == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            chosen, why = "bf16", "the GPU supports bfloat16"
        elif device.type == "cuda":
            chosen, why = "fp32", "the GPU has no bfloat16"
        elif not cpu_has_bf16():
            chosen, why = "fp32", "this CPU has no native bfloat16"
        else:
            chosen, why = "fp32", "auto keeps fp32 on CPUs: bf16 autocast measured slower there"
    elif spec == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        # Emulated: a bf16 matmul ran at 1.8 GFLOPS against 126 in fp32 on an AVX2-only EPYC (speed.py).
        chosen, why = "bf16", "asked for; this CPU has no native bfloat16: emulated, many times slower than fp32"
    elif spec == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
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
