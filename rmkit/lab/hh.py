"""The lab on hh-rlhf as the research suite reads it (benchmarks/): the pairs of ../shared/data/hh-rlhf, the golds
committed under benchmarks/lab/ (`GOLDS`), the lab's sampled labels, its seeded splits, the proxies' training pool and
the helpers several studies share. One definition, so every study trains and grades on the same labels. Reads files
of a clone of the repository (the golds, configs/lab_cpu.yaml) and the data beside it."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import ndtr

from ..config import load_config
from ..configs.lab import LabConfig
from ..data import PreferenceDataset, PreferencePair, load_preferences, split_ids
from ..denoise import select_pairs
from ..training import TrainConfig, train_reward_model
from .labels import choose_temperature, lab_pairs, read_gold_scores, sample_labels
from .proxies import LabInputs, load_lab_inputs
from .studies import denoise_case

ROOT = Path(__file__).resolve().parents[2]  # the repository: its configs/ and benchmarks/lab/
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


AGAINST_GOLD = 0.225  # configs/lab_cpu.yaml's against_gold: the paper's 20-25% (checked by a test)


def training_pool(hl, seed: int, flips: float) -> tuple[list, np.ndarray]:
    """The proxies' training pairs: hh-rlhf's train split in lab_bon.py's seeded order (a size-k proxy trains on the
    first k), with the lab's labels as their sides, and whether each label is a planted flip."""
    order = np.random.default_rng(seed + 1).permutation(len(hl.ids))
    train_order = order[np.isin(order, np.flatnonzero(hl.mask("train")))]
    labelled = dict(zip(hl.splits["train"], hl.labelled("train", seed, flips)))
    flipped = hl.labels(seed, flips)["flipped"].to_numpy()
    return [labelled[hl.ids[k]] for k in train_order], flipped[train_order]


def train_proxy(run: Path, pairs: list, seed: int, epochs: float | None = None):
    """`rmkit train` with configs/train_default.yaml on ``pairs`` (the lab's labels), seed ``seed``, into ``run``
    (resumed or reloaded when already there). Returns the trained RewardModel."""
    base = load_config(TrainConfig, ROOT / "configs" / "train_default.yaml")
    cfg = replace(base, data=str(DATA), output_dir=str(run), seed=seed, eval_every=0, save_every=50,
                  epochs=base.epochs if epochs is None else epochs)
    return train_reward_model(cfg, train_pairs=pairs, eval_pairs=[]).model


def prompt_file(hl: "HHLab", path: Path) -> int:
    """The test split's single-turn prompts (under 300 characters, lab_bon.py's rule) as a JSONL of id + prompt:
    pairs the proxies never saw. Returns how many."""
    test = set(hl.splits["test"])
    rows = [{"id": p.id, "prompt": list(p.prompt)} for p in hl.ds.pairs
            if p.id in test and len(p.prompt) == 1 and len(p.prompt[0]["content"]) < 300]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def pick(case, ranking: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the lowest ``fraction`` of training pairs by ``ranking (N,)``: `rmkit.denoise.select_pairs`'s."""
    return np.flatnonzero(select_pairs(ranking, fraction=fraction, eligible=case.train))


def noisy_gold(case, accuracy: float, seed: int) -> np.ndarray:
    """The gold's difference as labelled ``(N,)`` plus independent Gaussian noise, its scale chosen so the sum's
    sign agrees with the gold's on an expected ``accuracy`` of the training pairs: a detector of that accuracy
    whose errors owe nothing to the RM's (E[agree] = mean Phi(|g| / s), solved for s by bisection)."""
    g = np.abs(case.gold[case.train])
    lo, hi = 1e-6 * g.std(), 1e3 * g.std()
    for _ in range(100):
        s = np.sqrt(lo * hi)
        lo, hi = (s, hi) if ndtr(g / s).mean() > accuracy else (lo, s)
    return case.gold + np.random.default_rng(1_000 + seed).normal(0.0, np.sqrt(lo * hi), len(case.gold))


def denoise_summary(runs: dict, detection: dict, *, seeds: int, noise: float, reference: str = "flip+margin",
                    what: str = "") -> dict:
    """The result from each variant's accuracy per level and seed (``runs[level][variant]``, lists over seeds):
    the share of the lost accuracy recovered (as study_denoise's, with its 95% interval over resampled seeds), and
    each variant's gain over the baseline and over ``reference`` at each level, paired by seed (same resamples)."""
    clean, noisy = (np.asarray(runs[lv]["baseline"]) for lv in ("0.0", f"{noise}"))
    draw = np.random.default_rng(0).integers(0, seeds, (2000, seeds))  # seeds resampled, as study_denoise
    ok = clean[draw].mean(1) > noisy[draw].mean(1)
    share = {}
    for k, v in runs[f"{noise}"].items():
        v = np.asarray(v)
        boot = (v[draw].mean(1) - noisy[draw].mean(1))[ok] / (clean[draw].mean(1) - noisy[draw].mean(1))[ok]
        share[k] = {"point": float((v.mean() - noisy.mean()) / (clean.mean() - noisy.mean())),
                    "ci95": np.quantile(boot, [0.025, 0.975]).tolist()}

    def gain(v, ref):  # accuracy points, paired by seed
        d = 100 * (np.asarray(v) - np.asarray(ref))
        return {"points": float(d.mean()), "ci95": np.quantile(d[draw].mean(1), [0.025, 0.975]).tolist()}

    return {"what": what, "seeds": seeds, "noise": noise,
            "lost": float(clean.mean() - noisy.mean()), "recovered_share": share,
            "gain": {lv: {k: {"over_baseline": gain(v, d["baseline"]), f"over_{reference}": gain(v, d[reference])}
                          for k, v in d.items() if k != "baseline"} for lv, d in runs.items()},
            "accuracy": {lv: {k: {"mean": float(np.mean(v)), "runs": v} for k, v in d.items()} for lv, d in runs.items()},
            "detection": {k: {m: float(np.mean([x[m] for x in v])) for m in v[0]} for k, v in detection.items()}}
