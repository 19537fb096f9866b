"""The audit end to end: planted flips found, every row kept, outputs written, caches reused."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from rmkit.audit import AuditConfig, run_audit
from rmkit.config import validate
from rmkit.data import inject_label_flips, load_preferences
from rmkit.ensemble import (EnsembleConfig, encode_features, ensemble_diffs, heads_on_features, member_bootstrap,
                            member_layers)
from rmkit.heads import L2_GRID, fold_of, head_diffs, select_l2, train_bt_heads
from rmkit.models import RewardModel


@pytest.fixture(scope="module")
def separable(shared_data, tmp_path_factory):
    """Real hh-rlhf prompts and chosen answers against a fixed off-topic rejection, with 10% planted
    flips: a pairing any sentence encoder tells apart, so the audit must find the flips."""
    real = load_preferences(shared_data / "hh-rlhf" / "helpful-base" / "test.jsonl.gz", limit=160).pairs
    # ids as this fixture has always had them (a single file's subset was named "test" before it took its
    # folder's name): folds hash the ids, so the same ids keep the same numbers.
    recs = [{"id": p.id.replace("helpful-base-", "test-"), "prompt": p.prompt, "chosen": p.chosen,
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
    assert page.count("data:image/png;base64,") == 6 and "Bananas are yellow" in page
    assert page.index("How far to trust this audit") < page.index("Categories")  # the page leads with trust
    assert "Each pair shows 3 member values, not 6" in page
    assert f"features encoded in {summary['ensemble']['precision']}" in page  # what precision auto chose
    assert (tmp_path / "audit" / "config.yaml").exists() and (tmp_path / "audit" / "strength.csv").exists()
    assert "most suspect" in result.report()
    # Calibrated verdicts: the planted flips get the high probabilities, and the flags are mostly flips.
    trust = summary["trust"]
    assert trust["agreement"]["judged"] and trust["unjudged_subsets"] == [] and trust["ece"] < 0.1
    p_wrong = scored["p_label_wrong"].to_numpy()
    assert p_wrong[flipped].mean() > 0.8 > 0.2 > p_wrong[~flipped].mean()
    flags = scored["category"].to_numpy() == "likely_mislabeled"
    assert flags.sum() == trust["flagged"] > 0 and flipped[flags].mean() >= 0.8
    review = pd.read_csv(tmp_path / "audit" / "flagged.csv")
    assert list(review.columns[-4:]) == ["prompt", "chosen", "rejected", "review"] and review["review"].isna().all()
    assert review["flagged"].sum() == flags.sum() and set(review["id"]) <= set(ids)
    # MiniLM has 6 blocks; 3 members per fold read blocks 1, 4 and 6 (evenly spaced), each with a picked L2.
    assert summary["ensemble"]["member_layers"] == [1, 1, 4, 4, 6, 6]
    assert set(summary["ensemble"]["head_l2"]) == {"1", "4", "6"}
    assert all(v in L2_GRID for v in summary["ensemble"]["head_l2"].values())
    assert summary["ensemble"]["bootstrap"] is False  # the members of a fold differ by layer
    assert "hidden layers 1, 4, 6; head L2 per layer" in page


def test_member_layers():
    assert member_layers(EnsembleConfig(), 6) == [1, 1, 2, 2, 4, 4, 5, 5, 6, 6]  # 5 per fold over 6 blocks
    assert member_layers(EnsembleConfig(members=4, folds=2), 24) == [1, 1, 24, 24]
    assert member_layers(EnsembleConfig(mode="seeds", members=3, layers=[2, -1]), 6) == [2, -1, 2]
    assert member_layers(EnsembleConfig(members=12), 6) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    # Resample only when two members of a fold would read the same features.
    assert not member_bootstrap(EnsembleConfig(), member_layers(EnsembleConfig(), 6))
    assert member_bootstrap(EnsembleConfig(members=10), member_layers(EnsembleConfig(layers=[3]), 6))
    assert member_bootstrap(EnsembleConfig(pooling="native"), [3] * 10)
    assert member_bootstrap(EnsembleConfig(mode="seeds"), member_layers(EnsembleConfig(mode="seeds"), 6))
    assert member_bootstrap(EnsembleConfig(bootstrap=True), member_layers(EnsembleConfig(), 6))
    with pytest.raises(ValueError, match="10 entries, got 1"):
        heads_on_features(EnsembleConfig(), np.zeros((4, 1, 3)), np.zeros((4, 1, 3)), list("abcd"), [3])
    with pytest.raises(ValueError, match="layers apply to mean pooling"):
        EnsembleConfig(pooling="native", layers=[1]).check()


def test_embed_reads_several_layers_in_one_pass(tiny_bert):
    rm = RewardModel.from_pretrained(tiny_bert, max_length=32)
    batch = rm.collate([[101, 7592, 2088, 102], [101, 7592, 102]], rm.device)
    many = rm.embed(**batch, pooling="mean", layers=[0, 2])
    assert many.shape == (2, 2, 32)
    with torch.no_grad():
        hidden = rm.model.base_model(**batch, output_hidden_states=True).hidden_states
    # Second text: 3 real tokens, 1 pad that must not count.
    assert torch.allclose(many[1, 1], hidden[2][1, :3].mean(0), atol=1e-6)
    assert torch.allclose(many[0, 0], hidden[0][0].mean(0), atol=1e-6)
    assert rm.embed(**batch, pooling="native").shape == (2, 1, 32)


def test_train_bt_heads_takes_one_l2_per_head():
    rng = np.random.default_rng(0)
    fc, fr = rng.normal(size=(60, 5)), rng.normal(size=(60, 5))
    train = np.ones((2, 60), dtype=np.float32)
    both = train_bt_heads(fc, fr, train, l2=np.array([1e-3, 1.0]))
    # Same optimum as one at a time (to L-BFGS's tolerance), and the penalties make a real difference.
    assert np.allclose(both[0], train_bt_heads(fc, fr, train[:1], l2=1e-3)[0], atol=1e-4)
    assert np.allclose(both[1], train_bt_heads(fc, fr, train[:1], l2=1.0)[0], atol=1e-4)
    assert np.abs(both[0]).sum() > 2 * np.abs(both[1]).sum()


def test_select_l2_is_the_cross_fitted_log_loss_minimum():
    """Losses by hand (one head per fold, scored on its own fold); and with 40% of labels flipped
    the best penalty is larger than on clean labels (noise calls for more shrinkage)."""
    rng = np.random.default_rng(0)
    n, h = 300, 40
    w = rng.normal(size=h)
    fc, fr = rng.normal(size=(n, h)), rng.normal(size=(n, h))
    swap = (fc - fr) @ w < 0  # make every clean label agree with w
    fc, fr = np.where(swap[:, None], fr, fc), np.where(swap[:, None], fc, fr)
    fold = fold_of([str(i) for i in range(n)], 2)
    best, losses = select_l2(fc, fr, fold, grid=(1e-3, 1.0))
    for a in (1e-3, 1.0):
        nll = 0.0
        for k in (0, 1):
            W = train_bt_heads(fc, fr, (fold != k)[None].astype(np.float32), l2=a)
            z = head_diffs(W, fc[fold == k], fr[fold == k])[0]
            nll += np.logaddexp(0, -z).sum()
        assert losses[a] == pytest.approx(nll / n, rel=1e-3)  # heads trained together vs one by one
    assert best == min(losses, key=losses.get)
    flip = rng.random(n) < 0.4
    noisy_c, noisy_r = np.where(flip[:, None], fr, fc), np.where(flip[:, None], fc, fr)
    assert select_l2(noisy_c, noisy_r, fold)[0] > select_l2(fc, fr, fold)[0]
    with pytest.raises(ValueError, match="2 folds"):
        select_l2(fc, fr, np.zeros(n, dtype=int))


def test_seeds_mode_scores_in_sample(separable, tmp_path):
    path, ids, _ = separable
    pairs = load_preferences(path).pairs
    cfg = EnsembleConfig(mode="seeds", members=3, max_length=48, cache_dir=str(tmp_path / "cache"))
    diffs, info = ensemble_diffs(cfg, pairs, work_dir=tmp_path / "w", progress=False)
    assert diffs.shape == (3, len(pairs)) and np.isfinite(diffs).all()
    assert info.mode == "seeds"
    with pytest.raises(ValueError, match="mode must be"):
        ensemble_diffs(EnsembleConfig(mode="kfold"), pairs, work_dir=tmp_path / "w")


def test_feature_cache_reused_and_resumed(separable, tmp_path):
    path, _, _ = separable
    pairs = load_preferences(path).pairs[:40]
    rm = RewardModel.from_pretrained("minilm", max_length=32)
    kw = dict(cache_dir=tmp_path / "cache", model_id="minilm", progress=False)
    fc, fr = encode_features(rm, pairs, batch_size=8, chunk_batches=2, **kw)
    fc, fr = np.array(fc), np.array(fr)
    (folder,) = (tmp_path / "cache").iterdir()
    assert np.load(folder / "done.npy").all()
    # Only texts still to encode are tokenized: none on a finished cache, the lost ones after a kill.
    real_encode, tokenized = rm.encode, []
    rm.encode = lambda prompts, responses: tokenized.append(len(prompts)) or real_encode(prompts, responses)
    encode_features(rm, pairs, batch_size=8, chunk_batches=2, **kw)
    assert tokenized == []
    # Simulate a kill: features of some texts never written, and not recorded as done.
    feats = np.load(folder / "features.npy", mmap_mode="r+")
    lost = np.arange(10, 26)
    feats[lost] = 0.0
    feats.flush()
    done = np.load(folder / "done.npy")
    done[lost] = False
    np.save(folder / "done.npy", done)
    fc2, fr2 = encode_features(rm, pairs, batch_size=8, chunk_batches=2, **kw)
    assert tokenized == [16]  # texts 10..25: all chosen sides (of 40 pairs)
    np.testing.assert_allclose(np.concatenate([fc2, fr2]), np.concatenate([fc, fr]), atol=1e-5)
    # Other data gets another cache entry.
    encode_features(rm, pairs[:10], batch_size=8, **kw)
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_feature_cache_resume_with_another_batch_size(separable, tmp_path, monkeypatch):
    """A kill mid-encoding, then a rerun with another batch size: every row encoded, none left at zero."""
    path, _, _ = separable
    pairs = load_preferences(path).pairs[:40]
    rm = RewardModel.from_pretrained("minilm", max_length=32)
    kw = dict(cache_dir=tmp_path / "cache", model_id="minilm", progress=False)
    ref_c, ref_r = (np.array(a) for a in encode_features(rm, pairs, batch_size=8, cache_dir=tmp_path / "ref",
                                                          model_id="minilm", progress=False))
    real_embed, calls = rm.embed, []

    def dying_embed(*a, **k):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real_embed(*a, **k)

    monkeypatch.setattr(rm, "embed", dying_embed)
    with pytest.raises(KeyboardInterrupt):
        encode_features(rm, pairs, batch_size=4, chunk_batches=1, **kw)
    monkeypatch.setattr(rm, "embed", real_embed)
    (folder,) = (tmp_path / "cache").iterdir()
    assert np.load(folder / "done.npy").sum() == 12  # 3 batches of 4 finished before the kill
    fc, fr = encode_features(rm, pairs, batch_size=32, chunk_batches=1, **kw)
    both = np.concatenate([fc, fr])
    assert (np.abs(both).sum((1, 2)) > 0).all()
    np.testing.assert_allclose(both, np.concatenate([ref_c, ref_r]), atol=1e-5)


def test_feature_cache_corrupt_progress_record_is_rebuilt(separable, tmp_path):
    path, _, _ = separable
    pairs = load_preferences(path).pairs[:12]
    rm = RewardModel.from_pretrained("minilm", max_length=32)
    kw = dict(cache_dir=tmp_path / "cache", model_id="minilm", batch_size=8, progress=False)
    fc, _ = encode_features(rm, pairs, **kw)
    fc = np.array(fc)
    (folder,) = (tmp_path / "cache").iterdir()
    (folder / "done.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.warns(UserWarning, match="done.npy"):
        fc2, _ = encode_features(rm, pairs, **kw)
    np.testing.assert_allclose(fc2, fc, atol=1e-5)


def test_feature_cache_is_pruned_least_recently_used_first(separable, tmp_path, monkeypatch):
    """rmkit's own feature cache keeps at most $RMKIT_FEATURE_CACHE_GB: writing an entry removes the least recently
    used finished others (a cached load counts as a use), never the entry just written, an unfinished one (a killed
    run resumes from it) or one used in the last minutes; a folder the caller names is never pruned; a bad setting is
    an error naming the variable."""
    import os

    from rmkit.caches import feature_cache_limit_bytes
    from rmkit.ensemble import default_cache_dir

    path, _, _ = separable
    pairs = load_preferences(path).pairs
    rm = RewardModel.from_pretrained("minilm", max_length=32)
    monkeypatch.setenv("RMKIT_CACHE", str(tmp_path / "rmkit"))
    kw = dict(cache_dir=default_cache_dir(), model_id="minilm", batch_size=8, progress=False)

    def entries():
        return {e.name: e for e in default_cache_dir().iterdir()}

    def age(entry, seconds):
        t = entry.joinpath("features.npy").stat().st_mtime - seconds
        os.utime(entry / "features.npy", (t, t))

    encode_features(rm, pairs[:6], **kw)
    (a,) = entries().values()
    encode_features(rm, pairs[6:12], **kw)
    (b,) = (e for e in entries().values() if e != a)
    age(a, 2000)
    age(b, 1000)  # a used long ago, b later
    size = sum(f.stat().st_size for f in a.iterdir())
    encode_features(rm, pairs[:6], **kw)  # a cached load: a is now the most recently used (and prunes nothing)
    age(a, 900)  # ... but not within the last minutes, so it may go once it is the oldest
    monkeypatch.setenv("RMKIT_FEATURE_CACHE_GB", str(2.5 * size / 1e9))  # room for two entries
    encode_features(rm, pairs[12:18], **kw)
    left = set(entries().values())
    assert a in left and b not in left and len(left) == 2
    # Unfinished (a killed run's) and recently used entries stay, whatever the cap.
    done = np.load(a / "done.npy")
    done[:3] = False
    np.save(a / "done.npy", done)
    age(a, 5000)
    monkeypatch.setenv("RMKIT_FEATURE_CACHE_GB", "0")
    encode_features(rm, pairs[18:24], **kw)  # the entry of pairs[12:18] was used just now: it stays too
    assert len(entries()) == 3
    for e in entries().values():
        age(e, 5000)
    encode_features(rm, pairs[24:30], **kw)
    assert len(entries()) == 2 and a in entries().values()  # the new entry and the unfinished one
    for e in entries().values():
        age(e, 5000)
    fc, _ = encode_features(rm, pairs[:6], **kw)  # resumes the unfinished entry, then prunes the other one
    assert set(entries().values()) == {a} and np.load(a / "done.npy").all() and np.isfinite(fc).all()
    mine = dict(kw, cache_dir=tmp_path / "mine")
    for s in (0, 6, 12):
        encode_features(rm, pairs[s: s + 6], **mine)
    assert len(list((tmp_path / "mine").iterdir())) == 3  # the caller's folder: never pruned
    monkeypatch.setenv("RMKIT_FEATURE_CACHE_GB", "lots")
    with pytest.raises(ValueError, match="RMKIT_FEATURE_CACHE_GB='lots'"):
        feature_cache_limit_bytes()
    with pytest.raises(ValueError, match="RMKIT_FEATURE_CACHE_GB"):
        encode_features(rm, pairs[30:36], **kw)  # before any encoding
    assert len(entries()) == 1


def test_heads_on_a_subsets_rows_equal_heads_on_a_copy_of_them(tmp_path):
    """A subset's heads read its rows of the memory-mapped cache one layer at a time (``rows=``; a copy of every
    layer's rows at once held 3.6 GB for a 200k-pair subset, this 1.2 GB) and are the heads fitted on a copy of those
    rows, in memory or a chunk at a time."""
    from rmkit.ensemble import _fit_heads, plan_ensemble

    rng = np.random.default_rng(1)
    n, views, h = 900, 3, 8
    fc = np.lib.format.open_memmap(tmp_path / "c.npy", mode="w+", dtype=np.float32, shape=(n, views, h))
    fr = np.lib.format.open_memmap(tmp_path / "r.npy", mode="w+", dtype=np.float32, shape=(n, views, h))
    fc[:], fr[:] = rng.normal(size=(n, views, h)), rng.normal(size=(n, views, h))
    fc[:, :, 0] += 0.8  # the chosen side wins along feature 0 on every layer
    idx = np.flatnonzero(rng.random(n) < 0.4)
    cfg = EnsembleConfig(members=4, layers=[1, 2, 3], seed=0)
    ids = [f"p{i}" for i in range(n)]
    plan = plan_ensemble(cfg, ids, [1, 2, 3, 1])
    args = (plan.train[:, idx], plan.score[:, idx], plan.layers, plan.views, plan.select_fold[idx])
    for chunked in (cfg, replace(cfg, head_chunk_rows=100)):
        copied = _fit_heads(chunked, np.asarray(fc)[idx], np.asarray(fr)[idx], *args)
        read = _fit_heads(chunked, fc, fr, *args, rows=idx)
        np.testing.assert_array_equal(read[0], copied[0])
        np.testing.assert_array_equal(read[1], copied[1])
        assert read[2] == copied[2] and np.nanmean(read[0]) > 0


def test_heads_by_subset_find_flips_where_subsets_want_opposite_things():
    """Two subsets whose labels follow opposite directions of the features (hh-rlhf's harmless vs helpful pairs, in
    miniature): pooled heads learn neither and rank planted flips near chance; heads trained within each subset find
    them; ``auto`` picks them by out-of-fold agreement with the labels alone. Where both subsets agree, ``auto``
    costs nothing."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    n, h = 1200, 6
    subsets = np.array(["a"] * (n // 2) + ["b"] * (n // 2), dtype=object)
    ids = [f"p{i}" for i in range(n)]
    flipped = rng.random(n) < 0.2

    def features(opposite: bool):
        d = rng.normal(size=(n, h))
        d[:, 0] = np.abs(d[:, 0]) + 0.3  # the labelled-chosen side wins along feature 0 ...
        if opposite:
            d[n // 2:, 0] *= -1  # ... except in subset b, whose labels want the other way
        d[flipped] *= -1  # planted flips: the pair written the other way round
        base = rng.normal(size=(n, h))
        return (base + d / 2)[:, None, :], (base - d / 2)[:, None, :]

    cfg = EnsembleConfig(members=4, layers=[1], seed=0)
    for opposite in (True, False):
        fc, fr = features(opposite)
        auroc, chosen = {}, {}
        for mode in ("no", "auto", "yes"):
            diffs, _, info = heads_on_features(replace(cfg, heads_by_subset=mode), fc, fr, ids, [1] * 4,
                                               subsets=subsets)
            auroc[mode] = roc_auc_score(flipped, -np.nanmean(diffs, axis=0))
            chosen[mode] = info["heads_by_subset"]
        if opposite:
            assert auroc["no"] < 0.65 and auroc["yes"] > 0.85 and auroc["auto"] == auroc["yes"], auroc
            assert {v["heads"] for v in chosen["auto"].values()} == {"own"}
            assert all(v["agreement_own"] > v["agreement_pooled"] + 0.1 for v in chosen["auto"].values())
        else:
            assert auroc["no"] > 0.85 and auroc["auto"] > auroc["no"] - 0.02, auroc
        assert chosen["no"] is None
    pooled, _, info = heads_on_features(replace(cfg, heads_by_subset="auto"), fc, fr, ids, [1] * 4)
    assert info["heads_by_subset"] is None  # no subsets given: one subset, the pooled heads
    np.testing.assert_array_equal(pooled, heads_on_features(cfg, fc, fr, ids, [1] * 4)[0])
    with pytest.raises(ValueError, match="heads_by_subset"):
        validate(replace(cfg, heads_by_subset="maybe"))
    with pytest.raises(ValueError, match="backbone frozen"):
        validate(replace(cfg, heads_by_subset="yes", backbone="finetune_folds"))


def test_audit_heads_by_subset(separable, tmp_path, monkeypatch):
    """Through the audit: subset b's labels prefer the off-topic answer that subset a's labels reject. With
    ``heads_by_subset auto`` each subset gets heads of its own (chosen by agreement with its labels), the summary
    says so, the report names them, and the planted flips (a's, and their copies in b) lead the ranking."""
    import rmkit.calibration
    import rmkit.ensemble

    path, ids, flipped = separable
    rows = [json.loads(line) for line in path.read_text().splitlines()][:-1]  # without the unusable row
    recs = [{**r, "subset": "a"} for r in rows] + [
        {"id": f"b-{i}", "prompt": r["prompt"], "chosen": r["rejected"], "rejected": r["chosen"], "subset": "b"}
        for i, r in enumerate(rows)]
    monkeypatch.setattr(rmkit.ensemble, "MIN_SUBSET_PAIRS", 50)
    monkeypatch.setattr(rmkit.calibration, "MIN_GROUP_PAIRS", 50)
    cfg = AuditConfig(data="records", output_dir=str(tmp_path / "audit"), max_length=64, members=4,
                      cache_dir=str(tmp_path / "cache"), heads_by_subset="auto", calibration_by_subset=True)
    result = run_audit(cfg, data=recs, progress=False)
    chosen = result.summary["ensemble"]["heads_by_subset"]
    assert {k: v["heads"] for k, v in chosen.items()} == {"a": "own", "b": "own"}, chosen
    assert all(v["agreement_own"] > v["agreement_pooled"] for v in chosen.values())
    # the subsets' own heads are saved beside the pooled ones; b's labels are a's reversed, so are its heads
    saved = np.load(tmp_path / "audit" / "work" / "heads_by_subset.npz", allow_pickle=False)
    pooled = np.load(tmp_path / "audit" / "work" / "heads.npy", allow_pickle=False)
    assert list(saved["subsets"]) == ["a", "b"] and saved["heads"].shape == (2, *pooled.shape)
    a, b = saved["heads"]
    assert all(a[m] @ b[m] / np.linalg.norm(a[m]) / np.linalg.norm(b[m]) < -0.5 for m in range(len(a)))
    page = (tmp_path / "audit" / "report.html").read_text()
    assert "heads trained within a (out-of-fold agreement" in page
    # each subset calibrated apart too (calibration_by_subset), and the report says so
    assert result.summary["trust"]["calibrated_apart"] == ["a", "b"]
    assert "within each of a, b apart" in page
    assert set(result.summary["trust"]["length_term"]["by_subset"]) == {"a", "b"}
    assert "fitted within each subset apart" in page and "Within each subset calibrated apart" in page
    planted = {i for i, f in zip(ids, flipped) if f} | {f"b-{j}" for j, f in enumerate(flipped) if f}  # b copies a's
    top = set(result.table[result.table["rank"].between(1, len(planted))]["id"])
    assert len(top & planted) / len(planted) >= 0.7


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
    # device cpu for the sequential run too: on a GPU machine it would train on the GPU, the workers on CPUs
    common = dict(model=tiny_bert, members=2, folds=2, backbone="finetune_members", max_length=16,
                  finetune_epochs=1, finetune_batch_size=4, finetune_lr=1e-3, device="cpu")
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


def test_audit_with_your_own_reward_models(tiny_bert, tiny_llama, separable, tmp_path):
    """--member-models: existing RMs of different backbones score every pair; the report says in-sample."""
    path, ids, _ = separable
    cfg = AuditConfig(data=str(path), output_dir=str(tmp_path / "a"), member_models=[tiny_bert, tiny_llama],
                      report_pairs=2)
    result = run_audit(cfg, progress=False)
    scored = result.table[result.table["category"] != "unscored"]
    assert len(scored) == len(ids) and (scored["members_scored"] == 2).all()
    page = (tmp_path / "a" / "report.html").read_text()
    assert "2 given reward models" in page and "in-sample" in page
    assert result.summary["ensemble"]["member_models"] == [tiny_bert, tiny_llama]


def test_members_over_two_backbones(separable, tiny_bert, tiny_llama, tmp_path):
    """``more_models``: members alternate between backbones so every fold holds both; each backbone's features
    are cached and read by its own heads; every pair is still scored by the members that never saw it."""
    path, _, _ = separable
    pairs = load_preferences(path).pairs[:60]
    cfg = EnsembleConfig(model=tiny_bert, more_models=[tiny_llama], members=4, max_length=48,
                         cache_dir=str(tmp_path / "cache"))
    diffs, info = ensemble_diffs(cfg, pairs, work_dir=tmp_path / "w", progress=False)
    assert info.member_backbones == [tiny_bert, tiny_bert, tiny_llama, tiny_llama]
    assert diffs.shape == (4, 60) and (np.isfinite(diffs).sum(0) == 2).all()  # one member of each backbone
    fold = fold_of([p.id for p in pairs], 2, seed=0)
    assert np.isfinite(diffs[0][fold == 0]).all() and np.isfinite(diffs[2][fold == 0]).all()
    assert (tmp_path / "w" / "heads_1.npy").exists() and len(list((tmp_path / "cache").iterdir())) == 2
    with pytest.raises(ValueError, match="need members >= 4"):
        ensemble_diffs(replace(cfg, members=2), pairs, work_dir=tmp_path / "w")


def test_known_noise_rate_flags_by_the_flip_posterior(separable, tmp_path):
    """With ``noise_rate`` (the 10% planted here), flags read p_flipped, which is at most p_label_wrong's
    reach, is recorded beside it in the table and the review export, and the report says which score flags."""
    path, ids, flipped = separable
    cfg = AuditConfig(data=str(path), output_dir=str(tmp_path / "audit"), max_length=64, members=6,
                      cache_dir=str(tmp_path / "cache"), noise_rate=0.1)
    result = run_audit(cfg, progress=False)
    scored = result.table[result.table["category"] != "unscored"]
    assert {"p_label_wrong", "p_flipped"} <= set(scored.columns)
    flags = scored[scored["category"] == "likely_mislabeled"]
    assert len(flags) and (flags["p_flipped"] >= 0.8).all()
    assert flags["id"].isin([i for i, f in zip(ids, flipped) if f]).mean() >= 0.8
    assert result.summary["trust"]["flagged_by"] == "p_flipped (noise_rate 0.1)"
    assert "p_flipped" in pd.read_csv(tmp_path / "audit" / "flagged.csv").columns
    report = (tmp_path / "audit" / "report.html").read_text()
    assert "probability of having been flipped" in report and "--preset posterior</code> gives every" in report
    with pytest.raises(ValueError, match="noise_rate"):
        run_audit(replace(cfg, noise_rate=0.6), progress=False)


def test_a_capped_audit_says_what_it_left_out_and_denoise_keeps_those_pairs(tiny_bert, shared_data, tmp_path):
    """--max-pairs: a seeded sample is audited, every other row stays in the tables as not_sampled, the report says
    so, and rmkit denoise keeps the training pairs the audit never scored (action "kept (no strength)")."""
    from rmkit.denoise import DenoiseConfig, run_denoise

    pairs = load_preferences(shared_data / "hh-rlhf" / "helpful-base" / "test.jsonl.gz", limit=80).pairs
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"id": p.id, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected})
                            + "\n" for p in pairs))
    cfg = AuditConfig(data=str(path), model=tiny_bert, output_dir=str(tmp_path / "audit"), max_length=32, members=4,
                      max_pairs=30, cache_dir=str(tmp_path / "cache"))
    result = run_audit(cfg, progress=False)
    table = pd.read_parquet(tmp_path / "audit" / "strength.parquet")
    assert list(table["id"]) == [p.id for p in pairs]  # every row, in input order
    assert (table["status"] == "not_sampled").sum() == 50 and (table["category"] != "unscored").sum() == 30
    assert table.loc[table["status"] == "not_sampled", "mean"].isna().all()
    assert result.summary["scored_pairs"] == 30 and "50 usable pairs not audited" in result.report()
    assert "--max-pairs 30</code>; the other 50 usable pairs were not audited" in (
        tmp_path / "audit" / "report.html").read_text()
    again = run_audit(replace(cfg, output_dir=str(tmp_path / "again")), progress=False)  # same seed, same sample
    assert list(again.table["status"]) == list(result.table["status"])
    run_denoise(DenoiseConfig(strength=str(tmp_path / "audit" / "strength.parquet"), preset="flip", fraction=0.1,
                              output_dir=str(tmp_path / "den"), act_unjudged=True))  # a tiny model judges nothing
    actions = pd.read_parquet(tmp_path / "den" / "actions.parquet").set_index("id")["denoise_action"]
    left = table.loc[table["status"] == "not_sampled", "id"]
    assert len(actions) == 80 and set(actions[left]) == {"kept (no strength)", "kept (held out)"}
    assert actions[~actions.index.isin(left)].str.startswith("flipped").sum() > 0  # the sample's pairs were acted on


def test_finetuned_members_of_another_run_are_refused(tiny_bert, tmp_path):
    """Issue 41, item 1: finished members are reused only for the run they belong to; another file or other settings
    in the same output folder are refused, naming what changed, instead of scoring the first run's members."""
    recs = [{"id": f"q{i}", "prompt": f"question {i}", "chosen": "a helpful, polite answer", "rejected": "go away"}
            for i in range(16)]
    other = [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} if i == 3 else r for i, r in enumerate(recs)]
    common = dict(model=tiny_bert, members=2, folds=2, backbone="finetune_members", max_length=16,
                  finetune_epochs=1, finetune_batch_size=4, finetune_lr=1e-3, device="cpu")
    ensemble_diffs(EnsembleConfig(**common), load_preferences(recs).pairs, work_dir=tmp_path / "work", progress=False)
    with pytest.raises(ValueError, match=r"holds members trained with other settings \(data \(content of the pairs\)\)"):
        ensemble_diffs(EnsembleConfig(**common), load_preferences(other).pairs, work_dir=tmp_path / "work",
                       progress=False)
    with pytest.raises(ValueError, match=r"other settings \(finetune_lr\)"):
        ensemble_diffs(EnsembleConfig(**{**common, "finetune_lr": 2e-3}), load_preferences(recs).pairs,
                       work_dir=tmp_path / "work", progress=False)
    (tmp_path / "work" / "identity.json").unlink()  # work of a run that recorded nothing cannot be matched either
    with pytest.raises(ValueError, match="recorded no settings"):
        ensemble_diffs(EnsembleConfig(**common), load_preferences(recs).pairs, work_dir=tmp_path / "work",
                       progress=False)


def test_outputs_never_land_in_the_data_folder(separable, tmp_path):
    """Issue 41, item 6: an output folder inside a data folder would be read back as data by the next run (120 pairs
    instead of 40, prompts compounding): refused before anything loads; an output_dir that is a file too."""
    path, _, _ = separable
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "pairs.jsonl").write_text(path.read_text())
    for out in (data_dir, data_dir / "audit"):
        with pytest.raises(ValueError, match="inside .*the data folder"):
            run_audit(AuditConfig(data=str(data_dir), output_dir=str(out), members=2))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        run_audit(AuditConfig(data=str(path), output_dir=str(tmp_path / "file"), members=2))
    assert sorted(p.name for p in data_dir.iterdir()) == ["pairs.jsonl"]  # nothing written there


def test_every_phase_of_an_audit_says_what_it_does(separable, tmp_path, capfd):
    """Issue 46, item 3: after encoding, a 1,000-pair audit ran ~8 minutes without a line. Each phase now reports."""
    path, _, _ = separable
    run_audit(AuditConfig(data=str(path), output_dir=str(tmp_path / "a"), members=4, max_length=32,
                          cache_dir=str(tmp_path / "cache")), progress=True)
    err = capfd.readouterr().err
    for phase in ("encoding", "heads (L2 search, then the members), by layer", "counting the response lengths",
                  "calibrating p_label_wrong (length, cross-fitted)", "writing the tables", "drawing the figures",
                  "writing report.html", "rmkit audit: done"):
        assert phase in err, phase


def test_a_review_budget_by_precision_lists_as_many_pairs_as_keep_it(separable, tmp_path):
    """Issue 42, item 5: the user says the precision they need; flagged.csv lists the most suspect pairs, as many as
    keep the calibration's expected precision at or above it, and the summary shows what every budget buys."""
    path, _, _ = separable
    res = run_audit(AuditConfig(data=str(path), output_dir=str(tmp_path / "a"), members=4, max_length=32,
                                cache_dir=str(tmp_path / "cache"), review_precision=0.6), progress=False)
    budget = res.summary["trust"]["review_budget"]
    k = max(b["k"] for b in budget if b["expected_precision"] >= 0.6)
    listed = pd.read_csv(tmp_path / "a" / "flagged.csv")
    assert len(listed) == k > 0
    assert all(0 <= b["expected_recall"] <= 1 for b in budget)
    page = (tmp_path / "a" / "report.html").read_text()
    assert "What a review budget buys" in page
    # the default calibration's length term: what it does not flag, and the setting that would
    assert res.summary["trust"]["length_term"] and "<code>--calibration temperature</code>" in page


def test_streamed_heads_reproduce_the_full_batch_solution(tmp_path, monkeypatch):
    """Issue 44, item 3: heads read a memory-mapped feature cache a chunk at a time (memory: one chunk, not (N, H)),
    or hold it whole and run the loss's backward a slice at a time (memory: no (M, N) intermediates), and reach the
    full-batch solution."""
    rng = np.random.default_rng(0)
    n, h = 3000, 24
    fc = np.lib.format.open_memmap(tmp_path / "c.npy", mode="w+", dtype=np.float32, shape=(n, h))
    fr = np.lib.format.open_memmap(tmp_path / "r.npy", mode="w+", dtype=np.float32, shape=(n, h))
    w_true = rng.normal(size=h)
    fc[:], fr[:] = rng.normal(size=(n, h)), rng.normal(size=(n, h))
    flip = rng.random(n) < 1 / (1 + np.exp((np.asarray(fc) - np.asarray(fr)) @ w_true))
    fc[flip], fr[flip] = np.asarray(fr[flip]), np.asarray(fc[flip])
    train = (rng.random((3, n)) < 0.7).astype(np.float32)
    labels = np.where(rng.random(n) < 0.1, 0.5, 1.0)
    full = train_bt_heads(np.asarray(fc), np.asarray(fr), train, l2=[1e-3, 1e-2, 1e-1], labels=labels)
    streamed = train_bt_heads(fc, fr, train, l2=[1e-3, 1e-2, 1e-1], labels=labels, chunk_rows=700)
    np.testing.assert_allclose(streamed, full, rtol=1e-5, atol=1e-6)
    import rmkit.heads

    monkeypatch.setattr(rmkit.heads, "LOSS_ROWS", 500)  # held whole, the loss's backward a slice at a time
    sliced = train_bt_heads(np.asarray(fc), np.asarray(fr), train, l2=[1e-3, 1e-2, 1e-1], labels=labels)
    np.testing.assert_allclose(sliced, full, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head_diffs(streamed, fc, fr), head_diffs(full, np.asarray(fc), np.asarray(fr)),
                               rtol=1e-5, atol=1e-5)


def test_bounded_feature_caches_store_half_or_projected(separable, tmp_path):
    """Issue 44, item 2: the cache's size is the user's to choose: float16 halves it, a seeded random projection
    sets its width; each is a cache entry of its own, and the ensemble runs on either."""
    path, _, _ = separable
    pairs = load_preferences(path).pairs[:40]
    rm = RewardModel.from_pretrained("minilm", max_length=32)
    full = encode_features(rm, pairs, cache_dir=tmp_path, model_id="minilm", layers=[3], progress=False)
    half = encode_features(rm, pairs, cache_dir=tmp_path, model_id="minilm", layers=[3], progress=False,
                           store="float16")
    proj = encode_features(rm, pairs, cache_dir=tmp_path, model_id="minilm", layers=[3], progress=False, dim=64)
    assert half[0].dtype == np.float16 and half[0].nbytes * 2 == full[0].nbytes
    np.testing.assert_allclose(half[0].astype(np.float32), full[0], rtol=2e-3, atol=2e-3)
    assert proj[0].shape == (40, 1, 64)
    from rmkit.ensemble import random_projection

    np.testing.assert_allclose(proj[0][:, 0], full[0][:, 0] @ random_projection(384, 64), rtol=1e-4, atol=1e-4)
    assert len({p.name for p in tmp_path.iterdir()}) == 3  # three cache entries
    res = run_audit(AuditConfig(data=str(path), output_dir=str(tmp_path / "a"), members=2, max_length=32,
                                cache_dir=str(tmp_path / "c2"), feature_store="float16", feature_dim=128),
                    progress=False)
    assert res.summary["scored_pairs"] > 0


def test_length_term_reads_a_negligible_coefficient_as_nothing():
    """A length coefficient whose effect at the median length difference is tiny (hh-rlhf's audit fits b = -0.002)
    is not reported as "these labels favour the shorter response"; a real one names its direction and size."""
    from rmkit.audit import _length_term

    d = np.array([-40.0, -10, 5, 20, 60])  # median |sign(d) log(1 + |d|)| = log 21 = 3.04
    tiny = _length_term({"a": np.array([1.5, 1.4]), "b": np.array([-0.002, -0.0014])}, "tokens", d)
    assert "adds next to nothing" in tiny["says"] and "favour" not in tiny["says"]
    assert tiny["log_odds_at_median_length_diff"] == pytest.approx(0.0017 * np.log(21))
    real = _length_term({"a": np.array([1.0]), "b": np.array([0.3])}, "tokens", d)
    assert "favour the longer response" in real["says"] and "0.91 at the median" in real["says"]
    # subsets calibrated apart: each says its own term; the top line reads the shared calibration's pairs only
    groups = np.array(["x", "x", "y", "y", "z"], dtype=object)
    coef = {"a": np.ones(5), "b": np.array([0.3, 0.3, -0.4, -0.4, 0.001])}
    apart = _length_term(coef, "tokens", d, groups, ["x", "y"])
    assert "favour the longer" in apart["by_subset"]["x"]["says"]
    assert "favour the shorter" in apart["by_subset"]["y"]["says"]
    assert "adds next to nothing" in apart["says"] and apart["b_length"] == pytest.approx(0.001)
    every = _length_term(coef, "tokens", d, groups, ["x", "y", "z"])  # no shared calibration left: no pooled line
    assert every["b_length"] is None and "within each subset" in every["says"]
    assert [v["leans"] for v in every["by_subset"].values()] == ["longer", "shorter", "neither"]
