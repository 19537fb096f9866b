"""Sources to records: files (JSONL, gzip, JSON, parquet, CSV, zip), folders (each folder a subset), DataFrames,
lists and hub datasets; `load_preferences` reads any of them into a `PreferenceDataset` with a status per row."""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import os
import zipfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator


from .formats import FORMATS, KNOWN_FIELDS, detect_format, record_to_row
from .pairs import DataError, PreferenceDataset, RowResult


FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".csv", ".zip")


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
        if name.endswith(".parquet"):  # streamed by record batch: memory holds one batch, not the file
            import pyarrow.parquet as pq

            i = 0
            with pq.ParquetFile(path) as pf:
                for batch in pf.iter_batches(batch_size=4096):
                    # Python values, as JSON reads: message lists stay lists (pandas made them arrays, which
                    # failed every conversational row), and a null is a missing value, as JSON's null is
                    for rec in batch.to_pylist():
                        yield i, i + 1, rec
                        i += 1
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
    columnar: bool | str | os.PathLike = False,
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
        columnar: hold the rows in a memory-mapped Arrow file instead of Python objects (`rmkit.data.columnar`):
            rows are parsed as a stream and written once, a later load of the same files (content hashed) with the
            same settings maps the file again without parsing; the same rows, ids and statuses either way. True keeps
            the file under ``$RMKIT_CACHE/data``; a folder, there.
    """
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    sources, skipped, fingerprint = _sources(source, subset=subset, strict=strict, split=split, data_dir=data_dir,
                                             name=name, data_files=data_files)
    unknown = sorted(set((columns or {}).values()) - KNOWN_FIELDS - {winner_key})
    if unknown:
        raise DataError(f"columns: {unknown} are not fields rmkit reads; map source columns to "
                        f"{sorted(KNOWN_FIELDS | {winner_key})}")
    settings = dict(format=format, columns=columns, winner_key=winner_key, allow_ties=allow_ties, strict=strict,
                    limit=limit)
    state = _LoadState()
    rows = _rows(sources, state, **settings)
    if columnar:
        from .columnar import load_columnar

        return load_columnar(rows, state, skipped, source=source, fingerprint=fingerprint, settings=settings,
                             finish=lambda: _finish(source, columns, state),
                             folder=None if columnar is True else Path(columnar))
    rows = list(rows)
    _finish(source, columns, state)
    return PreferenceDataset(rows, dict(state.fmt_counts), file_errors=state.file_errors, skipped_files=skipped)


def _sources(source: Any, *, subset, strict, split, data_dir, name, data_files):
    """``(sources, skipped files, fingerprint)``: each source a (file label, subset, numbered records); the
    fingerprint identifies what the records are read from (files: labels and content hashes; a hub dataset: its
    Arrow fingerprint), or None for Python objects, whose content has no cheap identity."""
    sources: list[tuple[str, str, Iterable[tuple[int, int, Any]]]] = []  # (file label, subset, rows)
    skipped: list[dict[str, str]] = []
    ident: list | None = None
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
        ident = [[label, sub, _file_hash(Path(label))] for label, sub, _ in sources]
    elif isinstance(source, str):
        if source.startswith((".", "/", "~")) or source.endswith(FILE_SUFFIXES):
            raise DataError(f"{source}: no such file or directory")
        import datasets

        try:
            ds = datasets.load_dataset(source, name, data_dir=data_dir, data_files=data_files, split=split)
        except Exception as e:  # the hub's errors vary by version; name the source in ours
            raise DataError(f"{source}: could not load it with datasets.load_dataset ({e})") from e
        sub = subset or data_dir or name or source.split("/")[-1]
        sources.append((f"hub:{source}", sub, _numbered(ds)))
        fp = getattr(ds, "_fingerprint", None)
        ident = [[f"hub:{source}", sub, fp]] if fp else None
    elif hasattr(source, "to_dict") and hasattr(source, "columns"):  # pandas
        sources.append(("<dataframe>", subset or "", _numbered(source.to_dict(orient="records"))))
    elif isinstance(source, Iterable):
        sources.append(("<records>", subset or "", _numbered(source)))
    else:
        raise DataError(f"cannot read preference data from a {type(source).__name__}")
    return sources, skipped, ident


def _file_hash(path: Path) -> str:
    """sha256 of a file's bytes: a reused Arrow copy must be of these bytes (size and mtime miss an edit in place)."""
    import hashlib

    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:32]


class _LoadState:
    """What a load learns besides its rows: formats, broken files, the source columns seen, the ids given."""

    def __init__(self) -> None:
        self.fmt_counts: Counter = Counter()
        self.file_errors: list[dict[str, Any]] = []
        self.keys_seen: set[str] = set()  # source columns, to name a columns= key that matches none
        self.seen_ids: set[str] = set()
        self.usable = 0


def _rows(sources, state: _LoadState, *, format, columns, winner_key, allow_ties, strict, limit) -> Iterator[RowResult]:
    """Every row of every source as a `RowResult`, streamed: a file's format is voted on its first JSON objects
    (`_vote_format`), then its rows are parsed as they are read, so no file is held whole."""
    for label, sub, records in sources:
        read = _read(label, records, state, columns=columns, limit=limit, strict=strict)
        head: list[tuple[int, int, Any]] = []  # the rows read before the vote
        objects = 0
        while objects < VOTE_SAMPLE and (item := next(read, None)) is not None:
            head.append(item)
            objects += isinstance(item[2], dict)
        fmt, detect_error = (format, "") if format else _vote_format(rec for _, _, rec in head)
        unknown_format = None
        if fmt is None and head:
            if strict:
                raise DataError(f"{label}: no row matches a known format ({detect_error})")
            unknown_format = {"file": label, "line": None, "rows_read": None,
                              "reason": f"no row matches a known format ({detect_error})"}
            state.file_errors.append(unknown_format)
        count = 0
        for i, line, rec in itertools.chain(head, read):
            count += 1
            rid = f"{sub}-{i:06d}" if sub else f"{i:06d}"
            if isinstance(rec, (_Undecodable, _Ragged)):
                status = "undecodable" if isinstance(rec, _Undecodable) else "bad_type"
                row = RowResult(rid, status, sub, label, i, f"line {line}: {rec.msg}")
            elif fmt is None:
                row = RowResult(rid, "missing_field", sub, label, i, detect_error or "not a record")
            else:
                row = record_to_row(rec, fmt=fmt, row=i, source_file=label, subset=sub,
                                    winner_key=winner_key, allow_ties=allow_ties)
            if row.id in state.seen_ids:  # ids must be unique: disambiguate with the source position
                row.id = f"{row.id}@{Path(label).name}:{i}"
                if row.pair is not None:
                    row.pair.id = row.id
            state.seen_ids.add(row.id)
            if strict and not row.usable:
                raise DataError(f"{label}, row {i} (line {line}): {row.status}: {row.detail}")
            if row.usable:
                state.fmt_counts[fmt] += 1
                state.usable += 1
            yield row
        if unknown_format is not None:  # how many rows the file had, now that it is read
            unknown_format["rows_read"] = count


def _read(label: str, records: Iterable[tuple[int, int, Any]], state: _LoadState, *, columns, limit,
          strict) -> Iterator[tuple[int, int, Any]]:
    """A source's ``(row, line, record)`` items, renamed, up to ``limit``; a file that breaks part-way ends here with
    its error recorded (or raised, when ``strict``)."""
    items = iter(records)
    count = 0
    while limit is None or count < limit:
        try:
            i, line, rec = next(items)
        except StopIteration:
            return
        except _FileBroken as e:
            where = f", line {e.line}" if e.line else ""
            if strict:
                raise DataError(f"{label}{where}: {e.reason}") from None
            state.file_errors.append({"file": label, "line": e.line, "rows_read": count, "reason": e.reason})
            return
        count += 1
        if columns and isinstance(rec, dict):
            state.keys_seen.update(rec)
        yield i, line, _rename(rec, columns)


def _finish(source: Any, columns: dict[str, str] | None, state: _LoadState) -> None:
    """The checks a load can make only once every row is read."""
    missing = sorted(set(columns or {}) - state.keys_seen)
    if missing and state.keys_seen:
        raise DataError(f"{source}: columns maps {missing}, but no row has such a column (the rows have "
                        f"{sorted(state.keys_seen)[:20]})")
    if state.file_errors and not state.usable:
        first = state.file_errors[0]
        raise DataError(f"{first['file']}: {first['reason']}; no usable pair in {source}")


def _numbered(records: Iterable[Any]) -> Iterator[tuple[int, int, Any]]:
    for i, rec in enumerate(records):
        yield i, i + 1, rec


VOTE_SAMPLE = 200  # JSON objects a file's format is voted on


def _vote_format(records: Iterable[Any], sample: int = VOTE_SAMPLE) -> tuple[str | None, str]:
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


def data_folder_guard(source: Any) -> dict:
    """``{folder: why}`` for `files.check_output_dir`'s ``not_in``: where ``source`` is a local folder, outputs written
    inside it would be read back as data by the next run (120 pairs instead of 40, prompts compounding)."""
    if isinstance(source, (str, os.PathLike)) and str(source) and Path(source).is_dir():
        return {Path(source): "the data folder: the next read of it would take the outputs for preference data"}
    return {}
