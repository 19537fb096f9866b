"""Audit proposes, an independent judge decides: denoising with a second opinion on the audit's candidates.

`lab_denoise_detector.py --noisy-gold` found that what caps denoising in the lab is where the detector's errors
fall, not how many it makes: the audit's ensemble learns from the same labels as the RM it cleans for, so the flips
it finds are the ones the RM already overrules (98% of them), and at the ensemble's own accuracy against the gold a
detector whose errors owe nothing to the RM recovers 0.71 of what 20% flips cost instead of 0.48. A user has such a
detector at hand: a judge that never saw the labels (`rmkit judge`, an LLM through the OpenAI API, or a person).
This measures the workflow rmkit offers for it:

    rmkit audit DATA                                          # flagged.csv: the most suspect pairs, for review
    rmkit judge DATA --ids runs/audit/flagged.csv             # a judge labels those pairs alone
    rmkit denoise runs/audit/strength.parquet --reviews runs/judge/judge_labels.parquet   # its verdicts decide

on the lab's cases (`rmkit.lab.denoise_case`: the same 10 seeds, labels, split and RM as the 10-seed denoising file):
the candidates are the ensemble's lowest ``--candidates`` of training pairs; the judge is simulated as the gold plus
independent Gaussian noise that leaves its sign right on a share ACC of the training pairs (ACC 1: the gold itself,
a perfect reviewer); a candidate is flipped where the judge prefers its rejected side and kept otherwise (preset
``flip``, no margins: a margin from the simulated judge would carry the gold). ``flip`` (the ensemble's lowest 10%
flipped, no judge) is the reference.

    .venv/bin/python benchmarks/lab_denoise_verify.py          # about 30 minutes on 2 cores (features cached)

Writes benchmarks/results/lab_smollm2_denoise_verify.json (as `lab_denoise_variants.py` summarises: recovered share
with a 95% interval over resampled seeds, gains in points paired by seed; under ``detection``, what each variant
flipped: how many pairs, the share planted and against the gold, and the judge's accuracy on the candidates).
"""

from __future__ import annotations

import argparse

import numpy as np

from rmkit.lab.hh import ROOT, denoise_cases, denoise_summary, lab_studies_inputs, noisy_gold, pick
from rmkit.files import write_json


def verdicts(case, candidates: np.ndarray, judge: np.ndarray) -> dict[str, str]:
    """Reviews from a judge's differences ``judge (N,)`` (sides as labelled) on the ``candidates`` (indices):
    flip where it prefers the labelled rejected side, keep otherwise, as `rmkit denoise --reviews` reads a judge."""
    return {case.pairs[j].id: ("flip" if judge[j] < 0 else "keep") for j in candidates}


def flipped_by(case, candidates: np.ndarray, judge: np.ndarray) -> dict:
    """What the judge flipped among the candidates: how many, the share planted and against the gold, and its
    accuracy against the gold's sign on the candidates."""
    flips = candidates[judge[candidates] < 0]
    return {"flipped": int(len(flips)), "planted": float(case.flipped[flips].mean()) if len(flips) else float("nan"),
            "against_gold": float((case.gold[flips] < 0).mean()) if len(flips) else float("nan"),
            "judge_accuracy_on_candidates": float(((judge > 0) == (case.gold > 0))[candidates].mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--candidates", default="0.1,0.2", help="shares of training pairs the judge reviews")
    parser.add_argument("--judge", default="0.7,0.8,0.9,1", help="the judge's accuracies against the gold's sign")
    parser.add_argument("--result", default=str(ROOT / "benchmarks" / "results" / "lab_smollm2_denoise_verify.json"))
    args = parser.parse_args()
    shares = [float(c) for c in args.candidates.split(",")]
    accuracies = [float(a) for a in args.judge.split(",")]
    runs: dict = {}
    detection: dict = {}
    for level, s, case in denoise_cases(lab_studies_inputs("smollm2"), seeds=args.seeds, noise=args.noise):
        acc = {"baseline": case.grade(case.train.astype(float)), "flip": case.grade(*case.denoised("flip", case.mean))}
        for a in accuracies:
            judge = case.gold if a >= 1 else noisy_gold(case, a, s)
            for share in shares:
                name, candidates = f"verify{share:g}@judge~{a:g}", pick(case, case.mean, share)
                # preset flip on the lowest 10% as the user runs it; the reviews cover those pairs and win
                acc[name] = case.grade(*case.denoised("flip", case.mean, reviews=verdicts(case, candidates, judge)))
                if level > 0:
                    detection.setdefault(name, []).append(flipped_by(case, candidates, judge))
        for k, v in acc.items():
            runs.setdefault(f"{level}", {}).setdefault(k, []).append(v)
        print(level, s, {k: round(v, 4) for k, v in acc.items()}, flush=True)
    out = denoise_summary(runs, detection, seeds=args.seeds, noise=args.noise, reference="flip",
                          what=__doc__.split("\n")[0])
    out["what"] = __doc__.split("\n")[0]
    out["candidates"], out["judge_accuracies"] = shares, accuracies
    out["judge"] = ("the gold's difference plus independent Gaussian noise, its sign right on the stated share of "
                    "training pairs (1: the gold itself)")
    write_json(args.result, out, relative_to=ROOT)
    print({k: round(v["point"], 3) for k, v in out["recovered_share"].items()})


if __name__ == "__main__":
    main()
