"""``rmkit bon``: best-of-n sampling from any causal LM, picked by any reward model or ensemble.

For each prompt, ``n`` responses are sampled (seeded per prompt, so a resumed run samples the same),
every response is scored (each member's reward too, for an ensemble), and the highest-scoring one is
the pick. Outputs in ``output_dir``:

- ``samples.jsonl``: one line per prompt as it is sampled (``id``, ``prompt``, ``responses``); a killed run
  resumes after the prompts it holds;
- ``scores.parquet``: every sample (``id``, ``k``, ``response``, ``reward``, and ``member_<m>`` for ensembles);
- ``best.jsonl``: the pick per prompt with its reward;
- ``summary.json``: mean reward of the picks and of all samples, KL_bon = log n - (n - 1) / n.

`best_of_n_expectation` is the unbiased estimate (Nakano et al. 2021; Gao et al. 2022) of the reward
of the best-of-m pick for every m <= n from one set of n samples: the overoptimization curve.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from .config import save_config, setting, validate
from .data import DataSource
from .files import write_json, write_jsonl
from .hardware import DEVICES_HELP, PRECISION_HELP, autocast, check_device, resolve_device, resolve_precision
from .policy import SamplingConfig, load_policy, load_prompts, sample_responses
from .reward_ensemble import AGGREGATIONS, EnsembleRewardModel, aggregate, load_reward_model


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
    i = np.arange(1, n + 1)
    weights = np.array([math.comb(n - k, m - 1) for k in i], dtype=np.float64) / math.comb(n, m)
    return float((gold[order] * weights).sum())


def bon_table(proxy: np.ndarray, gold: np.ndarray, ns: Sequence[int]) -> np.ndarray:
    """`best_of_n_expectation` of every prompt at every n: ``(P, len(ns))`` from ``proxy`` and ``gold`` ``(P, N)``
    (a curve per prompt: intervals over prompts resample its rows)."""
    return np.array([[best_of_n_expectation(p, g, n) for n in ns] for p, g in zip(proxy, gold)], dtype=np.float64)


def bon_curve(proxy: np.ndarray, gold: np.ndarray, ns: Sequence[int]) -> list[float]:
    """Mean over prompts of `best_of_n_expectation` for each n: ``proxy`` and ``gold`` are ``(P, N)``."""
    return bon_table(proxy, gold, ns).mean(axis=0).tolist()


@dataclass
class BonConfig(SamplingConfig, DataSource):
    """Settings of ``rmkit bon``."""

    data: str = setting("", "prompts: preference data (each pair's prompt) or a JSONL/parquet file with a `prompt` column")
    policy: str = setting("smollm2", "causal LM: hub id, local path, or the alias smollm2")
    reward_model: str = setting("", "a reward model folder or hub id; an ensemble folder (rmkit_ensemble.json); or "
                                    "comma-separated members")
    aggregation: Literal["mean", "min", "uwo"] | None = setting(
        None, "ensembles: mean, min or uwo (default: the ensemble's own)")
    uwo_lambda: float | None = setting(None, "ensembles: lambda of uwo = mean - lambda * var (Coste et al.: 0.5 for "
                                             "best-of-n)")
    n: int = setting(16, "samples per prompt")
    output_dir: str = setting("runs/bon", "where samples.jsonl, scores.parquet, best.jsonl and summary.json go")
    max_prompts: int | None = setting(None, "use N prompts (after the first `offset`)")
    offset: int = setting(0, "skip the first N prompts")
    rm_batch_size: int = setting(32, "texts per reward-model forward pass")
    device: str = setting("auto", DEVICES_HELP)
    precision: Literal["auto", "fp32", "bf16"] = setting("auto", PRECISION_HELP + " (the reward model's scoring)")

    def check(self) -> None:
        check_device(self.device)
        if not self.reward_model:
            raise ValueError("rmkit bon needs a reward model (--reward-model PATH, an ensemble folder, or A,B,C)")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.aggregation is not None and self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")


def _score_samples(rm, table, prompts, responses, batch_size: int) -> None:
    """``reward`` (and, for an ensemble, ``member_m``) columns of ``table``, one row per sample."""
    if isinstance(rm, EnsembleRewardModel):
        if rm.normalize == "zscore" and rm.stats is None:
            rm.fit_normalization(prompts, responses, batch_size=batch_size)  # reference: these samples
        members = rm.member_scores(prompts, responses, batch_size=batch_size)
        for m, r in enumerate(members):
            table[f"member_{m}"] = r
        table["reward"] = aggregate(members, rm.aggregation, uwo_lambda=rm.uwo_lambda)
    else:
        table["reward"] = rm.score(prompts, responses, batch_size=batch_size).float().numpy()


def read_samples(path: str | Path) -> dict[str, list[str]]:
    """Responses by prompt id from a samples JSONL (``{"id", "responses", ...}`` per line), as a resumed run reads
    what it wrote: a later line for the same id supersedes an earlier one, and a line cut short by a kill is
    skipped (that prompt is sampled again). A missing file reads as empty."""
    have: dict[str, list[str]] = {}
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            have[rec["id"]] = rec.get("responses", [])
    return have


def run_bon(cfg: BonConfig, *, progress: bool = True) -> dict:
    """Sample, score and pick (see the module docstring); a rerun resumes after the prompts already sampled."""
    import pandas as pd
    from tqdm.auto import tqdm

    validate(cfg)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    ids, prompts, skipped = load_prompts(cfg.data, cfg)
    end = None if cfg.max_prompts is None else cfg.offset + cfg.max_prompts
    ids, prompts = ids[cfg.offset: end], prompts[cfg.offset: end]
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    samples_path = out / "samples.jsonl"
    done = {i: r for i, r in read_samples(samples_path).items() if len(r) == cfg.n}
    todo = [k for k, i in enumerate(ids) if i not in done]
    if todo:
        model, tok = load_policy(cfg.policy)
        model.to(device)
        part = SamplingConfig(**{f: getattr(cfg, f) for f in SamplingConfig.__dataclass_fields__})
        for k in tqdm(todo, desc="best-of-n", unit="prompt", disable=not progress):
            part.seed = cfg.seed * 1_000_003 + cfg.offset + k  # per prompt: the same samples resumed or not
            (resp,) = sample_responses(model, tok, [prompts[k]], part, k=cfg.n)
            with samples_path.open("a") as f:
                f.write(json.dumps({"id": ids[k], "prompt": list(prompts[k]), "responses": resp}) + "\n")
            done[ids[k]] = resp
        del model
    rm = load_reward_model(cfg.reward_model, aggregation=cfg.aggregation, uwo_lambda=cfg.uwo_lambda).to(device)
    flat_p = [prompts[k] for k in range(len(ids)) for _ in range(cfg.n)]
    flat_r = [[{"role": "assistant", "content": t}] for i in ids for t in done[i]]
    table = pd.DataFrame({"id": [i for i in ids for _ in range(cfg.n)], "k": [k for _ in ids for k in range(cfg.n)],
                          "response": [r[0]["content"] for r in flat_r]})
    with autocast(device, precision):
        _score_samples(rm, table, flat_p, flat_r, cfg.rm_batch_size)
    table.to_parquet(out / "scores.parquet", index=False)
    best = table.loc[table.groupby("id", sort=False)["reward"].idxmax()]
    write_jsonl(out / "best.jsonl", ({"id": r.id, "k": int(r.k), "response": r.response, "reward": float(r.reward)}
                                     for r in best.itertuples()))
    summary = {"prompts": len(ids), "n": cfg.n, "kl_bon": kl_bon(cfg.n), "best_reward_mean": float(best["reward"].mean()),
               "sample_reward_mean": float(table["reward"].mean()), "sampled_now": len(todo),
               "reward_model": cfg.reward_model, "source_rows_without_prompt": len(skipped),
               "device": str(device), "precision": precision}
    if isinstance(rm, EnsembleRewardModel):
        summary.update(aggregation=rm.aggregation, uwo_lambda=rm.uwo_lambda, members=rm.names,
                       normalization=rm.stats)
    write_json(out / "summary.json", summary)
    return summary
