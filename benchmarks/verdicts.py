"""Do the audit's verdicts beat simple baselines? Every detector on the same features, splits and seeds, graded
against a truth it never saw.

- ``lab``: the gold-standard lab (SmolLM2's layer 10 plays the human, 22.5% of sampled labels against it), 20%
  planted flips; AUROC and top-5% precision against the flips for the audit's ``default`` and every baseline.
- ``confounded``: the same with labels drawn from the gold plus a length bonus the gold lacks
  (`rmkit.lab.length_confounded`, ``--bonus``): longer responses win more often than the gold says; the flips are
  still the truth. ``--bonus-sweep`` reruns it at other strengths.
- ``llmeval2``: LLMEval²'s 482 human ties as the truth for "ambiguous" (`tie_auroc` per tie score), and why the
  ensemble's std ranks them below chance.
- ``hh``: the audit of the real hh-rlhf pairs under the new default and the previous one: flagged share, agreement.
- ``ceilings``: how far any detector on these features can go: the audit's heads (and one all-layers head, linear or
  an MLP) trained on the truth itself, beside the default in the same run, in the plain and the confounded lab, and
  a learning curve: would more pairs lift it (`ceilings_block`).
- ``hh_flips``, ``llmeval2_flips``: 20% planted flips on the real human labels of hh-rlhf's 8,503 usable pairs and
  LLMEval²'s 2,063 decided ones; the frozen detectors (and ``length_only``) graded against the flips.

Every lab block also grades each detector against a second truth, ``vs_gold``: the label contradicts the gold
(planted or drawn so by the label noise; the oracle of this truth is the gold itself, so its ceiling is 1).
``--against-gold R`` draws the labels colder or hotter than the config's 22.5% (blocks ``lab_againstR``,
``confounded_againstR``); ``--second-backbone NAME`` adds NAME's length-calibrated ensemble alone
(``second_backbone``) and mixed 5 + 5 with MiniLM's (``mixed_backbones``), options of the audit rather than
baselines (blocks ``lab_NAME``, ``confounded_NAME``).

Detectors (suspicion: higher = more likely a wrong label): ``default`` (the audit's: the ensemble's mean strength
calibrated with a length term, `rmkit.calibration`, its heads trained within a subset where that agrees significantly
better with the subset's labels, ``heads_by_subset auto``; blocks measured before e6ac319 pooled them),
``calibration_by_subset`` (the audit's option: the default's calibration fitted within each subset of 200+ pairs),
``plain_ensemble`` (the audit before: ensemble strength, no length term), ``best_single_by_validation`` (the
ensemble's one block whose heads agree best with the data's own labels out of fold), ``all_layers_head`` (one
cross-fitted head on every block concatenated), ``cleanlab_ensemble`` and ``cleanlab_single`` (cleanlab on the
ensemble's and the best single block's out-of-sample differences), ``aum_heads`` and ``cartography_heads`` (training
dynamics of a head trained by SGD on the frozen features), ``length_only`` (no model: a label that picks the shorter
response is suspect), ``pooled_heads`` (the audit's default before ``heads_by_subset auto``: one set of heads for all
subsets) and the baselines given the same subsets as the default's heads (``cleanlab_heads_by_subset``,
``all_layers_head_by_subset``), and with ``--finetune`` ``finetuned_single`` (MiniLM fine-tuned, top 2 blocks, 2
epochs, cross-fitted over 2 folds), ``cleanlab_finetuned``, ``aum`` and ``cartography`` (the fine-tune's own training
dynamics), and the option ``ensemble_and_finetuned`` (the fine-tune as one more member: its score, the ensemble's and
the length term weighed by a cross-fitted logistic regression on the labels). ``gold_oracle``: the gold itself ranking
labels by how far they go against the label law: the ceiling no detector can pass.

    .venv/bin/python benchmarks/verdicts.py               # lab, confounded, hh_flips, llmeval2_flips, llmeval2, hh: ~30 min
    .venv/bin/python benchmarks/verdicts.py --finetune           # adds the fine-tuned baselines: ~2 hours more
    .venv/bin/python benchmarks/verdicts.py --blocks lab,confounded --against-gold 0.1        # ~10 min
    .venv/bin/python benchmarks/verdicts.py --blocks lab,confounded --second-backbone gemma3  # ~10 min + 30 to encode
    .venv/bin/python benchmarks/verdicts.py --blocks ceilings                              # ~22 min

Writes benchmarks/results/verdicts.json (the blocks a run computes replace those of an earlier run; the rest stay).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from rmkit.audit import AuditConfig, response_length_diff, run_audit
from rmkit.calibration import (crossfit_calibration, crossfit_calibration_by_group, expected_calibration_error,
                               signed_log_length, spearman)
from rmkit.config import load_config
from rmkit.data import load_preferences, text_lengths
from rmkit.detectors import aum, cartography, cleanlab_label_issues, read_pair_margins, review_budget, tie_scores
from rmkit.ensemble import heads_by_subset, heads_on_features, member_layers, plan_ensemble
from rmkit.heads import fold_of, select_l2, sgd_margins, train_bt_heads
from rmkit.lab import (LabConfig, as_labelled, choose_temperature, detection_metrics, lab_pairs, length_confounded,
                       load_lab_inputs, orient, proxy_features, sample_labels)
from rmkit.provenance import run_stamp, write_result
from rmkit.strength import pair_quality_scores
from rmkit.training import TrainConfig, train_reward_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
GOLD = ROOT / "benchmarks" / "lab" / "gold_hh_smollm2.parquet"
FLIPS = 0.2
DEFAULT_AGAINST = 0.225  # configs/lab_cpu.yaml's against_gold: sampled labels against the gold before the flips
OPTIONS = ("default", "pooled_heads", "calibration_by_subset")  # the audit's own rows: default, before, an option
DEFAULT_BONUS = 1.0  # the confounded lab's length bonus; other bonuses write blocks confounded_bonusB


def _mean_std(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float))]
    return {**{k: float(np.mean([r[k] for r in rows])) for k in keys},
            **{f"{k}_std": float(np.std([r[k] for r in rows])) for k in keys}, "seeds": len(rows)}


def cross_fitted_head(F: np.ndarray, ids: list[str], seed: int, share: float = 1.0) -> np.ndarray:
    """One linear BT head on features ``F (N, D)`` (chosen minus rejected, as labelled), two folds: each pair scored
    by the head of the other fold, its L2 picked by cross-fitted log-loss inside that fold. ``share`` < 1 trains each
    head on that seeded share of its fold only (a learning curve; every pair is still scored)."""
    fold, inner = fold_of(ids, 2, seed=seed), fold_of(ids, 2, seed=seed + 1)
    kept = np.random.default_rng(seed + 7).random(len(ids)) < share
    zero = np.zeros_like(F)
    out = np.full(len(ids), np.nan)
    for k in (0, 1):
        train = (fold != k) & kept
        l2 = select_l2(F, zero, np.where(train, inner, -1))[0]
        (w,) = train_bt_heads(F, zero, train[None].astype(np.float32), l2=l2)
        out[fold == k] = F[fold == k] @ w
    return out


MLP = {"hidden": 256, "dropout": 0.5, "weight_decay": 0.5, "epochs": 3, "lr": 1e-3, "batch": 128}


def cross_fitted_mlp(c: np.ndarray, r: np.ndarray, ids: list[str], seed: int) -> np.ndarray:
    """A nonlinear reward ``f`` (one hidden layer of `MLP`'s width, GELU, dropout on input and hidden) on the
    features of each side ``c, r (N, D)`` (as labelled), trained with the BT loss on "c wins", cross-fitted over the
    same two folds as `cross_fitted_head`; returns ``f(c) - f(r)`` out of fold ``(N,)``.

    Why: the ceilings' linear heads could miss what a nonlinear reading of the same features holds. The settings are
    the best of six tried on seed 0 of the plain lab (width 64 to 1024, 2 to 40 epochs, weight decay 0.01 to 0.5,
    dropout 0.1 or 0.5: AUROC 0.806 to 0.816 against the flips when trained on the truth; the linear head 0.821):
    longer training memorises (trained on the labels for 20 epochs it falls to 0.675)."""
    fold = fold_of(ids, 2, seed=seed)
    C, R = torch.tensor(c, dtype=torch.float32), torch.tensor(r, dtype=torch.float32)
    mu, sd = C.mean(0), C.std(0) + 1e-6
    C, R = (C - mu) / sd, (R - mu) / sd
    out = np.full(len(ids), np.nan)
    for k in (0, 1):
        train, held = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        torch.manual_seed(seed * 10 + k)
        order = torch.Generator().manual_seed(seed * 10 + k)
        f = torch.nn.Sequential(torch.nn.Dropout(MLP["dropout"]), torch.nn.Linear(C.shape[1], MLP["hidden"]),
                                torch.nn.GELU(), torch.nn.Dropout(MLP["dropout"]), torch.nn.Linear(MLP["hidden"], 1))
        opt = torch.optim.AdamW(f.parameters(), lr=MLP["lr"], weight_decay=MLP["weight_decay"])
        for _ in range(MLP["epochs"]):
            f.train()
            perm = train[torch.randperm(len(train), generator=order).numpy()]
            for b in range(0, len(perm), MLP["batch"]):
                idx = torch.as_tensor(perm[b:b + MLP["batch"]])
                loss = torch.nn.functional.softplus(-(f(C[idx]) - f(R[idx])).squeeze(-1)).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        f.eval()
        with torch.inference_mode():
            out[held] = (f(C[held]) - f(R[held])).squeeze(-1).numpy()
    return out


CURVE_SHARES = (0.125, 0.25, 0.5, 1.0)  # shares of each fold's pairs the learning curve trains on


def learning_curve(F: np.ndarray, to_labels: np.ndarray, ids: list[str], seed: int, flipped: np.ndarray,
                   full: np.ndarray) -> list:
    """Would more pairs help? AUROC against ``flipped`` of the all-layers head (`cross_fitted_head`) trained on each
    of `CURVE_SHARES` of its folds' pairs: ``F (N, D)`` the differences with the sides it learns (the labels', or the
    truth's), ``to_labels (N,)`` True where those sides are the labels' (each pair is ranked by how far the score goes
    against its label, as the detectors rank it). ``full (N,)``: the suspicion the caller already has from the head on
    every pair (the last share's; not fitted again)."""
    shares = [q for q in CURVE_SHARES if q < 1.0]
    return [*(detection_metrics(-np.where(to_labels, sc, -sc), flipped)["auroc"]
              for sc in (cross_fitted_head(F, ids, seed, q) for q in shares)),
            detection_metrics(full, flipped)["auroc"]]


def curve_summary(curve: dict[str, list], ids: list[str]) -> dict:
    """``{name: [per-seed AUROCs by share]}`` as means and seed spreads, with about how many pairs each head trained on
    (seed 0's training fold)."""
    fold_pairs = int((fold_of(ids, 2, seed=0) != 0).sum())
    return {"train_pairs_per_head_about": [round(fold_pairs * q) for q in CURVE_SHARES],
            **{name: {"auroc": np.mean(v, 0).tolist(), "auroc_std": np.std(v, 0).tolist()} for name, v in curve.items()}}


def stacked(columns: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """P(label right) ``(N,)`` from several scores of each pair ``columns (N, C)`` (sides as labelled), cross-fitted
    over ``fold``: a logistic regression without intercept on the other folds (a pair written the other way round
    negates every column and the label), as `rmkit.calibration`'s length term with more columns."""
    from sklearn.linear_model import LogisticRegression

    X = np.nan_to_num(np.asarray(columns, np.float64))
    out = np.full(len(X), np.nan)
    for k in np.unique(fold):
        held = fold == k
        scale = X[~held].std(0) + 1e-12
        Z = X[~held] / scale
        fit = LogisticRegression(fit_intercept=False).fit(np.vstack([Z, -Z]), np.r_[np.ones(len(Z)), np.zeros(len(Z))])
        out[held] = fit.predict_proba(X[held] / scale)[:, 1]
    return out


def finetuned(inputs, label: np.ndarray, seed: int, work: Path) -> tuple[np.ndarray, np.ndarray]:
    """MiniLM fine-tuned on the lab's labels, cross-fitted over two folds: its out-of-fold reward differences
    ``(N,)`` (sides as labelled) and its training dynamics ``(E, N)`` (each pair's margins in the fold that trained
    on it). Finished folds are reused (a killed run resumes)."""
    import pandas as pd

    from rmkit.models import RewardModel
    from rmkit.scoring import score_token_pairs

    ids = inputs.proxy.ids
    settings = dict(model="minilm", max_length=128, batch_size=16, epochs=2, lr=5e-5, train_layers="top:2",
                    eval_every=0, save_every=50, eval_test=False, log_pair_margins=True, seed=seed)
    # Both folds scored: a rerun with the same labels, settings and pairs reads them instead of re-scoring.
    key = json.dumps({"settings": settings, "ids": ids}, sort_keys=True)
    done = work / f"seed{seed}_out_of_fold.npz"
    if done.exists():
        got = np.load(done)
        if np.array_equal(got["label"], label) and "key" in got.files and str(got["key"]) == key:
            return got["diff"], got["dynamics"]
    pairs = lab_pairs(inputs.pairs, pd.DataFrame({"id": ids, "label": label.astype(int)}))
    fold = fold_of(ids, 2, seed=seed + 11)
    diff = np.full(len(ids), np.nan)
    margins = []
    for k in (0, 1):
        out = work / f"seed{seed}_fold{k}"
        cfg = TrainConfig(output_dir=str(out), **settings)
        res = train_reward_model(cfg, train_pairs=[p for p, f in zip(pairs, fold) if f != k], eval_pairs=[])
        rm = RewardModel.from_pretrained(str(out / "model"))
        held = [p for p, f in zip(pairs, fold) if f == k]
        c, r = rm.encode_pairs(held)
        rc, rr = score_token_pairs(rm, c, r, batch_size=64)
        diff[fold == k] = rc - rr
        margins.append(read_pair_margins(out / "pair_margins.jsonl", ids))
        del res
    rows = max(m.shape[0] for m in margins)
    both = np.full((rows, len(ids)), np.nan)
    for m in margins:  # each pair is trained in one fold: its visits come from that fold's run
        both[: m.shape[0]] = np.where(np.isnan(both[: m.shape[0]]), m, both[: m.shape[0]])
    tmp = done.with_suffix(".tmp.npz")
    np.savez(tmp, label=label, diff=diff, dynamics=both, key=np.array(key))
    tmp.replace(done)
    return diff, both


def frozen_suspicions(proxy, y: np.ndarray, length: np.ndarray, seed: int, cal_fold: np.ndarray,
                      subsets: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The detectors that read a backbone's frozen features ``proxy`` under labels ``y (N,)`` (True: the source's
    chosen side wins), with ``length (N,)`` the length differences as labelled: ``{name: suspicion (N,)}`` and the
    ensemble's mean difference. ``default`` is the audit's ``p_label_wrong`` (calibrated on ``cal_fold``): with each
    pair's ``subsets``, from heads trained within the subsets where that agrees better with their labels
    (``heads_by_subset auto``; ``pooled_heads``: the pooled heads, the default before), beside the baselines given the
    same subsets."""
    ids = proxy.ids
    diffs = proxy.ensemble(y, seed=seed)
    mean = np.nanmean(diffs, axis=0)
    p_wrong = 1 - crossfit_calibration(mean, cal_fold, method="length", length_diff=length)
    suspicion = {"default": p_wrong, "plain_ensemble": 1 - pair_quality_scores(diffs)}
    by_layer = proxy.by_layer(diffs, seed=seed)
    best = max(by_layer, key=lambda x: float(np.mean(by_layer[x] > 0)))  # agreement with the data's own labels
    suspicion["best_single_by_validation"] = -by_layer[best]
    c, r = orient(proxy.fc, proxy.fr, y)
    F = (c - r).reshape(len(ids), -1).astype(np.float64)
    suspicion["all_layers_head"] = -cross_fitted_head(F, ids, seed)
    suspicion["cleanlab_ensemble"] = cleanlab_label_issues(mean, seed=seed)
    suspicion["cleanlab_single"] = cleanlab_label_issues(by_layer[best], seed=seed)
    margins = sgd_margins(F / (F.std(0) + 1e-9), seed=seed)
    suspicion["aum_heads"] = aum(margins)
    suspicion["cartography_heads"] = 1 - cartography(margins)[0]
    # No model at all: a label that picks the shorter response is suspect (humans and these labels mostly pick the
    # longer one), the baseline a length-aware verdict has to beat.
    suspicion["length_only"] = -signed_log_length(length)
    if subsets is not None:
        cfg = replace(proxy.cfg, seed=seed, heads_by_subset="auto")
        layers = member_layers(cfg, proxy.num_layers)
        pick = [proxy.views.index(x) for x in sorted(set(layers))]
        # the pooled heads are `diffs` above (the same settings and labels): only the subsets' own heads are new
        own, _ = heads_by_subset(cfg, c[:, pick], r[:, pick], plan_ensemble(cfg, ids, layers), list(range(cfg.members)),
                                 subsets, None, diffs)
        own_mean = np.nanmean(own, axis=0)
        # The audit's default since heads_by_subset auto; the pooled heads' verdicts were its default before. The
        # option calibration_by_subset: the same heads, the calibration fitted within each subset of 200+ pairs.
        suspicion["pooled_heads"] = suspicion["default"]
        suspicion["default"] = 1 - crossfit_calibration(own_mean, cal_fold, method="length", length_diff=length)
        suspicion["calibration_by_subset"] = 1 - crossfit_calibration_by_group(own_mean, cal_fold, subsets,
                                                                               method="length", length_diff=length)[0]
        suspicion["cleanlab_heads_by_subset"] = cleanlab_label_issues(own_mean, seed=seed)
        per = np.full(len(ids), np.nan)  # the all-layers head trained within each subset
        for s in sorted(set(subsets.tolist())):
            m = np.flatnonzero(subsets == s)
            per[m] = -cross_fitted_head(F[m], [ids[i] for i in m], seed)
        suspicion["all_layers_head_by_subset"] = per
    return suspicion, mean


def detectors(inputs, law: np.ndarray, seed: int, *, finetune_dir: Path | None, against_gold: float,
              second=None) -> tuple[dict, dict, dict]:
    """Every detector's metrics for one seed of labels drawn from ``law`` (at the temperature that sends
    ``against_gold`` of them against the law's sign), graded against the planted flips and against "the label
    contradicts the gold" (any wrong label, planted or drawn so); and the default's expected vs actual precision
    at its top 5%."""
    proxy, ids = inputs.proxy, inputs.proxy.ids
    temperature = choose_temperature(law, against_gold)
    lab = sample_labels(ids, law, temperature, flips=FLIPS, seed=seed)
    y = lab["label"].to_numpy().astype(bool)
    flipped = lab["flipped"].to_numpy()
    length = as_labelled(inputs.length_diff, y)
    cal_fold = fold_of(ids, 2, seed=seed + 101)  # the audit's calibration folds
    suspicion, mean = frozen_suspicions(proxy, y, length, seed, cal_fold,
                                        np.array([p.subset for p in inputs.pairs], dtype=object))
    p_wrong = suspicion["default"]
    if second is not None:  # another backbone's ensemble alone, and 5 + 5 members mixed (`more_models`)
        other = second.ensemble(y, seed=seed)
        suspicion["second_backbone"] = 1 - crossfit_calibration(np.nanmean(other, axis=0), cal_fold, method="length",
                                                                length_diff=length)
        half = replace(proxy.cfg, members=5)
        mixed = np.concatenate([proxy.ensemble(y, seed=seed, cfg=half),
                                second.ensemble(y, seed=seed, cfg=replace(second.cfg, members=5))])
        suspicion["mixed_backbones"] = 1 - crossfit_calibration(np.nanmean(mixed, axis=0), cal_fold, method="length",
                                                                length_diff=length)
    if finetune_dir is not None:
        ft, dynamics = finetuned(inputs, y, seed, finetune_dir)
        suspicion["finetuned_single"] = -ft
        suspicion["cleanlab_finetuned"] = cleanlab_label_issues(ft, seed=seed)
        suspicion["aum"] = aum(dynamics)
        suspicion["cartography"] = 1 - cartography(dynamics)[0]
        # The fine-tuned RM as one more member: its score beside the ensemble's and the length term, weighed by a
        # cross-fitted logistic regression on the labels (item 3's "fine-tuned members as an ensemble option").
        suspicion["ensemble_and_finetuned"] = 1 - stacked(np.c_[mean, ft, signed_log_length(length)], cal_fold)
    suspicion["gold_oracle"] = -as_labelled(law, y)
    metrics = {name: detection_metrics(s, flipped) for name, s in suspicion.items()}
    # The second yardstick: every label that goes against the gold, whether planted or drawn so by the label law's
    # own noise. The planted flips cannot be told from the drawn ones (both contradict the law), so against them
    # even the law itself is no perfect detector; against this truth the gold is, and the ceiling is 1.
    wrong = as_labelled(inputs.gold, y) < 0
    vs_gold = {name: detection_metrics(s, wrong) for name, s in suspicion.items() if name != "gold_oracle"}
    top = review_budget(p_wrong, budgets=[int(round(0.05 * len(ids)))])
    k = int(round(0.05 * len(ids)))
    order = np.argsort(-p_wrong, kind="stable")[:k]
    calib = {"k": k, "expected_precision_vs_labels": next(b["expected_precision"] for b in top if b["k"] == k),
             "precision_vs_flips": float(flipped[order].mean()),
             "precision_vs_gold": float((as_labelled(inputs.gold, y)[order] < 0).mean()),
             "precision_vs_label_law": float((as_labelled(law, y)[order] < 0).mean()),
             "ece_vs_flipped": expected_calibration_error(p_wrong, flipped),
             "length_coefficient_median": None}
    return metrics, vs_gold, calib


FINETUNE_ROWS = ("finetuned_single", "cleanlab_finetuned", "aum", "cartography", "ensemble_and_finetuned")


def draws_fingerprint(ids: list[str], law: np.ndarray, seeds: int, against_gold: float) -> str:
    """A hash of everything the fine-tuned rows read besides the texts and settings: the pairs' ids in order, and per
    seed the labels, the planted flips, the fine-tune's folds and the calibration's. Rows carried from a run with
    another fingerprint would be numbers of other labels."""
    import hashlib

    h = hashlib.sha256("\n".join(ids).encode())
    for s in range(seeds):
        lab = sample_labels(ids, law, choose_temperature(law, against_gold), flips=FLIPS, seed=s)
        for part in (lab["label"].to_numpy().astype(bool), lab["flipped"].to_numpy().astype(bool),
                     fold_of(ids, 2, seed=s + 11) == 0, fold_of(ids, 2, seed=s + 101) == 0):
            h.update(np.packbits(part).tobytes())
    return h.hexdigest()[:16]


def lab_block(inputs, bonus: float, seeds: int, finetune_dir: Path | None, against_gold: float,
              second=None, earlier: dict | None = None) -> dict:
    """One lab's detectors over ``seeds``. Without ``finetune_dir``, the fine-tuned rows of ``earlier`` (the block
    as a ``--finetune`` run wrote it) are carried over, named with the run that measured them: they read the same
    seeds, labels and folds and nothing the default computes, and cost 2.5 hours to remeasure. Each block records
    its ``draws`` (`draws_fingerprint`); rows are carried only from a block with the same, or from one written before
    the fingerprint (then ``carried_rows.draws_verified`` is false)."""
    law = inputs.gold if bonus == 0 else length_confounded(inputs.gold, inputs.length_diff, bonus)
    runs: dict[str, list] = {}
    runs_vs_gold: dict[str, list] = {}
    calib = []
    if finetune_dir is not None:
        finetune_dir = finetune_dir / (f"bonus{bonus:g}" + ("" if against_gold == DEFAULT_AGAINST else
                                                            f"_against{against_gold:g}"))
    for s in range(seeds):
        t0 = time.time()
        metrics, vs_gold, c = detectors(inputs, law, s, finetune_dir=finetune_dir, against_gold=against_gold,
                                        second=second)
        for name, m in metrics.items():
            runs.setdefault(name, []).append(m)
        for name, m in vs_gold.items():
            runs_vs_gold.setdefault(name, []).append(m)
        calib.append(c)
        print(f"bonus {bonus:g} seed {s}: {time.time() - t0:.0f} s",
              {k: round(v["auroc"], 3) for k, v in metrics.items()}, flush=True)
    table = {k: _mean_std(v) for k, v in runs.items()}
    table_vs_gold = {k: _mean_std(v) for k, v in runs_vs_gold.items()}
    carried = None
    draws = draws_fingerprint(inputs.proxy.ids, law, seeds, against_gold)
    comparable = finetune_dir is None and earlier and earlier.get("against_gold_before_flips") == against_gold
    if comparable and earlier.get("draws", draws) != draws:
        print(f"bonus {bonus:g}: the fine-tuned rows are not carried over: the labels, flips or folds differ from "
              "the run that measured them (rerun with --finetune)", flush=True)
    elif comparable:
        rows = [k for k in FINETUNE_ROWS if k not in table
                and earlier.get("detectors", {}).get(k, {}).get("seeds") == seeds]  # the same seeds, or none
        if rows:
            table.update({k: earlier["detectors"][k] for k in rows})
            table_vs_gold.update({k: earlier["vs_gold"]["detectors"][k] for k in rows
                                  if k in earlier.get("vs_gold", {}).get("detectors", {})})
            before = earlier.get("carried_rows") or {}
            carried = {"rows": rows, "measured_by": before.get("measured_by") or earlier.get("measured_by"),
                       "draws_verified": "draws" in earlier and before.get("draws_verified", True)}
    # A second backbone's rows are options of the audit, not baselines: the default is MiniLM's alone.
    baselines = [k for k in table if k not in (*OPTIONS, "gold_oracle", "second_backbone", "mixed_backbones",
                                               "ensemble_and_finetuned")]
    best = max(baselines, key=lambda k: table[k]["auroc"])
    best_vs_gold = max([k for k in baselines if k in table_vs_gold], key=lambda k: table_vs_gold[k]["auroc"])
    labels = sample_labels(inputs.proxy.ids, law, choose_temperature(law, against_gold), seed=0)
    return {"bonus": bonus, "flips": FLIPS, "against_gold_before_flips": against_gold,
            "detectors": table, "best_baseline_by_auroc": best,
            "default_minus_best_baseline": {m: table["default"][m] - table[best][m] for m in ("auroc", "precision_top5pct")},
            "vs_gold": {"truth": "the label contradicts the gold (planted flips and labels drawn against it)",
                        "share_seed0": float((as_labelled(inputs.gold, sample_labels(
                            inputs.proxy.ids, law, choose_temperature(law, against_gold), flips=FLIPS, seed=0)["label"]
                            .to_numpy().astype(bool)) < 0).mean()),
                        "detectors": table_vs_gold, "best_baseline_by_auroc": best_vs_gold,
                        "default_minus_best_baseline": {m: table_vs_gold["default"][m] - table_vs_gold[best_vs_gold][m]
                                                        for m in ("auroc", "precision_top5pct")}},
            "default_review_top5pct": _mean_std([{k: v for k, v in c.items() if v is not None} for c in calib]),
            "labels_length_spearman": spearman(labels["label"] * 2 - 1.0, inputs.length_diff),
            "labels_against_gold": float(labels["against_gold"].mean()), "seeds": seeds, "draws": draws,
            **({"carried_rows": carried} if carried else {})}


def ceilings_block(inputs, bonus: float, seeds: int, against_gold: float) -> dict:
    """How far any detector on these frozen features can go: the detectors' inputs made cleaner with the truth, in
    the same run, seeds and folds as ``default`` and the best baseline. ``ensemble_without_flips``: the audit's heads
    trained on the labels before the planted flips (what the flips cost the heads); ``ensemble_on_law_sign`` and
    ``all_layers_head_on_law_sign``: trained on the label law's noise-free sign (the best these features read the
    law) and ``mlp_head_on_law_sign`` (a nonlinear reading of the same features, `cross_fitted_mlp`); each pair then
    ranked by how far its score goes against its label, as the detectors rank it, and
    ``ensemble_on_law_sign_calibrated``: those heads through the default's own length calibration (fitted on the
    labels, as the audit fits it). ``learning_curve``: the all-layers head trained on 1/8 to all of each fold's pairs,
    on the law's sign and on the labels (would a larger dataset lift the ceiling, and by how much per doubling).
    ``gold_oracle``: the law itself. Ceilings, never baselines: each reads the truth."""
    law = inputs.gold if bonus == 0 else length_confounded(inputs.gold, inputs.length_diff, bonus)
    proxy, ids = inputs.proxy, inputs.proxy.ids
    subsets = np.array([p.subset for p in inputs.pairs], dtype=object)
    runs: dict[str, list] = {}
    curve: dict[str, list] = {}
    for s in range(seeds):
        t0 = time.time()
        lab = sample_labels(ids, law, choose_temperature(law, against_gold), flips=FLIPS, seed=s)
        y = lab["label"].to_numpy().astype(bool)
        flipped = lab["flipped"].to_numpy()
        length = as_labelled(inputs.length_diff, y)
        cal_fold = fold_of(ids, 2, seed=s + 101)
        suspicion, _ = frozen_suspicions(proxy, y, length, s, cal_fold, subsets)
        rows = {k: suspicion[k] for k in ("default", "all_layers_head", "best_single_by_validation", "length_only")}
        before = lab["sampled"].to_numpy().astype(bool)  # the labels before the flips
        sign = law > 0
        # a score with `before`'s (or the law's) sides, seen with the lab's: back to the source's sides, then to y's
        rows["ensemble_without_flips"] = -as_labelled(as_labelled(np.nanmean(proxy.ensemble(before, seed=s), 0),
                                                                  before), y)
        on_law = as_labelled(as_labelled(np.nanmean(proxy.ensemble(sign, seed=s), 0), sign), y)
        rows["ensemble_on_law_sign"] = -on_law
        # the default's own pipeline with these heads: the length calibration fitted on the labels, as the audit's
        rows["ensemble_on_law_sign_calibrated"] = 1 - crossfit_calibration(on_law, cal_fold, method="length",
                                                                           length_diff=length)
        c, r = orient(proxy.fc, proxy.fr, sign)
        c, r = c.reshape(len(ids), -1), r.reshape(len(ids), -1)
        F = (c - r).astype(np.float64)
        rows["all_layers_head_on_law_sign"] = -as_labelled(as_labelled(cross_fitted_head(F, ids, s), sign), y)
        rows["mlp_head_on_law_sign"] = -as_labelled(as_labelled(cross_fitted_mlp(c, r, ids, s), sign), y)
        rows["gold_oracle"] = -as_labelled(law, y)
        for name, sc in rows.items():
            runs.setdefault(name, []).append(detection_metrics(sc, flipped))
        # would more pairs lift the ceiling? the all-layers head on a share of each fold, on the truth and the labels
        same = sign == y
        curve.setdefault("all_layers_head_on_law_sign", []).append(
            learning_curve(F, same, ids, s, flipped, rows["all_layers_head_on_law_sign"]))
        curve.setdefault("all_layers_head_on_labels", []).append(learning_curve(
            np.where(same[:, None], F, -F), np.ones(len(ids), bool), ids, s, flipped, rows["all_layers_head"]))
        print(f"ceilings bonus {bonus:g} seed {s}: {time.time() - t0:.0f} s",
              {n: round(v[-1]["auroc"], 3) for n, v in runs.items()}, flush=True)
    table = {n: _mean_std(v) for n, v in runs.items()}
    feature_ceiling = max(("ensemble_on_law_sign", "ensemble_on_law_sign_calibrated", "all_layers_head_on_law_sign",
                           "mlp_head_on_law_sign"),
                          key=lambda n: table[n]["auroc"])
    return {"bonus": bonus, "flips": FLIPS, "against_gold_before_flips": against_gold, "detectors": table,
            "learning_curve": curve_summary(curve, ids),
            "feature_ceiling": feature_ceiling,
            "default_share_of_feature_ceiling_above_chance": (table["default"]["auroc"] - 0.5)
            / (table[feature_ceiling]["auroc"] - 0.5)}


def human_flips_block(proxy, human: np.ndarray, length_diff: np.ndarray, seeds: int,
                      subsets: np.ndarray | None = None) -> dict:
    """Planted flips on real human labels: ``human (N,)`` True where the source's chosen side is the humans' pick,
    ``FLIPS`` of the labels reversed at random (one draw per seed); every frozen detector graded against the flips.
    The humans' own disagreement stays in the labels, unknown, as in a user's data, so no oracle row: the ceiling
    is unknown here. ``learning_curve``: the all-layers head trained on 1/8 to all of each fold's pairs (what more
    human pairs would buy). ``length_diff (N,)``: the responses' lengths, the source's chosen minus rejected."""
    ids = proxy.ids
    runs: dict[str, list] = {}
    curve: dict[str, list] = {}
    calib = []
    k = int(round(0.05 * len(ids)))
    for s in range(seeds):
        t0 = time.time()
        flipped = np.zeros(len(ids), bool)
        flipped[np.random.default_rng(s).choice(len(ids), size=int(round(FLIPS * len(ids))), replace=False)] = True
        y = np.asarray(human, bool) ^ flipped
        length = as_labelled(length_diff, y)
        suspicion, _ = frozen_suspicions(proxy, y, length, s, fold_of(ids, 2, seed=s + 101), subsets)
        for name, sc in suspicion.items():
            runs.setdefault(name, []).append(detection_metrics(sc, flipped))
        c, r = orient(proxy.fc, proxy.fr, y)
        curve.setdefault("all_layers_head", []).append(
            learning_curve((c - r).reshape(len(ids), -1).astype(np.float64), np.ones(len(ids), bool), ids, s, flipped,
                           suspicion["all_layers_head"]))
        p_wrong = suspicion["default"]
        top = np.argsort(-p_wrong, kind="stable")[:k]
        calib.append({"k": k, "expected_precision_vs_labels": float(np.mean(p_wrong[top])),
                      "precision_vs_flips": float(flipped[top].mean()),
                      "ece_vs_flipped": expected_calibration_error(p_wrong, flipped)})
        print(f"human labels, seed {s}: {time.time() - t0:.0f} s",
              {n: round(v[-1]["auroc"], 3) for n, v in runs.items()}, flush=True)
    table = {n: _mean_std(v) for n, v in runs.items()}
    best = max((n for n in table if n not in OPTIONS), key=lambda n: table[n]["auroc"])
    unequal = np.asarray(length_diff) != 0
    return {"pairs": len(ids), "flips": FLIPS, "truth": "planted flips on the humans' labels", "detectors": table,
            "best_baseline_by_auroc": best,
            **{f"{o}_minus_best_baseline": {m: table[o][m] - table[best][m] for m in ("auroc", "precision_top5pct")}
               for o in OPTIONS if o in table},
            "default_review_top5pct": _mean_std(calib),
            "learning_curve": curve_summary(curve, ids),
            "labels_pick_longer": float(np.mean(np.asarray(human, bool)[unequal] == (length_diff[unequal] > 0)))}


def llmeval2_pairs():
    """LLMEval²'s pairs (ties kept), the audit's MiniLM features of them and their token lengths (chosen, rejected)."""
    ds = load_preferences(DATA / "llmeval2", allow_ties=True)
    pairs = ds.pairs
    cfg = AuditConfig(data=str(DATA / "llmeval2"), precision="fp32")
    proxy = proxy_features(cfg, pairs)
    n, _ = text_lengths([p.chosen_text for p in pairs] + [p.rejected_text for p in pairs], cfg.model)
    return pairs, cfg, proxy, (n[: len(pairs)], n[len(pairs):])


def llmeval2_flips_block(seeds: int) -> dict:
    """`human_flips_block` on LLMEval²'s decided pairs (ties left out: a flipped tie is no wrong label)."""
    pairs, cfg, proxy, _ = llmeval2_pairs()
    labels = np.array([p.label for p in pairs])
    keep = labels != 0.5
    decided = replace(proxy, fc=proxy.fc[keep], fr=proxy.fr[keep], ids=[i for i, k in zip(proxy.ids, keep) if k])
    length_diff, _ = response_length_diff([p for p, k in zip(pairs, keep) if k], cfg.model)  # as the audit counts
    subsets = np.array([p.subset for p, k in zip(pairs, keep) if k], dtype=object)  # LLMEval²'s 15 sources
    return human_flips_block(decided, labels[keep] > 0.5, length_diff, seeds, subsets)


def llmeval2_block(seed: int = 0) -> dict:
    """Tie scores against LLMEval²'s human ties, and why std fails: it grows with how far apart the responses are."""
    from sklearn.metrics import roc_auc_score

    pairs, cfg, proxy, (nc, nr) = llmeval2_pairs()
    ids = [p.id for p in pairs]
    labels = np.array([p.label for p in pairs])
    tie = labels == 0.5
    layers = member_layers(cfg, proxy.num_layers)
    pick = [proxy.views.index(x) for x in sorted(set(layers))]
    diffs, _, _ = heads_on_features(replace(cfg, seed=seed), proxy.fc[:, pick], proxy.fr[:, pick], ids, layers,
                                    labels=labels)
    scores = tie_scores(diffs, lengths=(nc, nr))
    distance = np.linalg.norm((proxy.fc - proxy.fr).reshape(len(ids), -1), axis=1)
    scores["responses_alike"] = -distance  # in the encoder's features
    scores["small_length_gap"] = -np.abs(nc - nr)  # tokens, not their ratio
    aurocs = {k: float(roc_auc_score(tie, v)) for k, v in scores.items()}
    best = max((k for k in aurocs if k != "std"), key=aurocs.get)
    return {"pairs": len(pairs), "ties": int(tie.sum()), "tie_auroc": aurocs[best], "tie_detector": best,
            "tie_auroc_by_score": aurocs,
            "why_std_fails": {"spearman_std_vs_response_distance": spearman(np.nanstd(diffs, 0), distance),
                              "std_tie_auroc": aurocs["std"],
                              "std_over_distance_tie_auroc": float(roc_auc_score(tie, np.divide(
                                  np.nanstd(diffs, 0), distance, out=np.zeros(len(ids)), where=distance > 0)))}}


def hh_block(work: Path) -> dict:
    """The audit of the real hh-rlhf pairs: the new default (length calibration) and the previous (temperature)."""
    out = {}
    for name, calibration in (("default", "length"), ("previous_default", "temperature")):
        res = run_audit(AuditConfig(data=str(DATA / "hh-rlhf"), output_dir=str(work / f"hh_{name}"),
                                    calibration=calibration), progress=False)
        t = res.summary["trust"]
        out[name] = {"calibration": calibration, "flagged": t["flagged"], "flagged_share": t["flagged_share"],
                     "agreement": t["agreement"]["agreement"], "ece": t["ece"],
                     "max_p_label_wrong": t["max_p_label_wrong"], "unjudged_subsets": t["unjudged_subsets"],
                     "length_term": t.get("length_term"), "review_budget": t.get("review_budget")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", default="lab,confounded,hh_flips,llmeval2_flips,llmeval2,hh")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--bonus", type=float, default=DEFAULT_BONUS,
                        help="length bonus of the confounded lab (another value than 1 writes confounded_bonusB)")
    parser.add_argument("--bonus-sweep", default="", help="more confounded labs, e.g. 0.5,2")
    parser.add_argument("--finetune", action="store_true", help="add the fine-tuned baselines (about 2 hours)")
    parser.add_argument("--second-backbone", default=None,
                        help="add rows for another backbone's length-calibrated ensemble alone (second_backbone) and "
                             "mixed 5 + 5 with MiniLM's (mixed_backbones), e.g. gemma3 (bf16); blocks as KEY_NAME")
    parser.add_argument("--against-gold", type=float, default=DEFAULT_AGAINST,
                        help="share of sampled labels against the label law before the flips (the label noise's "
                             "temperature); another value than the config's writes its blocks as KEY_againstR")
    parser.add_argument("--work", default=str(ROOT / "runs" / "verdicts"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "verdicts.json"))
    args = parser.parse_args()
    run = run_stamp()  # the file gathers blocks of several runs; each block says which run measured it

    def stamped(block: dict) -> dict:
        return {**block, "measured_by": run}

    torch.set_num_threads(1 if args.finetune else torch.get_num_threads())
    out_path = Path(args.out)
    result = json.loads(out_path.read_text()) if out_path.exists() else {}
    result.pop("provenance", None)
    blocks = args.blocks.split(",")
    work = Path(args.work)
    ft = work / "finetune" if args.finetune else None
    if {"lab", "confounded", "hh_flips", "ceilings"} & set(blocks):
        cfg = load_config(LabConfig, ROOT / "configs" / "lab_cpu.yaml")
        cfg.data = str((ROOT / cfg.data).resolve())
        assert cfg.against_gold == DEFAULT_AGAINST, "DEFAULT_AGAINST must follow configs/lab_cpu.yaml"
        inputs = load_lab_inputs(cfg, GOLD)
        suffix = "" if args.against_gold == DEFAULT_AGAINST else f"_against{args.against_gold:g}"
        second = None
        if args.second_backbone:
            if args.second_backbone == cfg.gold_model:
                parser.error("--second-backbone must not be the gold's own backbone")
            second = proxy_features(replace(inputs.proxy.cfg, model=args.second_backbone, precision="bf16"),
                                    inputs.pairs)
            suffix += f"_{args.second_backbone}"
        if "lab" in blocks:
            flips = result.setdefault("lab" + suffix, {}).setdefault("flips", {})
            flips[str(FLIPS)] = stamped(lab_block(inputs, 0.0, args.seeds, ft, args.against_gold, second,
                                                  flips.get(str(FLIPS))))
            write_result(out_path, result)
        if "confounded" in blocks:
            for bonus in [args.bonus] + [float(b) for b in args.bonus_sweep.split(",") if b]:
                # named by the bonus, not by the flag that asked for it: a sweep never overwrites the main block
                key = ("confounded" if bonus == DEFAULT_BONUS else f"confounded_bonus{bonus:g}") + suffix
                flips = result.setdefault(key, {}).setdefault("flips", {})
                flips[str(FLIPS)] = stamped(lab_block(inputs, bonus, args.seeds, ft, args.against_gold, second,
                                                      flips.get(str(FLIPS))))
                write_result(out_path, result)
        if "ceilings" in blocks:
            result["ceilings" + suffix] = stamped({
                "plain": ceilings_block(inputs, 0.0, args.seeds, args.against_gold),
                "confounded": ceilings_block(inputs, DEFAULT_BONUS, args.seeds, args.against_gold)})
            write_result(out_path, result)
        if "hh_flips" in blocks:  # the lab's pairs are hh-rlhf's, sides as the humans labelled them
            result["hh_flips"] = stamped(human_flips_block(
                inputs.proxy, np.ones(len(inputs.proxy.ids), bool), inputs.length_diff, args.seeds,
                np.array([p.subset for p in inputs.pairs], dtype=object)))
            write_result(out_path, result)
    if "llmeval2_flips" in blocks:
        result["llmeval2_flips"] = stamped(llmeval2_flips_block(args.seeds))
        write_result(out_path, result)
    if "llmeval2" in blocks:
        result["llmeval2"] = stamped(llmeval2_block())
        write_result(out_path, result)
    if "hh" in blocks:
        result["hh"] = stamped(hh_block(work))
        write_result(out_path, result)
    print(json.dumps({k: v for k, v in result.items() if k != "provenance"}, indent=1)[:3000])


if __name__ == "__main__":
    main()
