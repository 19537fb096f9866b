"""The gold-standard lab: the sampling law, planted flips, the gold on a tiny model, and studies by hand."""

import json

import numpy as np
import pandas as pd
import pytest

from rmkit.data import load_preferences
from rmkit.gold import gold_scorer
from rmkit.gold import fit_gold, load_gold
from rmkit.lab import (LabConfig, ProxyFeatures, choose_temperature, detection_metrics, expected_against, lab_pairs,
                       lab_summary, orient, read_gold_scores, run_lab, sample_labels, study_denoise, study_flips,
                       study_learnability)
from rmkit.ensemble import EnsembleConfig, member_layers


def test_labels_follow_the_bradley_terry_law_at_the_temperature():
    rng = np.random.default_rng(0)
    g = rng.normal(0, 2, 40_000)
    ids = [str(i) for i in range(len(g))]
    for target in (0.1, 0.225):
        t = choose_temperature(g, target)
        assert expected_against(g, t) == pytest.approx(target, abs=1e-6)
        lab = sample_labels(ids, g, t, seed=1)
        assert lab["against_gold"].mean() == pytest.approx(target, abs=0.01)  # fails if T were ignored
        # The law itself: among pairs with gold difference near x, P(label prefers chosen) = sigmoid(x / T).
        near = np.abs(g - 1.0) < 0.1
        assert lab["label"][near].mean() == pytest.approx(1 / (1 + np.exp(-1.0 / t)), abs=0.03)
    hot, cold = choose_temperature(g, 0.3), choose_temperature(g, 0.05)
    assert hot > cold


def test_planted_flips_are_where_the_record_says():
    g = np.linspace(-3, 3, 1000)
    ids = [f"p{i}" for i in range(1000)]
    clean = sample_labels(ids, g, 0.5, seed=3)
    noisy = sample_labels(ids, g, 0.5, flips=0.2, seed=3)
    assert noisy["flipped"].sum() == 200
    assert (noisy["sampled"] == clean["sampled"]).all()  # same draw, flips on top
    assert ((noisy["label"] != noisy["sampled"]) == noisy["flipped"]).all()
    assert (noisy["against_gold"] == ((noisy["label"] == 1) != (g > 0))).all()
    recs = [{"id": i, "prompt": "q", "chosen": f"A{i}", "rejected": f"B{i}"} for i in ids[:6]]
    pairs = load_preferences(recs).pairs
    lab = lab_pairs(pairs, noisy.iloc[:6])
    for p, row in zip(lab, noisy.iloc[:6].itertuples()):
        assert p.chosen_text.startswith("A" if row.label else "B") and p.id == row.id
    a, b = orient(np.arange(6.0), -np.arange(6.0), noisy["label"].to_numpy()[:6])
    assert np.all(np.where(noisy["label"][:6] == 1, a == np.arange(6.0), a == -np.arange(6.0)))
    assert np.all(a == -b)


def test_detection_metrics_by_hand():
    m = detection_metrics(np.array([0.9, 0.8, 0.1, 0.7]), np.array([1, 0, 0, 1]))
    assert m["auroc"] == pytest.approx(0.75)  # positive-negative orderings right: (0.9>0.8, 0.9>0.1, 0.7>0.1) of 4
    assert m["precision_at_k"] == 0.5 and m["precision_top5pct"] == 1.0


def _proxy(n=600, dim=8, layers=2, seed=0):
    """Features whose gold is linear in them: a proxy that can learn the gold exactly."""
    rng = np.random.default_rng(seed)
    fc = rng.normal(0, 1, (n, layers, dim))
    fr = rng.normal(0, 1, (n, layers, dim))
    w = rng.normal(0, 1, dim)
    gold = (fc[:, -1] - fr[:, -1]) @ w
    cfg = EnsembleConfig(members=4, head_l2=1e-3)
    return ProxyFeatures(fc, fr, list(range(1, layers + 1)), cfg, [f"p{i}" for i in range(n)], layers), gold


def test_proxy_trains_an_ensemble_once_per_labels_and_seed(monkeypatch):
    """Learnability and strength fidelity train the same ensemble on the same labels: the second call reuses the
    first's heads, other labels or seeds train anew, and a caller writing into its diffs changes no later call."""
    import rmkit.lab.proxies

    proxy, gold = _proxy(n=200)
    calls, heads = [], rmkit.lab.proxies.heads_on_features
    monkeypatch.setattr(rmkit.lab.proxies, "heads_on_features", lambda *a, **k: calls.append(1) or heads(*a, **k))
    y = gold > 0
    first = proxy.ensemble(y, seed=0)
    first[:] = 0.0
    again = proxy.ensemble(y, seed=0)
    assert len(calls) == 1 and np.isfinite(again).any() and np.nanmax(np.abs(again)) > 0
    proxy.ensemble(~y, seed=0)
    proxy.ensemble(y, seed=1)
    assert len(calls) == 3
    fresh, _ = _proxy(n=200)  # a new proxy trains its own: the same numbers as the reused ones
    np.testing.assert_array_equal(fresh.ensemble(y, seed=0), again)


def test_studies_on_a_learnable_case():
    proxy, gold = _proxy()
    t = choose_temperature(gold, 0.1)
    learn = study_learnability(proxy, gold, t, seeds=1)
    assert learn["ensemble"] > 0.85 and learn["labels_with_gold"] == pytest.approx(0.9, abs=0.04)
    flips = study_flips(proxy, gold, t, levels=[0.2], seeds=1, with_cleanlab=False)["0.2"]
    assert flips["rmkit"]["auroc"] > 0.8 and flips["calibrated_flags"]["precision_flagged"] > 0.5
    # The ceiling: the gold ranking the same labels (seed 0's draw) by how far they go against it, by hand.
    lab = sample_labels(proxy.ids, gold, t, flips=0.2, seed=0)
    against = np.where(lab["label"] == 1, -gold, gold)
    flipped = lab["flipped"].to_numpy()
    pairs_ranked = (against[flipped][:, None] > against[~flipped][None, :]).mean()
    assert flips["gold_oracle"]["auroc"] == pytest.approx(pairs_ranked)
    assert flips["rmkit"]["auroc"] <= flips["gold_oracle"]["auroc"]
    # One cross-fitted head per block: every pair scored once per block (the two folds' members together).
    y = lab["label"].to_numpy().astype(bool)
    heads = proxy.by_layer(proxy.ensemble(y, seed=0), seed=0)
    assert sorted(heads) == sorted(set(member_layers(proxy.cfg, proxy.num_layers)))
    assert all(h.shape == (len(proxy.ids),) and np.isfinite(h).all() for h in heads.values())
    assert flips["best_single_block"]["layer"] in heads
    den = study_denoise(proxy, gold, t, noise=0.2, seeds=1, presets=("flip", "drop", "posterior"),
                        ceiling=("flip",))
    assert set(den["accuracy"]) == {"0.0", "0.2"} and den["lost"] > 0
    # the gold's ranking is a bound, never the best method
    assert den["best_preset"] in ("flip", "drop", "flip@reviewed", "drop@reviewed", "posterior@reviewed")
    assert "flip@gold" in den["recovered_share"] and "flip@gold" not in den["below_baseline_at_0"]
    acc = den["accuracy"]
    assert den["recovered_share"]["flip"] == pytest.approx(
        (acc["0.2"]["flip"]["mean"] - acc["0.2"]["baseline"]["mean"]) / den["lost"])
    # At the reviewed rate: the share of planted flips among 100 random training pairs; with none planted the
    # presets act on nothing, so they equal the baseline exactly.
    assert den["reviewed_rate"]["0.0"] == [0.0] and 0.1 <= den["reviewed_rate"]["0.2"][0] <= 0.3
    assert acc["0.0"]["flip@reviewed"]["runs"] == acc["0.0"]["baseline"]["runs"]
    assert acc["0.0"]["drop@reviewed"]["runs"] == acc["0.0"]["baseline"]["runs"]
    # posterior selects nothing, so it runs only at a flip rate; at rate 0 every label stays 1: the baseline exactly
    assert "posterior" not in acc["0.2"] and "posterior@reviewed" in acc["0.2"]
    assert acc["0.0"]["posterior@reviewed"]["runs"] == acc["0.0"]["baseline"]["runs"]
    assert "flip@reviewed" in den["recovered_share"]
    # One seed: every resample of the seeds is that seed, so the interval is the point itself.
    assert den["recovered_share_ci95"]["flip"] == pytest.approx([den["recovered_share"]["flip"]] * 2)


def test_denoise_ceiling_names_presets_that_rank_pairs():
    from rmkit.config import validate

    validate(LabConfig(denoise_ceiling=["flip", "flip+margin"]))
    for bad in ("posterior", "flipp"):  # posterior ranks nothing: the gold's ranking has nothing to replace
        with pytest.raises(ValueError, match=f"denoise_ceiling: unknown presets \\['{bad}'\\]"):
            validate(LabConfig(denoise_ceiling=[bad]))


def test_gold_and_run_lab_on_tiny_models(tiny_bert, shared_data, tmp_path):
    data = shared_data / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"
    pairs = load_preferences(data, limit=48).pairs
    gold = fit_gold(tiny_bert, pairs, max_length=32, progress=False)
    g = gold.diffs(pairs, progress=False)
    assert g.shape == (len(pairs),) and np.isfinite(g).all() and gold.info["layer"] == 2
    # The gold scores a policy's response the same way it scores a pair's side.
    r = gold.score([pairs[0].prompt, pairs[0].prompt], [pairs[0].chosen, pairs[0].rejected])
    assert r[0] - r[1] == pytest.approx(g[0], abs=1e-4)
    # Encoding precision: the gold in bf16 autocast stays close to fp32 and says which it ran in; the proxies
    # follow the lab's precision unless their own settings name one.
    g16 = fit_gold(tiny_bert, pairs, max_length=32, progress=False, precision="bf16")
    assert (gold.info["precision"], g16.info["precision"]) == ("fp32", "bf16")
    d16 = g16.diffs(pairs, progress=False)
    assert not np.array_equal(g, d16) and np.corrcoef(g, d16)[0, 1] > 0.99
    assert LabConfig(precision="fp32").proxy_config().precision == "fp32"
    assert LabConfig(precision="fp32", proxy={"precision": "bf16"}).proxy_config().precision == "bf16"
    assert LabConfig(device="cpu").proxy_config().device == "cpu"
    with pytest.raises(ValueError, match="device must be"):
        LabConfig(data="x", device="gpu").check()
    cfg = LabConfig(data=str(data), output_dir=str(tmp_path / "lab"), gold_model=tiny_bert, gold_max_length=32,
                    seeds=1, flip_levels=[0.2], studies=["learnability", "strength"],
                    proxy={"model": tiny_bert, "members": 4, "max_length": 32, "cache_dir": str(tmp_path / "c")})
    cfg_small = cfg
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps({"id": p.id, "prompt": p.prompt, "chosen": p.chosen,
                                         "rejected": p.rejected}) + "\n" for p in pairs))
    cfg_small.data = str(small)
    out = run_lab(cfg_small, progress=False)
    labels = pd.read_parquet(tmp_path / "lab" / "labels.parquet")
    assert len(labels) == len(pairs) and set(labels["id"]) == {p.id for p in pairs}
    assert out["against_gold"] == pytest.approx(labels["against_gold"].mean())
    assert 0 <= out["proxy_gold_accuracy"] <= 1 and "strength_spearman" in out
    assert out["gold"]["precision"] == out["proxy_precision"] and out["proxy_precision"] in ("fp32", "bf16")
    # What `rmkit lab` prints: the headline of the studies that ran, none of the others.
    summary = lab_summary(out)
    assert summary["proxy_gold_accuracy"] == out["proxy_gold_accuracy"] and summary["pairs"] == len(pairs)
    assert "flips_auroc" not in summary and "denoise" not in summary
    # Whether the gold reads the prompt, recorded with it (48 pairs: every chosen response under another prompt).
    sens = out["gold"]["prompt_sensitivity"]
    assert sens["responses"] == len(pairs) and summary["gold"]["prefers_own_prompt"] == sens["prefers_own"]
    # Standard JSON: an undefined metric (e.g. precision with nothing flagged) is null, never the NaN token.
    saved = json.loads((tmp_path / "lab" / "lab.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert saved["temperature"] == pytest.approx(out["temperature"])
    # Reusing the saved gold scores encodes nothing with the gold and gives the same labels.
    again = run_lab(LabConfig(**{**cfg_small.__dict__, "gold_scores": str(tmp_path / "lab" / "gold.parquet"),
                                 "output_dir": str(tmp_path / "lab2"), "studies": []}), progress=False)
    assert again["temperature"] == pytest.approx(out["temperature"])
    # ... and its output folder is the same saved gold (the head comes along with the scores).
    np.testing.assert_array_equal(np.load(tmp_path / "lab2" / "gold_head.npy"), np.load(tmp_path / "lab" / "gold_head.npy"))
    assert gold_scorer(str(tmp_path / "lab2")).info["layer"] == out["gold"]["layer"]
    # The saved head is the same gold: loaded for a second domain, here the same pairs, it encodes them again
    # and gives the same differences; a head of another backbone's width is refused, naming its file.
    head = tmp_path / "lab" / "gold_head.npy"
    third = run_lab(LabConfig(**{**cfg_small.__dict__, "gold_head": str(head), "output_dir": str(tmp_path / "lab3"),
                                 "studies": []}), progress=False)
    ids = [p.id for p in pairs]
    np.testing.assert_allclose(read_gold_scores(tmp_path / "lab3" / "gold.parquet", ids),
                               read_gold_scores(tmp_path / "lab" / "gold.parquet", ids), rtol=1e-5, atol=1e-7)
    assert third["temperature"] == pytest.approx(out["temperature"], rel=1e-4) and third["gold"]["head"] == str(head)
    # The lab's output folder is a gold for policy samples (`rmkit bon --gold runs/lab`): it rebuilds the same
    # gold from gold.json and gold_head.npy, and scores a pair's sides to the difference gold.parquet holds.
    lab_gold = gold_scorer(str(tmp_path / "lab"), precision=out["gold"]["precision"])
    r = lab_gold.score([p.prompt for p in pairs[:3]] * 2, [p.chosen for p in pairs[:3]] + [p.rejected for p in pairs[:3]])
    np.testing.assert_allclose(r[:3] - r[3:], read_gold_scores(tmp_path / "lab" / "gold.parquet", ids)[:3], atol=1e-4)
    np.save(tmp_path / "wide.npy", np.zeros(7))
    with pytest.raises(ValueError, match="wide.npy"):
        load_gold(tmp_path / "wide.npy", tiny_bert)
    with pytest.raises(ValueError, match="not both"):
        LabConfig(data="x", gold_head=str(head), gold_scores=str(head)).check()
    with pytest.raises(ValueError, match="unknown studies"):
        LabConfig(data="x", studies=["bon-typo"]).check()


def test_study_bon_on_a_hacked_proxy():
    """One sample games the single proxy (and one member); the min of the ensemble does not pick it."""
    from rmkit.bon import study_bon

    gold = np.array([[0.0, 1.0, 2.0, 3.0]])
    single = np.array([[10.0, 1.0, 2.0, 3.0]])
    members = np.array([[[10.0, 1.0, 2.0, 3.0]], [[-10.0, 1.0, 2.0, 3.0]]])
    out = study_bon(gold, single, members, [1, 2, 4])
    assert out["gold_reward"]["single"][0] == pytest.approx(1.5) and out["gold_reward"]["single"][-1] == 0.0
    assert out["gold_reward"]["min"][-1] == 3.0 and out["gold_reward"]["oracle_gold"][-1] == 3.0
    assert out["single_peak_n"] == 1 and out["conservative_recovery"] == pytest.approx(3.0 / 1.5)
    assert out["kl_bon"][0] == 0.0
    # gains from n = 1 (1.5 for every pick) to n = 4, over the oracle's 3.0 - 1.5
    assert out["oracle_gain_share"]["single"] == pytest.approx(-1.0) and out["oracle_gain_share"]["min"] == 1.0
    assert out["drops"]["single"] == {"drop": pytest.approx(1.5), "ci95": [pytest.approx(1.5)] * 2, "peak_index": 0,
                                  "established": True}
    assert out["vs_single_at_largest_n"]["min"] == {"gap": 3.0, "ci95": [3.0, 3.0], "established": True,
                                                    "worse": False}
    # A second prompt where the single proxy is right: the drop rests on one prompt of two, is not established, and
    # the recovery (a ratio over it) is not reported
    two = study_bon(np.vstack([gold, gold]), np.vstack([single, gold]), np.concatenate([members, members], axis=1),
                    [1, 2, 4])
    assert two["single_drop_from_peak"] > 0 and not two["drops"]["single"]["established"]
    assert np.isnan(two["conservative_recovery"])


def test_each_member_alone_averages_the_members_curves():
    """The hacked member picks the worst sample at n = 4, the honest one the best: one member drawn at random
    ends at their average, and the min of the two (never fooled) ends 3.0 - 1.5 above it."""
    from rmkit.bon import bon_variant_tables, each_member_alone

    gold = np.array([[0.0, 1.0, 2.0, 3.0]])
    members = np.array([[[10.0, 1.0, 2.0, 3.0]], [[-10.0, 1.0, 2.0, 3.0]]])
    tables = bon_variant_tables(gold, members[0], members, [1, 2, 4])
    out = each_member_alone(tables, gold, members, [1, 2, 4])
    hacked, honest = out["single_each_member"]
    assert hacked == tables["single"].mean(axis=0).tolist() and hacked[-1] == 0.0 and honest[-1] == 3.0
    avg = out["single_mean_over_members"]
    assert avg["gold_reward"] == pytest.approx([(a + b) / 2 for a, b in zip(hacked, honest)])
    assert avg["aggregations_vs_it_at_largest_n"]["min"]["gap"] == pytest.approx(1.5)


def test_gap_interval_is_paired_by_prompt():
    from rmkit.bon import gap_interval

    # prompts differ by 10 in level; the pick is 1 better on each: paired, the interval is exactly [1, 1]
    base = np.array([[0.0, 0.0], [10.0, 10.0], [-10.0, -10.0]])
    assert gap_interval(base + [0.0, 1.0], base) == {"gap": 1.0, "ci95": [1.0, 1.0], "established": True,
                                                      "worse": False}
    # better on one prompt, worse on another: neither established nor worse
    mixed = gap_interval(base + [[0.0, 2.0], [0.0, -2.0], [0.0, 0.0]], base, seed=3)
    assert mixed["gap"] == 0.0 and mixed["ci95"][0] < 0 < mixed["ci95"][1]
    assert not mixed["established"] and not mixed["worse"]
    assert gap_interval(base - [0.0, 1.0], base)["worse"]


def test_drop_interval_says_when_a_drop_is_more_than_one_prompt():
    from rmkit.bon import drop_interval

    # every prompt falls by 1 after n = 2: an established drop
    assert drop_interval(np.array([[0.0, 2.0, 1.0]] * 3)) == {"drop": 1.0, "ci95": [1.0, 1.0], "peak_index": 1,
                                                               "established": True}
    # one prompt of three makes the whole drop: resamples without it show none, so it is not established
    one = drop_interval(np.array([[0.0, 4.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), seed=1)
    assert one["drop"] == pytest.approx(4 / 3) and one["ci95"][0] == 0.0 and not one["established"]
    # still rising at the largest n: no drop
    assert drop_interval(np.array([[0.0, 1.0, 2.0], [0.0, 0.5, 1.0]]))["drop"] == 0.0


def test_study_shift_grades_against_the_gold_on_sample_pairs():
    """Vanilla and MetaRM heads on a learnable case: every pair of an eval prompt's samples is graded against the
    gold (10 pairs of 5 samples), the vanilla head gets them right, and MetaRM runs Algorithm 1's step."""
    from rmkit.lab import study_shift

    rng = np.random.default_rng(0)
    w = rng.normal(size=8)
    fc, fr = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    swap = (fc - fr) @ w < 0
    fc[swap], fr[swap] = fr[swap].copy(), fc[swap].copy()  # chosen is what w prefers
    meta, ev = rng.normal(size=(6, 4, 8)), rng.normal(size=(3, 5, 8))
    gold = ev @ w
    out = study_shift(fc, fr, np.ones(300, bool), meta, ev, gold, steps=20, batch_pairs=16, meta_prompts=2,
                      inner_lrs=(0.1,))
    assert out["pairs_per_prompt"] == 10 and set(out["metarm"]) == {"0.1"}
    # by hand: the vanilla head ranks the samples as w does, so every pair with a gold gap is right
    assert out["vanilla"]["accuracy"] > 0.9 and out["metarm"]["0.1"]["J"] > 0


def test_grade_sample_pairs_by_hand():
    """One prompt, 3 samples: pairs (0,1), (0,2), (1,2); the proxy orders only (0,1) as the gold does."""
    from rmkit.lab import grade_sample_pairs

    gold = np.array([[3.0, 1.0, 0.0]])  # gaps 2, 3, 1: the larger-gap half (>= median 2) is (0,1) and (0,2)
    proxy = np.array([[0.5, 0.0, 0.9]])  # (0,1) right; (0,2) and (1,2) reversed
    got = grade_sample_pairs(proxy, gold)
    assert got["accuracy"] == pytest.approx(1 / 3)  # only (0,1) is ordered as the gold orders it
    assert got["accuracy_large_gap"] == pytest.approx(1 / 2)
    # J (Eq. 11) by hand: (2/k^2) * sum over pairs of sigmoid(|r_i - r_j|), k = 3
    sig = 1 / (1 + np.exp(-np.array([0.5, 0.9, 0.4])))  # |r_0 - r_1|, |r_0 - r_2|, |r_1 - r_2|
    assert got["J"] == pytest.approx(2 / 9 * sig.sum(), rel=1e-6)


def test_json_safe_turns_undefined_metrics_into_null(tmp_path):
    import json
    from pathlib import Path

    from rmkit.files import json_safe, write_json

    x = {"a": float("nan"), "b": [1.0, np.float32("nan"), {"c": np.float64(2.0)}], "d": (float("nan"), "s"), "e": None,
         "f": np.array([1, 2]), "g": np.int64(3), "h": float("-inf"), "p": Path("x/y"), np.int64(4): True}
    want = {"a": None, "b": [1.0, None, {"c": 2.0}], "d": [None, "s"], "e": None, "f": [1, 2], "g": 3, "h": None,
            "p": "x/y", 4: True}
    assert json_safe(x) == want
    write_json(tmp_path / "r.json", x)  # strict: a parser that refuses NaN/Infinity tokens reads it back

    def refuse(token):
        raise ValueError(token)

    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=refuse) == {str(k): v for k, v in want.items()}


def test_gold_accuracy_counts_sign_agreement():
    from rmkit.lab import gold_accuracy

    # agree, agree, disagree, and a proxy tie (0) against a positive gold: wrong
    assert gold_accuracy(np.array([1.0, -2.0, 0.5, 0.0]), np.array([0.3, -0.1, -4.0, 1.0])) == 0.5


def test_lab_bon_repeated_draws_pool_the_draws_curves(monkeypatch):
    """benchmarks/lab_bon.py --draws: each draw trains on other pairs of the training split, and the pooled curve
    of every variant is the average of the draws' curves (one member: the average of the members alone)."""
    from rmkit.bon import bon_ns, bon_table
    from rmkit.lab import draws as lab_bon

    train = np.array([True] * 30 + [False] * 10)
    subs = [lab_bon.train_subset(train, "10", seed=0, draw=d) for d in range(3)]
    assert all(s.sum() == 10 and not s[~train].any() for s in subs) and (subs[0] != subs[1]).any()
    assert (lab_bon.train_subset(train, "all", seed=0) == train).all()
    gold = np.random.default_rng(0).normal(size=(6, 8))

    def score(sub, seed):  # a draw's proxies: the gold plus noise of that draw's seed
        r = np.random.default_rng(seed)
        return gold + r.normal(size=gold.shape), gold[None] + 2 * r.normal(size=(3, *gold.shape))

    ns = bon_ns(8)
    out = lab_bon.repeated_draws(score, gold, train, "10", ns, draws=3, seed=0, uwo_lambda=0.5)
    by_hand = [score(None, s) for s in range(3)]
    assert out["pooled"]["gold_reward"]["single"] == pytest.approx(
        np.mean([bon_table(single, gold, ns).mean(0) for single, _ in by_hand], axis=0))
    assert out["pooled"]["gold_reward"]["one_member"] == pytest.approx(
        np.mean([bon_table(m, gold, ns).mean(0) for _, members in by_hand for m in members], axis=0))
    assert len(out["per_draw"]) == 3 and out["per_draw"][1]["at_largest_n"]["single"] == pytest.approx(
        bon_table(by_hand[1][0], gold, ns)[:, -1].mean())


def test_prompt_sensitivity_tells_an_answer_judge_from_a_response_scorer():
    from rmkit.lab import prompt_sensitivity
    from rmkit.relevance import other_prompt

    topics = ["cats", "rivers", "chess", "bread", "volcanoes"]
    prompts = [[{"role": "user", "content": f"tell me about {t}"}] for t in topics for _ in range(3)]  # 3 samples each
    responses = [[{"role": "assistant", "content": f"{t} are {'very ' * j}interesting"}] for t in topics
                 for j in range(3)]

    def overlap(p, r):  # rewards words the response shares with the question: reads the prompt
        return [len(set(a[-1]["content"].split()) & set(b[-1]["content"].split())) for a, b in zip(p, r)]

    seen = []

    def length_only(p, r):  # the response alone
        seen.append(p)
        return [len(b[-1]["content"]) for b in r]

    judge = prompt_sensitivity(overlap, prompts, responses)
    assert judge["prefers_own"] == 1.0 and judge["mean_gap"] == 1.0 and judge["responses"] == 15
    blind = prompt_sensitivity(length_only, prompts, responses)
    assert blind["prefers_own"] == 0.0 and blind["mean_gap"] == 0.0 and blind["ci95"] == [0.0, 0.0]
    # Each response met another topic's prompt, the same one for all samples of a prompt: the next in the cycle.
    cycle = other_prompt(5, seed=0)
    assert sorted(cycle.tolist()) == list(range(5)) and all(cycle[i] != i for i in range(5))
    assert seen[1] == [prompts[3 * cycle[i // 3]] for i in range(15)]
    with pytest.raises(ValueError, match="2 distinct prompts"):
        prompt_sensitivity(overlap, prompts[:3], responses[:3])


def test_detectors_find_planted_flips_on_a_problem_whose_answer_is_known():
    """Issue 42: each detector on a tiny planted-flip problem where the answer is known by construction: rewards that
    know the truth up to noise, 20% of labels flipped; every detector ranks the flips above the rest."""
    from rmkit.detectors import aum, cartography, cleanlab_label_issues, review_budget, tie_scores

    rng = np.random.default_rng(0)
    n = 400
    truth = np.abs(rng.normal(0, 2, n)) + 0.5  # the clean label is "chosen", with this much margin
    flipped = rng.random(n) < 0.2
    diff = np.where(flipped, -truth, truth) + rng.normal(0, 0.5, n)  # an out-of-sample RM sees the flip
    margins = np.stack([diff * (e + 1) / 5 + rng.normal(0, 0.2, n) for e in range(5)])  # dynamics: margins grow
    assert detection_metrics(cleanlab_label_issues(diff), flipped)["auroc"] > 0.7
    assert detection_metrics(aum(margins), flipped)["auroc"] > 0.7
    assert detection_metrics(1 - cartography(margins)[0], flipped)["auroc"] > 0.7
    p_wrong = 1 / (1 + np.exp(diff))
    budget = review_budget(p_wrong, budgets=[50], min_precision=0.9)
    top = [b for b in budget if b["k"] == 50][0]
    assert top["expected_precision"] == pytest.approx(np.sort(p_wrong)[::-1][:50].mean())
    assert 0 < top["expected_recall"] < 1 and max(b["expected_precision"] for b in budget) >= 0.9
    # ties: pairs whose members disagree around zero and whose responses are alike in length
    diffs = np.stack([np.r_[rng.normal(0, 0.1, 50), rng.normal(3, 0.1, 50)] for _ in range(4)])
    is_tie = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    scores = tie_scores(diffs, lengths=(np.r_[np.full(50, 20), np.full(50, 40)], np.full(100, 20)))
    assert detection_metrics(scores["small_mean"], is_tie)["auroc"] > 0.95
    assert detection_metrics(scores["similar_length"], is_tie)["auroc"] > 0.95


def test_length_calibration_fits_a_planted_length_term():
    """The length-aware calibration recovers a label law that mixes strength and length, and says how much of each
    verdict length makes."""
    from rmkit.calibration import crossfit_calibration, fit_length_aware, length_share, signed_log_length

    rng = np.random.default_rng(1)
    n = 4000
    s = rng.normal(0, 1, n)
    length = rng.integers(-200, 200, n).astype(float)
    x = signed_log_length(length)
    label = (rng.random(n) < 1 / (1 + np.exp(-(1.5 * s + 0.8 * x)))).astype(float)
    a, b = fit_length_aware(s, length, label)
    assert a == pytest.approx(1.5, rel=0.15) and b == pytest.approx(0.8, rel=0.15)
    fold = np.arange(n) % 2
    coef: dict = {}
    p = crossfit_calibration(s, fold, label, method="length", length_diff=length, coefficients=coef)
    p_plain = crossfit_calibration(s, fold, label, method="temperature")
    ll = lambda q: -np.mean(label * np.log(q) + (1 - label) * np.log(1 - q))  # noqa: E731
    assert ll(p) < ll(p_plain)
    share = length_share(s, length, coef["a"], coef["b"])
    assert share.min() >= 0 and share.max() <= 1
    only_length = (s > 0) & (x < -3)  # the ensemble agrees with the label, length alone goes against it
    assert np.all(share[only_length] == 1.0)
