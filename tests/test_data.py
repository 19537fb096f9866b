"""Readers, statuses, sources and splits, on hand-written fixtures and on the real hh-rlhf files."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rmkit.audit import response_length_diff
from rmkit.policy import load_prompts
from rmkit.data import (DataError, detect_format, get_splits, load_preferences, pair_column, pairs_by_id,
                        split_hh_transcript, split_ids, text_lengths)

HH_OK = {"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello, how can I help?",
         "rejected": "\n\nHuman: Hi?\n\nAssistant: Go away."}


def write_jsonl(path, records, raw_lines=()):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        for line in raw_lines:
            f.write(line + "\n")
    return path


def test_hh_transcript_split_into_prompt_and_final_turns():
    ds = load_preferences([HH_OK])
    (pair,) = ds.pairs
    assert pair.prompt == [{"role": "user", "content": "Hi?"}]
    assert pair.chosen == [{"role": "assistant", "content": "Hello, how can I help?"}]
    assert pair.rejected == [{"role": "assistant", "content": "Go away."}]
    assert pair.status == "ok" and pair.label == 1.0
    assert ds.format_counts == {"hh": 1}


def test_hh_multi_turn_and_diverged_history():
    shared = "\n\nHuman: A\n\nAssistant: B\n\nHuman: C"
    ok = {"chosen": shared + "\n\nAssistant: D1", "rejected": shared + "\n\nAssistant: D2"}
    diverged = {"chosen": "\n\nHuman: A\n\nAssistant: B1\n\nHuman: C\n\nAssistant: D",
                "rejected": "\n\nHuman: A\n\nAssistant: B2"}
    ds = load_preferences([ok, diverged])
    a, b = ds.pairs
    assert [m["content"] for m in a.prompt] == ["A", "B", "C"] and a.status == "ok"
    # The dialogues part after "A": the prompt is the common prefix, responses hold the rest.
    assert b.status == "diverged_history"
    assert b.prompt == [{"role": "user", "content": "A"}]
    assert [m["content"] for m in b.chosen] == ["B1", "C", "D"]
    assert [m["content"] for m in b.rejected] == ["B2"]
    assert ds.report()["statuses"] == {"ok": 1, "diverged_history": 1}


def test_every_status_from_a_malformed_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        HH_OK,
        {"chosen": HH_OK["chosen"], "rejected": HH_OK["chosen"]},               # identical
        {"chosen": "\n\nHuman: Hi?\n\nAssistant:   ", "rejected": HH_OK["rejected"]},  # empty response
        {"chosen": HH_OK["chosen"]},                                             # missing rejected
        {"chosen": HH_OK["chosen"], "rejected": 7},                              # bad type
        {"chosen": "no turns here", "rejected": "none here either"},             # unparseable
    ], raw_lines=['{"chosen": "truncated'])                                      # undecodable
    ds = load_preferences(path, format="hh")
    statuses = [r.status for r in ds.rows]
    assert statuses == ["ok", "identical", "empty_response", "missing_field", "bad_type",
                        "unparseable_transcript", "undecodable"]
    assert [r.source_row for r in ds.rows] == list(range(7))
    assert "rejected" in ds.rows[3].detail and "rejected" in ds.rows[4].detail
    assert len(ds.pairs) == 1 and ds.report()["rows"] == 7
    table = ds.status_table()
    assert list(table["status"]) == statuses and table["id"].is_unique


def test_format_detected_past_a_broken_first_row(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"chosen": "only one side"}, HH_OK])
    ds = load_preferences(path)
    assert [r.status for r in ds.rows] == ["missing_field", "ok"]
    assert "rejected" in ds.rows[0].detail


def test_format_voted_over_rows_not_fixed_by_the_first(tmp_path):
    """A TRL file whose first row lacks its prompt: that row gets its own status, the others stay TRL pairs."""
    good = [{"prompt": f"q{i}?", "chosen": "yes", "rejected": "no"} for i in range(5)]
    path = write_jsonl(tmp_path / "trl.jsonl", [{"chosen": "yes", "rejected": "no"}, *good])
    ds = load_preferences(path)
    assert [r.status for r in ds.rows] == ["missing_field"] + ["ok"] * 5
    assert "prompt" in ds.rows[0].detail and ds.format_counts == {"trl": 5}


def test_json_lines_split_on_newline_only(tmp_path):
    """U+2028, U+2029 and NEL are valid inside JSON strings: they must not cut a row in two."""
    recs = [{"prompt": f"line{sep}break {i}", "chosen": f"a{sep}b", "rejected": "c"}
            for i, sep in enumerate(["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c"])]
    path = tmp_path / "seps.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    ds = load_preferences(path)
    assert [r.status for r in ds.rows] == ["ok"] * len(recs)
    assert [r.source_row for r in ds.rows] == list(range(len(recs)))
    assert ds.pairs[1].prompt[0]["content"] == "line\u2029break 1"


def test_bytes_that_are_not_utf8_and_a_bom(tmp_path):
    good = json.dumps({"prompt": "q?", "chosen": "yes", "rejected": "no"}).encode()
    latin = json.dumps({"prompt": "caf\u00e9?", "chosen": "yes", "rejected": "no"}, ensure_ascii=False)
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\n" + latin.encode("latin-1") + b"\n" + good + b"\n")
    ds = load_preferences(path)
    assert [r.status for r in ds.rows] == ["ok", "undecodable", "ok"]
    assert "not UTF-8" in ds.rows[1].detail and "line 2" in ds.rows[1].detail
    with pytest.raises(DataError, match=r"mixed\.jsonl, row 1 \(line 2\): undecodable"):
        load_preferences(path, strict=True)


def test_broken_files_keep_the_rows_before_the_break(tmp_path):
    rows = [{"prompt": f"q{i}?", "chosen": "yes", "rejected": "no"} for i in range(4000)]
    blob = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "fake.jsonl.gz").write_bytes(b"this is not gzip\n")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    deep_line = json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n" + "[" * 100_000 + "\n"
    (tmp_path / "deep.jsonl").write_text(deep_line)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty.jsonl").write_text("")
    ds = load_preferences(tmp_path)
    errors = {Path(e["file"]).name: e for e in ds.file_errors}
    assert set(errors) == {"cut.jsonl.gz", "fake.jsonl.gz", "deep.json"}
    assert 0 < errors["cut.jsonl.gz"]["rows_read"] < 4000
    assert errors["fake.jsonl.gz"]["rows_read"] == 0 and "gzip" in errors["fake.jsonl.gz"]["reason"].lower()
    assert "deep" in errors["deep.json"]["reason"]
    cut = [r for r in ds.rows if r.source_file.endswith("cut.jsonl.gz")]
    assert len(cut) == errors["cut.jsonl.gz"]["rows_read"] and all(r.status == "ok" for r in cut)
    assert [r.status for r in ds.rows if r.source_file.endswith("deep.jsonl")] == ["ok", "undecodable"]
    skipped = {Path(s["file"]).name: s["reason"] for s in ds.skipped_files}
    assert skipped == {"notes.txt": "not a data file (.txt)", "empty.jsonl": "empty file"}
    assert ds.report()["file_errors"] and ds.report()["skipped_files"]
    with pytest.raises(DataError, match=r"cut\.jsonl\.gz"):
        load_preferences(tmp_path / "cut.jsonl.gz", strict=True)


def test_csv_ragged_latin1_and_real_line_numbers(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes(
        b"prompt,chosen,rejected\n"
        b"q0?,yes,no\n"
        b"\"a prompt\nover\nfour\nlines\",yes,no\n"   # lines 3-6
        b"q2?,yes\n"                                     # line 7: ragged
        b"caf\xe9?,yes,no\n"                              # line 8: latin-1
        b"q4?,yes,\n")                                   # line 9: empty rejected
    ds = load_preferences(path)
    assert [r.status for r in ds.rows] == ["ok", "ok", "bad_type", "undecodable", "missing_field"]
    assert "line 7" in ds.rows[2].detail and "line 8" in ds.rows[3].detail
    assert ds.pairs[1].prompt[0]["content"] == "a prompt\nover\nfour\nlines"
    with pytest.raises(DataError, match=r"row 2 \(line 7\): bad_type"):
        load_preferences(path, strict=True)


def test_strict_mode_names_file_row_and_field(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [HH_OK, {"chosen": HH_OK["chosen"], "rejected": None}])
    with pytest.raises(DataError, match=r"pairs\.jsonl, row 1 \(line 2\): missing_field: rejected"):
        load_preferences(path, strict=True)


def test_trl_formats_strings_and_messages():
    records = [
        {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "margin": 1.5},
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello"}],
         "rejected": [{"role": "assistant", "content": "Bye"}], "weight": 0.5},
    ]
    a, b = load_preferences(records).pairs
    assert a.prompt == [{"role": "user", "content": "What is 2+2?"}] and a.chosen_text == "4" and a.margin == 1.5
    assert b.chosen[0]["content"] == "Hello" and b.weight == 0.5 and b.margin is None
    bad = load_preferences([{"prompt": "x", "chosen": [{"role": "assistant"}], "rejected": "y"}]).rows[0]
    assert bad.status == "bad_type" and "chosen" in bad.detail


def test_conversational_implicit_prompt():
    user = {"role": "user", "content": "Hi"}
    rec = {"chosen": [user, {"role": "assistant", "content": "Hello"}],
           "rejected": [user, {"role": "assistant", "content": "Bye"}]}
    assert detect_format(rec.keys(), rec) == "conversational"
    (p,) = load_preferences([rec]).pairs
    assert p.prompt == [user] and p.chosen_text == "Hello" and p.rejected_text == "Bye"


def test_moss_utterance_lists():
    rec = {"chosen": ["Hi", "Hello!", "How are you?", "Fine, thanks."],
           "rejected": ["Hi", "Hello!", "How are you?", "Whatever."]}
    (p,) = load_preferences([rec], format="moss").pairs
    assert [m["role"] for m in p.prompt] == ["user", "assistant", "user"]
    assert p.chosen_text == "Fine, thanks." and p.rejected_text == "Whatever."
    mismatched = {"chosen": ["Hi", "A"], "rejected": ["Yo", "B"]}
    assert load_preferences([mismatched], format="moss").rows[0].status == "bad_type"


def test_pairwise_winner_and_ties():
    recs = [{"query": "Q", "response1": "r1", "response2": "r2", "human": "model2"},
            {"query": "Q", "response1": "r1", "response2": "r2", "human": "model1"},
            {"query": "Q", "response1": "r1", "response2": "r2", "human": "TIE"},
            {"query": "Q", "response1": "r1", "response2": "r2", "human": "maybe"}]
    ds = load_preferences(recs)
    assert [r.status for r in ds.rows] == ["ok", "ok", "tie", "bad_type"]
    assert ds.pairs[0].chosen_text == "r2" and ds.pairs[1].chosen_text == "r1"
    with_ties = load_preferences(recs, allow_ties=True)
    assert [p.label for p in with_ties.pairs] == [1.0, 1.0, 0.5]


def test_columns_mapping_and_unknown_format():
    recs = [{"question": "Q", "good": "yes", "bad": "no"}]
    with pytest.raises(DataError, match="cannot tell the format"):
        load_preferences(recs)
    (p,) = load_preferences(recs, columns={"question": "prompt", "good": "chosen", "bad": "rejected"}).pairs
    assert p.chosen_text == "yes"
    with pytest.raises(ValueError, match="format must be one of"):
        load_preferences(recs, format="tlr")


def test_file_types_and_directories(tmp_path):
    recs = [{"prompt": "p", "chosen": "c", "rejected": "r"}, {"prompt": "p2", "chosen": "c2", "rejected": "r2"}]
    (tmp_path / "a").mkdir()
    write_jsonl(tmp_path / "a" / "x.jsonl", recs)
    with gzip.open(tmp_path / "a" / "y.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in recs))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.json").write_text(json.dumps(recs))
    pd.DataFrame(recs).to_parquet(tmp_path / "b" / "w.parquet")
    pd.DataFrame([{"prompt": "p", "chosen": json.dumps([{"role": "assistant", "content": "c"}]),
                   "rejected": "r"}]).to_csv(tmp_path / "b" / "v.csv", index=False)
    ds = load_preferences(tmp_path)
    assert len(ds.rows) == 9 and len(ds.pairs) == 9
    assert sorted(ds.report()["per_subset"]) == ["a", "b"]
    assert len({r.id for r in ds.rows}) == 9  # ids unique across files
    assert load_preferences(pd.DataFrame(recs)).pairs[1].chosen_text == "c2"
    with pytest.raises(DataError, match="no such file"):
        load_preferences(tmp_path / "missing.jsonl")


def test_datasets_builder_path(tmp_path):
    """The hub code path (datasets.load_dataset), exercised offline with the json builder."""
    path = write_jsonl(tmp_path / "pairs.jsonl", [HH_OK, HH_OK])
    ds = load_preferences("json", data_files=str(path), split="train", subset="local")
    assert len(ds.pairs) == 2 and ds.pairs[0].subset == "local"


def test_splits_are_deterministic_stratified_and_saved(tmp_path):
    recs = [{"prompt": f"p{i}", "chosen": "c", "rejected": "r", "subset": "ab"[i % 2]} for i in range(200)]
    ds = load_preferences(recs)
    s1 = split_ids(ds, seed=3)
    assert s1 == split_ids(ds, seed=3) and s1 != split_ids(ds, seed=4)
    assert [len(s1[k]) for k in ("train", "validation", "test")] == [140, 20, 40]
    test_subsets = [next(p.subset for p in ds.pairs if p.id == i) for i in s1["test"]]
    assert test_subsets.count("a") == test_subsets.count("b") == 20
    path = tmp_path / "splits.json"
    assert get_splits(ds, path, seed=3) == s1 and path.exists()
    assert get_splits(ds, path, seed=99) == s1  # reused, not remade
    assert set(s1["train"]).isdisjoint(s1["test"])


def test_split_hh_transcript_roles():
    turns = split_hh_transcript("\n\nHuman: a\n\nAssistant: b\n\nHuman: c")
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert split_hh_transcript("plain text") == []


def test_real_hh_rlhf_every_row_accounted_for(shared_data):
    ds = load_preferences(shared_data / "hh-rlhf")
    report = ds.report()
    assert report["rows"] == 8552
    assert report["statuses"]["identical"] == 36
    assert sum(report["statuses"].values()) == 8552  # none lost
    assert report["per_subset"]["helpful-rejection-sampled"]["identical"] == 32
    assert {r.subset for r in ds.rows} == {"harmless-base", "helpful-base", "helpful-online",
                                          "helpful-rejection-sampled"}
    assert len({r.id for r in ds.rows}) == 8552
    # Two transcripts end with a Human turn: reported, not used.
    assert report["statuses"]["unparseable_transcript"] == 2
    # Every usable pair ends with an assistant turn on both sides.
    assert all(p.chosen[-1]["role"] == "assistant" and p.rejected[-1]["role"] == "assistant" for p in ds.pairs)


def test_real_llmeval2_pairwise(shared_data):
    ds = load_preferences(shared_data / "llmeval2" / "LLMEval2_benchmark.json.zip", columns={"dataset": "subset"})
    report = ds.report()
    assert report["rows"] == 2553 and report["statuses"]["tie"] >= 470
    assert report["formats"] == {"pairwise": report["usable"]}
    assert len(report["per_subset"]) == 15


def test_columns_mapping_typos_and_single_file_subset(shared_data, tmp_path, capsys):
    """A columns= key that no row has is an error naming it; a target rmkit does not read too. A single file
    named after a split takes its folder's name as subset (helpful-base, not test); report() prints and
    returns the counts, summary() only returns them."""
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"question": "q?", "good": "yes", "bad": "no"}) + "\n")
    ds = load_preferences(path, columns={"question": "prompt", "good": "chosen", "bad": "rejected"})
    assert len(ds.pairs) == 1 and ds.pairs[0].subset == "pairs"
    with pytest.raises(DataError, match=r"columns maps \['questoin'\], but no row has such a column"):
        load_preferences(path, columns={"questoin": "prompt", "good": "chosen", "bad": "rejected"})
    with pytest.raises(DataError, match=r"\['promt'\] are not fields rmkit reads"):
        load_preferences(path, columns={"question": "promt"})
    one = load_preferences(shared_data / "hh-rlhf" / "helpful-base" / "test.jsonl.gz", limit=3)
    assert {p.subset for p in one.pairs} == {"helpful-base"} and one.pairs[0].id == "helpful-base-000000"
    summary = one.summary()
    assert capsys.readouterr().out == ""
    assert one.report() == summary and summary["rows"] == 3
    assert "3 rows, 3 usable pairs: 3 ok" in capsys.readouterr().out


def test_model_identity_follows_the_hub_snapshot(tmp_path, monkeypatch):
    """A hub model updated upstream and downloaded again is another model: caches keyed by its identity (feature
    caches, bon's raw scores) must not be reused for it. The identity names the snapshot refs/main points to."""
    from huggingface_hub import constants

    from rmkit.files import model_identity

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--org--rm"
    for sha in ("a" * 40, "b" * 40):
        (repo / "snapshots" / sha).mkdir(parents=True)
        (repo / "snapshots" / sha / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    first = model_identity("org/rm")
    assert first == "org/rm@" + "a" * 40
    (repo / "refs" / "main").write_text("b" * 40)  # upstream changed, downloaded again
    assert model_identity("org/rm") != first
    assert model_identity("org/other") == "org/other"  # not downloaded: the id alone
    assert model_identity("minilm,org/rm") == "minilm" + "org/rm@" + "b" * 40


def test_samples_cut_inside_a_multibyte_character_resume(tmp_path):
    """A kill can cut an appended samples line inside a UTF-8 character: the resumed run reads the whole lines
    before it (with a warning naming the line) instead of failing to decode the file."""
    from rmkit.metaset import read_sample_records

    path = tmp_path / "samples.jsonl"
    first = json.dumps({"id": "a", "responses": ["été"]}, ensure_ascii=False).encode()
    cut = json.dumps({"id": "b", "responses": ["naïve"]}, ensure_ascii=False).encode()
    cut = cut[: cut.index("ï".encode()) + 1]  # the first byte of a two-byte character
    path.write_bytes(first + b"\n" + cut)
    with pytest.warns(UserWarning, match="samples.jsonl, line 2: an unfinished record"):
        held = read_sample_records(path)
    assert held == {"a": {"id": "a", "responses": ["été"]}}


def test_a_capped_sample_keeps_every_row_with_a_status(tmp_path):
    """`PreferenceDataset.sample`: n usable pairs drawn with the seed, in input order; the other usable rows stay as
    `not_sampled`, unusable rows keep their own status, and a cap at or above the usable count changes nothing."""
    recs = [{"id": f"r{i}", "prompt": "q", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(10)]
    recs.insert(4, {"id": "same", "prompt": "q", "chosen": "x", "rejected": "x"})
    ds = load_preferences(recs)
    got = ds.sample(4, seed=3)
    assert [r.id for r in got.rows] == [r.id for r in ds.rows]  # every row, in order
    kept = [p.id for p in got.pairs]
    assert len(kept) == 4 and kept == sorted(kept, key=lambda i: int(i[1:]))
    assert got.status_counts() == {"ok": 4, "not_sampled": 6, "identical": 1}
    assert kept == [p.id for p in ds.sample(4, seed=3).pairs] != [p.id for p in ds.sample(4, seed=4).pairs]
    assert ds.sample(10) is ds and ds.sample(50) is ds


def test_a_capped_sample_keeps_each_subsets_share():
    """Stratified by subset, largest remainders rounding (ties to the larger subset): 5 / 3 / 2 usable pairs capped
    to 5 give quotas 2.5 / 1.5 / 1, so 3 / 1 / 1; 18 / 2 capped to 10 give exactly 9 / 1 under every seed."""
    def recs(sizes):
        return [{"id": f"{name}{i}", "subset": name, "prompt": "q", "chosen": f"a{name}{i}", "rejected": "b"}
                for name, size in sizes.items() for i in range(size)]

    ds = load_preferences(recs({"a": 5, "b": 3, "c": 2}))
    assert Counter(p.subset for p in ds.sample(5).pairs) == {"a": 3, "b": 1, "c": 1}
    big = load_preferences(recs({"big": 18, "small": 2}))
    for seed in range(5):
        got = big.sample(10, seed=seed)
        assert Counter(p.subset for p in got.pairs) == {"big": 9, "small": 1}
        assert got.status_counts() == {"ok": 10, "not_sampled": 10}
    assert "stratified by subset" in next(r.detail for r in got.rows if r.status == "not_sampled")


@pytest.mark.parametrize("field,value,status", [
    ("label", float("nan"), "bad_value"), ("label", 2.0, "bad_value"), ("label", -1.0, "bad_value"),
    ("label", True, "bad_type"), ("weight", -5, "bad_value"), ("weight", float("inf"), "bad_value"),
    ("margin", float("inf"), "bad_value"), ("original_label", 1.5, "bad_value"),
    ("label", 0.25, "ok"), ("weight", 0.0, "ok"), ("margin", -3.0, "ok"), ("margin", float("nan"), "ok"),
])
def test_numeric_fields_out_of_range_get_a_status(field, value, status):
    """Issue 41, item 7: a NaN label loaded as ok and crashed the audit; labels 2 or -1, weight -5 or inf and margin
    inf were accepted (training logged loss null and 'succeeded'). Each is now a row status naming the field; a NaN
    margin, weight or original label is 'not given' (what pandas writes for a missing value)."""
    row = load_preferences([{"prompt": "q", "chosen": "a", "rejected": "b", field: value}]).rows[0]
    assert row.status == status, row.detail
    if status != "ok":
        assert field in row.detail
    with pytest.raises(DataError, match=f"row 0 .*{field}") if status != "ok" else __import__("contextlib").nullcontext():
        load_preferences([{"prompt": "q", "chosen": "a", "rejected": "b", field: value}], strict=True)


def test_a_winner_column_named_label_is_not_also_a_probability():
    """Issue 41, item 7: ``winner_key="label"`` on rows {input, output_1, output_2, label: 1|2} oriented every pair
    right but also read label 2 as the pair's probability label."""
    recs = [{"query": f"q{i}", "response1": f"one {i}", "response2": f"two {i}", "label": 1 + i % 2} for i in range(6)]
    ds = load_preferences(recs, winner_key="label")
    assert [r.status for r in ds.rows] == ["ok"] * 6
    assert all(p.label == 1.0 for p in ds.pairs)
    assert [p.chosen[0]["content"].split()[0] for p in ds.pairs] == ["one", "two"] * 3


def test_outputs_of_rmkit_data_never_go_into_the_data_folder(tmp_path):
    from rmkit.data import DataConfig, run_data

    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(ValueError, match="the data folder"):
        run_data(DataConfig(data=str(folder), output_dir=str(folder / "out"), tokenizer=None))
    assert run_data(DataConfig(data=str(folder), output_dir=str(tmp_path / "out"), tokenizer=None))["rows"] == 1


def _same(a, b):
    """Two loads hold the same rows, pairs, report, status table, samples and subsets."""
    assert list(a.rows) == list(b.rows) and list(a.pairs) == list(b.pairs)
    assert a.summary() == b.summary() and a.status_table().equals(b.status_table())
    assert list(a.sample(3, seed=1).rows) == list(b.sample(3, seed=1).rows)
    assert a.sample(3, seed=1).summary() == b.sample(3, seed=1).summary()
    ids = [r.id for r in a.rows][::2]
    assert list(a.subset(ids).rows) == list(b.subset(ids).rows)


@pytest.mark.parametrize("source", ["hh-rlhf", "llmeval2", "files"])
def test_columnar_rows_equal_the_in_memory_ones(source, shared_data, tmp_path):
    """Issue 44: rows held in Arrow give the same pairs, ids and statuses as the Python objects, for every reader
    (real hh-rlhf and LLMEval², and the file types and formats of the fixtures above)."""
    kw = {}
    if source == "hh-rlhf":
        path = shared_data / "hh-rlhf"
    elif source == "llmeval2":
        path, kw = shared_data / "llmeval2" / "LLMEval2_benchmark.json.zip", {"columns": {"dataset": "subset"},
                                                                               "allow_ties": True}
    else:
        recs = [{"prompt": "p", "chosen": "c", "rejected": "r", "margin": 1.5}, {"prompt": "p2", "chosen": "c2",
                                                                                 "rejected": "c2"}]
        (tmp_path / "d" / "a").mkdir(parents=True)
        talk = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}]
        lone = '{"prompt": "q", "chosen": "\\ud800 lone", "rejected": "r"}'  # a lone surrogate: no UTF-8
        write_jsonl(tmp_path / "d" / "a" / "x.jsonl", recs + [HH_OK, {"chosen": talk, "rejected": talk[:1] + [
                    {"role": "assistant", "content": "y"}]}], raw_lines=["{broken", lone])
        (tmp_path / "d" / "b").mkdir()
        (tmp_path / "d" / "b" / "z.json").write_text(json.dumps(recs))
        pd.DataFrame(recs).to_parquet(tmp_path / "d" / "b" / "w.parquet")
        (tmp_path / "d" / "b" / "notes.txt").write_text("not data")
        path = tmp_path / "d"
    a = load_preferences(path, **kw)
    b = load_preferences(path, columnar=tmp_path / "store", **kw)
    _same(a, b)
    assert type(b.pairs).__name__ == "StoredPairs" and b.pairs.ids == [p.id for p in a.pairs]
    assert b.pairs[-1] == a.pairs[-1] and b.pairs[1:3] == a.pairs[1:3]
    # What the report and review export show, made one by one, and the lengths counted in one streamed pass.
    want = [p.id for p in a.pairs][::3][::-1] + ["no such id"]
    assert pairs_by_id(b.pairs, want) == pairs_by_id(a.pairs, want) == {p.id: p for p in a.pairs[::3]}
    assert pair_column(b.pairs, "subset") == pair_column(a.pairs, "subset") == [p.subset for p in a.pairs]
    n, unit = response_length_diff(b.pairs, "minilm")
    assert unit == "tokens" and np.array_equal(n, response_length_diff(a.pairs, "minilm")[0])
    count = text_lengths([p.chosen_text for p in a.pairs], "minilm")[0] - text_lengths(
        [p.rejected_text for p in a.pairs], "minilm")[0]
    assert np.array_equal(n, count)


def test_take_rows_equals_arrows_take_without_walking_every_batch():
    """Issue 44: Arrow's take on a table of many record batches walks all of them (score went quadratic at 1M
    pairs, a part at a time); `take_rows` gives the same rows, in the order asked, across empty and uneven batches,
    and refuses a row past the end instead of returning fewer."""
    import pyarrow as pa

    from rmkit.data.columnar import take_rows

    schema = pa.schema([("a", pa.string()), ("i", pa.int64())])
    sizes = [5, 0, 7, 3, 11, 1]
    table = pa.Table.from_batches([pa.record_batch({"a": [f"s{k}_{j}" for j in range(n)],
                                                    "i": list(range(1000 * k, 1000 * k + n))}, schema=schema)
                                   for k, n in enumerate(sizes)], schema=schema)
    n = table.num_rows
    rng = np.random.default_rng(0)
    for rows in ([], [0], [n - 1], list(range(3, 12)), rng.integers(0, n, 40), rng.permutation(n), [4, 4, 2, 2, 26]):
        rows = np.asarray(rows, dtype=np.int64)
        got = take_rows(table, rows)
        assert got.schema == schema and got.to_pylist() == table.take(pa.array(rows, pa.int64())).to_pylist()
    for bad in ([n], [3, n + 5], [-1]):
        with pytest.raises(IndexError):
            take_rows(table, np.asarray(bad))


def test_columnar_file_is_reused_and_refused_after_an_edit(tmp_path, monkeypatch):
    """The second load maps the first's Arrow file without parsing a row; an edit in place that keeps the size and
    modification time (chosen and rejected swapped) is another file; a failed load and Python objects leave none."""
    import os

    import rmkit.data.readers as readers

    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "good", "rejected": "bad!"}] * 3)
    store = tmp_path / "store"
    first = load_preferences(path, columnar=store)
    assert len(list(store.glob("*.arrow"))) == 1

    def no_parsing(*a, **k):
        raise AssertionError("parsed again")

    with monkeypatch.context() as m:
        m.setattr(readers, "record_to_row", no_parsing)
        again = load_preferences(path, columnar=store)
    _same(first, again)
    stat = path.stat()
    path.write_text(path.read_text().replace('"chosen": "good", "rejected": "bad!"', '"chosen": "bad!", "rejected": "good"'))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    edited = load_preferences(path, columnar=store)
    assert edited.pairs[0].chosen_text == "bad!" and len(list(store.glob("*.arrow"))) == 2
    assert load_preferences(path, columnar=store, allow_ties=True).pairs[0].chosen_text == "bad!"  # other settings
    assert len(list(store.glob("*.arrow"))) == 3
    with pytest.raises(DataError, match="columns maps"):
        load_preferences(path, columnar=store, columns={"nope": "prompt"})
    records = load_preferences([{"prompt": "q", "chosen": "a", "rejected": "b"}], columnar=store)
    assert records.pairs[0].chosen_text == "a"
    assert len(list(store.glob("*.arrow"))) == 3 and not list(store.glob("*.tmp*"))  # nothing else left


def test_row_cache_is_pruned_least_recently_used_first(tmp_path, monkeypatch):
    """rmkit's own row cache keeps at most $RMKIT_DATA_CACHE_GB: writing a file removes the least recently used
    others (a load of a cached file counts as a use) and never the one just written; a folder the caller names is
    never pruned; a bad setting is an error naming the variable."""
    import os

    from rmkit.data.columnar import store_dir, store_limit_bytes

    monkeypatch.setenv("RMKIT_CACHE", str(tmp_path / "cache"))
    paths = {k: write_jsonl(tmp_path / f"{k}.jsonl", [{"prompt": "q", "chosen": f"good {k}", "rejected": "bad"}] * 50)
             for k in "abc"}
    load_preferences(paths["a"], columnar=True)
    load_preferences(paths["b"], columnar=True)
    files = sorted(store_dir().glob("*.arrow"), key=lambda p: p.stat().st_mtime_ns)
    assert len(files) == 2
    size = max(f.stat().st_size for f in files)
    old = files[0].stat().st_mtime - 100
    for age, f in enumerate(files):  # a was used long ago, b a little later
        os.utime(f, (old + age, old + age))
    load_preferences(paths["a"], columnar=True)  # a cached load: a is now the most recently used
    monkeypatch.setenv("RMKIT_DATA_CACHE_GB", str(2.5 * size / 1e9))  # room for two files
    c = load_preferences(paths["c"], columnar=True)
    left = set(store_dir().glob("*.arrow"))
    assert files[0] in left and files[1] not in left and len(left) == 2, (files, left)
    assert not Path(str(files[1]) + ".meta.json").exists()
    assert c.pairs[0].chosen_text == "good c"
    assert load_preferences(paths["b"], columnar=True).pairs[0].chosen_text == "good b"  # parsed again ...
    assert files[0] not in set(store_dir().glob("*.arrow"))  # ... so a, now the least recently used, went
    monkeypatch.setenv("RMKIT_DATA_CACHE_GB", "0")  # keeps only the file just written
    load_preferences(paths["b"], columnar=True)  # cached: a load without a write prunes nothing
    assert len(list(store_dir().glob("*.arrow"))) == 2
    load_preferences(paths["a"], columnar=True)
    assert list(store_dir().glob("*.arrow")) == [files[0]]
    load_preferences(paths["c"], columnar=tmp_path / "mine")
    load_preferences(paths["a"], columnar=tmp_path / "mine")
    assert len(list((tmp_path / "mine").glob("*.arrow"))) == 2  # the caller's folder: never pruned
    monkeypatch.setenv("RMKIT_DATA_CACHE_GB", "lots")
    with pytest.raises(ValueError, match="RMKIT_DATA_CACHE_GB='lots'"):
        store_limit_bytes()


def test_parquet_is_streamed_by_batch_and_reads_as_jsonl_does(tmp_path):
    """A parquet file is read one record batch at a time (issue 44: memory holds a batch, not the file): rows across
    batch boundaries, conversational message lists (pandas' reader turned them into arrays: every row was
    ``bad_type``), missing margins and a bad label load exactly as the same records from JSONL, with the same
    statuses, texts, labels and margins. A null reads as JSON's null: a missing value."""
    conv = lambda text: [{"role": "user", "content": "q"}, {"role": "assistant", "content": text}]  # noqa: E731
    recs = [{"chosen": conv(f"good {i}"), "rejected": conv(f"bad {i}"), "margin": float(i % 3) if i % 5 else None,
             "label": 2.0 if i == 4150 else 1.0} for i in range(4200)]
    recs[4100]["rejected"] = recs[4100]["chosen"]  # identical sides: a per-row status, not a dropped row
    pd.DataFrame(recs).to_parquet(tmp_path / "p.parquet", row_group_size=1000)
    write_jsonl(tmp_path / "p.jsonl", recs)
    a, b = load_preferences(tmp_path / "p.parquet"), load_preferences(tmp_path / "p.jsonl")
    assert len(a.rows) == len(b.rows) == 4200
    assert [r.status for r in a.rows] == [r.status for r in b.rows]
    assert Counter(r.status for r in a.rows) == {"ok": 4198, "identical": 1, "bad_value": 1}
    for x, y in zip(a.pairs, b.pairs):
        assert (x.chosen_text, x.rejected_text, x.label) == (y.chosen_text, y.rejected_text, y.label)
        assert x.margin == y.margin or (x.margin != x.margin and y.margin != y.margin)


def test_a_lone_surrogate_gets_a_status_not_a_tokenizer_crash(tmp_path):
    """A JSON ``\\ud800`` escape is valid JSON but no Unicode text: the row is ``undecodable``, naming its field, and
    the other rows load and tokenize (it used to load as ``ok`` and crash the audit's length count with a TypeError)."""
    path = tmp_path / "s.jsonl"
    path.write_text('{"prompt": "q", "chosen": "\\ud800 lone", "rejected": "r"}\n'
                    '{"prompt": [{"role": "user\\udfff", "content": "q"}], "chosen": "a", "rejected": "b"}\n'
                    '{"prompt": "q", "chosen": "fine \\ud83d\\ude00", "rejected": "r"}\n')  # a pair: an emoji
    ds = load_preferences(path)
    assert [r.status for r in ds.rows] == ["undecodable", "undecodable", "ok"]
    assert ds.rows[0].detail.startswith("chosen: field 'chosen' holds a lone surrogate")
    assert ds.rows[1].detail.startswith("prompt:")
    assert response_length_diff(ds.pairs, "minilm")[1] == "tokens"
    prompts = tmp_path / "prompts.jsonl"  # a prompts file (rmkit sample, bon, ppo): refused, saying why
    prompts.write_text('{"id": "a", "prompt": "hi \\udc00"}\n{"id": "b", "prompt": "hello"}\n')
    with pytest.raises(DataError, match="prompts.jsonl: not a readable jsonl table .*surrogates not allowed"):
        load_prompts(str(prompts))
