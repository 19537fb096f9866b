"""MetaRM out of distribution: does adapting to a shifted policy's responses, with no new labels, help
the reward model on the shifted distribution? (Issue 5, section 5.)

Protocol (all on this machine's CPU, so small):

1. The start RM is a reward model already trained on hh-rlhf (the default RM). The shifted prompts are
   LLMEval² queries from its English sources other than hh-rlhf, with at most --max-prompt-tokens.
   They are split by query: --meta-prompts for the meta set, --j-prompts for measuring J.
2. The policy (SmolLM2) samples k responses per query at temperature 1.0 (`rmkit.policy.run_sample`):
   the meta set, and separately the J set.
3. Two continuations of the start RM on the hh-rlhf training split, identical in data, order, seed,
   steps and learning rate: ``vanilla`` (Bradley-Terry) and ``metarm`` (Algorithm 1 with the meta
   set). The paper also initialises each round's RM from the previous one.
4. Both (and the start RM) are scored on LLMEval²'s human-labelled pairs of the English sources,
   ties excluded: accuracy overall (without the in-distribution hh-rlhf source), per source, and on
   the pairs whose query is not in the meta set; J (Eq. 11) on the J set; and the in-distribution
   hh-rlhf test accuracy.

Writes benchmarks/results/metarm_ood.json:
``{"vanilla": {"accuracy", "J", ...}, "metarm": {...}, "start": {...}, "step_time_ratio", ...}``.

    .venv/bin/python benchmarks/metarm_ood.py --start-rm runs/rm_default/model [--steps 150]

Every RM here is near chance against LLMEval²'s humans; `lab_domains.py` measures the same claim against the
lab's gold, where the proxies are not.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from transformers import AutoTokenizer

from rmkit.provenance import write_result
from rmkit.assets import resolve_model
from rmkit.data import load_preferences
from rmkit.metarm import meta_J
from rmkit.models import RewardModel
from rmkit.metaset import read_meta_set
from rmkit.policy import SampleConfig, render_prompt, run_sample
from rmkit.scoring import score_pairs
from rmkit.training import TrainConfig, train_reward_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
NOT_ENGLISH = {"rlhf-reward-chinese", "rlhf-reward-russian", "reward-aira-portuguese"}
IN_DISTRIBUTION = {"hh-rlhf"}


def shifted_queries(pairs, tokenizer, max_tokens: int, seed: int) -> list[str]:
    """Distinct non-empty English, out-of-distribution LLMEval² queries that fit the policy's prompt budget."""
    seen, out = set(), []
    for p in pairs:
        q = p.prompt[-1]["content"].strip() if p.prompt else ""
        if not q or q in seen or p.subset in NOT_ENGLISH | IN_DISTRIBUTION:
            continue
        seen.add(q)
        if len(tokenizer(render_prompt(tokenizer, [{"role": "user", "content": q}]))["input_ids"]) <= max_tokens:
            out.append(q)
    return [out[i] for i in np.random.default_rng(seed).permutation(len(out))]


def write_prompts(path: Path, queries: list[str], tag: str) -> None:
    with path.open("w") as f:
        for i, q in enumerate(queries):
            f.write(json.dumps({"id": f"{tag}-{i:04d}", "prompt": q}) + "\n")


def evaluate(model_path: str, eval_pairs, meta_queries: set[str], j_items: list[dict], max_length: int) -> dict:
    rm = RewardModel.from_pretrained(model_path, max_length=max_length)
    df = score_pairs(rm, eval_pairs)
    df["correct"] = (df["diff"] > 0).astype(float)
    df["query"] = [p.prompt[-1]["content"].strip() if p.prompt else "" for p in eval_pairs]
    ood = df[~df["subset"].isin(IN_DISTRIBUTION)]
    return {
        "accuracy": float(ood["correct"].mean()), "pairs": int(len(ood)),
        "accuracy_unseen_queries": float(ood[~ood["query"].isin(meta_queries)]["correct"].mean()),
        "accuracy_with_hh_rlhf_source": float(df["correct"].mean()),
        "per_source": {s: {"accuracy": float(g["correct"].mean()), "pairs": int(len(g))}
                       for s, g in df.groupby("subset")},
        "J": meta_J(rm, j_items),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--start-rm", required=True)
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "bench_metarm_ood"))
    ap.add_argument("--steps", type=int, default=150, help="optimizer steps of each continuation")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--inner-lr", type=float, default=0.05,
                    help="MetaRM's eta (0.05: the inner step is about one AdamW step at lr 1e-5)")
    ap.add_argument("--meta-prompts", type=int, default=96)
    ap.add_argument("--j-prompts", type=int, default=48)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--max-prompt-tokens", type=int, default=256)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample-only", action="store_true", help="stop after sampling the meta and J sets")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "metarm_ood.json"))
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)

    llmeval = load_preferences(DATA / "llmeval2" / "LLMEval2_benchmark.json.zip")  # ties get status "tie"
    english = [p for p in llmeval.pairs if p.subset not in NOT_ENGLISH]
    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2"))  # the policy's template; its weights are not needed
    queries = shifted_queries(english, tok, args.max_prompt_tokens, args.seed)
    meta_q = queries[: args.meta_prompts]
    j_q = queries[args.meta_prompts: args.meta_prompts + args.j_prompts]
    write_prompts(work / "meta_prompts.jsonl", meta_q, "meta")
    write_prompts(work / "j_prompts.jsonl", j_q, "j")

    t0 = time.time()
    for name in ("meta", "j"):  # resumable: a rerun samples only what is missing
        run_sample(SampleConfig(data=str(work / f"{name}_prompts.jsonl"), output=str(work / f"{name}.jsonl"), k=args.k,
                                temperature=1.0, max_new_tokens=args.max_new_tokens,
                                max_prompt_tokens=args.max_prompt_tokens, batch_size=16, seed=args.seed))
    sample_s = time.time() - t0
    if args.sample_only:
        return
    j_items = read_meta_set(work / "j.jsonl")

    common = dict(data=str(DATA / "hh-rlhf"), model=args.start_rm, max_length=args.max_length,
                  batch_size=args.batch_size, lr=args.lr, seed=args.seed, eval_every=0, save_every=50,
                  warmup_ratio=0.0, lr_schedule="constant", max_steps=args.steps,
                  max_pairs=max(256, args.steps * args.batch_size))
    runs = {}
    for name, extra in (("vanilla", {}), ("metarm", {"meta_data": str(work / "meta.jsonl"),
                                                     "meta_inner_lr": args.inner_lr})):
        # a finished run is loaded (its settings checked), not redone
        runs[name] = train_reward_model(TrainConfig(output_dir=str(work / name), **common, **extra)).metrics

    result = {"protocol": {k: v for k, v in vars(args).items() if k != "out"},
              "english_sources": sorted({p.subset for p in english}),
              "ties_excluded": sum(r.status == "tie" for r in llmeval.rows if r.subset not in NOT_ENGLISH),
              "sample_seconds": sample_s}
    for name, path in (("start", args.start_rm), ("vanilla", str(work / "vanilla" / "model")),
                       ("metarm", str(work / "metarm" / "model"))):
        result[name] = evaluate(path, english, set(meta_q), j_items, args.max_length)
        if name in runs:
            result[name].update({"hh_rlhf_test_accuracy": runs[name].get("test/accuracy"),
                                 "s_per_step": runs[name]["s_per_step"], "steps": runs[name]["steps"]})
    result["step_time_ratio"] = result["metarm"]["s_per_step"] / result["vanilla"]["s_per_step"]
    result["accuracy_gain"] = result["metarm"]["accuracy"] - result["vanilla"]["accuracy"]
    write_result(args.out, result, relative_to=ROOT)
    print(json.dumps({k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "per_source"})
                      for k, v in result.items()}, indent=1))
    pd.DataFrame({n: {s: d["accuracy"] for s, d in result[n]["per_source"].items()}
                  for n in ("start", "vanilla", "metarm")}).to_csv(work / "per_source.csv")


if __name__ == "__main__":
    main()
