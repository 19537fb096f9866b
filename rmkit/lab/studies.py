"""The lab's studies, functions over cached proxy features ``(N, V, H)``, the gold differences (source sides) and a
temperature: learnability, strength fidelity, planted flips, denoising, shift (MetaRM); prompt sensitivity of a gold."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..calibration import crossfit_calibration, expected_calibration_error, flip_posterior, spearman
from ..data import PreferenceDataset, PreferencePair, RowResult, split_ids
from ..denoise import PRESETS, RANKED, DenoiseConfig, denoise_pairs
from ..heads import fold_of, select_l2, train_bt_heads
from ..intervals import mean_interval
from ..losses import difference_loss
from ..metarm import metarm_backward
from ..models import RewardOutput
from ..objectives import compute_loss, get_objective
from ..relevance import other_prompt
from ..strength import pair_quality_scores
from .labels import as_labelled, orient, sample_labels
from .proxies import ProxyFeatures, cleanlab_suspicion, detection_metrics, gold_accuracy


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
    with the proxy (docs/lab-notebook.md: PPO to KL 127, benchmarks/lab_hack.py). ``prompts`` (chat messages or
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
