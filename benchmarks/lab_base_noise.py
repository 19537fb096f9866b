"""What caps flip detection in the lab: the share of sampled labels that already go against the gold.

The flips study plants flips on labels drawn from Bradley-Terry on the gold difference at the temperature that
sends 22.5% of them against the gold (`configs/lab_cpu.yaml`, the paper's 20-25% for hh-rlhf). A planted flip on
one of those turns it back to the gold's side, and a flip on a pair the gold finds close looks like the draw's own
noise, so even the gold, ranking labels by how far they go against it, reaches AUROC 0.866 at 20% flips (Bayes'
rule: the gold's ranking is P(flipped | label, gold difference), the best any detector can do). This reruns the
flips study at 20% planted flips for several base shares (the temperature set from each), to show how the ceiling
and rmkit's ensemble, the single RM and cleanlab move with it, and where the issue's goal (AUROC >= 0.85 and 0.03
above both) is met.

The denoising goal (75% of what 20% flips cost recovered) is missed at 22.5% with a detector of AUROC 0.80 (the
presets recover 0.52 on the ensemble's ranking, 1.22 on the gold's: `lab.py --set denoise_ceiling=...`); ``--studies
denoise`` asks whether a lower base share, where detection passes 0.85, lifts it too (10 seeds: one seed's flips
cost 0.6 points, another's 3), with the paper's presets on the ensemble's ranking and flip+margin on the gold's.
It does not (about half at every share: docs/lab-notebook.md).

    .venv/bin/python benchmarks/lab_base_noise.py                       # flips: about 10 minutes on 2 cores
    .venv/bin/python benchmarks/lab_base_noise.py --studies denoise --against 0.1   # about 30 minutes a share

Writes benchmarks/results/lab_smollm2_base_noise.json (each run adds its blocks to it): per base share the
temperature, the share against the gold it sets, the proxy ensemble's accuracy against the gold's sign
(learnability study), the flips study's AUROC and top-5% precision per detector, with rmkit's AUROC above chance as
a share of the gold's; and the denoising study's recovered shares where it ran.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rmkit.provenance import write_result
from rmkit.lab.hh import GOLDS, ROOT, lab_studies_inputs
from rmkit.lab import choose_temperature, expected_against, study_denoise, study_flips, study_learnability

DETECTORS = ("rmkit", "single_rm", "cleanlab", "best_single_block", "gold_oracle")
PRESETS = ("flip+margin", "flip", "drop", "posterior")  # the best of the 10-seed study at 22.5% (posterior: @reviewed)


def flips_row(proxy, gold, temperature: float, *, flips: float, seeds: int) -> dict:
    """The learnability and flips studies at one temperature, with rmkit's share of the gold's lift and the goal."""
    learn = study_learnability(proxy, gold, temperature, seeds=seeds)
    result = study_flips(proxy, gold, temperature, levels=[flips], seeds=seeds)[str(flips)]
    row = {"proxy_gold_accuracy": learn["ensemble"],
           **{k: {m: result[k][m] for m in ("auroc", "auroc_std", "precision_top5pct")} for k in DETECTORS}}
    # rmkit's AUROC above chance as a share of the gold's: how much of what any detector could see it sees
    row["rmkit_share_of_oracle"] = (row["rmkit"]["auroc"] - 0.5) / (row["gold_oracle"]["auroc"] - 0.5)
    lead = row["rmkit"]["auroc"] - max(row["single_rm"]["auroc"], row["cleanlab"]["auroc"])
    row["goal_met"] = bool(row["rmkit"]["auroc"] >= 0.85 and lead >= 0.03)
    return row


def denoise_row(proxy, gold, temperature: float, *, flips: float, seeds: int) -> dict:
    """The denoising study's recovered shares (with 95% intervals), its best preset and any preset below the
    baseline at 0% flips; flip+margin on the gold's ranking as the bound."""
    d = study_denoise(proxy, gold, temperature, noise=flips, seeds=seeds, presets=PRESETS, ceiling=("flip+margin",))
    return {k: d[k] for k in ("lost", "recovered_share", "recovered_share_ci95", "best_preset", "recovered_share_best",
                              "below_baseline_at_0")} | {"seeds": seeds}


def merged(path: Path, out: dict) -> dict:
    """``out`` over what ``path`` already holds, per base share: a run of one study keeps the other's blocks."""
    old = json.loads(path.read_text()) if path.exists() else {}
    rows = old.get("by_base_share", {})
    for share, row in out["by_base_share"].items():
        rows[share] = {**rows.get(share, {}), **row}
    return {**old, **out, "by_base_share": dict(sorted(rows.items(), key=lambda kv: float(kv[0])))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", default="0.05,0.1,0.15,0.225", help="base shares against the gold")
    parser.add_argument("--studies", choices=("flips", "denoise"), default="flips")
    parser.add_argument("--flips", type=float, default=0.2)
    parser.add_argument("--seeds", type=int, default=None, help="default: 3 (flips), 10 (denoise)")
    parser.add_argument("--result", default=str(ROOT / "benchmarks" / "results" / "lab_smollm2_base_noise.json"))
    args = parser.parse_args()
    seeds = args.seeds or (3 if args.studies == "flips" else 10)
    cfg, gold, proxy, _ = lab_studies_inputs("smollm2")
    out: dict = {"what": __doc__.split("\n")[0], "gold": GOLDS["smollm2"].stem, "pairs": len(proxy.ids), "flips": args.flips,
                 "goal": {"flips": "rmkit AUROC >= 0.85 and >= single_rm and cleanlab + 0.03",
                          "denoise": "the best preset recovers >= 0.75 of the gold accuracy the flips cost"},
                 "by_base_share": {}}
    for against in (float(a) for a in args.against.split(",")):
        t0 = time.time()
        temperature = choose_temperature(gold, against)
        row = {"temperature": temperature, "against_gold_expected": expected_against(gold, temperature)}
        if args.studies == "flips":
            row |= flips_row(proxy, gold, temperature, flips=args.flips, seeds=seeds) | {"seeds": seeds}
        else:
            row["denoise"] = denoise_row(proxy, gold, temperature, flips=args.flips, seeds=seeds)
        row[f"{args.studies}_seconds"] = time.time() - t0
        out["by_base_share"][f"{against:g}"] = row
        write_result(args.result, merged(Path(args.result), out), relative_to=ROOT)  # as it goes
        print(against, json.dumps(row)[:400], flush=True)


if __name__ == "__main__":
    main()
