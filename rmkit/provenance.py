"""Where a result came from: the command line, the commit, the packages, the machine, the date, the seconds.

Every benchmark writes its JSON through `write_result`, so any number in ``benchmarks/results`` can be traced to the
command and code that made it, and rerun.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from .files import write_json

_START = time.time()
PACKAGES = ("rmkit", "torch", "transformers", "datasets", "accelerate", "scikit-learn", "numpy", "pandas", "openai",
            "cleanlab")


def git_commit(root: str | os.PathLike | None = None) -> str | None:
    """The checkout's commit, with ``+dirty`` when tracked files differ from it; None outside a git checkout."""
    root = Path(root or Path(__file__).resolve().parents[1])
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+dirty" if dirty else "")) if commit else None


def cpu_model() -> str:
    """The CPU's name (/proc/cpuinfo), so a result says which machine measured it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(argv: list[str] | None = None) -> dict:
    """What made a result: argv, git commit, package versions, machine (CPU, cores, GPU), UTC date, seconds since
    this process imported rmkit."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    gpu = None
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    return {"argv": list(sys.argv if argv is None else argv), "commit": git_commit(), "packages": versions,
            "python": platform.python_version(),
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "gpu": gpu, "system": platform.system()},
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": time.time() - _START}


def run_stamp() -> dict:
    """The part of `provenance` that names a run (argv, commit, date), for a result file that gathers parts from
    several runs. Take it when the run starts: a commit read later may be one made while the run went on, and the
    run's own first writes would make the tree read as dirty."""
    return {k: v for k, v in provenance().items() if k in ("argv", "commit", "date")}


def write_result(path: str | os.PathLike, result: dict, *, relative_to: str | os.PathLike | None = None,
                 argv: list[str] | None = None) -> None:
    """Write a benchmark's result JSON with its ``provenance`` (`provenance`), atomically; paths below
    ``relative_to`` (the repository) written relative to it."""
    root = relative_to or Path(__file__).resolve().parents[1]
    write_json(path, {**result, "provenance": provenance(argv)}, relative_to=root)
