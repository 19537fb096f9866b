"""Repeated draws of a study's training pairs: best-of-n for several independent draws of a training pool, each alone
and pooled, so an interval reflects the expected proxy of that size rather than one lucky draw
(benchmarks/lab_bon.py --draws)."""

from __future__ import annotations

import numpy as np

from ..bon import bon_variant_tables, drop_interval, gap_interval, one_member_table, summarize_bon


def train_subset(train: np.ndarray, size: str, *, seed: int, draw: int = 0) -> np.ndarray:
    """The proxies' training pairs: all of ``train`` (``size`` "all") or the first ``size`` of its pairs in a seeded
    order; draw 0 is the headline's order, each later draw another."""
    if size == "all":
        return train.copy()
    order = np.random.default_rng(seed + 1 if draw == 0 else [seed + 1, draw]).permutation(len(train))
    sub = np.zeros_like(train)
    sub[order[np.isin(order, np.flatnonzero(train))][: int(size)]] = True
    return sub


def repeated_draws(score, gold: np.ndarray, train: np.ndarray, size: str, ns: list[int], *, draws: int, seed: int,
                   uwo_lambda: float, first: int = 0) -> dict:
    """Best-of-n for ``draws`` independent draws of ``size`` training pairs, each alone and pooled.

    ``score(sub, seed) -> (single (P, N), members (M, P, N))`` trains the proxies on the pairs of mask ``sub``.
    Pooled: every variant's per-prompt curve averaged over the draws, so its interval over prompts is that of the
    expected proxy of this size rather than of one lucky draw; ``one_member`` is the average of the ensemble's
    members used alone (`rmkit.bon.one_member_table`), a variant of its own here. Draws ``first`` to
    ``first + draws - 1``: a later block of draws confirms what an earlier one found, on pairs it never saw."""
    per_draw, tables = [], []
    for d in range(first, first + draws):
        single, members = score(train_subset(train, size, seed=seed, draw=d), seed + d)
        t = bon_variant_tables(gold, single, members, ns, uwo_lambda=uwo_lambda)
        t["one_member"] = one_member_table(gold, members, ns)
        tables.append(t)
        drops = {k: drop_interval(t[k]) for k in ("single", "one_member")}
        per_draw.append({"single_drop": drops["single"], "one_member_drop": drops["one_member"],
                         "at_largest_n": {k: float(v[:, -1].mean()) for k, v in t.items()}})
        print(f"{size} pairs, draw {d}: single drop {drops['single']['drop']:.4f} "
              f"(established: {drops['single']['established']})", flush=True)
    pooled = {k: np.mean([t[k] for t in tables], axis=0) for k in tables[0]}
    summary = summarize_bon(pooled, ns, samples_per_prompt=gold.shape[1], uwo_lambda=uwo_lambda, seed=seed)
    return {"draws": draws, "first_draw": first, "per_draw": per_draw,
            "single_drops_established": sum(d["single_drop"]["established"] for d in per_draw),
            "one_member_drops_established": sum(d["one_member_drop"]["established"] for d in per_draw),
            "pooled": {k: summary[k] for k in ("gold_reward", "single_peak_n", "single_drop_from_peak", "drops",
                                               "best_conservative", "conservative_recovery", "vs_single_at_largest_n")}
            | {"vs_one_member_at_largest_n": {k: gap_interval(pooled[k], pooled["one_member"], seed=seed)
                                              for k in ("mean", "min", "uwo")}}}
