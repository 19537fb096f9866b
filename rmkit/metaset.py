"""MetaRM's meta set: prompts with k responses each from the current policy, one JSON object per line.

``{"id": ..., "prompt": chat messages (or a string), "responses": [k texts]}``. `rmkit sample` writes it
(`rmkit.policy.run_sample`), the RM trainer reads it (`TrainConfig.meta_data`): a plain file format, so
the trainer needs nothing of the causal-LM side to read it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .data import Message, as_messages
from .files import read_appended_jsonl


def write_meta_set(path: str | Path, ids: Sequence[str], prompts: Sequence[Sequence[Message]],
                   responses: Sequence[Sequence[str]], *, append: bool = False) -> None:
    """MetaRM's meta set as JSONL: ``{"id", "prompt": messages, "responses": [k texts]}`` per prompt (``append``:
    after the lines already there, as a resumed `rmkit sample` adds its next chunk)."""
    with Path(path).open("a" if append else "w") as f:
        for i, p, r in zip(ids, prompts, responses):
            f.write(json.dumps({"id": i, "prompt": list(p), "responses": list(r)}) + "\n")


def read_sample_records(path: str | Path) -> dict[str, dict]:
    """The records of a samples JSONL (a meta set, best-of-n's samples) by prompt id, as a resumed run reads what
    it wrote: a later line for the same id supersedes an earlier one, and a line cut short by a kill is skipped
    (that prompt is sampled again). A missing file reads as empty."""
    return {str(rec["id"]): rec for rec in read_appended_jsonl(path)}


def read_meta_set(path: str | Path) -> list[dict]:
    """Read a meta set; every line must have a prompt and at least two responses."""
    items = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {n}: not a JSON record ({e.msg})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}, line {n}: a record must be a JSON object")
        if not isinstance(rec.get("responses"), list) or len(rec["responses"]) < 2:
            raise ValueError(f"{path}, line {n}: field 'responses' must list at least 2 responses")
        prompt = rec.get("prompt")
        if isinstance(prompt, str):
            prompt = as_messages(prompt)
        if not isinstance(prompt, list) or not prompt:
            raise ValueError(f"{path}, line {n}: field 'prompt' must be a string or chat messages")
        items.append({"id": str(rec.get("id", n)), "prompt": prompt, "responses": [str(x) for x in rec["responses"]]})
    return items
