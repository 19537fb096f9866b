"""Best-of-n in the gold-standard lab: does a conservative ensemble reward resist overoptimization?

SmolLM2-135M-Instruct (the policy) samples N responses to each of P held-out hh-rlhf prompts (the lab's test split:
the proxies never trained on them), through llama.cpp's server (``xllamacpp``, seeded per sample). The gold
(``--gold``: SmolLM2's layer 10, the default, or MPNet's, benchmarks/lab/gold_hh*) and the proxies score every
sample, and `rmkit.bon` gives, for every n, the gold reward of the sample each variant picks (single, mean, min,
uwo), against KL_bon. ``--proxies`` chooses what the proxies are; everything else (prompts, samples, gold, curves)
is one protocol:

- ``heads`` (the default): a single MiniLM RM (a head on the last block) and an ensemble of 5 heads on different
  blocks and bootstrap resamples, trained on the lab's sampled labels of the training split (all of it, and the
  smaller ``--train-pairs``, as Gao et al. found overoptimization grows as the proxy's data shrinks). The same
  samples give the distribution-shift study (`rmkit.lab.study_shift`): half of the prompts' samples are MetaRM's
  meta set, the other half's sample pairs are graded against the gold, vanilla proxy against MetaRM.
- ``finetuned``: Gao et al.'s and Coste et al.'s proxies, fine-tuned RMs. ``--members`` seeds of `rmkit train`
  (`configs/train_default.yaml`: all of MiniLM, max length 128, two epochs) on the lab's labels of the first k
  training pairs (``--sizes``; `rmkit.lab.hh.training_pool`'s order); member 0 is the single RM, all of them the
  ensemble (z-scored members). The frozen heads on all training pairs are scored on the same samples beside them.

    .venv/bin/python benchmarks/lab_bon.py                                   # heads: 100 prompts, n 64
    .venv/bin/python benchmarks/lab_bon.py --n 128 --draws 10 --flips 0.25   # Coste et al.'s noisy labels, pooled
    .venv/bin/python benchmarks/lab_bon.py --proxies finetuned               # 40 prompts, n 128, 1000/250/100 pairs
    .venv/bin/python benchmarks/lab_bon.py --proxies finetuned --n 512 --sizes 250,100 --tag _n512
    .venv/bin/python benchmarks/lab_bon.py --prompts 20 --n 16 --proxies finetuned --sizes 100 --members 2 \\
        --tag _check                                                         # a 10-minute check of the protocol

``--draws``: each smaller training size drawn again and again (other pairs, other head seeds) and the curves pooled
(``repeated_draws``), since one draw of 100 pairs is luck; ``--flips``: planted flips in the proxies' labels (Coste
et al.'s noisy setting); ``--draw-offset``: fresh draws to confirm a pooled finding.

Writes, under benchmarks/results/ with the gold's suffix (`rmkit.lab.hh.GOLDS`: "_smollm2", or "" for MPNet) and a
tag (planted flips, draws, epochs, ``--tag``): heads: bon<suffix><tag>.json, its _curve.png, shift<suffix><tag>.json
and benchmarks/lab/bon_scores<suffix><tag>.parquet (prompt id, sample index, gold and proxy rewards; no text);
finetuned: bon_finetuned<suffix><tag>.json and its _curve.png. Samples are cached in runs/lab/bon_samples.jsonl (a
rerun resumes, a larger n extends them), the gold's and MiniLM's encodings of them beside it, every fine-tuned
member and its scores under runs/lab/bon_ft<suffix>. Files written before the two proxies shared this script (as
lab_bon_finetuned.py) keep their names: bon_finetuned_n512_flips25.json is this script's _flips25_n512.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rmkit.provenance import write_result
from rmkit.bon import bon_ns, bon_variant_tables, each_member_alone, summarize_bon
from rmkit.config import load_config, to_dict
from rmkit.ensemble import EnsembleConfig
from rmkit.gold import load_gold
from rmkit.hardware import autocast, resolve_precision
from rmkit.lab import gold_accuracy, head_rewards, orient, proxy_features, proxy_heads, study_shift
from rmkit.lab.draws import repeated_draws, train_subset
from rmkit.lab.hh import DATA, GOLDS, ROOT, load_hh_lab, train_proxy, training_pool
from rmkit.llamacpp import sample_llamacpp
from rmkit.models import RewardModel
from rmkit.relevance import SentenceEncoder
from rmkit.scoring import score_pairs
from rmkit.training import TrainConfig

WORK = ROOT / "runs" / "lab"


def picked_prompts(hl, prompts: int, seed: int) -> list:
    """The held-out prompts: single-turn ones of the test split under 300 characters, in a seeded order (shortest
    first would not be fair), the first ``prompts`` of them."""
    test = set(hl.splits["test"])
    cand = [p for p in hl.ds.pairs if p.id in test and len(p.prompt) == 1 and len(p.prompt[0]["content"]) < 300]
    return [cand[i] for i in np.random.default_rng(seed).permutation(len(cand))[:prompts]]


def measured_seconds(path: Path, key: str = "seconds") -> float | None:
    """A timing recorded when the cached work was done (None if the cache predates the record)."""
    return json.loads(path.read_text()).get(key) if path.exists() else None


class Samples:
    """The samples of P prompts x n, flattened for scoring, and encodings of them cached by their text and what
    encodes them (so another gold reuses the proxies' features, and a rerun encodes nothing)."""

    def __init__(self, picked: list, texts: dict[str, list[str]], n: int):
        self.ids, self.n = [p.id for p in picked], n
        self.texts = [texts[i][:n] for i in self.ids]
        self.prompts = [list(p.prompt) for p in picked for _ in range(n)]
        self.responses = [[{"role": "assistant", "content": t}] for ts in self.texts for t in ts]
        self.key = hashlib.sha256(json.dumps([self.ids, self.texts]).encode()).hexdigest()[:12]

    def cached(self, what: str, spec, encode) -> tuple[np.ndarray, float | None]:
        """``encode()``'s array, cached under these samples and ``spec``, and the seconds it took when it ran."""
        key = hashlib.sha256(json.dumps([self.ids, self.texts, spec]).encode()).hexdigest()[:16]
        path = WORK / f"bon_{what}_{key}.npy"
        if not path.exists():
            t = time.time()
            np.save(path, encode())
            path.with_suffix(".json").write_text(json.dumps({"seconds": time.time() - t, "spec": spec}))
        return np.load(path), measured_seconds(path.with_suffix(".json"))

    def gold(self, info: dict, stem: str, precision: str | None = None) -> tuple[np.ndarray, float | None]:
        """The gold's rewards ``(P, n)`` and the seconds encoding them took. A prompt-aware gold
        (lab_gold_relevance.py) is its base gold's (cached as that gold's) plus its relevance term (cached by
        itself), so neither pass is made twice."""
        shape = (len(self.ids), self.n)
        block = info.get("prompt_aware")
        if block is None:
            # bf16 is the gold's own (its pair scores were encoded so) but can be far slower than fp32 on a CPU
            # without fast bf16 kernels: --gold-precision fp32 then, keyed apart.
            own = info.get("precision", "fp32")
            precision = precision or own
            spec = {k: info[k] for k in ("model", "layer", "max_length", "head_l2") if k in info} | {"head": stem}

            def encode():
                gold_rm = load_gold(ROOT / "benchmarks" / "lab" / f"{stem}_head.npy", info["model"],
                                    layer=info["layer"], max_length=info["max_length"], precision=precision)
                return gold_rm.score(self.prompts, self.responses, progress=True).reshape(shape)
            return self.cached("gold", spec if precision == own else spec | {"precision": precision}, encode)
        base_json = ROOT / "benchmarks" / "lab" / block["base"]
        base, base_s = self.gold(json.loads(base_json.read_text()), base_json.stem, precision)
        rel, rel_s = self.cached("relevance", block["relevance_model"], lambda: SentenceEncoder(
            block["relevance_model"]).relevance(self.prompts, self.responses, progress=True).reshape(shape))
        return base + block["relevance_weight"] * rel, None if None in (base_s, rel_s) else base_s + rel_s

    def minilm(self, layers: list[int]) -> tuple[np.ndarray, float | None]:
        """MiniLM's features of every sample at ``layers``: what the frozen heads read."""
        def encode():
            rm = RewardModel.from_pretrained("minilm", max_length=128)
            return rm.embed_texts(self.prompts, self.responses, layers, batch_size=64, progress=True)
        return self.cached("minilm", layers, encode)


def within_prompt_correlation(proxy: np.ndarray, gold: np.ndarray) -> float:
    """Mean over prompts of the proxy's correlation with the gold across that prompt's samples (``(P, n)`` each)."""
    return float(np.mean([np.corrcoef(proxy[i], gold[i])[0, 1] for i in range(len(gold))]))


def bon_block(gold: np.ndarray, single: np.ndarray, members: np.ndarray, ns: list[int], args) -> dict:
    """The best-of-n curves of the variants, each member alone (the control that tells an ensemble's gain from one
    member's luck), and how well single and mean follow the gold within a prompt."""
    tables = bon_variant_tables(gold, single, members, ns, uwo_lambda=args.uwo_lambda)
    res = summarize_bon(tables, ns, samples_per_prompt=args.n, uwo_lambda=args.uwo_lambda, seed=args.seed)
    res.update(each_member_alone(tables, gold, members, ns, seed=args.seed))
    z = (members - members.mean((1, 2), keepdims=True)) / members.std((1, 2), keepdims=True)
    res["proxy_gold_correlation_within_prompt"] = {"single": within_prompt_correlation(single, gold),
                                                   "mean": within_prompt_correlation(z.mean(0), gold)}
    return res


def heads(args, hl, samples: Samples, gold: np.ndarray, ns: list[int]) -> tuple[dict, dict, pd.DataFrame]:
    """Frozen-head proxies at every ``--train-pairs`` size: the result, the shift study and the scores table."""
    y = hl.labels(args.seed, flips=args.flips)["label"].to_numpy().astype(bool)
    train = hl.mask("train")
    proxy = proxy_features(EnsembleConfig(precision="fp32"), hl.ds.pairs)
    layers = list(range(1, proxy.num_layers + 1))
    feats, feats_s = samples.minilm(layers)
    P, n = gold.shape

    def scores(fitted: dict) -> tuple[np.ndarray, np.ndarray]:
        members = head_rewards(feats, layers, fitted["ensemble"])
        return (head_rewards(feats, layers, fitted["single"])[0].reshape(P, n), members.reshape(len(members), P, n))

    by_size = {}
    for size in ["all"] + [k for k in args.train_pairs if k != "all"]:
        fitted = proxy_heads(proxy, y, train_subset(train, size, seed=args.seed), seed=args.seed)
        single, members = scores(fitted)
        by_size[size] = bon_block(gold, single, members, ns, args)
        if size == "all":
            full, single_all, members_all = fitted, single, members
    result = dict(by_size["all"])
    if args.draws > 1:  # one draw of a few hundred training pairs is luck; the same sizes drawn again, pooled
        result["repeated_draws"] = {
            size: repeated_draws(lambda sub, s: scores(proxy_heads(proxy, y, sub, seed=s)), gold, train, size, ns,
                                 draws=args.draws, seed=args.seed, uwo_lambda=args.uwo_lambda,
                                 first=args.draw_offset)
            for size in by_size if size != "all"}
    e_layers, s_layer = full["ensemble"][0], full["single"][0][0]
    # Distribution shift (the paper's Sec. 4): the first half of the prompts' samples are MetaRM's meta set
    # (8 each, no labels), the other half's sample pairs are graded against the gold.
    v = proxy.views.index(s_layer)
    c, r = orient(proxy.fc[:, v], proxy.fr[:, v], y)
    by_prompt = feats[:, layers.index(s_layer)].reshape(P, n, -1)
    half = P // 2
    shift = study_shift(c, r, train, by_prompt[:half, :8], by_prompt[half:], gold[half:], seed=args.seed)
    result.update({"proxies": {"single": f"head on block {s_layer}",
                               "ensemble": f"{len(e_layers)} heads on blocks {e_layers}"},
                   "proxy_encoding_seconds": feats_s, "train_pairs": int(train.sum()),
                   "by_train_pairs": {k: {kk: v[kk] for kk in BY_SIZE_KEYS} for k, v in by_size.items()}})
    rows = pd.DataFrame({"id": [i for i in samples.ids for _ in range(n)], "k": list(range(n)) * P,
                         "gold": gold.ravel(), "single": single_all.ravel(),
                         **{f"member_{m}": members_all[m].ravel() for m in range(len(e_layers))}})
    return result, shift, rows


def finetuned(args, hl, samples: Samples, gold: np.ndarray, ns: list[int], frozen: dict) -> dict:
    """Fine-tuned proxies, ``--members`` seeds at every ``--sizes``; each member trained, and its scores kept, under
    runs/lab/bon_ft<suffix> so a killed run resumes."""
    the = GOLDS[args.gold]
    work = WORK / f"bon_ft{the.suffix}"
    work.mkdir(parents=True, exist_ok=True)
    pool, flipped = training_pool(hl, args.seed, args.flips)
    test_idx = np.flatnonzero(hl.mask("test"))[: args.grade_pairs]
    grade_pairs = [hl.ds.pairs[k] for k in test_idx]  # source sides, graded against the gold's sign
    base = load_config(TrainConfig, ROOT / "configs" / "train_default.yaml")
    epochs = base.epochs if args.epochs is None else args.epochs
    device = torch.device("cpu")
    precision = resolve_precision(args.precision, device)
    P, n = gold.shape
    out = {}
    for size in args.sizes:
        rewards, accuracy, seconds = [], [], []
        for m in range(args.members):
            run = work / (f"k{size}_seed{m}" + (f"_flips{args.flips:g}" if args.flips else "")
                          + (f"_epochs{epochs:g}" if epochs != base.epochs else ""))
            t0 = time.time()
            model = train_proxy(run, pool[:size], m, epochs)
            seconds.append(json.loads((run / "results.json").read_text()).get("train_seconds", time.time() - t0))
            cache = run / f"scores_{samples.key}_{precision}.npz"
            if not cache.exists():
                with autocast(device, precision):
                    r = model.score(samples.prompts, samples.responses, batch_size=64).numpy().reshape(P, n)
                diff = score_pairs(model, grade_pairs, batch_size=64, precision=precision)["diff"].to_numpy()
                np.savez(cache, rewards=r, accuracy=gold_accuracy(diff, hl.gold[test_idx]))
            with np.load(cache) as z:
                rewards.append(z["rewards"])
                accuracy.append(float(z["accuracy"]))
            print(f"k={size} seed={m}: accuracy vs gold {accuracy[-1]:.3f}", flush=True)
        members = np.stack(rewards)
        res = bon_block(gold, members[0], members, ns, args)  # member 0 is the single RM
        res["proxy_gold_accuracy"] = {"members": accuracy, "mean": float(np.mean(accuracy))}
        res["train_seconds_per_member"] = float(np.mean(seconds))
        res["planted_flips_in_training_pairs"] = float(np.mean(flipped[:size]))
        out[str(size)] = res
    return {"members": args.members, "epochs": epochs, "scoring_precision": precision,
            "grade_pairs": len(grade_pairs), "finetuned": out,
            # The frozen heads of the same run (all training pairs, the same labels), on the same samples.
            "frozen_heads_all_pairs_same_prompts": {k: v for k, v in frozen.items() if k in FROZEN_KEYS},
            "train_config": to_dict(replace(base, data=str(DATA), epochs=epochs))}


BY_SIZE_KEYS = ("gold_reward", "single_peak_n", "single_drop_from_peak", "drops", "best_conservative",
                "conservative_recovery", "oracle_gain_share", "proxy_gold_correlation_within_prompt",
                "single_each_member", "single_mean_over_members", "vs_single_at_largest_n")
FROZEN_KEYS = ("n", "kl_bon", "gold_reward", "drops", "conservative_recovery", "proxy_gold_correlation_within_prompt",
               "single_mean_over_members", "proxies")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proxies", choices=("heads", "finetuned"), default="heads",
                        help="frozen MiniLM heads (an ensemble over blocks) or fine-tuned RMs (an ensemble over seeds)")
    parser.add_argument("--prompts", type=int, default=None, help="held-out prompts (default: heads 100, finetuned 40)")
    parser.add_argument("--n", type=int, default=None, help="samples per prompt (default: heads 64, finetuned 128)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--uwo-lambda", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gold", choices=tuple(GOLDS), default="smollm2",
                        help="the lab's gold: smollm2 (the default) or mpnet (the first; bon.json, shift.json)")
    parser.add_argument("--flips", type=float, default=0.0,
                        help="share of the proxies' training labels flipped on top of the sampled ones (Coste et al.: "
                             "0.25); results get a _flips<percent> tag")
    parser.add_argument("--tag", default="", help="added to the results' names (e.g. _n512 for another n or prompts)")
    parser.add_argument("--gold-precision", choices=("fp32", "bf16"), default=None,
                        help="encode the samples for the gold in this precision (default: the gold's own)")
    parser.add_argument("--sample-only", action="store_true", help="sample (and cache) the responses, then stop")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    parser.add_argument("--parallel", type=int, default=16, help="llama.cpp slots (samples decoded together)")
    heads_args = parser.add_argument_group("heads")
    heads_args.add_argument("--train-pairs", type=lambda s: s.split(","), default=["all", "1000", "250"],
                            help="proxy training sizes, comma-separated ('all' = the whole training split; the "
                                 "headline)")
    heads_args.add_argument("--draws", type=int, default=1,
                            help="draw each smaller training size this many times (other pairs, other head seeds) "
                                 "and pool the curves: results' repeated_draws")
    heads_args.add_argument("--draw-offset", type=int, default=0,
                            help="with --draws: start at this draw (a confirmation on fresh draws); results get a "
                                 "_draws<first>-<last> tag")
    tuned = parser.add_argument_group("finetuned")
    tuned.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 250, 100],
                       help="training pairs of each fine-tuned proxy, comma-separated")
    tuned.add_argument("--members", type=int, default=4, help="fine-tuned RMs (seeds) per size")
    tuned.add_argument("--epochs", type=float, default=None, help="default: configs/train_default.yaml's (2)")
    tuned.add_argument("--grade-pairs", type=int, default=500, help="test pairs each member is graded on")
    tuned.add_argument("--precision", default="auto", help="of the members' scoring (training stays fp32)")
    args = parser.parse_args()
    is_heads = args.proxies == "heads"
    args.prompts = args.prompts or (100 if is_heads else 40)
    args.n = args.n or (64 if is_heads else 128)
    WORK.mkdir(parents=True, exist_ok=True)
    the = GOLDS[args.gold]
    hl = load_hh_lab(seed=args.seed, gold=args.gold)
    picked = picked_prompts(hl, args.prompts, args.seed)
    t0 = time.time()
    got = sample_llamacpp([list(p.prompt) for p in picked], args.n, max_tokens=args.max_tokens,
                          temperature=args.temperature, out=WORK / "bon_samples.jsonl", ids=[p.id for p in picked],
                          threads=args.threads, parallel=args.parallel)
    # Timings of work found in the cache are those of the run that did it (kept beside the cache), not ~0 s.
    timing = WORK / "bon_samples.timing.json"
    if got["tokens_per_s"] is not None:
        timing.write_text(json.dumps({"seconds": time.time() - t0, "tokens_per_s": got["tokens_per_s"]}))
    sample_s, sample_tps = measured_seconds(timing), measured_seconds(timing, "tokens_per_s")
    if args.sample_only:
        print(json.dumps({"prompts": len(picked), "n": args.n, "seconds": sample_s, "tokens_per_s": sample_tps}))
        return
    samples = Samples(picked, got["samples"], args.n)
    gold_info = json.loads(the.file(".json").read_text())
    gold, gold_s = samples.gold(gold_info, the.stem, args.gold_precision)
    ns = bon_ns(args.n)
    epochs_tag = f"_epochs{args.epochs:g}" if not is_heads and args.epochs is not None else ""
    tag = (f"_flips{round(args.flips * 100)}" if args.flips else "") + (
        f"_draws{args.draw_offset}-{args.draw_offset + args.draws - 1}" if args.draw_offset else "") + epochs_tag + args.tag

    def out(name: str) -> Path:
        path = the.result(name)
        return path.with_name(path.stem + tag + path.suffix)
    # The frozen heads run in both: the result itself, or the fine-tuned proxies' comparison on the same samples.
    result, shift, rows = heads(args if is_heads else argparse.Namespace(**{**vars(args), "train_pairs": ["all"],
                                                                            "draws": 1}), hl, samples, gold, ns)
    common = {"policy": "SmolLM2-135M-Instruct (Q4_1 GGUF, llama.cpp)", "temperature": args.temperature,
              "max_tokens": args.max_tokens, "prompts": len(picked), "samples_per_prompt": args.n,
              "planted_flips_in_proxy_labels": args.flips, "sampling_seconds": sample_s,
              "sampling_tokens_per_s": sample_tps, "gold_encoding_seconds": gold_s,
              "gold": {"artifacts": f"benchmarks/lab/{the.stem}.*", **gold_info}}
    if not is_heads:
        tuned_result = {"what": "best-of-n gold reward of the sample each proxy picks, exact expectation over draws "
                                "from the samples; proxies fine-tuned with rmkit train on the lab's labels",
                        **common, **finetuned(args, hl, samples, gold, ns, result)}
        write_result(out("bon_finetuned.json"), tuned_result, relative_to=ROOT)
        figure_finetuned(tuned_result, out("bon_finetuned.json").with_name(out("bon_finetuned.json").stem
                                                                             + "_curve.png"))
        print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk in ("drops", "conservative_recovery",
                                                                       "proxy_gold_accuracy")}
                          for k, v in tuned_result["finetuned"].items()}, indent=1))
        return
    result.update(common)
    shift["gold"] = result["gold"]
    write_result(out("bon.json"), result, relative_to=ROOT)
    flips = f", {args.flips:.0%} of the proxies' labels flipped" if args.flips else ""
    # A confirmation's draws (--draw-offset) change only the smaller sizes: the headline's scores, curve and shift
    # study are those of the run without the offset, not written again.
    if not args.draw_offset:
        rows.to_parquet(ROOT / "benchmarks" / "lab" / f"bon_scores{the.suffix}{tag}.parquet", index=False)
        write_result(out("shift.json"), shift, relative_to=ROOT)
        figure_heads(result, out("bon.json").with_name(f"bon{the.suffix}{tag}_curve.png"), note=flips)
    if "repeated_draws" in result:  # the pooled curves, drawn as the headline's (one member: the control)
        pooled = {size: {**r["pooled"], "single_mean_over_members": {"gold_reward": r["pooled"]["gold_reward"][
            "one_member"]}} for size, r in result["repeated_draws"].items()}
        figure_heads({**result, "by_train_pairs": pooled}, out("bon.json").with_name(
            f"bon{the.suffix}{tag}_draws_curve.png"),
            note=f"{flips},\neach size averaged over {args.draws} draws of its training pairs")
    print(json.dumps({k: v for k, v in result.items() if k not in ("gold_reward", "gold")}, indent=1))


def gold_name(info: dict) -> str:
    """The gold's backbone, and for a prompt-aware gold its relevance term too."""
    block = info.get("prompt_aware")
    if block is None:
        return str(info.get("model"))
    return f"{info.get('base', {}).get('model')} + {block['relevance_weight']:.2f} x {block['relevance_model']} relevance"


def figure_heads(result: dict, path: Path, note: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(result["by_train_pairs"])
    cols = min(3, len(sizes))
    rows = -(-len(sizes) // cols)
    # One y scale for every panel: the proxy sizes are compared by height, against the same oracle curve.
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.6 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(sizes):]:
        ax.set_visible(False)
    for ax, size in zip(axes.flat, sizes):
        block = result["by_train_pairs"][size]
        curves = block["gold_reward"]
        for name, style in (("single", "o-"), ("mean", "s-"), ("min", "^-"), ("uwo", "v-"), ("oracle_gold", "k--")):
            ax.plot(result["kl_bon"], curves[name], style, label="single (last block)" if name == "single" else name,
                    ms=4)
        if "single_mean_over_members" in block:  # the control: one of the ensemble's members alone
            ax.plot(result["kl_bon"], block["single_mean_over_members"]["gold_reward"], "-", color="tab:gray", lw=3,
                    alpha=0.45, label="one member (average)")
        n_train = result["train_pairs"] if size == "all" else int(size)
        ax.set(xlabel="KL_bon = log n - (n-1)/n (nats)", title=f"proxies trained on {n_train} pairs")
    for row in axes:
        row[0].set_ylabel("gold reward of the pick")
    axes[0][0].legend(fontsize=8)
    title = (f"Best-of-n in the lab (gold: {gold_name(result['gold'])}): {result['prompts']} held-out prompts, "
             f"n up to {result['n'][-1]}{note}")
    # Wrapped to the figure's width: a one-panel figure cut a long title at both edges.
    fig.suptitle("\n".join(textwrap.fill(line, width=int(cols * 4.4 * 11)) for line in title.split("\n")))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)



def figure_finetuned(result: dict, path: Path) -> None:
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
    flips = result.get("planted_flips_in_proxy_labels")
    setting = "".join([f", {flips:.0%} planted flips" if flips else "",
                       f", {result['epochs']:g} epochs" if result["epochs"] != 2 else ""])
    fig.suptitle(f"best-of-n, {result['prompts']} held-out prompts x {result['samples_per_prompt']} samples{setting}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)



if __name__ == "__main__":
    main()
