"""MetaRM on a fine-tuned RM in the lab: the paper's Sec. 4 claim with the RM it was made for.

The lab's shift study (`rmkit.lab.study_shift`, results/shift.json) runs MetaRM on a linear head over frozen
MiniLM features and finds no effect (vanilla 0.6920, MetaRM 0.6924 against the gold on pairs of policy samples).
A head on fixed features can only re-weight what the features already separate; MetaRM's inner step was
made for a fine-tuned RM, whose features move. This starts from the fine-tuned MiniLM RM of
`lab_finetune.py` (runs/lab/finetune/model: 1 epoch on the lab's sampled labels of the train split) and runs
the same number of further `rmkit train` steps on the same labelled pairs twice:

- control: plain BT steps;
- MetaRM: the same steps with the meta set (`TrainConfig.meta_data`): the first 8 SmolLM2 samples of each of
  the first 50 best-of-n prompts of `lab_bon.py`, no labels.

All three RMs (vanilla, control, MetaRM) then score the 128 samples of each of the other 50 prompts, graded on
every pair of samples of a prompt against the gold's sign (`rmkit.lab.grade_sample_pairs`), as the shift study
grades the heads.

    .venv/bin/python benchmarks/lab_metarm.py [--steps 100] [--inner-lr 0.05,0.5] [--gold smollm2|mpnet]

After PPO (the paper's setting: the policy has drifted from the one whose data trained the RM): ``--samples`` is a
meta-set JSONL of any policy's samples, whose first half of prompts is the meta set and second half is graded, the
gold scoring them (cached in the work folder); ``--vanilla`` the RM that PPO optimised and ``--train-pairs k`` its
own training pairs (the first k of `rmkit.lab.hh.training_pool`'s order) for the further steps. What
results/lab_metarm_after_ppo.json holds (the policy of `lab_ppo.py --variants single --steps 120 --eval-every 10
--tag _s120`):

    .venv/bin/rmkit sample runs/lab/ppo_prompts.jsonl --policy runs/lab/ppo_single_smollm2_s120/policy --k 8 \
        --max-prompts 100 --output runs/lab/shift_samples_ppo.jsonl --max-new-tokens 48 --temperature 1.0
    .venv/bin/python benchmarks/lab_metarm.py --samples runs/lab/shift_samples_ppo.jsonl --train-pairs 250 \
        --inner-lr 0.05 --vanilla runs/lab/bon_ft_smollm2/k250_seed0/model --work runs/lab/metarm_shift_ppo \
        --result benchmarks/results/lab_metarm_after_ppo.json

Without them it needs runs/lab/finetune<suffix>/model (`lab_finetune.py --gold ...`) and runs/lab/bon_samples.jsonl with
benchmarks/lab/bon_scores<suffix>.parquet (`benchmarks/lab_bon.py --gold ...`); the suffix is the gold's
(`hh_lab.GOLDS`). Writes benchmarks/results/lab_metarm<suffix>.json and the "finetuned" entry of lab<suffix>.json's
"shift" block; the trainings checkpoint under runs/lab/metarm<suffix> and a killed run resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

import numpy as np

from rmkit.provenance import write_result
from rmkit.lab.hh import DATA, GOLDS, ROOT, load_hh_lab, training_pool
from rmkit.bon import read_samples
from rmkit.config import load_config, to_dict
from rmkit.lab import grade_sample_pairs
from rmkit.gold import load_gold_saved
from rmkit.intervals import mean_interval
from rmkit.metaset import read_meta_set, write_meta_set
from rmkit.models import RewardModel
from rmkit.training import TrainConfig, train_reward_model


def sample_gold(the, pid: list[str], prompt_of: dict, samples: dict, n: int, work: Path) -> np.ndarray:
    """The gold's rewards ``(P, n)`` of the samples, scored once and cached under ``work`` (keyed by the samples)."""
    key = hashlib.sha256(json.dumps([pid, [samples[i] for i in pid]]).encode()).hexdigest()[:12]
    cache = work / f"gold_{key}.npy"
    if not cache.exists():
        gold_rm = load_gold_saved(the.file(".json"))
        g = gold_rm.score([prompt_of[i] for i in pid for _ in range(n)],
                          [[{"role": "assistant", "content": t}] for i in pid for t in samples[i]], progress=True)
        np.save(cache, np.asarray(g).reshape(len(pid), n))
    return np.load(cache)


def paired_gap(a: np.ndarray, b: np.ndarray, gold: np.ndarray, *, seed: int = 0) -> list[float]:
    """95% interval of proxy ``a``'s gold accuracy minus proxy ``b``'s on every pair of samples of a prompt
    (``a, b, gold (P, n)``), prompts resampled with their pairs."""
    i, j = np.triu_indices(gold.shape[1], 1)
    sign = gold[:, i] - gold[:, j] > 0
    d = ((a[:, i] - a[:, j] > 0) == sign).mean(1) - ((b[:, i] - b[:, j] > 0) == sign).mean(1)  # (P,)
    return list(mean_interval(d, seed=seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="further training steps of control and MetaRM")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--inner-lr", default="0.05,0.5", help="MetaRM's inner ascent steps (TrainConfig.meta_inner_lr), "
                                                                "comma-separated: one MetaRM run each")
    parser.add_argument("--meta-k", type=int, default=8, help="samples per meta prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-seed", type=int, default=None,
                        help="seed of the further steps alone (batch order), the lab's labels and pairs kept: repeats "
                             "control and MetaRM on the same data (default: --seed)")
    parser.add_argument("--gold", choices=tuple(GOLDS), default="smollm2", help="which of the lab's golds")
    parser.add_argument("--vanilla", default=None, help="default: runs/lab/finetune<suffix>/model")
    parser.add_argument("--work", default=None, help="default: runs/lab/metarm<suffix>")
    parser.add_argument("--result", default=None, help="default: benchmarks/results/lab_metarm<suffix>.json")
    parser.add_argument("--samples", default=None, help="a meta-set JSONL of policy samples (id, prompt, responses): "
                                                        "graded by the gold instead of lab_bon.py's samples")
    parser.add_argument("--train-pairs", type=int, default=None,
                        help="further steps on the first k pairs of training_pool's order (default: all the "
                             "train split, as lab_finetune.py trained)")
    args = parser.parse_args()
    the = GOLDS[args.gold]
    args.vanilla = args.vanilla or str(ROOT / "runs" / "lab" / f"finetune{the.suffix}" / "model")
    args.work = args.work or str(ROOT / "runs" / "lab" / f"metarm{the.suffix}")
    args.result = args.result or str(the.result("lab_metarm.json"))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    # The lab's labelled train pairs, exactly as lab_finetune.py trained the vanilla RM on them.
    hl = load_hh_lab(seed=args.seed, gold=args.gold)
    pairs, where = hl.ds.pairs, {i: k for k, i in enumerate(hl.ids)}
    train_pairs = hl.labelled("train", args.seed)
    if args.train_pairs:
        train_pairs = training_pool(hl, args.seed, 0.0)[0][: args.train_pairs]

    # Policy samples: the first half of the prompts is the meta set, the second half is graded.
    if args.samples:
        recs = read_meta_set(args.samples)
        pid = [r["id"] for r in recs]
        n = min(len(r["responses"]) for r in recs)
        samples = {r["id"]: r["responses"][:n] for r in recs}
        prompt_of = {r["id"]: r["prompt"] for r in recs}
        gold = sample_gold(the, pid, prompt_of, samples, n, work)
    else:  # lab_bon.py's samples and committed gold, prompts in its order
        scores = pd.read_parquet(ROOT / "benchmarks" / "lab" / f"bon_scores{the.suffix}.parquet")
        pid = list(dict.fromkeys(scores["id"]))
        n = int(scores["k"].max()) + 1
        gold = scores.sort_values(["id", "k"]).set_index("id").loc[pid, "gold"].to_numpy().reshape(len(pid), n)
        samples = read_samples(ROOT / "runs" / "lab" / "bon_samples.jsonl")
        prompt_of = {i: pairs[where[i]].prompt for i in pid}
    half = len(pid) // 2
    meta_path = work / "meta_set.jsonl"
    write_meta_set(meta_path, pid[:half], [prompt_of[i] for i in pid[:half]],
                   [samples[i][: args.meta_k] for i in pid[:half]])

    cfg = load_config(TrainConfig, ROOT / "configs" / "train_default.yaml")
    train_seed = args.seed if args.train_seed is None else args.train_seed
    cfg = replace(cfg, data=str(DATA), model=args.vanilla, seed=train_seed, lr=args.lr, max_steps=args.steps,
                  eval_test=False, warmup_ratio=0.0, lr_schedule="constant")
    inner_lrs = [float(x) for x in args.inner_lr.split(",")]
    runs = {"control": replace(cfg, output_dir=str(work / "control"))}
    for eta in inner_lrs:
        runs[f"metarm_{eta:g}"] = replace(cfg, output_dir=str(work / f"metarm_{eta:g}"), meta_data=str(meta_path),
                                          meta_inner_lr=eta)
    seconds = {}
    for name, c in runs.items():  # a finished run is loaded, not retrained; its results keep the training time
        seconds[name] = train_reward_model(c, train_pairs=train_pairs).metrics["train_seconds"]

    # Grade: every RM scores the eval prompts' samples; pairs of samples against the gold's sign.
    eval_ids = pid[half:]
    prompts = [prompt_of[i] for i in eval_ids for _ in range(n)]
    responses = [[{"role": "assistant", "content": t}] for i in eval_ids for t in samples[i][:n]]
    graded, rewards = {}, {}
    for name, path in {"vanilla": args.vanilla, **{k: str(work / k / "model") for k in runs}}.items():
        t0 = time.time()
        rm = RewardModel.from_pretrained(path)
        rewards[name] = rm.score(prompts, responses, batch_size=64).numpy().reshape(len(eval_ids), n)
        graded[name] = {**grade_sample_pairs(rewards[name], gold[half:]), "score_seconds": time.time() - t0}
    best_eta = max(inner_lrs, key=lambda eta: graded[f"metarm_{eta:g}"]["accuracy"])
    best = graded[f"metarm_{best_eta:g}"]["accuracy"]
    # The same gaps with 95% intervals over the graded prompts (pairs of one prompt share its samples).
    gaps = {f"metarm_best_minus_{b}_ci95": paired_gap(rewards[f"metarm_{best_eta:g}"], rewards[b], gold[half:],
                                                      seed=args.seed)
            for b in ("vanilla", "control")}
    out = {
        "what": f"gold accuracy on every pair of {n} policy samples of each of {len(eval_ids)} held-out prompts: the "
                "fine-tuned MiniLM RM (vanilla), after further BT steps (control), after the same steps with MetaRM",
        "samples": args.samples or "lab_bon.py's SmolLM2 samples", "vanilla_model": args.vanilla,
        "train_pairs": len(train_pairs), "train_seed": train_seed,
        "eval_prompts": len(eval_ids), "samples_per_prompt": n, "meta_prompts": half, "meta_k": args.meta_k,
        "gold": the.stem, "steps": args.steps, "lr": args.lr, "vanilla": graded["vanilla"], "control": graded["control"],
        "metarm": {f"{eta:g}": graded[f"metarm_{eta:g}"] for eta in inner_lrs},
        "metarm_best_minus_vanilla": best - graded["vanilla"]["accuracy"],
        "metarm_best_minus_control": best - graded["control"]["accuracy"], **gaps,
        "train_seconds": seconds, "config": to_dict(runs[f"metarm_{inner_lrs[0]:g}"]),
    }
    write_result(args.result, out, relative_to=ROOT)
    print(json.dumps({k: v for k, v in out.items() if k != "config"}, indent=1))


if __name__ == "__main__":
    main()
