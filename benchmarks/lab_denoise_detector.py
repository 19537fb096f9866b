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

Writes benchmarks/results/lab_smollm2_denoise_detector.json (as `lab_denoise_variants.py` summarises: recovered
share with a 95% interval over resampled seeds, gains in points over the baseline and over flip+margin paired by
seed, each pick's composition under ``detection``).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from hh_lab import ROOT, lab_studies_inputs
from lab_denoise_variants import summarize
from rmkit.files import write_json
from rmkit.heads import select_l2, train_bt_heads
from rmkit.lab import choose_temperature, denoise_case, proxy_features

DETECTORS = {"blocks12": [1, 2], "blocks45": [4, 5]}


def pick(case, ranking: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the lowest ``fraction`` of training pairs by ``ranking (N,)``, as `rmkit.denoise` picks them."""
    train = np.flatnonzero(case.train)
    return train[np.argsort(ranking[train], kind="stable")[: int(fraction * len(train))]]


def baseline_rewards(case) -> np.ndarray:
    """The baseline RM's reward differences ``(N,)`` (sides as labelled): `DenoiseCase.grade`'s head, kept."""
    w_train = case.train.astype(float)
    l2 = select_l2(case.fc, case.fr, np.where(w_train > 0, case.fold, -1))[0]
    (w,) = train_bt_heads(case.fc, case.fr, w_train[None], l2=l2)
    return (case.fc - case.fr) @ w


def composition(case, picked: np.ndarray, gold_pick: np.ndarray, rewards: np.ndarray) -> dict:
    """What a pick holds: planted flips, labels against the gold, overlap with the gold's pick, and the share of
    its planted flips the baseline RM already scores on the gold's side (fixing those teaches it little)."""
    flips = picked[case.flipped[picked]]
    return {"planted": float(case.flipped[picked].mean()), "against_gold": float((case.gold[picked] < 0).mean()),
            "overlap_with_gold_pick": float(np.isin(picked, gold_pick).mean()),
            "flips_baseline_already_right": float(((rewards[flips] > 0) == (case.gold[flips] > 0)).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--other-backbone", default=None,
                        help="also the audit's ensemble recipe on another frozen backbone (alias, hub id or path)")
    parser.add_argument("--result", default=None,
                        help="default: results/lab_smollm2_denoise_detector.json (_BACKBONE.json with --other-backbone)")
    args = parser.parse_args()
    stem = "lab_smollm2_denoise_detector" + (f"_{Path(args.other_backbone).name}" if args.other_backbone else "")
    result = args.result or str(ROOT / "benchmarks" / "results" / f"{stem}.json")
    cfg, gold, proxy = lab_studies_inputs("smollm2")
    temperature = choose_temperature(gold, cfg.against_gold)
    other = None
    if args.other_backbone:  # the same pairs, in the same order, encoded by the other backbone
        pairs = cfg.read(str((ROOT / cfg.data).resolve())).pairs
        other = proxy_features(replace(cfg.proxy_config(), model=args.other_backbone), pairs)
    runs: dict = {}
    detection: dict = {}
    for level in (0.0, args.noise):
        for s in range(args.seeds):
            case = denoise_case(proxy, gold, temperature, flips=level, seed=s)
            # the gold's difference at the ensemble's scale, so the margins stay comparable (as study_denoise)
            rankings = {"flip+margin": case.mean, "flip+margin@gold": case.gold * np.std(case.mean) / np.std(case.gold)}
            for name, layers in DETECTORS.items():
                diffs = proxy.ensemble(case.label, seed=s, cfg=replace(proxy.cfg, layers=layers))
                rankings[f"flip+margin@{name}"] = np.nanmean(diffs, axis=0)
            if other is not None:
                name = Path(args.other_backbone).name
                rankings[f"flip+margin@{name}"] = np.nanmean(other.ensemble(case.label, seed=s), axis=0)
            acc = {"baseline": case.grade(case.train.astype(float))}
            for name, ranking in rankings.items():
                acc[name] = case.grade(*case.denoised("flip+margin", ranking, args.fraction))
            for k, v in acc.items():
                runs.setdefault(f"{level}", {}).setdefault(k, []).append(v)
            if level > 0:
                rewards, gold_pick = baseline_rewards(case), pick(case, rankings["flip+margin@gold"], args.fraction)
                for name, ranking in rankings.items():
                    detection.setdefault(name, []).append(composition(case, pick(case, ranking, args.fraction),
                                                                      gold_pick, rewards))
            print(level, s, {k: round(v, 4) for k, v in acc.items()}, flush=True)
    out = summarize(runs, detection, seeds=args.seeds, noise=args.noise)
    out["what"] = __doc__.split("\n")[0]
    out["fraction"] = args.fraction
    out["detectors"] = {"flip+margin": "the audit's ensemble, blocks 1, 2, 4, 5, 6",
                        **{f"flip+margin@{k}": f"the same recipe on blocks {v}" for k, v in DETECTORS.items()},
                        "flip+margin@gold": "the gold's difference (a bound)", "rm": "a head on blocks 4 and 6"}
    if other is not None:
        out["detectors"][f"flip+margin@{Path(args.other_backbone).name}"] = \
            f"the audit's ensemble recipe on {args.other_backbone} (blocks {sorted(set(other.views))})"
    write_json(result, out, relative_to=ROOT)
    print({k: round(v["point"], 3) for k, v in out["recovered_share"].items()}, out["detection"])


if __name__ == "__main__":
    main()
