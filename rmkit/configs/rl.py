"""The settings of PPOConfig (`rmkit.rl`), importable without torch: `rmkit <command> --help` reads them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import check_layers_spec, check_positive, setting
from ..data import DataSource
from .hardware import DEVICES_HELP, check_device
from .policy import SamplingConfig


@dataclass
class PPOConfig(SamplingConfig, DataSource):
    """Settings of ``rmkit ppo`` (and of `train_ppo`). The sampling settings are the paper's."""

    data: str = setting("", "prompts: preference data (each pair's prompt) or a JSONL/parquet file with a `prompt` "
                            "column")
    policy: str = setting("smollm2", "the policy to optimise (causal LM): hub id, local path, or the alias smollm2")
    reward_model: str = setting("", "an rmkit / sequence-classification reward model (path or hub id), an ensemble "
                                    "folder (rmkit_ensemble.json) or comma-separated members")
    aggregation: Literal["mean", "min", "uwo"] | None = setting(
        None, "ensembles: mean, min (worst case) or uwo (mean - lambda * var); default: "
        "the ensemble's own")
    uwo_lambda: float | None = setting(None, "ensembles: lambda of uwo (Coste et al. use 0.1 for PPO)")
    output_dir: str = setting("runs/ppo", "metrics, checkpoints and the final policy go here")
    steps: int = setting(30, "PPO steps (one rollout batch each)")
    batch_size: int = setting(8, "prompts per rollout")
    samples_per_prompt: int = setting(1, "responses sampled for each rollout prompt; above 1, each RM score has the "
                                         "mean of its prompt's other responses subtracted before normalisation "
                                         "(RLOO's leave-one-out baseline, Ahmadian et al. 2024), so the reward says "
                                         "how much better a response is than its siblings, not how easy its prompt is")
    max_new_tokens: int = setting(48, "longest response in tokens")
    max_prompt_tokens: int = setting(160, "prompts longer than this (in the policy's template) are not used; "
                                          "prompts.csv lists each prompt's status")
    minibatch_size: int = setting(4, "rollouts (responses) per gradient step")
    ppo_epochs: int = setting(2, "passes over each rollout batch")
    actor_lr: float = setting(3e-6, "actor learning rate (the paper: 5e-7 at 7B)")
    critic_lr: float = setting(1e-5, "critic learning rate (the paper: 1.5e-6 at 7B)")
    kl_coef: float = setting(0.05, "beta of the token-level KL penalty to the reference policy")
    reward_clip: float = setting(0.8, "normalised RM scores are clipped to [-c, c] (the paper's 0.8)")
    normalize_reward: bool = setting(True, "standardise RM scores with running mean and std before clipping")
    gamma: float = setting(1.0, "discount")
    lam: float = setting(0.95, "GAE lambda")
    clip_range: float = setting(0.2, "policy ratio clip")
    value_clip: float = setting(0.2, "value clip around the rollout's values")
    max_grad_norm: float = setting(1.0, "global gradient-norm clip for actor and critic")
    entropy_coef: float = setting(0.0, "entropy bonus")
    ptx_coef: float = setting(0.0, "weight of the pretraining (SFT) LM loss mixed into the actor loss (0: off)")
    ptx_data: str | None = setting(None, "preference data whose chosen responses are the ptx LM data")
    missing_eos_penalty: float | None = setting(None, "subtract this from the RM score of responses cut at max_new_tokens")
    critic_train_layers: str = setting("all", "what of the critic trains: all, head, or top:N (top N blocks + head); "
                                              "top:N makes its backward pass cheap on a CPU")
    critic_init: Literal["auto", "reward_model", "policy"] = setting(
        "auto", "auto (reward_model if it shares the policy's architecture and tokenizer, "
        "else policy), reward_model, or policy")
    kl_budget: float = setting(4.0, "KL to the reference (nats per response) the run should stay under; "
                                    "reported as kl_within_budget")
    eval_prompts: int = setting(32, "held-out prompts scored at the start, every eval_every steps and the end")
    eval_every: int = setting(0, "evaluate every N steps (0: start and end only)")
    gold: str | None = setting(None, "a reward model that scores the held-out evaluation samples only, never the "
                                     "rollouts (a lab gold: rmkit lab's output folder or NAME.json beside "
                                     "NAME_head.npy; or any RM): eval/gold beside eval/score shows whether the "
                                     "RM's gains are real (overoptimization, Gao et al.)")
    save_every: int = setting(10, "checkpoint every N steps (0: only at the end)")
    resume: bool = setting(True, "continue from OUTPUT_DIR/checkpoint when it is there")
    rm_batch_size: int = setting(32, "texts per reward-model forward pass")
    device: str = setting("auto", DEVICES_HELP)
    precision: Literal["auto", "fp32", "bf16"] = setting(
        "auto", "autocast of every forward pass (rollouts, reward model, updates; weights and optimizer stay fp32): "
                "auto (bf16 on a GPU that supports it; fp32 on CPUs, where PPO was not measured in bf16), fp32 or bf16")
    max_prompts: int | None = setting(None, "use the first N usable prompts")

    def check(self) -> None:
        if self.ptx_coef > 0 and not self.ptx_data:
            raise ValueError("ptx_coef > 0 needs ptx_data (preference data whose chosen responses are the LM data)")
        check_layers_spec("critic_train_layers", self.critic_train_layers)
        check_positive(self, "steps", "batch_size", "samples_per_prompt", "minibatch_size", "ppo_epochs", "actor_lr",
                       "critic_lr", "max_new_tokens", "max_prompt_tokens", "rm_batch_size", "max_prompts")
        check_positive(self, "kl_coef", "reward_clip", "clip_range", "value_clip", "max_grad_norm", "eval_prompts",
                       "eval_every", "save_every", "ptx_coef", "uwo_lambda", allow_zero=True)
        check_device(self.device)
