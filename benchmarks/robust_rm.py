"""Which training recipe gives the most robust reward model? Plain Bradley-Terry against weight averaging (WARM),
length disentanglement (ODIN), prediction ensembles and the paper's denoising presets, graded by the lab's gold.

Two labs on hh-rlhf (SmolLM2's layer 10 plays the human, `rmkit.lab`):

- ``confounded``: labels drawn from the gold plus a length bonus the gold does not have (`lab.length_confounded`,
  ``--bonus``): an RM that learns length instead of quality is caught on the test pairs where length and the gold
  disagree (``gold_accuracy_deconfounded``); its reward's Spearman with the length difference says how much it leans.
- ``flips_0.2``: labels drawn from the gold, 20% planted flips.

Every method is a real `rmkit train` run of MiniLM (top 2 blocks and the head fine-tuned, ``--max-length`` tokens)
on the same seeded sample of the training split (``--pool`` pairs), graded on the same seeded sample of the test
split (``--test`` pairs): ``bt`` (member 0), ``best_member`` (the member whose held-out agreement with the lab's own
labels is best: chosen without the gold), ``ensemble_mean`` (the members' mean reward), ``warm`` (their weights
averaged, `rmkit.warm`: members share the base model and the head's init, differ in seed), ``odin`` (objective
odin), ``flip`` and ``margin`` (the paper's presets on the audit ensemble's strength, `rmkit.denoise`).
CPU budget: the pool, sequence length and blocks trained are cut so that every model trains in about two minutes on
2 cores; all methods see the same cut, so the comparison stays fair, but absolute accuracies are below a full run.

    .venv/bin/python benchmarks/robust_rm.py                 # 2 labs x 3 seeds x 6 models trained: ~2 hours, 2 cores
    .venv/bin/python benchmarks/robust_rm.py --bon           # then best-of-n: ~20 min (SmolLM2 samples, llama.cpp)

``--bon``: ``bt`` against the confounded lab's best method in best-of-n on held-out prompts (`bon_block`): the gold
reward of each RM's pick and the pick's length, n = 1..64, each seed's models as trained above.

Writes benchmarks/results/robust_rm.json (finished runs are reused from --work: a killed run resumes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from rmkit.bon import bon_curve, bon_ns
from rmkit.calibration import spearman
from rmkit.config import load_config
from rmkit.data import PreferenceDataset, RowResult, split_ids, stratified_sample, text_lengths
from rmkit.denoise import DenoiseConfig, denoise_pairs
from rmkit.gold import load_gold_saved
from rmkit.lab import (LabConfig, choose_temperature, lab_pairs, length_confounded, load_lab_inputs,
                       sample_labels)
from rmkit.llamacpp import sample_llamacpp
from rmkit.models import RewardModel
from rmkit.provenance import write_result
from rmkit.scoring import score_token_pairs
from rmkit.training import TrainConfig, train_reward_model
from rmkit.warm import average_reward_models

ROOT = Path(__file__).resolve().parents[1]
GOLD = ROOT / "benchmarks" / "lab" / "gold_hh_smollm2.parquet"


def diffs_of(model: RewardModel, pairs) -> np.ndarray:
    c, r = model.encode_pairs(pairs)
    rc, rr = score_token_pairs(model, c, r, batch_size=64)
    return rc - rr


def grade(d: np.ndarray, gold: np.ndarray, length: np.ndarray) -> dict:
    """A method's reward differences ``(T,)`` on the test pairs (sides as in the source), against the gold."""
    deconf = np.sign(gold) != np.sign(length)  # pairs where the longer response is the gold's worse one
    return {"gold_accuracy": float(np.mean((d > 0) == (gold > 0))),
            "gold_accuracy_deconfounded": float(np.mean((d[deconf] > 0) == (gold[deconf] > 0))),
            "deconfounded_pairs": int(deconf.sum()), "length_spearman": spearman(d, length)}


def case_indices(inputs, seed: int, args) -> tuple[list[int], list[int], list[int]]:
    """A seed's training pool, validation pairs (the first ``args.test // 2`` are used) and graded test pairs:
    indices into ``inputs.pairs``, each a seeded sample of its split."""
    ids = np.array(inputs.proxy.ids)
    ds = PreferenceDataset([RowResult(p.id, "ok", p.subset, "", k, "", p) for k, p in enumerate(inputs.pairs)])
    splits = split_ids(ds, seed=seed)
    subsets = [p.subset for p in inputs.pairs]
    where = {i: k for k, i in enumerate(ids)}
    train_idx = [where[i] for i in splits["train"]]
    pool = [train_idx[k] for k in stratified_sample([subsets[i] for i in train_idx], args.pool, seed)]
    val_idx = [where[i] for i in splits["validation"]]
    test_all = [where[i] for i in splits["test"]]
    test = [test_all[k] for k in stratified_sample([subsets[i] for i in test_all], args.test, seed)]
    return pool, val_idx, test


def run_case(inputs, lab: str, seed: int, args, work: Path) -> dict:
    ids = np.array(inputs.proxy.ids)
    law = length_confounded(inputs.gold, inputs.length_diff, args.bonus) if lab == "confounded" else inputs.gold
    labels = sample_labels(list(ids), law, choose_temperature(law, inputs.cfg.against_gold),
                           flips=0.2 if lab.startswith("flips") else 0.0, seed=seed)
    y = labels["label"].to_numpy().astype(bool)
    pool, val_idx, test = case_indices(inputs, seed, args)
    labelled = lab_pairs(inputs.pairs, labels)  # sides as the lab's labels say
    train_pairs = [labelled[i] for i in pool]
    val_pairs = [labelled[i] for i in val_idx[: args.test // 2]]
    test_pairs = [inputs.pairs[i] for i in test]  # source sides: graded against the gold's sign
    gold, length = inputs.gold[test], inputs.length_diff[test]
    common = dict(model="minilm", max_length=args.max_length, train_layers="top:2", epochs=args.epochs, lr=5e-5,
                  head_lr=5e-4, batch_size=16, eval_every=0, save_every=50, eval_test=False, init_seed=seed * 100)
    out: dict = {}
    diffs: dict[str, np.ndarray] = {}
    members, val_acc = [], []
    for m in range(args.members):
        res = train_reward_model(TrainConfig(output_dir=str(work / f"m{m}"), seed=seed * 100 + m, **common),
                                 train_pairs=train_pairs, eval_pairs=val_pairs)
        members.append(str(res.output_dir / "model"))
        val_acc.append(res.metrics.get("eval/accuracy", float("nan")))
        diffs[f"member{m}"] = diffs_of(res.model, test_pairs)
    diffs["bt"] = diffs["member0"]
    best = int(np.nanargmax(val_acc))
    diffs["best_member"] = diffs[f"member{best}"]
    diffs["ensemble_mean"] = np.mean([diffs[f"member{m}"] for m in range(args.members)], axis=0)
    warm = average_reward_models(members, work / "warm" / "model")
    diffs["warm"] = diffs_of(warm, test_pairs)
    odin = train_reward_model(TrainConfig(output_dir=str(work / "odin"), objective="odin", seed=seed * 100, **common),
                              train_pairs=train_pairs, eval_pairs=val_pairs)
    diffs["odin"] = diffs_of(odin.model, test_pairs)
    # the paper's presets: the audit ensemble's strength (cross-fitted heads on the frozen features) on the pool
    mean = np.nanmean(inputs.proxy.ensemble(y, seed=seed), axis=0)[pool]
    for preset, objective in (("flip", "bt"), ("margin", "margin")):
        cleaned, _ = denoise_pairs(train_pairs, mean, DenoiseConfig(preset=preset, fraction=0.1))
        res = train_reward_model(TrainConfig(output_dir=str(work / preset), objective=objective, seed=seed * 100,
                                             **common), train_pairs=cleaned, eval_pairs=val_pairs)
        diffs[preset] = diffs_of(res.model, test_pairs)
    for name, d in diffs.items():
        if not name.startswith("member"):
            out[name] = grade(d, gold, length)
    out["members"] = {f"member{m}": {**grade(diffs[f"member{m}"], gold, length), "val_accuracy_vs_labels": val_acc[m]}
                      for m in range(args.members)}
    out["best_member_index"] = best
    out["labels_against_gold"] = float(labels["against_gold"].to_numpy()[pool].mean())
    return out


def summarize(runs: list[dict]) -> dict:
    methods = [k for k in runs[0] if isinstance(runs[0][k], dict) and "gold_accuracy" in runs[0][k]]
    table = {}
    for m in methods:
        table[m] = {}
        for key in ("gold_accuracy", "gold_accuracy_deconfounded", "length_spearman"):
            vals = [r[m][key] for r in runs]
            table[m][key] = float(np.mean(vals))
            table[m][f"{key}_std"] = float(np.std(vals))
    bt = table["bt"]
    best = max((m for m in table if m != "bt"), key=lambda m: table[m]["gold_accuracy_deconfounded"])
    return {"methods": table, "seeds": len(runs), "best_method_deconfounded": best,
            "best_minus_bt": {k: table[best][k] - bt[k] for k in ("gold_accuracy", "gold_accuracy_deconfounded",
                                                                   "length_spearman")},
            "warm_minus_best_member": table["warm"]["gold_accuracy"] - table["best_member"]["gold_accuracy"],
            "warm_minus_ensemble_mean": table["warm"]["gold_accuracy"] - table["ensemble_mean"]["gold_accuracy"],
            "runs": runs}


def bon_prompts(inputs, args) -> list:
    """Held-out prompts for best-of-n: single-turn (under 300 characters), from pairs of seed 0's test split whose
    prompt no seed's training pool or validation pairs hold, in a seeded order (seed 0): ``args.bon_prompts``."""
    def text(p) -> str:
        return json.dumps(p.prompt, sort_keys=True)
    used = set()
    for seed in range(args.seeds):
        pool, val_idx, _ = case_indices(inputs, seed, args)
        used |= {text(inputs.pairs[i]) for i in pool + val_idx[: args.test // 2]}
    _, _, test = case_indices(inputs, 0, args)
    seen, picked = set(), []
    for i in test:
        p = inputs.pairs[i]
        if (len(p.prompt) == 1 and len(p.prompt[0]["content"]) < 300 and text(p) not in used
                and text(p) not in seen):
            seen.add(text(p))
            picked.append(p)
    order = np.random.default_rng(0).permutation(len(picked))
    return [picked[k] for k in order[: args.bon_prompts]]


def bon_block(inputs, args, best: str) -> dict:
    """Best-of-n against the gold for ``bt`` and ``best`` (the method best on the confounded lab's de-confounded
    pairs), trained on the confounded labels: SmolLM2-135M-Instruct samples ``args.bon_n`` responses to each held-out
    prompt (llama.cpp, seeded per sample, cached in runs/lab/bon_samples.jsonl as benchmarks/lab_bon.py's), each
    seed's two RMs pick the best of n, and the gold grades the pick; the picked response's length (MiniLM tokens)
    says how far the pick leans on length. Exact expectations over draws (`rmkit.bon.best_of_n_expectation`)."""
    picked = bon_prompts(inputs, args)
    pid = [p.id for p in picked]
    # The cache is keyed by prompt id and sample index only: another length cap gets a file of its own (48 is
    # lab_bon.py's, whose samples it shares).
    cache_name = "bon_samples.jsonl" if args.bon_max_tokens == 48 else f"bon_samples_t{args.bon_max_tokens}.jsonl"
    got = sample_llamacpp([list(p.prompt) for p in picked], args.bon_n, max_tokens=args.bon_max_tokens,
                          temperature=1.0, out=ROOT / "runs" / "lab" / cache_name, ids=pid, threads=args.bon_threads,
                          parallel=16)
    flat_p = [list(p.prompt) for p in picked for _ in range(args.bon_n)]
    texts = [t for i in pid for t in got["samples"][i]]
    flat_r = [[{"role": "assistant", "content": t}] for t in texts]
    shape = (len(pid), args.bon_n)
    cache = Path(args.work) / "bon"
    cache.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(json.dumps([pid, texts]).encode()).hexdigest()[:16]

    def cached(name: str, compute) -> np.ndarray:
        path = cache / f"{name}_{key}.npy"
        if not path.exists():
            np.save(path, compute())
        return np.load(path)

    gold = cached("gold", lambda: load_gold_saved(GOLD.with_suffix(".json")).score(flat_p, flat_r, progress=True)
                  .reshape(shape))
    length = text_lengths(texts, "minilm")[0].reshape(shape).astype(np.float64)
    ns = bon_ns(args.bon_n)
    folders = {"bt": "m0", best: best}
    curves: dict[str, dict[str, list]] = {m: {"gold_reward": [], "picked_length": []} for m in folders}
    for seed in range(args.seeds):
        for method, folder in folders.items():
            path = Path(args.work) / "confounded" / f"seed{seed}" / folder / "model"
            proxy = cached(f"{method}_seed{seed}", lambda path=path: RewardModel.from_pretrained(
                str(path), max_length=args.max_length).score(flat_p, flat_r, batch_size=64).numpy().reshape(shape))
            curves[method]["gold_reward"].append(bon_curve(proxy, gold, ns))
            curves[method]["picked_length"].append(bon_curve(proxy, length, ns))
    out = {"n": ns, "prompts": len(pid), "samples_per_prompt": args.bon_n, "methods": {}}
    for method, c in curves.items():
        g, n_len = np.array(c["gold_reward"]), np.array(c["picked_length"])
        out["methods"][method] = {"gold_reward": g.mean(0).tolist(), "gold_reward_seed_std": g.std(0).tolist(),
                                  "picked_length": n_len.mean(0).tolist(),
                                  "picked_length_seed_std": n_len.std(0).tolist()}
    # Length at equal gold reward: each method's (gold, length) curve read at gold levels both reach.
    b, o = out["methods"]["bt"], out["methods"][best]
    lo, hi = max(min(b["gold_reward"]), min(o["gold_reward"])), min(max(b["gold_reward"]), max(o["gold_reward"]))
    levels = np.linspace(lo, hi, 5) if hi > lo else np.array([])

    def at(m: dict) -> list[float]:
        order = np.argsort(m["gold_reward"])
        return np.interp(levels, np.array(m["gold_reward"])[order], np.array(m["picked_length"])[order]).tolist()
    out["length_at_equal_gold"] = {"gold_levels": levels.tolist(), "bt": at(b), best: at(o)}
    out["at_largest_n"] = {m: {"gold_reward": v["gold_reward"][-1], "picked_length": v["picked_length"][-1]}
                           for m, v in out["methods"].items()}
    out["sample_mean_length"] = float(length.mean())
    out["best_method"] = best
    out["max_tokens"] = args.bon_max_tokens
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labs", default="confounded,flips_0.2")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--bonus", type=float, default=1.0)
    parser.add_argument("--pool", type=int, default=800, help="training pairs (a seeded sample of the train split)")
    parser.add_argument("--test", type=int, default=800, help="test pairs graded (a seeded sample of the test split)")
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--bon", action="store_true",
                        help="only the best-of-n block: bt against the confounded lab's best method (its runs reused)")
    parser.add_argument("--bon-prompts", type=int, default=50)
    parser.add_argument("--bon-n", type=int, default=64)
    parser.add_argument("--bon-threads", type=int, default=2, help="llama.cpp threads for the samples")
    parser.add_argument("--bon-max-tokens", type=int, default=48,
                        help="new tokens per sample (48: cheap, but nearly every sample hits the cap)")
    parser.add_argument("--work", default=str(ROOT / "runs" / "robust_rm"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "robust_rm.json"))
    args = parser.parse_args()
    cfg = load_config(LabConfig, ROOT / "configs" / "lab_cpu.yaml")
    cfg.data = str((ROOT / cfg.data).resolve())
    inputs = load_lab_inputs(cfg, GOLD)
    out_path = Path(args.out)
    result = json.loads(out_path.read_text()) if out_path.exists() else {}
    result.pop("provenance", None)
    result["settings"] = {k: v for k, v in vars(args).items() if k not in ("work", "out")}
    if args.bon:
        result["bon"] = bon_block(inputs, args, result["confounded"]["best_method_deconfounded"])
        write_result(out_path, result)
        print(json.dumps({k: v for k, v in result["bon"].items() if k != "methods"}, indent=1))
        return
    for lab in args.labs.split(","):
        runs = []
        for seed in range(args.seeds):
            t0 = time.time()
            runs.append(run_case(inputs, lab, seed, args, Path(args.work) / lab / f"seed{seed}"))
            print(f"{lab} seed {seed}: {time.time() - t0:.0f} s", {k: round(v["gold_accuracy_deconfounded"], 3)
                                                                   for k, v in runs[-1].items()
                                                                   if isinstance(v, dict) and "gold_accuracy" in v},
                  flush=True)
            result[lab] = summarize(runs)
            write_result(out_path, result)
    print(json.dumps({k: {m: v["methods"][m] for m in v["methods"]} for k, v in result.items()
                      if isinstance(v, dict) and "methods" in v}, indent=1)[:3000])


if __name__ == "__main__":
    main()
