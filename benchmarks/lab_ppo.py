"""PPO against a weak proxy, graded by the lab's gold: Gao et al.'s RL overoptimization and Coste et al.'s remedy.

Best-of-n reached KL 5.2 nats (n = 512) on these 2 cores without any proxy's gold reward turning down
(`lab_bon.py`). RL moves the policy further for the same compute. This runs `rmkit ppo` (`rmkit.rl.train_ppo`,
configs/ppo_cpu.yaml's settings) with SmolLM2-135M-Instruct as the policy on held-out prompts of the lab's test
split, once per reward:

- ``single``: one fine-tuned proxy (`lab_bon.py --proxies finetuned`'s seed 0 on the lab's labels of 250 training
  pairs);
- ``uwo`` / ``mean`` / ``min``: the 4 seeds of that proxy as one ensemble reward (z-scored members; uwo is
  mean - lambda var with Coste et al.'s PPO lambda 0.1).

The proxies are trained first where runs/lab lacks them (`rmkit.lab.hh.train_proxy`, 76 s each). Every run has the
same seed, prompts, evaluation prompts and sampling seeds; the gold (``PPOConfig.gold``) scores the held-out
evaluation samples only, every ``--eval-every`` steps, and never the rollouts. No KL penalty by default
(``--kl-coef``), Gao et al.'s setting for measuring gold against KL.

``--regrade`` then grades the runs' policies again on prompts none of those evaluations used. The runs' own
evaluations (32 prompts, one response each) both name the single run's gold peak and measure the drop from it, so
the drop is biased upward and its interval wide; the regrade removes that selection bias:

- the policy of a run at a step: the run's ``policy/`` at its end; at an earlier step (the single run's peak, as
  its evaluations named it), the run replayed from scratch to that step (`policy_at`: same config and seed;
  `rmkit ppo` is seeded), accepted only if its evaluations reproduce the original's at every step both have;
- ``--regrade-prompts`` fresh prompts: single-turn prompts (under 300 characters, lab_bon.py's rule) of the lab's
  *train* split whose pairs the proxies did not train on (the test split's prompts are all PPO's), seeded;
- ``--regrade-samples`` responses per prompt from each policy with `rmkit bon` (`rmkit.bon.run_bon`: seeded per
  prompt, resumable; the gold grading every sample), then per prompt the mean gold and, for a prompt-aware gold,
  its two parts; paired over prompts, the single run's peak-to-end drop, each ensemble run's end against the
  single run's end, and ``recovery`` (`rmkit.bon.recovery_share`) where the drop is established.

    .venv/bin/python benchmarks/lab_ppo.py --variants single,uwo             # ~25 min per variant on 2 cores (22 s a step)

Under the prompt-aware gold (results/lab_ppo_smollm2_relevant.json; proxies trained on its labels, ~90 min per run
with two runs sharing the cores; the result adds ``relevance_split``: each run's gold gain split into the relevance
term and the prompt-blind base, so a drop can be read as the policy leaving the question or not), and its regrade
(results/lab_ppo_smollm2_relevant_regrade.json):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lab_ppo.py --variants single,uwo,mean --actor-lr 3e-5 --steps 100 \
        --eval-every 10 --gold smollm2_relevant --tag _lr3e-5 --result benchmarks/results/lab_ppo_smollm2_relevant.json \
        --regrade --regrade-policies base,single@20,single@60,single,uwo,mean
    .venv/bin/python benchmarks/lab_ppo.py --variants single,uwo --size 100 --members 2 --steps 4 --eval-every 2 \
        --tag _check --result /tmp/lab_ppo_check.json --regrade --regrade-prompts 8 --regrade-samples 2   # ~20 min

One thread for a regrade, as the PPO runs had, so a replay reproduces them bit for bit (another thread count changes
the last bits, the runs then diverge, and the replay is refused). Cost on these cores: a replay ~70 s a step with
another job on the second core; a policy's 512 samples ~17 min, their gold and proxy scores ~3 min; all cached under
runs/lab/regrade<suffix><tag>/, so a rerun with one more policy samples only that one.

Writes --result (default benchmarks/results/lab_ppo.json) and its _curve.png, and with --regrade
<result>_regrade.json and its .png; every run lives under runs/lab/ppo_<variant><suffix><tag> and resumes where it
stopped (`rmkit ppo`'s checkpoints).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import shutil
import textwrap
from pathlib import Path

import numpy as np

from rmkit.provenance import write_result
from rmkit.bon import BonConfig, recovery_share, run_bon
from rmkit.config import load_config, to_dict
from rmkit.files import read_appended_jsonl
from rmkit.gold import prompt_aware_file
from rmkit.intervals import mean_interval, resample_rows
from rmkit.lab.hh import GOLDS, ROOT, load_hh_lab, prompt_file, train_proxy, training_pool
from rmkit.relevance import SentenceEncoder
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


# The regrade: the runs' policies on fresh prompts.

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
            ci = None
            if drop["established"]:  # a ratio over a drop that may be 0 means nothing (recovery_share's rule)
                boot = ((g["gold"][rows].mean(1) - end[rows].mean(1))
                        / (graded[peak]["gold"][rows].mean(1) - end[rows].mean(1)))
                ci = list(np.percentile(boot, [2.5, 97.5]))
            out["recovery"][k] = {"share": None if np.isnan(share) else share, "ci95": ci}
    # An ensemble run that ended earlier than the single one, against the single run replayed to the same step.
    single_at = {steps[k]: k for k in graded if k.partition("@")[0] == "single"}
    same = {k: paired(graded[single_at[steps[k]]]["gold"], g["gold"]) for k, g in graded.items()
            if k.partition("@")[0] not in ("base", "single") and steps[k] in single_at and steps[k] != steps.get("single")}
    if same:
        out["vs_single_at_same_step"] = same
    return out


def figure_regrade(result: dict, path: Path) -> None:
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
    title = (f"PPO policies regraded by the gold {result['gold_name']}: {result['prompts']} fresh prompts x "
             f"{result['samples_per_prompt']} samples, each policy's 95% interval (paired differences in the JSON)")
    fig.suptitle(textwrap.fill(title, width=int(5 * len(keys) * 13)), fontsize=10)  # one panel cut a long title
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def regrade(args, hl, the, members: list[Path], run_of, curves: dict) -> dict:
    """Every policy of ``--regrade-policies`` (default: the start, the single run at the peak its own evaluations
    named and at its end, every other run at its end) graded on fresh prompts (`grade`) and compared (`summarize`)."""
    work = ROOT / "runs" / "lab"
    single = curves.get("single")
    peak_step = single["step"][int(np.argmax(single["gold"]))] if single else None
    # A peak at the run's last step is its end: the same policy, named once (and its drop then 0).
    peak = "" if not single else "single" if peak_step == single["step"][-1] else f"single@{peak_step}"
    policies = args.regrade_policies or ["base"] + ([peak] if peak not in ("", "single") else []) + list(curves)
    out = work / f"regrade{the.suffix}{args.tag}"
    out.mkdir(parents=True, exist_ok=True)
    prompts = out / "prompts.jsonl"
    fresh_prompts(hl, int(args.size), args.regrade_prompts, work / "ppo_prompts.jsonl", prompts, seed=args.seed)
    gold = the.file(".json")
    block = prompt_aware_file(gold)
    relevance = SentenceEncoder(block["relevance_model"], device="cpu") if block else None
    graded, steps, kl, ppo = {}, {}, {}, None
    for name in policies:
        variant, _, step = name.partition("@")
        run = run_of("single" if variant == "base" else variant)
        ppo = load_config(PPOConfig, run / "config.yaml")
        policy = Path(ppo.policy) if variant == "base" else policy_at(run, int(step) if step else ppo.steps)
        at = steps[name] = 0 if variant == "base" else int(step) if step else ppo.steps
        kl[name] = next((float(np.mean(r["kl"])) for r in read_appended_jsonl(run / "eval_scores.jsonl")
                         if r["step"] == at), None)
        graded[name] = grade(policy, out / name.replace("@", "_step"), prompts, members, gold, ppo,
                             args.regrade_samples, relevance)
        print(json.dumps({name: {"gold": float(graded[name]["gold"].mean()), "kl_at_step": kl[name]}}), flush=True)
    return {"gold_name": args.gold, "prompts": args.regrade_prompts, "samples_per_prompt": args.regrade_samples,
            "prompt_source": "hh-rlhf lab train split, single-turn, < 300 characters, not a proxy's training pair "
                             "nor a PPO prompt",
            "sampling": {k: getattr(ppo, k) for k in ("temperature", "top_p", "repetition_penalty", "max_new_tokens",
                                                      "max_prompt_tokens", "seed")},
            "proxies": [str(m.relative_to(ROOT)) for m in members], "peak": peak,
            "kl_note": "KL at the step as the run's own evaluation measured it (its 32 held-out prompts)",
            **summarize(graded, steps, kl, peak, block["relevance_weight"] if block else None, seed=args.seed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", type=lambda s: s.split(","), default=["single", "uwo"],
                        help="single, mean, min, uwo (comma-separated), run in this order")
    parser.add_argument("--size", default="250", help="the proxies' training pairs (lab_bon.py --proxies finetuned's k)")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--flips", type=float, default=0.0,
                        help="planted flips on the proxies' training labels (lab_bon.py's; Coste et al.'s noisy "
                             "setting is 0.25)")
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
    regrading = parser.add_argument_group("regrade")
    regrading.add_argument("--regrade", action="store_true",
                           help="then grade the runs' policies on fresh prompts: <result>_regrade.json")
    regrading.add_argument("--regrade-policies", type=lambda s: s.split(","), default=None,
                           help="base (the runs' start), a variant's run at its end (single, uwo, mean, min) or at a "
                                "step (single@20), comma-separated; default: base, the single run at its evaluations' "
                                "peak, every run at its end")
    regrading.add_argument("--regrade-prompts", type=int, default=128, help="fresh prompts")
    regrading.add_argument("--regrade-samples", type=int, default=4, help="responses per fresh prompt and policy")
    regrading.add_argument("--replay-only", metavar="RUN@STEP", help="replay one run to a step and stop")
    args = parser.parse_args()
    if args.replay_only:
        run, step = args.replay_only.rsplit("@", 1)
        print(policy_at(Path(run), int(step)))
        return
    if args.plot_only:
        figure(json.loads(args.result.read_text()), args.result.with_name(args.result.stem + "_curve.png"))
        return
    the = GOLDS[args.gold]
    work = ROOT / "runs" / "lab"
    noisy = f"_flips{args.flips:g}" if args.flips else ""  # lab_bon.py's folder names

    def run_of(variant: str) -> Path:
        return work / f"ppo_{variant}{the.suffix}{noisy}{args.tag}"
    members = [work / f"bon_ft{the.suffix}" / f"k{args.size}_seed{s}{noisy}" / "model" for s in range(args.members)]
    hl = load_hh_lab(seed=args.seed, gold=args.gold)
    pool = training_pool(hl, args.seed, args.flips)[0][: int(args.size)]
    for m, path in enumerate(members):  # lab_bon.py's fine-tuned proxies, trained here where runs/lab lacks them
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
        cfg = PPOConfig(**{**base, "output_dir": str(run_of(v)),
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
        result["relevance_split"] = relevance_split(result["gold"], {v: run_of(v) for v in curves}, curves, prompts)
    args.result.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.result, result, relative_to=ROOT)
    figure(result, args.result.with_name(args.result.stem + "_curve.png"))
    print(json.dumps({k: result[k] for k in ("vs_single_at_end", "relevance_split") if k in result}))
    if args.regrade:
        again = regrade(args, hl, the, members, run_of, curves)
        path = args.result.with_name(args.result.stem + "_regrade.json")
        write_result(path, again, relative_to=ROOT)
        figure_regrade(again, path.with_suffix(".png"))
        print(json.dumps({k: again.get(k) for k in ("single_drop", "vs_single_at_end", "recovery")}))


if __name__ == "__main__":
    main()
