"""The settings of BonConfig (`rmkit.bon`), importable without torch: `rmkit <command> --help` reads them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..config import setting
from ..data import DataSource
from .hardware import DEVICES_HELP, PRECISION_HELP, check_device
from .policy import SamplingConfig


@dataclass
class BonConfig(SamplingConfig, DataSource):
    """Settings of ``rmkit bon``."""

    data: str = setting("", "prompts: preference data (each pair's prompt) or a JSONL/parquet file with a `prompt` column")
    policy: str = setting("smollm2", "causal LM: hub id, local path, or the alias smollm2")
    reward_model: str = setting("", "a reward model folder or hub id; an ensemble folder (rmkit_ensemble.json); or "
                                    "comma-separated members")
    aggregation: Literal["mean", "min", "uwo"] | None = setting(
        None, "ensembles: mean, min or uwo (default: the ensemble's own)")
    uwo_lambda: float | None = setting(None, "ensembles: lambda of uwo = mean - lambda * var (Coste et al.: 0.5 for "
                                             "best-of-n)")
    n: int = setting(16, "samples per prompt")
    batch_size: int = setting(8, "samples drawn together (one generate call, seeded by its place): a prompt's samples "
                                 "come in whole batches, so up to batch_size - 1 more than n are drawn and kept for a "
                                 "larger n")
    gold: str | None = setting(None, "a gold RM that grades every sample: an `rmkit lab` output folder or a saved "
                                     "gold's JSON (e.g. benchmarks/lab/gold_hh.json), or any RM folder, hub id or "
                                     "ensemble; adds the overoptimization curve (gold reward of the pick at every n) "
                                     "to summary.json, and bon_curve.png")
    output_dir: str = setting("runs/bon", "where samples.jsonl, scores.parquet, best.jsonl and summary.json go")
    max_prompts: int | None = setting(None, "use N prompts (after the first `offset`)")
    offset: int = setting(0, "skip the first N prompts")
    rm_batch_size: int = setting(32, "texts per reward-model forward pass")
    device: str = setting("auto", DEVICES_HELP)
    precision: Literal["auto", "fp32", "bf16"] = setting("auto", PRECISION_HELP + " (the reward model's scoring)")

    def check(self) -> None:
        from ..gold import gold_files, prompt_aware_file  # what a gold folder holds (loaded only when checked)
        from ..reward_ensemble import AGGREGATIONS, ENSEMBLE_FILE

        check_device(self.device)
        if not self.reward_model:
            raise ValueError("rmkit bon needs a reward model (--reward-model PATH, an ensemble folder, or A,B,C)")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.aggregation is not None and self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.gold and gold_files(self.gold) is None and prompt_aware_file(self.gold) is None:
            g = Path(self.gold)
            if g.suffix == ".json":
                raise ValueError(f"gold: {g} is not a saved gold (a JSON with {g.stem}_head.npy beside it, or a "
                                 "prompt-aware gold's JSON)")
            if g.is_dir() and not any((g / f).is_file() for f in ("config.json", ENSEMBLE_FILE)):
                raise ValueError(f"gold: {g} holds neither a saved lab gold (gold.json, gold_head.npy) nor a "
                                 "reward model (config.json)")
