"""Rows held in a memory-mapped Arrow file instead of Python objects: the data path for 100k+ pairs.

A loaded pair costs ~5 KB as Python objects (message dicts, strings, the row around it: 4-5 GB for a million
hh-rlhf pairs) before any job starts. Here the loader's rows are streamed into an Arrow IPC file, 8,192 at a time,
and mapped back: what stays in memory is the pages a job touches. A row's messages are stored as JSON text and a
`PreferencePair` is made when a job asks for it (``ds.pairs[i]``, iteration), so every job reads the same pairs,
ids and statuses as from the in-memory path (tested on every loader fixture).

The file is kept under ``$RMKIT_CACHE/data`` keyed by what was read (each file's label, subset and sha256 of its
bytes; a hub dataset's fingerprint) and the loader's settings, so the next load of the same data maps it without
parsing. The files there (about 1.5 GB per million hh-rlhf pairs) are capped at ``$RMKIT_DATA_CACHE_GB`` (default
20): writing a new one removes the least recently used others until the rest fit. A folder the caller names is
the caller's to manage and is never pruned. Python objects (a DataFrame, a list) have no cheap identity: their
file is written, mapped and unlinked at once (the mapping keeps it readable; nothing is left behind).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..caches import cache_limit_bytes, mark_used, remove_least_recent
from .pairs import USABLE, PreferenceDataset, PreferencePair, RowResult

STORE_VERSION = 1  # bump when the stored columns, or how rows are parsed into them, change
BATCH_ROWS = 8192
ROW_FIELDS = ("id", "subset", "status", "detail", "source_file", "source_row")
PAIR_TEXT = ("prompt", "chosen", "rejected")  # message lists, as JSON text
PAIR_NUMBERS = ("margin", "weight", "label", "original_label")


def _schema():
    import pyarrow as pa

    return pa.schema([*(pa.field(k, pa.string()) for k in ROW_FIELDS[:5]), pa.field("source_row", pa.int64()),
                      *(pa.field(k, pa.string()) for k in PAIR_TEXT),
                      *(pa.field(k, pa.float64()) for k in PAIR_NUMBERS)])


def _batch(rows: list[RowResult]):
    """A record batch of rows: a row without a pair has null messages and numbers."""
    import pyarrow as pa

    def text(name):
        return [None if r.pair is None else _json(getattr(r.pair, name)) for r in rows]

    def number(name):
        return [None if r.pair is None else getattr(r.pair, name) for r in rows]

    cols = [[getattr(r, k) for r in rows] for k in ROW_FIELDS] + [text(k) for k in PAIR_TEXT] + \
        [number(k) for k in PAIR_NUMBERS]
    return pa.RecordBatch.from_arrays([pa.array(c, type=f.type) for c, f in zip(cols, _schema())], schema=_schema())


def _json(messages: list) -> str:
    """Messages as JSON text; escaped to ASCII only where a text holds a lone surrogate (from a JSON ``\\ud800``),
    which UTF-8, and so Arrow, cannot hold."""
    text = json.dumps(messages, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(messages)
    return text


def store_key(fingerprint: list | None, settings: dict) -> str | None:
    """The cache key of a load: what was read and how (None: Python objects, not cached)."""
    import hashlib

    if fingerprint is None:
        return None
    text = json.dumps({"version": STORE_VERSION, "read": fingerprint, "settings": settings}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def store_dir() -> Path:
    from ..assets import cache_dir

    return cache_dir() / "data"


DEFAULT_CACHE_GB = 20.0


def store_limit_bytes() -> float:
    """The cap on the default store's files: ``$RMKIT_DATA_CACHE_GB`` GB (``inf``: no cap), else 20 GB."""
    return cache_limit_bytes("RMKIT_DATA_CACHE_GB", DEFAULT_CACHE_GB)


def prune_store(folder: Path, keep: Path, limit: float) -> list[Path]:
    """Remove the least recently used row files of ``folder`` (last use = modification time, which a cached load
    sets) until those left, ``keep`` among them, total at most ``limit`` bytes; ``keep`` itself is never removed.
    Returns what was removed. A file another process has mapped stays readable to it (an unlinked file lives on while
    mapped); only a later load parses its data again."""
    def used(p: Path) -> tuple[float, int]:
        try:
            st = p.stat()
            return st.st_mtime, st.st_size
        except OSError:  # removed by another process meanwhile
            return 0.0, 0

    files = {p: used(p) for p in folder.glob("*.arrow") if p != keep}
    return remove_least_recent(files, limit - used(keep)[1], _unlink_store)


def load_columnar(rows: Iterable[RowResult], state, skipped: list, *, source: Any, fingerprint: list | None,
                  settings: dict, finish: Callable[[], None], folder: Path | None = None) -> PreferenceDataset:
    """The `PreferenceDataset` of ``rows`` over a memory-mapped Arrow file in ``folder`` (default `store_dir`): the
    cached one of the same read and settings, or one written now as the rows stream in (``finish`` runs the load's
    closing checks first, so a load that fails leaves no file)."""
    key = store_key(fingerprint, settings)
    cache = folder is None  # rmkit's own cache is pruned; a folder the caller names is not
    limit = store_limit_bytes() if cache else None  # a bad setting fails before any row is parsed
    folder = folder or store_dir()
    path = folder / f"{key}.arrow" if key else None
    if path is not None and path.exists():
        try:
            ds = _open(path)
        except (OSError, ValueError, KeyError):  # a damaged file (a full disk, a kill outside the atomic write)
            path.unlink(missing_ok=True)
        else:
            if cache:
                mark_used(path)
            return ds
    import pyarrow as pa

    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".arrow.tmp")
    os.close(fd)
    try:
        with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, _schema()) as writer:
            block: list[RowResult] = []
            for row in rows:
                block.append(row)
                if len(block) == BATCH_ROWS:
                    writer.write_batch(_batch(block))
                    block = []
            if block:
                writer.write_batch(_batch(block))
        finish()
        _write_meta(Path(tmp), {"format_counts": dict(state.fmt_counts), "file_errors": state.file_errors,
                                "skipped_files": skipped, "source": str(source) if key else None})
        if path is None:  # not reusable: map it, then unlink it (the mapping keeps it readable)
            ds = _open(Path(tmp))
            _unlink_store(Path(tmp))
            return ds
        os.replace(tmp, path)
        Path(str(tmp) + ".meta.json").replace(str(path) + ".meta.json")
    except BaseException:
        _unlink_store(Path(tmp))
        raise
    ds = _open(path)
    if limit is not None:
        prune_store(folder, path, limit)
    return ds


def _write_meta(path: Path, meta: dict) -> None:
    Path(str(path) + ".meta.json").write_text(json.dumps(meta))


def _unlink_store(path: Path) -> None:
    path.unlink(missing_ok=True)
    Path(str(path) + ".meta.json").unlink(missing_ok=True)


def _open(path: Path) -> PreferenceDataset:
    import pyarrow as pa

    meta = json.loads(Path(str(path) + ".meta.json").read_text())
    table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    if table.schema != _schema():
        raise ValueError(f"{path}: not an rmkit row store of version {STORE_VERSION}")
    return PreferenceDataset(StoredRows(table), dict(meta["format_counts"]), list(meta["file_errors"]),
                             list(meta["skipped_files"]))


def take_rows(table, rows: np.ndarray):
    """``table.take(rows)`` (a Table, rows in the order asked) in time proportional to ``len(rows)`` and the record
    batches they touch. Arrow's own take on a table of many batches walks all of them: 0.9 s a call at a million
    rows (pyarrow 26), so a job reading a part, a batch or a pair at a time went quadratic in the rows."""
    import pyarrow as pa

    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= table.num_rows):
        raise IndexError(f"row {rows.min() if rows.min() < 0 else rows.max()} of a table of {table.num_rows} rows")
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows) and np.all(np.diff(rows) == 1):
        return table.slice(int(rows[0]), len(rows))  # a run of rows: a view, nothing copied
    batches = table.to_batches()  # zero-copy
    starts = np.cumsum([0] + [b.num_rows for b in batches])
    order = np.argsort(rows, kind="stable")
    ranked = rows[order]
    which = np.searchsorted(starts, ranked, side="right") - 1
    cuts = np.flatnonzero(np.diff(which)) + 1
    pieces = [batches[which[seg[0]]].take(pa.array(ranked[seg] - starts[which[seg[0]]]))
              for seg in np.split(np.arange(len(ranked)), cuts) if len(seg)]
    got = pa.Table.from_batches(pieces, schema=table.schema).combine_chunks()  # len(rows) rows: small
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return got.take(pa.array(back))


class StoredRows(Sequence[RowResult]):
    """The rows of a `PreferenceDataset` as a view of an Arrow table: positions ``index`` into it, and the statuses
    (and details) a sample changed. Rows are made when asked for; ``column`` reads one field of every row at once."""

    def __init__(self, table, index: np.ndarray | None = None, status: np.ndarray | None = None,
                 detail: np.ndarray | None = None):
        self.table = table
        self.index = np.arange(table.num_rows) if index is None else np.asarray(index, dtype=np.int64)
        self._override = {"status": status, "detail": detail}
        self._columns: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.index)

    def column(self, name: str) -> np.ndarray:
        """Field ``name`` of every row, in order (an object array for text)."""
        if self._override.get(name) is not None:
            return self._override[name]
        if name not in self._columns:
            col = self.table.column(name)
            if len(self.index) != self.table.num_rows or not np.array_equal(self.index, np.arange(len(self.index))):
                col = take_rows(self.table.select([name]), self.index).column(0)
            self._columns[name] = col.to_numpy(zero_copy_only=False)
        return self._columns[name]

    def __getitem__(self, k):
        if isinstance(k, slice):
            return self.take(np.arange(len(self))[k])
        k = range(len(self))[k]  # negative positions, and IndexError past the end
        return self._make([k])[0]

    def __iter__(self) -> Iterator[RowResult]:
        for s in range(0, len(self), BATCH_ROWS):
            yield from self._make(range(s, min(s + BATCH_ROWS, len(self))))

    def take(self, positions: Sequence[int]) -> "StoredRows":
        """The rows at ``positions`` (of this view), as a view."""
        positions = np.asarray(positions, dtype=np.int64)
        over = {k: (None if v is None else v[positions]) for k, v in self._override.items()}
        return StoredRows(self.table, self.index[positions], **over)

    def with_status(self, positions: np.ndarray, status: str, detail: str) -> "StoredRows":
        """This view with the rows at ``positions`` given another status and detail (their pairs are dropped)."""
        st, de = self.column("status").copy(), self.column("detail").copy()
        st[positions], de[positions] = status, detail
        return StoredRows(self.table, self.index, st, de)

    def usable_positions(self) -> np.ndarray:
        return np.flatnonzero(np.isin(self.column("status"), USABLE))

    def pairs(self) -> "StoredPairs":
        return StoredPairs(self, self.usable_positions())

    def _make(self, positions: Sequence[int]) -> list[RowResult]:
        positions = np.asarray(positions, dtype=np.int64)
        records = take_rows(self.table, self.index[positions]).to_pylist()
        st, de = self._override["status"], self._override["detail"]
        out = []
        for k, rec in zip(positions, records):
            status = rec["status"] if st is None else st[k]
            detail = rec["detail"] if de is None else de[k]
            pair = _pair(rec, status) if status in USABLE else None
            out.append(RowResult(rec["id"], status, rec["subset"], rec["source_file"], rec["source_row"], detail,
                                 pair))
        return out


def _pair(rec: dict, status: str) -> PreferencePair:
    return PreferencePair(id=rec["id"], prompt=json.loads(rec["prompt"]), chosen=json.loads(rec["chosen"]),
                          rejected=json.loads(rec["rejected"]), margin=rec["margin"], weight=rec["weight"],
                          label=rec["label"], original_label=rec["original_label"], subset=rec["subset"],
                          source_file=rec["source_file"], source_row=rec["source_row"], status=status)


class StoredPairs(Sequence[PreferencePair]):
    """The usable pairs of a `StoredRows` view, made when asked for: ``pairs[i]``, a slice (a list), iteration."""

    def __init__(self, rows: StoredRows, positions: np.ndarray):
        self.rows, self.positions = rows, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [r.pair for r in self.rows._make(self.positions[k])]
        return self.rows._make([self.positions[range(len(self))[k]]])[0].pair

    def __iter__(self) -> Iterator[PreferencePair]:
        for s in range(0, len(self), BATCH_ROWS):
            yield from (r.pair for r in self.rows._make(self.positions[s: s + BATCH_ROWS]))

    def __eq__(self, other) -> bool:
        return list(self) == list(other)

    def take(self, positions: Sequence[int]) -> "StoredPairs":
        """The pairs at ``positions`` (of this sequence), still made when asked for."""
        return StoredPairs(self.rows, self.positions[np.asarray(positions, dtype=np.int64)])

    @property
    def ids(self) -> list[str]:
        """Every pair's id, from the column (no pair is made)."""
        return self.column("id")

    def column(self, name: str) -> list:
        """Field ``name`` of every pair (a row field: ``id``, ``subset``, ...), from the column (no pair is made)."""
        return self.rows.column(name)[self.positions].tolist()

