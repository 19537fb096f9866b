"""Preference data: one record per pair, readers for the common formats, per-row status, splits.

Every input row ends as a `RowResult`: either a usable `PreferencePair` (status ``ok`` or
``diverged_history``) or a status that says why not. Nothing is dropped silently: the load report
counts every status, and `strict=True` turns the first bad row into an error naming file, row and
field.

Formats (detected from the columns, or named with ``format=``):

- ``hh``: raw hh-rlhf transcripts, ``chosen``/``rejected`` are whole dialogues
  (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``). The shared turns become the prompt, the rest the
  responses. If the two dialogues differ before their final Assistant turn, the prompt is the
  longest common prefix of turns and each response holds every turn after it; the row gets status
  ``diverged_history`` (usable, and counted in the report so a user can exclude it).
- ``trl``: ``prompt``/``chosen``/``rejected`` as strings or as chat-message lists (TRL's standard and
  conversational formats; a string prompt becomes one user message).
- ``conversational``: ``chosen``/``rejected`` message lists without ``prompt`` (TRL's implicit-prompt
  format): the shared prefix is the prompt.
- ``moss``: MOSS-RLHF ``chosen``/``rejected`` lists of utterances; the last one is the response and the
  ones before it alternate Human/Assistant so that the last context utterance is the Human's.
- ``pairwise``: two responses and a winner (``query``/``response1``/``response2``/``human`` as in
  LLMEval², winner ``model1``, ``model2`` or ``TIE``). Ties get status ``tie`` unless
  ``allow_ties=True``, in which case they are pairs with ``label = 0.5``.

Optional columns carried through: ``id``, ``margin`` (as TRL and OpenRLHF read it), ``weight``,
``label`` (probability that ``chosen`` is preferred; 1.0 for ordinary pairs), ``subset``, and
``original_label`` (written by `rmkit denoise`: the label before denoising, which evaluation uses).
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import math
import os
import zipfile
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Literal, Sequence

import numpy as np

from .assets import load_pretrained, resolve_model
from .config import save_config, setting, validate
from .files import check_output_dir, write_json, write_table
from .seeding import id_hash

if TYPE_CHECKING:
    import numpy as np

Message = dict[str, str]
# How roles read in a Human:/Assistant: transcript (hh-rlhf's own format) and in reports.
ROLE_NAMES = {"user": "Human", "assistant": "Assistant", "system": "System"}


def transcript(messages: Sequence[Message], names: dict[str, str] = ROLE_NAMES) -> str:
    """Messages as an hh-rlhf style transcript: ``"Human: ...\n\nAssistant: ..."`` (``names``: how roles read)."""
    return "\n\n".join(f"{names.get(m['role'], m['role'])}: {m['content']}" for m in messages)


def as_messages(prompt: str | Sequence[Message]) -> list[Message]:
    """A prompt given as a plain string is one user turn; chat messages stay as they are."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)

# Statuses a row can end with. The first two are usable pairs.
USABLE = ("ok", "diverged_history")
STATUSES = {
    "ok": "usable pair",
    "diverged_history": "usable; the two dialogues differ before the final turn (prompt = common prefix)",
    "identical": "chosen and rejected responses are identical",
    "empty_response": "a response is empty or whitespace",
    "missing_field": "a required field is missing or null",
    "bad_type": "a field has the wrong type",
    "bad_value": "a field's value is out of its range (a label outside [0, 1] or NaN, a negative or infinite weight, "
                 "an infinite margin)",
    "undecodable": "the line is not valid JSON / the record could not be decoded",
    "unparseable_transcript": "a transcript has no Human/Assistant turns to split",
    "tie": "the source says the two responses tie, and a preference was needed",
    "not_sampled": "usable, but left out of a seeded sample the job was asked to cap itself to (max_pairs)",
}
FORMATS = ("hh", "trl", "conversational", "moss", "pairwise")
# Every field a reader takes from a record: what a ``columns=`` mapping may rename a source column to.
KNOWN_FIELDS = frozenset({"prompt", "chosen", "rejected", "query", "response1", "response2", "id", "subset", "dataset",
                          "margin", "weight", "label", "original_label"})
FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".csv", ".zip")


class DataError(ValueError):
    """A bad row in strict mode, or an unreadable source; the message names file, row and field."""


@dataclass
class PreferencePair:
    """One preference pair.

    ``prompt`` is the conversation before the responses (chat messages); ``chosen`` and ``rejected``
    are the message lists that follow it (usually one assistant message each).
    """

    id: str
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    margin: float | None = None
    weight: float | None = None
    label: float = 1.0
    # Probability that `chosen` is preferred by the data as it was before denoising (`rmkit denoise` writes it):
    # evaluation grades against it, never against labels an ensemble rewrote.
    original_label: float | None = None
    subset: str = ""
    source_file: str = ""
    source_row: int = -1
    status: str = "ok"

    @property
    def chosen_text(self) -> str:
        return "\n\n".join(m["content"] for m in self.chosen)

    @property
    def rejected_text(self) -> str:
        return "\n\n".join(m["content"] for m in self.rejected)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RowResult:
    """What became of one input row: a pair, or the status that says why not."""

    id: str
    status: str
    subset: str
    source_file: str
    source_row: int
    detail: str = ""
    pair: PreferencePair | None = None

    @property
    def usable(self) -> bool:
        return self.status in USABLE


class LoadReport(dict):
    """What a load made of the rows (a plain dict: rows, usable, statuses, per_subset, formats, file_errors,
    skipped_files) that prints as a few lines of text."""

    def __str__(self) -> str:
        def counts(c: dict) -> str:
            return ", ".join(f"{v:,} {k}" for k, v in sorted(c.items(), key=lambda kv: -kv[1]))

        lines = [f"{self['rows']:,} rows, {self['usable']:,} usable pairs: {counts(self['statuses'])}"]
        lines += [f"  {name}: {counts(c)}" for name, c in self["per_subset"].items()]
        lines += [f"formats: {counts(self['formats'])}"] if self["formats"] else []
        lines += [f"file broken part-way: {e['file']} (line {e['line']}): {e['reason']}" for e in self["file_errors"]]
        lines += [f"file skipped: {e['file']}: {e['reason']}" for e in self["skipped_files"]]
        return "\n".join(lines)


@dataclass
class PreferenceDataset:
    """All rows of a source, with their statuses; ``pairs`` holds the usable ones in input order."""

    rows: list[RowResult]
    format_counts: dict[str, int] = field(default_factory=dict)
    file_errors: list[dict[str, Any]] = field(default_factory=list)  # files that broke part-way, and where
    skipped_files: list[dict[str, str]] = field(default_factory=list)  # files of a directory not read, and why

    @property
    def pairs(self) -> list[PreferencePair]:
        return [r.pair for r in self.rows if r.usable]

    def status_counts(self) -> dict[str, int]:
        return dict(Counter(r.status for r in self.rows))

    def report(self) -> LoadReport:
        """Print what became of the rows (as `AuditResult.report` prints the audit) and return it: a dict of
        counts (`summary`) that prints as text."""
        summary = self.summary()
        print(summary)
        return summary

    def summary(self) -> LoadReport:
        """Counts of rows, statuses (overall and per subset) and formats, without printing."""
        per_subset: dict[str, Counter] = {}
        for r in self.rows:
            per_subset.setdefault(r.subset, Counter())[r.status] += 1
        return LoadReport({
            "rows": len(self.rows),
            "usable": sum(r.usable for r in self.rows),
            "statuses": self.status_counts(),
            "per_subset": {k: dict(v) for k, v in sorted(per_subset.items())},
            "formats": dict(self.format_counts),
            "file_errors": list(self.file_errors),
            "skipped_files": list(self.skipped_files),
        })

    def status_table(self):
        """One row per input row: id, subset, status, detail, source file and row (a DataFrame)."""
        import pandas as pd

        return pd.DataFrame(
            {
                "id": [r.id for r in self.rows],
                "subset": [r.subset for r in self.rows],
                "status": [r.status for r in self.rows],
                "detail": [r.detail for r in self.rows],
                "source_file": [r.source_file for r in self.rows],
                "source_row": [r.source_row for r in self.rows],
            }
        )

    def sample(self, n: int, seed: int = 0) -> "PreferenceDataset":
        """A seeded random sample of ``n`` usable pairs, in input order, stratified by subset (`stratified_sample`), so
        a capped audit of hh-rlhf's four subsets reads each in proportion and its per-subset trust stays comparable
        with a full run's. Every other usable row stays in ``rows`` with status ``not_sampled``, so a capped job's
        tables still account for every input row."""
        usable = [k for k, r in enumerate(self.rows) if r.usable]
        if n >= len(usable):
            return self
        keep = set(np.asarray(usable)[stratified_sample([self.rows[k].subset for k in usable], n, seed)].tolist())
        rows = [r if k in keep or not r.usable else
                replace(r, status="not_sampled", detail=f"outside the seeded sample of {n} of {len(usable)} usable "
                                                        "pairs (stratified by subset)", pair=None)
                for k, r in enumerate(self.rows)]
        return PreferenceDataset(rows, dict(self.format_counts), list(self.file_errors), list(self.skipped_files))

    def subset(self, ids: Iterable[str]) -> "PreferenceDataset":
        keep = set(ids)
        return PreferenceDataset([r for r in self.rows if r.id in keep], dict(self.format_counts),
                                 list(self.file_errors), list(self.skipped_files))


# What ``max_pairs`` means in every command that reads pairs: one seeded, stratified sample.
MAX_PAIRS_HELP = ("a seeded sample of N usable pairs, each subset in proportion (a quick look; the rest stay in the "
                  "outputs as not_sampled)")


def stratified_sample(subsets: Sequence[str], n: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of a seeded sample of ``n`` of the items whose subsets are ``subsets``: each subset keeps its
    share (largest remainders round; ties go to the larger subset, then by name), drawn with ``seed``. What
    ``max_pairs`` means in every command: a quick run reads every subset in proportion, never only the first."""
    subsets = list(subsets)
    if n >= len(subsets):
        return np.arange(len(subsets))
    strata: dict[str, list[int]] = {}
    for k, s in enumerate(subsets):
        strata.setdefault(s, []).append(k)
    quota = {name: n * len(ks) / len(subsets) for name, ks in strata.items()}
    take = {name: int(q) for name, q in quota.items()}
    for name in sorted(strata, key=lambda s: (take[s] - quota[s], -len(strata[s]), s))[: n - sum(take.values())]:
        take[name] += 1
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for name in sorted(strata):  # sorted: the draws do not depend on which subset's file was listed first
        ks = np.asarray(strata[name])
        keep += ks[rng.choice(len(ks), size=take[name], replace=False)].tolist()
    return np.sort(np.asarray(keep, dtype=int))


# --------------------------------------------------------------------------------------------
# Record -> pair conversion, one function per format. Each raises _RowError(status, field, detail).


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


# --------------------------------------------------------------------------------------------
# Sources: files, directories, hub datasets, Python objects. Each yields (row, record-or-error).


class _Undecodable:
    """A row whose bytes or JSON could not be decoded."""

    def __init__(self, msg: str):
        self.msg = msg


class _FileBroken(Exception):
    """A file that stops being readable part-way: the rows before it keep their statuses."""

    def __init__(self, line: int | None, reason: str):
        super().__init__(reason)
        self.line, self.reason = line, reason


def _iter_file(path: Path) -> Iterator[tuple[int, int, Any]]:
    """``(row, line, record)`` for every row of a file; ``line`` is the 1-based line it starts on.

    Raises `_FileBroken` where the file stops being readable (truncated or not-gzip ``.gz``, a JSON
    document nested too deep, a corrupt parquet file), after yielding every row read before it.
    """
    name = path.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                for m in [m for m in zf.namelist() if not m.startswith("__MACOSX/") and not m.endswith("/")]:
                    with zf.open(m) as f:
                        yield from _iter_lines(f, m)
            return
        if name.endswith(".parquet"):
            import pandas as pd

            for i, rec in enumerate(pd.read_parquet(path).to_dict(orient="records")):
                yield i, i + 1, rec
            return
        if name.endswith(".csv"):
            yield from _iter_csv(path)
            return
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rb") as f:
            yield from _iter_lines(f, name)
    except _FileBroken:
        raise
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, ValueError) as e:
        # gzip.BadGzipFile is an OSError; a truncated stream is an EOFError; arrow's errors are ValueErrors
        raise _FileBroken(None, f"{type(e).__name__}: {e}") from None


def _iter_lines(f: Any, name: str) -> Iterator[tuple[int, int, Any]]:
    """Rows of a JSON-lines (or whole-JSON-array) byte stream. Lines end at ``\\n`` only: U+2028, U+2029 and
    NEL are valid inside JSON strings, and `str.splitlines` would cut rows there. Bytes that are not UTF-8
    make that row ``undecodable``; a UTF-8 byte-order mark at the start is accepted."""
    read = getattr(f, "read1", f.read)  # read1: a truncated .gz still gives up what it holds before the break
    head = read(1 << 16)
    body = head.lstrip()
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:].lstrip()
    if name.removesuffix(".gz").endswith(".json") and body.startswith(b"["):
        data = head + f.read()
        try:
            records = json.loads(data.decode("utf-8-sig"))
        except UnicodeDecodeError as e:
            raise _FileBroken(None, f"not UTF-8 ({e})") from None
        except json.JSONDecodeError as e:
            raise _FileBroken(e.lineno, f"not valid JSON ({e})") from None
        except RecursionError:
            raise _FileBroken(None, "JSON nested too deep to read") from None
        for i, rec in enumerate(records):
            yield i, i + 1, rec
        return
    stream = itertools.chain([head], iter(lambda: read(1 << 16), b""))
    rest = b""
    i = 0
    for block in stream:
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        for raw in lines:
            yield from _decode_line(raw, i)
            i += 1
    if rest:
        yield from _decode_line(rest, i)


def _decode_line(raw: bytes, i: int) -> Iterator[tuple[int, int, Any]]:
    if i == 0 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if not raw.strip():
        return
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        yield i, i + 1, _Undecodable(f"not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})")
        return
    try:
        yield i, i + 1, json.loads(text)
    except json.JSONDecodeError as e:
        yield i, i + 1, _Undecodable(str(e))
    except RecursionError:
        yield i, i + 1, _Undecodable("JSON nested too deep to read")


def _iter_csv(path: Path) -> Iterator[tuple[int, int, Any]]:
    """CSV rows with the line each starts on (quoted fields may hold newlines). Undecodable bytes and ragged
    rows become row statuses; message lists arrive as JSON text and are parsed."""
    with open(path, "rb") as fb:
        text = fb.read()
    if text.startswith(b"\xef\xbb\xbf"):
        text = text[3:]
    # surrogateescape keeps every byte: a row holding a non-UTF-8 byte is told apart below, not guessed at
    stream = io.StringIO(text.decode("utf-8", errors="surrogateescape"), newline="")
    reader = csv.reader(stream)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as e:
        raise _FileBroken(1, f"CSV: {e}") from None
    start = reader.line_num + 1
    for i in itertools.count():
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise _FileBroken(start, f"CSV: {e}") from None
        line, start = start, reader.line_num + 1
        if not values:  # a blank line is no row; a line of empty fields is one (with a status)
            continue
        if any(_has_surrogate(v) for v in values):
            yield i, line, _Undecodable("not UTF-8 (the row holds bytes of another encoding, e.g. latin-1)")
            continue
        if len(values) != len(header):
            yield i, line, _Ragged(f"{len(values)} fields, the header has {len(header)}")
            continue
        rec: dict[str, Any] = {k: (None if v == "" else v) for k, v in zip(header, values)}
        for k in ("prompt", "chosen", "rejected"):
            v = rec.get(k)
            if isinstance(v, str) and v[:1] == "[":
                try:
                    rec[k] = json.loads(v)
                except (json.JSONDecodeError, RecursionError):
                    pass
        yield i, line, rec


def _has_surrogate(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


class _Ragged:
    def __init__(self, msg: str):
        self.msg = msg


def _files_in(path: Path) -> tuple[list[Path], list[dict[str, str]]]:
    """The data files under a directory, and every other file with the reason it is not read."""
    files, skipped = [], []
    for p in sorted(p for p in path.rglob("*") if p.is_file()):
        if not p.name.lower().endswith(FILE_SUFFIXES):
            skipped.append({"file": str(p), "reason": f"not a data file ({''.join(p.suffixes) or 'no suffix'})"})
        elif p.stat().st_size == 0:
            skipped.append({"file": str(p), "reason": "empty file"})
        else:
            files.append(p)
    if not files:
        raise DataError(f"{path}: no data files ({', '.join(FILE_SUFFIXES)}) in this directory")
    return files, skipped


SPLIT_NAMES = ("train", "test", "validation", "valid", "dev", "eval")


def _subset_name(path: Path, root: Path | None) -> str:
    """hh-rlhf's layout is <subset>/<split>.jsonl.gz: name the subset by the parent folder, also for a single
    file named after a split (helpful-base/test.jsonl.gz is helpful-base, not test); else by the file's name."""
    if root is not None and path.parent != root:
        return str(path.parent.relative_to(root)).replace(os.sep, "/")
    stem = path.name.split(".")[0]
    return path.parent.name if stem.lower() in SPLIT_NAMES and path.parent.name else stem


def _rename(rec: Any, columns: dict[str, str] | None) -> Any:
    if not columns or not isinstance(rec, dict):
        return rec
    out = dict(rec)
    for src, dst in columns.items():
        if src in out:
            out[dst] = out.pop(src)
    return out


def load_preferences(
    source: Any,
    *,
    format: str | None = None,
    columns: dict[str, str] | None = None,
    winner_key: str = "human",
    allow_ties: bool = False,
    strict: bool = False,
    subset: str | None = None,
    split: str = "train",
    data_dir: str | None = None,
    name: str | None = None,
    data_files: Any = None,
    limit: int | None = None,
) -> PreferenceDataset:
    """Load preference data from a path, a hub dataset, or Python objects.

    Args:
        source: a file (``.jsonl``, ``.jsonl.gz``, ``.json``, ``.parquet``, ``.csv``, ``.zip``), a
            directory of them (each file's folder names its subset), a hub dataset name for
            ``datasets.load_dataset``, a ``datasets.Dataset``, a pandas DataFrame, or a list of dicts.
        format: one of ``FORMATS``; detected from the columns when None.
        columns: rename source columns to rmkit's (``{"question": "prompt", "pos": "chosen"}``).
        winner_key: the winner column for the ``pairwise`` format.
        allow_ties: keep ties as pairs with ``label = 0.5`` (else status ``tie``).
        strict: raise `DataError` on the first unusable row (naming file, row and field).
        subset: subset name for rows of a single source (default: from the file or folder name).
        split, data_dir, name, data_files: passed to ``datasets.load_dataset`` for hub sources
            (``load_preferences("Anthropic/hh-rlhf", data_dir="harmless-base", split="test")``, or a
            builder with files: ``load_preferences("json", data_files="pairs.jsonl")``).
        limit: read at most this many rows per file (for quick looks and tests).
    """
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    sources: list[tuple[str, str, Iterable[tuple[int, int, Any]]]] = []  # (file label, subset, rows)
    skipped: list[dict[str, str]] = []
    if isinstance(source, os.PathLike) and not Path(source).exists():
        raise DataError(f"{source}: no such file or directory")
    if isinstance(source, (str, os.PathLike)) and Path(source).exists():
        path = Path(source)
        if path.is_dir():
            files, skipped = _files_in(path)
            if strict and skipped:
                raise DataError(f"{skipped[0]['file']}: {skipped[0]['reason']} (strict mode reads every file)")
            for f in files:
                sources.append((str(f), subset or _subset_name(f, path), _iter_file(f)))
        else:
            sources.append((str(path), subset or _subset_name(path, None), _iter_file(path)))
    elif isinstance(source, str):
        if source.startswith((".", "/", "~")) or source.endswith(FILE_SUFFIXES):
            raise DataError(f"{source}: no such file or directory")
        import datasets

        try:
            ds = datasets.load_dataset(source, name, data_dir=data_dir, data_files=data_files, split=split)
        except Exception as e:  # the hub's errors vary by version; name the source in ours
            raise DataError(f"{source}: could not load it with datasets.load_dataset ({e})") from e
        sources.append((f"hub:{source}", subset or data_dir or name or source.split("/")[-1], _numbered(ds)))
    elif hasattr(source, "to_dict") and hasattr(source, "columns"):  # pandas
        sources.append(("<dataframe>", subset or "", _numbered(source.to_dict(orient="records"))))
    elif isinstance(source, Iterable):
        sources.append(("<records>", subset or "", _numbered(source)))
    else:
        raise DataError(f"cannot read preference data from a {type(source).__name__}")

    unknown = sorted(set((columns or {}).values()) - KNOWN_FIELDS - {winner_key})
    if unknown:
        raise DataError(f"columns: {unknown} are not fields rmkit reads; map source columns to "
                        f"{sorted(KNOWN_FIELDS | {winner_key})}")
    rows: list[RowResult] = []
    file_errors: list[dict[str, Any]] = []
    fmt_counts: Counter = Counter()
    seen_ids: set[str] = set()
    keys_seen: set[str] = set()  # source columns, to name a columns= key that matches none
    for label, sub, records in sources:
        got: list[tuple[int, int, Any]] = []
        try:
            for item in records:
                if limit is not None and len(got) >= limit:
                    break
                got.append(item)
        except _FileBroken as e:
            where = f", line {e.line}" if e.line else ""
            if strict:
                raise DataError(f"{label}{where}: {e.reason}") from None
            file_errors.append({"file": label, "line": e.line, "rows_read": len(got), "reason": e.reason})
        if columns:
            keys_seen.update(k for _, _, rec in got if isinstance(rec, dict) for k in rec)
        got = [(i, line, _rename(rec, columns)) for i, line, rec in got]
        fmt, detect_error = (format, "") if format else _vote_format(rec for _, _, rec in got)
        if fmt is None and got:
            if strict:
                raise DataError(f"{label}: no row matches a known format ({detect_error})")
            file_errors.append({"file": label, "line": None, "rows_read": len(got),
                                "reason": f"no row matches a known format ({detect_error})"})
        for i, line, rec in got:
            rid = f"{sub}-{i:06d}" if sub else f"{i:06d}"
            if isinstance(rec, (_Undecodable, _Ragged)):
                status = "undecodable" if isinstance(rec, _Undecodable) else "bad_type"
                row = RowResult(rid, status, sub, label, i, f"line {line}: {rec.msg}")
            elif fmt is None:
                row = RowResult(rid, "missing_field", sub, label, i, detect_error or "not a record")
            else:
                row = record_to_row(rec, fmt=fmt, row=i, source_file=label, subset=sub,
                                    winner_key=winner_key, allow_ties=allow_ties)
            if row.id in seen_ids:  # ids must be unique: disambiguate with the source position
                row.id = f"{row.id}@{Path(label).name}:{i}"
                if row.pair is not None:
                    row.pair.id = row.id
            seen_ids.add(row.id)
            if strict and not row.usable:
                raise DataError(f"{label}, row {i} (line {line}): {row.status}: {row.detail}")
            if row.usable:
                fmt_counts[fmt] += 1
            rows.append(row)
    missing = sorted(set(columns or {}) - keys_seen)
    if missing and keys_seen:
        raise DataError(f"{source}: columns maps {missing}, but no row has such a column (the rows have "
                        f"{sorted(keys_seen)[:20]})")
    if file_errors and not any(r.usable for r in rows):
        first = file_errors[0]
        raise DataError(f"{first['file']}: {first['reason']}; no usable pair in {source}")
    return PreferenceDataset(rows, dict(fmt_counts), file_errors=file_errors, skipped_files=skipped)


def _numbered(records: Iterable[Any]) -> Iterator[tuple[int, int, Any]]:
    for i, rec in enumerate(records):
        yield i, i + 1, rec


def _vote_format(records: Iterable[Any], sample: int = 200) -> tuple[str | None, str]:
    """The format most of the first ``sample`` records look like, so one bad row cannot decide a whole
    file's reader; returns (format or None, why none)."""
    votes: Counter = Counter()
    error = "no JSON objects"
    for rec in itertools.islice((r for r in records if isinstance(r, dict)), sample):
        try:
            votes[detect_format(rec.keys(), rec)] += 1
        except DataError as e:
            error = str(e)
    if not votes:
        return None, error
    return votes.most_common(1)[0][0], ""


def no_pairs_message(source: Any, ds: "PreferenceDataset") -> str:
    """Why a job has nothing to work on, in words: an empty source, or the statuses of its rows."""
    if not ds.rows:
        return f"{source}: no rows at all (an empty file?)"
    counts = ", ".join(f"{v} {k}" for k, v in sorted(ds.status_counts().items(), key=lambda kv: -kv[1]))
    return f"{source}: none of its {len(ds.rows)} rows is a usable pair ({counts}; `rmkit data {source}` lists them)"


def pairs_fingerprint(pairs: Iterable[PreferencePair]) -> str:
    """A hash of what a job learns from: every pair's id, texts and the fields training reads (label, margin, weight,
    original_label), in order. A resumed or reused piece of work is valid only for the same fingerprint: size and
    modification time miss an edit in place (chosen and rejected swapped, a label changed)."""
    import hashlib

    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.id, p.prompt, p.chosen, p.rejected, p.label, p.margin, p.weight, p.original_label],
                            ensure_ascii=False).encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:24]


def data_folder_guard(source: Any) -> dict:
    """``{folder: why}`` for `files.check_output_dir`'s ``not_in``: where ``source`` is a local folder, outputs written
    inside it would be read back as data by the next run (120 pairs instead of 40, prompts compounding)."""
    if isinstance(source, (str, os.PathLike)) and str(source) and Path(source).is_dir():
        return {Path(source): "the data folder: the next read of it would take the outputs for preference data"}
    return {}


# --------------------------------------------------------------------------------------------
# Splits


def check_split_fractions(fractions: Sequence[float]) -> None:
    """Train, validation and test shares: three numbers >= 0 that sum to 1."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split_fractions must be three shares >= 0 (train, validation, test) summing to 1, "
                         f"got {list(fractions)}")


def split_ids(
    ds: PreferenceDataset,
    *,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
) -> dict[str, list[str]]:
    """Deterministic train/validation/test split of the usable pairs, stratified by subset.

    Each pair's place depends only on its id, the seed and its subset's size, so adding a subset
    does not reshuffle the others.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    by_subset: dict[str, list[str]] = {}
    for p in ds.pairs:
        by_subset.setdefault(p.subset, []).append(p.id)
    out: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for sub in sorted(by_subset):
        # Order by a seeded hash of the id: stable, and independent of the file's row order.
        ids = sorted(by_subset[sub], key=lambda i: id_hash(seed, i))
        n = len(ids)
        n_test = round(n * fractions[2])
        n_val = round(n * fractions[1])
        out["test"] += ids[:n_test]
        out["validation"] += ids[n_test:n_test + n_val]
        out["train"] += ids[n_test + n_val:]
    return out


def save_splits(splits: dict[str, list[str]], path: str | os.PathLike, **meta: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"meta": meta, **splits})


def load_splits(path: str | os.PathLike) -> dict[str, list[str]]:
    data = json.loads(Path(path).read_text())
    return {k: data[k] for k in ("train", "validation", "test")}


def get_splits(
    ds: PreferenceDataset, path: str | os.PathLike | None, *, fractions=(0.7, 0.1, 0.2), seed: int = 0
) -> dict[str, list[str]]:
    """Reuse the splits saved at ``path`` if it exists (and matches the data), else make and save them."""
    if path is not None and Path(path).exists():
        splits = load_splits(path)
        known = {p.id for p in ds.pairs}
        missing = [i for s in splits.values() for i in s if i not in known]
        if missing:
            raise DataError(f"{path}: {len(missing)} split ids are not in the data (first: {missing[0]}); "
                            "delete the file to make new splits")
        return splits
    splits = split_ids(ds, fractions=fractions, seed=seed)
    if path is not None:
        save_splits(splits, path, seed=seed, fractions=list(fractions))
    return splits


# --------------------------------------------------------------------------------------------
# How every job reads its data


@dataclass
class DataSource:
    """How a job reads its data. Every config that reads preference data carries these, so every command reads
    a source the same way (`rmkit denoise` re-reads the audit's data with the audit's settings)."""

    data_format: Literal["hh", "trl", "conversational", "moss", "pairwise"] | None = setting(
        None, "force a reader: hh, trl, conversational, moss, pairwise")
    allow_ties: bool = setting(False, "keep ties (pairwise data) as pairs with label 0.5")
    strict: bool = setting(False, "stop at the first unusable row or broken file, naming file, row and field")
    columns: dict = setting({}, "rename source columns to rmkit's fields, e.g. {question: prompt, good: chosen}")

    def check(self) -> None:
        unknown = sorted(set(self.columns.values()) - KNOWN_FIELDS - {"human"})  # human: the pairwise winner
        if unknown:
            raise ValueError(f"columns: {unknown} are not fields rmkit reads; map source columns to "
                             f"{sorted(KNOWN_FIELDS)}")

    def read(self, source: Any) -> PreferenceDataset:
        return load_preferences(source, format=self.data_format, allow_ties=self.allow_ties, strict=self.strict,
                                columns=dict(self.columns) or None)

    def source_settings(self) -> dict[str, Any]:
        return {"data_format": self.data_format, "allow_ties": self.allow_ties, "strict": self.strict,
                "columns": dict(self.columns)}


# --------------------------------------------------------------------------------------------
# `rmkit data`


@dataclass
class DataConfig(DataSource):
    """Settings of ``rmkit data``."""

    data: str = setting("", "preference data: a file, a directory, or a hub dataset name")
    output_dir: str | None = setting(None, "write rows.parquet (every row and its status) and splits.json here")
    split_seed: int = setting(0, "seed of the train/validation/test split")
    split_fractions: list[float] = setting([0.7, 0.1, 0.2], "train, validation, test fractions")
    tokenizer: str | None = setting("minilm", "count response lengths in this model's tokens (alias, hub id or path); "
                                              "none: characters")

    def check(self) -> None:
        check_split_fractions(self.split_fractions)


def run_data(cfg: DataConfig) -> dict[str, Any]:
    """Inspect a source: formats, statuses, text lengths; optionally write the row table and splits."""
    validate(cfg)
    if not cfg.data:
        raise ValueError("rmkit data needs a data source")
    ds = cfg.read(cfg.data)
    report = ds.summary()
    pairs = ds.pairs
    if pairs:
        for side in ("chosen", "rejected"):
            n, unit = text_lengths([getattr(p, f"{side}_text") for p in pairs], cfg.tokenizer)
            report[f"{side}_length"] = {"unit": unit, "mean": float(n.mean()), "p50": float(np.median(n)),
                                        "p95": float(np.percentile(n, 95))}
        prompt_turns = np.array([len(p.prompt) for p in pairs])
        report["prompt_turns"] = {"mean": float(prompt_turns.mean()), "max": int(prompt_turns.max())}
    if cfg.output_dir:
        out = check_output_dir(cfg.output_dir, not_in=data_folder_guard(cfg.data))
        save_config(cfg, out / "config.yaml")
        write_table(out / "rows.parquet", ds.status_table())
        splits = split_ids(ds, fractions=tuple(cfg.split_fractions), seed=cfg.split_seed)
        save_splits(splits, out / "splits.json", seed=cfg.split_seed, fractions=list(cfg.split_fractions))
        report["splits"] = {k: len(v) for k, v in splits.items()}
        write_json(out / "report.json", report)
    return report


def text_lengths(texts: Sequence[str], tokenizer: str | None) -> tuple[np.ndarray, str]:
    """Length of each text in ``tokenizer``'s tokens (a model alias, hub id or path), or in characters when no
    tokenizer is given or none loads; returns the lengths and their unit (``tokens`` or ``characters``)."""
    tok = None
    if tokenizer:
        try:
            from transformers import AutoTokenizer

            tok = load_pretrained(AutoTokenizer, resolve_model(tokenizer))
        except (OSError, ValueError, ImportError):
            tok = None
    if tok is None:
        return np.array([len(t) for t in texts], float), "characters"
    ids = tok(list(texts), add_special_tokens=False, verbose=False)["input_ids"]  # lengths only: no warning
    return np.array([len(x) for x in ids], float), "tokens"


TABLE_SUFFIXES = (".parquet", ".csv", ".jsonl", ".json")


def read_table(path: str | os.PathLike):
    """A side table (judge labels, reviews, prompts, answers) as a DataFrame, by suffix (any case): .parquet, .csv,
    .jsonl (JSON lines) or .json. An ``id`` column stays text: pandas would read ids "0012" and "12" alike, and "NA"
    as missing; in a CSV only an empty cell is missing (a text "NA" or "None" is text). CSV: UTF-8 (a byte-order mark
    is fine), comma-, semicolon- or tab-delimited (what spreadsheets save in other locales), cells rmkit escaped for
    spreadsheets (`files.spreadsheet_escape`) read back as written.
    A file that cannot be read is a `DataError` naming it and saying what was expected."""
    import pandas as pd

    from .files import spreadsheet_unescape

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(f"{path}: tables are read from {', '.join(TABLE_SUFFIXES)} files")
    if not path.is_file():
        raise DataError(f"{path}: no such file" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        if suffix == ".parquet":
            table = pd.read_parquet(path)
            return _ids_as_text(table)
        if suffix == ".csv":
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: not UTF-8 (byte {raw[e.start]:#04x} at offset {e.start}); save it as "
                                "'CSV UTF-8' (a spreadsheet's other CSV encodings, such as Windows-1252, are not read)"
                                ) from None
            header = next(csv.reader(io.StringIO(text.split("\n", 1)[0] + "\n")), [])
            delimiter = ","
            if len(header) <= 1:  # one column: maybe a spreadsheet that saved with ; or tabs
                first = text.split("\n", 1)[0]
                delimiter = max((";", "\t"), key=first.count) if (";" in first or "\t" in first) else ","
                header = next(csv.reader(io.StringIO(first + "\n"), delimiter=delimiter), [])
            table = pd.read_csv(io.StringIO(text), sep=delimiter, dtype={"id": str}, keep_default_na=False,
                                na_values={c: [""] for c in header if c != "id"})
            for col in table.select_dtypes(include=["object", "string"]).columns:
                table[col] = table[col].map(spreadsheet_unescape)
            return table
        table = pd.read_json(path, lines=suffix == ".jsonl", dtype={"id": str})
    except DataError:
        raise
    except (ValueError, OSError, UnicodeDecodeError) as e:  # pandas' and pyarrow's parse errors are ValueErrors
        raise DataError(f"{path}: not a readable {suffix[1:]} table ({type(e).__name__}: {str(e)[:200]})") from None
    return _ids_as_text(table)


def _ids_as_text(table):
    """A table's ``id`` column as text (parquet and JSON may hold numbers); a missing id stays missing, not "None"."""
    if "id" in table.columns:
        table["id"] = table["id"].map(lambda v: v if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    return table


def read_ids(path: str | os.PathLike) -> list[str]:
    """Pair ids from a table's ``id`` column (a suffix of `TABLE_SUFFIXES`: e.g. an audit's flagged.csv) or from
    a text file, one per line (blank lines skipped)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            raise DataError(f"{path}: not readable JSON ({e})") from None
        if isinstance(obj, dict) and obj and all(isinstance(v, list) for v in obj.values()):  # a splits.json
            raise DataError(f"{path} holds id lists by split ({', '.join(map(str, obj))}), not a table: write the ids "
                            f"of one split to a text file, one per line")
    if path.suffix.lower() in TABLE_SUFFIXES:
        table = read_table(path)
        if "id" not in table.columns:
            raise DataError(f"{path}: an id table needs an id column (columns: {', '.join(map(str, table.columns))})")
        return table["id"].astype(str).tolist()
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable text file of ids, one per line ({e})") from None


def inject_label_flips(
    pairs: Sequence[PreferencePair], fraction: float, *, seed: int = 0
) -> tuple[list[PreferencePair], np.ndarray]:
    """Swap chosen and rejected in a seeded ``fraction`` of pairs (noise for benchmarks and tests).

    Returns new pairs (the input is not modified) and a boolean mask of the flipped ones.
    """
    import numpy as np

    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    flipped = np.zeros(len(pairs), dtype=bool)
    flipped[rng.choice(len(pairs), size=int(round(fraction * len(pairs))), replace=False)] = True
    out = [replace(p, chosen=p.rejected, rejected=p.chosen) if f else p for p, f in zip(pairs, flipped)]
    return out, flipped
