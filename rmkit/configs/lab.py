"""The settings of LabConfig (`rmkit.lab`), importable without torch: `rmkit <command> --help` reads them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..config import from_dict, setting
from ..data import MAX_PAIRS_HELP, DataSource
from ..denoise import RANKED
from .ensemble import EnsembleConfig
from .hardware import DEVICES_HELP, PRECISION_HELP, check_device

STUDIES = ("learnability", "strength", "flips", "denoise")


@dataclass
class LabConfig(DataSource):
    """Settings of ``rmkit lab``."""

    data: str = setting("", "real prompts and responses with human labels (the gold's head learns from them)")
    output_dir: str = setting("runs/lab", "where gold.parquet, labels.parquet, lab.json go")
    gold_model: str = setting("mpnet", "the gold's frozen backbone: hub id, local path or alias (mpnet, minilm, smollm2; "
                                       "configs/lab_cpu.yaml: smollm2 at layer 10, the most learnable gold measured)")
    gold_layer: int | None = setting(None, "hidden layer whose token mean the gold head reads (default: the last)")
    gold_max_length: int = setting(128, "tokens per text for the gold (left-truncated)")
    gold_head_l2: float | None = setting(None, "L2 of the gold's head (default: picked by cross-fitted log-loss)")
    gold_scores: str | None = setting(None, "a gold.parquet (id, gold_diff) written before: reuse it, encode nothing")
    gold_head: str | None = setting(None, "a gold head (.npy) saved by an earlier run, e.g. on other data: that gold "
                                          "labels this data (a second domain) on gold_model's features; fit nothing")
    gold_relevance: str | None = setting(None, "a sentence encoder (alias mpnet, hub id or path): its prompt-response "
                                               "cosine joins the gold, weighted so the gold prefers an answer to the "
                                               "question asked over another question's answer (rmkit.gold."
                                               "fit_prompt_aware_gold); without it a gold fitted on same-prompt pairs "
                                               "may not read the prompt")
    gold_relevance_slack: float = setting(0.1, "share of such contrasts the fitted gold may still lose, beyond those "
                                               "the encoder itself loses (sets the relevance weight; on hh-rlhf 0.1 "
                                               "keeps the term under half the pairs' gold variance, 0.02 makes the "
                                               "gold 94% relevance: benchmarks/lab_gold_relevance.py)")
    against_gold: float = setting(0.225, "share of sampled labels that go against the gold's sign (sets the "
                                         "temperature; the paper reports 20-25% on hh-rlhf)")
    label_temperature: float | None = setting(None, "Bradley-Terry temperature of the sampled labels (default: from "
                                              "against_gold)")
    flip_levels: list[float] = setting([0.1, 0.2, 0.3], "planted-flip shares the flips study runs")
    denoise_noise: float = setting(0.2, "planted-flip share the denoising study trains on")
    denoise_reviewed: int | None = setting(100, "the denoising study also runs each preset on the flip rate a "
                                                "reviewer finds in this many random training pairs (null: only "
                                                "the paper's 10%)")
    denoise_ceiling: list[str] = setting([], "presets the denoising study also runs on the gold's own ranking "
                                             "(PRESET@gold: what a perfect detector would buy; a bound, not a method)")
    max_pairs: int | None = setting(None, MAX_PAIRS_HELP)
    seeds: int = setting(3, "seeds of every study (labels, flips, folds)")
    seed: int = setting(0, "base seed")
    studies: list[str] = setting(list(STUDIES), f"studies to run: {', '.join(STUDIES)}")
    proxy: dict = setting({}, "the proxy ensemble's settings (EnsembleConfig: model, members, layers, max_length, "
                              "...); default: the audit's")
    batch_size: int = setting(32, "texts per forward pass when encoding")
    device: str = setting("auto", DEVICES_HELP + " (the gold's and the proxies' encoding; a proxy setting of its own "
                                                 "wins)")
    precision: Literal["auto", "fp32", "bf16"] = setting(
        "auto", PRECISION_HELP + " (encoding the gold's and the proxies' features; a proxy setting of its own wins)")

    def check(self) -> None:
        unknown = [s for s in self.studies if s not in STUDIES]
        if unknown:
            raise ValueError(f"unknown studies {unknown}: choose from {STUDIES}")
        if not 0.0 < self.against_gold < 0.5:
            raise ValueError(f"against_gold must be in (0, 0.5), got {self.against_gold}")
        if any(not 0.0 <= f < 0.5 for f in self.flip_levels) or not 0.0 <= self.denoise_noise < 0.5:
            raise ValueError("flip shares must be in [0, 0.5)")
        # a ceiling replaces the ranking a preset acts on
        if unknown := [p for p in self.denoise_ceiling if p not in RANKED]:
            raise ValueError(f"denoise_ceiling: unknown presets {unknown}: choose from {list(RANKED)}")
        if self.gold_relevance and self.gold_scores:
            raise ValueError("gold_relevance fits a term on top of a gold this run makes; gold_scores reuses scores "
                             "already made (a prompt-aware gold's included): set one")
        if not 0.0 <= self.gold_relevance_slack < 1.0:
            raise ValueError(f"gold_relevance_slack must be in [0, 1), got {self.gold_relevance_slack}")
        if self.gold_head and self.gold_scores:
            raise ValueError("set gold_scores (reuse scores of this data) or gold_head (score it with a saved "
                             "gold), not both")
        for name in ("gold_head", "gold_scores"):
            if getattr(self, name) and not Path(getattr(self, name)).is_file():
                raise ValueError(f"{name}: {getattr(self, name)} is not a file")
        check_device(self.device)
        self.proxy_config()  # from_dict validates the proxy settings, naming them

    def proxy_config(self) -> EnsembleConfig:
        return from_dict(EnsembleConfig, {"device": self.device, "precision": self.precision, **self.proxy}, source="proxy")
