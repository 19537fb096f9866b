"""Serve a reward model over HTTP, and a reward function for TRL's online trainers.

``rmkit serve MODEL`` listens on 127.0.0.1 (by default) with:

- ``POST /get_reward`` ``{"query": [text, ...]}`` -> ``{"rewards": [...]}``: OpenRLHF's remote
  reward-model API (its PPO sends whole prompt+response texts; extra keys such as ``prompts`` are
  ignored), so an OpenRLHF run on a cluster can use an rmkit RM as its ``remote_rm_url``. The texts
  are tokenized as given: they should be in the RM's format. A policy with another chat template
  should call ``/score`` with messages, which the RM renders itself.
- ``POST /score`` ``{"prompts": [...], "completions": [...]}`` -> ``{"rewards": [...]}``: prompts and
  completions as strings or chat messages, rendered by the RM's own template (what `RewardFunction`
  calls, and what a policy with another tokenizer should use).
- ``POST /score_pairs`` ``{"pairs": [{"prompt", "chosen", "rejected"}, ...]}`` ->
  ``{"results": [{"chosen_reward", "rejected_reward", "diff"}, ...]}``.
- ``GET /health``.

Requests from concurrent clients are batched together: a worker thread takes whatever texts are
waiting (up to ``max_batch_texts``, waiting at most ``max_wait_ms`` for more), sorts them by length and
scores them in one pass. Malformed or oversized requests get a 4xx answer naming the problem; an error
in one request never takes the server down.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Sequence

import torch

from .config import setting
from .models import RewardModel


@dataclass
class ServeConfig:
    """Settings of ``rmkit serve``."""

    model: str = setting("", "a saved reward model (folder), hub id, or alias")
    host: str = setting("127.0.0.1", "address to bind; the default accepts local clients only")
    port: int = setting(5000, "port (0: any free port)")
    max_length: int | None = setting(None, "tokens per text (default: the model's saved setting)")
    max_batch_texts: int = setting(64, "texts scored together in one forward pass at most")
    max_wait_ms: float = setting(5.0, "how long the batcher waits for more requests before scoring")
    max_request_texts: int = setting(512, "texts per request at most (413 beyond)")
    max_body_bytes: int = setting(8_000_000, "request body size at most (413 beyond)")
    device: str | None = setting(None, "cpu, cuda, cuda:1 ... (default: cuda if available)")


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------------------------------
# The batcher


class Batcher:
    """Scores token-id lists from many threads in shared, length-sorted batches on one worker thread."""

    def __init__(self, model: RewardModel, *, max_batch_texts: int = 64, max_wait_ms: float = 5.0):
        self.model = model.eval()
        self.max_batch, self.max_wait = max_batch_texts, max_wait_ms / 1000
        self.queue: queue.Queue = queue.Queue()
        self.batches = 0  # forward passes so far (to see batching happen)
        self.worker = threading.Thread(target=self._loop, daemon=True, name="rmkit-batcher")
        self.worker.start()

    def submit(self, ids: Sequence[Sequence[int]]) -> list[float]:
        futures = []
        for x in ids:
            f: Future = Future()
            self.queue.put((list(x), f))
            futures.append(f)
        return [f.result() for f in futures]

    def _loop(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            items = [item]
            deadline = time.monotonic() + self.max_wait
            while len(items) < self.max_batch:
                try:
                    nxt = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self.queue.put(None)
                    break
                items.append(nxt)
            items.sort(key=lambda it: len(it[0]))
            try:
                with torch.inference_mode():
                    batch = self.model.collate([it[0] for it in items], self.model.device)
                    rewards = self.model(**batch).rewards.float().cpu().tolist()
                self.batches += 1
                for (_, f), r in zip(items, rewards):
                    f.set_result(r)
            except Exception as exc:  # noqa: BLE001 - handed to the waiting requests, the worker lives on
                for _, f in items:
                    f.set_exception(exc)

    def close(self) -> None:
        self.queue.put(None)
        self.worker.join(timeout=10)


# ------------------------------------------------------------------------------------------
# Requests -> token ids


def _messages(value: Any, field: str, role: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                                 and isinstance(m.get("content"), str) for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise RequestError(400, f"{field} must be a string or a non-empty list of {{role, content}} messages")


def _list(body: dict, key: str, limit: int) -> list:
    if key not in body:
        raise RequestError(400, f"missing field {key!r}")
    value = body[key]
    if not isinstance(value, list):
        raise RequestError(400, f"{key!r} must be a list")
    if len(value) > limit:
        raise RequestError(413, f"{key!r} has {len(value)} items; at most {limit} per request")
    return value


class RewardService:
    """The endpoints as plain methods on parsed JSON (the HTTP layer only moves bytes)."""

    def __init__(self, model: RewardModel, cfg: ServeConfig):
        self.model, self.cfg = model, cfg
        self.batcher = Batcher(model, max_batch_texts=cfg.max_batch_texts, max_wait_ms=cfg.max_wait_ms)

    def _texts_ids(self, texts: list[str]) -> list[list[int]]:
        tok = self.model.tokenizer
        return tok(texts, add_special_tokens=not self.model.use_chat_template, truncation=True,
                   max_length=self.model.max_length)["input_ids"]

    def get_reward(self, body: dict) -> dict:
        texts = _list(body, "query", self.cfg.max_request_texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise RequestError(400, f"query[{i}] must be a string")
        return {"rewards": self.batcher.submit(self._texts_ids(texts)) if texts else []}

    def score(self, body: dict) -> dict:
        prompts = _list(body, "prompts", self.cfg.max_request_texts)
        completions = _list(body, "completions", self.cfg.max_request_texts)
        if len(prompts) != len(completions):
            raise RequestError(400, f"prompts ({len(prompts)}) and completions ({len(completions)}) differ in length")
        p = [_messages(x, f"prompts[{i}]", "user") for i, x in enumerate(prompts)]
        c = [_messages(x, f"completions[{i}]", "assistant") for i, x in enumerate(completions)]
        return {"rewards": self.batcher.submit(self.model.encode(p, c)) if p else []}

    def score_pairs(self, body: dict) -> dict:
        pairs = _list(body, "pairs", self.cfg.max_request_texts // 2)
        prompts, chosen, rejected = [], [], []
        for i, pr in enumerate(pairs):
            if not isinstance(pr, dict):
                raise RequestError(400, f"pairs[{i}] must be an object with prompt, chosen, rejected")
            for key in ("prompt", "chosen", "rejected"):
                if key not in pr:
                    raise RequestError(400, f"pairs[{i}] is missing {key!r}")
            prompts.append(_messages(pr["prompt"], f"pairs[{i}].prompt", "user"))
            chosen.append(_messages(pr["chosen"], f"pairs[{i}].chosen", "assistant"))
            rejected.append(_messages(pr["rejected"], f"pairs[{i}].rejected", "assistant"))
        if not pairs:
            return {"results": []}
        r = self.batcher.submit(self.model.encode(prompts + prompts, chosen + rejected))
        n = len(pairs)
        return {"results": [{"chosen_reward": r[i], "rejected_reward": r[n + i], "diff": r[i] - r[n + i]}
                            for i in range(n)]}

    def health(self) -> dict:
        return {"status": "ok", "max_length": self.model.max_length, "batches": self.batcher.batches}


# ------------------------------------------------------------------------------------------
# HTTP


def _handler(service: RewardService):
    routes = {"/get_reward": service.get_reward, "/score": service.score, "/score_pairs": service.score_pairs}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: clients reuse their connection

        def log_message(self, *args) -> None:  # one line per request is noise under load
            pass

        def _send(self, status: int, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/health":
                self._send(200, service.health())
            elif self.path in routes:
                self._send(405, {"error": f"{self.path} takes POST"})
            else:
                self._send(404, {"error": f"no endpoint {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            try:
                fn = routes.get(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                if length > service.cfg.max_body_bytes:
                    self.close_connection = True  # the unread body must not be taken for the next request
                    raise RequestError(413, f"body of {length} bytes; at most {service.cfg.max_body_bytes}")
                raw = self.rfile.read(length)
                if fn is None:
                    raise RequestError(404, f"no endpoint {self.path}")
                try:
                    body = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise RequestError(400, f"body is not valid JSON: {e}") from None
                if not isinstance(body, dict):
                    raise RequestError(400, "body must be a JSON object")
                self._send(200, fn(body))
            except RequestError as e:
                self._send(e.status, {"error": str(e)})
            except Exception as e:  # noqa: BLE001 - a bug in one request answers 500, the server stays up
                self._send(500, {"error": f"{type(e).__name__}: {e}"})

    return Handler


class RewardServer:
    """A running server: ``with RewardServer(model, cfg) as srv: requests.post(srv.url + "/score", ...)``."""

    def __init__(self, model: RewardModel, cfg: ServeConfig | None = None):
        self.cfg = cfg or ServeConfig()
        self.service = RewardService(model, self.cfg)
        self.httpd = ThreadingHTTPServer((self.cfg.host, self.cfg.port), _handler(self.service))
        self.httpd.daemon_threads = True
        self.url = f"http://{self.cfg.host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="rmkit-http")
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.service.batcher.close()

    def __enter__(self) -> "RewardServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_model_for_serving(cfg: ServeConfig) -> RewardModel:
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = RewardModel.from_pretrained(cfg.model, max_length=cfg.max_length)
    return model.to(device).eval()


def serve(cfg: ServeConfig) -> None:
    """``rmkit serve``: load the model and serve until interrupted."""
    if not cfg.model:
        raise ValueError("rmkit serve needs a reward model (a saved folder, hub id, or alias)")
    server = RewardServer(load_model_for_serving(cfg), cfg)
    print(f"serving {cfg.model} at {server.url} (POST /get_reward, /score, /score_pairs; GET /health)", flush=True)
    try:
        server.thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


# ------------------------------------------------------------------------------------------
# TRL's reward-function interface


class RewardFunction:
    """A reward function as TRL's online trainers take it (``reward_funcs=[RewardFunction(...)]``):
    ``f(prompts, completions, **kwargs) -> list[float]``, prompts and completions as strings or chat
    messages. Backed by a local `RewardModel` (or a path to one) or by an ``rmkit serve`` URL."""

    def __init__(self, model: RewardModel | str | None = None, *, url: str | None = None, batch_size: int = 32,
                 timeout: float = 120.0):
        if (model is None) == (url is None):
            raise ValueError("RewardFunction needs exactly one of a model and a server url")
        self.model = RewardModel.from_pretrained(model) if isinstance(model, str) else model
        self.url, self.batch_size, self.timeout = url.rstrip("/") if url else None, batch_size, timeout
        self.__name__ = "rmkit_reward"  # TRL logs each reward function under its __name__

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
        if self.url is not None:
            import urllib.request

            body = json.dumps({"prompts": list(prompts), "completions": list(completions)}).encode()
            req = urllib.request.Request(self.url + "/score", method="POST", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())["rewards"]
        p = [_messages(x, f"prompts[{i}]", "user") for i, x in enumerate(prompts)]
        c = [_messages(x, f"completions[{i}]", "assistant") for i, x in enumerate(completions)]
        return self.model.score(p, c, batch_size=self.batch_size).tolist()
