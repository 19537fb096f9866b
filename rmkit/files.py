"""Small file helpers shared by every job that writes results as it goes."""

from __future__ import annotations

import numbers
import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


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


def json_safe(x):
    """``x`` (dicts, lists, numbers) with every NaN (an undefined metric: no drop to recover, nothing flagged) as
    None, so the JSON written from it is standard: null, not the NaN token strict parsers reject."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return None if isinstance(x, numbers.Real) and x != x else x
