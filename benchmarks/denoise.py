"""Denoising and contrastive methods under injected label noise, on the real hh-rlhf pairs.

Protocol (one run = one method, one noise rate, one seed):

1. The saved 70/10/20 split of the usable hh-rlhf pairs; ``rate`` of the *training* pairs get their
   chosen and rejected swapped (seeded); validation and test keep their original labels.
2. Preference strength of every training pair from the audit's default ensemble, computed on the
   noisy training split (10 linear heads over 2 folds reading several layers of the frozen features,
   L2 picked on the noisy labels) -- the method sees only noisy labels, as a user would.
3. The method acts through rmkit's own code: `rmkit.denoise.denoise_pairs` (presets flip, margin,
   flip+margin, soft+margin, drop), the trainer's objectives (`rmkit.objectives.OBJECTIVES`), and
   `rmkit.objectives.ContrastiveTerm` (SimCSE/SwAV presets, on pairs or on differences).
4. The reward model is the frozen MiniLM backbone (mean-pooled middle block, from the same encoding)
   under a trainable two-layer top (384 -> 256, GELU, dropout 0.05 on input and hidden: the two
   dropout views). Full fine-tuning costs ~30 min per run on 2 CPU cores; the grid is
   4 rates x 3 seeds x 12 methods, so it runs on the trainable top, where a run takes seconds.
5. Accuracy against the clean labels on the test split at the end of training (5 epochs), and on
   validation every ``--eval-every`` steps (the curves).

The best combination joins the best denoising preset and the best contrastive preset, each chosen
by validation accuracy at 20% noise (never by test accuracy).

Pairwise comparisons: for every method against the baseline at every rate, the difference in test
accuracy averaged over the 3 seeds, with a 95% bootstrap interval over test pairs (the same
resampled pairs for both methods and all seeds).

    .venv/bin/python benchmarks/denoise.py [--seeds 3] [--epochs 5] [--judge-labels judge.parquet]

Writes benchmarks/results/denoise.json (``{rate: {method: {mean, std, ...}}}``), denoise_runs.json
(every run, with its curve), and denoise_curves.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rmkit.provenance import write_result
from rmkit.data import get_splits, inject_label_flips, load_preferences
from rmkit.denoise import OBJECTIVE_FOR, RANKED, DenoiseConfig, denoise_pairs
from rmkit.intervals import mean_interval
from rmkit.ensemble import EnsembleConfig, default_cache_dir, encode_features, heads_on_features, member_layers
from rmkit.models import RewardModel
from rmkit.scoring import label_views, read_judge_labels
from rmkit.strength import preference_strength
from rmkit.objectives import OBJECTIVES, ContrastiveTerm
from rmkit.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
RATES = (0.0, 0.1, 0.2, 0.3)
CONTRASTIVE = ("simcse", "simcse-diff", "swav", "swav-diff")


class Top(nn.Module):
    """The trainable part of the reward model: features -> hidden (the contrastive features) -> reward."""

    def __init__(self, dim: int, hidden: int = 256, dropout: float = 0.05):
        super().__init__()
        self.inp = nn.Linear(dim, hidden)
        self.head = nn.Linear(hidden, 1)
        self.p = dropout

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.dropout(x, self.p, self.training)
        h = F.dropout(F.gelu(self.inp(x)), self.p, self.training)
        return self.head(h).squeeze(-1), h


def train_top(fc, fr, *, objective: str, margin, label, contrastive: str, seed: int, epochs: float,
              batch_size: int, lr: float, eval_sets: dict, eval_every: int):
    """Train one top; returns the final rewards on every eval set and the validation curve."""
    torch.manual_seed(seed)
    top = Top(fc.shape[1])
    term = ContrastiveTerm.from_config(TrainConfig(contrastive=contrastive), 256) if contrastive != "none" else None
    params = list(top.parameters()) + (list(term.parameters()) if term is not None else [])
    opt = torch.optim.AdamW(params, lr=lr)
    obj = OBJECTIVES[objective]
    n = len(fc)
    g = torch.Generator().manual_seed(seed)
    steps = int(round(epochs * n / batch_size))
    order = torch.cat([torch.randperm(n, generator=g) for _ in range(int(np.ceil(epochs)) + 1)])
    curve = []

    def rewards(x):
        top.eval()
        with torch.inference_mode():
            r = top(x)[0].numpy()
        top.train()
        return r

    def accuracy(name):
        c, r = eval_sets[name]
        return float(np.mean(rewards(c) > rewards(r)))

    for step in range(steps):
        idx = order[step * batch_size:(step + 1) * batch_size]
        b = len(idx)
        x = torch.cat([fc[idx], fr[idx]])
        batch = {"label": label[idx], "margin": margin[idx] if margin is not None else None}
        if term is None:
            r, _ = top(x)
            loss = obj(r[:b], r[b:], batch)
        else:
            r, h = top(torch.cat([x, x]))  # the two dropout views in one pass, as the trainer does
            loss = obj(r[:b], r[b:2 * b], batch) + term.beta * term(h[:b], h[b:2 * b], h[2 * b:3 * b], h[3 * b:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            curve.append({"step": step + 1, "val": accuracy("val"), "test": accuracy("test")})
    final = {k: (rewards(c), rewards(r)) for k, (c, r) in eval_sets.items()}
    return final, curve


def ensemble_strength(fc_views: np.ndarray, fr_views: np.ndarray, ids, layers: list[int], *, seed=0) -> np.ndarray:
    """The audit's default ensemble (`rmkit.ensemble.heads_on_features`: 10 crossfit heads over several
    layers, L2 picked on the labels) on these (noisy) training pairs' features ``(N, V, H)``: mean strength."""
    diffs, _, _ = heads_on_features(EnsembleConfig(seed=seed), fc_views, fr_views, ids, layers)
    mean, _ = preference_strength(diffs)
    return mean


def bootstrap_diff(correct_a: np.ndarray, correct_b: np.ndarray, *, n_boot: int = 2000, seed: int = 0):
    """Mean over seeds of accuracy(a) - accuracy(b), and its 95% bootstrap interval over test pairs.

    ``correct_*`` are (seeds, n_test) 0/1 arrays on the same test pairs."""
    d = (correct_a - correct_b).mean(0)  # per test pair, averaged over seeds
    return float(d.mean()), list(mean_interval(d, bootstrap=n_boot, seed=seed))  # the draws of the committed results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hh-rlhf"))
    ap.add_argument("--model", default="minilm", help="frozen backbone: alias, hub id or path")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=float, default=5.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--rates", default=",".join(map(str, RATES)))
    ap.add_argument("--judge-labels", default=None, help="table with id, judge_label for validation/test pairs")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs_path = out / "denoise_runs.json"
    runs: dict = json.loads(runs_path.read_text()) if runs_path.exists() else {}  # resume: finished runs are kept

    ds = load_preferences(args.data)
    pairs = ds.pairs
    splits = get_splits(ds, None)
    by_id = {p.id: i for i, p in enumerate(pairs)}
    tr, va, te = ([by_id[i] for i in splits[s]] for s in ("train", "validation", "test"))
    ecfg = EnsembleConfig(model=args.model)
    model = RewardModel.from_pretrained(ecfg.model, max_length=ecfg.max_length)
    t0 = time.time()
    # One encoding: the layers the audit's members read (strength) and the middle block (the RM's input).
    layers = member_layers(ecfg, model.num_layers)
    middle = model.num_layers // 2
    views = sorted(set(layers) | {middle})
    fv_c, fv_r = encode_features(model, pairs, cache_dir=default_cache_dir(), model_id=ecfg.model,
                                 pooling="mean", layers=views)
    fv_c, fv_r = np.asarray(fv_c), np.asarray(fv_r)
    fc_all, fr_all = fv_c[:, views.index(middle)], fv_r[:, views.index(middle)]
    member_views = [views.index(x) for x in sorted(set(layers))]
    print(f"features: {time.time() - t0:.0f} s; train {len(tr)}, validation {len(va)}, test {len(te)}")
    T = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    eval_sets = {"val": (T(fc_all[va]), T(fr_all[va])), "test": (T(fc_all[te]), T(fr_all[te]))}
    judge = None
    if args.judge_labels:
        judge = {s: read_judge_labels(args.judge_labels, [pairs[i].id for i in idx]) for s, idx in
                 (("val", va), ("test", te))}

    def run(rate: float, seed: int, preset: str, contrastive: str) -> dict:
        key = f"{rate}|{seed}|{preset}|{contrastive}"
        if key in runs:
            return runs[key]
        t = time.time()
        train_pairs = [pairs[i] for i in tr]
        noisy, flipped = inject_label_flips(train_pairs, rate, seed=1000 + seed)
        fc = np.where(flipped[:, None], fr_all[tr], fc_all[tr])
        fr = np.where(flipped[:, None], fc_all[tr], fr_all[tr])
        objective, margin, label = "bt", None, np.ones(len(tr))
        if preset != "none":
            sc, sr = fv_c[tr][:, member_views], fv_r[tr][:, member_views]
            mean = ensemble_strength(np.where(flipped[:, None, None], sr, sc), np.where(flipped[:, None, None], sc, sr),
                                     [p.id for p in noisy], layers, seed=seed)
            cleaned, actions = denoise_pairs(noisy, mean, DenoiseConfig(preset=preset))
            keep = np.array([not a.startswith("dropped") for a in actions])
            flip = np.array([a.startswith("flipped") for a in actions])
            fc, fr = np.where(flip[:, None], fr, fc)[keep], np.where(flip[:, None], fc, fr)[keep]
            objective = OBJECTIVE_FOR[preset]
            margin = np.array([p.margin for p in cleaned]) if cleaned[0].margin is not None else None
            label = np.array([p.label for p in cleaned])
            # How well did the strength find the injected flips (among the pairs it acted on)?
            acted = ~keep | flip | np.array([a.startswith("soft") for a in actions])
        final, curve = train_top(T(fc), T(fr), objective=objective,
                                 margin=T(margin) if margin is not None else None, label=T(label),
                                 contrastive=contrastive, seed=seed, epochs=args.epochs,
                                 batch_size=args.batch_size, lr=args.lr, eval_sets=eval_sets,
                                 eval_every=args.eval_every)
        rc, rr = final["test"]
        vc, vr = final["val"]
        rec = {"rate": rate, "seed": seed, "preset": preset, "contrastive": contrastive,
               "test_accuracy": float(np.mean(rc > rr)), "val_accuracy": float(np.mean(vc > vr)),
               "test_correct": (rc > rr).astype(int).tolist(), "curve": curve, "seconds": time.time() - t,
               "train_pairs": int(len(fc))}
        if preset != "none" and rate > 0 and acted.any():
            rec["acted_precision"] = float(flipped[acted].mean())
        if judge is not None:
            for s, (c, r) in (("val", (vc, vr)), ("test", (rc, rr))):
                views = label_views(c, r, np.ones(len(c)), judge[s])
                rec.update({f"{s}_{k}": v for k, v in views.items()})
        runs[key] = rec
        runs_path.write_text(json.dumps(runs))
        print(f"rate {rate:.1f} seed {seed} {preset:>12} {contrastive:>11}: test {rec['test_accuracy']:.4f} "
              f"val {rec['val_accuracy']:.4f} ({rec['seconds']:.0f} s)", flush=True)
        return rec

    rates = [float(r) for r in args.rates.split(",")]
    seeds = range(args.seeds)
    # The presets that select by strength: this benchmark's audit has no flip rate from outside it (p_flipped).
    methods = [("none", "none")] + [(p, "none") for p in RANKED] + [("none", c) for c in CONTRASTIVE]
    for rate in rates:
        for seed in seeds:
            for preset, contrastive in methods:
                run(rate, seed, preset, contrastive)

    def name(preset: str, contrastive: str) -> str:
        if preset == "none" and contrastive == "none":
            return "baseline"
        return "+".join(x for x in (preset, contrastive) if x != "none")

    # The best combination: best preset and best contrastive term by validation accuracy at 20% noise.
    sel_rate = 0.2 if 0.2 in rates else rates[-1]
    val = lambda p, c: np.mean([run(sel_rate, s, p, c)["val_accuracy"] for s in seeds])  # noqa: E731
    best_p = max(RANKED, key=lambda p: val(p, "none"))
    best_c = max(CONTRASTIVE, key=lambda c: val("none", c))
    for rate in rates:
        for seed in seeds:
            run(rate, seed, best_p, best_c)
    methods.append((best_p, best_c))

    results: dict = {"protocol": {k: v for k, v in vars(args).items() if k != "out"} | {
        "train_pairs": len(tr), "validation_pairs": len(va), "test_pairs": len(te),
        "model": f"{args.model} frozen (mean-pooled middle block) + trainable 2-layer top, dropout 0.05",
        "best_combination": name(best_p, best_c), "selected_by": f"validation accuracy at rate {sel_rate}"}}
    for rate in rates:
        block: dict = {}
        base = np.array([run(rate, s, "none", "none")["test_correct"] for s in seeds])
        for p, c in methods:
            recs = [run(rate, s, p, c) for s in seeds]
            acc = np.array([r["test_accuracy"] for r in recs])
            entry = {"mean": float(acc.mean()), "std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                     "runs": acc.tolist(), "val_mean": float(np.mean([r["val_accuracy"] for r in recs]))}
            if (p, c) != ("none", "none"):
                d, ci = bootstrap_diff(np.array([r["test_correct"] for r in recs]), base)
                entry["vs_baseline"] = {"diff": d, "ci95": ci}
            if "acted_precision" in recs[0]:
                entry["acted_precision"] = float(np.mean([r["acted_precision"] for r in recs]))
            for view in ("test_judge/accuracy", "test_agree/accuracy"):
                if view in recs[0]:
                    entry[view.replace("test_", "").replace("/", "_")] = float(np.mean([r[view] for r in recs]))
            block[name(p, c)] = entry
        results[str(rate)] = block
    clean = results[str(rates[0])]["baseline"]["mean"] if rates[0] == 0.0 else None
    if clean is not None and 0.2 in rates:
        noisy = results["0.2"]["baseline"]["mean"]
        best_name, best = max(((k, v["mean"]) for k, v in results["0.2"].items() if k != "baseline"),
                              key=lambda kv: kv[1])
        lost = clean - noisy
        results["goal"] = {"baseline_clean": clean, "baseline_20pct": noisy, "lost": lost, "best_at_20pct": best_name,
                           "best_accuracy": best, "recovered_share": (best - noisy) / lost if lost > 0 else None}
    write_result(out / "denoise.json", results)
    plot_curves(runs, rates, methods, name, out / "denoise_curves.png")
    print(json.dumps({r: {k: round(v["mean"], 4) for k, v in results[str(r)].items()} for r in rates}, indent=1))


def plot_curves(runs: dict, rates, methods, name, path: Path) -> None:
    """Validation accuracy (clean labels) over training steps, mean over seeds, one panel per rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rates), figsize=(4.2 * len(rates), 3.6), sharey=True)
    for ax, rate in zip(np.atleast_1d(axes), rates):
        for p, c in methods:
            curves = [r["curve"] for r in runs.values() if r["rate"] == rate and r["preset"] == p
                      and r["contrastive"] == c]
            if not curves:
                continue
            steps = [x["step"] for x in curves[0]]
            acc = np.mean([[x["val"] for x in cur] for cur in curves], axis=0)
            ax.plot(steps, acc, label=name(p, c), lw=2.2 if (p, c) == ("none", "none") else 1.1)
        ax.set_title(f"{int(rate * 100)}% flipped training labels")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("validation accuracy (clean labels)")
    np.atleast_1d(axes)[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
