"""llama.cpp's OpenAI-compatible server in this process (``xllamacpp``), and sampling through it.

One place for both: the judge's offline model (`rmkit judge --local-model`, `rmkit rlhf`'s judge) and the lab's
best-of-n samples (`benchmarks/lab_bon.py`) start the same `LocalServer` on 127.0.0.1; `sample_llamacpp` draws N
seeded samples per prompt into a resumable JSONL (the format `rmkit.bon.read_samples` and `rmkit sample` use).
The transformers sampling stack (`rmkit.policy`) is the one PPO trains; this one is for fast CPU sampling of a GGUF.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from .assets import smollm2_gguf
from .files import append_jsonl, atomic_write_text


@contextmanager
def _c_stderr_to(path: Path):
    """File descriptor 2 (what C libraries write to) goes to ``path`` inside the block."""
    import sys

    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class LocalServer:
    """llama.cpp's OpenAI-compatible server in this process, on 127.0.0.1 (``xllamacpp``).

    Quiet: llama.cpp logs nothing, to the terminal or elsewhere (at its default level it writes several lines per
    request to file descriptor 2, which no redirection could take from the terminal without taking Python's
    progress bars and errors with it). If the server does not start and ``log_file`` is given, it is started
    once more at llama.cpp's default level with its log in that file, and the error names the file."""

    def __init__(self, gguf: str = "smollm2", *, n_ctx: int = 4096, threads: int | None = None, parallel: int = 1,
                 log_file: str | Path | None = None):
        import xllamacpp

        path = smollm2_gguf() if gguf == "smollm2" else gguf
        p = xllamacpp.CommonParams()
        p.model.path = str(path)
        p.n_ctx = n_ctx
        p.n_parallel = parallel
        p.cpuparams.n_threads = threads or max(1, min(os.cpu_count() or 1, 8))
        p.hostnames = ["127.0.0.1"]  # loopback only (also llama.cpp's default)
        default_verbosity, p.verbosity = p.verbosity, -1  # llama.cpp's threshold: below every level, so nothing
        try:
            self.server = xllamacpp.Server(p)
        except Exception as e:
            if log_file is None:
                raise
            p.verbosity = default_verbosity
            try:
                with _c_stderr_to(Path(log_file)):  # llama.cpp writes to file descriptor 2, not to sys.stderr
                    self.server = xllamacpp.Server(p)
            except Exception:
                raise RuntimeError(f"llama.cpp's server did not start with {path}: its log is in {log_file}") from e
        self.url = str(self.server.listening_address).rstrip("/") + "/v1"

    def close(self) -> None:
        self.server = None

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sample_seed(prompt_id: str, j: int) -> int:
    """The seed of sample ``j`` of a prompt: its own, so a cache of n' < n samples is extended, never redrawn, and
    a cache of more samples is cut to the first n."""
    return int(hashlib.sha256(f"{prompt_id}:{j}".encode()).hexdigest()[:7], 16)


def sample_llamacpp(prompts: list, n: int, *, max_tokens: int, temperature: float, out: str | Path, ids: list[str],
                    gguf: str = "smollm2", threads: int = 2, parallel: int = 16) -> dict:
    """``n`` samples per prompt (chat messages) from ``gguf`` through llama.cpp's server, appended per prompt to the
    JSONL ``out`` (``{"id", "responses"}``), with what ``out`` already holds reused. Returns ``{"samples": {id:
    responses}, "tokens_per_s": ...}`` (None when nothing was sampled)."""
    from openai import OpenAI

    from .bon import read_samples

    out = Path(out)
    # The cache is keyed by prompt id and sample index: samples drawn with other settings would be reused as if
    # they were these, so the settings are kept beside it and a reuse with others is refused, naming them.
    settings = {"gguf": str(gguf), "max_tokens": max_tokens, "temperature": temperature}
    kept = out.with_name(out.name + ".settings.json")
    if out.exists() and out.stat().st_size and not kept.exists():
        # A cache from before the settings were kept: what drew it is unknown, so it is not reused on trust.
        raise ValueError(f"{out} holds samples but no record of their settings ({kept.name}); if they were drawn "
                         f"with {json.dumps(settings)}, write that to {kept} to reuse them, else choose another file")
    if out.exists() and kept.exists():
        before = json.loads(kept.read_text())
        changed = sorted(k for k in settings if before.get(k) != settings[k])
        if changed:
            raise ValueError(f"{out} holds samples drawn with other settings ("
                             + ", ".join(f"{k}: {before.get(k)!r} then, {settings[k]!r} now" for k in changed)
                             + "); choose another file")
    atomic_write_text(kept, json.dumps(settings))
    have = read_samples(out) if out.exists() else {}
    done = {i: have[i][:n] for i in ids if len(have.get(i, ())) >= n}
    todo = [k for k, i in enumerate(ids) if i not in done]
    t0, tokens = time.time(), 0
    if todo:
        with LocalServer(gguf, n_ctx=256 * parallel, threads=threads, parallel=parallel) as server:
            client = OpenAI(base_url=server.url, api_key="EMPTY", timeout=600)

            def one(k: int, j: int):
                r = client.chat.completions.create(model=str(gguf), messages=prompts[k], max_tokens=max_tokens,
                                                   temperature=temperature, top_p=1.0, seed=sample_seed(ids[k], j))
                return r.choices[0].message.content or "", r.usage.completion_tokens if r.usage else 0

            with ThreadPoolExecutor(parallel) as pool:
                for c, k in enumerate(todo):
                    first = have.get(ids[k], [])
                    got = list(pool.map(one, [k] * (n - len(first)), range(len(first), n)))
                    tokens += sum(t for _, t in got)
                    responses = first + [g for g, _ in got]
                    append_jsonl(out, {"id": ids[k], "responses": responses})
                    done[ids[k]] = responses
                    if c % 5 == 0:
                        print(f"sampled {c + 1}/{len(todo)} prompts, {tokens / (time.time() - t0):.0f} tokens/s",
                              flush=True)
    return {"samples": done, "tokens_per_s": tokens / max(time.time() - t0, 1e-9) if todo else None}
