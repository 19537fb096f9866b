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
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Sequence

import torch

from .config import validate
from .hardware import autocast, resolve_device, resolve_precision
from .models import RewardModel
from .reward_ensemble import EnsembleRewardModel, load_reward_model
from .configs.serve import ServeConfig  # noqa: F401 - the settings, beside the job


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
        return model.tokenize(texts, add_special_tokens=not model.use_chat_template)

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
        return {"status": "ok"}  # open to probes without a token: it says nothing about the model or its load


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


def _same(a: bytes, b: bytes) -> bool:
    import hmac

    return hmac.compare_digest(a, b)


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 411: "Length Required", 413: "Payload Too Large", 431: "Request Header Fields Too "
            "Large", 500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable"}


class _HttpFront:
    """HTTP/1.1 on an asyncio event loop in its own thread. A request is read whole (head and body) on the loop, within
    a deadline for the whole request, before a worker thread sees it: a client that trickles its headers (one line every
    5 s) holds a few kilobytes of buffer and no thread, and is cut off at ``request_timeout``, so it can never keep a
    real request waiting. Workers (``max_inflight``) run the endpoints; connections beyond ``max_connections`` are
    answered 503 at once; heads are capped at ``max_header_bytes``, bodies at ``max_body_bytes``."""

    def __init__(self, service: "RewardService", cfg: "ServeConfig", token: bytes | None):
        import asyncio

        self.service, self.cfg, self.token = service, cfg, token
        self.routes = {"/get_reward": service.get_reward, "/score": service.score, "/score_pairs": service.score_pairs}
        self.workers = ThreadPoolExecutor(cfg.max_inflight, thread_name_prefix="rmkit-request")
        self.open = 0
        self.loop = asyncio.new_event_loop()
        started: Future = Future()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True, name="rmkit-http")
        self.thread.start()
        self.port = started.result(timeout=30)

    def _run(self, started: Future) -> None:
        import asyncio

        asyncio.set_event_loop(self.loop)
        try:
            self.server = self.loop.run_until_complete(asyncio.start_server(
                self._connection, self.cfg.host, self.cfg.port, backlog=self.cfg.backlog,
                limit=self.cfg.max_header_bytes))
        except BaseException as e:  # noqa: BLE001 - e.g. the port is taken: said in the caller's thread
            started.set_exception(e)
            return
        started.set_result(self.server.sockets[0].getsockname()[1])
        self.loop.run_forever()

    def close(self) -> None:
        import asyncio

        async def stop():
            self.server.close()
            await self.server.wait_closed()

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.workers.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------- one connection
    async def _connection(self, reader, writer) -> None:
        import asyncio

        peer = (writer.get_extra_info("peername") or ("?",))[0]
        if self.open >= self.cfg.max_connections:
            await self._answer(writer, 503, {"error": f"more than {self.cfg.max_connections} connections; try again"},
                               close=True)
            return
        self.open += 1
        try:
            while True:
                try:  # an idle keep-alive connection waits socket_timeout for its next request
                    first = await asyncio.wait_for(reader.read(1), self.cfg.socket_timeout)
                except (asyncio.TimeoutError, ConnectionError):
                    return
                if not first:
                    return
                try:
                    method, path, headers, body, keep = await asyncio.wait_for(
                        self._read_request(first, reader), self.cfg.request_timeout)
                except asyncio.TimeoutError:
                    await self._answer(writer, 408, {"error": f"the request did not arrive within "
                                                              f"{self.cfg.request_timeout:g} s"}, close=True)
                    return
                except RequestError as e:
                    await self._answer(writer, e.status, {"error": str(e)}, close=True)
                    return
                status, obj = await asyncio.get_running_loop().run_in_executor(
                    self.workers, self._respond, method, path, headers, body)
                await self._answer(writer, status, obj, close=not keep)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            log.info("client %s went away mid-request", peer)
        finally:
            self.open -= 1
            writer.close()

    async def _read_request(self, first: bytes, reader):
        import asyncio

        try:
            head = first + await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise RequestError(431, f"request head over {self.cfg.max_header_bytes} bytes") from None
        except asyncio.IncompleteReadError:
            raise ConnectionResetError from None
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise RequestError(400, f"not an HTTP/1.x request line: {lines[0][:80]!r}")
        method, path, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "transfer-encoding" in headers:
            raise RequestError(411, "send the body with a Content-Length (chunked bodies are not read)")
        raw_length = headers.get("content-length", "0")
        if not raw_length.isdigit():
            raise RequestError(400, f"Content-Length must be a whole number >= 0, got {raw_length!r}")
        length = int(raw_length)
        if length > self.cfg.max_body_bytes:
            raise RequestError(413, f"body of {length} bytes; at most {self.cfg.max_body_bytes}")
        try:
            body = await reader.readexactly(length)
        except asyncio.IncompleteReadError as e:
            raise RequestError(400, f"body ended after {len(e.partial)} of {length} bytes") from None
        connection = headers.get("connection", "").lower()
        keep = connection != "close" and (version == "HTTP/1.1" or connection == "keep-alive")
        return method, path.split("?", 1)[0], headers, body, keep

    def _authorized(self, headers: dict[str, str]) -> bool:
        if self.token is None:
            return True
        scheme, _, sent = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and _same(sent.strip().encode("latin-1", "replace"), self.token)

    def _respond(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict]:
        """Status and JSON answer of one whole request (on a worker thread)."""
        try:
            if path == "/health" and method == "GET":
                return 200, self.service.health()
            if not self._authorized(headers):
                return 401, {"error": "missing or wrong bearer token"}
            fn = self.routes.get(path)
            if fn is None:
                return 404, {"error": f"no endpoint {path}"}
            if method != "POST":
                return 405, {"error": f"{path} takes POST"}
            return 200, fn(_parse_body(raw))
        except RequestError as e:
            return e.status, {"error": str(e)}
        except Exception as e:  # noqa: BLE001 - a bug in one request answers 500, the server stays up
            log.exception("error in %s", path)
            return 500, {"error": f"{type(e).__name__}: {e}"}

    async def _answer(self, writer, status: int, obj: dict, *, close: bool) -> None:
        data = json.dumps(obj).encode()
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}", "Content-Type: application/json",
                f"Content-Length: {len(data)}", f"Connection: {'close' if close else 'keep-alive'}"]
        if status == 401:
            head.append("WWW-Authenticate: Bearer")
        try:
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
            await writer.drain()
        except ConnectionError:
            pass


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
        self.front = _HttpFront(self.service, self.cfg, token.encode("ascii") if token is not None else None)
        self.url = f"http://{self.cfg.host}:{self.front.port}"
        self.thread = self.front.thread

    def close(self) -> None:
        self.front.close()
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


def _server_root(url: str) -> str:
    """An ``rmkit serve`` address from either form users have: the server's root (``http://host:5000``) or an endpoint
    under it, such as OpenRLHF's ``http://host:5000/get_reward``."""
    url = url.rstrip("/")
    for endpoint in ("/get_reward", "/score_pairs", "/score", "/health"):
        if url.endswith(endpoint):
            return url[: -len(endpoint)]
    return url


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
        self.url = _server_root(url) if url else None
        self.batch_size, self.timeout = batch_size, timeout
        self.__name__ = "rmkit_reward"  # TRL logs each reward function under its __name__
        self.api_key_env = api_key_env  # the token is read from the environment at each call, never stored

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
        if self.url is not None:
            import urllib.request

            body = json.dumps({"prompts": list(prompts), "completions": list(completions)}).encode()
            import urllib.error

            headers = {"Content-Type": "application/json"}
            if self.api_key_env:
                token = os.environ.get(self.api_key_env)
                if not token:
                    raise ValueError(f"RewardFunction: api_key_env names ${self.api_key_env}, which is not set (the "
                                     "server's token, as rmkit serve --api-key-env reads it)")
                headers["Authorization"] = f"Bearer {token}"
            req = urllib.request.Request(self.url + "/score", method="POST", data=body, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read())["rewards"]
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", "replace")
                raise RuntimeError(f"RewardFunction: {self.url}/score answered {e.code}: {detail} (the url is an rmkit "
                                   "serve address, e.g. http://127.0.0.1:5000, with or without /get_reward)") from None
        p = [_messages(x, f"prompts[{i}]", "user") for i, x in enumerate(prompts)]
        c = [_messages(x, f"completions[{i}]", "assistant") for i, x in enumerate(completions)]
        return self.model.score(p, c, batch_size=self.batch_size).tolist()
