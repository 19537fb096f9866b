"""Which gold makes a learnable lab? (issue 14: "the frozen all-mpnet-base-v2 ... or SmolLM2-135M features;
measure and choose"). For a candidate gold backbone: its frozen token-mean features of a few layers (one
encoding pass, cached), a BT head per layer and L2 trained on every human label of hh-rlhf, then the lab's
learnability measured as `rmkit lab` measures it (the audit's MiniLM proxies, cross-fitted, against the gold's
sign; labels sampled at the temperature that sends 22.5% against the gold; the ceiling with near noise-free
labels, T / 1000), beside the committed MPNet gold (benchmarks/lab/gold_hh.parquet) graded by the same code.

    .venv/bin/python benchmarks/lab_gold_choice.py --gold-model smollm2 --layers 10,20,30

Writes benchmarks/results/lab_gold_choice_<model>.json, as it goes (one row per gold variant).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from rmkit.provenance import write_result
from rmkit.audit import response_length_diff
from rmkit.calibration import spearman
from rmkit.config import load_config
from rmkit.data import load_preferences
from rmkit.ensemble import default_cache_dir, encode_features
from rmkit.files import write_json
from rmkit.gold import fit_gold_head
from rmkit.hardware import resolve_device, resolve_precision
from rmkit.lab import (LabConfig, as_labelled, choose_temperature, gold_accuracy, proxy_features, read_gold_scores,
                       sample_labels, study_learnability)
from rmkit.models import RewardModel

from rmkit.lab.hh import DATA, ROOT


def grade_gold(proxy, gold_diff: np.ndarray, length_diff: np.ndarray, *, seeds: int, against: float) -> dict:
    """The lab's learnability on one gold: proxies on sampled labels (``seeds``; the temperature sends ``against``
    of them against the gold, the lab config's `against_gold`) and on near noise-free ones."""
    temperature = choose_temperature(gold_diff, against)
    sampled = study_learnability(proxy, gold_diff, temperature, seeds=seeds)
    clean = study_learnability(proxy, gold_diff, temperature / 1000, seeds=1)
    # Is the lab more than length? The longer response's accuracy against the gold (pairs of unequal length),
    # and the proxies' accuracy on the quarter of pairs whose responses differ least in length (seed 0), where
    # length cannot carry them.
    y = sample_labels(proxy.ids, gold_diff, temperature, seed=0)["label"].to_numpy().astype(bool)
    mean = np.nanmean(proxy.ensemble(y, seed=0), axis=0)
    close = np.abs(length_diff) <= np.quantile(np.abs(length_diff), 0.25)
    g = as_labelled(gold_diff, y)  # as the proxy's diffs are
    return {"temperature": temperature, "length_spearman": spearman(gold_diff, length_diff),
            "longer_response_accuracy": gold_accuracy(length_diff[length_diff != 0], gold_diff[length_diff != 0]),
            "proxy_ensemble_length_matched_quarter": gold_accuracy(mean[close], g[close]),
            "proxy_ensemble": sampled["ensemble"], "proxy_ensemble_std": sampled["ensemble_std"],
            "proxy_single": sampled["single_rm"], "labels_with_gold": sampled["labels_with_gold"],
            "ceiling_ensemble_noise_free": clean["ensemble"], "ceiling_single_noise_free": clean["single_rm"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gold-model", default="smollm2")
    parser.add_argument("--layers", default="10,20,30", help="hidden layers whose token mean a gold head reads")
    parser.add_argument("--l2", default="0.03,0.3,3", help="L2 penalties of the gold's head")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--result", default=None)
    parser.add_argument("--save-gold", default=None, metavar="LAYER:L2",
                        help="save that gold as the lab's artifacts: benchmarks/lab/gold_hh_<model>.parquet (gold "
                             "difference per pair id), .json (how it was made) and _head.npy")
    args = parser.parse_args()
    result_path = Path(args.result or ROOT / "benchmarks" / "results" / f"lab_gold_choice_{args.gold_model}.json")
    lab: LabConfig = load_config(LabConfig, ROOT / "configs" / "lab_cpu.yaml")
    pairs = load_preferences(DATA).pairs
    ids = [p.id for p in pairs]
    labels = np.array([p.label for p in pairs], dtype=np.float64)
    length_diff, unit = response_length_diff(pairs, lab.proxy_config().model)
    proxy_cfg = lab.proxy_config()
    proxy = proxy_features(proxy_cfg, pairs)  # the lab's MiniLM proxies (cached: the same entry as benchmarks/lab.py)
    out = {"what": "learnability of the lab (MiniLM proxies as in rmkit lab) against candidate golds; each gold a "
                   "frozen backbone's token mean of one layer and a BT head trained on every hh-rlhf human label",
           "pairs": len(pairs), "seeds": args.seeds, "length_unit": unit, "proxy_precision": proxy.cfg.precision,
           "golds": {}}
    out["golds"]["mpnet_committed"] = {"gold": "benchmarks/lab/gold_hh.parquet (MPNet, last layer, L2 0.3)",
                                       **grade_gold(proxy, read_gold_scores(ROOT / "benchmarks" / "lab" /
                                                                            "gold_hh.parquet", ids),
                                                    length_diff, seeds=args.seeds, against=lab.against_gold)}
    write_result(result_path, out)

    t0 = time.time()
    device = resolve_device(lab.device)
    backbone = RewardModel.from_pretrained(args.gold_model, max_length=args.max_length).to(device)
    precision = resolve_precision(args.precision, device, announce=True)
    layers = [int(x) for x in args.layers.split(",")]
    fc, fr = encode_features(backbone, pairs, cache_dir=default_cache_dir(), model_id=args.gold_model,
                             pooling="mean", layers=layers, batch_size=lab.batch_size, precision=precision)
    out.update(gold_model=args.gold_model, gold_num_layers=backbone.num_layers, gold_precision=precision,
               gold_params=sum(p.numel() for p in backbone.model.parameters()),
               gold_encoding_seconds=time.time() - t0)
    for v, layer in enumerate(layers):
        c, r = np.asarray(fc[:, v], dtype=np.float32), np.asarray(fr[:, v], dtype=np.float32)
        for l2 in [float(x) for x in args.l2.split(",")]:
            w, l2, agreement = fit_gold_head(c, r, ids, labels, l2=l2)
            gold_diff = (c - r) @ w
            out["golds"][f"{args.gold_model}_layer{layer}_l2_{l2:g}"] = {
                "layer": layer, "head_l2": l2, "human_heldout_agreement": agreement,
                **grade_gold(proxy, gold_diff, length_diff, seeds=args.seeds, against=lab.against_gold)}
            write_result(result_path, out)  # as it goes
            print(layer, l2, out["golds"][f"{args.gold_model}_layer{layer}_l2_{l2:g}"], flush=True)
    write_result(result_path, out)
    if args.save_gold:
        layer, l2 = args.save_gold.split(":")
        v = layers.index(int(layer))
        c, r = np.asarray(fc[:, v], dtype=np.float32), np.asarray(fr[:, v], dtype=np.float32)
        w, l2, agreement = fit_gold_head(c, r, ids, labels, l2=float(l2))
        gold_diff = (c - r) @ w
        stem = ROOT / "benchmarks" / "lab" / f"gold_hh_{args.gold_model}"
        pd.DataFrame({"id": ids, "gold_diff": gold_diff}).to_parquet(stem.with_suffix(".parquet"), index=False)
        np.save(stem.with_name(stem.name + "_head.npy"), w)
        write_json(stem.with_suffix(".json"), {
            "model": args.gold_model, "layer": int(layer), "max_length": args.max_length, "precision": precision,
            "head_l2": l2, "pairs": len(pairs), "heldout_agreement_with_human_labels": agreement,
            "length_spearman": spearman(gold_diff, length_diff), "length_unit": unit,
            "abs_diff_median": float(np.median(np.abs(gold_diff))), "chosen_by": "benchmarks/lab_gold_choice.py"})


if __name__ == "__main__":
    main()
