"""The audit end to end: planted flips found, every row kept, outputs written, caches reused."""

import json

import numpy as np
import pandas as pd
import pytest

from rmkit.audit import AuditConfig, run_audit
from rmkit.data import inject_label_flips, load_preferences
from rmkit.ensemble import EnsembleConfig, encode_features, ensemble_diffs
from rmkit.models import RewardModel


@pytest.fixture(scope="module")
def separable(shared_data, tmp_path_factory):
    """Real hh-rlhf prompts and chosen answers against a fixed off-topic rejection, with 10% planted
    flips: a pairing any sentence encoder tells apart, so the audit must find the flips."""
    real = load_preferences(shared_data / "hh-rlhf" / "helpful-base" / "test.jsonl.gz", limit=160).pairs
    recs = [{"id": p.id, "prompt": p.prompt, "chosen": p.chosen,
             "rejected": [{"role": "assistant", "content": "Bananas are yellow. I like trains."}]} for p in real]
    pairs = load_preferences(recs).pairs
    noisy, flipped = inject_label_flips(pairs, 0.1, seed=1)
    path = tmp_path_factory.mktemp("sep") / "pairs.jsonl"
    with path.open("w") as f:
        for p in noisy:
            f.write(json.dumps({"id": p.id, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n")
        f.write('{"prompt": "x", "chosen": "same", "rejected": "same"}\n')  # an unusable row must survive
    return path, [p.id for p in noisy], flipped


def test_audit_finds_planted_flips_and_keeps_every_row(separable, tmp_path):
    path, ids, flipped = separable
    cfg = AuditConfig(data=str(path), output_dir=str(tmp_path / "audit"), max_length=64, members=6,
                      cache_dir=str(tmp_path / "cache"), report_pairs=3)
    result = run_audit(cfg, progress=False)
    table = pd.read_parquet(tmp_path / "audit" / "strength.parquet")
    assert len(table) == len(ids) + 1 and table["id"].is_unique
    bad = table[table["status"] == "identical"]
    assert len(bad) == 1 and bad["category"].item() == "unscored" and bad["rank"].item() == -1
    scored = table[table["category"] != "unscored"].set_index("id").loc[ids]
    assert (scored["members_scored"] == 3).all()  # crossfit: 6 members over 2 folds
    k = int(flipped.sum())
    top = set(table[table["rank"].between(1, k)]["id"])
    precision = len(top & {i for i, f in zip(ids, flipped) if f}) / k
    assert precision >= 0.8, precision
    summary = json.loads((tmp_path / "audit" / "summary.json").read_text())
    assert summary["rows"] == len(ids) + 1 and summary["categories"]["unscored"] == 1
    assert len(summary["groups"]) == 20 and "u_shaped" in summary["std_u_shape"]
    assert 0.05 < summary["share_mean_below_zero"] < 0.3
    page = (tmp_path / "audit" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "most suspect" in page and "Bananas are yellow" in page
    assert (tmp_path / "audit" / "config.yaml").exists() and (tmp_path / "audit" / "strength.csv").exists()
    assert "most suspect" in result.report()


def test_seeds_mode_scores_in_sample(separable, tmp_path):
    path, ids, _ = separable
    pairs = load_preferences(path).pairs
    cfg = EnsembleConfig(mode="seeds", members=3, max_length=48, cache_dir=str(tmp_path / "cache"))
    diffs, info = ensemble_diffs(cfg, pairs, work_dir=tmp_path / "w", progress=False)
    assert diffs.shape == (3, len(pairs)) and np.isfinite(diffs).all()
    assert info["mode"] == "seeds"
    with pytest.raises(ValueError, match="mode must be"):
        ensemble_diffs(EnsembleConfig(mode="kfold"), pairs, work_dir=tmp_path / "w")


def test_feature_cache_reused_and_resumed(separable, tmp_path):
    path, _, _ = separable
    pairs = load_preferences(path).pairs[:40]
    rm = RewardModel.from_pretrained("minilm", max_length=32)
    kw = dict(cache_dir=tmp_path / "cache", model_id="minilm", batch_size=8, chunk_batches=2, progress=False)
    fc, fr = encode_features(rm, pairs, **kw)
    fc, fr = np.array(fc), np.array(fr)
    (folder,) = (tmp_path / "cache").iterdir()
    done = json.loads((folder / "done_chunks.json").read_text())
    assert done == list(range(5))  # 80 texts / 8 per batch / 2 batches per chunk
    # Simulate a kill during chunk 3: its rows never written, not recorded as done.
    feats = np.load(folder / "features.npy", mmap_mode="r+")
    feats[:] = 0.0
    feats.flush()
    (folder / "done_chunks.json").write_text(json.dumps([0, 1, 2, 4]))
    fc2, fr2 = encode_features(rm, pairs, **kw)
    recomputed = np.flatnonzero(np.abs(np.concatenate([fc2, fr2])).sum(1) > 0)
    assert 0 < len(recomputed) <= 16  # only chunk 3's texts were encoded again
    # Other data gets another cache entry.
    encode_features(rm, pairs[:10], **kw)
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_inject_label_flips():
    recs = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(50)]
    pairs = load_preferences(recs).pairs
    noisy, mask = inject_label_flips(pairs, 0.2, seed=0)
    assert mask.sum() == 10 and all(p.chosen_text == "a" for p in pairs)
    assert all((q.chosen_text == "b") == m for q, m in zip(noisy, mask))
    with pytest.raises(ValueError):
        inject_label_flips(pairs, 1.5)


def test_finetuned_members_in_parallel_equal_sequential(tiny_bert, tmp_path):
    """Members spread over two worker processes ('devices'; CPUs here, GPUs for users) give the same
    differences as training them one after another, and finished members are not retrained."""
    recs = [{"id": f"q{i}", "prompt": f"question {i}", "chosen": "a helpful, polite answer", "rejected": "go away"}
            for i in range(24)]
    pairs = load_preferences(recs).pairs
    common = dict(model=tiny_bert, members=2, folds=2, backbone="finetune_members", max_length=16,
                  finetune_epochs=1, finetune_batch_size=4, finetune_lr=1e-3)
    seq, _ = ensemble_diffs(EnsembleConfig(**common), pairs, work_dir=tmp_path / "seq", progress=False)
    par, _ = ensemble_diffs(EnsembleConfig(**common, member_devices=["cpu", "cpu"]), pairs,
                            work_dir=tmp_path / "par", progress=False)
    np.testing.assert_allclose(par, seq, atol=1e-5)
    assert np.isfinite(seq).sum() == len(pairs)  # crossfit: each pair scored by its one out-of-fold member
    stamp = (tmp_path / "par" / "member0" / "diffs.npy").stat().st_mtime_ns
    (tmp_path / "par" / "member1" / "diffs.npy").unlink()
    again, _ = ensemble_diffs(EnsembleConfig(**common, member_devices=["cpu", "cpu"]), pairs,
                              work_dir=tmp_path / "par", progress=False)
    assert (tmp_path / "par" / "member0" / "diffs.npy").stat().st_mtime_ns == stamp
    np.testing.assert_allclose(again, seq, atol=1e-5)
