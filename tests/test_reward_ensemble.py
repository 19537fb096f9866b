"""Ensemble rewards (mean, min, uwo) with normalisation, and best-of-n, on hand numbers and tiny models."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from rmkit.bon import BonConfig, best_of_n_expectation, bon_curve, kl_bon, run_bon
from rmkit.hardware import resolve_device
from rmkit.models import RewardModel
from rmkit.reward_ensemble import EnsembleRewardModel, aggregate, load_reward_model

P = [[{"role": "user", "content": q}] for q in ["How do I boil an egg?", "What is 2+2?", "Tell me a joke.", "Hi"]]
A = [[{"role": "assistant", "content": a}] for a in ["Nine minutes.", "4", "Why did the chicken...", "Hello!"]]


def test_aggregations_by_hand():
    r = np.array([[1.0, 2.0, -1.0],
                  [3.0, 2.0, 1.0]])
    np.testing.assert_allclose(aggregate(r, "mean"), [2.0, 2.0, 0.0])
    np.testing.assert_allclose(aggregate(r, "min"), [1.0, 2.0, -1.0])
    np.testing.assert_allclose(aggregate(r, "uwo", uwo_lambda=0.5), [2.0 - 0.5 * 1.0, 2.0, 0.0 - 0.5 * 1.0])
    with pytest.raises(ValueError, match="aggregation must be one of"):
        aggregate(r, "max")


def test_identical_members_equal_one_member(tiny_bert):
    rm = RewardModel.from_pretrained(tiny_bert, max_length=64)
    one = rm.score(P, A)
    for how in ("mean", "min", "uwo"):
        ens = EnsembleRewardModel([rm, rm, rm], aggregation=how, normalize="none")
        torch.testing.assert_close(ens.score(P, A), one, atol=1e-6, rtol=0)


def test_normalisation_stops_a_scaled_member_from_dominating(tiny_bert, tiny_llama):
    a = RewardModel.from_pretrained(tiny_bert, max_length=64)
    b = RewardModel.from_pretrained(tiny_llama, max_length=64)
    with torch.no_grad():
        b.head.weight.mul_(100.0)
    raw = EnsembleRewardModel([a, b], normalize="none").raw_member_scores(P, A)
    assert raw[1].std() > 20 * raw[0].std()
    ens = EnsembleRewardModel([a, b], aggregation="mean")
    with pytest.raises(ValueError, match="fit_normalization"):
        ens.score(P, A)
    ens.fit_normalization(P, A)
    z = ens.member_scores(P, A)
    np.testing.assert_allclose(z.std(1), [1.0, 1.0], atol=1e-5)  # each member counts the same
    np.testing.assert_allclose(ens.score(P, A).numpy(), z.mean(0), atol=1e-5)


def test_save_load_serve_and_trl_reward_function(tiny_bert, tiny_llama, tmp_path):
    from rmkit.serve import RewardFunction, RewardServer, ServeConfig

    for name, path in (("a", tiny_bert), ("b", tiny_llama)):
        RewardModel.from_pretrained(path, max_length=64).save_pretrained(tmp_path / name)
    members = [str(tmp_path / "a"), str(tmp_path / "b")]
    ens = EnsembleRewardModel.from_pretrained(members, aggregation="uwo", uwo_lambda=0.1)
    ens.fit_normalization(P, A)
    ens.save_pretrained(tmp_path / "ens")
    back = load_reward_model(str(tmp_path / "ens"))
    assert isinstance(back, EnsembleRewardModel) and back.aggregation == "uwo" and back.stats == ens.stats
    torch.testing.assert_close(back.score(P, A), ens.score(P, A))
    assert load_reward_model(str(tmp_path / "ens"), aggregation="min").aggregation == "min"
    assert isinstance(load_reward_model(",".join(members)), EnsembleRewardModel)
    local = RewardFunction(str(tmp_path / "ens"))(P, A)
    # fp32 like the local path: auto picks bf16 on CPUs with fast bf16, where z-scores of these tiny random members
    # (raw reward std ~1e-2) magnify its rounding
    with RewardServer(back, ServeConfig(port=0, precision="fp32")) as srv:
        import urllib.request

        body = json.dumps({"prompts": P, "completions": A, "members": True}).encode()
        req = urllib.request.Request(srv.url + "/score", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            out = json.loads(r.read())
        assert np.array(out["members"]).shape == (2, 4)
        assert out["rewards"] == pytest.approx(local, abs=1e-4)
        assert RewardFunction(url=srv.url)(P, A) == pytest.approx(local, abs=1e-4)


def test_trl_trainer_takes_the_ensemble_reward_function(tiny_bert, tiny_llama, tiny_policy, tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from rmkit.serve import RewardFunction

    ens = EnsembleRewardModel([RewardModel.from_pretrained(tiny_bert, max_length=64),
                               RewardModel.from_pretrained(tiny_llama, max_length=64)], aggregation="min")
    ens.fit_normalization(P, A)
    fn = RewardFunction(ens)
    seen = []
    wrapped = lambda prompts, completions, **kw: seen.append(fn(prompts, completions)) or seen[-1]  # noqa: E731
    wrapped.__name__ = "ensemble_min"
    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=6, max_steps=1, report_to="none", save_strategy="no", use_cpu=True,
                      logging_steps=1, seed=0, bf16=False)
    trainer = GRPOTrainer(model=tiny_policy, reward_funcs=[wrapped], args=args,
                          train_dataset=Dataset.from_list([{"prompt": q} for q in P]))
    trainer.train()
    assert seen and all(np.isfinite(x) for batch in seen for x in batch)


def test_best_of_n_expectation_by_hand():
    proxy = np.array([0.9, 0.1, 0.5])
    gold = np.array([1.0, 3.0, 2.0])
    assert best_of_n_expectation(proxy, gold, 1) == pytest.approx(2.0)  # a random sample
    assert best_of_n_expectation(proxy, gold, 3) == pytest.approx(1.0)  # always the proxy's top
    # m = 2: subsets {0,1}->0, {0,2}->0, {1,2}->2: gold (1 + 1 + 2) / 3
    assert best_of_n_expectation(proxy, gold, 2) == pytest.approx(4 / 3)
    assert bon_curve(proxy[None], gold[None], [1, 3]) == pytest.approx([2.0, 1.0])
    assert kl_bon(1) == 0.0 and kl_bon(64) == pytest.approx(np.log(64) - 63 / 64)


def test_rmkit_bon_picks_the_argmax_and_resumes(tiny_policy, tiny_bert, tiny_llama, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p[0]["content"]}) + "\n" for i, p in enumerate(P)))
    cfg = BonConfig(data=str(prompts), policy=tiny_policy, reward_model=f"{tiny_bert},{tiny_llama}", n=4,
                    max_new_tokens=5, output_dir=str(tmp_path / "bon"), aggregation="min", max_prompts=3)
    summary = run_bon(cfg, progress=False)
    scores = pd.read_parquet(tmp_path / "bon" / "scores.parquet")
    assert len(scores) == 12 and {"member_0", "member_1"} <= set(scores.columns)
    np.testing.assert_allclose(scores["reward"], scores[["member_0", "member_1"]].min(axis=1), atol=1e-6)
    best = [json.loads(x) for x in (tmp_path / "bon" / "best.jsonl").read_text().splitlines()]
    for b in best:
        mine = scores[scores["id"] == b["id"]]
        assert b["k"] == int(mine["reward"].idxmax() - mine.index[0]) and b["reward"] == pytest.approx(mine["reward"].max())
    assert summary["prompts"] == 3 and summary["kl_bon"] == pytest.approx(kl_bon(4))
    assert summary["device"] == resolve_device("auto").type and summary["precision"] in ("fp32", "bf16")  # auto's
    # A rerun samples and scores nothing again and gives the same numbers.
    assert summary["scored_now"] == 12
    again = run_bon(cfg, progress=False)
    assert again["sampled_now"] == 0 and again["scored_now"] == 0
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "bon" / "scores.parquet"), scores)
    # Other scoring settings: the kept raw scores are not theirs, so everything is scored again (same picks).
    rescored = run_bon(BonConfig(**{**cfg.__dict__, "rm_batch_size": 3}), progress=False)
    assert rescored["scored_now"] == 12 and rescored["best_reward_mean"] == pytest.approx(summary["best_reward_mean"],
                                                                                         abs=1e-4)
    # Samples drawn otherwise, or another prompt under a held id, would mix with the held ones: refused, named.
    with pytest.raises(ValueError, match="temperature"):
        run_bon(BonConfig(**{**cfg.__dict__, "temperature": 0.5}), progress=False)
    # A larger n draws only the samples it lacks, and they are what a fresh run with that n draws.
    small = BonConfig(**{**cfg.__dict__, "batch_size": 2, "n": 2, "output_dir": str(tmp_path / "grow")})
    run_bon(small, progress=False)
    grown = run_bon(BonConfig(**{**small.__dict__, "n": 4}), progress=False)
    fresh = run_bon(BonConfig(**{**small.__dict__, "n": 4, "output_dir": str(tmp_path / "fresh")}), progress=False)
    assert grown["sampled_now"] == fresh["sampled_now"] == 3 and (grown["drawn_now"], fresh["drawn_now"]) == (6, 12)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "grow" / "scores.parquet"),
                                  pd.read_parquet(tmp_path / "fresh" / "scores.parquet"))
    prompts.write_text(prompts.read_text().replace(P[1][0]["content"], "Something else entirely?"))
    with pytest.raises(ValueError, match="other prompts under the ids q1"):
        run_bon(cfg, progress=False)


def test_rmkit_bon_with_a_gold_draws_the_overoptimization_curve(tiny_policy, tiny_bert, tiny_llama, tmp_path):
    """``--gold``: every sample gets a gold reward, and the summary the gold reward of each variant's pick at every
    n. The gold here is member 0's model, so the single RM (member 0) picks as the oracle does."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p[0]["content"]}) + "\n" for i, p in enumerate(P)))
    cfg = BonConfig(data=str(prompts), policy=tiny_policy, reward_model=f"{tiny_bert},{tiny_llama}", n=4,
                    max_new_tokens=5, output_dir=str(tmp_path / "bon"), aggregation="min", gold=tiny_bert,
                    precision="fp32")
    summary = run_bon(cfg, progress=False)
    scores = pd.read_parquet(tmp_path / "bon" / "scores.parquet")
    assert np.corrcoef(scores["gold"], scores["member_0"])[0, 1] > 0.99999  # member columns are z-scored
    curve = summary["overoptimization"]
    assert curve["n"] == [1, 2, 4] and curve["kl_bon"][-1] == pytest.approx(kl_bon(4))
    gold = scores.pivot(index="id", columns="k", values="gold").to_numpy()
    # n = 1: any pick is a random sample; n = 4: the oracle takes each prompt's best sample
    for name in ("oracle_gold", "single", "mean", "min", "uwo", "this_rm"):
        assert curve["gold_reward"][name][0] == pytest.approx(gold.mean())
    assert curve["gold_reward"]["oracle_gold"][-1] == pytest.approx(gold.max(axis=1).mean())
    np.testing.assert_allclose(curve["gold_reward"]["single"], curve["gold_reward"]["oracle_gold"], atol=1e-6)
    # the run's own pick (min over the members, normalised) at n = 4 is best.jsonl's
    best = [json.loads(x) for x in (tmp_path / "bon" / "best.jsonl").read_text().splitlines()]
    picked = [scores[(scores["id"] == b["id"]) & (scores["k"] == b["k"])]["gold"].item() for b in best]
    assert curve["gold_reward"]["this_rm"][-1] == pytest.approx(np.mean(picked))
    assert summary["gold"]["best_gold_mean"] == pytest.approx(np.mean(picked))
    assert summary["gold"]["is_a_member"]  # and said so: graded against itself
    assert {"mean", "min", "uwo"} == set(curve["vs_single_at_largest_n"]) and "this_rm" in curve["drops"]
    assert (tmp_path / "bon" / "bon_curve.png").stat().st_size > 10_000
    # A gold that cannot be one is refused before anything loads, naming it.
    with pytest.raises(ValueError, match="not a saved gold"):
        BonConfig(data="x", reward_model=tiny_bert, gold=str(tmp_path / "gold.json")).check()
    with pytest.raises(ValueError, match="neither a saved lab gold"):
        BonConfig(data="x", reward_model=tiny_bert, gold=str(tmp_path)).check()
    # One RM (no ensemble): its curve and the oracle's
    one = run_bon(BonConfig(**{**cfg.__dict__, "reward_model": tiny_llama, "aggregation": None,
                               "output_dir": str(tmp_path / "one")}), progress=False)
    assert not one["gold"]["is_a_member"]
    assert set(one["overoptimization"]["gold_reward"]) == {"oracle_gold", "this_rm"}
    assert one["overoptimization"]["n"] == [1, 2, 4]
