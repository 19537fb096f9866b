"""Generated malformed files for every reader: every row in comes out with a status, and nothing crashes.

A longer run of the same checks, with kills and resumes, is `benchmarks/fuzz.py`.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zipfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tempfile

from rmkit.data import DataError, load_preferences

STORE = tempfile.mkdtemp(prefix="rmkit-rows-")  # the columnar loads' Arrow files (not the user's cache)

texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30) | st.sampled_from(
    ["\u2028", "\u2029", "\x85", "\n\nHuman: hi\n\nAssistant: yo", "", " ", "\ufeff", "\x00"])
leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | texts
values = st.recursive(leaves, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(texts, kids, max_size=3),
                      max_leaves=6)
KEYS = ["prompt", "chosen", "rejected", "id", "margin", "label", "subset", "response1", "response2", "human", "query"]
records = st.dictionaries(st.sampled_from(KEYS) | texts, values, max_size=6) | values
good = st.builds(lambda q, a, b: {"prompt": q, "chosen": a, "rejected": b}, texts, texts, texts)


def _load(path, **kw):
    """The load of ``path``, checked against the columnar one (rows held in Arrow): the same rows, ids, statuses,
    pairs and report, or the same error."""
    try:
        ds = load_preferences(path, **kw)
    except DataError as e:
        try:
            load_preferences(path, columnar=STORE, **kw)
        except DataError as c:
            assert str(c) == str(e)
            return None  # a clear error naming the file: allowed; anything else fails the test
        raise AssertionError(f"the columnar load did not refuse: {e}") from None
    col = load_preferences(path, columnar=STORE, **kw)
    assert list(col.rows) == list(ds.rows) and list(col.pairs) == list(ds.pairs)
    assert col.summary() == ds.summary()
    for pair in ds.pairs:  # a usable pair is Unicode text a tokenizer reads (a lone surrogate gets a status instead)
        json.dumps([pair.prompt, pair.chosen, pair.rejected], ensure_ascii=False).encode("utf-8")
    return ds


def _lines(data: bytes) -> int:
    return sum(1 for line in data.split(b"\n") if line.strip())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(good | records, min_size=1, max_size=12), cut=st.integers(0, 400),
       junk=st.binary(max_size=12), where=st.integers(0, 10_000), bom=st.booleans())
def test_jsonl_rows_in_equal_rows_out(tmp_path, rows, cut, junk, where, bom):
    data = b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n" for r in rows)
    where %= len(data) + 1
    data = (b"\xef\xbb\xbf" if bom else b"") + data[:where] + junk + data[where:]
    path = tmp_path / "f.jsonl"
    path.write_bytes(data)
    ds = _load(path)
    if ds is not None:
        assert len(ds.rows) == _lines(data)
        assert all(r.status for r in ds.rows) and len({r.id for r in ds.rows}) == len(ds.rows)
    # The same rows gzipped and cut: the rows before the cut keep their statuses, the file gets a file_error.
    blob = gzip.compress(data)
    cut_at = max(1, len(blob) - cut)
    gz = tmp_path / "f.jsonl.gz"
    gz.write_bytes(blob[:cut_at])
    ds = _load(gz)
    if ds is not None:
        assert bool(ds.file_errors) == (cut_at < len(blob))
        assert len(ds.rows) <= _lines(data)
        if not ds.file_errors:
            assert len(ds.rows) == _lines(data)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(texts, min_size=0, max_size=5), min_size=1, max_size=10),
       latin=st.booleans())
def test_csv_rows_in_equal_rows_out(tmp_path, rows, latin):
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["prompt", "chosen", "rejected"])
    for r in rows:
        w.writerow(r)
    data = buf.getvalue().encode("utf-8")
    if latin:
        data += "caf\u00e9,a,b\n".encode("latin-1")
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    ds = _load(path)
    if ds is not None:
        # A blank line is no row; every other record written is one row with a status.
        assert len(ds.rows) == sum(1 for r in rows if r) + latin
        assert all(r.status for r in ds.rows)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(good | records, min_size=1, max_size=8), depth=st.integers(1, 60_000))
def test_json_arrays_zip_and_deep_nesting(tmp_path, rows, depth):
    arr = tmp_path / "f.json"
    arr.write_text(json.dumps(rows, ensure_ascii=False) if depth < 30_000 else "[" * depth + "]" * depth,
                   encoding="utf-8", errors="surrogatepass")
    ds = _load(arr)
    if ds is not None and depth < 30_000:
        assert len(ds.rows) == len(rows)
    z = tmp_path / "f.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("a.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        zf.writestr("__MACOSX/._a.jsonl", "junk")
    ds = _load(z)
    if ds is not None:
        assert len(ds.rows) == len(rows)
