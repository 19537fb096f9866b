"""Small file helpers shared by every job that writes results as it goes."""

from __future__ import annotations

import json
import math
import numbers
import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a kill leaves either the old file or the new one, never half of one."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write a file or a whole folder into; when the block ends without
    an error it replaces ``path`` (a folder: the old one is removed first), so a kill leaves the previous
    version or the new one, never half of one. On an error the temporary is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        raise
    if tmp.is_dir():
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    else:
        os.replace(tmp, path)


def check_output_dir(path: str | os.PathLike, *, not_in: dict | None = None, not_at: dict | None = None) -> Path:
    """Make the output folder ``path`` and return it, after refusing one that cannot be: a file, a folder inside one
    of ``not_in`` (folder -> what it is: the data, whose next read would take the outputs for data), or one of
    ``not_at`` (folder -> what it is: another job's outputs, which would be overwritten)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output_dir {out} is a file, not a folder")
    here = out.resolve()
    for folder, what in (not_in or {}).items():
        f = Path(folder).resolve()
        if here == f or f in here.parents:
            raise ValueError(f"output_dir {out} is inside {folder}, {what}: choose a folder outside it")
    for folder, what in (not_at or {}).items():
        if here == Path(folder).resolve():
            raise ValueError(f"output_dir {out} is {folder}, {what}: choose another folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"output_dir {out} cannot be made ({e.strerror or e})") from None
    return out


def json_safe(x):
    """``x`` as plain JSON values: numpy scalars and arrays as numbers and lists, paths as strings, and every NaN
    or infinity (an undefined metric: no drop to recover, nothing flagged) as None, so the JSON written from it
    is standard: null, not the NaN token strict parsers reject."""
    if isinstance(x, dict):
        return {k.item() if isinstance(k, np.generic) else k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    if isinstance(x, numbers.Real) and not isinstance(x, numbers.Integral) and not math.isfinite(x):
        return None
    return x


def json_text(obj, *, indent: int | None = 1) -> str:
    """``obj`` as standard JSON text: `json_safe` first, so a NaN metric is null and numpy numbers are plain;
    objects JSON has no type for are written as their ``str``."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False, default=str)


def append_jsonl(path: str | os.PathLike, record) -> None:
    """Append ``record`` as one line of `json_text` to a JSONL log (metrics, evaluations, judge records)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json_text(record, indent=None) + "\n")


def trim_cut_line(path: str | os.PathLike) -> None:
    """Remove a last line that a kill cut short (no newline at the end) from a JSONL written line by line, so
    lines appended by a resumed run start on their own line. A missing file is left missing."""
    p = Path(path)
    if not p.exists():
        return
    data = p.read_bytes()
    if data and not data.endswith(b"\n"):
        atomic_write_bytes(p, data[: data.rfind(b"\n") + 1])


def read_appended_jsonl(path: str | os.PathLike) -> list:
    """The records of a JSONL a resumable job appends to (`append_jsonl`), in order; a missing file reads as empty.

    A line that does not parse is skipped with a warning naming the file and line, so its work is done again: a
    kill can cut the last write anywhere, even inside a multi-byte character, which is why the file is split as
    bytes and each line decoded alone (decoding the whole file would fail on that one cut character)."""
    import warnings

    p = Path(path)
    if not p.exists():
        return []
    records = []
    for k, line in enumerate(p.read_bytes().split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line.decode("utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError):
            warnings.warn(f"{p}, line {k}: an unfinished record (cut by a kill?); its work is done again",
                          stacklevel=2)
    return records


def keep_logged_through(path: str | os.PathLike, step: int) -> None:
    """Rewrite a log a resumed run appends to keeping only the records of steps up to ``step`` (its checkpoint's):
    the later ones, logged before a kill, are logged again; a line the kill cut short goes too
    (`read_appended_jsonl`). Atomic; a missing file is left missing."""
    if Path(path).exists():
        write_jsonl(path, [r for r in read_appended_jsonl(path) if r.get("step", 0) <= step])


def write_jsonl(path: str | os.PathLike, records) -> None:
    """Write ``records`` as a whole JSONL file, one `json_text` line each, atomically."""
    atomic_write_text(path, "".join(json_text(r, indent=None) + "\n" for r in records))


def relative_paths(obj, root: str | os.PathLike):
    """``obj`` (nested dicts, lists, strings) with every path below the folder ``root`` written relative to it, and
    below its parent as ``../`` (data beside a clone, such as ../shared), also inside strings that list several (an
    ensemble's comma-separated members): a result committed from one machine then names no folder of that machine
    and reads the same from any clone."""
    root = Path(root).resolve()
    if isinstance(obj, str):
        return obj.replace(str(root) + os.sep, "").replace(str(root.parent) + os.sep, ".." + os.sep)
    if isinstance(obj, dict):
        return {k: relative_paths(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [relative_paths(v, root) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj, *, indent: int | None = 1,
               relative_to: str | os.PathLike | None = None) -> None:
    """Write a result (summary, metrics, config) as `json_text`, atomically; with ``relative_to``, the paths
    below that folder written relative to it (`relative_paths`)."""
    if relative_to is not None:
        obj = relative_paths(obj, relative_to)
    atomic_write_text(path, json_text(obj, indent=indent) + "\n")


def model_identity(spec: str) -> str:
    """What a cache of a model's outputs is valid for: for a local path, the path and every weight file's name,
    size and modification time (a model retrained in place is another model); for a hub id, the id and the commit
    its local copy resolves to (a model updated upstream and downloaded again is another model); otherwise the id
    itself (an alias, or a hub id not downloaded yet). Comma-separated lists (an ensemble's members) are taken one
    by one."""
    parts = []
    for one in str(spec).split(","):
        path = Path(one)
        if not path.exists():
            revision = _hub_revision(one)
            parts.append(one if revision is None else f"{one}@{revision}")
            continue
        parts.append(str(path.resolve()))
        files = [path] if path.is_file() else sorted([*path.glob("*.safetensors"), *path.glob("*.npy")])
        if path.is_file() and path.suffix == ".json":  # a saved lab gold: its head beside it
            files += sorted(path.parent.glob(path.stem + "_head.npy"))
        parts += [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]
    return "".join(parts)  # no separator: the feature caches keyed on it before it was shared stay valid


def _hub_revision(repo_id: str) -> str | None:
    """The commit of the local Hugging Face cache's copy of ``repo_id`` (what ``from_pretrained`` loads offline:
    the snapshot ``refs/main`` names), or None where there is none or the name is no hub id."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # not a valid repo id (e.g. a missing local path): no revision to add
        return None
    return Path(found).parent.name if isinstance(found, str) else None


# ----------------------------------------------------------------------------------------------
# Tables: one atomic writer for every output table, and the spreadsheet-safe text of CSV cells

# A CSV cell starting with one of these runs as a formula when a spreadsheet opens the file (OWASP's CSV injection
# rule). Such a cell, and one starting with the escape character itself, is written with a leading apostrophe, which
# `spreadsheet_unescape` removes again, so a table round-trips exactly.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_ESCAPE = "'"


def spreadsheet_escape(text):
    """``text`` as a spreadsheet reads it as text: a leading apostrophe where it starts like a formula (or with an
    apostrophe); other values unchanged."""
    if isinstance(text, str) and text[:1] in (*FORMULA_STARTS, _ESCAPE):
        return _ESCAPE + text
    return text


def spreadsheet_unescape(text):
    """The inverse of `spreadsheet_escape`: one leading apostrophe goes where `spreadsheet_escape` put it."""
    if isinstance(text, str) and text[:1] == _ESCAPE and text[1:2] in (*FORMULA_STARTS, _ESCAPE):
        return text[1:]
    return text


TABLE_FORMATS = (".parquet", ".csv", ".jsonl")


def write_table(path: str | os.PathLike, table) -> None:
    """Write a DataFrame by suffix (.parquet, .csv, .jsonl), atomically: a kill or a full disk leaves the previous
    file or the whole new one, never part of one (a cut CSV reads as fewer rows, silently). CSV text cells are
    `spreadsheet_escape`d: the data's own text must never run as a formula in the reviewer's spreadsheet."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise ValueError(f"{path}: tables are written as {', '.join(TABLE_FORMATS)}")
    with atomic_path(path) as tmp:
        if suffix == ".parquet":
            table.to_parquet(tmp, index=False)
        elif suffix == ".csv":
            safe = table.copy()
            for col in safe.select_dtypes(include=["object", "string"]).columns:
                safe[col] = safe[col].map(spreadsheet_escape)
            # CRLF rows (RFC 4180, as spreadsheets write them): a text holding a lone \r is then quoted, not cut
            safe.to_csv(tmp, index=False, lineterminator="\r\n")
        else:
            table.to_json(tmp, orient="records", lines=True, force_ascii=False)
        with open(tmp, "rb+") as f:  # on disk before it replaces the old file
            os.fsync(f.fileno())
