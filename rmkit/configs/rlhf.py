"""The settings of RLHFConfig (`rmkit.rlhf`), importable without torch: `rmkit <command> --help` reads them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import check_positive, from_dict, setting
from ..judge import JudgeConfig
from .rl import PPOConfig
from .training import TrainConfig


@dataclass
class RLHFConfig:
    """Settings of ``rmkit rlhf`` (and of `run_rlhf`)."""

    data: str = setting("", "preference data the reward model trains on")
    prompts: str = setting("", "prompts for PPO and the meta set: preference data or a file with a `prompt` column")
    policy: str = setting("smollm2", "the starting policy (causal LM)")
    reward_model: str = setting("", "the starting reward model (e.g. from rmkit train)")
    output_dir: str = setting("runs/rlhf", "one folder per round, and rounds.jsonl")
    rounds: int = setting(2, "rounds of sample -> MetaRM -> PPO")
    meta_prompts: int = setting(64, "prompts in each round's meta set")
    meta_k: int = setting(4, "responses per meta prompt")
    meta_temperature: float = setting(1.0, "sampling temperature of the meta set")
    eval_prompts: int = setting(16, "prompts whose k fresh responses measure J after each round")
    rm_train: dict = setting({}, "TrainConfig settings for each round's MetaRM training (e.g. {epochs: 0.1, lr: 1e-5})")
    ppo: dict = setting({}, "PPOConfig settings for each round's PPO (e.g. {steps: 20, actor_lr: 3e-6})")
    judge: dict = setting({}, "JudgeConfig settings for win/tie/lose against the starting policy, e.g. "
                              "{judge_model: gpt-4o} or {local_model: smollm2}; empty: no judge")
    seed: int = setting(0, "seed of every stage (offset by the round)")

    def check(self) -> None:
        """Every stage's settings parsed into its dataclass now, so a typo in ``ppo:`` fails before round 1
        samples and trains."""
        check_positive(self, "rounds", "meta_prompts", "meta_k", "eval_prompts")
        self.round_configs(Path(self.output_dir) / "round_1", self.policy, self.reward_model or "RM", self.seed + 1)
        if self.judge:
            from_dict(JudgeConfig, {"seed": self.seed, **self.judge}, source="judge")

    def round_configs(self, rdir: Path, policy: str, rm: str, seed: int) -> tuple[TrainConfig, PPOConfig]:
        """The MetaRM training and PPO settings of one round (the round's RM feeds its PPO)."""
        tcfg = from_dict(TrainConfig, {"data": self.data, "model": rm, "output_dir": str(rdir / "rm"),
                                       "meta_data": str(rdir / "meta.jsonl"), "seed": seed, **self.rm_train},
                         source="rm_train")
        pcfg = from_dict(PPOConfig, {"data": self.prompts, "policy": policy, "reward_model": str(rdir / "rm" / "model"),
                                     "output_dir": str(rdir / "ppo"), "seed": seed, **self.ppo}, source="ppo")
        return tcfg, pcfg
