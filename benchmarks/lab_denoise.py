"""What lifts denoising in the lab beyond the paper's flip+margin? Three studies on one protocol.

Every study runs on the same cases as `rmkit.lab.study_denoise` (`rmkit.lab.hh.denoise_cases`: the gold and labels
of `configs/lab_cpu.yaml`, 22.5% of labels against the gold, 0% and 20% planted flips, 10 seeds, the same split and
RM: a head on MiniLM's blocks 4 and 6). Each case trains the RM once per variant on the variant's labels, margins
or weights and grades it against the gold; `denoise_summary` gives the share of what the flips cost that each
variant recovers (95% interval over resampled seeds) and its gain over the baseline and the study's reference.

``--study variants``: a better use of the same ensemble (reference flip+margin on its lowest 10%).
    ``posterior@RATE``: every pair's soft label P(label right | the ensemble) at flip rate RATE (`rmkit denoise
    --preset posterior`); ``flip+margin@pass2``: the ensemble retrained on labels whose lowest 10% are flipped for
    its training only, its strength on the original labels picking the 10% (prune-and-retrain for the detector).
``--study detector``: does it matter which features the detector reads (reference ``--preset``)?
    The audit's ensemble reads blocks 1, 2, 4, 5, 6; ``@blocks12`` / ``@blocks45`` the same recipe on two blocks,
    ``@gold`` the gold's own ranking (the bound), ``@BACKBONE`` the recipe on ``--other-backbone``'s features;
    ``--noisy-gold ACC,...`` replaces the block detectors by the gold plus independent noise at accuracy ACC, which
    separates a detector's accuracy from where its errors fall. ``detection``: what each pick holds.
``--study verify``: the audit proposes, an independent judge decides (reference flip, no judge).
    The ensemble's lowest ``--candidates`` shares go to a judge simulated as the gold plus independent noise at
    accuracy ``--judge`` (1: a perfect reviewer); a candidate is flipped where the judge prefers its rejected side,
    as `rmkit judge --ids flagged.csv` then `rmkit denoise --reviews judge_labels.parquet` do.

    .venv/bin/python benchmarks/lab_denoise.py --study variants [--seeds 10]      # about 30 minutes on 2 cores
    .venv/bin/python benchmarks/lab_denoise.py --study detector                   # about 25 minutes
    .venv/bin/python benchmarks/lab_denoise.py --study detector --noisy-gold 0.75,0.79,0.85,0.9   # about 10 min
    .venv/bin/python benchmarks/lab_denoise.py --study detector --other-backbone mpnet  # + an hour to encode
    .venv/bin/python benchmarks/lab_denoise.py --study verify                     # about 30 minutes

Writes benchmarks/results/lab_smollm2_denoise_{variants,detector[_BACKBONE][_noisy_gold][_flip],verify}.json
(features cached; `--summarize-only` recomputes a result's summary from its runs without training).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from rmkit.lab import detection_metrics, p_flipped, p_label_right, proxy_features
from rmkit.lab.hh import ROOT, denoise_cases, denoise_summary, lab_studies_inputs, noisy_gold, pick
from rmkit.provenance import write_result

BLOCKS = {"blocks12": [1, 2], "blocks45": [4, 5]}


# --- variants: a better use of the same ensemble -----------------------------------------------------------------

def variants(inputs, case, s: int, args, rates=(0.1, 0.2, 0.3)) -> tuple[dict, dict]:
    """Gold accuracy of each variant on one case, and each pass's detection of the planted flips."""
    proxy, fraction = inputs.proxy, args.fraction
    acc = {"baseline": case.grade(case.train.astype(float)),
           "flip+margin": case.grade(*case.denoised("flip+margin", case.mean, fraction))}
    p_right = p_label_right(case.mean, proxy.ids, seed=s)
    for rate in rates:
        acc[f"posterior@{rate:g}"] = case.grade(*case.denoised("posterior", case.mean, p_flip=p_flipped(p_right, rate)))
    low = case.mean <= np.quantile(case.mean, fraction)  # pass 1's lowest, flipped for the detector's training
    second = np.nanmean(proxy.ensemble(np.where(low, ~case.label, case.label), seed=s), axis=0)
    second = np.where(low, -second, second)  # back to the sides as labelled
    acc["flip+margin@pass2"] = case.grade(*case.denoised("flip+margin", second, fraction))
    detect = {}
    if case.flipped.any():
        t = case.train
        for name, strength in (("pass1", case.mean), ("pass2", second)):
            lowest = np.argsort(strength[t])[: int(fraction * t.sum())]
            detect[name] = {**detection_metrics(-strength[t], case.flipped[t]),
                            "precision_lowest_fraction": float(case.flipped[t][lowest].mean())}
    return acc, detect


# --- detector: which features the detector reads -------------------------------------------------------------------

def composition(case, picked: np.ndarray, gold_pick: np.ndarray, rewards: np.ndarray) -> dict:
    """What a pick holds: planted flips, labels against the gold, overlap with the gold's pick, and the share of
    its planted flips the baseline RM already scores on the gold's side (fixing those teaches it little)."""
    flips = picked[case.flipped[picked]]
    return {"planted": float(case.flipped[picked].mean()), "against_gold": float((case.gold[picked] < 0).mean()),
            "overlap_with_gold_pick": float(np.isin(picked, gold_pick).mean()),
            "flips_baseline_already_right": float(((rewards[flips] > 0) == (case.gold[flips] > 0)).mean())}


def detector(inputs, case, s: int, args) -> tuple[dict, dict]:
    """flip+margin (or flip) on the 10% picked by each ranking, and what each pick holds at the noisy level."""
    preset, noisy = args.preset, args.noisy
    scale = np.std(case.mean) / np.std(case.gold)  # the gold at the ensemble's scale: margins stay comparable
    rankings = {preset: case.mean, f"{preset}@gold": case.gold * scale}
    for a in noisy:
        rankings[f"{preset}@gold~{a:g}"] = noisy_gold(case, a, s) * scale
    for name, layers in ({} if noisy else BLOCKS).items():
        diffs = inputs.proxy.ensemble(case.label, seed=s, cfg=replace(inputs.proxy.cfg, layers=layers))
        rankings[f"{preset}@{name}"] = np.nanmean(diffs, axis=0)
    if args.other is not None:
        rankings[f"{preset}@{Path(args.other_backbone).name}"] = np.nanmean(args.other.ensemble(case.label, seed=s), 0)
    rewards = case.fit(case.train.astype(float))  # the baseline RM, kept for what its picks hold
    acc = {"baseline": case.accuracy(rewards)}
    for name, ranking in rankings.items():
        acc[name] = case.grade(*case.denoised(preset, ranking, args.fraction))
    detect = {}
    if case.flipped.any():
        gold_pick = pick(case, rankings[f"{preset}@gold"], args.fraction)
        agree = lambda r: float(((r > 0) == (case.gold > 0))[case.train].mean())  # noqa: E731  detector's accuracy
        for name, ranking in rankings.items():
            detect[name] = composition(case, pick(case, ranking, args.fraction), gold_pick, rewards) | {
                "agreement_with_gold": agree(ranking)}
    return acc, detect


# --- verify: the audit proposes, a judge decides -------------------------------------------------------------------

def flipped_by(case, candidates: np.ndarray, judge: np.ndarray) -> dict:
    """What the judge flipped among the candidates: how many, the share planted and against the gold, and its
    accuracy against the gold's sign on the candidates."""
    flips = candidates[judge[candidates] < 0]
    return {"flipped": int(len(flips)), "planted": float(case.flipped[flips].mean()) if len(flips) else float("nan"),
            "against_gold": float((case.gold[flips] < 0).mean()) if len(flips) else float("nan"),
            "judge_accuracy_on_candidates": float(((judge > 0) == (case.gold > 0))[candidates].mean())}


def verify(inputs, case, s: int, args) -> tuple[dict, dict]:
    """Preset flip on the lowest 10% as a user runs it, with a judge's reviews of the candidates winning."""
    acc = {"baseline": case.grade(case.train.astype(float)), "flip": case.grade(*case.denoised("flip", case.mean))}
    detect = {}
    for a in args.judge:
        judge = case.gold if a >= 1 else noisy_gold(case, a, s)
        for share in args.candidates:
            name, candidates = f"verify{share:g}@judge~{a:g}", pick(case, case.mean, share)
            reviews = {case.pairs[j].id: ("flip" if judge[j] < 0 else "keep") for j in candidates}
            acc[name] = case.grade(*case.denoised("flip", case.mean, reviews=reviews))
            if case.flipped.any():
                detect[name] = flipped_by(case, candidates, judge)
    return acc, detect


STUDIES = {"variants": (variants, "flip+margin"), "detector": (detector, None), "verify": (verify, "flip")}


def result_name(args) -> str:
    if args.study != "detector":
        return f"lab_smollm2_denoise_{args.study}.json"
    stem = "lab_smollm2_denoise_detector" + (f"_{Path(args.other_backbone).name}" if args.other_backbone else "")
    return stem + ("_noisy_gold" if args.noisy else "") + ("" if args.preset == "flip+margin" else f"_{args.preset}") \
        + ".json"


def settings(args) -> dict:
    """What the study's result records beside the summary."""
    if args.study == "detector":
        p = args.preset
        return {"fraction": args.fraction, "preset": p, "detectors": {
            p: "the audit's ensemble, blocks 1, 2, 4, 5, 6", f"{p}@gold": "the gold's difference (a bound)",
            "rm": "a head on blocks 4 and 6",
            **{f"{p}@{k}": f"the same recipe on blocks {v}" for k, v in BLOCKS.items() if not args.noisy},
            **{f"{p}@gold~{a:g}": f"the gold plus independent noise, agreeing with its sign on {a:g} of pairs"
               for a in args.noisy},
            **({f"{p}@{Path(args.other_backbone).name}": f"the audit's ensemble recipe on {args.other_backbone}"}
               if args.other_backbone else {})}}
    if args.study == "verify":
        return {"candidates": args.candidates, "judge_accuracies": args.judge,
                "judge": "the gold's difference plus independent Gaussian noise, its sign right on the stated share "
                         "of training pairs (1: the gold itself)"}
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", required=True, choices=sorted(STUDIES))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--fraction", type=float, default=0.1, help="share of training pairs a preset acts on")
    parser.add_argument("--preset", default="flip+margin", choices=["flip+margin", "flip"],
                        help="detector: flip is the pick alone, no margins (which would carry a synthetic detector's "
                             "gold)")
    parser.add_argument("--noisy-gold", default="", metavar="ACC[,ACC...]",
                        help="detector: the gold plus independent noise at these accuracies instead of the blocks")
    parser.add_argument("--other-backbone", default=None,
                        help="detector: also the ensemble recipe on another frozen backbone (alias, hub id or path)")
    parser.add_argument("--candidates", default="0.1,0.2", help="verify: shares of training pairs the judge reviews")
    parser.add_argument("--judge", default="0.7,0.8,0.9,1", help="verify: the judge's accuracies against the gold")
    parser.add_argument("--result", default=None, help="default: results/lab_smollm2_denoise_<study>[...].json")
    parser.add_argument("--summarize-only", action="store_true",
                        help="recompute the summary of an existing --result from its runs (no training)")
    args = parser.parse_args()
    args.noisy = [float(a) for a in args.noisy_gold.split(",") if a]
    args.candidates = [float(c) for c in args.candidates.split(",")]
    args.judge = [float(a) for a in args.judge.split(",")]
    study, reference = STUDIES[args.study]
    reference = reference or args.preset
    what = {"variants": "Can a better use of the same ensemble lift denoising in the lab?",
            "detector": "Does it matter which features the denoising detector reads?",
            "verify": "Audit proposes, an independent judge decides: denoising with a second opinion."}[args.study]
    result = Path(args.result or ROOT / "benchmarks" / "results" / result_name(args))
    if args.summarize_only:
        old = json.loads(result.read_text())
        runs = {lv: {k: v["runs"] for k, v in d.items()} for lv, d in old["accuracy"].items()}
        detection = {k: v if isinstance(v, list) else [v] for k, v in old["detection"].items()}
        out = denoise_summary(runs, detection, seeds=old["seeds"], noise=old["noise"], reference=reference, what=what)
        write_result(result, {**{k: v for k, v in old.items() if k != "provenance"}, **out}, relative_to=ROOT)
        return
    inputs = lab_studies_inputs("smollm2")
    args.other = None
    if args.other_backbone:  # the same pairs, in the same order, encoded by the other backbone
        args.other = proxy_features(replace(inputs.cfg.proxy_config(), model=args.other_backbone), inputs.pairs)
    runs: dict = {}
    detection: dict = {}
    for level, s, case in denoise_cases(inputs, seeds=args.seeds, noise=args.noise):
        acc, detect = study(inputs, case, s, args)
        for k, v in acc.items():
            runs.setdefault(f"{level}", {}).setdefault(k, []).append(v)
        for k, v in detect.items():
            detection.setdefault(k, []).append(v)
        print(level, s, {k: round(v, 4) for k, v in acc.items()}, flush=True)
    out = denoise_summary(runs, detection, seeds=args.seeds, noise=args.noise, reference=reference, what=what)
    write_result(result, {**out, "what": what, **settings(args)}, relative_to=ROOT)
    print({k: round(v["point"], 3) for k, v in out["recovered_share"].items()})


if __name__ == "__main__":
    main()
