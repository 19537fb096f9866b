"""PPO: its losses and GAE by hand, the packed sequences against unpadded ones, the critic's
initialisation, a run end to end with resume, iterative rounds, and the RM as TRL and OpenRLHF read it."""

import json
import math

import numpy as np
import pytest
import torch

from rmkit.hardware import resolve_device
from rmkit.losses import ppo_policy_loss, ppo_value_loss
from rmkit.models import RewardModel
from rmkit.policy import encode_prompts, load_policy
from rmkit.rl import (PPOConfig, RunningMoments, ValueModel, gae, leave_one_out, pack, response_logprobs,
                      response_values, select, train_ppo, whiten)


def test_ppo_losses_by_hand():
    logp = torch.tensor([[math.log(1.5), math.log(0.5), 0.0]])
    old = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, 1.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third token is padding
    loss, clipfrac = ppo_policy_loss(logp, old, adv, mask, clip=0.2)
    # token 1: ratio 1.5, A=1 -> max(-1.5, -1.2) = -1.2 (clipped); token 2: ratio 0.5 -> max(-0.5, -0.8) = -0.5
    assert loss.item() == pytest.approx((-1.2 - 0.5) / 2)
    assert clipfrac.item() == pytest.approx(0.5)
    v, old_v, ret = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.0]]), torch.tensor([[2.0, 0.1]])
    vloss, vclip = ppo_value_loss(v, old_v, ret, torch.ones(1, 2), clip=0.2)
    # token 1: V 1.0 clipped to 0.7 -> errors 1.0 and 1.69 -> 1.69 (clipped larger); token 2: 0.01 both
    assert vloss.item() == pytest.approx(0.5 * (1.69 + 0.01) / 2)
    assert vclip.item() == pytest.approx(0.5)


def test_gae_by_hand():
    rewards = torch.tensor([[0.1, -0.2, 1.0, 0.0], [0.5, 0.0, 0.0, 0.0]])
    values = torch.tensor([[0.3, 0.4, 0.2, 9.0], [0.1, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])  # padding values (9) must not leak in
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    d2 = 1.0 - 0.2          # last token: no value after it
    d1 = -0.2 + 0.2 - 0.4
    d0 = 0.1 + 0.4 - 0.3
    a2, a1 = d2, d1 + 0.5 * d2
    a0 = d0 + 0.5 * a1
    torch.testing.assert_close(adv[0], torch.tensor([a0, a1, a2, 0.0]))
    torch.testing.assert_close(adv[1], torch.tensor([0.5 - 0.1, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(ret * mask, (adv + values) * mask)
    w = whiten(adv, mask)
    assert (w * mask).sum().item() == pytest.approx(0.0, abs=1e-6) and (w[mask == 0] == 0).all()


def test_running_moments_equal_numpy():
    rng = np.random.default_rng(0)
    xs = [rng.normal(3, 2, size=n) for n in (4, 7, 1, 12)]
    m = RunningMoments()
    for x in xs:
        m.update(torch.tensor(x))
    allx = np.concatenate(xs)
    assert m.mean == pytest.approx(allx.mean()) and m.std == pytest.approx(allx.std(ddof=1))


@pytest.fixture(scope="module")
def policy(tiny_policy):
    model, tok = load_policy(tiny_policy)
    return model.eval(), tok


def test_a_reward_model_is_refused_as_a_policy(tiny_llama):
    """Loaded as a causal LM, a sequence-classification checkpoint gets a random language-model head."""
    with pytest.raises(ValueError, match="a reward model .*LlamaForSequenceClassification.*not a causal LM"):
        load_policy(tiny_llama)


def test_ppo_summary_reads_an_undefined_metric_as_nan(tmp_path):
    from rmkit.files import json_text
    from rmkit.rl import summarize_ppo

    # A diverged step logs a NaN score; the log is strict JSON (null), and the summary still computes.
    recs = [{"step": 0, "eval/score": 0.5, "eval/kl": 0.0},
            {"step": 1, "reward/score_mean": float("nan"), "time/rollout_tokens_per_s": 10.0, "time/step_s": 2.0},
            {"step": 2, "reward/score_mean": 1.0, "time/rollout_tokens_per_s": 30.0, "time/step_s": 4.0},
            {"step": 2, "eval/score": 0.75, "eval/kl": 0.1}]
    (tmp_path / "metrics.jsonl").write_text("".join(json_text(r, indent=None) + "\n" for r in recs))
    assert "null" in (tmp_path / "metrics.jsonl").read_text() and "NaN" not in (tmp_path / "metrics.jsonl").read_text()
    out = summarize_ppo(tmp_path, PPOConfig(kl_budget=0.5))
    assert math.isnan(out["train_score_first5"])
    assert out["rollout_tokens_per_s"] == pytest.approx(20.0) and out["s_per_step"] == pytest.approx(3.0)
    assert (out["reward_start"], out["reward_end"], out["kl_within_budget"], out["steps"]) == (0.5, 0.75, True, 2)


def test_packed_logprobs_and_values_equal_unpadded_ones(policy, tiny_llama):
    """Left-padded prompts + right-padded responses in one batch give each row the log-probs it has alone
    (position ids count real tokens, as generation does), and only response positions are read."""
    model, tok = policy
    prompts = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Tell me about the history of bread."}]]
    p_ids = encode_prompts(tok, prompts, 64)
    r_ids = [[12, 345, 678, 9], [1000, 20]]
    seq = pack(p_ids, r_ids, tok.pad_token_id, "cpu")
    rm = RewardModel.from_pretrained(tiny_llama)
    critic = ValueModel.from_reward_model(rm)
    with torch.no_grad():
        logp, ent = response_logprobs(model, seq, 0.7, with_entropy=True)
        values = response_values(critic, seq)
        for i in range(2):
            one = pack([p_ids[i]], [r_ids[i]], tok.pad_token_id, "cpu")
            alone, _ = response_logprobs(model, one, 0.7)
            n = len(r_ids[i])
            torch.testing.assert_close(logp[i, :n], alone[0, :n], atol=1e-5, rtol=0)
            # by hand: the logits of the unpadded sequence at the positions before each response token
            full = torch.tensor([p_ids[i] + r_ids[i]])
            lg = torch.log_softmax(model(full).logits[0].float() / 0.7, -1)
            P = len(p_ids[i])
            expected = torch.stack([lg[P - 1 + t, r_ids[i][t]] for t in range(n)])
            torch.testing.assert_close(logp[i, :n], expected, atol=1e-5, rtol=0)
            # the critic's values equal the RM's reward of each prefix (PPO-max's initialisation)
            prefix_rewards = torch.stack([rm(full[:, : P + t], torch.ones(1, P + t, dtype=torch.long)).rewards[0]
                                          for t in range(n)])
            torch.testing.assert_close(values[i, :n], prefix_rewards, atol=1e-4, rtol=0)
        assert (ent[seq["response_mask"] == 1] > 0).all()
        # a minibatch of one row, with its padding columns cut, gives the same numbers
        sub = select(seq, torch.tensor([1]))
        assert sub["input_ids"].shape[1] == len(p_ids[1]) + len(r_ids[1])
        torch.testing.assert_close(response_logprobs(model, sub, 0.7)[0][0], logp[1, :2], atol=1e-5, rtol=0)


def _cfg(tmp_path, tiny_policy, rm, shared_data, **kw):
    base = dict(policy=tiny_policy, reward_model=rm, output_dir=str(tmp_path / "ppo"), steps=3, batch_size=4,
                minibatch_size=2, max_new_tokens=6, max_prompt_tokens=96, eval_prompts=4, save_every=1,
                data=str(shared_data / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"), max_prompts=40)
    base.update(kw)
    return PPOConfig(**base)


def test_ppo_runs_logs_and_resumes_exactly(tiny_policy, tiny_bert, shared_data, tmp_path):
    import pandas as pd
    from safetensors.torch import load_file

    full = train_ppo(_cfg(tmp_path / "a", tiny_policy, tiny_bert, shared_data))
    assert full["steps"] == 3 and full["critic_init"] == "policy"  # a BERT RM cannot be the Llama policy's critic
    for key in ("reward_start", "reward_end", "kl_end", "rollout_tokens_per_s", "s_per_step"):
        assert math.isfinite(full[key]), key
    recs = [json.loads(x) for x in (tmp_path / "a" / "ppo" / "metrics.jsonl").read_text().splitlines()]
    # issue 46, item 7: the reported KL is the k3 estimate, never negative (the sum of log-ratios can be)
    assert full["kl_start"] >= 0 and full["kl_end"] >= 0 and all(r["eval/kl_k3"] >= 0 for r in recs if "eval/kl_k3" in r)
    steps = [r for r in recs if "loss/policy" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for key in ("reward/score_mean", "reward/score_std", "kl/ref", "policy/entropy", "policy/response_length",
                "loss/value", "clipfrac/policy", "clipfrac/value", "policy/approx_kl"):
        assert all(math.isfinite(r[key]) for r in steps), key
    assert steps[0]["kl/ref"] == pytest.approx(0.0, abs=1e-5)  # the first rollout comes from the reference itself
    assert steps[-1]["kl/ref"] != 0.0  # and the actor moved
    prompts = pd.read_csv(tmp_path / "a" / "ppo" / "prompts.csv")
    # every source row has a status: usable, too long, or what the data loader said (2 identical pairs, ...)
    assert len(prompts) == 2354 and {"ok", "too_long", "identical"} <= set(prompts["status"])

    # Killed after step 2, then continued: the same rollouts, metrics and weights as the straight run.
    train_ppo(_cfg(tmp_path / "b", tiny_policy, tiny_bert, shared_data, steps=2))
    # The kill also cut a log line short: the resume drops it (it once failed to parse it and stopped)
    with (tmp_path / "b" / "ppo" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "loss/pol')
    with pytest.warns(UserWarning, match="unfinished record"):
        resumed = train_ppo(_cfg(tmp_path / "b", tiny_policy, tiny_bert, shared_data))
    recs_b = [json.loads(x) for x in (tmp_path / "b" / "ppo" / "metrics.jsonl").read_text().splitlines()]
    steps_b = [r for r in recs_b if "loss/policy" in r]
    assert [r["reward/score_mean"] for r in steps_b] == pytest.approx([r["reward/score_mean"] for r in steps], abs=1e-6)
    assert resumed["reward_end"] == pytest.approx(full["reward_end"], abs=1e-6)
    wa = load_file(str(tmp_path / "a" / "ppo" / "policy" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "ppo" / "policy" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="other settings"):
        train_ppo(_cfg(tmp_path / "b", tiny_policy, tiny_bert, shared_data, steps=4, kl_coef=0.1))


def test_ppo_in_bf16_autocast_and_its_resume_refused_in_fp32(tiny_policy, tiny_bert, shared_data, tmp_path):
    out = train_ppo(_cfg(tmp_path, tiny_policy, tiny_bert, shared_data, steps=2, precision="bf16"))
    assert out["precision"] == "bf16" and out["device"] == resolve_device("auto").type
    assert math.isfinite(out["reward_end"]) and math.isfinite(out["kl_end"])
    steps = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines() if "loss/policy" in x]
    assert steps[0]["kl/ref"] == pytest.approx(0.0, abs=1e-5)  # actor and reference under the same autocast
    assert all(math.isfinite(r["loss/value"]) and math.isfinite(r["policy/approx_kl"]) for r in steps)
    with pytest.raises(ValueError, match=r"other settings \(precision\)"):
        train_ppo(_cfg(tmp_path, tiny_policy, tiny_bert, shared_data, steps=3, precision="fp32"))
    # auto keeps fp32 for training on CPUs, whatever the CPU's bf16 speed
    from rmkit.hardware import resolve_precision

    assert resolve_precision("auto", torch.device("cpu"), training=True) == "fp32"


def test_critic_from_a_reward_model_sharing_the_backbone_and_ptx(tiny_policy, tiny_llama, shared_data, tmp_path):
    data = str(shared_data / "hh-rlhf" / "helpful-base" / "test.jsonl.gz")
    out = train_ppo(_cfg(tmp_path, tiny_policy, tiny_llama, shared_data, steps=1, ptx_coef=0.5, ptx_data=data,
                         critic_train_layers="top:1", missing_eos_penalty=1.0))
    assert out["critic_init"] == "reward_model"
    rec = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines() if "loss/ptx" in x]
    assert rec and rec[0]["loss/ptx"] > 0
    with pytest.raises(ValueError, match="ptx_data"):
        train_ppo(_cfg(tmp_path / "x", tiny_policy, tiny_llama, shared_data, ptx_coef=0.5))


def test_ppo_with_a_conservative_ensemble_reward(tiny_policy, tiny_llama, tiny_bert, shared_data, tmp_path):
    """An ensemble (comma-separated members, uwo) as PPO's reward: z-scored on the starting policy's responses,
    its first member shares the policy's backbone and becomes the critic."""
    out = train_ppo(_cfg(tmp_path, tiny_policy, f"{tiny_llama},{tiny_bert}", shared_data, steps=1,
                         aggregation="uwo", uwo_lambda=0.1))
    assert out["critic_init"] == "reward_model" and math.isfinite(out["reward_end"])
    stats = json.loads((tmp_path / "ppo" / "ensemble_normalization.json").read_text())["stats"]
    assert len(stats) == 2 and all(sd > 0 for _, sd in stats)


def test_ppo_and_rlhf_from_the_cli(tiny_policy, tiny_bert, shared_data, tmp_path):
    from rmkit.cli import main

    data = str(shared_data / "hh-rlhf" / "helpful-base" / "test.jsonl.gz")
    assert main(["ppo", data, "--policy", tiny_policy]) == 2  # no reward model: a clear error
    common = ["--policy", tiny_policy, "--max-new-tokens", "4", "--eval-prompts", "2", "--batch-size", "2",
              "--minibatch-size", "2", "--max-prompts", "12", "--max-prompt-tokens", "96"]
    assert main(["ppo", data, "--reward-model", tiny_bert, "--steps", "2", "--output-dir", str(tmp_path / "ppo")]
                + common) == 0
    summary = json.loads((tmp_path / "ppo" / "summary.json").read_text())
    assert summary["steps"] == 2 and (tmp_path / "ppo" / "config.yaml").exists()

    args = ["rlhf", data, "--policy", tiny_policy, "--reward-model", tiny_bert, "--prompts", data,
            "--output-dir", str(tmp_path / "rlhf"), "--rounds", "2", "--meta-prompts", "3", "--meta-k", "2",
            "--eval-prompts", "2",
            "--rm-train", "{max_length: 32, batch_size: 4, max_pairs: 8, eval_test: false}",
            "--ppo", "{steps: 1, batch_size: 2, minibatch_size: 2, max_new_tokens: 4, eval_prompts: 2, max_prompts: 12, "
                     "max_prompt_tokens: 96}"]
    assert main(args) == 0
    rounds = [json.loads(x) for x in (tmp_path / "rlhf" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        for key in ("reward_start", "reward_end", "kl_end", "J", "J_previous_rm"):
            assert math.isfinite(r[key]), key
    assert rounds[1]["reward_model"].endswith("round_2/rm/model")
    # round 2 started from round 1's policy and RM
    assert "round_1/ppo/policy" in (tmp_path / "rlhf" / "round_2" / "ppo" / "config.yaml").read_text()
    assert "round_1/rm/model" in (tmp_path / "rlhf" / "round_2" / "rm" / "config.yaml").read_text()
    meta2 = [json.loads(x) for x in (tmp_path / "rlhf" / "round_2" / "meta.jsonl").read_text().splitlines()]
    assert len(meta2) == 3 and all(len(m["responses"]) == 2 for m in meta2)
    # a rerun finds every round done and changes nothing
    stamp = (tmp_path / "rlhf" / "round_2" / "summary.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (tmp_path / "rlhf" / "round_2" / "summary.json").stat().st_mtime_ns == stamp
    # other settings would continue rounds made with these: refused, named (more rounds are not)
    assert main([*args, "--meta-k", "3"]) == 2


def test_rlhf_round_with_a_judge(tiny_policy, tiny_bert, shared_data, tmp_path, monkeypatch):
    from rmkit.rlhf import RLHFConfig, run_rlhf
    from rmkit.testing import FaultServer

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    data = str(shared_data / "hh-rlhf" / "helpful-base" / "test.jsonl.gz")
    server = FaultServer()
    try:
        cfg = RLHFConfig(data=data, prompts=data, policy=tiny_policy, reward_model=tiny_bert,
                         output_dir=str(tmp_path / "rlhf"), rounds=1, meta_prompts=2, meta_k=2, eval_prompts=3,
                         rm_train={"max_length": 32, "batch_size": 4, "max_pairs": 4,
                                   "eval_test": False},
                         ppo={"steps": 1, "batch_size": 2, "minibatch_size": 2, "max_new_tokens": 4, "eval_prompts": 2,
                              "max_prompts": 12, "max_prompt_tokens": 96},
                         judge={"judge_model": "fake", "base_url": server.url, "cache_dir": str(tmp_path / "cache")})
        (r,) = run_rlhf(cfg)
    finally:
        server.close()
    wtl = r["judge_vs_start"]
    # the fake judge always answers [[A]]: each item is a win or a loss depending on the order it was shown in
    assert wtl["judged"] == 3 and wtl["win"] + wtl["lose"] == 3 and wtl["tie"] == 0


def test_a_ppo_update_moves_the_policy_towards_higher_reward(tiny_policy, tiny_bert, shared_data, tmp_path, monkeypatch):
    """The whole wiring (score -> shaped reward -> GAE -> whitened advantage -> clipped loss -> step) has
    the right sign: with alternating scores +1/-1, the responses scored +1 become more likely, the others less."""
    import rmkit.rl as rl

    monkeypatch.setattr(RewardModel, "score", lambda self, prompts, responses, batch_size=32: torch.tensor(
        [1.0 if i % 2 == 0 else -1.0 for i in range(len(prompts))]))
    captured = []
    original = rl.rollout

    def spy(*args, **kw):
        out = original(*args, **kw)
        if args[2] is not None:  # a training rollout (with the critic), not an evaluation
            captured.append(out)
        return out

    monkeypatch.setattr(rl, "rollout", spy)
    train_ppo(_cfg(tmp_path, tiny_policy, tiny_bert, shared_data, steps=1, kl_coef=0.0, actor_lr=1e-3,
                   max_new_tokens=8))
    (r,) = captured
    after, _ = load_policy(str(tmp_path / "ppo" / "policy"))
    after.to(r["logp"].device)  # where the run's rollouts were: the GPU where there is one
    with torch.no_grad():
        new_logp, _ = response_logprobs(after.eval(), r["seq"], 0.8)
    m = r["seq"]["response_mask"]
    change = ((new_logp - r["logp"]) * m).sum(1)
    assert (change[0::2] > 0).all() and (change[1::2] < 0).all(), change


def test_ppo_gold_scores_the_evaluation_samples_only(tiny_policy, tiny_bert, tiny_llama, shared_data, tmp_path):
    """A gold that is the RM itself must see exactly the held-out samples the RM saw; a resume under another gold
    is refused, named."""
    out = train_ppo(_cfg(tmp_path, tiny_policy, tiny_bert, shared_data, steps=2, eval_every=1, gold=tiny_bert))
    evals = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines() if "eval/score" in x]
    assert [r["step"] for r in evals] == [0, 1, 2]
    for r in evals:
        assert r["eval/gold"] == pytest.approx(r["eval/score"], abs=1e-5)
    per = [json.loads(x) for x in (tmp_path / "ppo" / "eval_scores.jsonl").read_text().splitlines()]
    assert all(p["gold"] == pytest.approx(p["score"], abs=1e-5) and len(p["gold"]) == 4 for p in per)
    # The graded texts themselves, one per held-out prompt, so another gold can grade them later.
    assert all(len(p["response"]) == 4 and all(isinstance(t, str) for t in p["response"]) for p in per)
    assert out["gold_start"] == pytest.approx(evals[0]["eval/gold"]) and out["gold_end"] == pytest.approx(
        evals[-1]["eval/gold"])
    assert out["gold_gain"] == pytest.approx(out["reward_gain"], abs=1e-5)
    with pytest.raises(ValueError, match=r"other settings \(gold\)"):
        train_ppo(_cfg(tmp_path, tiny_policy, tiny_bert, shared_data, steps=3, eval_every=1, gold=tiny_llama))


def test_ppo_logs_a_prompt_aware_golds_relevance(tiny_policy, tiny_bert, shared_data, tmp_path):
    """Under a prompt-aware gold (base + beta * relevance) each evaluation logs the relevance term per prompt; with
    the RM as the base, gold - beta * relevance is the RM's own score of the same responses."""
    from rmkit.gold import PromptAwareGold, gold_scorer
    from rmkit.relevance import SentenceEncoder

    spec = PromptAwareGold(gold_scorer(tiny_bert), 0.5, SentenceEncoder(tiny_bert)).save(tmp_path / "pa.json", tiny_bert)
    train_ppo(_cfg(tmp_path, tiny_policy, tiny_bert, shared_data, steps=1, gold=str(spec)))
    evals = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines() if "eval/gold" in x]
    per = [json.loads(x) for x in (tmp_path / "ppo" / "eval_scores.jsonl").read_text().splitlines()]
    assert len(evals) == len(per) == 2
    for r, p in zip(evals, per):
        rel = np.asarray(p["gold_relevance"])
        assert len(rel) == 4 and np.ptp(rel) > 0 and (np.abs(rel) <= 1 + 1e-6).all()
        assert np.allclose(np.asarray(p["gold"]) - 0.5 * rel, p["score"], atol=1e-4)
        assert r["eval/gold_relevance"] == pytest.approx(rel.mean())


def test_ppo_summary_gold_peak_and_drop_by_hand(tmp_path):
    from rmkit.files import json_text
    from rmkit.rl import summarize_ppo

    gold = {0: [0.0, 0.0, 0.0, 0.0], 5: [1.0, 2.0, 1.0, 2.0], 10: [0.5, 1.0, 1.0, 1.5]}  # peak at 5, then down
    recs = [{"step": s, "eval/score": float(s), "eval/kl": s / 10, "eval/gold": float(np.mean(g))}
            for s, g in gold.items()]
    (tmp_path / "metrics.jsonl").write_text("".join(json_text(r, indent=None) + "\n" for r in recs))
    (tmp_path / "eval_scores.jsonl").write_text("".join(json_text(
        {"step": s, "ids": list("abcd"), "score": [float(s)] * 4, "kl": [s / 10] * 4, "gold": g}, indent=None) + "\n"
        for s, g in gold.items()))
    out = summarize_ppo(tmp_path, PPOConfig())
    assert (out["gold_start"], out["gold_peak"], out["gold_peak_step"], out["gold_peak_kl"], out["gold_end"]) == (
        0.0, 1.5, 5, 0.5, 1.0)
    assert out["gold_gain"] == pytest.approx(1.0)
    assert out["gold_drop"] == pytest.approx(0.5)  # per prompt 0.5, 1.0, 0.0, 0.5
    lo, hi = out["gold_drop_ci95"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0


def test_leave_one_out_baseline_by_hand():
    s = torch.tensor([1.0, 2.0, 6.0, 10.0, 10.0, 13.0])  # two prompts, three responses each
    # 1 - (2 + 6) / 2 = -3; 2 - 3.5 = -1.5; 6 - 1.5 = 4.5 | 10 - 11.5 = -1.5; -1.5; 13 - 10 = 3
    torch.testing.assert_close(leave_one_out(s, 3), torch.tensor([-3.0, -1.5, 4.5, -1.5, -1.5, 3.0]))
    # a constant added to one prompt's responses (an easy prompt) cancels
    torch.testing.assert_close(leave_one_out(s + torch.tensor([5.0] * 3 + [0.0] * 3), 3), leave_one_out(s, 3))


def test_ppo_with_several_samples_per_prompt(tiny_policy, tiny_bert, shared_data, tmp_path, monkeypatch):
    """Two prompts x three responses a step run, each prompt's responses side by side (the grouping
    `leave_one_out` assumes), and the setting is part of what a resume must match."""
    import rmkit.rl

    seen, rollout = [], rmkit.rl.rollout

    def counting(actor, ref, critic, rm, tok, prompts, enc, *args, **kw):
        if critic is not None:  # a training rollout (held-out evaluations sample without the critic)
            seen.append([str(p) for p in prompts])
        return rollout(actor, ref, critic, rm, tok, prompts, enc, *args, **kw)

    monkeypatch.setattr(rmkit.rl, "rollout", counting)
    out = train_ppo(_cfg(tmp_path, tiny_policy, tiny_bert, shared_data, steps=1, batch_size=2, samples_per_prompt=3,
                         minibatch_size=3, max_new_tokens=8))
    assert out["steps"] == 1 and math.isfinite(out["reward_end"])
    (batch,) = seen  # one step, one rollout
    assert len(batch) == 6 and batch[0] == batch[1] == batch[2] != batch[3] == batch[4] == batch[5]
    rec = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines() if "loss/policy" in x]
    assert math.isfinite(rec[0]["loss/policy"]) and rec[0]["reward/score_std"] > 0
    with pytest.raises(ValueError, match=r"other settings \(samples_per_prompt\)"):
        train_ppo(_cfg(tmp_path, tiny_policy, tiny_bert, shared_data, steps=2, batch_size=2, samples_per_prompt=2,
                       minibatch_size=3, max_new_tokens=8))
