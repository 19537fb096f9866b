"""The pair model: `PreferencePair`, the per-row `RowResult`, `PreferenceDataset` (pairs, statuses, seeded
stratified samples) and the identity of a set of pairs (`pairs_fingerprint`)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable, Sequence

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
    "undecodable": "the line is not valid JSON / the record could not be decoded / a text holds a lone surrogate",
    "unparseable_transcript": "a transcript has no Human/Assistant turns to split",
    "tie": "the source says the two responses tie, and a preference was needed",
    "not_sampled": "usable, but left out of a seeded sample the job was asked to cap itself to (max_pairs)",
}


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

    rows: Sequence[RowResult]  # a list, or `rmkit.data.columnar.StoredRows` (rows held in Arrow)
    format_counts: dict[str, int] = field(default_factory=dict)
    file_errors: list[dict[str, Any]] = field(default_factory=list)  # files that broke part-way, and where
    skipped_files: list[dict[str, str]] = field(default_factory=list)  # files of a directory not read, and why

    @property
    def pairs(self) -> Sequence[PreferencePair]:
        """The usable pairs in input order: a list, or for rows held in Arrow (`rmkit.data.columnar`) a sequence that
        makes each pair when asked for."""
        if hasattr(self.rows, "pairs"):
            return self.rows.pairs()
        return [r.pair for r in self.rows if r.usable]

    def column(self, name: str) -> Sequence:
        """One field of every row (``id``, ``subset``, ``status``, ``detail``, ``source_file``, ``source_row``), in
        order, without making rows where they are held in Arrow."""
        if hasattr(self.rows, "column"):
            return self.rows.column(name)
        return [getattr(r, name) for r in self.rows]

    def status_counts(self) -> dict[str, int]:
        return dict(Counter(self.column("status")))

    def report(self) -> LoadReport:
        """Print what became of the rows (as `AuditResult.report` prints the audit) and return it: a dict of
        counts (`summary`) that prints as text."""
        summary = self.summary()
        print(summary)
        return summary

    def summary(self) -> LoadReport:
        """Counts of rows, statuses (overall and per subset) and formats, without printing."""
        per_subset: dict[str, Counter] = {}
        statuses = self.column("status")
        for subset, status in zip(self.column("subset"), statuses):
            per_subset.setdefault(subset, Counter())[status] += 1
        return LoadReport({
            "rows": len(self.rows),
            "usable": sum(s in USABLE for s in statuses),
            "statuses": self.status_counts(),
            "per_subset": {k: dict(v) for k, v in sorted(per_subset.items())},
            "formats": dict(self.format_counts),
            "file_errors": list(self.file_errors),
            "skipped_files": list(self.skipped_files),
        })

    def status_table(self):
        """One row per input row: id, subset, status, detail, source file and row (a DataFrame)."""
        import pandas as pd

        return pd.DataFrame({k: list(self.column(k)) for k in ("id", "subset", "status", "detail", "source_file",
                                                                   "source_row")})

    def sample(self, n: int, seed: int = 0) -> "PreferenceDataset":
        """A seeded random sample of ``n`` usable pairs, in input order, stratified by subset (`stratified_sample`), so
        a capped audit of hh-rlhf's four subsets reads each in proportion and its per-subset trust stays comparable
        with a full run's. Every other usable row stays in ``rows`` with status ``not_sampled``, so a capped job's
        tables still account for every input row."""
        statuses, subsets = self.column("status"), self.column("subset")
        usable = [k for k, s in enumerate(statuses) if s in USABLE]
        if n >= len(usable):
            return self
        keep = set(np.asarray(usable)[stratified_sample([subsets[k] for k in usable], n, seed)].tolist())
        detail = f"outside the seeded sample of {n} of {len(usable)} usable pairs (stratified by subset)"
        if hasattr(self.rows, "with_status"):
            rows = self.rows.with_status(np.array([k for k in usable if k not in keep], dtype=np.int64),
                                         "not_sampled", detail)
            return PreferenceDataset(rows, dict(self.format_counts), list(self.file_errors), list(self.skipped_files))
        rows = [r if k in keep or not r.usable else
                replace(r, status="not_sampled", detail=detail, pair=None)
                for k, r in enumerate(self.rows)]
        return PreferenceDataset(rows, dict(self.format_counts), list(self.file_errors), list(self.skipped_files))

    def subset(self, ids: Iterable[str]) -> "PreferenceDataset":
        keep = set(ids)
        if hasattr(self.rows, "take"):
            rows = self.rows.take([k for k, i in enumerate(self.column("id")) if i in keep])
        else:
            rows = [r for r in self.rows if r.id in keep]
        return PreferenceDataset(rows, dict(self.format_counts), list(self.file_errors), list(self.skipped_files))


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


def no_pairs_message(source: Any, ds: "PreferenceDataset") -> str:
    """Why a job has nothing to work on, in words: an empty source, or the statuses of its rows."""
    if not ds.rows:
        return f"{source}: no rows at all (an empty file?)"
    counts = ", ".join(f"{v} {k}" for k, v in sorted(ds.status_counts().items(), key=lambda kv: -kv[1]))
    return f"{source}: none of its {len(ds.rows)} rows is a usable pair ({counts}; `rmkit data {source}` lists them)"


def pairs_at(pairs: Sequence[PreferencePair], idx: Sequence[int]) -> list[PreferencePair]:
    """``[pairs[i] for i in idx]`` in one read where the pairs live in Arrow (`StoredPairs.take`: a read per pair
    would take the table once per pair and parse each row again)."""
    take = getattr(pairs, "take", None)
    return list(take(idx)) if take is not None else [pairs[i] for i in idx]


def pairs_by_id(pairs: Sequence[PreferencePair], ids: Iterable[str]) -> dict[str, PreferencePair]:
    """The pairs whose id is in ``ids``, by id, making only those: a report that shows twenty pairs of a million
    held in Arrow reads the id column and twenty rows, not every pair (``{p.id: p for p in pairs}`` made them all:
    GBs at 1M pairs)."""
    wanted = set(ids)
    return {p.id: p for p in pairs_at(pairs, [k for k, i in enumerate(pair_column(pairs, "id")) if i in wanted])}


def pair_column(pairs: Sequence[PreferencePair], name: str) -> list:
    """``[getattr(p, name) for p in pairs]`` for a row field (``id``, ``subset``, ...), read from the column where
    the pairs live in Arrow (`StoredPairs.column`) instead of making every pair."""
    column = getattr(pairs, "column", None)
    return column(name) if column is not None else [getattr(p, name) for p in pairs]


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
