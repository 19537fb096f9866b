"""Feature separation: the numbers agree with planted structure; the command draws and reports."""

import json
import subprocess
import sys

import numpy as np

from rmkit.tsne import feature_separation


def test_separation_scores_follow_the_geometry():
    rng = np.random.default_rng(0)
    mixed = feature_separation(rng.normal(size=(100, 8)), rng.normal(size=(100, 8)))
    shift = np.zeros(8)
    shift[0] = 6.0
    apart = feature_separation(rng.normal(size=(100, 8)) + shift, rng.normal(size=(100, 8)) - shift)
    assert 0.35 < mixed["knn_accuracy"] < 0.65 and abs(mixed["silhouette"]) < 0.1
    assert apart["knn_accuracy"] > 0.95 and apart["silhouette"] > 0.4


def test_tsne_command(tiny_bert, shared_data, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rmkit.cli", "tsne", str(shared_data / "hh-rlhf" / "helpful-base"),
                           "--models", f"{tiny_bert},minilm", "--max-pairs", "40", "--max-length", "48",
                           "--output-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "separation.json").read_text())
    assert res["pairs"] == 40 and len(res["models"]) == 2
    for sep in res["models"].values():
        assert 0.0 <= sep["knn_accuracy"] <= 1.0 and -1.0 <= sep["silhouette"] <= 1.0
    assert (tmp_path / "tsne.png").stat().st_size > 10_000
