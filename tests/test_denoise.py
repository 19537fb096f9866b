"""Denoising presets on hand-made strengths, and the CLI from an audit to a trainable dataset."""

import json

import numpy as np
import pandas as pd
import pytest

from rmkit.data import load_preferences
from rmkit.denoise import DenoiseConfig, denoise_pairs, select_pairs

RECS = [{"id": f"p{i}", "prompt": f"q{i}", "chosen": f"good{i}", "rejected": f"bad{i}"} for i in range(5)]
MEAN = np.array([-2.0, -0.5, 0.3, 1.5, np.nan])


def test_select_by_fraction_and_threshold():
    assert list(select_pairs(MEAN, fraction=0.5)) == [True, True, False, False, False]  # 2 of the 4 scored
    assert list(select_pairs(MEAN, threshold=0.0)) == [True, True, False, False, False]
    assert list(select_pairs(MEAN, threshold=-1.0)) == [True, False, False, False, False]
    with pytest.raises(ValueError):
        select_pairs(MEAN, fraction=2.0)


def test_presets_by_hand():
    pairs = load_preferences(RECS).pairs
    flipped, actions = denoise_pairs(pairs, MEAN, DenoiseConfig(preset="flip", fraction=0.25))
    assert flipped[0].chosen_text == "bad0" and flipped[1].chosen_text == "good1"
    assert actions[0].startswith("flipped") and actions[4] == "kept (no strength)"

    margin, _ = denoise_pairs(pairs, MEAN, DenoiseConfig(preset="margin", margin_scale=2.0))
    assert [p.margin for p in margin] == [0.0, 0.0, 0.6, 3.0, 0.0]  # clip negative strength at 0
    fm, _ = denoise_pairs(pairs, MEAN, DenoiseConfig(preset="flip+margin", fraction=0.25))
    assert fm[0].chosen_text == "bad0" and fm[0].margin == 2.0 and fm[1].margin == 0.5  # |mean|

    soft, actions = denoise_pairs(pairs, MEAN, DenoiseConfig(preset="soft+margin", threshold=0.0, soft_alpha=0.2))
    assert [p.label for p in soft] == [0.8, 0.8, 1.0, 1.0, 1.0] and soft[3].margin == 1.5
    assert soft[0].chosen_text == "good0" and "soft label 0.8" in actions[0]

    kept, actions = denoise_pairs(pairs, MEAN, DenoiseConfig(preset="drop", threshold=0.0))
    assert [p.id for p in kept] == ["p2", "p3", "p4"] and actions[0].startswith("dropped")
    with pytest.raises(ValueError, match="preset must be one of"):
        denoise_pairs(pairs, MEAN, DenoiseConfig(preset="flip+soft"))


def test_denoise_cli_then_train(tiny_bert, shared_data, tmp_path):
    import subprocess
    import sys

    data = shared_data / "hh-rlhf" / "helpful-online" / "test.jsonl.gz"
    small = tmp_path / "small.jsonl"
    import gzip

    with gzip.open(data, "rt") as f:
        small.write_text("".join(next(f) for _ in range(60)))
    run = lambda *a: subprocess.run([sys.executable, "-m", "rmkit.cli", *map(str, a)], capture_output=True,  # noqa: E731
                                    text=True, timeout=600)
    audit = run("audit", small, "--model", tiny_bert, "--output-dir", tmp_path / "audit", "--members", "2",
                "--max-length", "32", "--cache-dir", tmp_path / "cache")
    assert audit.returncode == 0, audit.stderr[-2000:]
    den = run("denoise", tmp_path / "audit" / "strength.parquet", "--preset", "soft+margin", "--output-dir",
              tmp_path / "den")
    assert den.returncode == 0, den.stderr[-2000:]
    summary = json.loads(den.stdout)
    actions = pd.read_parquet(tmp_path / "den" / "actions.parquet")
    assert len(actions) == 60 and summary["objective"] == "soft"
    pairs = pd.read_json(tmp_path / "den" / "pairs.jsonl", lines=True)
    assert (pairs["label"] < 1).sum() == round(0.1 * len(pairs)) and pairs["margin"].notna().all()
    train = run("train", tmp_path / "den" / "pairs.jsonl", "--model", tiny_bert, "--objective", "soft",
                "--output-dir", tmp_path / "rm", "--max-length", "32", "--epochs", "1", "--batch-size", "8",
                "--eval-every", "0", "--save-every", "0")
    assert train.returncode == 0, train.stderr[-2000:]
