"""The settings of TsneConfig (`rmkit.tsne`), importable without torch: `rmkit <command> --help` reads them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import check_positive, setting
from ..data import MAX_PAIRS_HELP, DataSource


@dataclass
class TsneConfig(DataSource):
    """Settings of ``rmkit tsne``."""

    data: str = setting("", "preference data (held-out pairs are drawn from its test split)")
    models: list[str] = setting([], "one or more reward models (comma-separated on the command line)")
    output_dir: str = setting("runs/tsne", "where tsne.png and separation.json go")
    split: Literal["train", "validation", "test", "all"] = setting(
        "test", "which split to draw pairs from (or 'all')")
    splits_file: str | None = setting(None, "the splits JSON of the run whose models are shown (rmkit train writes "
                                            "OUTPUT_DIR/splits.json), so its held-out pairs are the ones drawn; "
                                            "default: the seeded 70/10/20 split rmkit train makes by default")
    max_pairs: int = setting(500, MAX_PAIRS_HELP)  # of the split
    max_length: int | None = setting(None, "tokens per text (default: each model's own)")
    perplexity: float = setting(30.0, "t-SNE perplexity")
    knn_k: int = setting(10, "neighbours of the k-NN separation score")
    seed: int = setting(0, "seed of the pair sample, t-SNE and folds")

    def check(self) -> None:
        check_positive(self, "max_pairs", "max_length", "perplexity", "knn_k")
