"""Iterative RLHF with MetaRM (Section 4 of the paper): rounds of

1. sample the meta set from the latest policy (`rmkit.policy.run_sample`),
2. train the reward model with MetaRM on it, starting from the previous round's RM
   (`rmkit.training.train_reward_model` with ``meta_data``),
3. run PPO from the latest policy against that RM (`rmkit.rl.train_ppo`),
4. evaluate: the RM reward and KL from PPO's held-out prompts, J (Eq. 11) of the old and new RM on
   fresh responses of the new policy, and win/tie/lose against the starting policy when a judge is set.

Each stage is resumable on its own (sampling appends, training and PPO checkpoint), and a round whose
``summary.json`` exists is not run again, so a killed ``rmkit rlhf`` continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from .config import from_dict, require_saved_settings, save_config, validate
from .data import data_folder_guard
from .files import check_output_dir, write_json, write_jsonl
from .judge import JudgeConfig, compare_policies
from .llamacpp import LocalServer
from .metarm import meta_J
from .metaset import read_meta_set
from .policy import SampleConfig, SamplingConfig, load_policy, run_sample, sample_responses
from .rl import train_ppo
from .training import train_reward_model
from .configs.rlhf import RLHFConfig  # noqa: F401 - the settings, beside the job


def _sample(prompts: str, policy: str, output: Path, *, k: int, temperature: float, max_prompts: int, seed: int,
            offset: int = 0) -> list[dict]:
    run_sample(SampleConfig(data=prompts, policy=policy, output=str(output), k=k, temperature=temperature,
                            max_prompts=max_prompts, offset=offset, seed=seed))
    return read_meta_set(output)


def _judge_against_start(cfg: RLHFConfig, start_policy: str, policy: str, items: list[dict], rdir: Path) -> dict:
    """Win/tie/lose of ``policy`` against ``start_policy`` on the evaluation prompts (one response each)."""
    prompts = [it["prompt"] for it in items]
    answers = {}
    for name, path in (("start", start_policy), ("current", policy)):
        model, tok = load_policy(path)
        answers[name] = [r[0] for r in sample_responses(model, tok, prompts, SamplingConfig(seed=cfg.seed), k=1)]
    jcfg = from_dict(JudgeConfig, {"seed": cfg.seed, **cfg.judge}, source="judge")
    server = LocalServer(jcfg.local_model) if jcfg.local_model else None
    try:
        return compare_policies(prompts, answers["current"], answers["start"], jcfg, output=rdir / "judge.jsonl",
                                base_url=server.url if server else None, progress=False)
    finally:
        if server is not None:
            server.close()


def run_rlhf(cfg: RLHFConfig) -> list[dict[str, Any]]:
    """Run (or continue) the rounds; returns one summary per round, also in ``OUTPUT_DIR/rounds.jsonl``."""
    validate(cfg)  # every stage's settings, before round 1 starts
    if not cfg.reward_model:
        raise ValueError("rmkit rlhf needs a starting reward model: --reward-model PATH")
    if not cfg.data or not cfg.prompts:
        raise ValueError("rmkit rlhf needs data (rmkit rlhf DATA: preference data for the reward model) and --prompts "
                         "(for PPO and the meta set)")
    out = check_output_dir(cfg.output_dir, not_in=data_folder_guard(cfg.data))
    if (out / "round_1" / "summary.json").exists():  # finished rounds are kept: later ones must continue them
        require_saved_settings(out / "config.yaml", cfg,
                               [f.name for f in dataclasses.fields(cfg) if f.name not in ("rounds", "output_dir")],
                               out, "more --rounds continue a run; other settings need another output_dir")
    save_config(cfg, out / "config.yaml")
    policy, rm = cfg.policy, cfg.reward_model
    summaries = []
    for r in range(1, cfg.rounds + 1):
        rdir = out / f"round_{r}"
        done = rdir / "summary.json"
        if done.exists():
            s = json.loads(done.read_text())
        else:
            rdir.mkdir(parents=True, exist_ok=True)
            seed = cfg.seed + r
            # 1. meta set from the latest policy
            _sample(cfg.prompts, policy, rdir / "meta.jsonl", k=cfg.meta_k, temperature=cfg.meta_temperature,
                    max_prompts=cfg.meta_prompts, seed=seed)
            # 2. MetaRM from the previous RM
            tcfg, pcfg = cfg.round_configs(rdir, policy, rm, seed)
            rm_results = train_reward_model(tcfg).metrics  # a finished run is loaded, not redone
            new_rm = str(rdir / "rm" / "model")
            # 3. PPO from the latest policy against the new RM
            ppo = train_ppo(pcfg)
            new_policy = ppo["policy_dir"]
            # 4. J of the old and new RM on fresh responses of the new policy (prompts after the meta prompts)
            items = _sample(cfg.prompts, new_policy, rdir / "eval_responses.jsonl", k=cfg.meta_k,
                            temperature=cfg.meta_temperature, max_prompts=cfg.eval_prompts, seed=seed + 7919,
                            offset=cfg.meta_prompts)
            s = {"round": r, "policy": new_policy, "reward_model": new_rm,
                 "reward_start": ppo["reward_start"], "reward_end": ppo["reward_end"], "kl_end": ppo["kl_end"],
                 "ppo_steps": ppo["steps"], "J_previous_rm": meta_J(rm, items), "J": meta_J(new_rm, items),
                 "rm_val_accuracy": rm_results.get("eval/accuracy"), "rm_test_accuracy": rm_results.get("test/accuracy")}
            if cfg.judge:
                s["judge_vs_start"] = _judge_against_start(cfg, cfg.policy, new_policy, items, rdir)
            write_json(done, s)
        summaries.append(s)
        policy, rm = s["policy"], s["reward_model"]
    write_jsonl(out / "rounds.jsonl", summaries)
    return summaries
