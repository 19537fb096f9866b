"""Members that differ in pretraining against members that differ only in the layer they read (issue: ensembles
beyond the audit, part 3; Eisenstein et al. 2023 find the former disagree more usefully).

20% planted flips over 3 seeds: the audit's default ensemble (10 cross-fitted heads) on one backbone alone, on
another alone, and mixed (5 members on each, `more_models`), each scored by how well its pair quality separates
the planted flips (AUROC, top-5% precision), with what it costs (encoding once per backbone, cached; the heads).

- ``--data llmeval2``: LLMEval²'s decided pairs (ties left out), human labels, MiniLM and MPNet members.
- ``--data lab``: the gold-standard lab (hh-rlhf, labels sampled from the gold as `benchmarks/lab.py` does, then
  flipped), with either of the lab's golds (``--gold``, `hh_lab.GOLDS`). Members on the gold's own backbone would
  share the gold's view, so the second backbone is the other one: MPNet (bf16, about 15 minutes to encode hh-rlhf
  once on 2 cores) against the SmolLM2 gold, SmolLM2-135M (about 40 minutes) against the MPNet gold; ``--second
  gemma3`` puts Gemma-3-270m (a decoder of another family than the SmolLM2 gold) in MPNet's place. Here the
  ensembles are also graded against the gold's sign (accuracy of the members' mean).

    .venv/bin/python benchmarks/mixed_backbones.py [--data llmeval2|lab] [--gold smollm2|mpnet] [--seeds 3]
        [--second mpnet|smollm2|gemma3]

Writes benchmarks/results/mixed_backbones.json (llmeval2) or mixed_backbones_lab<suffix>.json (lab; the gold's
suffix: "_smollm2", or "" for MPNet).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from rmkit.provenance import write_result
from rmkit.lab.hh import GOLDS, load_hh_lab
from rmkit.data import load_preferences
from rmkit.ensemble import EnsembleConfig, default_cache_dir, encode_features, heads_on_features, member_layers
from rmkit.lab import detection_metrics, orient, sample_labels
from rmkit.models import RewardModel
from rmkit.strength import pair_quality_scores

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def features(name: str, pairs, members: int, precision: str = "fp32") -> tuple[np.ndarray, np.ndarray, list[int],
                                                                              float, int]:
    """Cached token-mean features of the blocks a ``members``-strong ensemble on ``name`` reads, the encoding
    time (a first run encodes; later runs read the cache, so the time is that of the first) and the backbone's
    number of blocks."""
    rm = RewardModel.from_pretrained(name, max_length=128)
    layers = sorted(set(member_layers(EnsembleConfig(model=name, members=members), rm.num_layers)))
    t0 = time.time()
    fc, fr = encode_features(rm, pairs, cache_dir=default_cache_dir(), model_id=name, pooling="mean", layers=layers,
                             batch_size=32, progress=True, precision=precision)
    return np.asarray(fc), np.asarray(fr), layers, time.time() - t0, rm.num_layers


def ensemble(cfg: EnsembleConfig, fc, fr, views: list[int], ids, num_layers: int) -> np.ndarray:
    layers = member_layers(cfg, num_layers)
    pick = [views.index(v) for v in sorted(set(layers))]
    return heads_on_features(cfg, fc[:, pick], fr[:, pick], ids, layers)[0]


def labelling(data: str, pairs, flips: float, gold_name: str):
    """``label(seed) -> (y, flipped)``: the labels the ensembles train on (True: the source's chosen side) and
    which of them were planted flips; and the gold differences of the source pairs (lab) or None."""
    ids = [p.id for p in pairs]
    if data == "lab":
        hl = load_hh_lab(gold=gold_name)
        assert hl.ids == ids
        gold = hl.gold

        def label(seed: int):
            got = sample_labels(ids, gold, hl.temperature, flips=flips, seed=seed)
            return got["label"].to_numpy().astype(bool), got["flipped"].to_numpy()
        return label, gold

    def label(seed: int):  # human labels are the source's sides; flips planted on them
        rng = np.random.default_rng(seed)
        flipped = np.zeros(len(pairs), bool)
        flipped[rng.choice(len(pairs), int(round(flips * len(pairs))), replace=False)] = True
        return ~flipped, flipped
    return label, None


# data -> (folder, what, backbones as (name, precision)); the lab's second backbone is the one the gold does not
# read
SETTINGS = {"llmeval2": ("llmeval2", "LLMEval² decided pairs", (("minilm", "fp32"), ("mpnet", "fp32"))),
            "lab": ("hh-rlhf", "the gold-standard lab on hh-rlhf (labels sampled from the gold)",
                    (("minilm", "fp32"), ("smollm2", "fp32"))),
            "lab_smollm2": ("hh-rlhf", "the gold-standard lab on hh-rlhf (labels sampled from the SmolLM2 gold)",
                            (("minilm", "fp32"), ("mpnet", "bf16")))}

# --second: gemma3 is Gemma-3-270m base, another decoder family than the SmolLM2 gold's (about 30 minutes to encode
# hh-rlhf once on one core in bf16).
SECOND = ("mpnet", "smollm2", "gemma3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=sorted(SETTINGS), default="llmeval2")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--flips", type=float, default=0.2)
    parser.add_argument("--gold", choices=tuple(GOLDS), default="smollm2", help="the lab's gold (--data lab)")
    parser.add_argument("--second", choices=SECOND, default=None,
                        help="another second backbone than the setting's (its blocks, in bf16); the result's name "
                             "gains _NAME")
    args = parser.parse_args()
    setting = f"lab{GOLDS[args.gold].suffix}" if args.data == "lab" else args.data
    folder, what, backbones = SETTINGS[setting]
    if args.second:
        if args.second == args.gold:
            parser.error("--second must not be the gold's own backbone")
        backbones = (backbones[0], (args.second, "bf16"))
    pairs = load_preferences(DATA / folder).pairs  # LLMEval²: decided pairs (ties get their own status)
    ids = [p.id for p in pairs]
    label, gold = labelling(args.data, pairs, args.flips, args.gold)
    feats, encode_seconds = {}, {}
    for name, precision in backbones:
        fc, fr, views, seconds, n_layers = features(name, pairs, 10, precision)
        feats[name] = (fc, fr, views, n_layers)
        encode_seconds[name] = seconds
        print(name, "encoded", fc.shape, f"{seconds:.0f} s", flush=True)
    out: dict = {"data": what, "pairs": len(pairs), "flips": args.flips, "seeds": args.seeds, "members": 10,
                 "runs": {}}
    costs: dict = {}
    for seed in range(args.seeds):
        y, flipped = label(seed)
        diffs = {}
        for name, (fc, fr, views, n_layers) in feats.items():
            c, r = orient(fc, fr, y)
            t0 = time.time()
            diffs[name] = ensemble(EnsembleConfig(model=name, seed=seed), c, r, views, ids, n_layers)
            costs.setdefault(f"{name}_heads_seconds", []).append(time.time() - t0)
            # the mixed ensemble: 5 members on each backbone (what `more_models` builds), folds shared by id
            diffs[f"{name}_half"] = ensemble(EnsembleConfig(model=name, seed=seed, members=5), c, r, views, ids,
                                             n_layers)
        diffs["mixed"] = np.concatenate([diffs.pop(f"{name}_half") for name, *_ in backbones])
        for name, d in diffs.items():
            m = detection_metrics(1 - pair_quality_scores(d), flipped)
            mean = np.nanmean(d, axis=0)  # cross-fitted: each pair scored by heads that never trained on it
            m["mean_member_std"] = float(np.nanmean(np.nanstd(d, axis=0)))
            m["agreement_with_labels"] = float(np.mean(mean[~flipped] > 0))
            if gold is not None:  # the source's chosen side wins by the members iff (mean > 0) == y
                m["accuracy_vs_gold"] = float(np.mean(((mean > 0) == y) == (gold > 0)))
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
    out["mixed_minus_best_single_auroc"] = summary["mixed"]["auroc"] - max(summary[n]["auroc"] for n, *_ in backbones)
    out["precision"] = dict(backbones)
    name = "mixed_backbones.json" if args.data == "llmeval2" else f"mixed_backbones_{setting}.json"
    if args.second:
        name = name.replace(".json", f"_{args.second}.json")
    write_result(ROOT / "benchmarks" / "results" / name, out)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
