"""Batched scoring of preference pairs, and the metrics TRL logs for a reward model.

Scoring runs under ``torch.inference_mode()``, sorts texts by length so each batch pads little,
and puts the chosen and rejected texts of a pair through the model in the same pass. Rows that are
not usable pairs stay in the output table with their status and empty rewards.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .batching import length_sorted_batches
from .config import save_config, validate
from .data import PreferenceDataset, PreferencePair, data_folder_guard, load_splits, pairs_fingerprint
from .files import atomic_write_text, check_output_dir, write_json, write_table
from .reviews import read_judge_labels  # noqa: F401 - rmkit.scoring.read_judge_labels, as before
from .hardware import autocast, barrier, process_group, resolve_device, resolve_precision
from .models import RewardModel
from .prefix import score_pairs_shared_prefix, supports_shared_prefix
from .configs.scoring import ScoreConfig  # noqa: F401 - the settings, beside the job


def score_token_pairs(
    model,
    chosen_ids: Sequence[Sequence[int]],
    rejected_ids: Sequence[Sequence[int]],
    *,
    batch_size: int = 64,
    progress: bool = False,
    accelerator=None,
    precision: str = "fp32",
    shared_prefix: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Rewards of pre-tokenized pairs: returns ``(chosen_rewards (N,), rejected_rewards (N,))``.

    ``batch_size`` counts texts. Texts are batched by their own length, not as pairs: a pair's two sides can
    differ by hundreds of tokens, and padding the shorter side to the longer was most of this path's waste.
    With an ``accelerator`` on several processes, each scores a shard and the results are gathered.
    ``precision``: ``fp32`` or ``bf16`` (autocast). ``shared_prefix``: a decoder RM runs each pair's prompt once
    (`rmkit.prefix`); ignored for encoders and under several processes.
    """
    from tqdm.auto import tqdm

    core = accelerator.unwrap_model(model) if accelerator is not None else model
    if shared_prefix and supports_shared_prefix(core) and (accelerator is None or accelerator.num_processes == 1):
        with autocast(core.device, precision):
            return score_pairs_shared_prefix(core, chosen_ids, rejected_ids, batch_size=batch_size, progress=progress)
    n = len(chosen_ids)
    texts = list(chosen_ids) + list(rejected_ids)
    batches = length_sorted_batches([len(t) for t in texts], max(1, batch_size))
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    mine = batches[rank::world]
    results: list[tuple[int, float]] = []
    was_training = core.training
    core.eval()
    with torch.inference_mode(), autocast(core.device, precision):
        for idx in tqdm(mine, desc="scoring", disable=not progress or rank != 0, unit="batch"):
            rewards = core(**core.collate([texts[i] for i in idx], core.device)).rewards.float().cpu().numpy()
            results += [(i, float(v)) for i, v in zip(idx, rewards)]
    core.train(was_training)
    if world > 1:
        from accelerate.utils import gather_object

        results = gather_object(results)
    out = np.full(2 * n, np.nan)
    for i, v in results:
        out[i] = v
    chosen, rejected = out[:n], out[n:]
    return chosen, rejected


def pair_metrics(chosen: np.ndarray, rejected: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
    """BT loss, accuracy (ties count half), mean margin, reward mean and std, as TRL logs them."""
    diff = chosen - rejected
    y = np.ones_like(diff) if labels is None else labels
    # -log sigmoid(d) and -log sigmoid(-d), computed stably.
    loss = float(np.mean(y * np.logaddexp(0, -diff) + (1 - y) * np.logaddexp(0, diff)))
    correct = np.where(diff > 0, y, np.where(diff < 0, 1 - y, 0.5))
    rewards = np.concatenate([chosen, rejected])
    return {
        "loss": loss,
        "accuracy": float(np.mean(correct)),
        "margin_mean": float(np.mean(diff)),
        "reward_mean": float(np.mean(rewards)),
        "reward_std": float(np.std(rewards)),
        "pairs": int(len(diff)),
    }


def accuracy_per_subset(chosen: np.ndarray, rejected: np.ndarray, labels: np.ndarray,
                        subsets: np.ndarray) -> dict[str, float]:
    """`pair_metrics` accuracy for each subset."""
    subsets = np.asarray(subsets)
    return {s: pair_metrics(chosen[subsets == s], rejected[subsets == s], labels[subsets == s])["accuracy"]
            for s in sorted(set(subsets))}


def label_views(chosen: np.ndarray, rejected: np.ndarray, labels: np.ndarray, judge: np.ndarray) -> dict[str, float]:
    """Accuracy under the paper's other two views of the labels: the judge's (ties and missing
    judgments excluded) and the subset where judge and original label agree."""
    decided = np.isin(judge, (0.0, 1.0))
    agree = decided & (judge == np.round(labels))
    out: dict[str, float] = {"judge/pairs": int(decided.sum()), "agree/pairs": int(agree.sum())}
    if decided.any():
        out["judge/accuracy"] = pair_metrics(chosen[decided], rejected[decided], judge[decided])["accuracy"]
        out["judge/agreement_with_labels"] = float(agree.sum() / decided.sum())
    if agree.any():
        out["agree/accuracy"] = pair_metrics(chosen[agree], rejected[agree], labels[agree])["accuracy"]
    return out


def score_pairs(model, data: PreferenceDataset | Sequence[PreferencePair], *, batch_size: int = 64,
                progress: bool = False, precision: str = "fp32", shared_prefix: bool = False):
    """Score every row: a DataFrame with id, subset, status, reward_chosen, reward_rejected, diff.

    Accepts a `PreferenceDataset` (every row, usable or not, keeps its place) or a list of pairs.
    """
    import pandas as pd

    if isinstance(data, PreferenceDataset):
        pairs = data.pairs
        meta = list(zip(data.column("id"), data.column("subset"), data.column("status")))
    else:
        pairs = list(data)
        meta = [(p.id, p.subset, p.status) for p in pairs]
    chosen_ids, rejected_ids = model.encode_pairs(pairs)
    rc, rr = score_token_pairs(model, chosen_ids, rejected_ids, batch_size=batch_size, progress=progress,
                               precision=precision, shared_prefix=shared_prefix)
    by_id = {p.id: (c, r, p.label) for p, c, r in zip(pairs, rc, rr)}
    out = pd.DataFrame(meta, columns=["id", "subset", "status"])
    got = [by_id.get(i, (math.nan, math.nan, math.nan)) for i in out["id"]]
    out["reward_chosen"] = [g[0] for g in got]
    out["reward_rejected"] = [g[1] for g in got]
    out["diff"] = out["reward_chosen"] - out["reward_rejected"]
    out["label"] = [g[2] for g in got]
    return out


def _score_in_parts(model, ds: PreferenceDataset, parts: Path, cfg: ScoreConfig, precision: str):
    """Score ``ds`` a chunk at a time, each chunk saved as it finishes; a rerun reuses finished chunks.

    The parts are tied to the settings that produced them: other settings start the parts afresh. Under a
    multi-process launch (``accelerate launch --num_processes K rmkit score ...``) process r scores parts r, r + K,
    ...; rank 0 gathers them (other ranks return None). A killed process's finished parts are kept: a rerun, with
    any number of processes, scores the rest.
    """
    import json
    import shutil

    import pandas as pd
    from tqdm.auto import tqdm

    key = {"data": cfg.data, "model": str(Path(cfg.model).resolve()) if Path(cfg.model).exists() else cfg.model,
           "max_length": model.max_length, "split": cfg.split, "chunk_rows": cfg.chunk_rows,
           "max_pairs": cfg.max_pairs, "seed": cfg.seed,
           "rows": len(ds.rows), "first_id": ds.rows[0].id if ds.rows else None, "precision": precision,
           "pairs": pairs_fingerprint(ds.pairs),  # an edit in place (a swapped pair) makes finished parts stale
           "shared_prefix": cfg.shared_prefix}
    meta = parts / "meta.json"
    rank, world = process_group()
    if rank == 0:
        if parts.exists() and (not meta.exists() or json.loads(meta.read_text()) != key):
            shutil.rmtree(parts)
        parts.mkdir(parents=True, exist_ok=True)
        atomic_write_text(meta, json.dumps(key))
    barrier()  # every process sees the parts folder of these settings
    starts = list(range(0, len(ds.rows), cfg.chunk_rows))
    mine = [k for k in range(len(starts)) if k % world == rank]
    for k in tqdm(mine, desc="scoring parts", unit="part", disable=rank != 0):
        path = parts / f"part-{k:05d}.parquet"
        if not path.exists():
            table = score_pairs(model, PreferenceDataset(ds.rows[starts[k]: starts[k] + cfg.chunk_rows]),
                                batch_size=cfg.batch_size, precision=precision, shared_prefix=cfg.shared_prefix)
            write_table(path, table)  # atomic: only whole parts count as done
    barrier()
    if rank != 0:
        return None
    tables = [pd.read_parquet(parts / f"part-{k:05d}.parquet") for k in range(len(starts))]
    return pd.concat(tables, ignore_index=True) if tables else score_pairs(model, ds, precision=precision)


def run_score(cfg: ScoreConfig) -> dict:
    """Score a dataset with a saved reward model; writes the table and metrics into ``output_dir``."""
    validate(cfg)
    if not cfg.data or not cfg.model:
        raise ValueError("rmkit score needs both data and model")
    out = check_output_dir(cfg.output_dir, not_in=data_folder_guard(cfg.data))
    save_config(cfg, out / "config.yaml")
    ds = cfg.read(cfg.data)
    if cfg.split:
        ds = ds.subset(load_splits(cfg.splits_file)[cfg.split])
    if cfg.max_pairs is not None:
        ds = ds.sample(cfg.max_pairs, seed=cfg.seed)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    model = RewardModel.from_pretrained(cfg.model, max_length=cfg.max_length).to(device)
    table = _score_in_parts(model, ds, out / "parts", cfg, precision)
    if table is None:  # another process of a sharded run: rank 0 writes the tables
        return {}
    write_table(out / "scores.parquet", table)
    write_table(out / "scores.csv", table)
    ok = table.dropna(subset=["diff"])
    rc, rr, labels = ok["reward_chosen"].to_numpy(), ok["reward_rejected"].to_numpy(), ok["label"].to_numpy()
    metrics = pair_metrics(rc, rr, labels)
    metrics["per_subset"] = accuracy_per_subset(rc, rr, labels, ok["subset"].to_numpy())
    metrics["rows"] = len(table)
    metrics["unscored"] = int(table["diff"].isna().sum())
    metrics.update(device=str(device), precision=precision)  # what auto resolved to: rewards move ~1e-3 in bf16
    write_json(out / "metrics.json", metrics)
    return metrics
