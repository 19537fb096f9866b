"""Best-of-n in the lab with fine-tuned proxies: Gao et al.'s and Coste et al.'s setting, on a CPU.

`lab_bon.py` found no overoptimization up to n = 128 with linear heads on frozen MiniLM features, at any
training size down to 50 pairs: a smooth function of nearly the features the gold reads. The proxies of Gao
et al. 2022 and Coste et al. 2023 are fine-tuned RMs, and Coste et al.'s ensembles are such RMs trained with
different seeds. This trains them with `rmkit train` (`configs/train_default.yaml`: all of MiniLM, max length
128, two epochs) on the lab's sampled labels of the first k training pairs (the order lab_bon.py uses), M seeds
per k, and scores the best-of-n samples of lab_bon.py with each: member 0 is the single RM, all M make the
ensemble (`rmkit.reward_ensemble.aggregate` over z-scored members, through `rmkit.bon.study_bon`).

    .venv/bin/python benchmarks/lab_bon.py --prompts 40 --n 128 --sample-only   # the samples (cached)
    .venv/bin/python benchmarks/lab_bon_finetuned.py                 # 40 prompts, n 128, 1000/250/100 pairs, 4 seeds
    .venv/bin/python benchmarks/lab_bon.py --prompts 40 --n 256 --sample-only   # extends the cache
    python benchmarks/lab_bon_finetuned.py --n 256 --sizes 1000,250 --result benchmarks/results/bon_finetuned_n256.json
    python benchmarks/lab_bon_finetuned.py --n 512 --sizes 250,1000 --flips 0.25 \
        --result benchmarks/results/bon_finetuned_n512_flips25.json        # Coste et al.'s noisy labels
    python benchmarks/lab_bon_finetuned.py --n 512 --sizes 100,250 --epochs 8 \
        --result benchmarks/results/bon_finetuned_n512_epochs8.json        # proxies trained to fit their pairs
    .venv/bin/python benchmarks/lab_bon.py --prompts 40 --n 512 --sample-only   # 384 more samples per prompt, ~65 min
    .venv/bin/python benchmarks/lab_bon_finetuned.py --n 512 --sizes 250,100 \
        --result benchmarks/results/bon_finetuned_smollm2_n512.json      # the SmolLM2 gold's, to n = 512

``--gold`` picks the lab's gold (`hh_lab.GOLDS`): smollm2, the default, or mpnet, the gold of the committed
bon_finetuned.json and bon_finetuned_n*.json (add ``--gold mpnet`` to the commands above to reproduce them). Gold
rewards come from the committed benchmarks/lab/bon_scores<suffix>.parquet (128 samples) or
bon_scores<suffix>_n512.parquet (512 samples of the first 40 prompts) once two regenerated prompts are checked to
score the same; the gold scores the rest itself.
Writes benchmarks/results/bon_finetuned<suffix>.json (--result) and its _curve.png beside it. Every trained member
and every score array is kept under runs/lab/bon_ft<suffix>, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rmkit.lab.hh import DATA, GOLDS, ROOT, load_hh_lab, train_proxy, training_pool
from rmkit.bon import bon_ns, bon_variant_tables, each_member_alone, read_samples, study_bon, summarize_bon
from rmkit.config import load_config, to_dict
from rmkit.files import write_json
from rmkit.hardware import autocast, resolve_precision
from rmkit.gold import load_gold
from rmkit.lab import gold_accuracy
from rmkit.scoring import score_pairs
from rmkit.training import TrainConfig


def picked_prompts(hl, prompts: int, seed: int):
    """The held-out prompts of lab_bon.py, in its seeded order (the first ``prompts`` of them)."""
    test = set(hl.splits["test"])
    cand = [p for p in hl.ds.pairs if p.id in test and len(p.prompt) == 1 and len(p.prompt[0]["content"]) < 300]
    return [cand[i] for i in np.random.default_rng(seed).permutation(len(cand))[:prompts]]


def samples_key(ids: list[str], samples: dict, n: int) -> str:
    """A short hash of the first ``n`` samples of each prompt: what a cache of their scores is valid for."""
    return hashlib.sha256(json.dumps([ids, [samples[i][:n] for i in ids]]).encode()).hexdigest()[:12]


def earlier_scores(run: Path, pid: list[str], have: dict, n: int, precision: str):
    """A member's scores of the first ``n`` samples that an earlier, smaller n cached: ``(rewards (P, n) with the
    first ``fewer`` columns filled, its accuracy or None, fewer)``, so extending the samples scores only the new
    ones."""
    r = np.zeros((len(pid), n), np.float32)
    for fewer in (n >> j for j in range(1, 8)):
        earlier = run / f"scores_{samples_key(pid, have, fewer)}_{precision}.npz"
        if fewer and earlier.exists():
            with np.load(earlier) as z:
                r[:, :fewer] = z["rewards"]
                return r, float(z["accuracy"]), fewer
    return r, None, 0


def committed_scores(ids: list[str], the) -> dict[str, pd.DataFrame] | None:
    """lab_bon.py's committed scores of these prompts' samples (gold, single, member_0..4), each a table ``(prompt id,
    sample k)``: of its files (128 samples of 100 prompts, and its --tag runs such as _n512: 512 of 40) the one with
    the most samples that holds every prompt; None if none does."""
    tables = [pd.read_parquet(f) for f in sorted((ROOT / "benchmarks" / "lab").glob(f"bon_scores{the.suffix}*.parquet"))
              if f.stem == f"bon_scores{the.suffix}" or f.stem.startswith(f"bon_scores{the.suffix}_n")]
    covering = [t for t in tables if set(ids) <= set(t["id"])]
    if not covering:
        return None
    best = max(covering, key=lambda t: t["k"].max())
    return {c: best.pivot(index="id", columns="k", values=c) for c in best.columns if c not in ("id", "k")}


def gold_of_samples(picked, samples: dict, n: int, work: Path, the) -> tuple[np.ndarray, dict]:
    """Gold rewards ``(P, n)`` of the gold ``the`` (`hh_lab.Gold`): the committed ones (`committed_scores`) where a
    check on two regenerated prompts agrees, and the gold's own scores for the rest (cached)."""
    ids = [p.id for p in picked]
    committed = committed_scores(ids, the)
    table = committed["gold"] if committed is not None else None
    info = json.loads(the.file(".json").read_text())
    gold_rm = load_gold(the.file("_head.npy"), info["model"], layer=info["layer"], max_length=info["max_length"],
                        precision=info.get("precision", "fp32"))

    def score(which: list[int], lo: int, hi: int) -> np.ndarray:
        flat_p = [list(picked[i].prompt) for i in which for _ in range(lo, hi)]
        flat_r = [[{"role": "assistant", "content": t}] for i in which for t in samples[ids[i]][lo:hi]]
        return gold_rm.score(flat_p, flat_r, progress=True).reshape(len(which), hi - lo)

    k0 = min(n, table.shape[1]) if table is not None else 0
    diff = float(np.abs(score([0, 1], 0, k0) - table.loc[ids[:2]].to_numpy()[:, :k0]).max()) if k0 else np.inf
    # Regenerated samples that differ from the committed ones move a score by about the gold's spread (0.2 for
    # SmolLM2's); a bf16 gold moves the same text's score by up to ~4e-4 with the batch it is padded in.
    tolerance = 1e-4 if info.get("precision", "fp32") == "fp32" else 5e-3
    if diff >= tolerance:  # the samples differ: the gold scores them all
        k0 = 0
    gold = np.zeros((len(ids), n))
    gold[:, :k0] = table.loc[ids].to_numpy()[:, :k0]
    # Scored in doubling segments (128-256, 256-512, ...), each cached under the samples up to its end, so extending
    # the samples scores only the new ones.
    lo = k0
    while lo < n:
        hi = min(n, 2 * lo) if lo else n
        cache = work / f"gold_{samples_key(ids, samples, hi)}_{lo}_{hi}.npy"
        if not cache.exists():
            np.save(cache, score(list(range(len(ids))), lo, hi))
        gold[:, lo:hi] = np.load(cache)
        lo = hi
    return gold, {"gold_committed_samples_per_prompt": k0, "gold_scored_samples_per_prompt": n - k0,
                  "gold_check_max_abs_diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 250, 100],
                        help="training pairs of each proxy, comma-separated")
    parser.add_argument("--members", type=int, default=4, help="fine-tuned RMs (seeds) per size")
    parser.add_argument("--epochs", type=float, default=None, help="default: the config's (2)")
    parser.add_argument("--grade-pairs", type=int, default=500, help="test pairs each member is graded on")
    parser.add_argument("--flips", type=float, default=0.0,
                        help="planted flips on top of the sampled labels (Coste et al.'s noisy setting is 0.25)")
    parser.add_argument("--uwo-lambda", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="auto", help="of the members' scoring (training stays fp32)")
    parser.add_argument("--gold", choices=tuple(GOLDS), default="smollm2", help="which of the lab's golds")
    parser.add_argument("--result", default=None, help="default: benchmarks/results/bon_finetuned<suffix>.json; the "
                                                       "figure goes beside it (<name>_curve.png)")
    args = parser.parse_args()
    the = GOLDS[args.gold]
    args.result = args.result or str(the.result("bon_finetuned.json"))
    work = ROOT / "runs" / "lab" / f"bon_ft{the.suffix}"
    work.mkdir(parents=True, exist_ok=True)
    hl = load_hh_lab(seed=args.seed, gold=args.gold)
    picked = picked_prompts(hl, args.prompts, args.seed)
    pid = [p.id for p in picked]
    have = read_samples(ROOT / "runs" / "lab" / "bon_samples.jsonl")
    missing = [i for i in pid if len(have.get(i, ())) < args.n]
    if missing:
        raise SystemExit(f"{len(missing)} prompts lack {args.n} samples: run benchmarks/lab_bon.py --prompts "
                         f"{args.prompts} --n {args.n} --sample-only first")
    key = samples_key(pid, have, args.n)
    gold, gold_info = gold_of_samples(picked, have, args.n, work, the)

    pool, flipped = training_pool(hl, args.seed, args.flips)
    test_idx = np.flatnonzero(hl.mask("test"))[: args.grade_pairs]
    grade_pairs = [hl.ds.pairs[k] for k in test_idx]  # source sides, graded against the gold's sign

    base = load_config(TrainConfig, ROOT / "configs" / "train_default.yaml")
    epochs = base.epochs if args.epochs is None else args.epochs
    device = torch.device("cpu")
    precision = resolve_precision(args.precision, device)
    out, ns = {}, bon_ns(args.n)
    for size in args.sizes:
        pairs = pool[:size]
        rewards, accuracy, seconds = [], [], []
        for m in range(args.members):
            run = work / (f"k{size}_seed{m}" + (f"_flips{args.flips:g}" if args.flips else "")
                          + (f"_epochs{epochs:g}" if epochs != base.epochs else ""))
            t0 = time.time()
            model = train_proxy(run, pairs, m, epochs)
            seconds.append(json.loads((run / "results.json").read_text()).get("train_seconds", time.time() - t0))
            cache = run / f"scores_{key}_{precision}.npz"
            if not cache.exists():
                r, acc, fewer = earlier_scores(run, pid, have, args.n, precision)
                sub_p = [list(p.prompt) for p in picked for _ in range(fewer, args.n)]
                sub_r = [[{"role": "assistant", "content": t}] for i in pid for t in have[i][fewer: args.n]]
                with autocast(device, precision):
                    r[:, fewer:] = model.score(sub_p, sub_r, batch_size=64).numpy().reshape(len(pid), args.n - fewer)
                if acc is None:
                    diff = score_pairs(model, grade_pairs, batch_size=64, precision=precision)["diff"].to_numpy()
                    acc = gold_accuracy(diff, hl.gold[test_idx])
                np.savez(cache, rewards=r, accuracy=acc)
            with np.load(cache) as z:
                rewards.append(z["rewards"])
                accuracy.append(float(z["accuracy"]))
            print(f"k={size} seed={m}: accuracy vs gold {accuracy[-1]:.3f}", flush=True)
        members = np.stack(rewards)
        tables = bon_variant_tables(gold, members[0], members, ns, uwo_lambda=args.uwo_lambda)
        res = summarize_bon(tables, ns, samples_per_prompt=args.n, uwo_lambda=args.uwo_lambda, seed=args.seed)
        # Every member as the single RM (member 0 is study_bon's): the single curve without one seed's luck.
        res.update(each_member_alone(tables, gold, members, ns, seed=args.seed))
        res["proxy_gold_accuracy"] = {"members": accuracy, "mean": float(np.mean(accuracy))}
        res["proxy_gold_correlation_within_prompt"] = {
            name: float(np.mean([np.corrcoef(v[i], gold[i])[0, 1] for i in range(len(pid))]))
            for name, v in (("single", members[0]),
                            ("mean", ((members - members.mean((1, 2), keepdims=True))
                                      / members.std((1, 2), keepdims=True)).mean(0)))}
        res["train_seconds_per_member"] = float(np.mean(seconds))
        res["planted_flips_in_training_pairs"] = float(np.mean(flipped[:size]))
        out[str(size)] = res

    # The frozen-head proxies of lab_bon.py (all training pairs) on the same prompts, for comparison, where the
    # committed table that served the gold covers the samples.
    frozen = None
    if gold_info["gold_committed_samples_per_prompt"] == args.n:
        committed = committed_scores(pid, the)
        frozen_single = committed["single"].loc[pid].to_numpy()[:, : args.n]
        frozen_members = np.stack([committed[f"member_{m}"].loc[pid].to_numpy()[:, : args.n] for m in range(5)])
        frozen = study_bon(gold, frozen_single, frozen_members, ns, uwo_lambda=args.uwo_lambda, seed=args.seed)
    result = {
        "what": "best-of-n gold reward (x1 of the gold's units) of the sample each proxy picks, exact expectation "
                "over draws from the samples; proxies fine-tuned with rmkit train on the lab's labels",
        "policy": "SmolLM2-135M-Instruct (Q4_1 GGUF, llama.cpp), temperature 1.0, 48 tokens (lab_bon.py's samples)",
        "prompts": len(pid), "samples_per_prompt": args.n, "members": args.members, "epochs": epochs,
        "planted_flips": args.flips, "gold": the.stem,
        "scoring_precision": precision, "grade_pairs": len(grade_pairs), **gold_info,
        "finetuned": out, "frozen_heads_all_pairs_same_prompts": frozen,
        "train_config": to_dict(replace(base, data=str(DATA), epochs=epochs)),
    }
    write_json(args.result, result, relative_to=ROOT)
    _figure(result, Path(args.result).with_name(Path(args.result).stem + "_curve.png"))
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk in ("gold_reward", "drops",
                                                                       "conservative_recovery", "proxy_gold_accuracy")}
                      for k, v in out.items()}, indent=1))


def _figure(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = [(f"fine-tuned, {k} pairs", v) for k, v in result["finetuned"].items()]
    if result["frozen_heads_all_pairs_same_prompts"] is not None:
        blocks.append(("frozen heads, all pairs", result["frozen_heads_all_pairs_same_prompts"]))
    fig, axes = plt.subplots(1, len(blocks), figsize=(4.2 * len(blocks), 3.6), sharey=True)
    for ax, (title, res) in zip(np.atleast_1d(axes), blocks):
        for name, style in (("oracle_gold", ":"), ("single", "-"), ("mean", "-"), ("min", "--"), ("uwo", "--")):
            ax.plot(res["kl_bon"], res["gold_reward"][name], style, marker="o", ms=3,
                    label="single (seed 0)" if name == "single" and "single_mean_over_members" in res else name)
        if "single_mean_over_members" in res:  # the single curve without one seed's luck
            ax.plot(res["kl_bon"], res["single_mean_over_members"]["gold_reward"], "-", color="tab:orange", alpha=0.35,
                    lw=3, label="single (mean of seeds)")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("KL_bon (nats)")
    np.atleast_1d(axes)[0].set_ylabel("gold reward of the pick")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    setting = "".join([f", {result['planted_flips']:.0%} planted flips" if result.get("planted_flips") else "",
                       f", {result['epochs']:g} epochs" if result["epochs"] != 2 else ""])
    fig.suptitle(f"best-of-n, {result['prompts']} held-out prompts x {result['samples_per_prompt']} samples{setting}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
