"""Tables a user hands back (review files, id lists): parquet, CSV, JSONL or JSON, ids always as text."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path


from .pairs import DataError


TABLE_SUFFIXES = (".parquet", ".csv", ".jsonl", ".json")


def read_table(path: str | os.PathLike):
    """A side table (judge labels, reviews, prompts, answers) as a DataFrame, by suffix (any case): .parquet, .csv,
    .jsonl (JSON lines) or .json. An ``id`` column stays text: pandas would read ids "0012" and "12" alike, and "NA"
    as missing; in a CSV only an empty cell is missing (a text "NA" or "None" is text). CSV: UTF-8 (a byte-order mark
    is fine), comma-, semicolon- or tab-delimited (what spreadsheets save in other locales), cells rmkit escaped for
    spreadsheets (`files.spreadsheet_escape`) read back as written.
    A file that cannot be read is a `DataError` naming it and saying what was expected."""
    import pandas as pd

    from ..files import spreadsheet_unescape

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
