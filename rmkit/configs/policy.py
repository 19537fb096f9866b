"""The settings of SamplingConfig, SampleConfig (`rmkit.policy`), importable without torch: `rmkit <command> --help`
reads them."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import setting
from ..data import DataSource


@dataclass
class SamplingConfig:
    """How responses are sampled (the paper's PPO settings: T 0.8, top-p 0.9, repetition penalty 1.1)."""

    temperature: float = setting(0.8, "sampling temperature (0: greedy)")
    top_p: float = setting(0.9, "nucleus sampling mass")
    repetition_penalty: float = setting(1.1, "penalty on repeated tokens (1: none)")
    max_new_tokens: int = setting(64, "longest response in tokens")
    max_prompt_tokens: int = setting(384, "prompts are cut from the left to this many tokens")
    batch_size: int = setting(8, "prompts sampled together")
    seed: int = setting(0, "sampling seed")


@dataclass
class SampleConfig(SamplingConfig, DataSource):
    """Settings of ``rmkit sample``: MetaRM's meta set from a policy (slightly hotter than PPO's sampling)."""

    data: str = setting("", "prompts: preference data (each pair's prompt) or a JSONL/parquet file with a `prompt` column")
    policy: str = setting("smollm2", "causal LM: hub id, local path, or the alias smollm2")
    output: str = setting("runs/meta/meta.jsonl", "the meta set (JSONL); a rerun resumes after the prompts it holds")
    k: int = setting(4, "responses per prompt")
    temperature: float = setting(1.0, "sampling temperature: a little above PPO's 0.8, as the paper samples the meta set")
    max_prompts: int | None = setting(None, "use N prompts (after the first `offset`)")
    offset: int = setting(0, "skip the first N prompts")
