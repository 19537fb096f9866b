"""Say what a long job is doing: one line per phase on stderr, with the time the previous phase took, so no phase of
an audit or a lab run is silent for minutes (progress bars cover the phases that loop over data)."""

from __future__ import annotations

import sys
import time


class Phases:
    """``phase = Phases("audit"); phase("fitting heads")`` prints ``rmkit audit: fitting heads`` (and how long the
    phase before took). Disabled (``enabled=False``) it prints nothing; under several processes only rank 0 prints."""

    def __init__(self, job: str, *, enabled: bool = True):
        import os

        self.job, self.enabled = job, enabled and int(os.environ.get("RANK", "0")) == 0
        self.last: tuple[str, float] | None = None

    def __call__(self, what: str) -> None:
        now = time.time()
        if self.enabled:
            took = f" (after {self.last[0]}: {now - self.last[1]:.0f} s)" if self.last else ""
            print(f"rmkit {self.job}: {what}{took}", file=sys.stderr, flush=True)
        self.last = (what, now)

    def done(self) -> None:
        if self.last is not None:
            self("done")
