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

import ipaddress
import json
import logging
import os
import queue
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Literal, Sequence

import torch

from .config import setting, validate
from .hardware import DEVICES_HELP, PRECISION_HELP, autocast, check_device, resolve_device, resolve_precision
from .models import RewardModel
from .reward_ensemble import EnsembleRewardModel, load_reward_model


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
    device: str = setting("auto", DEVICES_HELP)
    precision: Literal["auto", "fp32", "bf16"] = setting("auto", PRECISION_HELP)
    api_key_env: str | None = setting(None, "name of an environment variable holding a bearer token; requests must "
                                            "send `Authorization: Bearer <token>` (401 otherwise)")
    socket_timeout: float = setting(30.0, "seconds a connection may sit idle or half-sent before it is closed")
    max_connections: int = setting(32, "connections served at once (worker threads); more wait their turn")

    def check(self) -> None:
        check_device(self.device)
        if self.max_connections < 1 or self.socket_timeout <= 0:
            raise ValueError("max_connections must be >= 1 and socket_timeout > 0")
        if self.api_key_env and not os.environ.get(self.api_key_env):
            raise ValueError(f"api_key_env names ${self.api_key_env}, which is not set")


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------------------------------
# The batcher


class Batcher:
    """Scores token-id lists from many threads in shared, length-sorted batches on one worker thread."""

    def __init__(self, model: RewardModel, *, max_batch_texts: int = 64, max_wait_ms: float = 5.0,
                 precision: str = "fp32"):
        self.model = model.eval()
        self.precision = precision
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
                with torch.inference_mode(), autocast(self.model.device, self.precision):
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
    """The endpoints as plain methods on parsed JSON (the HTTP layer only moves bytes). ``model`` is a
    `RewardModel` or an `EnsembleRewardModel` (one batcher per member; rewards normalised and aggregated)."""

    def __init__(self, model, cfg: ServeConfig):
        self.model, self.cfg = model, cfg
        self.ensemble = model if isinstance(model, EnsembleRewardModel) else None
        self.members = self.ensemble.members if self.ensemble else [model]
        precision = resolve_precision(cfg.precision, self.members[0].device, announce=False)
        self.batchers = [Batcher(m, max_batch_texts=cfg.max_batch_texts, max_wait_ms=cfg.max_wait_ms,
                                 precision=precision) for m in self.members]
        self.batcher = self.batchers[0]

    def _member_rewards(self, ids_of) -> list[list[float]]:
        """Each member's rewards for its own token ids ``ids_of(member)``: ``(M, B)`` as lists."""
        return [b.submit(ids_of(m)) for m, b in zip(self.members, self.batchers)]

    def _combine(self, raw: list[list[float]], with_members: bool = False) -> dict:
        if self.ensemble is None:
            return {"rewards": raw[0]}
        import numpy as np

        if self.ensemble.normalize == "zscore" and self.ensemble.stats is None:
            raise RequestError(409, "the ensemble has no normalisation statistics: fit_normalization() and "
                                    "save_pretrained() it first, or serve it with normalize none")
        r = self.ensemble.normalized(np.asarray(raw, dtype=np.float64))
        out = {"rewards": self.ensemble.combine(r).tolist()}
        if with_members:
            out["members"] = r.tolist()
        return out

    @staticmethod
    def _texts_ids(model: RewardModel, texts: list[str]) -> list[list[int]]:
        return model.tokenizer(texts, add_special_tokens=not model.use_chat_template, truncation=True,
                               max_length=model.max_length)["input_ids"]

    def get_reward(self, body: dict) -> dict:
        texts = _list(body, "query", self.cfg.max_request_texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise RequestError(400, f"query[{i}] must be a string")
        if not texts:
            return {"rewards": []}
        return self._combine(self._member_rewards(lambda m: self._texts_ids(m, texts)))

    def score(self, body: dict) -> dict:
        prompts = _list(body, "prompts", self.cfg.max_request_texts)
        completions = _list(body, "completions", self.cfg.max_request_texts)
        if len(prompts) != len(completions):
            raise RequestError(400, f"prompts ({len(prompts)}) and completions ({len(completions)}) differ in length")
        p = [_messages(x, f"prompts[{i}]", "user") for i, x in enumerate(prompts)]
        c = [_messages(x, f"completions[{i}]", "assistant") for i, x in enumerate(completions)]
        if not p:
            return {"rewards": []}
        return self._combine(self._member_rewards(lambda m: m.encode(p, c)), with_members=bool(body.get("members")))

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
        r = self._combine(self._member_rewards(lambda m: m.encode(prompts + prompts, chosen + rejected)))["rewards"]
        n = len(pairs)
        return {"results": [{"chosen_reward": r[i], "rejected_reward": r[n + i], "diff": r[i] - r[n + i]}
                            for i in range(n)]}

    def health(self) -> dict:
        return {"status": "ok", "max_length": self.model.max_length, "batches": sum(b.batches for b in self.batchers),
                "members": len(self.members)}


# ------------------------------------------------------------------------------------------
# HTTP


log = logging.getLogger("rmkit.serve")


def _parse_body(raw: bytes) -> dict:
    """A JSON object, or a 400 naming what is wrong (bad UTF-8 or JSON, nesting too deep, lone surrogates)."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(400, f"body is not valid JSON: {e}") from None
    except RecursionError:
        raise RequestError(400, "body is nested too deep") from None
    if not isinstance(body, dict):
        raise RequestError(400, "body must be a JSON object")
    try:  # "\ud800" is valid JSON but no text: a tokenizer would fail on it later, as a 500
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(400, "body holds a lone surrogate (\\ud800-\\udfff), which is not text") from None
    except RecursionError:
        raise RequestError(400, "body is nested too deep") from None
    return body


def _handler(service: RewardService, token: str | None):
    routes = {"/get_reward": service.get_reward, "/score": service.score, "/score_pairs": service.score_pairs}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: clients reuse their connection
        timeout = service.cfg.socket_timeout  # idle, slow or half-open connections are closed, not kept

        def log_message(self, *args) -> None:  # one line per request is noise under load
            pass

        def _send(self, status: int, obj: dict) -> None:
            data = json.dumps(obj).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 401:
                    self.send_header("WWW-Authenticate", "Bearer")
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError, socket.timeout):
                log.info("client %s went away before its %d answer", self.client_address[0], status)
                self.close_connection = True

        def _authorized(self) -> bool:
            if token is None:
                return True
            sent = self.headers.get("Authorization", "")
            return sent.startswith("Bearer ") and _same(sent[7:].strip(), token)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/health":
                self._send(200, service.health())
            elif not self._authorized():
                self._send(401, {"error": "missing or wrong bearer token"})
            elif self.path in routes:
                self._send(405, {"error": f"{self.path} takes POST"})
            else:
                self._send(404, {"error": f"no endpoint {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            try:
                fn = routes.get(self.path)
                raw_length = self.headers.get("Content-Length")
                try:
                    length = int(raw_length or 0)
                except ValueError:
                    length = -1
                if length < 0:
                    self.close_connection = True  # where the body ends is unknown: nothing more is read
                    raise RequestError(400, f"Content-Length must be a whole number >= 0, got {raw_length!r}")
                if length > service.cfg.max_body_bytes:
                    self.close_connection = True  # the unread body must not be taken for the next request
                    raise RequestError(413, f"body of {length} bytes; at most {service.cfg.max_body_bytes}")
                raw = self.rfile.read(length)
                if len(raw) < length:
                    self.close_connection = True
                    raise RequestError(400, f"body ended after {len(raw)} of {length} bytes")
                if not self._authorized():
                    raise RequestError(401, "missing or wrong bearer token")
                if fn is None:
                    raise RequestError(404, f"no endpoint {self.path}")
                self._send(200, fn(_parse_body(raw)))
            except RequestError as e:
                self._send(e.status, {"error": str(e)})
            except (socket.timeout, ConnectionResetError, BrokenPipeError):
                log.info("client %s went away mid-request", self.client_address[0])
                self.close_connection = True
            except Exception as e:  # noqa: BLE001 - a bug in one request answers 500, the server stays up
                log.exception("error in %s", self.path)
                self._send(500, {"error": f"{type(e).__name__}: {e}"})

    return Handler


def _same(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


class _PooledHTTPServer(HTTPServer):
    """Connections served by a bounded pool of threads (a thread per connection lets held-open sockets pin an
    unbounded number of them); a client that goes away is one log line, not a traceback."""

    def __init__(self, address, handler, *, workers: int):
        super().__init__(address, handler)
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="rmkit-conn")

    def process_request(self, request, client_address) -> None:
        self.pool.submit(self._serve_one, request, client_address)

    def _serve_one(self, request, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - one connection's failure is logged, the server goes on
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        import sys

        exc = sys.exc_info()[1]
        log.info("connection from %s ended: %s", client_address[0], type(exc).__name__ if exc else "closed")

    def server_close(self) -> None:
        super().server_close()
        self.pool.shutdown(wait=False, cancel_futures=True)


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RewardServer:
    """A running server: ``with RewardServer(model, cfg) as srv: requests.post(srv.url + "/score", ...)``."""

    def __init__(self, model: RewardModel, cfg: ServeConfig | None = None):
        self.cfg = cfg or ServeConfig()
        validate(self.cfg)
        token = os.environ[self.cfg.api_key_env] if self.cfg.api_key_env else None
        if token is None and not is_loopback(self.cfg.host):
            log.warning("serving on %s without a bearer token: anyone who reaches this address can use the model; "
                        "set --api-key-env NAME", self.cfg.host)
        self.service = RewardService(model, self.cfg)
        self.httpd = _PooledHTTPServer((self.cfg.host, self.cfg.port), _handler(self.service, token),
                                       workers=self.cfg.max_connections)
        self.url = f"http://{self.cfg.host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="rmkit-http")
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        for b in self.service.batchers:
            b.close()

    def __enter__(self) -> "RewardServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_model_for_serving(cfg: ServeConfig):
    device = resolve_device(cfg.device)
    resolve_precision(cfg.precision, device)  # says which precision the server runs in
    model = load_reward_model(cfg.model) if cfg.max_length is None else \
        RewardModel.from_pretrained(cfg.model, max_length=cfg.max_length)
    return model.to(device).eval()


def serve(cfg: ServeConfig) -> None:
    """``rmkit serve``: load the model and serve until interrupted."""
    if not cfg.model:
        raise ValueError("rmkit serve needs a reward model (a saved folder, hub id, or alias)")
    validate(cfg)  # before any model loads
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
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

    def __init__(self, model=None, *, url: str | None = None, batch_size: int = 32,
                 timeout: float = 120.0, api_key_env: str | None = None):
        """``model``: a `RewardModel`, an `EnsembleRewardModel`, or a path `load_reward_model` reads (one RM's
        folder, an ensemble folder, or comma-separated members)."""
        if (model is None) == (url is None):
            raise ValueError("RewardFunction needs exactly one of a model and a server url")
        self.model = load_reward_model(model) if isinstance(model, str) else model
        self.url, self.batch_size, self.timeout = url.rstrip("/") if url else None, batch_size, timeout
        self.__name__ = "rmkit_reward"  # TRL logs each reward function under its __name__
        self.api_key_env = api_key_env  # the token is read from the environment at each call, never stored

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
        if self.url is not None:
            import urllib.request

            body = json.dumps({"prompts": list(prompts), "completions": list(completions)}).encode()
            headers = {"Content-Type": "application/json"}
            if self.api_key_env:
                headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
            req = urllib.request.Request(self.url + "/score", method="POST", data=body, headers=headers)
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())["rewards"]
        p = [_messages(x, f"prompts[{i}]", "user") for i, x in enumerate(prompts)]
        c = [_messages(x, f"completions[{i}]", "assistant") for i, x in enumerate(completions)]
        return self.model.score(p, c, batch_size=self.batch_size).tolist()
