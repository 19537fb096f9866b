"""Readers of one record per format (hh, trl, conversational, moss, pairwise): `detect_format` and `record_to_row`,
which turns any record into a pair or a status naming the field at fault."""

from __future__ import annotations

import math
import re
from typing import Any, Iterable


from .pairs import DataError, Message, PreferencePair, RowResult, as_messages


FORMATS = ("hh", "trl", "conversational", "moss", "pairwise")


# Every field a reader takes from a record: what a ``columns=`` mapping may rename a source column to.
KNOWN_FIELDS = frozenset({"prompt", "chosen", "rejected", "query", "response1", "response2", "id", "subset", "dataset",
                          "margin", "weight", "label", "original_label"})


class _RowError(Exception):
    def __init__(self, status: str, field_name: str, detail: str):
        super().__init__(detail)
        self.status, self.field, self.detail = status, field_name, detail


def _need(rec: dict, key: str, types: type | tuple) -> Any:
    if key not in rec or rec[key] is None or (isinstance(rec[key], float) and math.isnan(rec[key])):
        raise _RowError("missing_field", key, f"field '{key}' is missing")
    val = rec[key]
    if hasattr(val, "tolist") and not isinstance(val, (str, bytes)):  # numpy arrays from parquet
        val = val.tolist()
    if not isinstance(val, types):
        raise _RowError("bad_type", key, f"field '{key}' has type {type(val).__name__}")
    return val


def split_hh_transcript(text: str) -> list[Message]:
    """Split an hh-rlhf transcript into chat messages (``user``/``assistant``)."""
    turns: list[Message] = []
    pos = 0
    markers = (("\n\nHuman:", "user"), ("\n\nAssistant:", "assistant"))
    starts = []
    while True:
        found = [(text.find(m, pos), m, role) for m, role in markers]
        found = [f for f in found if f[0] >= 0]
        if not found:
            break
        idx, marker, role = min(found)
        starts.append((idx, marker, role))
        pos = idx + len(marker)
    if not starts:
        return []
    for k, (idx, marker, role) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else len(text)
        turns.append({"role": role, "content": text[idx + len(marker): end].strip()})
    return turns


def _split_common(chosen: list[Message], rejected: list[Message]) -> tuple[list, list, list, bool]:
    """Prompt = shared turns before the final one; returns (prompt, chosen_rest, rejected_rest, diverged)."""
    n = 0
    limit = min(len(chosen), len(rejected)) - 1  # keep at least one turn per side as the response
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    diverged = not (n == len(chosen) - 1 and n == len(rejected) - 1)
    return chosen[:n], chosen[n:], rejected[n:], diverged


def _check_responses(chosen: list[Message], rejected: list[Message]) -> None:
    if not chosen or not any(m["content"].strip() for m in chosen):
        raise _RowError("empty_response", "chosen", "chosen response is empty")
    if not rejected or not any(m["content"].strip() for m in rejected):
        raise _RowError("empty_response", "rejected", "rejected response is empty")
    if chosen == rejected:
        raise _RowError("identical", "chosen", "chosen and rejected responses are identical")


# A JSON "\ud800" escape decodes to a lone surrogate: valid JSON, but no Unicode text, so no tokenizer takes it (the
# fast tokenizers raise a TypeError deep in an audit or training run). Such a row gets a status at load instead.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_text(fields: dict[str, list[Message]]) -> None:
    for key, messages in fields.items():
        if any(_LONE_SURROGATE.search(m["content"]) or _LONE_SURROGATE.search(m["role"]) for m in messages):
            raise _RowError("undecodable", key, f"field '{key}' holds a lone surrogate (\\ud800-\\udfff): it is "
                                                "not Unicode text, and no tokenizer reads it")


def _messages(val: Any, key: str) -> list[Message]:
    if isinstance(val, str):
        return [{"role": "assistant", "content": val}]
    if not isinstance(val, list) or not all(
        isinstance(m, dict) and isinstance(m.get("content"), str) and isinstance(m.get("role"), str) for m in val
    ):
        raise _RowError("bad_type", key, f"field '{key}' must be a string or a list of {{role, content}} messages")
    return [{"role": m["role"], "content": m["content"]} for m in val]


def _from_hh(rec: dict) -> tuple[list, list, list, bool]:
    c, r = _need(rec, "chosen", str), _need(rec, "rejected", str)
    ct, rt = split_hh_transcript(c), split_hh_transcript(r)
    if not ct:
        raise _RowError("unparseable_transcript", "chosen", "no Human:/Assistant: turns in chosen")
    if not rt:
        raise _RowError("unparseable_transcript", "rejected", "no Human:/Assistant: turns in rejected")
    prompt, chosen, rejected, diverged = _split_common(ct, rt)
    for key, side in (("chosen", chosen), ("rejected", rejected)):
        if side[-1]["role"] != "assistant":
            raise _RowError("unparseable_transcript", key, f"{key} ends with a Human turn, not an Assistant response")
    return prompt, chosen, rejected, diverged


def _from_trl(rec: dict) -> tuple[list, list, list, bool]:
    p = _need(rec, "prompt", (str, list))
    prompt = as_messages(p) if isinstance(p, str) else _messages(p, "prompt")
    chosen = _messages(_need(rec, "chosen", (str, list)), "chosen")
    rejected = _messages(_need(rec, "rejected", (str, list)), "rejected")
    return prompt, chosen, rejected, False


def _from_conversational(rec: dict) -> tuple[list, list, list, bool]:
    chosen = _messages(_need(rec, "chosen", list), "chosen")
    rejected = _messages(_need(rec, "rejected", list), "rejected")
    return _split_common(chosen, rejected)


def _from_moss(rec: dict) -> tuple[list, list, list, bool]:
    chosen, rejected = _need(rec, "chosen", list), _need(rec, "rejected", list)
    for key, val in (("chosen", chosen), ("rejected", rejected)):
        if not val or not all(isinstance(u, str) for u in val):
            raise _RowError("bad_type", key, f"field '{key}' must be a non-empty list of strings")
    if chosen[:-1] != rejected[:-1]:
        raise _RowError("bad_type", "rejected", "MOSS records must share every utterance but the last")
    ctx = chosen[:-1]
    # The last context utterance is the Human's; roles alternate backwards from there.
    prompt = [
        {"role": "user" if (len(ctx) - 1 - i) % 2 == 0 else "assistant", "content": u.strip()}
        for i, u in enumerate(ctx)
    ]
    return prompt, [{"role": "assistant", "content": chosen[-1]}], [{"role": "assistant", "content": rejected[-1]}], False


WINNER_VALUES = {"model1": 1, "response1": 1, "1": 1, "a": 1, "model2": 2, "response2": 2, "2": 2, "b": 2,
                 "tie": 0, "0": 0, "c": 0}


def _from_pairwise(rec: dict, winner_key: str) -> tuple[list, list, list, bool, float]:
    q = _need(rec, "query", (str, list))
    prompt = as_messages(q) if isinstance(q, str) else _messages(q, "query")
    r1 = _messages(_need(rec, "response1", str), "response1")
    r2 = _messages(_need(rec, "response2", str), "response2")
    w = rec.get(winner_key)
    if w is None:
        raise _RowError("missing_field", winner_key, f"field '{winner_key}' (the winner) is missing")
    code = WINNER_VALUES.get(str(w).strip().lower())
    if code is None:
        raise _RowError("bad_type", winner_key, f"winner '{w}' is not one of {sorted(set(WINNER_VALUES))}")
    if code == 2:
        return prompt, r2, r1, False, 1.0
    return prompt, r1, r2, False, (1.0 if code == 1 else 0.5)


def detect_format(columns: Iterable[str], sample: dict | None = None) -> str:
    """Pick a reader from the columns present (and, where needed, the types of one record)."""
    cols = set(columns)
    if {"response1", "response2"} <= cols:
        return "pairwise"
    if {"prompt", "chosen", "rejected"} <= cols:
        return "trl"
    if {"chosen", "rejected"} <= cols:
        val = sample.get("chosen") if sample else None
        if isinstance(val, list):
            if val and all(isinstance(u, str) for u in val):
                return "moss"
            return "conversational"
        return "hh"
    raise DataError(
        f"cannot tell the format from columns {sorted(cols)}: expected prompt/chosen/rejected, "
        "chosen/rejected, or response1/response2 with a winner; map yours with --columns (and --data-format) on the "
        "command line, columns= (and format=) in Python"
    )


# The numeric fields a pair may carry: (lowest, highest) value, and whether NaN means "not given" (what pandas
# writes for a missing value in a float column) or is an error (a label must say something).
NUMERIC_FIELDS = {"label": (0.0, 1.0, False), "original_label": (0.0, 1.0, True),
                  "weight": (0.0, math.inf, True), "margin": (-math.inf, math.inf, True)}


def _num(rec: dict, key: str) -> float | None:
    v = rec.get(key)
    if v is None:
        return None
    low, high, nan_is_missing = NUMERIC_FIELDS[key]
    if isinstance(v, bool):
        raise _RowError("bad_type", key, f"field '{key}' is a boolean ({v}), not a number")
    try:
        v = float(v)
    except (TypeError, ValueError, OverflowError):
        raise _RowError("bad_type", key, f"field '{key}' is not a number: {str(v)[:50]!r}") from None
    if math.isnan(v):
        if nan_is_missing:
            return None
        raise _RowError("bad_value", key, f"field '{key}' is NaN: it must be a probability in [0, 1] that chosen is "
                                          "preferred (leave it out for 1)")
    if not (low <= v <= high) or math.isinf(v):
        where = f"in [{low:g}, {high:g}]" if math.isfinite(high) else ("finite and >= 0" if low == 0 else "finite")
        raise _RowError("bad_value", key, f"field '{key}' is {v!r}; it must be {where}")
    return v


def record_to_row(
    rec: Any,
    *,
    fmt: str,
    row: int,
    source_file: str,
    subset: str,
    winner_key: str = "human",
    allow_ties: bool = False,
) -> RowResult:
    """Convert one decoded record to a `RowResult` (never raises for bad content)."""
    rid = f"{subset}-{row:06d}" if subset else f"{row:06d}"
    if not isinstance(rec, dict):
        return RowResult(rid, "undecodable", subset, source_file, row, f"record is {type(rec).__name__}, not an object")
    if rec.get("id") is not None:
        rid = str(rec["id"])
    sub = str(rec["subset"]) if rec.get("subset") not in (None, "") else subset
    if fmt == "pairwise" and rec.get("subset") in (None, "") and rec.get("dataset") not in (None, ""):
        sub = str(rec["dataset"])  # LLMEval² names each comparison's source in `dataset`
    try:
        label = 1.0
        if fmt == "hh":
            prompt, chosen, rejected, diverged = _from_hh(rec)
        elif fmt == "trl":
            prompt, chosen, rejected, diverged = _from_trl(rec)
        elif fmt == "conversational":
            prompt, chosen, rejected, diverged = _from_conversational(rec)
        elif fmt == "moss":
            prompt, chosen, rejected, diverged = _from_moss(rec)
        else:
            prompt, chosen, rejected, diverged, label = _from_pairwise(rec, winner_key)
        _check_responses(chosen, rejected)
        _check_text({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        if label == 0.5 and not allow_ties:
            raise _RowError("tie", winner_key, "the source marks this pair a tie")
        # A pairwise file's winner column may be called `label` (winner_key="label"): it oriented the pair, and is
        # no probability label.
        if rec.get("label") is not None and not (fmt == "pairwise" and winner_key == "label"):
            label = _num(rec, "label")
        pair = PreferencePair(
            id=rid, prompt=prompt, chosen=chosen, rejected=rejected,
            margin=_num(rec, "margin"), weight=_num(rec, "weight"), label=label,
            original_label=_num(rec, "original_label"),
            subset=sub, source_file=source_file, source_row=row,
            status="diverged_history" if diverged else "ok",
        )
        return RowResult(rid, pair.status, sub, source_file, row, "", pair)
    except _RowError as e:
        return RowResult(rid, e.status, sub, source_file, row, f"{e.field}: {e.detail}")
