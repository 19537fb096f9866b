"""Reproduce the paper's preference-strength analyses (Sec. 3.1) on the real hh-rlhf pairs.

On the training split (seeded 70/10/20, as `rmkit train`), with the audit's default ensemble
(frozen backbone features, linear BT heads), under both scorings:

1. the share of pairs with mean strength below zero (paper: about 25% on hh-rlhf train);
2. the 20-group figure: pairs sorted by mean, each group's mean of mean and mean of std (paper: std
   U-shaped);
3. the per-decile experiment: sort the training pairs by strength, train a reward model on each 10%
   slice alone, report validation accuracy per slice (paper: bottom 20% below chance, 20-40% near
   0.5, the rest above; the top 10% alone is not the best);
4. the effect of flipping the bottom decile's labels on that slice's accuracy.

"Reward model" in 3 and 4 means a linear BT head on the same frozen features (the middle layer, its
L2 picked once on the training labels; several bootstrap seeds), the cheap stand-in that makes ten
trainings affordable on a CPU; every number says which scoring it used.

    .venv/bin/python benchmarks/strength_analysis.py [--members 10]

Writes benchmarks/results/strength_analysis/strength_analysis.json and its figures there.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from rmkit.provenance import write_result
from rmkit.data import get_splits, load_preferences
from rmkit.ensemble import EnsembleConfig, default_cache_dir, encode_features, heads_on_features, member_layers
from rmkit.heads import fold_of, head_diffs, select_l2, train_bt_heads
from rmkit.models import RewardModel
from rmkit.strength import group_statistics, preference_strength

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hh-rlhf"))
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--slice-seeds", type=int, default=5, help="head seeds (bootstraps) per decile")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "strength_analysis"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = load_preferences(args.data)
    splits = get_splits(ds, None, seed=0)
    by_id = {p.id: p for p in ds.pairs}
    train = [by_id[i] for i in splits["train"]]
    val = [by_id[i] for i in splits["validation"]]
    cfg = EnsembleConfig(model=args.model, members=args.members, max_length=args.max_length)
    rm = RewardModel.from_pretrained(cfg.model, max_length=cfg.max_length)
    pairs = train + val
    layers = {mode: member_layers(replace(cfg, mode=mode), rm.num_layers) for mode in ("crossfit", "seeds")}
    middle = rm.num_layers // 2  # the slice models read the middle block
    views = sorted(set(layers["crossfit"]) | set(layers["seeds"]) | {middle})
    fc, fr = encode_features(rm, pairs, cache_dir=default_cache_dir(), model_id=cfg.model, pooling=cfg.pooling,
                             layers=views, batch_size=cfg.batch_size)
    fc, fr = np.asarray(fc), np.asarray(fr)
    nt = len(train)
    ids = [p.id for p in train]
    result: dict = {"pairs_train": nt, "pairs_validation": len(val), "backbone": f"{args.model} frozen, mean pooling",
                    "members": args.members, "member_layers": layers, "slice_model_layer": middle}

    # ---- 1 and 2: strength of the training pairs, cross-fitted and in-sample (the audit's ensemble)
    strengths = {}
    for mode in ("crossfit", "seeds"):
        pick = [views.index(x) for x in sorted(set(layers[mode]))]
        diffs, _, used = heads_on_features(replace(cfg, mode=mode), fc[:nt, pick], fr[:nt, pick], ids, layers[mode])
        mean, std = preference_strength(diffs)
        strengths[mode] = mean
        groups = group_statistics(mean, std, n_groups=20)
        result[mode] = {"share_mean_below_zero": float((mean < 0).mean()), "head_l2": used["head_l2"],
                        "groups": groups.to_dict(orient="records")}
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar(groups["group"], groups["mean_of_mean"], color="#88ccee")
        ax.set(xlabel="group (training pairs sorted by mean strength)", ylabel="mean of mean")
        ax2 = ax.twinx()
        ax2.plot(groups["group"], groups["mean_of_std"], "o-", color="#cc6677")
        ax2.set_ylabel("mean of std")
        ax.set_title(f"{mode} scoring: {(mean < 0).mean():.1%} of pairs below zero")
        fig.tight_layout()
        fig.savefig(out / f"groups_{mode}.png", dpi=110)
        plt.close(fig)
        print(mode, result[mode]["share_mean_below_zero"], flush=True)

    # ---- 3 and 4: a model per strength decile (cross-fitted strength), validated on held-out pairs
    order = np.argsort(strengths["crossfit"], kind="stable")
    deciles = np.array_split(order, 10)
    m = views.index(middle)
    tc, tr, vc, vr = fc[:nt, m], fr[:nt, m], fc[nt:, m], fr[nt:, m]
    slice_l2, _ = select_l2(tc, tr, fold_of(ids, 2, seed=0))  # picked on all training pairs' labels, then fixed
    result["slice_model_l2"] = slice_l2

    def slice_accuracy(idx: np.ndarray, flip: bool = False) -> list[float]:
        c, r = (tr[idx], tc[idx]) if flip else (tc[idx], tr[idx])
        accs = []
        for s in range(args.slice_seeds):
            rng = np.random.default_rng(s)
            w = np.zeros((1, len(idx)), dtype=np.float32)
            np.add.at(w[0], rng.choice(len(idx), size=len(idx), replace=True), 1.0)
            W = train_bt_heads(c, r, w, l2=slice_l2)
            accs.append(float(np.mean(head_diffs(W, vc, vr)[0] > 0)))
        return accs

    per_decile = []
    for k, idx in enumerate(deciles):
        accs = slice_accuracy(idx)
        per_decile.append({"decile": k, "mean_strength_min": float(strengths["crossfit"][idx].min()),
                           "mean_strength_max": float(strengths["crossfit"][idx].max()),
                           "val_accuracy": float(np.mean(accs)), "val_accuracy_std": float(np.std(accs))})
        print(per_decile[-1], flush=True)
    result["per_decile"] = per_decile
    flipped = slice_accuracy(deciles[0], flip=True)
    result["bottom_decile_flipped"] = {"val_accuracy": float(np.mean(flipped)), "val_accuracy_std": float(np.std(flipped)),
                                       "unflipped_val_accuracy": per_decile[0]["val_accuracy"]}
    full = slice_accuracy(np.arange(nt))
    result["all_training_pairs_val_accuracy"] = float(np.mean(full))

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.errorbar([d["decile"] for d in per_decile], [d["val_accuracy"] for d in per_decile],
                yerr=[d["val_accuracy_std"] for d in per_decile], fmt="o-")
    ax.axhline(0.5, color="k", lw=0.8)
    ax.axhline(result["all_training_pairs_val_accuracy"], color="g", lw=0.8, ls="--", label="all training pairs")
    ax.scatter([0], [result["bottom_decile_flipped"]["val_accuracy"]], color="r", zorder=3, label="bottom decile, flipped")
    ax.set(xlabel="training slice (decile of cross-fitted strength)", ylabel="validation accuracy",
           title="A model per strength decile")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "per_decile.png", dpi=110)
    plt.close(fig)
    write_result(out / "strength_analysis.json", result)


if __name__ == "__main__":
    main()
