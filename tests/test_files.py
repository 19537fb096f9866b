"""Atomic outputs and spreadsheet-safe tables (rmkit.files)."""

import os

import pandas as pd
import pytest

from rmkit.data import read_table
from rmkit.files import spreadsheet_escape, spreadsheet_unescape, write_table


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_a_failed_table_write_leaves_the_previous_file_whole(tmp_path, suffix, monkeypatch):
    """Issue 41, item 5: a kill or a full disk during flagged.csv's write left a partial file that read as 37 of 199
    ids. Every table is written beside its place and moved there when whole."""
    path = tmp_path / f"t{suffix}"
    old = pd.DataFrame({"id": [f"p{i}" for i in range(199)], "x": range(199)})
    write_table(path, old)
    method = {".csv": "to_csv", ".parquet": "to_parquet", ".jsonl": "to_json"}[suffix]
    real = getattr(pd.DataFrame, method)

    def cut(self, target, *a, **k):  # writes part of the file, then the disk is full
        real(self.iloc[:37], target, *a, **k)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, method, cut)
    with pytest.raises(OSError, match="No space left"):
        write_table(path, pd.DataFrame({"id": ["new"] * 500, "x": range(500)}))
    monkeypatch.undo()
    assert read_table(path)["id"].tolist() == old["id"].tolist()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


def test_csv_cells_that_look_like_formulas_are_text_and_round_trip(tmp_path):
    """Issue 41, item 10: ids or texts such as =HYPERLINK(...) or @SUM(...) ran as formulas in a spreadsheet. They are
    written with a leading apostrophe (OWASP), which rmkit's reader removes again: the table reads back as it was."""
    values = ["=HYPERLINK(\"http://x\")", "@SUM(A1)", "+1", "-2", "\tq", "\rr", "'quoted", "''=x", "plain", "", "NA"]
    df = pd.DataFrame({"id": values, "n": range(len(values))})
    write_table(tmp_path / "t.csv", df)
    raw = (tmp_path / "t.csv").read_bytes().decode().replace("\r\n", "\n")
    assert "\n\"'=HYPERLINK" in raw and "\n'@SUM" in raw and "\n'+1" in raw and "\n=" not in raw and "\n@" not in raw
    back = read_table(tmp_path / "t.csv")
    assert back["id"].tolist() == values and back["n"].tolist() == list(range(len(values)))
    assert all(spreadsheet_unescape(spreadsheet_escape(v)) == v for v in values)


def test_check_output_dir_refuses_a_file_and_protected_folders(tmp_path):
    from rmkit.files import check_output_dir

    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        check_output_dir(tmp_path / "f")
    with pytest.raises(ValueError, match="inside .*the data"):
        check_output_dir(tmp_path / "d" / "out", not_in={tmp_path / "d": "the data"})
    with pytest.raises(ValueError, match="is .*the audit"):
        check_output_dir(tmp_path / "a", not_at={tmp_path / "a": "the audit"})
    assert check_output_dir(tmp_path / "a" / "sub", not_at={tmp_path / "a": "the audit"}).is_dir()
    assert os.access(tmp_path / "a" / "sub", os.W_OK)
