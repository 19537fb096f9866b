"""``rmkit bon``: best-of-n sampling from any causal LM, picked by any reward model or ensemble.

For each prompt, ``n`` responses are sampled (seeded per prompt, so a resumed run samples the same),
every response is scored (each member's reward too, for an ensemble), and the highest-scoring one is
the pick. Outputs in ``output_dir``:

- ``samples.jsonl``: one line per prompt as it is sampled (``id``, ``prompt``, ``responses``); a killed run
  resumes after the prompts it holds, a run with a larger n draws only the samples it lacks (a prompt's samples
  for n begin with its samples for any smaller n), and sampling settings or prompt texts other than those held are
  refused, named;
- ``raw_scores.parquet``: every sample's raw rewards (each member's, the gold's), written a block of prompts at a
  time, so a killed or extended run scores only what it lacks (rescored whole when the models, precision or batch
  size change; ``raw_scores.json`` says which);
- ``scores.parquet``: every sample (``id``, ``k``, ``response``, ``reward``, and ``member_<m>`` for ensembles;
  ``gold`` with a gold);
- ``best.jsonl``: the pick per prompt with its reward;
- ``summary.json``: mean reward of the picks and of all samples, KL_bon = log n - (n - 1) / n; with a gold, the
  overoptimization curve (`gold_study`) too, drawn in ``bon_curve.png``.

`best_of_n_expectation` is the unbiased estimate (Nakano et al. 2021; Gao et al. 2022) of the reward
of the best-of-m pick for every m <= n from one set of n samples. Graded by a **gold** RM (``--gold``: the lab's
gold, `rmkit.gold`, or any RM that plays the human), it is the overoptimization curve of Gao et al. 2022,
Fig. 1: `study_bon` draws it for a single RM and an ensemble's mean, min (worst case) and uwo (mean - lambda var,
Coste et al. 2023) picks, each with its peak-to-last drop (`drop_interval`) and its gap to the single RM at the
largest n (`gap_interval`), 95% intervals over prompts.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from .config import save_config, validate
from .data import data_folder_guard
from .files import check_output_dir, model_identity, write_json, write_jsonl, write_table
from .gold import gold_scorer
from .hardware import autocast, resolve_device, resolve_precision
from .intervals import mean_interval
from .metaset import read_sample_records
from .policy import SamplingConfig, check_resume, load_policy, load_prompts, sample_responses
from .reward_ensemble import EnsembleRewardModel, aggregate, load_reward_model
from .configs.bon import BonConfig  # noqa: F401 - the settings, beside the job


def kl_bon(n: int) -> float:
    """KL divergence of best-of-n sampling from the policy: ``log n - (n - 1) / n`` (Stiennon et al. 2020)."""
    return math.log(n) - (n - 1) / n


def best_of_n_expectation(proxy: np.ndarray, gold: np.ndarray, m: int) -> float:
    """Expected ``gold`` of the sample with the highest ``proxy`` among ``m`` drawn without replacement from the
    ``n`` samples of one prompt: ``sum_i gold_(i) C(n - i, m - 1) / C(n, m)`` with samples ranked by ``proxy``
    (``i = 1`` the highest); exact, and the same for every draw order."""
    proxy, gold = np.asarray(proxy, np.float64), np.asarray(gold, np.float64)
    n = len(proxy)
    if not 1 <= m <= n:
        raise ValueError(f"m must be in [1, {n}], got {m}")
    order = np.argsort(-proxy, kind="stable")
    return float((gold[order] * _rank_weights(n, m)).sum())


@functools.lru_cache(maxsize=256)
def _rank_weights(n: int, m: int) -> np.ndarray:
    """``C(n - i, m - 1) / C(n, m)`` for ranks i = 1..n: the same for every prompt with n samples, so a table of
    many prompts computes these big-integer ratios once per (n, m)."""
    w = np.array([math.comb(n - k, m - 1) for k in range(1, n + 1)], dtype=np.float64) / math.comb(n, m)
    w.flags.writeable = False
    return w


def bon_table(proxy: np.ndarray, gold: np.ndarray, ns: Sequence[int]) -> np.ndarray:
    """`best_of_n_expectation` of every prompt at every n: ``(P, len(ns))`` from ``proxy`` and ``gold`` ``(P, N)``
    (a curve per prompt: intervals over prompts resample its rows)."""
    return np.array([[best_of_n_expectation(p, g, n) for n in ns] for p, g in zip(proxy, gold)], dtype=np.float64)


def bon_curve(proxy: np.ndarray, gold: np.ndarray, ns: Sequence[int]) -> list[float]:
    """Mean over prompts of `best_of_n_expectation` for each n: ``proxy`` and ``gold`` are ``(P, N)``."""
    return bon_table(proxy, gold, ns).mean(axis=0).tolist()


def drop_interval(table: np.ndarray, *, bootstrap: int = 2000, seed: int = 0) -> dict:
    """How far a best-of-n curve falls from its peak to its last n, with a 95% interval over prompts.

    ``table (P, len(ns))``: per-prompt gold rewards (`rmkit.bon.bon_table`). The peak is the mean curve's
    argmax, held fixed while prompts are resampled, so the interval is of one difference, gold at the peak n
    minus gold at the largest n: a drop is ``established`` only where the interval's lower end is above 0."""
    curve = table.mean(axis=0)
    peak = int(np.argmax(curve))
    diff = table[:, peak] - table[:, -1]
    lo, hi = mean_interval(diff, bootstrap=bootstrap, seed=seed)
    return {"drop": float(diff.mean()), "ci95": [lo, hi], "peak_index": peak, "established": bool(lo > 0)}


def gap_interval(table: np.ndarray, baseline: np.ndarray, *, bootstrap: int = 2000, seed: int = 0) -> dict:
    """How much more gold reward one pick gets than another at the largest n, with a 95% interval over prompts.

    ``table``, ``baseline (P, len(ns))``: per-prompt best-of-n curves of two proxies on the same samples (e.g. a
    conservative ensemble and the single RM). Paired by prompt, so what the prompts share cancels. Unlike
    ``conservative_recovery``, a ratio over the single RM's drop, it is defined where nothing drops: ``established``
    where the interval is above 0 (the pick is better), ``worse`` where it is below."""
    diff = table[:, -1] - baseline[:, -1]
    lo, hi = mean_interval(diff, bootstrap=bootstrap, seed=seed)
    return {"gap": float(diff.mean()), "ci95": [lo, hi], "established": bool(lo > 0), "worse": bool(hi < 0)}


def bon_variant_tables(gold: np.ndarray, single: np.ndarray, members: np.ndarray, ns: Sequence[int], *,
                       uwo_lambda: float = 0.5) -> dict[str, np.ndarray]:
    """Per-prompt best-of-n curves ``(P, len(ns))`` (`rmkit.bon.bon_table`) of the single RM, the gold itself
    (``oracle_gold``) and the ensemble's aggregations (mean, min, uwo over members z-scored over all samples).
    Shapes as in `study_bon`."""
    z = (members - members.mean(axis=(1, 2), keepdims=True)) / members.std(axis=(1, 2), keepdims=True)
    flat = z.reshape(z.shape[0], -1)
    variants = {"single": single, "oracle_gold": gold}
    for how in ("mean", "min", "uwo"):
        variants[how] = aggregate(flat, how, uwo_lambda=uwo_lambda).reshape(gold.shape)
    return {k: bon_table(v, gold, ns) for k, v in variants.items()}


def study_bon(gold: np.ndarray, single: np.ndarray, members: np.ndarray, ns: Sequence[int], *,
              uwo_lambda: float = 0.5, seed: int = 0) -> dict:
    """The overoptimization curve of best-of-n (Gao et al. 2022, Fig. 1) for each proxy variant.

    ``gold (P, N)``: gold rewards of N samples for each of P prompts; ``single (P, N)``: one proxy RM;
    ``members (M, P, N)``: an ensemble's member rewards (z-scored per member over all samples, so
    members of different scales count alike). Variants: single, mean, min, uwo. For each n: the mean gold
    reward of the sample each proxy picks among n (exact expectation over draws), against KL_bon.
    ``conservative_recovery``: the share of the single RM's drop from its peak gold reward (at the largest
    n) that the best conservative aggregation (min or uwo) recovers; NaN unless ``drops["single"]`` (the drop with
    its interval over prompts, `drop_interval`, as for every variant) is ``established``.
    ``vs_single_at_largest_n``: per aggregation, its gold reward minus the single RM's at the largest n, with an
    interval over prompts (`gap_interval`): what an ensemble buys where nothing drops.
    ``oracle_gain_share``: per variant, its gain in gold reward from n = 1 to the largest n over the gold's own
    (the oracle picking by the gold).
    """
    tables = bon_variant_tables(gold, single, members, ns, uwo_lambda=uwo_lambda)
    return summarize_bon(tables, ns, samples_per_prompt=int(gold.shape[1]), uwo_lambda=uwo_lambda, seed=seed)


def recovery_share(drop: float, established: bool, single_end: float, other_end: float) -> float:
    """Coste et al.'s measure: the share of the single proxy's drop from its gold peak (``drop`` = peak - end > 0)
    that another reward recovers at the end, ``(other_end - single_end) / drop``. NaN unless the drop is
    ``established`` (its interval over prompts above 0): a ratio over a drop the prompts do not establish is noise
    over noise (0.0006 of gold gives 177). Best-of-n (`summarize_bon`) and PPO (benchmarks/lab_ppo.py) share it."""
    if not established or not drop > 1e-12:
        return float("nan")
    return (other_end - single_end) / drop


def summarize_bon(tables: dict[str, np.ndarray], ns: Sequence[int], *, samples_per_prompt: int,
                  uwo_lambda: float = 0.5, seed: int = 0) -> dict:
    """`study_bon`'s result from per-prompt curves already computed (`bon_variant_tables`)."""
    curves = {k: t.mean(axis=0).tolist() for k, t in tables.items()}
    single_curve = curves["single"]
    peak = max(single_curve)
    drop = peak - single_curve[-1]
    best_cons = max(("min", "uwo"), key=lambda k: curves[k][-1])
    drops = {k: drop_interval(t, seed=seed) for k, t in tables.items() if k != "oracle_gold"}
    recovery = recovery_share(drop, drops["single"]["established"], single_curve[-1], curves[best_cons][-1])
    # Where nothing drops, how much of the gold's own gain from n = 1 to the largest n each pick gets.
    oracle_gain = curves["oracle_gold"][-1] - curves["oracle_gold"][0]
    gain_share = {k: (c[-1] - c[0]) / oracle_gain if oracle_gain > 0 else float("nan") for k, c in curves.items()}
    return {"n": list(ns), "kl_bon": [kl_bon(n) for n in ns], "gold_reward": curves, "uwo_lambda": uwo_lambda,
            "prompts": int(tables["single"].shape[0]), "samples_per_prompt": samples_per_prompt,
            "single_peak_n": ns[int(np.argmax(single_curve))], "single_drop_from_peak": drop,
            "drops": drops,
            "vs_single_at_largest_n": {k: gap_interval(tables[k], tables["single"], seed=seed)
                                       for k in ("mean", "min", "uwo")},
            "best_conservative": best_cons,
            "conservative_recovery": recovery, "oracle_gain_share": gain_share}


def one_member_table(gold: np.ndarray, members: np.ndarray, ns: Sequence[int]) -> np.ndarray:
    """The expected per-prompt best-of-n curve ``(P, len(ns))`` of one member drawn at random as the single RM: the
    average of each member's `bon_table`. ``gold (P, N)``, ``members (M, P, N)``."""
    return np.mean([bon_table(m, gold, ns) for m in members], axis=0)


def each_member_alone(tables: dict[str, np.ndarray], gold: np.ndarray, members: np.ndarray, ns: Sequence[int], *,
                      seed: int = 0) -> dict:
    """Every member of the ensemble as the single RM: the control that tells an ensemble's gain from one member's
    luck or weakness (Coste et al. compare against the ensemble's own members). ``tables``: `bon_variant_tables`'
    output; ``gold (P, N)``, ``members (M, P, N)``. Returns ``single_each_member`` (M curves) and
    ``single_mean_over_members``: their average per prompt, its drop from its peak (`drop_interval`) and each
    aggregation's gap to it at the largest n (`gap_interval`)."""
    avg = one_member_table(gold, members, ns)
    return {"single_each_member": [bon_curve(m, gold, ns) for m in members],
            "single_mean_over_members": {
                "gold_reward": avg.mean(axis=0).tolist(), "drop": drop_interval(avg, seed=seed),
                "aggregations_vs_it_at_largest_n": {k: gap_interval(tables[k], avg, seed=seed)
                                                    for k in ("mean", "min", "uwo")}}}


def _raw_scores(cfg: BonConfig, rm, gold_rm, ids: Sequence[str], prompts: Sequence, done: dict, out: Path,
                identity: dict, progress: bool) -> tuple:
    """Every sample's raw rewards, one row per (id, k) in run order: ``raw_<m>`` per member of an ensemble (``raw``
    for one RM) and ``gold``. Scored a block of prompts at a time into raw_scores.parquet, so a killed or extended
    run scores only the blocks it lacks; a block's samples are scored together (the same batches whenever it is
    scored), and the file is valid only for the same models, precision and batch size (``identity``), else
    scored afresh. Returns the table and the number of samples scored now."""
    import pandas as pd
    from tqdm.auto import tqdm

    path, meta = out / "raw_scores.parquet", out / "raw_scores.json"
    kept = pd.DataFrame()
    if path.exists() and meta.exists() and json.loads(meta.read_text()) == json.loads(json.dumps(identity)):
        kept = pd.read_parquet(path)
    write_json(meta, identity)
    valid = {(r.id, r.k, r.response) for r in kept[["id", "k", "response"]].itertuples()} if len(kept) else set()
    per_block = max(1, 1024 // cfg.n)
    blocks = [ids[b: b + per_block] for b in range(0, len(ids), per_block)]
    todo = [blk for blk in blocks if any((i, k, t) not in valid for i in blk for k, t in enumerate(done[i]))]
    where = {i: k for k, i in enumerate(ids)}
    total = sum(len(done[i]) for blk in todo for i in blk)
    bar = tqdm(total=total, desc="scoring", unit="sample", disable=not progress or not todo)
    for blk in todo:
        flat_p = [prompts[where[i]] for i in blk for _ in done[i]]
        flat_r = [[{"role": "assistant", "content": t}] for i in blk for t in done[i]]
        part = pd.DataFrame({"id": [i for i in blk for _ in done[i]], "k": [k for i in blk for k in range(len(done[i]))],
                             "response": [r[0]["content"] for r in flat_r]})
        if isinstance(rm, EnsembleRewardModel):
            for m, r in enumerate(rm.raw_member_scores(flat_p, flat_r, batch_size=cfg.rm_batch_size)):
                part[f"raw_{m}"] = r
        else:
            part["raw"] = rm.score(flat_p, flat_r, batch_size=cfg.rm_batch_size).float().numpy()
        if gold_rm is not None:
            part["gold"] = gold_rm.score(flat_p, flat_r, batch_size=cfg.rm_batch_size)
        kept = pd.concat([kept[~kept["id"].isin(blk)], part], ignore_index=True) if len(kept) else part
        write_table(path, kept)
        bar.update(len(part))
    bar.close()
    order = pd.DataFrame({"id": [i for i in ids for _ in done[i]], "k": [k for i in ids for k in range(len(done[i]))]})
    return order.merge(kept, on=["id", "k"], how="left", validate="one_to_one"), total


def _rewards(rm, raw) -> None:
    """``reward`` of every row of ``raw`` (and, for an ensemble, normalised ``member_<m>`` columns; the z-score
    reference is these samples where the ensemble carries no statistics of its own)."""
    if not isinstance(rm, EnsembleRewardModel):
        raw["reward"] = raw["raw"]
        return
    scores = np.stack([raw[f"raw_{m}"].to_numpy() for m in range(len(rm.members))])
    if rm.normalize == "zscore" and rm.stats is None:
        rm.fit_normalization_raw(scores)
    members = rm.normalized(scores)
    for m, r in enumerate(members):
        raw[f"member_{m}"] = r
    raw["reward"] = rm.combine(members)


def read_samples(path: str | Path) -> dict[str, list[str]]:
    """Responses by prompt id from a samples JSONL, as a resumed run reads it (`rmkit.metaset.read_sample_records`:
    a later line for an id supersedes an earlier one, a line cut short by a kill is skipped)."""
    return sample_responses_of(read_sample_records(path))


def sample_responses_of(records: dict[str, dict]) -> dict[str, list[str]]:
    """Responses by prompt id from the records `read_sample_records` (or `policy.check_resume`) returns."""
    return {i: rec.get("responses", []) for i, rec in records.items()}


def run_bon(cfg: BonConfig, *, progress: bool = True) -> dict:
    """Sample, score and pick (see the module docstring); a rerun resumes after the prompts already sampled."""
    from tqdm.auto import tqdm

    validate(cfg)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    ids, prompts, skipped = load_prompts(cfg.data, cfg)
    end = None if cfg.max_prompts is None else cfg.offset + cfg.max_prompts
    ids, prompts = ids[cfg.offset: end], prompts[cfg.offset: end]
    out = check_output_dir(cfg.output_dir, not_in=data_folder_guard(cfg.data))
    samples_path = out / "samples.jsonl"
    records = check_resume(samples_path, out / "config.yaml", cfg, ids, prompts)  # not n: a larger n extends them
    save_config(cfg, out / "config.yaml")
    # Samples come in whole batches of batch_size, each drawn with its own seed (`sample_responses`), so a
    # prompt's samples for a larger n begin with those for a smaller one: extending n draws only the new batches.
    bs = cfg.batch_size
    held = {i: r[: len(r) - len(r) % bs] for i, r in sample_responses_of(records).items()}
    todo = [k for k, i in enumerate(ids) if len(held.get(i, ())) < cfg.n]
    drawn = 0
    if todo:
        model, tok = load_policy(cfg.policy)
        model.to(device)
        part = SamplingConfig(**{f: getattr(cfg, f) for f in SamplingConfig.__dataclass_fields__})
        for k in tqdm(todo, desc="best-of-n", unit="prompt", disable=not progress):
            part.seed = cfg.seed * 1_000_003 + cfg.offset + k  # per prompt: the same samples resumed or not
            have = held.get(ids[k], [])
            more = -(-cfg.n // bs) * bs - len(have)
            (new,) = sample_responses(model, tok, [prompts[k]], part, k=more, first_batch=len(have) // bs)
            held[ids[k]], drawn = have + new, drawn + len(new)
            with samples_path.open("a") as f:
                f.write(json.dumps({"id": ids[k], "prompt": list(prompts[k]), "responses": held[ids[k]]}) + "\n")
        del model
    done = {i: held[i][: cfg.n] for i in ids}
    rm = load_reward_model(cfg.reward_model, aggregation=cfg.aggregation, uwo_lambda=cfg.uwo_lambda).to(device)
    gold_rm = gold_scorer(cfg.gold, device=cfg.device, precision=precision) if cfg.gold else None
    identity = {"reward_model": model_identity(cfg.reward_model), "gold": model_identity(cfg.gold or ""),
                "device": device.type, "precision": precision, "rm_batch_size": cfg.rm_batch_size}
    with autocast(device, precision):
        table, scored = _raw_scores(cfg, rm, gold_rm, ids, prompts, done, out, identity, progress)
    _rewards(rm, table)
    table = table.drop(columns=[c for c in table.columns if c.startswith("raw")])
    gold_info = None
    if gold_rm is not None:
        # A gold that is also a member grades the RM against itself: the curve would say nothing, so say so.
        same = [m for m in cfg.reward_model.split(",") if Path(m).resolve() == Path(cfg.gold).resolve()]
        gold_info = {**gold_rm.info, "is_a_member": bool(same)}
        if same:
            print(f"rmkit bon: warning: the gold {cfg.gold} is also a reward model of this run: its curve grades "
                  "that RM against itself", file=sys.stderr)
    table = table[[c for c in table.columns if c != "gold"] + (["gold"] if "gold" in table else [])]
    write_table(out / "scores.parquet", table)
    best = table.loc[table.groupby("id", sort=False)["reward"].idxmax()]
    write_jsonl(out / "best.jsonl", ({"id": r.id, "k": int(r.k), "response": r.response, "reward": float(r.reward)}
                                     for r in best.itertuples()))
    summary = {"prompts": len(ids), "n": cfg.n, "kl_bon": kl_bon(cfg.n), "best_reward_mean": float(best["reward"].mean()),
               "sample_reward_mean": float(table["reward"].mean()), "sampled_now": len(todo), "drawn_now": drawn,
               "scored_now": scored,
               "reward_model": cfg.reward_model, "source_rows_without_prompt": len(skipped),
               "device": str(device), "precision": precision}
    if isinstance(rm, EnsembleRewardModel):
        summary.update(aggregation=rm.aggregation, uwo_lambda=rm.uwo_lambda, members=rm.names,
                       normalization=rm.stats)
    if gold_info is not None:
        summary["gold"] = {**gold_info, "best_gold_mean": float(best["gold"].mean()),
                           "sample_gold_mean": float(table["gold"].mean())}
        summary["overoptimization"] = gold_study(table, uwo_lambda=summary.get("uwo_lambda", 0.5), seed=cfg.seed)
        plot_bon_curves(summary["overoptimization"], out / "bon_curve.png",
                        title=f"best-of-n: {len(ids)} prompts x {cfg.n} samples\ngold: {Path(cfg.gold).name}")
    write_json(out / "summary.json", summary)
    return summary


def bon_ns(n: int) -> list[int]:
    """The n of a best-of-n curve from ``n`` samples: 1, 2, 4, ... and ``n`` itself."""
    ns = [2 ** k for k in range(int(math.log2(n)) + 1)]
    return ns if ns[-1] == n else ns + [n]


def gold_study(table, *, uwo_lambda: float = 0.5, seed: int = 0) -> dict:
    """The overoptimization curve of a `run_bon` scores table with a ``gold`` column (one row per sample: ``id``,
    ``k``, ``reward``, ``gold``, and ``member_<m>`` for an ensemble; every prompt with the same number of samples).

    ``this_rm``: the pick of the run's own reward (its aggregation and normalisation). For an ensemble also
    `study_bon`'s variants (member 0 as the single RM; mean, min, uwo over z-scored members) with their drops
    and their gap to the single RM at the largest n. ``oracle_gold``: the gold picking for itself."""
    order = list(dict.fromkeys(table["id"]))
    wide = {c: table.pivot(index="id", columns="k", values=c).loc[order].to_numpy(np.float64)
            for c in table.columns if c in ("reward", "gold") or c.startswith("member_")}
    gold, reward = wide["gold"], wide["reward"]
    ns = bon_ns(gold.shape[1])
    mine = bon_table(reward, gold, ns)
    members = sorted((c for c in wide if c.startswith("member_")), key=lambda c: int(c.split("_")[1]))
    if len(members) > 1:
        stack = np.stack([wide[c] for c in members])
        out = study_bon(gold, stack[0], stack, ns, uwo_lambda=uwo_lambda, seed=seed)
    else:
        oracle = bon_table(gold, gold, ns)
        out = {"n": ns, "kl_bon": [kl_bon(m) for m in ns], "gold_reward": {"oracle_gold": oracle.mean(axis=0).tolist()},
               "prompts": int(gold.shape[0]), "samples_per_prompt": int(gold.shape[1]), "drops": {}}
    out["gold_reward"]["this_rm"] = mine.mean(axis=0).tolist()
    out["drops"]["this_rm"] = drop_interval(mine, seed=seed)
    return out


def plot_bon_curves(result: dict, path: str | Path, *, title: str = "best-of-n") -> None:
    """Gold reward of each pick against KL_bon (Gao et al. 2022, Fig. 1), one line per variant of `gold_study`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"oracle_gold": ":", "this_rm": "-", "single": "-", "mean": "-", "min": "--", "uwo": "--"}
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for name, curve in result["gold_reward"].items():
        ax.plot(result["kl_bon"], curve, styles.get(name, "-"), marker="o", ms=3,
                label={"this_rm": "this run's RM", "single": "single (member 0)"}.get(name, name),
                lw=3 if name == "this_rm" else 1.5, alpha=0.5 if name == "this_rm" else 1.0)
    ax.set_xlabel("KL_bon = log n - (n - 1) / n  (nats)")
    ax.set_ylabel("gold reward of the pick (mean over prompts)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
