"""Best-of-n in the gold-standard lab: does a conservative ensemble reward resist overoptimization?

SmolLM2-135M-Instruct (the policy) samples N responses to each of P held-out hh-rlhf prompts (the lab's
test split: the proxies never trained on them), through llama.cpp's server (``xllamacpp``, seeded per
sample). The gold (``--gold``: SmolLM2's layer 10, the default, or MPNet's, benchmarks/lab/gold_hh*) and the proxies
score every sample: a single MiniLM RM
(a head on the last block) and an ensemble of 5 heads on different blocks and bootstrap resamples, all
trained on the lab's sampled labels of the training split. `rmkit.lab.study_bon` then gives, for every
n, the gold reward of the sample each variant picks (single, mean, min, uwo), against KL_bon.

    .venv/bin/python benchmarks/lab_bon.py [--prompts 100] [--n 128] [--gold smollm2|mpnet] [--draws 10]
        [--flips 0.25] [--draw-offset 10] [--tag _n512]

``--draws``: each smaller training size drawn again and again (other pairs, other head seeds) and the curves pooled
(``repeated_draws``), since one draw of 100 pairs is luck; ``--flips``: planted flips in the proxies' labels (Coste et
al.'s noisy setting); ``--draw-offset``: fresh draws to confirm a pooled finding.

The same samples give the distribution-shift study (`rmkit.lab.study_shift`): half of the prompts' samples are
MetaRM's meta set, the other half's sample pairs are graded against the gold, vanilla proxy against MetaRM.

Writes benchmarks/results/bon<suffix>.json, bon<suffix>_curve.png, shift<suffix>.json (its own files only: no other
script's), and benchmarks/lab/bon_scores<suffix>.parquet (prompt id, sample index, gold and proxy
rewards; no text); the suffix is the gold's (`hh_lab.GOLDS`: "_smollm2", or "" for MPNet). Samples are cached in
runs/lab/bon_samples.jsonl (a rerun resumes), their gold scores and proxy features beside them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd

from rmkit.lab.draws import repeated_draws, train_subset
from rmkit.lab.hh import GOLDS, ROOT, load_hh_lab
from rmkit.bon import (bon_ns, bon_variant_tables, each_member_alone, summarize_bon)
from rmkit.ensemble import EnsembleConfig
from rmkit.files import write_json
from rmkit.gold import load_gold
from rmkit.llamacpp import sample_llamacpp
from rmkit.lab import head_rewards, orient, proxy_features, proxy_heads, study_shift
from rmkit.models import RewardModel
from rmkit.relevance import SentenceEncoder


def measured_seconds(path: Path, key: str = "seconds") -> float | None:
    """A timing recorded when the cached work was done (None if the cache predates the record)."""
    return json.loads(path.read_text()).get(key) if path.exists() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--uwo-lambda", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gold", choices=tuple(GOLDS), default="smollm2",
                        help="the lab's gold: smollm2 (the default) or mpnet (the first; bon.json, shift.json)")
    parser.add_argument("--train-pairs", type=lambda s: s.split(","), default=["all", "1000", "250"],
                        help="proxy training sizes, comma-separated ('all' = the whole training split; the headline)")
    parser.add_argument("--flips", type=float, default=0.0,
                        help="share of the proxies' training labels flipped on top of the sampled ones (Coste et al.: "
                             "0.25); results get a _flips<percent> tag")
    parser.add_argument("--draws", type=int, default=1,
                        help="draw each smaller training size this many times (other pairs, other head seeds) and pool "
                             "the curves: results' repeated_draws")
    parser.add_argument("--draw-offset", type=int, default=0,
                        help="with --draws: start at this draw (a confirmation on fresh draws); results get a "
                             "_draws<first>-<last> tag")
    parser.add_argument("--tag", default="", help="added to the results' names (e.g. _n512 for another n or prompts)")
    parser.add_argument("--gold-precision", choices=("fp32", "bf16"), default=None,
                        help="encode the samples for the gold in this precision (default: the gold's own)")
    parser.add_argument("--sample-only", action="store_true", help="sample (and cache) the responses, then stop")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    parser.add_argument("--parallel", type=int, default=16, help="llama.cpp slots (samples decoded together)")
    args = parser.parse_args()
    work = ROOT / "runs" / "lab"
    work.mkdir(parents=True, exist_ok=True)
    the = GOLDS[args.gold]
    hl = load_hh_lab(seed=args.seed, gold=args.gold)
    pairs, splits = hl.ds.pairs, hl.splits
    train = hl.mask("train")
    # Held-out prompts: single-turn ones of the test split, shortest first is not fair; a seeded order instead.
    test = [p for p in pairs if p.id in set(splits["test"]) and len(p.prompt) == 1 and len(p.prompt[0]["content"]) < 300]
    rng = np.random.default_rng(args.seed)
    picked = [test[i] for i in rng.permutation(len(test))[: args.prompts]]
    pid = [p.id for p in picked]
    t0 = time.time()
    got = sample_llamacpp([list(p.prompt) for p in picked], args.n, max_tokens=args.max_tokens,
                          temperature=args.temperature, out=work / "bon_samples.jsonl", ids=pid, threads=args.threads,
                          parallel=args.parallel)
    # Timings of work found in the cache are those of the run that did it (kept beside the cache), not ~0 s.
    timing = work / "bon_samples.timing.json"
    if got["tokens_per_s"] is not None:
        timing.write_text(json.dumps({"seconds": time.time() - t0, "tokens_per_s": got["tokens_per_s"]}))
    sample_s, sample_tps = measured_seconds(timing), measured_seconds(timing, "tokens_per_s")
    if args.sample_only:
        print(json.dumps({"prompts": len(pid), "n": args.n, "seconds": sample_s, "tokens_per_s": sample_tps}))
        return
    gold_info = json.loads(the.file(".json").read_text())
    # Planted flips on top of the sampled labels (Coste et al. train their proxies on 25% flipped labels): the proxies
    # learn from them; the gold still grades. Such a run's files carry a tag, "_flips25", after the gold's suffix.
    y = hl.labels(args.seed, flips=args.flips)["label"].to_numpy().astype(bool)
    tag = (f"_flips{round(args.flips * 100)}" if args.flips else "") + (
        f"_draws{args.draw_offset}-{args.draw_offset + args.draws - 1}" if args.draw_offset else "") + args.tag

    def out(name: str) -> Path:
        path = the.result(name)
        return path.with_name(path.stem + tag + path.suffix)
    flat_p = [list(p.prompt) for p in picked for _ in range(args.n)]
    flat_r = [[{"role": "assistant", "content": t}] for i in pid for t in got["samples"][i]]
    proxy = proxy_features(EnsembleConfig(precision="fp32"), pairs)
    layers_all = list(range(1, proxy.num_layers + 1))
    # Encoding the samples (the gold's backbone, the proxies' MiniLM) is the cost: each is cached by the samples'
    # text and what encodes them, so another gold reuses the proxies' features.
    texts = [got["samples"][i] for i in pid]

    def cached(what: str, spec, encode) -> tuple[np.ndarray, float | None]:
        key = hashlib.sha256(json.dumps([pid, texts, spec]).encode()).hexdigest()[:16]
        path = work / f"bon_{what}_{key}.npy"
        if not path.exists():
            t = time.time()
            np.save(path, encode())
            path.with_suffix(".json").write_text(json.dumps({"seconds": time.time() - t, "spec": spec}))
        return np.load(path), measured_seconds(path.with_suffix(".json"))

    def gold_scores(info: dict, stem: str):
        """The gold's rewards of every sample ``(P, N)`` and the seconds encoding them took (None: cached earlier).
        A prompt-aware gold (lab_gold_relevance.py) is its base gold's (cached as that gold's) plus its relevance
        term (cached by itself), so neither pass is made twice."""
        block = info.get("prompt_aware")
        if block is None:
            def encode():
                gold_rm = load_gold(ROOT / "benchmarks" / "lab" / f"{stem}_head.npy", info["model"], layer=info["layer"],
                                    max_length=info["max_length"], precision=precision)
                return gold_rm.score(flat_p, flat_r, progress=True).reshape(len(pid), args.n)
            # bf16 is the gold's own (its pair scores were encoded so) but can be far slower than fp32 on a CPU
            # without fast bf16 kernels: --gold-precision fp32 then, keyed apart.
            precision = args.gold_precision or info.get("precision", "fp32")
            spec = {k: info[k] for k in ("model", "layer", "max_length", "head_l2") if k in info} | {"head": stem}
            return cached("gold", spec if precision == info.get("precision", "fp32") else spec | {"precision": precision},
                          encode)
        base_json = ROOT / "benchmarks" / "lab" / block["base"]
        base, base_s = gold_scores(json.loads(base_json.read_text()), base_json.stem)
        rel, rel_s = cached("relevance", block["relevance_model"], lambda: SentenceEncoder(
            block["relevance_model"]).relevance(flat_p, flat_r, progress=True).reshape(len(pid), args.n))
        return base + block["relevance_weight"] * rel, None if None in (base_s, rel_s) else base_s + rel_s

    def proxy_feats():
        rm = RewardModel.from_pretrained("minilm", max_length=128)
        return rm.embed_texts(flat_p, flat_r, layers_all, batch_size=64, progress=True)

    gold, gold_s = gold_scores(gold_info, the.stem)
    feats, feats_s = cached("minilm", layers_all, proxy_feats)
    encode_s = {"gold": gold_s, "proxy": feats_s}
    ns = bon_ns(args.n)

    def scores(heads: dict) -> tuple[np.ndarray, np.ndarray]:
        members = head_rewards(feats, layers_all, heads["ensemble"])
        return (head_rewards(feats, layers_all, heads["single"])[0].reshape(len(pid), args.n),
                members.reshape(len(members), len(pid), args.n))

    # Proxies trained on the lab's labels of the training split: all of it (the headline), and fewer pairs, as
    # Gao et al. found overoptimization grows as the proxy's data shrinks.
    by_size = {}
    args.train_pairs = ["all"] + [k for k in args.train_pairs if k != "all"]
    for size in args.train_pairs:
        sub = train_subset(train, size, seed=args.seed)
        heads = proxy_heads(proxy, y, sub, seed=args.seed)
        single, members = scores(heads)
        tables = bon_variant_tables(gold, single, members, ns, uwo_lambda=args.uwo_lambda)
        by_size[size] = summarize_bon(tables, ns, samples_per_prompt=args.n, uwo_lambda=args.uwo_lambda)
        # Each member alone too: the single RM (a head on the last block) may be weaker than a typical member
        by_size[size].update(each_member_alone(tables, gold, members, ns))
        by_size[size]["proxy_gold_correlation_within_prompt"] = {
            k: float(np.mean([np.corrcoef(v[i], gold[i])[0, 1] for i in range(len(pid))]))
            for k, v in (("single", single), ("mean", members.mean(0)))}
        if size == "all":
            full_heads, single_all, members_all = heads, single, members
    result = dict(by_size["all"])
    if args.draws > 1:  # one draw of a few hundred training pairs is luck; the same sizes drawn again, pooled
        result["repeated_draws"] = {
            size: repeated_draws(lambda sub, s: scores(proxy_heads(proxy, y, sub, seed=s)), gold, train, size, ns,
                                 draws=args.draws, seed=args.seed, uwo_lambda=args.uwo_lambda,
                                 first=args.draw_offset)
            for size in args.train_pairs if size != "all"}
    e_layers, s_layer = full_heads["ensemble"][0], full_heads["single"][0][0]
    # Distribution shift (the paper's Sec. 4): the first half of the prompts' samples are MetaRM's meta set
    # (8 each, no labels), the other half's sample pairs are graded against the gold.
    v = proxy.views.index(s_layer)
    c, r = orient(proxy.fc[:, v], proxy.fr[:, v], y)
    by_prompt = feats[:, layers_all.index(s_layer)].reshape(len(pid), args.n, -1)
    half = len(pid) // 2
    shift = study_shift(c, r, train, by_prompt[:half, :8], by_prompt[half:], gold[half:], seed=args.seed)
    result.update({"policy": "SmolLM2-135M-Instruct (Q4_1 GGUF, llama.cpp)", "temperature": args.temperature,
                   "planted_flips_in_proxy_labels": args.flips,
                   "max_tokens": args.max_tokens, "sampling_seconds": sample_s, "sampling_tokens_per_s": sample_tps,
                   "encoding_seconds": encode_s, "proxies": {"single": f"head on block {s_layer}",
                                                             "ensemble": f"{len(e_layers)} heads on blocks {e_layers}"},
                   "train_pairs": int(train.sum()),
                   "by_train_pairs": {k: {kk: v[kk] for kk in BY_SIZE_KEYS} for k, v in by_size.items()}})
    single, members = single_all, members_all
    rows = pd.DataFrame({"id": [i for i in pid for _ in range(args.n)], "k": list(range(args.n)) * len(pid),
                         "gold": gold.ravel(), "single": single.ravel(),
                         **{f"member_{m}": members[m].ravel() for m in range(len(e_layers))}})
    # A confirmation's draws (--draw-offset) change only the smaller sizes: the headline's scores, curve and shift
    # study are those of the run without the offset, not written again.
    headline = not args.draw_offset
    if headline:
        rows.to_parquet(ROOT / "benchmarks" / "lab" / f"bon_scores{the.suffix}{tag}.parquet", index=False)
    result["gold"] = {"artifacts": f"benchmarks/lab/{the.stem}.*", **gold_info}
    shift["gold"] = result["gold"]
    write_json(out("bon.json"), result, relative_to=ROOT)
    if headline:
        write_json(out("shift.json"), shift, relative_to=ROOT)
    flips = f", {args.flips:.0%} of the proxies' labels flipped" if args.flips else ""
    if headline:
        _figure(result, out("bon.json").with_name(f"bon{the.suffix}{tag}_curve.png"), note=flips)
    if "repeated_draws" in result:  # the pooled curves, drawn as the headline's (one member: the control)
        pooled = {size: {**r["pooled"], "single_mean_over_members": {"gold_reward": r["pooled"]["gold_reward"][
            "one_member"]}} for size, r in result["repeated_draws"].items()}
        _figure({**result, "by_train_pairs": pooled}, out("bon.json").with_name(f"bon{the.suffix}{tag}_draws_curve.png"),
                note=f"{flips},\neach size averaged over {args.draws} draws of its training pairs")
    print(json.dumps({k: v for k, v in result.items() if k != "gold_reward"}, indent=1))


BY_SIZE_KEYS = ("gold_reward", "single_peak_n", "single_drop_from_peak", "drops", "best_conservative",
                "conservative_recovery", "oracle_gain_share", "proxy_gold_correlation_within_prompt",
                "single_each_member", "single_mean_over_members", "vs_single_at_largest_n")


def gold_name(info: dict) -> str:
    """The gold's backbone, and for a prompt-aware gold its relevance term too."""
    block = info.get("prompt_aware")
    if block is None:
        return str(info.get("model"))
    return f"{info.get('base', {}).get('model')} + {block['relevance_weight']:.2f} x {block['relevance_model']} relevance"


def _figure(result: dict, path: Path, note: str = "") -> None:
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


if __name__ == "__main__":
    main()
