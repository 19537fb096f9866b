"""Can a better use of the same ensemble lift denoising in the lab? Two variants beside the paper's flip+margin.

`lab.py --set denoise_ceiling=...` showed the presets recover more than all of what 20% flips cost when the gold's own
ranking picks their 10% (1.22), and 0.52 with the audit ensemble's: the ranking is the limit. This measures two
ways of getting more out of the same ensemble, on the same seeds and cases as `rmkit.lab.study_denoise`:

- ``posterior@RATE``: no pair is picked; every training pair gets the soft label P(label right | the ensemble's
  view) = 1 - P(flipped) at flip rate RATE (`rmkit.lab.p_flipped`; 0.2 is the planted rate): `rmkit denoise`'s
  preset posterior (`rmkit denoise --preset posterior` on an audit run with --noise-rate RATE). The expected label
  under the noise model, so the ranking's errors cost in proportion to their confidence (a forward-corrected
  loss, one EM step).
- ``flip+margin@pass2``: a second-pass ranking. The ensemble is trained again on labels whose lowest 10% (by pass
  1's strength) are flipped, for the detector's training only, and its strength on the original labels picks the
  10% flip+margin acts on (cleanlab's prune-and-retrain, applied to the detector).

    .venv/bin/python benchmarks/lab_denoise_variants.py [--seeds 10]
    .venv/bin/python benchmarks/lab_denoise_variants.py --summarize-only   # the summary again, from the runs

Writes benchmarks/results/lab_smollm2_denoise_variants.json: accuracy against the gold's sign per variant, level
and seed, the share of the lost accuracy recovered with a 95% interval over seeds (as study_denoise's), each
variant's gain over the baseline and over flip+margin at both levels (points, paired by seed, 95% interval), and each
pass's flip detection at 20% on the training pairs (AUROC, precision in the lowest 10%).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rmkit.lab.hh import ROOT, denoise_cases, denoise_summary, lab_studies_inputs
from rmkit.files import write_json
from rmkit.lab import detection_metrics, p_flipped, p_label_right


def variants(proxy, case, *, seed: int, rates=(0.1, 0.2, 0.3), fraction: float = 0.1) -> tuple[dict, dict]:
    """Gold accuracy of each variant on one case, and each pass's detection of the planted flips."""
    acc = {"baseline": case.grade(case.train.astype(float)),
           "flip+margin": case.grade(*case.denoised("flip+margin", case.mean, fraction))}
    p_right = p_label_right(case.mean, proxy.ids, seed=seed)
    for rate in rates:
        acc[f"posterior@{rate:g}"] = case.grade(*case.denoised("posterior", case.mean, p_flip=p_flipped(p_right, rate)))
    low = case.mean <= np.quantile(case.mean, fraction)  # pass 1's lowest, flipped for the detector's training
    second = np.nanmean(proxy.ensemble(np.where(low, ~case.label, case.label), seed=seed), axis=0)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--result", default=str(ROOT / "benchmarks" / "results" / "lab_smollm2_denoise_variants.json"))
    parser.add_argument("--summarize-only", action="store_true",
                        help="recompute the summary of an existing --result from its runs (no training)")
    args = parser.parse_args()
    if args.summarize_only:
        old = json.loads(Path(args.result).read_text())
        runs = {lv: {k: v["runs"] for k, v in d.items()} for lv, d in old["accuracy"].items()}
        out = denoise_summary(runs, {k: [v] for k, v in old["detection"].items()}, seeds=old["seeds"], noise=old["noise"],
                              what=__doc__.split("\n")[0])
        write_json(args.result, out)
        return
    inputs = lab_studies_inputs("smollm2")
    runs: dict = {}
    detection: dict = {}
    for level, s, case in denoise_cases(inputs, seeds=args.seeds, noise=args.noise):
        acc, detect = variants(inputs.proxy, case, seed=s)
        for k, v in acc.items():
            runs.setdefault(f"{level}", {}).setdefault(k, []).append(v)
        for k, v in detect.items():
            detection.setdefault(k, []).append(v)
        print(level, s, {k: round(v, 4) for k, v in acc.items()}, flush=True)
    out = denoise_summary(runs, detection, seeds=args.seeds, noise=args.noise,
                          what=__doc__.split("\n")[0])
    write_json(args.result, out)
    print({k: round(v["point"], 3) for k, v in out["recovered_share"].items()}, out["detection"])


if __name__ == "__main__":
    main()
