"""Is the gold hacked too? What PPO's policies write, graded by a measure neither reward model reads.

lab_ppo.py's runs end with the gold higher than it started at every KL reached (to 127 nats), so Gao et al.'s
drop never shows and Coste et al.'s ``conservative_recovery`` has nothing to divide. A lab measures
overoptimization only while its gold stays a fair stand-in for the human. This checks that at each run's final
policy, on the runs' own held-out evaluation prompts (the 32 ids of eval_scores.jsonl) with their sampling settings:

- ``gold`` and ``proxy``: the rewards PPO was graded by and optimised;
- ``relevance``: cosine of all-mpnet-base-v2 sentence embeddings (a model trained for semantic similarity, read by
  neither the gold nor the proxy) between the prompt and the response, and ``relevance_margin``, the same minus
  the response's cosine with another prompt (`rmkit.relevance.other_prompt`): about 0 for a response that could answer
  anything;
- ``prompt_sensitivity`` of the gold and of the proxy (`rmkit.lab.prompt_sensitivity`): reward with the response's
  own prompt minus with that other prompt. An RM that judges the answer to the question prefers the right
  question; one that scores the response alone does not care.

    .venv/bin/python benchmarks/lab_hack.py [--runs ppo_single_smollm2_s120,ppo_single_smollm2_lr3e-5] [--k 4]

The same prompt sensitivity on human-written responses (the chosen sides of 256 of the lab's test pairs) says
whether the RMs read the prompt at all, apart from any policy. Samples are cached under runs/lab/hack/ (JSONL
with prompt ids); writes benchmarks/results/lab_hack.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from rmkit.provenance import write_result
from rmkit.lab.hh import GOLDS, ROOT, load_hh_lab
from rmkit.config import load_config
from rmkit.files import read_appended_jsonl
from rmkit.gold import gold_scorer
from rmkit.intervals import mean_interval
from rmkit.lab import prompt_sensitivity
from rmkit.policy import SamplingConfig, load_policy, sample_responses
from rmkit.relevance import SentenceEncoder, other_prompt, turn_text
from rmkit.rl import PPOConfig


def samples(name: str, policy: str, prompts: list, ids: list[str], samp: SamplingConfig, k: int, work: Path) -> list:
    """``k`` responses to each prompt from ``policy`` (cached in ``work/name.jsonl``, keyed by the settings)."""
    path = work / f"{name}.jsonl"
    key = {"policy": policy, "k": k, "ids": ids, **{f: getattr(samp, f) for f in SamplingConfig.__dataclass_fields__}}
    if path.exists():
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        if rows and rows[0] == key:
            return [r["responses"] for r in rows[1:]]
    model, tok = load_policy(policy)
    texts = sample_responses(model, tok, prompts, samp, k=k, progress=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in [key] + [{"id": i, "responses": t}
                                                                    for i, t in zip(ids, texts)]))
    return texts


def per_prompt(v: np.ndarray, k: int) -> np.ndarray:
    """Per-sample values ``(P * k,)`` (prompt-major) as per-prompt means ``(P,)``."""
    return v.reshape(-1, k).mean(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="ppo_single_smollm2_s120,ppo_single_smollm2_lr3e-5",
                        help="lab_ppo.py run folders under runs/lab (comma-separated); the first sets prompts and "
                             "sampling settings, every run must share its start policy and evaluation prompts")
    parser.add_argument("--k", type=int, default=4, help="responses per evaluation prompt and policy")
    parser.add_argument("--gold", choices=tuple(GOLDS), default="smollm2",
                        help="the lab's gold; smollm2_relevant: the prompt-aware one of lab_gold_relevance.py")
    parser.add_argument("--result", type=Path, default=ROOT / "benchmarks" / "results" / "lab_hack.json")
    args = parser.parse_args()
    lab = ROOT / "runs" / "lab"
    runs = [lab / r for r in args.runs.split(",")]
    cfg = load_config(PPOConfig, runs[0] / "config.yaml")
    ids = read_appended_jsonl(runs[0] / "eval_scores.jsonl")[0]["ids"]
    for r in runs[1:]:
        other = load_config(PPOConfig, r / "config.yaml")
        if read_appended_jsonl(r / "eval_scores.jsonl")[0]["ids"] != ids or other.policy != cfg.policy:
            raise SystemExit(f"{r.name}: another start policy or other evaluation prompts than {runs[0].name}")
    by_id = {x["id"]: x["prompt"] for x in map(json.loads, Path(cfg.data).read_text().splitlines())}
    prompts = [by_id[i] for i in ids]
    samp = SamplingConfig(**{f: getattr(cfg, f) for f in SamplingConfig.__dataclass_fields__ if f != "batch_size"},
                          batch_size=16)  # the runs' own settings but the batch: 2 prompts at a time is slow here
    work = lab / "hack"
    work.mkdir(parents=True, exist_ok=True)
    policies = {"start": cfg.policy, **{r.name: str(r / "policy") for r in runs}}
    t0 = time.time()
    texts = {name: samples(name, p, prompts, ids, samp, args.k, work) for name, p in policies.items()}
    sample_seconds = time.time() - t0

    k, n = args.k, len(ids)
    flat_p = [prompts[i] for i in range(n) for _ in range(k)]
    gold = gold_scorer(str(GOLDS[args.gold].file(".json")))
    proxy_score = gold_scorer(cfg.reward_model, precision="fp32").score  # the RM PPO optimised, scored as a gold is
    encoder = SentenceEncoder("mpnet")
    emb_p = encoder.embed([turn_text(p) for p in prompts])
    other = np.repeat(other_prompt(n, seed=0), k)  # the prompt each response meets in prompt_sensitivity
    out = {}
    for name, t in texts.items():
        resp = [[{"role": "assistant", "content": x}] for row in t for x in row]
        g_own, q_own = gold.score(flat_p, resp), proxy_score(flat_p, resp)
        e = encoder.embed([x for row in t for x in row])
        own = (e * np.repeat(emb_p, k, axis=0)).sum(1)
        moved = (e * emb_p[other]).sum(1)
        summary = json.loads((lab / name / "summary.json").read_text()) if name != "start" else {}
        out[name] = {"kl_end": summary.get("kl_end", 0.0), "steps": summary.get("steps", 0),
                     "per_prompt": {"gold": per_prompt(g_own, k).tolist(), "proxy": per_prompt(q_own, k).tolist(),
                                    "relevance": per_prompt(own, k).tolist(),
                                    "relevance_margin": per_prompt(own - moved, k).tolist()},
                     "mean_chars": float(np.mean([len(x) for row in t for x in row])),
                     "example_responses": [row[0] for row in t[:3]]}
        for key, v in out[name]["per_prompt"].items():
            out[name][key] = {"mean": float(np.mean(v)), "ci95": list(mean_interval(np.asarray(v)))}
        out[name]["relevance_own_above_other"] = float((own > moved).mean())
        out[name]["gold_prompt_sensitivity"] = prompt_sensitivity(gold.score, flat_p, resp)
        out[name]["proxy_prompt_sensitivity"] = prompt_sensitivity(proxy_score, flat_p, resp)
    # The same check on human-written responses: 256 chosen sides of the lab's test pairs, seeded.
    hl = load_hh_lab(seed=0, gold=args.gold)
    test = set(hl.splits["test"])
    pool = [p for p in hl.ds.pairs if p.id in test]
    some = [pool[i] for i in sorted(np.random.default_rng(0).permutation(len(pool))[:256].tolist())]
    human = {who: prompt_sensitivity(fn, [p.prompt for p in some], [p.chosen for p in some])
             for who, fn in (("gold", gold.score), ("proxy", proxy_score))}
    # Each final policy against the start, paired by prompt.
    vs_start = {name: {key: dict(zip(("mean", "ci95"), (float(np.mean(d)), list(mean_interval(d)))))
                       for key in ("gold", "proxy", "relevance", "relevance_margin")
                       for d in [np.asarray(out[name]["per_prompt"][key]) - out["start"]["per_prompt"][key]]}
                for name in out if name != "start"}
    result = {"gold": args.gold, "proxy": cfg.reward_model, "eval_prompts": n, "k": k,
              "sampling": {f: getattr(samp, f) for f in SamplingConfig.__dataclass_fields__},
              "relevance_model": "all-mpnet-base-v2 (cosine of mean-pooled, normalised embeddings)",
              "sample_seconds": sample_seconds, "policies": out, "vs_start": vs_start,
              "prompt_sensitivity_on_human_responses": human}
    write_result(args.result, result, relative_to=ROOT)
    keys = ("kl_end", "gold", "proxy", "relevance", "relevance_margin", "gold_prompt_sensitivity",
            "proxy_prompt_sensitivity", "relevance_own_above_other")
    print(json.dumps({name: {key: v[key] for key in keys} for name, v in out.items()}, indent=1))
    print(json.dumps({"prompt_sensitivity_on_human_responses": human}))


if __name__ == "__main__":
    main()
