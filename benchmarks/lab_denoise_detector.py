"""Does it matter which features the denoising detector reads? Its overlap with the RM it cleans for, measured.

The denoising study's RM (`rmkit.lab.study_denoise`) is a head on MiniLM's blocks 4 and 6; the audit's ensemble,
whose lowest 10% flip+margin acts on, reads blocks 1, 2, 4, 5 and 6. Its pick is 91% labels against the gold (the
gold's own pick: 100%), yet it recovers 0.52 of what 20% flips cost where the gold's recovers 1.22. This runs
flip+margin on the 10% of training pairs picked by four rankings, on the same 10 seeds and cases as
`lab_denoise_variants.py` (the gold and labels of `configs/lab_cpu.yaml`, 22.5% of labels against the gold):

- ``flip+margin``: the audit's ensemble (the study's; it reproduces the 10-seed file's 0.516);
- ``flip+margin@blocks12``: the same ensemble's recipe on blocks 1 and 2 only, which the RM does not read;
- ``flip+margin@blocks45``: on blocks 4 and 5, one of which the RM reads;
- ``flip+margin@gold``: the gold's own ranking (the bound; `lab.py --set denoise_ceiling=...`).

and, at 20% flips, what each pick holds: planted flips, labels against the gold, overlap with the gold's pick, and
the share of the picked planted flips that the baseline RM (trained on the noisy labels) already scores on the
gold's side.

    .venv/bin/python benchmarks/lab_denoise_detector.py        # about 25 minutes on 2 cores (features cached)
    .venv/bin/python benchmarks/lab_denoise_detector.py --other-backbone mpnet   # + the ensemble on MPNet features
        # (``flip+margin@mpnet``; encoding the 17k texts once takes about an hour on 2 cores, cached as it goes)
    .venv/bin/python benchmarks/lab_denoise_detector.py --noisy-gold 0.75,0.79,0.85,0.9   # about 10 minutes

``--noisy-gold`` replaces the block detectors by synthetic ones, ``flip+margin@gold~ACC``: the gold's difference plus
independent Gaussian noise that leaves its sign right on a share ACC of the training pairs. At the audit's own
accuracy against the gold (about 0.79 on the 20%-flipped labels) it separates the detector's accuracy from where
its errors fall: the ensemble's errors fall where the RM's do, the noise's anywhere.

Writes benchmarks/results/lab_smollm2_denoise_detector.json (as `lab_denoise_variants.py` summarises: recovered
share with a 95% interval over resampled seeds, gains in points over the baseline and over flip+margin paired by
seed, each pick's composition under ``detection``).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from rmkit.lab.hh import ROOT, denoise_cases, denoise_summary, lab_studies_inputs, noisy_gold, pick
from rmkit.files import write_json
from rmkit.lab import proxy_features

DETECTORS = {"blocks12": [1, 2], "blocks45": [4, 5]}


def composition(case, picked: np.ndarray, gold_pick: np.ndarray, rewards: np.ndarray) -> dict:
    """What a pick holds: planted flips, labels against the gold, overlap with the gold's pick, and the share of
    its planted flips the baseline RM already scores on the gold's side (fixing those teaches it little)."""
    flips = picked[case.flipped[picked]]
    return {"planted": float(case.flipped[picked].mean()), "against_gold": float((case.gold[picked] < 0).mean()),
            "overlap_with_gold_pick": float(np.isin(picked, gold_pick).mean()),
            "flips_baseline_already_right": float(((rewards[flips] > 0) == (case.gold[flips] > 0)).mean())}


def agreement(case, ranking: np.ndarray) -> float:
    """Share of training pairs on which ``ranking (N,)`` has the gold's sign: the detector's accuracy."""
    return float(((ranking > 0) == (case.gold > 0))[case.train].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--other-backbone", default=None,
                        help="also the audit's ensemble recipe on another frozen backbone (alias, hub id or path)")
    parser.add_argument("--result", default=None,
                        help="default: results/lab_smollm2_denoise_detector.json (_BACKBONE.json with --other-backbone)")
    parser.add_argument("--noisy-gold", default=None, metavar="ACC[,ACC...]",
                        help="instead of the block detectors: the gold plus independent noise at these accuracies "
                             "(results/lab_smollm2_denoise_detector_noisy_gold.json)")
    parser.add_argument("--preset", default="flip+margin", choices=["flip+margin", "flip"],
                        help="flip: the pick alone, no margins (which would carry a synthetic detector's gold)")
    args = parser.parse_args()
    preset = args.preset
    noisy = [float(a) for a in args.noisy_gold.split(",")] if args.noisy_gold else []
    stem = "lab_smollm2_denoise_detector" + (f"_{Path(args.other_backbone).name}" if args.other_backbone else "")
    stem += ("_noisy_gold" if noisy else "") + ("" if preset == "flip+margin" else f"_{preset}")
    result = args.result or str(ROOT / "benchmarks" / "results" / f"{stem}.json")
    inputs = lab_studies_inputs("smollm2")
    proxy, other = inputs.proxy, None
    if args.other_backbone:  # the same pairs, in the same order, encoded by the other backbone
        other = proxy_features(replace(inputs.cfg.proxy_config(), model=args.other_backbone), inputs.pairs)
    runs: dict = {}
    detection: dict = {}
    for level, s, case in denoise_cases(inputs, seeds=args.seeds, noise=args.noise):
        scale = np.std(case.mean) / np.std(case.gold)  # the gold at the ensemble's scale: margins stay comparable
        rankings = {preset: case.mean, f"{preset}@gold": case.gold * scale}
        for a in noisy:
            rankings[f"{preset}@gold~{a:g}"] = noisy_gold(case, a, s) * scale
        for name, layers in ({} if noisy else DETECTORS).items():
            diffs = proxy.ensemble(case.label, seed=s, cfg=replace(proxy.cfg, layers=layers))
            rankings[f"{preset}@{name}"] = np.nanmean(diffs, axis=0)
        if other is not None:
            name = Path(args.other_backbone).name
            rankings[f"{preset}@{name}"] = np.nanmean(other.ensemble(case.label, seed=s), axis=0)
        rewards = case.fit(case.train.astype(float))  # the baseline RM, kept for what its picks hold
        acc = {"baseline": case.accuracy(rewards)}
        for name, ranking in rankings.items():
            acc[name] = case.grade(*case.denoised(preset, ranking, args.fraction))
        for k, v in acc.items():
            runs.setdefault(f"{level}", {}).setdefault(k, []).append(v)
        if level > 0:
            gold_pick = pick(case, rankings[f"{preset}@gold"], args.fraction)
            for name, ranking in rankings.items():
                detection.setdefault(name, []).append(composition(case, pick(case, ranking, args.fraction),
                                                                  gold_pick, rewards)
                                                      | {"agreement_with_gold": agreement(case, ranking)})
        print(level, s, {k: round(v, 4) for k, v in acc.items()}, flush=True)
    out = denoise_summary(runs, detection, seeds=args.seeds, noise=args.noise, reference=preset,
                          what=__doc__.split("\n")[0])
    out["what"] = __doc__.split("\n")[0]
    out["fraction"], out["preset"] = args.fraction, preset
    out["detectors"] = {preset: "the audit's ensemble, blocks 1, 2, 4, 5, 6",
                        **{f"{preset}@{k}": f"the same recipe on blocks {v}" for k, v in DETECTORS.items()
                           if not noisy},
                        **{f"{preset}@gold~{a:g}": f"the gold plus independent noise, agreeing with its sign on "
                                                      f"{a:g} of pairs" for a in noisy},
                        f"{preset}@gold": "the gold's difference (a bound)", "rm": "a head on blocks 4 and 6"}
    if other is not None:
        out["detectors"][f"{preset}@{Path(args.other_backbone).name}"] = \
            f"the audit's ensemble recipe on {args.other_backbone} (blocks {sorted(set(other.views))})"
    write_json(result, out, relative_to=ROOT)
    print({k: round(v["point"], 3) for k, v in out["recovered_share"].items()}, out["detection"])


if __name__ == "__main__":
    main()
