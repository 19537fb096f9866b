"""A gold-standard lab: a fixed gold reward model plays the human, so every method can be measured.

As in Gao et al. 2022 ("Scaling Laws for Reward Model Overoptimization") and Coste et al. 2023
("Reward Model Ensembles Help Mitigate Overoptimization"): a **gold** RM scores real prompts and
responses; labels are sampled from Bradley-Terry on its reward difference, with a temperature that
sets how often a label goes against the gold (noise as humans make it: mostly on close pairs), and
optional planted flips on top (noise as a pipeline makes it: anywhere). **Proxy** RMs learn from those
labels, and every study grades them against the gold, never against labels a proxy produced.

    gold = fit_gold("smollm2", pairs, layer=10, head_l2=0.3)  # GoldRM: a frozen layer + a BT head on real labels
    g = gold.diffs(pairs)                                 # (N,) gold r(chosen) - r(rejected)
    T = choose_temperature(g, against=0.225)              # ~22.5% of sampled labels against the gold
    labels = sample_labels(ids, g, T, flips=0.2, seed=0)  # DataFrame: id, gold_diff, sampled, flipped, ...
    lab = lab_pairs(pairs, labels)                        # pairs written as the labels say

Every pair keeps its id, its gold difference, its sampled label and whether it was flipped: truth for
"ambiguous" (a small gold difference) and "mislabeled" (flipped; or, more broadly, against the gold).

Studies (functions over cached proxy features ``(N, V, H)``; `run_lab` runs them and writes lab.json):
`study_learnability`, `study_strength`, `study_flips`, `study_denoise`; `study_shift` on policy samples. The
best-of-n study (`rmkit.bon.study_bon`, the overoptimization curve) runs where the samples are: ``rmkit bon --gold``.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch

from .audit import response_length_diff
from .calibration import crossfit_calibration, expected_calibration_error, flip_posterior, spearman
from .config import save_config, validate
from .data import PreferenceDataset, PreferencePair, RowResult, data_folder_guard, split_ids
from .denoise import PRESETS, RANKED, DenoiseConfig, denoise_pairs
from .detectors import cleanlab_label_issues
from .ensemble import EnsembleConfig, default_cache_dir, encode_features, heads_on_features, member_layers
from .files import check_output_dir, write_json, write_table
from .gold import fit_gold, fit_prompt_aware_gold, gold_files, load_gold
from .hardware import resolve_device, resolve_precision
from .heads import fold_of, select_l2, train_bt_heads
from .intervals import mean_interval
from .losses import difference_loss
from .metarm import metarm_backward
from .models import RewardModel, RewardOutput
from .objectives import compute_loss, get_objective
from .relevance import SentenceEncoder, other_prompt
from .strength import pair_quality_scores
from .configs.lab import STUDIES, LabConfig  # noqa: F401 - the settings, beside the job



# ----------------------------------------------------------------------------------------------
# Labels


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))


def expected_against(gold_diff: np.ndarray, temperature: float) -> float:
    """Expected share of Bradley-Terry labels at ``temperature`` that go against the gold's sign."""
    return float(np.mean(_sigmoid(-np.abs(gold_diff) / temperature)))


def choose_temperature(gold_diff: np.ndarray, against: float) -> float:
    """The temperature whose sampled labels go against the gold ``against`` of the time (bisection in log T)."""
    g = np.asarray(gold_diff, np.float64)
    lo, hi = math.log(1e-6 * np.abs(g).mean() + 1e-12), math.log(1e6 * np.abs(g).mean() + 1e-12)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if expected_against(g, math.exp(mid)) < against else (lo, mid)
    return math.exp(0.5 * (lo + hi))


def sample_labels(ids: Sequence[str], gold_diff: np.ndarray, temperature: float, *, flips: float = 0.0,
                  seed: int = 0):
    """Labels drawn from Bradley-Terry on the gold, then planted flips on top; one row per pair.

    Columns: ``id``; ``gold_diff`` (gold r(chosen) - r(rejected), sides as in the source data);
    ``p_chosen = sigmoid(gold_diff / T)``; ``sampled`` (1 if the draw prefers the source's chosen side);
    ``flipped`` (a planted flip reversed the draw); ``label`` (1 if the lab's label prefers the source's
    chosen side: ``sampled`` xor ``flipped``); ``against_gold`` (the lab's label contradicts the gold's sign).
    """
    import pandas as pd

    g = np.asarray(gold_diff, np.float64)
    rng = np.random.default_rng(seed)
    p = _sigmoid(g / temperature)
    sampled = rng.random(len(g)) < p
    flipped = np.zeros(len(g), bool)
    k = int(round(flips * len(g)))
    flipped[rng.choice(len(g), size=k, replace=False)] = True
    label = sampled ^ flipped
    return pd.DataFrame({"id": list(ids), "gold_diff": g, "p_chosen": p, "sampled": sampled.astype(int),
                         "flipped": flipped, "label": label.astype(int),
                         "against_gold": (label != (g > 0)) & (g != 0)})


def length_confounded(gold_diff: np.ndarray, length_diff: np.ndarray, bonus: float) -> np.ndarray:
    """The label law of the length-confounded lab: the gold difference plus a length term the gold does not have,
    ``gold + bonus * std(gold) * x / std(x)`` with ``x`` the signed log length difference (chosen minus rejected).
    Labels sampled from it (`sample_labels`, with the temperature chosen on it) favour the longer response more
    often than the gold does; detectors and RMs are still graded against the gold alone. ``bonus`` 1: a length
    difference one std wide moves the label as much as a gold difference one std wide."""
    from .calibration import signed_log_length

    g = np.asarray(gold_diff, np.float64)
    x = signed_log_length(length_diff)
    return g + bonus * g.std() * x / (x.std() or 1.0)


def read_gold_scores(path: str | Path, ids: Sequence[str]) -> np.ndarray:
    """The gold differences ``(N,)`` of a gold.parquet (id, gold_diff) for ``ids``, in their order; an id
    without a gold score is an error naming the file."""
    import pandas as pd

    table = pd.read_parquet(path)
    by_id = dict(zip(table["id"], table["gold_diff"]))
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(f"{path}: {len(missing)} pairs have no gold score (first: {missing[0]})")
    return np.array([by_id[i] for i in ids])


def lab_pairs(pairs: Sequence[PreferencePair], labels) -> list[PreferencePair]:
    """The pairs written as the lab's labels say: chosen and rejected swapped where ``label`` is 0."""
    by_id = dict(zip(labels["id"], labels["label"]))
    return [p if by_id[p.id] else replace(p, chosen=p.rejected, rejected=p.chosen) for p in pairs]


def as_labelled(diff: np.ndarray, label: np.ndarray) -> np.ndarray:
    """A difference ``(N,)`` taken with the source's sides, written with the lab's sides (negated where ``label``
    reversed them): how a proxy trained on the labels sees the pair."""
    return np.where(np.asarray(label, bool), diff, -np.asarray(diff))


def orient(a: np.ndarray, b: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows (or any per-side arrays) of the lab's chosen and rejected sides."""
    keep = np.asarray(label, bool).reshape((-1,) + (1,) * (np.ndim(a) - 1))
    return np.where(keep, a, b), np.where(keep, b, a)


# ----------------------------------------------------------------------------------------------
# Scorers on the lab: the audit's ensemble, a single RM, cleanlab


def gold_accuracy(diff: np.ndarray, gold_diff: np.ndarray) -> float:
    """The lab's accuracy: share of pairs on which a proxy's reward difference ``diff (N,)`` has the sign of the
    gold's ``gold_diff (N,)``, both with the same sides (a tie of the proxy, 0, counts as preferring the second)."""
    return float(np.mean((np.asarray(diff) > 0) == (np.asarray(gold_diff) > 0)))


def detection_metrics(suspicion: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """AUROC, average precision, precision at k (k = number of true issues) and in the 5% most suspect."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    truth = np.asarray(truth, bool)
    k = max(1, int(truth.sum()))
    order = np.argsort(-suspicion, kind="stable")
    top5 = max(1, int(round(0.05 * len(suspicion))))
    return {"auroc": float(roc_auc_score(truth, suspicion)), "ap": float(average_precision_score(truth, suspicion)),
            "precision_at_k": float(truth[order[:k]].mean()), "precision_top5pct": float(truth[order[:top5]].mean())}


def cleanlab_suspicion(diff: np.ndarray, *, seed: int) -> np.ndarray:
    """cleanlab's label quality on pairs as 2-class examples (`rmkit.detectors.cleanlab_label_issues`)."""
    return cleanlab_label_issues(diff, seed=seed)


@dataclass
class ProxyFeatures:
    """A proxy backbone's cached features of the source pairs ``(N, V, H)`` (views = ``views`` layers)."""

    fc: np.ndarray
    fr: np.ndarray
    views: list[int]
    cfg: EnsembleConfig
    ids: list[str]
    num_layers: int
    # Trained heads' diffs by (settings, layers, labels): the studies train the same ensemble on the same labels
    # (learnability and strength fidelity both use seed s's labels), and run_lab repeats none of it.
    _trained: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def ensemble(self, label: np.ndarray, *, seed: int = 0, cfg: EnsembleConfig | None = None) -> np.ndarray:
        """The audit's cross-fitted ensemble trained on the lab's labels: diffs ``(M, N)``, sides as labelled."""
        cfg = replace(cfg or self.cfg, seed=seed)
        layers = member_layers(cfg, self.num_layers)
        return self._heads(cfg, layers, label)

    def by_layer(self, diffs: np.ndarray, *, seed: int = 0) -> dict[int, np.ndarray]:
        """The ensemble's ``diffs (M, N)`` (from `ensemble`, same seed) as one cross-fitted head per block: the
        members reading each layer, averaged where they scored (``{layer: (N,)}``)."""
        layers = np.array(member_layers(replace(self.cfg, seed=seed), self.num_layers))
        return {int(x): np.nanmean(diffs[layers == x], axis=0) for x in sorted(set(layers.tolist()))}

    def single(self, label: np.ndarray, *, seed: int = 0) -> np.ndarray:
        """One cross-fitted RM (a head on the last block, the features a sequence-classification head reads
        from): ``(N,)``."""
        cfg = replace(self.cfg, members=2, bootstrap=False, layers=[self.num_layers], seed=seed)
        return np.nanmean(self._heads(cfg, [self.num_layers] * 2, label), axis=0)

    def _heads(self, cfg: EnsembleConfig, layers: list[int], label: np.ndarray) -> np.ndarray:
        label = np.asarray(label, dtype=bool)
        key = (repr(cfg), tuple(layers), label.tobytes())
        if key not in self._trained:
            if len(self._trained) >= 16:  # (M, N) floats each: a few MB at most, the oldest go first
                self._trained.pop(next(iter(self._trained)))
            c, r = orient(self.fc, self.fr, label)
            pick = [self.views.index(x) for x in sorted(set(layers))]
            self._trained[key] = heads_on_features(cfg, c[:, pick], r[:, pick], self.ids, layers)[0]
        return self._trained[key].copy()  # a caller may write into its diffs


def proxy_features(cfg: EnsembleConfig, pairs: Sequence[PreferencePair], *, batch_size: int = 64,
                   progress: bool = True) -> ProxyFeatures:
    """Encode the source pairs once with the proxy backbone in ``cfg.precision``: the blocks the audit's members
    read, and the last (cached; the same cache entry as `rmkit audit` of the same data with the same settings)."""
    rm = RewardModel.from_pretrained(cfg.model, max_length=cfg.max_length).to(resolve_device(cfg.device))
    views = sorted(set(member_layers(cfg, rm.num_layers)) | {rm.num_layers})
    precision = resolve_precision(cfg.precision, rm.device, announce=cfg.precision == "auto")
    fc, fr = encode_features(rm, pairs, cache_dir=cfg.cache_dir or default_cache_dir(), model_id=cfg.model,
                             pooling="mean", layers=views, batch_size=batch_size, progress=progress,
                             precision=precision)
    return ProxyFeatures(np.asarray(fc), np.asarray(fr), views, replace(cfg, precision=precision),
                         [p.id for p in pairs], rm.num_layers)


class LabInputs(NamedTuple):
    """What the lab's studies take: the settings, the gold difference of every pair ``(N,)`` (source sides), the
    proxy's cached features, the source pairs (in the order of the other three) and their response length
    differences ``(N,)`` (chosen minus rejected, in the proxy's tokens)."""

    cfg: LabConfig
    gold: np.ndarray
    proxy: "ProxyFeatures"
    pairs: list[PreferencePair]
    length_diff: np.ndarray


def lab_source_pairs(cfg: LabConfig) -> list[PreferencePair]:
    """The real pairs the lab runs on: the data, read as ``cfg`` says, or its seeded sample (``max_pairs``)."""
    ds = cfg.read(cfg.data)
    return (ds if cfg.max_pairs is None else ds.sample(cfg.max_pairs, seed=cfg.seed)).pairs


def load_lab_inputs(cfg: LabConfig, gold_scores: str | Path, *, progress: bool = True) -> LabInputs:
    """The lab of ``cfg`` (its data, read as it says) with a gold already made (a gold.parquet, e.g. the committed
    benchmarks/lab/gold_hh_smollm2.parquet) and the proxy's features (encoded once, then cached)."""
    pairs = lab_source_pairs(cfg)
    ids = [p.id for p in pairs]
    proxy = proxy_features(cfg.proxy_config(), pairs, progress=progress)
    length_diff, _ = response_length_diff(pairs, proxy.cfg.model)
    return LabInputs(cfg, read_gold_scores(gold_scores, ids), proxy, pairs, length_diff)


# ----------------------------------------------------------------------------------------------
# Studies. Each takes the proxy features, the gold differences (source sides) and a temperature.


def _mean_std(rows: list[dict]) -> dict:
    """Mean and std over seeds of each metric (NaN runs, e.g. precision with nothing flagged, left out)."""
    keys = rows[0].keys()

    def agg(fn, k):
        v = np.array([r[k] for r in rows], dtype=float)
        return float(fn(v[np.isfinite(v)])) if np.isfinite(v).any() else float("nan")

    return {k: agg(np.mean, k) for k in keys} | {f"{k}_std": agg(np.std, k) for k in keys}


def study_learnability(proxy: ProxyFeatures, gold_diff: np.ndarray, temperature: float, *, seeds: int = 3,
                       base_seed: int = 0) -> dict:
    """Held-out (cross-fitted) accuracy of the proxy ensemble and a single proxy RM against the gold's sign,
    trained on clean sampled labels; and how often those labels themselves agree with the gold."""
    rows = []
    for s in range(seeds):
        lab = sample_labels(proxy.ids, gold_diff, temperature, seed=base_seed + s)
        y = lab["label"].to_numpy().astype(bool)
        g = as_labelled(gold_diff, y)  # gold difference, sides as labelled
        mean = np.nanmean(proxy.ensemble(y, seed=base_seed + s), axis=0)
        single = proxy.single(y, seed=base_seed + s)
        rows.append({"ensemble": gold_accuracy(mean, g), "single_rm": gold_accuracy(single, g),
                     "labels_with_gold": float(1 - lab["against_gold"].mean())})
    return _mean_std(rows)


def p_label_right(mean: np.ndarray, ids: Sequence[str], *, seed: int, method: str = "temperature") -> np.ndarray:
    """P(label right) ``(N,)`` from the ensemble's mean strength ``(N,)``, cross-fitted on two folds keyed by the
    pair ids (as the audit does: no pair's map is fitted on itself); the studies' one calibration."""
    return crossfit_calibration(mean, fold_of(ids, 2, seed=seed + 101), method=method)


def p_flipped(p_right: np.ndarray, rate: float) -> np.ndarray:
    """P(flipped | the ensemble's view) at flip rate ``rate`` (`calibration.flip_posterior`), the rate capped
    below one half, where flip_posterior's inversion is undefined (a flip as likely as not whatever the view)."""
    return flip_posterior(p_right, min(rate, 0.49))


def study_strength(proxy: ProxyFeatures, gold_diff: np.ndarray, temperature: float, *, seeds: int = 3,
                   base_seed: int = 0, min_confidence: float = 0.8) -> dict:
    """Strength fidelity: Spearman of the ensemble's mean strength with the gold difference (both as
    labelled); AUROC of the audit's p_label_wrong for labels against the gold; ECE of p_label_wrong
    against that truth; precision of the calibrated flags; all on clean sampled labels."""
    rows = []
    for s in range(seeds):
        lab = sample_labels(proxy.ids, gold_diff, temperature, seed=base_seed + s)
        y = lab["label"].to_numpy().astype(bool)
        g = as_labelled(gold_diff, y)
        diffs = proxy.ensemble(y, seed=base_seed + s)
        mean = np.nanmean(diffs, axis=0)
        p_wrong = 1 - p_label_right(mean, proxy.ids, seed=base_seed + s)
        wrong = lab["against_gold"].to_numpy()
        flags = p_wrong >= min_confidence
        rows.append({"strength_spearman": spearman(mean, g),
                     "auroc_against_gold": detection_metrics(p_wrong, wrong)["auroc"],
                     "ece_against_gold": expected_calibration_error(p_wrong, wrong),
                     "flagged_share": float(flags.mean()),
                     "precision_flagged_against_gold": float(wrong[flags].mean()) if flags.any() else float("nan")})
    return _mean_std(rows)


def study_flips(proxy: ProxyFeatures, gold_diff: np.ndarray, temperature: float, *, levels: Sequence[float],
                seeds: int = 3, base_seed: int = 0, min_confidence: float = 0.8, with_cleanlab: bool = True) -> dict:
    """Planted flips on top of sampled labels: AUROC and top-5% precision of rmkit's ensemble, a single RM and
    cleanlab against the planted flips; precision and ECE of the calibrated flags (truth: planted flips). And the
    ceiling (``gold_oracle``): the gold itself ranking labels by how far they go against it. Even it cannot tell
    a planted flip from a label the Bradley-Terry draw already sent against the gold, nor see a flip on a pair
    the gold finds close, so no detector can pass its AUROC."""
    out: dict = {}
    for level in levels:
        runs: dict[str, list] = {}
        for s in range(seeds):
            lab = sample_labels(proxy.ids, gold_diff, temperature, flips=level, seed=base_seed + s)
            y = lab["label"].to_numpy().astype(bool)
            flipped = lab["flipped"].to_numpy()
            diffs = proxy.ensemble(y, seed=base_seed + s)
            mean = np.nanmean(diffs, axis=0)
            single = proxy.single(y, seed=base_seed + s)
            runs.setdefault("rmkit", []).append(detection_metrics(1 - pair_quality_scores(diffs), flipped))
            runs.setdefault("single_rm", []).append(detection_metrics(-single, flipped))
            runs.setdefault("gold_oracle", []).append(detection_metrics(-as_labelled(gold_diff, y), flipped))
            # The best one of the ensemble's per-block heads, picked with the truth: what the ensemble adds over
            # choosing the right block (an upper bound for any one of its heads, not a method a user could run).
            per_layer = {x: detection_metrics(-d, flipped) for x, d in proxy.by_layer(diffs, seed=base_seed + s).items()}
            best = max(per_layer, key=lambda x: per_layer[x]["auroc"])
            runs.setdefault("best_single_block", []).append({**per_layer[best], "layer": best})
            if with_cleanlab:
                runs.setdefault("cleanlab", []).append(detection_metrics(cleanlab_suspicion(single, seed=s), flipped))
            for method in ("temperature", "isotonic"):
                p_wrong = 1 - p_label_right(mean, proxy.ids, seed=base_seed + s, method=method)
                flags = p_wrong >= min_confidence
                name = "calibrated_flags" if method == "temperature" else "calibrated_flags_isotonic"
                runs.setdefault(name, []).append({
                    "flagged_share": float(flags.mean()),
                    "precision_flagged": float(flipped[flags].mean()) if flags.any() else float("nan"),
                    "recall_flagged": float(flags[flipped].mean()) if flipped.any() else float("nan"),
                    "ece_vs_flipped": expected_calibration_error(p_wrong, flipped),
                    "ece_vs_against_gold": expected_calibration_error(p_wrong, lab["against_gold"].to_numpy()),
                    **{f"precision_at_{c}": float(flipped[p_wrong >= c].mean()) if (p_wrong >= c).any() else float("nan")
                       for c in (0.6, 0.7, 0.9)},
                    **{f"share_at_{c}": float((p_wrong >= c).mean()) for c in (0.6, 0.7, 0.9)}})
            # P(flipped | view) with the flip rate known, and estimated from 100 reviewed random pairs
            p_right = p_label_right(mean, proxy.ids, seed=base_seed + s)
            reviewed = np.random.default_rng(base_seed + s + 202).choice(len(flipped), 100, replace=False)
            for name, rate in (("flip_posterior_known_rate", level), ("flip_posterior_reviewed_100",
                                                                      float(flipped[reviewed].mean()))):
                p_flip = p_flipped(p_right, rate)
                flags = p_flip >= min_confidence
                runs.setdefault(name, []).append({
                    "noise_rate_used": rate, "ece_vs_flipped": expected_calibration_error(p_flip, flipped),
                    "flagged_share": float(flags.mean()),
                    "precision_flagged": float(flipped[flags].mean()) if flags.any() else float("nan"),
                    "recall_flagged": float(flags[flipped].mean()) if flipped.any() else float("nan")})
        out[str(level)] = {k: _mean_std(v) for k, v in runs.items()}
    return out


@dataclass
class DenoiseCase:
    """One seed's lab at one flip level as the denoising study trains on it: the labels ``label (N,)`` (True:
    the source's chosen side is chosen; ``flipped`` says which were planted), the gold difference as labelled
    ``gold (N,)``, the proxy's features of a middle and the last block ``fc, fr (N, 2H)`` (sides as labelled),
    the training and test split ``(N,)`` and the audit ensemble's mean strength ``mean (N,)``."""

    pairs: list[PreferencePair]  # placeholders carrying the ids, for `denoise_pairs`
    label: np.ndarray
    flipped: np.ndarray
    gold: np.ndarray
    fc: np.ndarray
    fr: np.ndarray
    train: np.ndarray
    test: np.ndarray
    fold: np.ndarray  # folds for the head's L2 choice
    mean: np.ndarray

    def denoised(self, preset: str, strength: np.ndarray, fraction: float | None = 0.1,
                 p_flip: np.ndarray | None = None, reviews: dict[str, str] | None = None) -> tuple[np.ndarray, ...]:
        """`rmkit.denoise` ``preset`` on the training pairs, by ``strength (N,)``: the lowest ``fraction``, or
        (fraction None) where ``p_flip (N,)`` >= 0.5; posterior reads ``p_flip`` on every pair; ``reviews`` (id ->
        keep/flip/drop) win over the preset. Returns what `grade` trains on: training weights, labels, margins and
        which pairs were swapped, each ``(N,)``."""
        bayes = fraction is None and preset in RANKED  # act where p_flip >= 0.5; posterior reads it on every pair
        cfg = DenoiseConfig(preset=preset, fraction=fraction if fraction is not None else 0.1,
                            min_confidence=0.5 if bayes else None, confidence="p_flipped")
        out, _ = denoise_pairs(self.pairs, strength, cfg, eligible=self.train, p_label_wrong=p_flip, reviews=reviews)
        kept = {p.id: p for p in out}
        ids = [p.id for p in self.pairs]
        return (np.array([float(t and i in kept) for i, t in zip(ids, self.train)]),
                np.array([kept[i].label if i in kept else 1.0 for i in ids]),
                np.array([(kept[i].margin or 0.0) if i in kept else 0.0 for i in ids]),
                np.array([i in kept and kept[i].chosen_text == "r" for i in ids]))

    def grade(self, w_train: np.ndarray, labels: np.ndarray | None = None, margins: np.ndarray | None = None,
              swap: np.ndarray | None = None) -> float:
        """`fit`'s head graded against the gold's sign on the test split."""
        return self.accuracy(self.fit(w_train, labels, margins, swap))

    def accuracy(self, rewards: np.ndarray) -> float:
        """Accuracy of reward differences ``(N,)`` (sides as labelled) against the gold's sign on the test split."""
        return gold_accuracy(rewards[self.test], self.gold[self.test])

    def fit(self, w_train: np.ndarray, labels: np.ndarray | None = None, margins: np.ndarray | None = None,
            swap: np.ndarray | None = None) -> np.ndarray:
        """A linear BT head trained on the pairs ``w_train (N,)`` weights (with soft ``labels``, ``margins`` and
        sides ``swap``ped, each ``(N,)``, where given): its reward differences ``(N,)``, sides as labelled."""
        n = len(self.gold)
        labels = np.ones(n) if labels is None else labels
        swap = np.zeros(n, bool) if swap is None else swap
        dc, dr = orient(self.fc, self.fr, ~swap)
        l2 = select_l2(dc, dr, np.where(w_train > 0, self.fold, -1), labels=labels)[0]
        (w,) = train_bt_heads(dc, dr, w_train[None], l2=l2, labels=labels, margins=margins)
        return (self.fc - self.fr) @ w  # sides as labelled, before any denoising


def denoise_case(proxy: ProxyFeatures, gold_diff: np.ndarray, temperature: float, *, flips: float,
                 seed: int) -> DenoiseCase:
    """The lab's labels at ``flips`` planted flips (seed ``seed``), `rmkit train`'s split of them, and the
    audit's ensemble trained on them: what the denoising study and its variants act on."""
    view = sorted({len(proxy.views) // 2, len(proxy.views) - 1})  # a middle and the last encoded block
    lab = sample_labels(proxy.ids, gold_diff, temperature, flips=flips, seed=seed)
    y = lab["label"].to_numpy().astype(bool)
    c, r = orient(proxy.fc, proxy.fr, y)
    pairs = [PreferencePair(i, [], [{"role": "assistant", "content": "c"}],
                            [{"role": "assistant", "content": "r"}], subset="lab") for i in proxy.ids]
    ds = PreferenceDataset([RowResult(p.id, "ok", "lab", "", k, "", p) for k, p in enumerate(pairs)])
    splits = split_ids(ds, seed=seed)
    return DenoiseCase(pairs, y, lab["flipped"].to_numpy(), as_labelled(gold_diff, y),
                       c[:, view].reshape(len(y), -1), r[:, view].reshape(len(y), -1),
                       np.isin(proxy.ids, splits["train"]), np.isin(proxy.ids, splits["test"]),
                       fold_of(proxy.ids, 2, seed=seed + 7), np.nanmean(proxy.ensemble(y, seed=seed), axis=0))


def study_denoise(proxy: ProxyFeatures, gold_diff: np.ndarray, temperature: float, *, noise: float = 0.2,
                  seeds: int = 3, base_seed: int = 0, fraction: float = 0.1, reviewed: int | None = 100,
                  presets: Sequence[str] = PRESETS, ceiling: Sequence[str] = ()) -> dict:
    """Denoising presets (`rmkit.denoise`, on the training split) with strength from the audit's ensemble, at 0
    and ``noise`` planted flips. The proxy is a linear head on the proxy's middle and last blocks' features,
    trained on the (denoised) training split; graded by accuracy against the gold's sign on the test split.
    (A head on frozen features, not a fine-tuned RM: 5 presets x 2 noise levels x seeds fine-tunes would
    take days on 2 CPU cores; the presets are the same code either way.)

    Each preset acts on the lowest ``fraction`` of training pairs (the paper's 10%) and, as ``PRESET@reviewed``,
    on the pairs whose P(flipped | the ensemble's view) is at least 0.5 (Bayes' rule: act where a flip is more
    likely than not; `calibration.flip_posterior`, ``rmkit denoise --confidence p_flipped --min-confidence 0.5``),
    the flip rate taken from ``reviewed`` random training pairs a reviewer checks (None: not run), as a user
    would estimate it. A fixed 10% acts on half of 20% flips, and more of the ranking is past where its precision
    falls below one half. ``posterior`` selects nothing (every training pair's label becomes 1 - P(flipped) at
    the rate), so it runs only as ``posterior@reviewed``. ``recovered_share`` = (preset at noise - baseline at
    noise) / (baseline at 0 - baseline at noise).

    ``ceiling`` presets also run as ``PRESET@gold``: the same fraction picked by the gold's own difference, the
    ranking no detector can beat in this lab (it is the flips study's ``gold_oracle``). They bound what a better
    detector could buy and are never candidates for ``best_preset``.
    """
    results: dict[str, dict[str, list[float]]] = {}
    rates: dict[str, list[float]] = {}  # the reviewed flip rate of each level and seed
    for level in (0.0, noise):
        for s in range(seeds):
            case = denoise_case(proxy, gold_diff, temperature, flips=level, seed=base_seed + s)
            runs = [(p, p, fraction, case.mean, None) for p in presets if p in RANKED]
            # The gold's difference at the ensemble's scale, so margins (scale x strength) stay comparable.
            runs += [(f"{p}@gold", p, fraction, case.gold * np.std(case.mean) / np.std(case.gold), None)
                     for p in ceiling]
            if reviewed:
                sample = np.random.default_rng(base_seed + s + 303).choice(np.flatnonzero(case.train),
                                                                           min(reviewed, int(case.train.sum())),
                                                                           replace=False)
                rate = float(case.flipped[sample].mean())
                rates.setdefault(f"{level}", []).append(rate)
                p_flip = p_flipped(p_label_right(case.mean, proxy.ids, seed=base_seed + s), rate)
                runs += [(f"{p}@reviewed", p, None, case.mean, p_flip) for p in presets]
            accuracy = results.setdefault(f"{level}", {})
            accuracy.setdefault("baseline", []).append(case.grade(case.train.astype(float)))
            for name, preset, share, strength, p_flip in runs:
                accuracy.setdefault(name, []).append(case.grade(*case.denoised(preset, strength, share, p_flip)))
    summary: dict = {"noise": noise, "fraction": fraction, "reviewed_pairs": reviewed, "reviewed_rate": rates,
                     "accuracy": {}}
    for level, per in results.items():
        summary["accuracy"][level] = {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "runs": v}
                                      for k, v in per.items()}
    clean = summary["accuracy"]["0.0"]["baseline"]["mean"]
    noisy = summary["accuracy"][str(noise)]["baseline"]["mean"]
    lost = clean - noisy
    rec = {k: (v["mean"] - noisy) / lost if lost > 0 else float("nan")
           for k, v in summary["accuracy"][str(noise)].items() if k != "baseline"}
    summary["lost"] = lost
    summary["recovered_share"] = rec
    # The lost accuracy is a small difference of two noisy means (a seed's flips can cost 0.5 or 3 points), so the
    # share comes with a 95% interval over seeds: seeds resampled, each keeping its clean, noisy and preset runs.
    runs = {k: np.asarray(v["runs"]) for k, v in summary["accuracy"][str(noise)].items()}
    draw = np.random.default_rng(base_seed).integers(0, seeds, (2000, seeds))  # (resamples, seeds)
    clean_b = np.asarray(summary["accuracy"]["0.0"]["baseline"]["runs"])[draw].mean(1)
    noisy_b = runs["baseline"][draw].mean(1)
    ok = clean_b > noisy_b  # resamples whose flips cost something: a share of nothing is undefined
    summary["recovered_share_ci95"] = {
        k: np.quantile((v[draw].mean(1)[ok] - noisy_b[ok]) / (clean_b[ok] - noisy_b[ok]), [0.025, 0.975]).tolist()
        if ok.any() else None for k, v in runs.items() if k != "baseline"}
    finite = {k: v for k, v in rec.items()  # none when the flips cost nothing to recover; the gold is no method
              if np.isfinite(v) and not k.endswith("@gold")}
    summary["best_preset"] = max(finite, key=lambda k: finite[k]) if finite else None
    summary["recovered_share_best"] = finite[summary["best_preset"]] if finite else None
    spread = summary["accuracy"]["0.0"]["baseline"]["std"]
    summary["below_baseline_at_0"] = [k for k, v in summary["accuracy"]["0.0"].items()
                                      if k != "baseline" and not k.endswith("@gold")
                                      and v["mean"] < clean - max(spread, 0.002)]
    return summary


def proxy_heads(proxy: ProxyFeatures, label: np.ndarray, train: np.ndarray, *, seed: int = 0,
                members: int = 5) -> dict[str, tuple[list[int], np.ndarray]]:
    """Reward heads trained on the lab's labels of the ``train`` pairs, to score new responses: ``single`` (one
    head on the last block) and ``ensemble`` (``members`` heads, each on another block and a bootstrap
    resample, as ensembles of RMs differ in what they read and what they saw). Returns name -> (layers, W)."""
    c, r = orient(proxy.fc, proxy.fr, label)
    fold = np.where(train, fold_of(proxy.ids, 2, seed=seed + 5), -1)
    out: dict[str, tuple[list[int], np.ndarray]] = {}
    rng = np.random.default_rng(seed)
    blocks = sorted(set(member_layers(replace(proxy.cfg, mode="seeds", members=members, layers=None),
                                      proxy.num_layers)))
    layers = [blocks[m % len(blocks)] for m in range(members)]
    W = np.zeros((members, proxy.fc.shape[2]))
    pool = np.flatnonzero(train)
    for layer in sorted(set(layers)):
        v = proxy.views.index(layer)
        l2 = select_l2(c[:, v], r[:, v], fold)[0]
        mine = [m for m in range(members) if layers[m] == layer]
        weights = np.zeros((len(mine), len(label)), np.float32)
        for j in range(len(mine)):
            np.add.at(weights[j], rng.choice(pool, size=len(pool), replace=True), 1.0)
        W[mine] = train_bt_heads(c[:, v], r[:, v], weights, l2=l2)
        if layer == proxy.num_layers:
            out["single"] = ([layer], train_bt_heads(c[:, v], r[:, v], train[None].astype(np.float32), l2=l2))
    if "single" not in out:
        v = proxy.views.index(proxy.num_layers)
        l2 = select_l2(c[:, v], r[:, v], fold)[0]
        out["single"] = ([proxy.num_layers], train_bt_heads(c[:, v], r[:, v], train[None].astype(np.float32), l2=l2))
    out["ensemble"] = (layers, W)
    return out


def head_rewards(feats: np.ndarray, views: Sequence[int], heads: tuple[list[int], np.ndarray]) -> np.ndarray:
    """Rewards ``(M, N)`` of the heads `proxy_heads` returns (``(layers, W (M, H))``, head m reading block
    ``layers[m]``) on features ``(N, V, H)`` of the blocks ``views``. Heads are linear, so features of chosen
    minus rejected give reward differences."""
    layers, W = heads
    return np.stack([feats[:, list(views).index(layer)] @ W[m] for m, layer in enumerate(layers)])


# ----------------------------------------------------------------------------------------------
# The command


def run_lab(cfg: LabConfig, *, progress: bool = True) -> dict[str, Any]:
    """Gold, labels and the chosen studies; writes gold.parquet, labels.parquet (seed 0, flips 0) and lab.json."""
    import pandas as pd

    validate(cfg)
    if not cfg.data:
        raise ValueError("rmkit lab needs data: real prompts and responses with labels")
    out = check_output_dir(cfg.output_dir, not_in=data_folder_guard(cfg.data))
    save_config(cfg, out / "config.yaml")
    t0 = time.time()
    pairs = lab_source_pairs(cfg)
    ids = [p.id for p in pairs]
    result: dict[str, Any] = {"data": cfg.data, "pairs": len(pairs)}
    prompt_aware = None
    if cfg.gold_scores:
        gold_diff = read_gold_scores(cfg.gold_scores, ids)
        made = Path(cfg.gold_scores).with_suffix(".json")  # how the gold was made, saved beside its scores
        gold_info = json.loads(made.read_text()) if made.exists() else {"source": cfg.gold_scores}
        saved = gold_files(made)
        if saved is not None:  # its head too, so this output folder is a gold for policy samples (rmkit bon --gold)
            shutil.copy(saved[1], out / "gold_head.npy")
    else:
        if cfg.gold_head:
            gold = load_gold(cfg.gold_head, cfg.gold_model, layer=cfg.gold_layer, max_length=cfg.gold_max_length,
                             device=cfg.device, precision=cfg.precision)
        else:
            gold = fit_gold(cfg.gold_model, pairs, layer=cfg.gold_layer, max_length=cfg.gold_max_length,
                            head_l2=cfg.gold_head_l2, seed=cfg.seed, batch_size=cfg.batch_size, progress=progress,
                            device=cfg.device, precision=cfg.precision)
        gold_diff = gold.diffs(pairs, batch_size=cfg.batch_size, progress=progress)
        # Does the gold read the prompt? On up to 256 chosen responses of distinct prompts: a gold that does not is
        # hacked with the proxy by a policy that drifts off the question (benchmarks/lab_hack.py).
        first = list({json.dumps(p.prompt, sort_keys=True): k for k, p in reversed(list(enumerate(pairs)))}.values())
        some = sorted(np.random.default_rng(cfg.seed).permutation(first)[:256].tolist())
        prompts, chosen = [pairs[i].prompt for i in some], [pairs[i].chosen for i in some]
        if cfg.gold_relevance and len(some) < 2:
            raise ValueError(f"gold_relevance: {cfg.data} has {len(some)} distinct prompt(s); the relevance weight is "
                             "fitted on answers to different questions (at least 2)")
        np.save(out / ("gold_base_head.npy" if cfg.gold_relevance else "gold_head.npy"), gold.weights)
        if cfg.gold_relevance:
            base_info = dict(gold.info)
            write_json(out / "gold_base.json", base_info)
            gold = prompt_aware = fit_prompt_aware_gold(gold, prompts, chosen, encoder=SentenceEncoder(
                cfg.gold_relevance, device=str(resolve_device(cfg.device))), slack=cfg.gold_relevance_slack,
                seed=cfg.seed, batch_size=cfg.batch_size)
            gold_diff = gold_diff + gold.beta * gold.relevance_diffs(pairs, batch_size=cfg.batch_size, progress=progress)
        gold_info = dict(gold.info)
        if len(some) >= 2:  # undefined on data with one prompt
            gold_info["prompt_sensitivity"] = prompt_sensitivity(
                lambda p, r: gold.score(p, r, batch_size=cfg.batch_size), prompts, chosen, seed=cfg.seed)

    length_diff, unit = response_length_diff(pairs, cfg.proxy_config().model)
    gold_info = {**gold_info, "length_spearman": spearman(gold_diff, length_diff), "length_unit": unit,
                 "abs_diff_median": float(np.median(np.abs(gold_diff)))}
    write_table(out / "gold.parquet", pd.DataFrame({"id": ids, "gold_diff": gold_diff}))
    if prompt_aware is None:
        write_json(out / "gold.json", gold_info)
    else:  # its JSON names the base (gold_base.json, gold_base_head.npy): rmkit bon --gold reads the folder
        prompt_aware.info = gold_info
        prompt_aware.save(out / "gold.json", str(out / "gold_base.json"))
    temperature = cfg.temperature or choose_temperature(gold_diff, cfg.against_gold)
    labels = sample_labels(ids, gold_diff, temperature, seed=cfg.seed)
    write_table(out / "labels.parquet", labels)
    result.update(gold=gold_info, temperature=temperature,
                  against_gold=float(labels["against_gold"].mean()))
    result["timings"] = {"gold_seconds": time.time() - t0}
    needs_proxy = [s for s in cfg.studies if s in STUDIES]
    if needs_proxy:
        t1 = time.time()
        proxy = proxy_features(cfg.proxy_config(), pairs, progress=progress)
        result["timings"]["proxy_encoding_seconds"] = time.time() - t1
        result["proxy_precision"] = proxy.cfg.precision
        kw = dict(seeds=cfg.seeds, base_seed=cfg.seed)
        for name in cfg.studies:
            t1 = time.time()
            if name == "learnability":
                result["learnability"] = study_learnability(proxy, gold_diff, temperature, **kw)
                result["proxy_gold_accuracy"] = result["learnability"]["ensemble"]
            elif name == "strength":
                result["strength"] = study_strength(proxy, gold_diff, temperature, **kw)
                result["strength_spearman"] = result["strength"]["strength_spearman"]
            elif name == "flips":
                result["flips"] = study_flips(proxy, gold_diff, temperature, levels=cfg.flip_levels, **kw)
            elif name == "denoise":
                result["denoise"] = study_denoise(proxy, gold_diff, temperature, noise=cfg.denoise_noise,
                                                   reviewed=cfg.denoise_reviewed, ceiling=cfg.denoise_ceiling, **kw)
            result["timings"][f"{name}_seconds"] = time.time() - t1
            write_json(out / "lab.json", result)  # as it goes
    write_json(out / "lab.json", result)
    return result


def lab_summary(result: dict) -> dict:
    """The headline numbers of a `run_lab` result (what ``rmkit lab`` prints; lab.json holds every run): the
    gold, the labels, and per study its main metric, seed means."""
    out = {k: result[k] for k in ("data", "pairs", "temperature", "against_gold") if k in result}
    out["gold"] = {k: result["gold"][k] for k in ("model", "length_spearman") if k in result["gold"]}
    if "prompt_sensitivity" in result["gold"]:
        out["gold"]["prefers_own_prompt"] = result["gold"]["prompt_sensitivity"]["prefers_own"]
    for k in ("proxy_gold_accuracy", "strength_spearman"):
        if k in result:
            out[k] = result[k]
    if "flips" in result:
        out["flips_auroc"] = {level: {who: v["auroc"] for who, v in per.items() if isinstance(v, dict) and "auroc" in v}
                              for level, per in result["flips"].items()}
    if "denoise" in result:
        out["denoise"] = {k: result["denoise"][k] for k in ("lost", "best_preset", "recovered_share_best",
                                                            "below_baseline_at_0")}
    return out


class _HeadOnFeatures(torch.nn.Module):
    """A linear reward head over cached features, shaped like a `RewardModel` for the trainer's step function:
    ``forward(input_ids=features (B, H))`` gives ``RewardOutput(rewards (B,), features)``. It lets MetaRM's
    own gradient (`rmkit.metarm.metarm_backward`) run on a head in the lab, where fine-tuning is too slow."""

    def __init__(self, w: np.ndarray):
        super().__init__()
        self.head = torch.nn.Linear(len(w), 1, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(w, dtype=torch.float32)[None])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> RewardOutput:
        return RewardOutput(rewards=self.head(input_ids).squeeze(-1), features=input_ids)


def prompt_sensitivity(score, prompts: Sequence, responses: Sequence, *, seed: int = 0) -> dict[str, float]:
    """How far a reward model reads the prompt: its reward for each response under its own prompt minus under
    another one (the next distinct prompt in a seeded random cycle, `other_prompt`: never the same text).

    A gold that judges answers prefers the own prompt nearly always; one that scores responses alone does so as
    often as not, and a policy that leaves the question but keeps the register it likes then hacks the gold along
    with the proxy (benchmarks/README.md: PPO to KL 127, benchmarks/lab_hack.py). ``prompts`` (chat messages or
    strings) may repeat, e.g. k samples per prompt; ``score(prompts, responses)`` gives ``(B,)`` rewards. Returns
    the mean gap with its 95% interval over responses (`rmkit.intervals`), and ``prefers_own``, the share of
    responses rewarded more under their own prompt."""
    keys = [json.dumps(p, sort_keys=True) for p in prompts]
    distinct = list(dict.fromkeys(keys))  # in order of first appearance
    if len(distinct) < 2 or len(responses) != len(prompts):
        raise ValueError(f"prompt_sensitivity needs at least 2 distinct prompts and one response each, got "
                         f"{len(distinct)} distinct prompts, {len(prompts)} prompts and {len(responses)} responses")
    group = {key: g for g, key in enumerate(distinct)}
    first: dict[int, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(group[key], i)
    cycle = other_prompt(len(distinct), seed=seed)
    moved_prompts = [prompts[first[int(cycle[group[key]])]] for key in keys]
    own = np.asarray(score(list(prompts), list(responses)), dtype=np.float64)
    moved = np.asarray(score(moved_prompts, list(responses)), dtype=np.float64)
    gap = own - moved
    lo, hi = mean_interval(gap, seed=seed)
    return {"mean_gap": float(gap.mean()), "ci95": [lo, hi], "prefers_own": float((gap > 0).mean()),
            "responses": len(gap)}


def grade_sample_pairs(rewards: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """How well a proxy orders a policy's samples, against the gold: ``rewards, gold (P, n)`` for n samples of
    each of P prompts. Over every pair of samples of a prompt (P * n(n-1)/2): accuracy against the sign of the
    gold's difference, the same on the half of pairs with the larger gold gap, and the proxy's J (Eq. 11)."""
    i, j = np.triu_indices(gold.shape[1], 1)
    gap = gold[:, i] - gold[:, j]  # (P, pairs)
    big = np.abs(gap) >= np.median(np.abs(gap))
    right = (rewards[:, i] - rewards[:, j] > 0) == (gap > 0)
    with torch.no_grad():
        J = difference_loss(torch.as_tensor(rewards)).item()
    return {"accuracy": float(np.mean(right)), "accuracy_large_gap": float(np.mean(right[big])), "J": J}


def study_shift(fc: np.ndarray, fr: np.ndarray, train: np.ndarray, meta_samples: np.ndarray, eval_samples: np.ndarray,
                eval_gold: np.ndarray, *, steps: int = 300, batch_pairs: int = 64, meta_prompts: int = 4,
                lr: float = 1e-3, inner_lrs: Sequence[float] = (0.05, 0.5), seed: int = 0) -> dict:
    """The paper's Sec. 4 claim in the lab: on pairs of a policy's own samples (a distribution the proxy never
    trained on), is a MetaRM proxy closer to the gold than a vanilla one?

    ``fc, fr (N, H)``: features of the lab's training pairs, sides as labelled; ``train (N,)`` the pairs
    it may use. ``meta_samples (P_m, k, H)``: features of k policy samples for each meta prompt (no labels);
    ``eval_samples (P_e, n, H)`` and ``eval_gold (P_e, n)``: samples of other prompts and their gold
    rewards. Vanilla: a BT head on the training pairs (L2 by cross-fitted log-loss). MetaRM: from the
    vanilla head, ``steps`` of Algorithm 1 (`metarm.metarm_backward`: ascent on J over ``meta_prompts`` meta
    prompts, BT at the adapted head, AdamW) for each inner step size; a control runs the same steps without
    the meta term. Graded on every pair of samples of an eval prompt: accuracy against the gold's sign
    (all pairs, and the half with the larger gold gap), and J on the eval samples.
    """
    idx = np.flatnonzero(train)
    fold = np.where(train, np.arange(len(train)) % 2, -1)
    l2 = select_l2(fc, fr, fold)[0]
    (w0,) = train_bt_heads(fc, fr, train[None].astype(np.float32), l2=l2)

    def grade(w: np.ndarray) -> dict:
        return grade_sample_pairs(eval_samples @ w, eval_gold)

    def run(inner_lr: float | None) -> np.ndarray:
        model = _HeadOnFeatures(w0)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        rng = np.random.default_rng(seed)
        c, r = torch.as_tensor(fc, dtype=torch.float32), torch.as_tensor(fr, dtype=torch.float32)
        meta = torch.as_tensor(meta_samples, dtype=torch.float32)
        objective = get_objective("bt")
        for _ in range(steps):
            pick = rng.choice(idx, batch_pairs, replace=False)
            batch = {"input_ids": torch.cat([c[pick], r[pick]]), "attention_mask": None,
                     "label": torch.ones(batch_pairs)}
            opt.zero_grad()
            if inner_lr is None:
                loss, _ = compute_loss(model, batch, objective)
                (loss + l2 * (model.head.weight ** 2).sum()).backward()
            else:
                items = rng.choice(len(meta), meta_prompts, replace=False)
                meta_batch = {"input_ids": meta[items].reshape(-1, meta.shape[-1]), "attention_mask": None,
                              "k": meta.shape[1]}
                metarm_backward(model, batch, meta_batch, objective, inner_lr=inner_lr)
                (l2 * (model.head.weight ** 2).sum()).backward()  # the same penalty as the vanilla head
            opt.step()
        return model.head.weight.detach().numpy()[0]

    n = eval_samples.shape[1]
    out = {"pairs_per_prompt": n * (n - 1) // 2, "eval_prompts": int(eval_samples.shape[0]),
           "meta_prompts": int(meta_samples.shape[0]), "head_l2": l2, "steps": steps,
           "vanilla": grade(w0), "vanilla_more_steps": grade(run(None))}
    out["metarm"] = {str(eta): grade(run(eta)) for eta in inner_lrs}
    return out
