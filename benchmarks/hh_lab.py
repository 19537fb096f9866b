"""The lab's hh-rlhf as every lab benchmark reads it: the pairs, the committed gold and temperature (from
`lab.py`'s run), the lab's sampled labels and the seeded train/validation/test split. One definition, so the
fine-tuned RM, MetaRM, the learning curve, best-of-n and the second domain all train on the same labels."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from rmkit.data import PreferenceDataset, PreferencePair, load_preferences, split_ids
from rmkit.config import load_config
from rmkit.lab import (LabConfig, LabInputs, choose_temperature, denoise_case, lab_pairs, load_lab_inputs,
                       read_gold_scores, sample_labels)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hh-rlhf"


@dataclass
class HHLab:
    ds: PreferenceDataset
    ids: list[str]
    gold: np.ndarray  # (N,) gold r(chosen) - r(rejected), source sides
    temperature: float
    splits: dict[str, list[str]]

    def labels(self, seed: int = 0, flips: float = 0.0) -> pd.DataFrame:
        """The lab's sampled labels, with a share ``flips`` of planted flips on top (the same draws for any
        share): id, label, flipped, against_gold, ..."""
        return sample_labels(self.ids, self.gold, self.temperature, flips=flips, seed=seed)

    def label(self, seed: int = 0) -> np.ndarray:
        """``(N,)`` True where the lab keeps the source's sides."""
        return self.labels(seed)["label"].to_numpy().astype(bool)

    def mask(self, split: str) -> np.ndarray:
        """``(N,)`` True for the pairs of ``split`` (train, validation or test)."""
        return np.isin(self.ids, self.splits[split])

    def labelled(self, split: str, seed: int = 0, flips: float = 0.0) -> list[PreferencePair]:
        """The pairs of ``split``, in the split's order, with the lab's labels as their sides."""
        where = {i: k for k, i in enumerate(self.ids)}
        labelled = lab_pairs(self.ds.pairs, self.labels(seed, flips))
        return [labelled[where[i]] for i in self.splits[split]]


@dataclass(frozen=True)
class Gold:
    """One of the lab's golds: its artifacts ``benchmarks/lab/<stem>.parquet`` (gold difference per pair id),
    ``.json`` (how it was made) and ``_head.npy``; the suffix of the results measured against it
    (``results/lab<suffix>.json``, ``bon<suffix>.json``, ...); the `LabConfig` settings that make it over
    configs/lab_cpu.yaml."""

    stem: str
    suffix: str
    settings: dict

    def file(self, ext: str) -> Path:
        return ROOT / "benchmarks" / "lab" / f"{self.stem}{ext}"

    def result(self, name: str) -> Path:
        """``benchmarks/results/<name><suffix>.<ext>`` for ``name`` like ``bon.json``."""
        stem, ext = name.rsplit(".", 1)
        return ROOT / "benchmarks" / "results" / f"{stem}{self.suffix}.{ext}"


# The default (configs/lab_cpu.yaml) is SmolLM2's layer 10 (benchmarks/lab_gold_choice.py chose it); MPNet's was the
# lab's first gold, and its results keep the unsuffixed names.
GOLDS = {"smollm2": Gold("gold_hh_smollm2", "_smollm2", {}),
         # The default plus a relevance term, so a policy that leaves the question loses gold (lab_gold_relevance.py)
         "smollm2_relevant": Gold("gold_hh_smollm2_relevant", "_smollm2_relevant", {}),
         "mpnet": Gold("gold_hh", "", {"gold_model": "mpnet", "gold_layer": None, "gold_head_l2": 0.3,
                                       "precision": "fp32"})}


def load_hh_lab(seed: int = 0, gold: str = "mpnet") -> HHLab:
    """The lab on hh-rlhf with the gold ``gold`` (a key of `GOLDS`) at the temperature that sends 22.5% of labels
    against it (`rmkit.lab.choose_temperature`, as `rmkit lab` sets it)."""
    ds = load_preferences(DATA)
    ids = [p.id for p in ds.pairs]
    gold_diff = read_gold_scores(GOLDS[gold].file(".parquet"), ids)
    return HHLab(ds, ids, gold_diff, choose_temperature(gold_diff, AGAINST_GOLD), split_ids(ds, seed=seed))


def lab_studies_inputs(gold: str = "smollm2") -> LabInputs:
    """`rmkit.lab.LabInputs` for the gold ``gold``: configs/lab_cpu.yaml with its settings, its committed scores and
    the proxy's cached features of the same pairs."""
    the = GOLDS[gold]
    cfg = replace(load_config(LabConfig, ROOT / "configs" / "lab_cpu.yaml"), **the.settings)
    cfg.data = str((ROOT / cfg.data).resolve())
    return load_lab_inputs(cfg, the.file(".parquet"))


def denoise_cases(inputs: LabInputs, *, seeds: int, noise: float):
    """The denoising study's cases (`rmkit.lab.denoise_case`) at 0 and ``noise`` planted flips, seeds 0..seeds-1,
    with the lab's temperature: ``(level, seed, case)``, as the denoising benchmarks loop over them."""
    temperature = choose_temperature(inputs.gold, inputs.cfg.against_gold)
    for level in (0.0, noise):
        for s in range(seeds):
            yield level, s, denoise_case(inputs.proxy, inputs.gold, temperature, flips=level, seed=s)


AGAINST_GOLD = load_config(LabConfig, ROOT / "configs" / "lab_cpu.yaml").against_gold  # the paper's 20-25%
