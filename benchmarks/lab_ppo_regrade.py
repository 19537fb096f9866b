"""PPO policies regraded on fresh prompts: the single proxy's drop from its gold peak without the peak's selection bias.

`lab_ppo.py` grades each run on 32 held-out prompts every 10 steps, one response each, and names the peak as the
best of those 11 evaluations: the same noisy numbers pick the peak and measure the drop from it, so the drop is
biased upward and its interval wide (single under the prompt-aware gold: 0.105, -0.008..0.216, not established).
This grades the policies again on prompts none of those evaluations used:

- the policy of a run at a given step: the run's own ``policy/`` at its end; at an earlier step (the single run's
  peak), the run replayed from scratch to that step (`policy_at`: same config and seed; `rmkit ppo` is seeded), and
  the replay is accepted only if its evaluations reproduce the original's at every step both have;
- ``--prompts`` fresh prompts: single-turn prompts (under 300 characters, lab_bon.py's rule) of hh-rlhf's lab
  *train* split whose pairs the proxies did not train on (the test split's prompts are all PPO's: its 501 rollout
  and 32 evaluation prompts), drawn with a fixed seed;
- ``--samples`` responses per prompt from each policy with `rmkit bon` (`rmkit.bon.run_bon`: seeded per prompt,
  resumable; the proxies' ensemble as its reward so the proxies' view is kept, the gold grading every sample), then
  per prompt the mean gold (the expected gold reward of one response) and, for a prompt-aware gold, its two parts.

The result: each policy's gold with a 95% interval; paired over prompts, the single run's peak-to-end drop and each
ensemble run's end against the single run's end; ``recovery``, the share of that drop each ensemble run recovers
(`rmkit.bon.recovery_share`, the issue's ``conservative_recovery``), where the drop is established; the proxies'
mean z-scored reward of the same samples (what each policy was pushed up).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lab_ppo_regrade.py --gold smollm2_relevant --tag _lr3e-5 \\
        --policies base,single@20,single@60,single,uwo,mean --result benchmarks/results/lab_ppo_regrade_smollm2_relevant.json

One thread, as the PPO runs had, so a replay reproduces them bit for bit (another thread count changes the last
bits, the runs then diverge, and the replay is refused). Cost on these cores: a replay ~70 s a step with another
job on the second core; a policy's 512 samples ~17 min, their gold and proxy scores ~3 min; all cached under
runs/lab/regrade<suffix><tag>/, so a rerun with one more policy samples only that one. Writes --result and its .png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from rmkit.lab.hh import GOLDS, ROOT, load_hh_lab, prompt_file, training_pool
from rmkit.bon import BonConfig, recovery_share, run_bon
from rmkit.config import load_config
from rmkit.files import read_appended_jsonl, write_json
from rmkit.gold import prompt_aware_file
from rmkit.intervals import mean_interval, resample_rows
from rmkit.relevance import SentenceEncoder
from rmkit.rl import PPOConfig, paired_gain, train_ppo


def policy_at(run: Path, step: int) -> Path:
    """The policy of ``run`` after ``step`` steps: ``run/policy`` when the run ended there, else the run replayed
    from scratch to ``step`` in ``<run>_step<step>`` (its config with steps = ``step``). The replay must reproduce
    the original's held-out evaluations (scores and gold per prompt) exactly at every step both have, else ValueError: a
    policy that merely resembles the one graded would make the regrade's peak a different policy."""
    cfg = load_config(PPOConfig, run / "config.yaml")
    if step == cfg.steps:
        return run / "policy"
    if not 0 < step < cfg.steps:
        raise ValueError(f"{run}: step {step} is outside the run's 1..{cfg.steps}")
    replay = run.with_name(f"{run.name}_step{step}")
    if not (replay / "policy" / "config.json").exists():
        cfg.steps, cfg.output_dir, cfg.save_every = step, str(replay), step
        train_ppo(cfg)
    original = {r["step"]: r for r in read_appended_jsonl(run / "eval_scores.jsonl")}
    for r in read_appended_jsonl(replay / "eval_scores.jsonl"):
        o = original.get(r["step"])
        if o is None:
            continue
        for key in ("score", "gold"):
            if not np.array_equal(r[key], o[key]):  # bit for bit: a near match would already be another policy
                raise ValueError(f"{replay}: the replay's evaluation at step {r['step']} differs from {run}'s "
                                 f"({key}: {np.mean(r[key]):.4f} vs {np.mean(o[key]):.4f}): not the same policy")
    if (replay / "checkpoint").exists():  # the policy is all the regrade needs; the optimizer state is 0.5 GB
        shutil.rmtree(replay / "checkpoint")
    return replay / "policy"


def fresh_prompts(hl, proxy_pairs: int, count: int, ppo_prompts: Path, path: Path, *, seed: int = 0) -> list[str]:
    """``count`` single-turn prompts (under 300 characters) of the lab's train split, none of them a pair the proxies
    trained on (the first ``proxy_pairs`` of `training_pool`) nor a prompt text of ``ppo_prompts`` (PPO's, the test
    split's), each text once, drawn with ``seed``; written to ``path`` as JSONL (id, prompt). Returns the ids."""
    trained = {p.id for p in training_pool(hl, seed, 0.0)[0][:proxy_pairs]}
    used = {json.dumps(json.loads(line)["prompt"]) for line in ppo_prompts.open()}
    train, rows, seen = set(hl.splits["train"]), [], set()
    for p in hl.ds.pairs:
        text = json.dumps(list(p.prompt))
        if (p.id in train and p.id not in trained and len(p.prompt) == 1 and len(p.prompt[0]["content"]) < 300
                and text not in used and text not in seen):
            seen.add(text)
            rows.append({"id": p.id, "prompt": list(p.prompt)})
    if len(rows) < count:
        raise ValueError(f"only {len(rows)} fresh prompts in the train split, asked for {count}")
    pick = np.sort(np.random.default_rng(seed).choice(len(rows), count, replace=False))
    path.write_text("".join(json.dumps(rows[k]) + "\n" for k in pick))
    return [rows[k]["id"] for k in pick]


def grade(policy: Path, out: Path, prompts: Path, members: list[Path], gold: Path, ppo: PPOConfig, samples: int,
          relevance: SentenceEncoder | None) -> dict[str, np.ndarray]:
    """``samples`` responses per prompt from ``policy`` (`run_bon`, the PPO run's sampling settings, seeded), each
    graded by the gold and scored by every proxy. Per prompt, in the prompts' order, the mean over its samples of:
    ``gold``, ``members`` (raw score of each proxy, (M, P)) and, with ``relevance``, ``relevance``."""
    import pandas as pd

    cfg = BonConfig(data=str(prompts), policy=str(policy), reward_model=",".join(map(str, members)),
                    aggregation="mean", gold=str(gold), n=samples, batch_size=samples, output_dir=str(out),
                    temperature=ppo.temperature, top_p=ppo.top_p, repetition_penalty=ppo.repetition_penalty,
                    max_new_tokens=ppo.max_new_tokens, max_prompt_tokens=ppo.max_prompt_tokens, seed=ppo.seed,
                    precision="fp32")
    run_bon(cfg, progress=False)
    raw = pd.read_parquet(out / "raw_scores.parquet")
    records = [json.loads(line) for line in prompts.open()]
    ids = [r["id"] for r in records]
    if relevance is not None:
        # Valid for exactly these responses: a policy resampled in place with as many samples gets new ones.
        key = hashlib.sha256(json.dumps([list(raw["id"]), list(raw["response"])]).encode()).hexdigest()
        cache, cache_key = out / "relevance.npy", out / "relevance.key"
        if not (cache.exists() and cache_key.exists() and cache_key.read_text() == key):
            text = {r["id"]: r["prompt"] for r in records}
            np.save(cache, relevance.relevance([text[i] for i in raw["id"]],
                                               [[{"role": "assistant", "content": t}] for t in raw["response"]]))
            cache_key.write_text(key)
        raw["relevance"] = np.load(cache)
    by = raw.groupby("id").mean(numeric_only=True).loc[ids]
    out_ = {"gold": by["gold"].to_numpy(), "members": by[[f"raw_{m}" for m in range(len(members))]].to_numpy().T}
    if relevance is not None:
        out_["relevance"] = by["relevance"].to_numpy()
    return out_


def interval(values) -> dict:
    return {"mean": float(np.mean(values)), "ci95": list(mean_interval(values))}


def paired(before, after) -> dict:
    mean, ci, share = paired_gain(before, after)
    return {"mean": mean, "ci95": ci, "established": bool(ci[0] > 0 or ci[1] < 0), "prompts_higher": share}


def summarize(graded: dict[str, dict], steps: dict[str, int], kl: dict[str, float], peak: str, beta: float | None, *,
              seed: int = 0) -> dict:
    """Each policy's step, gold (and parts), KL and proxies' reward; the single run's peak-to-end drop, each other
    run's end against the single run's end, paired over prompts, and the recovery share with a bootstrap
    interval over prompts (resampled together, the ratio of the resampled means). A run that ended at another step
    than the single one is compared all the same: its ``step`` says so."""
    base = graded["base"]["members"]
    mu, sd = base.mean(1, keepdims=True), base.std(1, keepdims=True)  # z-score each proxy on the base policy's
    policies = {}
    for k, g in graded.items():
        row = {"step": steps[k], "gold": interval(g["gold"]), "kl_at_step": kl.get(k),
               "proxy_z": interval(((g["members"] - mu) / sd).mean(0))}
        if "relevance" in g:
            row["relevance"] = interval(g["relevance"])
            row["base_gold"] = interval(g["gold"] - beta * g["relevance"])
        policies[k] = row
    out = {"policies": policies}
    if "single" in graded and peak in graded:
        end = graded["single"]["gold"]
        drop = paired(end, graded[peak]["gold"])
        out["single_drop"] = drop
        if "relevance" in graded["single"]:
            out["single_drop_relevance"] = paired(graded["single"]["relevance"] * beta,
                                                  graded[peak]["relevance"] * beta)
        out["vs_single_at_end"], out["recovery"] = {}, {}
        rows = resample_rows(len(end), seed=seed)  # one set of rows for numerator and denominator
        for k, g in graded.items():
            if k in ("base", "single", peak) or "@" in k:
                continue
            out["vs_single_at_end"][k] = paired(end, g["gold"])
            share = recovery_share(drop["mean"], drop["established"], float(end.mean()), float(g["gold"].mean()))
            boot = ((g["gold"][rows].mean(1) - end[rows].mean(1))
                    / (graded[peak]["gold"][rows].mean(1) - end[rows].mean(1)))
            out["recovery"][k] = {"share": None if np.isnan(share) else share,
                                  "ci95": list(np.percentile(boot, [2.5, 97.5])) if drop["established"] else None}
    # An ensemble run that ended earlier than the single one, against the single run replayed to the same step.
    single_at = {steps[k]: k for k in graded if k.partition("@")[0] == "single"}
    same = {k: paired(graded[single_at[steps[k]]]["gold"], g["gold"]) for k, g in graded.items()
            if k.partition("@")[0] not in ("base", "single") and steps[k] in single_at and steps[k] != steps.get("single")}
    if same:
        out["vs_single_at_same_step"] = same
    return out


def figure(result: dict, path: Path) -> None:
    """Gold (and, for a prompt-aware gold, its prompt-blind base and the relevance) of every regraded policy against
    its KL, with each policy's 95% interval over the fresh prompts (the paired differences, narrower, are in the
    result); the policies of one run joined in step order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pol = result["policies"]
    keys = ["gold"] + (["base_gold", "relevance"] if "base_gold" in next(iter(pol.values())) else [])
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4.2), squeeze=False)
    runs: dict[str, list[str]] = {}
    for name in pol:
        variant = name.partition("@")[0]
        for run in (["single", "uwo", "mean", "min"] if variant == "base" else [variant]):
            runs.setdefault(run, []).append(name)
    for ax, key in zip(axes[0], keys):
        for run, names in runs.items():
            if len(names) < 2:
                continue
            names = sorted(names, key=lambda n: pol[n]["kl_at_step"] or 0.0)
            x = [pol[n]["kl_at_step"] or 0.0 for n in names]
            y = np.array([pol[n][key]["mean"] for n in names])
            lo, hi = np.array([pol[n][key]["ci95"] for n in names]).T
            ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", capsize=3, label=run)
        ax.set(xlabel="KL to the start at that step (nats, the run's own evaluation)",
               ylabel=f"{key.replace('_', ' ')} (mean over fresh prompts)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"PPO policies regraded by the gold {result['gold_name']}: {result['prompts']} fresh prompts x "
                 f"{result['samples_per_prompt']} samples, each policy's 95% interval (paired differences in the JSON)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replay-only", metavar="RUN@STEP", help="replay one run to a step and stop")
    parser.add_argument("--gold", choices=tuple(GOLDS), default="smollm2_relevant")
    parser.add_argument("--tag", default="_lr3e-5", help="lab_ppo.py's --tag of the runs")
    parser.add_argument("--policies", type=lambda s: s.split(","),
                        default=["base", "single@20", "single@60", "single", "uwo", "mean"],
                        help="base (the PPO runs' start), a variant's run at its end (single, uwo, mean, min) or at a "
                             "step (single@20), comma-separated")
    parser.add_argument("--peak", default="single@20", help="the single run's peak policy among --policies (the step "
                        "lab_ppo.py's own evaluations named)")
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--samples", type=int, default=4, help="responses per prompt and policy")
    parser.add_argument("--size", default="250", help="the proxies' training pairs (lab_ppo.py's --size)")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--result", type=Path,
                        default=ROOT / "benchmarks" / "results" / "lab_ppo_regrade_smollm2_relevant.json")
    args = parser.parse_args()
    if args.replay_only:
        run, step = args.replay_only.rsplit("@", 1)
        print(policy_at(Path(run), int(step)))
        return
    the = GOLDS[args.gold]
    work = ROOT / "runs" / "lab"
    members = [work / f"bon_ft{the.suffix}" / f"k{args.size}_seed{s}" / "model" for s in range(args.members)]
    hl = load_hh_lab(seed=args.seed, gold=args.gold)
    prompt_file(hl, work / "ppo_prompts.jsonl")  # the PPO runs' prompts, excluded from the fresh ones
    out = work / f"regrade{the.suffix}{args.tag}"
    out.mkdir(parents=True, exist_ok=True)
    prompts = out / "prompts.jsonl"
    fresh_prompts(hl, int(args.size), args.prompts, work / "ppo_prompts.jsonl", prompts, seed=args.seed)
    gold = the.file(".json")
    block = prompt_aware_file(gold)
    relevance = SentenceEncoder(block["relevance_model"], device="cpu") if block else None
    graded, steps, kl, ppo = {}, {}, {}, None
    for name in args.policies:
        variant, _, step = name.partition("@")
        run = work / f"ppo_{'single' if variant == 'base' else variant}{the.suffix}{args.tag}"
        ppo = load_config(PPOConfig, run / "config.yaml")
        policy = Path(ppo.policy) if variant == "base" else policy_at(run, int(step) if step else ppo.steps)
        at = steps[name] = 0 if variant == "base" else int(step) if step else ppo.steps
        kl[name] = next((float(np.mean(r["kl"])) for r in read_appended_jsonl(run / "eval_scores.jsonl")
                         if r["step"] == at), None)
        graded[name] = grade(policy, out / name.replace("@", "_step"), prompts, members, gold, ppo, args.samples,
                             relevance)
        print(json.dumps({name: {"gold": float(graded[name]["gold"].mean()), "kl_at_step": kl[name]}}), flush=True)
    result = {"gold_name": args.gold, "prompts": args.prompts, "samples_per_prompt": args.samples,
              "prompt_source": "hh-rlhf lab train split, single-turn, < 300 characters, not a proxy's training pair "
                               "nor a PPO prompt",
              "sampling": {k: getattr(ppo, k) for k in ("temperature", "top_p", "repetition_penalty", "max_new_tokens",
                                                        "max_prompt_tokens", "seed")},
              "proxies": [str(m.relative_to(ROOT)) for m in members], "peak": args.peak,
              "kl_note": "KL at the step as the run's own evaluation measured it (its 32 held-out prompts)",
              **summarize(graded, steps, kl, args.peak, block["relevance_weight"] if block else None, seed=args.seed)}
    write_json(args.result, result, relative_to=ROOT)
    figure(result, args.result.with_name(args.result.stem + ".png"))
    print(json.dumps({k: result.get(k) for k in ("single_drop", "vs_single_at_end", "recovery")}))


if __name__ == "__main__":
    main()
