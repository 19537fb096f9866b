"""Members that differ in pretraining against members that differ only in the layer they read (issue: ensembles
beyond the audit, part 3; Eisenstein et al. 2023 find the former disagree more usefully).

On LLMEval²'s decided pairs (ties left out), 20% planted flips over 3 seeds: the audit's default ensemble
(10 cross-fitted heads) on MiniLM alone, on MPNet alone, and mixed (5 members on each, `more_models`), each
scored by how well its pair quality separates the planted flips (AUROC, top-5% precision), with what it costs
(encoding once per backbone, cached; the heads).

    .venv/bin/python benchmarks/mixed_backbones.py [--seeds 3]

Writes benchmarks/results/mixed_backbones.json. Not run in the gold-standard lab: its gold reads MPNet features,
so MPNet members would share the gold's view, and a third backbone (SmolLM2, ~7 texts/s here) would take 40
minutes to encode hh-rlhf on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from rmkit.data import load_preferences
from rmkit.ensemble import EnsembleConfig, default_cache_dir, encode_features, heads_on_features, member_layers
from rmkit.lab import detection_metrics, orient
from rmkit.models import RewardModel
from rmkit.strength import pair_quality_scores

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def features(name: str, pairs, members: int) -> tuple[np.ndarray, np.ndarray, list[int], float]:
    """Cached token-mean features of the blocks a ``members``-strong ensemble on ``name`` reads, and the
    encoding time (a first run encodes; later runs read the cache, so the time is that of the first)."""
    rm = RewardModel.from_pretrained(name, max_length=128)
    layers = sorted(set(member_layers(EnsembleConfig(model=name, members=members), rm.num_layers)))
    t0 = time.time()
    fc, fr = encode_features(rm, pairs, cache_dir=default_cache_dir(), model_id=name, pooling="mean", layers=layers,
                             batch_size=32, progress=True)
    return np.asarray(fc), np.asarray(fr), layers, time.time() - t0


def ensemble(cfg: EnsembleConfig, fc, fr, views: list[int], ids, num_layers: int) -> np.ndarray:
    layers = member_layers(cfg, num_layers)
    pick = [views.index(v) for v in sorted(set(layers))]
    return heads_on_features(cfg, fc[:, pick], fr[:, pick], ids, layers)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--flips", type=float, default=0.2)
    args = parser.parse_args()
    pairs = load_preferences(DATA / "llmeval2").pairs  # decided pairs: ties get their own status
    ids = [p.id for p in pairs]
    feats, encode_seconds = {}, {}
    for name, n_layers in (("minilm", 6), ("mpnet", 12)):
        fc, fr, views, seconds = features(name, pairs, 10)
        feats[name] = (fc, fr, views, n_layers)
        encode_seconds[name] = seconds
        print(name, "encoded", fc.shape, f"{seconds:.0f} s", flush=True)
    out: dict = {"data": "LLMEval² decided pairs", "pairs": len(pairs), "flips": args.flips, "seeds": args.seeds,
                 "members": 10, "runs": {}}
    costs: dict = {}
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        flipped = np.zeros(len(pairs), bool)
        flipped[rng.choice(len(pairs), int(round(args.flips * len(pairs))), replace=False)] = True
        diffs = {}
        for name, (fc, fr, views, n_layers) in feats.items():
            c, r = orient(fc, fr, ~flipped)
            t0 = time.time()
            diffs[name] = ensemble(EnsembleConfig(model=name, seed=seed), c, r, views, ids, n_layers)
            costs.setdefault(f"{name}_heads_seconds", []).append(time.time() - t0)
            # the mixed ensemble: 5 members on each backbone (what `more_models` builds), folds shared by id
            diffs[f"{name}_half"] = ensemble(EnsembleConfig(model=name, seed=seed, members=5), c, r, views, ids,
                                             n_layers)
        diffs["mixed"] = np.concatenate([diffs.pop("minilm_half"), diffs.pop("mpnet_half")])
        for name, d in diffs.items():
            m = detection_metrics(1 - pair_quality_scores(d), flipped)
            m["mean_member_std"] = float(np.nanmean(np.nanstd(d, axis=0)))
            m["agreement_with_labels"] = float(np.mean(np.nanmean(d, axis=0)[~flipped] > 0))
            out["runs"].setdefault(name, []).append(m)
        print(seed, {k: round(v[-1]["auroc"], 4) for k, v in out["runs"].items()}, flush=True)
    summary = {}
    for name, runs in out["runs"].items():
        summary[name] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
        summary[name]["auroc_std"] = float(np.std([r["auroc"] for r in runs]))
    out["summary"] = summary
    out["costs"] = {"encode_seconds (this run; near 0 when the cache held them)": encode_seconds,
                    "texts": 2 * len(pairs),
                    **{k: float(np.mean(v)) for k, v in costs.items()}}
    out["mixed_minus_best_single_auroc"] = summary["mixed"]["auroc"] - max(summary["minilm"]["auroc"],
                                                                            summary["mpnet"]["auroc"])
    path = ROOT / "benchmarks" / "results" / "mixed_backbones.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
