"""How a job reads its data (`DataSource`, a base of every config that reads pairs) and the `rmkit data` command."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterable, Literal

import numpy as np

from ..assets import load_pretrained, resolve_model
from ..config import save_config, setting, validate
from ..files import check_output_dir, write_json, write_table
from .formats import KNOWN_FIELDS
from .pairs import PreferenceDataset
from .readers import data_folder_guard, load_preferences
from .splits import check_split_fractions, save_splits, split_ids


@dataclass
class DataSource:
    """How a job reads its data. Every config that reads preference data carries these, so every command reads
    a source the same way (`rmkit denoise` re-reads the audit's data with the audit's settings)."""

    data_format: Literal["hh", "trl", "conversational", "moss", "pairwise"] | None = setting(
        None, "force a reader: hh, trl, conversational, moss, pairwise")
    allow_ties: bool = setting(False, "keep ties (pairwise data) as pairs with label 0.5")
    strict: bool = setting(False, "stop at the first unusable row or broken file, naming file, row and field")
    columns: dict = setting({}, "rename source columns to rmkit's fields, e.g. {question: prompt, good: chosen}")
    columnar: bool = setting(False, "hold the rows in a memory-mapped Arrow file ($RMKIT_CACHE/data, reused by the "
                                    "next load of the same files) instead of Python objects: for 100k+ pairs")

    def check(self) -> None:
        unknown = sorted(set(self.columns.values()) - KNOWN_FIELDS - {"human"})  # human: the pairwise winner
        if unknown:
            raise ValueError(f"columns: {unknown} are not fields rmkit reads; map source columns to "
                             f"{sorted(KNOWN_FIELDS)}")

    def read(self, source: Any) -> PreferenceDataset:
        return load_preferences(source, format=self.data_format, allow_ties=self.allow_ties, strict=self.strict,
                                columns=dict(self.columns) or None, columnar=self.columnar)

    def source_settings(self) -> dict[str, Any]:
        return {"data_format": self.data_format, "allow_ties": self.allow_ties, "strict": self.strict,
                "columns": dict(self.columns), "columnar": self.columnar}


@dataclass
class DataConfig(DataSource):
    """Settings of ``rmkit data``."""

    data: str = setting("", "preference data: a file, a directory, or a hub dataset name")
    output_dir: str | None = setting(None, "write rows.parquet (every row and its status) and splits.json here")
    split_seed: int = setting(0, "seed of the train/validation/test split")
    split_fractions: list[float] = setting([0.7, 0.1, 0.2], "train, validation, test fractions")
    tokenizer: str | None = setting("minilm", "count response lengths in this model's tokens (alias, hub id or path); "
                                              "none: characters")

    def check(self) -> None:
        check_split_fractions(self.split_fractions)


def run_data(cfg: DataConfig) -> dict[str, Any]:
    """Inspect a source: formats, statuses, text lengths; optionally write the row table and splits."""
    validate(cfg)
    if not cfg.data:
        raise ValueError("rmkit data needs a data source")
    ds = cfg.read(cfg.data)
    report = ds.summary()
    pairs = ds.pairs
    if pairs:
        turns: list[int] = []

        def texts():  # one pass over the pairs, no text kept (rows in Arrow are parsed once, not three times)
            for p in pairs:
                turns.append(len(p.prompt))
                yield p.chosen_text
                yield p.rejected_text
        n, unit = text_lengths(texts(), cfg.tokenizer)
        for side, lengths in (("chosen", n[0::2]), ("rejected", n[1::2])):
            report[f"{side}_length"] = {"unit": unit, "mean": float(lengths.mean()), "p50": float(np.median(lengths)),
                                        "p95": float(np.percentile(lengths, 95))}
        prompt_turns = np.array(turns)
        report["prompt_turns"] = {"mean": float(prompt_turns.mean()), "max": int(prompt_turns.max())}
    if cfg.output_dir:
        out = check_output_dir(cfg.output_dir, not_in=data_folder_guard(cfg.data))
        save_config(cfg, out / "config.yaml")
        write_table(out / "rows.parquet", ds.status_table())
        splits = split_ids(ds, fractions=tuple(cfg.split_fractions), seed=cfg.split_seed)
        save_splits(splits, out / "splits.json", seed=cfg.split_seed, fractions=list(cfg.split_fractions))
        report["splits"] = {k: len(v) for k, v in splits.items()}
        write_json(out / "report.json", report)
    return report


def text_lengths(texts: Iterable[str], tokenizer: str | None) -> tuple[np.ndarray, str]:
    """Length of each text in ``tokenizer``'s tokens (a model alias, hub id or path), or in characters when no
    tokenizer is given or none loads; returns the lengths and their unit (``tokens`` or ``characters``). ``texts``
    may be a generator: it is read in chunks, so a million pairs' texts are never held at once."""
    tok = None
    if tokenizer:
        try:
            from transformers import AutoTokenizer

            tok = load_pretrained(AutoTokenizer, resolve_model(tokenizer))
        except (OSError, ValueError, ImportError):
            tok = None
    if tok is None:
        return np.array([len(t) for t in texts], float), "characters"
    # In chunks, keeping only the counts: one call over every text held each token's id, string and offsets at
    # once (the bulk of `rmkit data`'s and the audit's memory at 50k pairs).
    counts: list[int] = []
    it = iter(texts)
    while chunk := list(itertools.islice(it, 1024)):
        ids = tok(chunk, add_special_tokens=False, verbose=False)["input_ids"]  # lengths only: no warning
        counts.extend(len(x) for x in ids)
    return np.array(counts, float), "tokens"
