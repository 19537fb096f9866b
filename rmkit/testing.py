"""A local OpenAI-compatible chat server that misbehaves on purpose: the judge's fault tests, and yours.

Point `rmkit judge --base-url` (or ``judge_pairs(..., base_url=server.url)``) at ``FaultServer().url`` to see what
your pipeline does with 429s, garbage, truncated and doubtful verdicts before a real endpoint does it to you.

What it does with a request is chosen by a marker in the request's text:

- ``FAULT429xN`` / ``FAULT500xN``: answer 429 / 500 to the first N attempts, then a verdict;
- ``ALWAYS500``: always 500;
- ``SLOW``: wait ``slow_seconds`` before answering (beyond the client's timeout);
- ``GARBAGE``: a 200 whose body is not JSON, on every attempt;
- ``GARBAGEx1``: garbage once, then a verdict;
- ``RAMBLE``: a well-formed reply whose text has no verdict;
- ``CUT``: a verdict cut by the token limit (``finish_reason: length``);
- ``RETRYAFTERxN``: 429 with ``Retry-After: 7`` to the first N attempts;
- ``HUGE``: a verdict after 50,000 characters of reasoning;
- the markers of ``FaultServer.CONTENTS``: content as a list of parts, a number, empty, null, a doubtful verdict, the
  instruction quoted back, a final verdict past any cut, a 3 MB flood;
- otherwise: ``[[A]]``.

Every request is counted per marker and text, so tests can check the retries that happened.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultServer:
    # Replies whose content is not a plain verdict (the judge must not cache or trust them):
    CONTENTS = {
        "LISTCONTENT": [{"type": "text", "text": "B is better. "}, {"type": "text", "text": "[[B]]"}],  # parts: text
        "INTCONTENT": 7,  # not text at all
        "EMPTYCONTENT": "",
        "NULLCONTENT": None,
        "WORSE": "Answer: A is worse than B.",  # names A against itself
        "ECHO": "Hard to say. End with [[A]], [[B]] or [[C]]",  # the instruction quoted back
        "LATEVERDICT": lambda: "[[A]] at first, but " + "more thought " * 2500 + "finally [[B]]",  # past the cut
        "FLOOD": lambda: "x" * 3_000_000,  # a body far over any verdict's size
    }

    def __init__(self, slow_seconds: float = 3.0):
        self.counts: Counter = Counter()
        self.slow_seconds = slow_seconds
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes, ctype: str = "application/json", headers=()):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except BrokenPipeError:  # the client gave up (timeout test): expected
                    pass

            def do_POST(self):  # noqa: N802
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = " ".join(m["content"] for m in req["messages"])
                key = re.search(r"item-\d+", text)
                key = key.group(0) if key else text[-40:]
                with lock:
                    outer.counts[key] += 1
                    n = outer.counts[key]
                m = re.search(r"FAULT(429|500)x(\d+)", text)
                if m and n <= int(m.group(2)):
                    code = int(m.group(1))
                    return self._send(code, json.dumps({"error": {"message": f"injected {code}"}}).encode())
                m = re.search(r"RETRYAFTERx(\d+)", text)
                if m and n <= int(m.group(1)):
                    return self._send(429, b'{"error": {"message": "slow down"}}', headers=[("Retry-After", "7")])
                if "ALWAYS500" in text:
                    return self._send(500, b'{"error": {"message": "injected 500"}}')
                if "SLOW" in text:
                    time.sleep(outer.slow_seconds)
                if "GARBAGE" in text and ("GARBAGEx1" not in text or n == 1):
                    return self._send(200, b"<html>not json at all")
                content = "I think both have merits, hard to say." if "RAMBLE" in text else "Response A is clearer. [[A]]"
                if "HUGE" in text:
                    content = "hmm " * 12_500 + "[[A]]"
                for marker, value in outer.CONTENTS.items():
                    if marker in text:
                        content = value() if callable(value) else value
                body = {"id": "x", "object": "chat.completion", "created": 0, "model": req["model"],
                        "choices": [{"index": 0, "finish_reason": "length" if "CUT" in text else "stop",
                                     "message": {"role": "assistant", "content": content}}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
                self._send(200, json.dumps(body).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
