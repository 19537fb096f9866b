"""The ``device`` and ``precision`` settings every job that runs a model takes: their help and the check of a device
name, without torch (`rmkit.hardware` resolves them when a job starts)."""

from __future__ import annotations

import re

DEVICES_HELP = "where models run: auto (cuda if available, else cpu), cpu, cuda or cuda:N"
PRECISIONS = ("auto", "fp32", "bf16")
PRECISION_HELP = ("auto (bf16 on a GPU that supports it, and on a CPU whose bfloat16 matmuls measure >= 1.5x its fp32 "
                  "ones; else fp32), fp32, or bf16 (autocast: matmuls in bfloat16)")


def check_device(spec: str | None) -> None:
    if spec is not None and not (spec in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", spec)):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}")
