"""PPO against a weak proxy, graded by the lab's gold: Gao et al.'s RL overoptimization and Coste et al.'s remedy.

Best-of-n reached KL 5.2 nats (n = 512) on these 2 cores without any proxy's gold reward turning down
(`lab_bon.py`, `lab_bon_finetuned.py`). RL moves the policy further for the same compute. This runs `rmkit ppo`
(`rmkit.rl.train_ppo`, configs/ppo_cpu.yaml's settings) with SmolLM2-135M-Instruct as the policy on held-out
prompts of the lab's test split, once per reward:

- ``single``: one fine-tuned proxy (lab_bon_finetuned.py's seed 0 on the lab's labels of 250 training pairs);
- ``uwo`` / ``mean`` / ``min``: the 4 seeds of that proxy as one ensemble reward (z-scored members; uwo is
  mean - lambda var with Coste et al.'s PPO lambda 0.1).

The proxies are trained first where runs/lab lacks them (lab_bon_finetuned.py's `train_proxy`, 76 s each).
Every run has the same seed, prompts, evaluation prompts and sampling seeds; the gold (``PPOConfig.gold``) scores
the held-out evaluation samples only, every ``--eval-every`` steps, and never the rollouts. No KL penalty by
default (``--kl-coef``), Gao et al.'s setting for measuring gold against KL.

    .venv/bin/python benchmarks/lab_ppo.py --variants single,uwo             # ~25 min per variant on 2 cores (22 s a step)

Under the prompt-aware gold (results/lab_ppo_smollm2_relevant.json; proxies trained on its labels, ~90 min per run
with two runs sharing the cores; the result adds ``relevance_split``: each run's gold gain split into the relevance
term and the prompt-blind base, so a drop can be read as the policy leaving the question or not):

    .venv/bin/python benchmarks/lab_ppo.py --variants single,uwo --actor-lr 3e-5 --steps 100 --eval-every 10 \
        --gold smollm2_relevant --tag _lr3e-5 --result benchmarks/results/lab_ppo_smollm2_relevant.json

Writes benchmarks/results/lab_ppo.json (--result) and its _curve.png; every run lives under runs/lab/ppo_<variant>
and resumes where it stopped (`rmkit ppo`'s checkpoints).
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np

from rmkit.lab.hh import GOLDS, ROOT, load_hh_lab, prompt_file, train_proxy, training_pool
from rmkit.bon import recovery_share
from rmkit.config import load_config, to_dict
from rmkit.files import read_appended_jsonl, write_json
from rmkit.rl import PPOConfig, paired_gain, train_ppo


def curve(run: Path) -> dict[str, list]:
    """Step, KL, proxy score and gold of every held-out evaluation of a run, and per prompt the gold (for paired
    intervals)."""
    evals = [r for r in read_appended_jsonl(run / "metrics.jsonl") if "eval/gold" in r]
    per = {r["step"]: r["gold"] for r in read_appended_jsonl(run / "eval_scores.jsonl")}
    return {"step": [r["step"] for r in evals], "kl": [r["eval/kl"] for r in evals],
            "proxy": [r["eval/score"] for r in evals], "gold": [r["eval/gold"] for r in evals],
            "length": [r["eval/response_length"] for r in evals], "gold_per_prompt": [per[r["step"]] for r in evals]}


def recovery(summaries: dict, curves: dict) -> dict[str, float]:
    """Per conservative run, the share of the single run's drop from its gold peak that it recovers at the end (the
    issue's ``conservative_recovery``, as `rmkit.bon.summarize_bon` defines it for best-of-n): NaN unless the single
    run's drop is established (its interval over prompts above 0), since a ratio over noise means nothing."""
    single = summaries.get("single", {})
    drop, ci = single.get("gold_drop") or 0.0, single.get("gold_drop_ci95")
    established = ci is not None and ci[0] > 0
    return {v: recovery_share(drop, established, single.get("gold_end", float("nan")), summaries[v]["gold_end"])
            for v in curves if v != "single"}


def relevance_split(gold: dict, runs: dict[str, Path], curves: dict, prompts: Path) -> dict:
    """For a prompt-aware gold (base + beta * relevance): each run's gold gain from the start to its peak and to its
    end, split into the relevance term and the prompt-blind base, paired over the held-out prompts; and at the end
    each conservative run against the single one. Says whether a drop is the policy leaving the question."""
    from rmkit.relevance import SentenceEncoder

    beta = gold["prompt_aware"]["relevance_weight"]
    enc = functools.cache(lambda: SentenceEncoder(gold["prompt_aware"]["relevance_model"]))
    prompt = {r["id"]: r["prompt"] for r in map(json.loads, prompts.read_text().splitlines())}

    def parts(row: dict) -> tuple[np.ndarray, np.ndarray]:  # (relevance, base) per prompt at one evaluation
        if "gold_relevance" in row:  # evaluate_policy logs it; runs logged before it did are encoded here
            rel = np.asarray(row["gold_relevance"])
        else:
            rel = enc().relevance([prompt[i] for i in row["ids"]], [[{"role": "assistant", "content": t}]
                                                                   for t in row["response"]])
        return rel, np.asarray(row["gold"]) - beta * rel

    def gain(a, b) -> dict:
        return {name: dict(zip(("mean", "ci95"), paired_gain(x, y))) for name, x, y in
                (("relevance", a[0], b[0]), ("base", a[1], b[1]))}

    out, ends = {}, {}
    for v, run in runs.items():
        rows = {r["step"]: r for r in read_appended_jsonl(run / "eval_scores.jsonl")}
        peak = curves[v]["step"][int(np.argmax(curves[v]["gold"]))]
        start, at_peak, ends[v] = parts(rows[0]), parts(rows[peak]), parts(rows[max(rows)])
        out[v] = {"peak_step": peak, "start_to_peak": gain(start, at_peak), "start_to_end": gain(start, ends[v]),
                  "relevance_start": float(start[0].mean()), "relevance_end": float(ends[v][0].mean())}
    if "single" in ends:
        out["vs_single_at_end"] = {v: gain(ends["single"], e) for v, e in ends.items() if v != "single"}
    return {"relevance_weight": beta, **out}


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_g, ax_p) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, c in result["curves"].items():
        ax_g.plot(c["kl"], c["gold"], marker="o", label=name)
        ax_p.plot(c["kl"], np.asarray(c["proxy"]) - c["proxy"][0], marker="o", label=name)
    ax_g.set(xlabel="KL to the start policy (nats per response, held-out prompts)", ylabel="gold reward (mean)",
             title="What the gold sees")
    # The single RM's raw score and the ensemble's z-scored aggregate have different units: compare shapes only.
    ax_p.set(xlabel="KL to the start policy (nats per response)", ylabel="reward PPO optimises, minus its start",
             title="What the optimised reward sees (each in its own units)")
    for ax in (ax_g, ax_p):
        ax.grid(alpha=0.3)
        ax.legend()
    noisy = f", {result['planted_flips']:.0%} flipped" if result.get("planted_flips") else ""
    gold = f" {result['gold_name']}" if result.get("gold_name") else ""
    fig.suptitle(f"PPO against fine-tuned proxies ({result.get('proxy_pairs', 250)} lab pairs{noisy}), graded by the "
                 f"gold{gold}: {result['eval_prompts']} held-out prompts, lr {result['ppo']['actor_lr']:g}, "
                 f"KL coef {result['ppo']['kl_coef']:g}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", type=lambda s: s.split(","), default=["single", "uwo"],
                        help="single, mean, min, uwo (comma-separated), run in this order")
    parser.add_argument("--size", default="250", help="the proxies' training pairs (lab_bon_finetuned.py's k)")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--flips", type=float, default=0.0,
                        help="planted flips on the proxies' training labels (lab_bon_finetuned.py's; Coste et al.'s "
                             "noisy setting is 0.25)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--actor-lr", type=float, default=1e-5)
    parser.add_argument("--kl-coef", type=float, default=0.0)
    parser.add_argument("--batch-size", type=int, default=2, help="prompts per rollout")
    parser.add_argument("--samples-per-prompt", type=int, default=4,
                        help="responses per rollout prompt, with RLOO's leave-one-out baseline (PPOConfig)")
    parser.add_argument("--uwo-lambda", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gold", choices=tuple(GOLDS), default="smollm2")
    parser.add_argument("--tag", default="", help="added to the runs' folder names (other settings, smoke tests)")
    parser.add_argument("--result", type=Path, default=ROOT / "benchmarks" / "results" / "lab_ppo.json")
    parser.add_argument("--plot-only", action="store_true", help="redraw the figure from --result and stop")
    args = parser.parse_args()
    if args.plot_only:
        figure(json.loads(args.result.read_text()), args.result.with_name(args.result.stem + "_curve.png"))
        return
    the = GOLDS[args.gold]
    work = ROOT / "runs" / "lab"
    noisy = f"_flips{args.flips:g}" if args.flips else ""  # lab_bon_finetuned.py's folder names
    members = [work / f"bon_ft{the.suffix}" / f"k{args.size}_seed{s}{noisy}" / "model" for s in range(args.members)]
    hl = load_hh_lab(seed=args.seed, gold=args.gold)
    pool = training_pool(hl, args.seed, args.flips)[0][: int(args.size)]
    for m, path in enumerate(members):  # lab_bon_finetuned.py's proxies, trained here where runs/lab lacks them
        if not (path / "config.json").exists():
            train_proxy(path.parent, pool, m)
    prompts = work / "ppo_prompts.jsonl"
    n_prompts = prompt_file(hl, prompts)

    base = to_dict(load_config(PPOConfig, ROOT / "configs" / "ppo_cpu.yaml"))
    base.update(data=str(prompts), steps=args.steps, eval_every=args.eval_every, actor_lr=args.actor_lr,
                kl_coef=args.kl_coef, gold=str(the.file(".json")), seed=args.seed, batch_size=args.batch_size,
                samples_per_prompt=args.samples_per_prompt)
    curves, summaries = {}, {}
    for v in args.variants:
        cfg = PPOConfig(**{**base, "output_dir": str(work / f"ppo_{v}{the.suffix}{noisy}{args.tag}"),
                           "reward_model": str(members[0]) if v == "single" else ",".join(map(str, members)),
                           "aggregation": None if v == "single" else v,
                           "uwo_lambda": args.uwo_lambda if v == "uwo" else None})
        summaries[v] = train_ppo(cfg)
        curves[v] = curve(Path(cfg.output_dir))
        print(json.dumps({v: {k: summaries[v].get(k) for k in ("gold_start", "gold_peak", "gold_peak_kl", "gold_end",
                                                               "gold_drop", "gold_drop_ci95", "kl_end")}}))

    result = {"gold_name": args.gold, "gold": json.loads(the.file(".json").read_text()),
              "proxies": [str(m.relative_to(ROOT)) for m in members],
              "proxy_pairs": int(args.size), "planted_flips": args.flips, "prompts_available": n_prompts,
              "eval_prompts": base["eval_prompts"],
              "ppo": {k: base[k] for k in ("steps", "batch_size", "samples_per_prompt", "minibatch_size", "ppo_epochs",
                                           "actor_lr", "critic_lr", "kl_coef", "reward_clip", "max_new_tokens",
                                           "eval_every")},
              "uwo_lambda": args.uwo_lambda, "summaries": summaries, "curves": curves}
    # Each conservative run against the single one at the single run's last evaluation, paired by prompt (the same
    # held-out prompts and sampling seeds in every run).
    if "single" in curves:
        end = curves["single"]["gold_per_prompt"][-1]
        result["vs_single_at_end"] = {v: dict(zip(("mean", "ci95"), paired_gain(end, c["gold_per_prompt"][-1])))
                                      for v, c in curves.items()
                                      if v != "single" and c["step"][-1] == curves["single"]["step"][-1]}
        result["conservative_recovery"] = recovery(summaries, curves)
    if "prompt_aware" in result["gold"]:
        result["relevance_split"] = relevance_split(result["gold"], {v: work / f"ppo_{v}{the.suffix}{noisy}{args.tag}"
                                                                     for v in curves}, curves, prompts)
    args.result.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.result, result, relative_to=ROOT)
    figure(result, args.result.with_name(args.result.stem + "_curve.png"))
    print(json.dumps({k: result[k] for k in ("vs_single_at_end", "relevance_split") if k in result}))


if __name__ == "__main__":
    main()
