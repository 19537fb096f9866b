"""The settings of ScoreConfig (`rmkit.scoring`), importable without torch: `rmkit <command> --help` reads them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import check_positive, setting
from ..data import MAX_PAIRS_HELP, DataSource
from .hardware import DEVICES_HELP, PRECISION_HELP, check_device


@dataclass
class ScoreConfig(DataSource):
    """Settings of ``rmkit score``."""

    data: str = setting("", "preference data: a file, a directory, or a hub dataset name")
    model: str = setting("", "a saved rmkit reward model (or any sequence-classification checkpoint)")
    output_dir: str = setting("runs/score", "where scores.parquet, scores.csv, metrics.json and config.yaml go")
    batch_size: int = setting(64, "texts per forward pass")
    max_length: int | None = setting(None, "truncate inputs to this many tokens (default: the model's)")
    split: Literal["train", "validation", "test"] | None = setting(
        None, "score only this split (train/validation/test) of the splits file")
    splits_file: str | None = setting(None, "the splits JSON written by `rmkit data` or `rmkit train`")
    max_pairs: int | None = setting(None, MAX_PAIRS_HELP)
    seed: int = setting(0, "seed of the max_pairs sample")
    chunk_rows: int = setting(1024, "rows scored and written per part file (a killed run redoes one part at most)")
    device: str = setting("auto", DEVICES_HELP)
    precision: Literal["auto", "fp32", "bf16"] = setting("auto", PRECISION_HELP)
    shared_prefix: bool = setting(True, "decoder RMs: run each pair's prompt once and both responses on its KV cache "
                                        "(equal rewards up to float rounding; encoders always take the plain path)")

    def check(self) -> None:
        check_device(self.device)
        if self.split and not self.splits_file:
            raise ValueError("split needs splits_file (the splits JSON of rmkit data or rmkit train)")
        check_positive(self, "batch_size", "max_length", "chunk_rows", "max_pairs")
