"""The settings of ServeConfig (`rmkit.serve`), importable without torch: `rmkit <command> --help` reads them."""

from __future__ import annotations

from dataclasses import dataclass
import os
from typing import Literal

from ..config import setting
from .hardware import DEVICES_HELP, PRECISION_HELP, check_device


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
    max_body_bytes: int = setting(2_000_000, "request body size at most (413 beyond); with max_inflight it bounds the "
                                             "memory requests take (tokenizing 1 MB of text takes about 150 MB)")
    device: str = setting("auto", DEVICES_HELP)
    precision: Literal["auto", "fp32", "bf16"] = setting("auto", PRECISION_HELP)
    api_key_env: str | None = setting(None, "name of an environment variable holding a bearer token; requests must "
                                            "send `Authorization: Bearer <token>` (401 otherwise)")
    socket_timeout: float = setting(30.0, "seconds an idle keep-alive connection waits for its next request")
    request_timeout: float = setting(10.0, "seconds a request may take to arrive whole (head and body), from its "
                                           "first byte: a client that trickles it is cut off (408)")
    max_connections: int = setting(256, "open connections at most; beyond, 503 at once (a waiting connection costs "
                                        "a few kilobytes, no thread)")
    max_inflight: int = setting(4, "requests processed at once (worker threads); the rest wait, already read whole")
    max_header_bytes: int = setting(16_384, "request line and headers at most (431 beyond)")
    backlog: int = setting(128, "connections the system queues before they are accepted (a burst beyond is reset)")

    def check(self) -> None:
        check_device(self.device)
        if self.max_connections < 1 or self.max_inflight < 1 or self.socket_timeout <= 0 or self.request_timeout <= 0:
            raise ValueError("max_connections and max_inflight must be >= 1, socket_timeout and request_timeout > 0")
        if self.api_key_env:
            token = os.environ.get(self.api_key_env)
            if not token:
                raise ValueError(f"api_key_env names ${self.api_key_env}, which is not set")
            if not token.isascii() or any(c.isspace() for c in token):
                raise ValueError(f"the token in ${self.api_key_env} holds non-ASCII or space characters: HTTP headers "
                                 "carry ASCII, so no client could send it")
