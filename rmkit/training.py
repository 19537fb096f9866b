"""Reward-model training: one loop on `accelerate`, for this CPU, one GPU, or `accelerate launch`.

The loop reads top to bottom: data, model, optimizer, resume, then the steps. The per-pair objective
is a function ``objective(chosen_rewards, rejected_rewards, batch) -> loss`` chosen by name from
`OBJECTIVES`; `compute_loss` is the single step function that MetaRM and ensembles reuse.

Logged metrics (``metrics.jsonl``, one JSON object per line):

- ``train/loss``, ``train/accuracy``: mean over the optimizer steps since the last log line.
- ``train/lr``: the learning rate of the first parameter group.
- ``eval/loss``, ``eval/accuracy``, ``eval/margin_mean``, ``eval/reward_mean``, ``eval/reward_std``:
  on the validation pairs (see `rmkit.scoring.pair_metrics`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .config import save_config, setting
from .data import DataSource, PreferencePair, get_splits
from .files import atomic_write_text
from .metarm import encode_meta_batch, metarm_backward, tokenize_meta_items
from .policy import read_meta_set
from .losses import bradley_terry_loss, contrastive_instances, simcse_loss, soft_label_loss, swav_loss
from .models import RewardModel, set_dropout, set_trainable
from .scoring import accuracy_per_subset, label_views, pair_metrics, read_judge_labels, score_token_pairs


@dataclass
class TrainConfig(DataSource):
    """Settings of ``rmkit train`` (and of `train_reward_model`)."""

    data: str = setting("../shared/data/hh-rlhf", "preference data: a file, a directory, or a hub dataset name")
    model: str = setting("minilm", "backbone or reward model: hub id, local path, or the alias minilm/smollm2")
    output_dir: str = setting("runs/rm", "where the model, metrics, splits and checkpoints go")
    splits_file: str | None = setting(None, "splits JSON to reuse or create (default: OUTPUT_DIR/splits.json)")
    split_seed: int = setting(0, "seed of the train/validation/test split")
    split_fractions: list[float] = setting([0.7, 0.1, 0.2], "train, validation, test fractions")
    max_length: int = setting(256, "tokens per text; longer texts lose their beginning, never the response")
    train_layers: str = setting("all", "what trains: all, head, or top:N (top N blocks + head)")
    objective: str = setting("bt", "per-pair loss: bt (Bradley-Terry, Eq. 1), margin (BT minus the pair's margin, Eq. 6), "
                                   "or soft (cross-entropy on the pair's label, Eq. 5; with its margin if it has one)")
    epochs: float = setting(1.0, "passes over the training pairs (fractions allowed)")
    batch_size: int = setting(16, "pairs per micro-batch (each pair is two texts)")
    grad_accum: int = setting(1, "micro-batches per optimizer step")
    lr: float = setting(3e-5, "peak learning rate of the backbone")
    head_lr: float | None = setting(None, "learning rate of the scalar head (default: lr)")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    warmup_ratio: float = setting(0.05, "share of the steps spent warming up linearly")
    lr_schedule: str = setting("linear", "after warmup: linear, cosine, or constant")
    max_grad_norm: float = setting(1.0, "global gradient-norm clip (0 disables)")
    seed: int = setting(0, "seed for the head's init, batch order and dropout")
    eval_every: int = setting(100, "evaluate on the validation pairs every N optimizer steps (0: only at the end)")
    save_every: int = setting(100, "write a resumable checkpoint every N optimizer steps (0: never)")
    eval_batch_size: int = setting(64, "texts per forward pass when scoring")
    max_train_pairs: int | None = setting(None, "use only the first N training pairs (quick runs, tests)")
    max_eval_pairs: int | None = setting(None, "use only the first N validation pairs")
    resume: bool = setting(True, "continue from OUTPUT_DIR/checkpoint if one is there")
    eval_test: bool = setting(True, "after training, score the test split (overall and per subset)")
    mixed_precision: str = setting("no", "accelerate's mixed precision: no, fp16 or bf16")
    contrastive: str = setting("none", "contrastive term added to the RM loss (Section 3): none, or a preset: "
                                       "simcse, simcse-diff (beta 1), swav (K 50, beta 0.1), swav-diff (K 20, beta 0.5)")
    contrastive_beta: float | None = setting(None, "weight beta of the contrastive term (default: the preset's)")
    contrastive_temperature: float | None = setting(None, "temperature (default: 0.05 SimCSE, 0.1 SwAV)")
    contrastive_dropout: float = setting(0.05, "dropout that makes the two views, set on every dropout layer (or "
                                                "added after every block of backbones that have none)")
    swav_prototypes: int | None = setting(None, "SwAV: number of prototypes K (default: the preset's)")
    meta_data: str | None = setting(None, "MetaRM (rmkit metarm): meta set JSONL (prompt + k policy responses per line); "
                                          "each step adapts by gradient ascent on J over it, then takes the RM loss there")
    meta_inner_lr: float = setting(0.05, "MetaRM's inner ascent step eta (the paper gives none). The inner step is "
                                         "plain gradient ascent: 0.05 makes it about one AdamW step at lr 1e-5 for "
                                         "MiniLM (|grad J| ~ 1.2)")
    meta_prompts: int = setting(4, "meta-set prompts per step (m)")
    judge_labels: str | None = setting(None, "table (parquet/CSV/JSONL) with columns id, judge_label (1 chosen, "
                                            "0 rejected, 0.5 tie): adds the judge and agreement views to every evaluation")


# ------------------------------------------------------------------------------------------
# Objectives and the step function


def _bt(chosen: torch.Tensor, rejected: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    return bradley_terry_loss(chosen, rejected, weights=batch.get("weight"))


def _bt_margin(chosen: torch.Tensor, rejected: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    if batch.get("margin") is None:
        raise ValueError("objective 'margin' needs a margin for every training pair (a `margin` column)")
    return bradley_terry_loss(chosen, rejected, margin=batch["margin"], weights=batch.get("weight"))


def _soft(chosen: torch.Tensor, rejected: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    return soft_label_loss(chosen, rejected, labels=batch["label"], margin=batch.get("margin"),
                           weights=batch.get("weight"))


Objective = Callable[[torch.Tensor, torch.Tensor, dict[str, Any]], torch.Tensor]
OBJECTIVES: dict[str, Objective] = {"bt": _bt, "margin": _bt_margin, "soft": _soft}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name]


def compute_loss(model, batch: dict[str, Any], objective: Objective,
                 contrastive: "ContrastiveTerm | None" = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass over chosen and rejected texts together; returns the loss and its parts.

    ``batch`` holds ``input_ids``/``attention_mask`` of shape (2B, T) (chosen rows first), and
    optional per-pair tensors (``margin``, ``weight``, ``label``) of shape (B,).

    With a contrastive term the batch goes through the model twice in one pass, stacked (4B, T): each
    row draws its own dropout mask, so the copies are the two views (as two passes would give, but
    one graph, which DDP needs). The RM loss reads the first copy's rewards; the total is
    ``L_rm + beta * L_cl``.
    """
    ids, mask = batch["input_ids"], batch["attention_mask"]
    b = ids.shape[0] // 2
    if contrastive is not None:
        ids, mask = torch.cat([ids, ids]), torch.cat([mask, mask])
    out = model(input_ids=ids, attention_mask=mask)
    chosen, rejected = out.rewards[:b], out.rewards[b: 2 * b]  # (B,), (B,)
    loss = objective(chosen, rejected, batch)
    parts = {"chosen": chosen, "rejected": rejected, "features": out.features[: 2 * b], "rm_loss": loss.detach()}
    if contrastive is not None:
        f = out.features
        cl = contrastive(f[:b], f[b: 2 * b], f[2 * b: 3 * b], f[3 * b:])
        parts["contrastive_loss"] = cl.detach()
        loss = loss + contrastive.beta * cl
    return loss, parts


CONTRASTIVE_PRESETS: dict[str, dict[str, Any]] = {
    # The paper's settings (Section 3); SimCSE's temperature and SwAV's tau/Sinkhorn are the methods' own.
    "simcse": {"method": "simcse", "on": "pairs", "beta": 1.0, "temperature": 0.05},
    "simcse-diff": {"method": "simcse", "on": "diff", "beta": 1.0, "temperature": 0.05},
    "swav": {"method": "swav", "on": "pairs", "beta": 0.1, "temperature": 0.1, "prototypes": 50},
    "swav-diff": {"method": "swav", "on": "diff", "beta": 0.5, "temperature": 0.1, "prototypes": 20},
}


class ContrastiveTerm(torch.nn.Module):
    """The contrastive loss on two views of a batch's features; holds SwAV's learnable prototypes."""

    def __init__(self, method: str, on: str, hidden: int, *, beta: float, temperature: float,
                 prototypes: int = 0, epsilon: float = 0.05, sinkhorn_iters: int = 3):
        super().__init__()
        if method not in ("simcse", "swav"):
            raise ValueError(f"contrastive method must be simcse or swav, got {method!r}")
        self.method, self.on, self.beta, self.temperature = method, on, float(beta), float(temperature)
        self.epsilon, self.sinkhorn_iters = epsilon, sinkhorn_iters
        self.prototypes = torch.nn.Parameter(torch.randn(prototypes, hidden) / hidden ** 0.5) if method == "swav" else None

    @classmethod
    def from_config(cls, cfg: "TrainConfig", hidden: int) -> "ContrastiveTerm | None":
        if cfg.contrastive == "none":
            return None
        if cfg.contrastive not in CONTRASTIVE_PRESETS:
            raise ValueError(f"contrastive must be none or one of {sorted(CONTRASTIVE_PRESETS)}, got {cfg.contrastive!r}")
        p = dict(CONTRASTIVE_PRESETS[cfg.contrastive])
        for key, value in (("beta", cfg.contrastive_beta), ("temperature", cfg.contrastive_temperature),
                           ("prototypes", cfg.swav_prototypes)):
            if value is not None:
                p[key] = value
        return cls(p["method"], p["on"], hidden, beta=p["beta"], temperature=p["temperature"],
                   prototypes=p.get("prototypes", 0))

    def forward(self, chosen1: torch.Tensor, rejected1: torch.Tensor, chosen2: torch.Tensor,
                rejected2: torch.Tensor) -> torch.Tensor:
        v1 = contrastive_instances(chosen1, rejected1, self.on)
        v2 = contrastive_instances(chosen2, rejected2, self.on)
        if self.method == "simcse":
            return simcse_loss(v1, v2, temperature=self.temperature)
        return swav_loss(v1, v2, self.prototypes, temperature=self.temperature, epsilon=self.epsilon,
                         sinkhorn_iters=self.sinkhorn_iters)


def make_batch(model: RewardModel, pairs: Sequence[PreferencePair], chosen_ids, rejected_ids,
               idx: Sequence[int], device) -> dict[str, Any]:
    """Collate pairs ``idx`` into one padded (2B, T) batch plus per-pair fields."""
    batch: dict[str, Any] = model.collate([chosen_ids[i] for i in idx] + [rejected_ids[i] for i in idx], device)
    for key in ("margin", "weight"):
        vals = [getattr(pairs[i], key) for i in idx]
        if all(v is not None for v in vals):
            batch[key] = torch.tensor(vals, dtype=torch.float32, device=device)
        elif any(v is not None for v in vals):
            raise ValueError(f"some training pairs have a {key} and some do not; fill it for all or none")
    batch["label"] = torch.tensor([pairs[i].label for i in idx], dtype=torch.float32, device=device)
    return batch


def length_grouped_batches(lengths: Sequence[int], batch_size: int, *, seed: int, mega: int = 50) -> list[list[int]]:
    """Shuffle, then sort by length inside chunks of ``mega`` batches, then shuffle the batches.

    Batches hold texts of similar length (little padding) while the order stays random (TRL's
    ``group_by_length``). Deterministic for a given seed.
    """
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(lengths), generator=g).tolist()
    batches: list[list[int]] = []
    step = batch_size * mega
    for s in range(0, len(perm), step):
        chunk = sorted(perm[s: s + step], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[k: k + batch_size] for k in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=g).tolist()
    return [batches[i] for i in order]


def _lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    if schedule not in ("linear", "cosine", "constant"):
        raise ValueError(f"lr_schedule must be linear, cosine or constant, got {schedule!r}")

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 1.0 - progress) if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


# ------------------------------------------------------------------------------------------
# Checkpoints: model weights in safetensors; optimizer, scheduler and RNG as plain tensors, read
# back with weights_only=True.


# Settings that may change between a killed run and its resumption; any other change is an error.
_RESUMABLE_CHANGES = {"resume", "eval_every", "save_every", "eval_batch_size", "eval_test", "output_dir"}


def _run_identity(cfg: TrainConfig) -> dict[str, Any]:
    from .config import to_dict

    return {k: v for k, v in to_dict(cfg).items() if k not in _RESUMABLE_CHANGES}


def _save_checkpoint(path: Path, model: RewardModel, optimizer, scheduler, step: int, log_buffer: list,
                     identity: dict[str, Any], extra: torch.nn.Module | None = None,
                     timing: dict[str, float] | None = None) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trainable = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    save_file(trainable, str(tmp / "trainable.safetensors"))
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng,
                "extra": extra.state_dict() if extra is not None else {}}, tmp / "state.pt")
    (tmp / "progress.json").write_text(json.dumps({"step": step, "log_buffer": log_buffer, "config": identity,
                                                   "timing": timing or {}}))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)  # a kill mid-write leaves the previous checkpoint intact


def _load_checkpoint(path: Path, model: RewardModel, optimizer, scheduler, identity: dict[str, Any],
                     extra: torch.nn.Module | None = None) -> tuple[int, list, dict]:
    from safetensors.torch import load_file

    progress = json.loads((path / "progress.json").read_text())
    changed = sorted(k for k in identity if progress.get("config", {}).get(k, identity[k]) != identity[k])
    if changed:
        raise ValueError(f"{path} was written with other settings ({', '.join(changed)}); resuming would mix "
                         "two runs: restore those settings, or set resume=false to start over")

    weights = load_file(str(path / "trainable.safetensors"))
    missing = model.load_state_dict(weights, strict=False)
    if missing.unexpected_keys:
        raise ValueError(f"{path}: checkpoint has unknown parameters {missing.unexpected_keys[:3]}")
    state = torch.load(path / "state.pt", weights_only=True)
    if extra is not None:
        extra.load_state_dict(state["extra"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["cpu"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(progress["step"]), progress["log_buffer"], progress.get("timing", {})


# ------------------------------------------------------------------------------------------


def grading_labels(pairs: Sequence[PreferencePair]) -> np.ndarray:
    """The labels held-out pairs are graded against: ``original_label`` where `rmkit denoise` recorded one (a
    denoised label is the ensemble's opinion, and grading against it would grade the RM by that opinion), else
    ``label``."""
    return np.array([p.label if p.original_label is None else p.original_label for p in pairs], dtype=np.float64)


def evaluate_pairs(model, pairs: Sequence[PreferencePair], *, prefix: str = "test", batch_size: int = 64,
                   accelerator=None) -> dict[str, Any]:
    """Score held-out pairs: metrics overall, accuracy per subset, and scoring speed (pairs/s)."""
    core = accelerator.unwrap_model(model) if accelerator is not None else model
    t0 = time.time()
    c_ids, r_ids = core.encode_pairs(pairs)
    rc, rr = score_token_pairs(model, c_ids, r_ids, batch_size=batch_size, accelerator=accelerator)
    seconds = time.time() - t0
    labels = grading_labels(pairs)
    out: dict[str, Any] = {f"{prefix}/{k}": v for k, v in pair_metrics(rc, rr, labels).items()}
    out[f"{prefix}/per_subset"] = accuracy_per_subset(rc, rr, labels, np.array([p.subset for p in pairs]))
    out[f"{prefix}/score_pairs_per_s"] = len(pairs) / max(seconds, 1e-9)
    return out


def _eval_labels_note(*held_out: Sequence[PreferencePair]) -> str:
    pairs = [p for part in held_out for p in part]
    changed = sum(p.original_label is not None and p.original_label != p.label for p in pairs)
    if any(p.original_label is not None for p in pairs):
        return (f"original (before denoising): validation and test are graded against the labels the data had; "
                f"{changed} of {len(pairs)} held-out pairs carry a denoised label that was not used")
    return "as given in the data"


def write_model_card(path: Path, cfg: TrainConfig, results: dict[str, Any]) -> None:
    """``README.md`` beside the weights: base model, data, objective, held-out metrics, and how to load it."""
    metrics = "\n".join(f"| {k} | {v:.4f} |" for k, v in results.items()
                         if k.startswith(("eval/", "test/")) and isinstance(v, float))
    extras = (f", contrastive `{cfg.contrastive}`" if cfg.contrastive != "none" else "") + \
        (", MetaRM" if cfg.meta_data else "")
    card = f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [reward-model, rlhf, rmkit]
base_model: {cfg.model}
---
# Reward model trained with rmkit

- base model: `{cfg.model}` (max length {cfg.max_length} tokens, left-truncated so the response is kept)
- data: `{cfg.data or "pairs given in Python"}`; {results.get("train_pairs")} training pairs, split seed {cfg.split_seed}
- objective: `{cfg.objective}`{extras}
- steps: {results.get("steps")}, lr {cfg.lr}, batch {cfg.batch_size} x {cfg.grad_accum}
- evaluation labels: {results.get("eval_labels", "as given")}

| metric | value |
|---|---|
{metrics}

## Load

```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained("{path.name}")  # num_labels=1: the logit is the reward
from rmkit.models import RewardModel
rm = RewardModel.from_pretrained("{path.name}")   # rmkit's rendering and truncation; rm.score(prompts, responses)
```
"""
    (path / "README.md").write_text(card)


def _logged_step(line: str) -> float:
    try:
        return float(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError):
        return float("inf")  # a line cut by the kill: dropped


@dataclass
class TrainResult:
    model: RewardModel
    output_dir: Path
    metrics: dict[str, Any]


def train_reward_model(
    cfg: TrainConfig,
    *,
    train_pairs: Sequence[PreferencePair] | None = None,
    eval_pairs: Sequence[PreferencePair] | None = None,
    model: RewardModel | None = None,
    stop_after_steps: int | None = None,
) -> TrainResult:
    """Train a reward model; writes ``model/``, ``metrics.jsonl``, ``results.json`` and ``config.yaml``.

    Pairs come from ``cfg.data`` and its saved split unless given directly. ``stop_after_steps``
    ends the run early after writing a checkpoint, as a kill would (used to test resuming).
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    objective = get_objective(cfg.objective)
    # On a CPU-only machine launched with several processes (torchrun), accelerate sets up gloo only
    # when told it runs on the CPU.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=multi_cpu)
    out = Path(cfg.output_dir)
    if (out / "results.json").exists() and (out / "model").exists() and cfg.resume:
        saved = json.loads((out / "results.json").read_text())
        before = saved.get("run_config", _run_identity(cfg))
        changed = sorted(k for k in before if before[k] != _run_identity(cfg).get(k))
        if changed:
            raise ValueError(f"{out} holds a finished run with other settings ({', '.join(changed)}): "
                             "choose another output_dir, or set resume=false to overwrite it")
        accelerator.print(f"{out} already holds a finished run; loading it (set resume=false to retrain)")
        return TrainResult(RewardModel.from_pretrained(str(out / "model")), out, saved)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")

    # ---- data: the saved split of cfg.data, unless pairs were given
    test_pairs: list[PreferencePair] = []
    if train_pairs is None:
        ds = cfg.read(cfg.data)
        splits_path = Path(cfg.splits_file) if cfg.splits_file else out / "splits.json"
        # Splits are deterministic: every process computes the same ones, only the main one writes them.
        splits = get_splits(ds, splits_path if accelerator.is_main_process or splits_path.exists() else None,
                            fractions=tuple(cfg.split_fractions), seed=cfg.split_seed)
        by_id = {p.id: p for p in ds.pairs}
        train_pairs = [by_id[i] for i in splits["train"]]
        eval_pairs = [by_id[i] for i in splits["validation"]] if eval_pairs is None else eval_pairs
        test_pairs = [by_id[i] for i in splits["test"]] if cfg.eval_test else []
    train_pairs = list(train_pairs)[: cfg.max_train_pairs]
    eval_pairs = list(eval_pairs or [])[: cfg.max_eval_pairs]
    if not train_pairs:
        raise ValueError("no training pairs")

    # ---- model (the head's init depends on the seed)
    torch.manual_seed(cfg.seed)
    if model is None:
        model = RewardModel.from_pretrained(cfg.model, max_length=cfg.max_length)
    n_trainable = set_trainable(model, cfg.train_layers)
    contrastive = ContrastiveTerm.from_config(cfg, model.head.in_features)
    dropout_hooks = set_dropout(model, cfg.contrastive_dropout) if contrastive is not None else []
    model.to(accelerator.device)
    if contrastive is not None:
        contrastive.to(accelerator.device)
    # Tokenize once; every epoch and every evaluation reuses the ids.
    c_ids, r_ids = model.encode_pairs(train_pairs)
    ev_c, ev_r = model.encode_pairs(eval_pairs) if eval_pairs else ([], [])
    ev_labels = grading_labels(eval_pairs)
    ev_judge = read_judge_labels(cfg.judge_labels, [p.id for p in eval_pairs]) if cfg.judge_labels else None
    lengths = [max(len(a), len(b)) for a, b in zip(c_ids, r_ids)]

    meta_items = read_meta_set(cfg.meta_data) if cfg.meta_data else None
    meta_ids = tokenize_meta_items(model, meta_items) if meta_items else None  # once, like the pairs

    # ---- batch plan: every epoch's length-grouped batches, fixed by the seed; each process its shard
    per_epoch = math.ceil(len(train_pairs) / cfg.batch_size)
    n_micro = max(cfg.grad_accum, int(round(per_epoch * cfg.epochs)))
    plan: list[list[int]] = []
    epoch = 0
    while len(plan) < n_micro:
        plan += length_grouped_batches(lengths, cfg.batch_size, seed=cfg.seed * 1000 + epoch)
        epoch += 1
    plan = plan[:n_micro]
    world, rank = accelerator.num_processes, accelerator.process_index
    plan = plan[rank::world][: n_micro // world]
    total_steps = len(plan) // cfg.grad_accum

    # ---- optimizer and schedule
    head_ids = {id(p) for p in model.head.parameters()}
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    head = [p for p in model.parameters() if p.requires_grad and id(p) in head_ids]
    groups = [{"params": head, "lr": cfg.head_lr or cfg.lr}]
    if body:
        groups.append({"params": body, "lr": cfg.lr})
    if contrastive is not None and contrastive.prototypes is not None:
        groups.append({"params": [contrastive.prototypes], "lr": cfg.head_lr or cfg.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(cfg.lr_schedule, int(cfg.warmup_ratio * total_steps), total_steps)
    )
    wrapped, optimizer = accelerator.prepare(model, optimizer)

    # ---- resume
    ckpt = out / "checkpoint"
    step, log_buffer, timing = 0, [], {}
    if cfg.resume and ckpt.exists():
        step, log_buffer, timing = _load_checkpoint(ckpt, model, optimizer, scheduler, _run_identity(cfg), contrastive)
        accelerator.print(f"resuming from {ckpt} at step {step}/{total_steps}")
    metrics_path = out / "metrics.jsonl"
    if step == 0 and accelerator.is_main_process and metrics_path.exists():
        metrics_path.unlink()  # a fresh run starts a fresh log
    elif accelerator.is_main_process and metrics_path.exists():
        # Lines logged after the checkpoint (before the kill) are logged again by the resumed run: drop them now.
        kept = [x for x in metrics_path.read_text().splitlines() if x.strip() and _logged_step(x) <= step]
        atomic_write_text(metrics_path, "".join(x + "\n" for x in kept))

    def log(record: dict[str, Any]) -> None:
        if accelerator.is_main_process:
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def evaluate() -> dict[str, float]:
        if not eval_pairs:
            return {}
        rc, rr = score_token_pairs(wrapped, ev_c, ev_r, batch_size=cfg.eval_batch_size, accelerator=accelerator)
        res = {f"eval/{k}": v for k, v in pair_metrics(rc, rr, ev_labels).items()}
        if ev_judge is not None:
            res.update({f"eval/{k}": v for k, v in label_views(rc, rr, ev_labels, ev_judge).items()})
        return res

    # ---- the loop
    wrapped.train()
    # Timings cover the whole run: a resumed run starts from what the checkpoint recorded.
    t0 = time.time() - timing.get("train_seconds", 0.0)
    step_seconds = timing.get("step_seconds", 0.0)  # optimizer steps alone, without evaluation and checkpoints
    steps_timed = int(timing.get("steps_timed", 0))
    seen_pairs = int(timing.get("seen_pairs", 0))
    last_eval: dict[str, float] = {}
    bar = tqdm(total=total_steps, initial=step, desc="train", disable=not accelerator.is_main_process, unit="step")
    while step < total_steps:
        t_step = time.perf_counter()
        micro = plan[step * cfg.grad_accum: (step + 1) * cfg.grad_accum]
        step_loss, step_acc, step_cl, step_j = 0.0, 0.0, 0.0, 0.0
        for k, idx in enumerate(micro):
            batch = make_batch(model, train_pairs, c_ids, r_ids, idx, accelerator.device)
            if meta_items is not None:
                # MetaRM: the meta items of this micro-step are drawn from (step, k), so a resumed run draws the same.
                pick = np.random.default_rng([cfg.seed, step, k]).choice(len(meta_items), cfg.meta_prompts,
                                                                          replace=len(meta_items) < cfg.meta_prompts)
                meta_batch = encode_meta_batch(model, [meta_items[i] for i in pick], accelerator.device,
                                               [meta_ids[i] for i in pick])
                with accelerator.autocast():
                    loss, parts = metarm_backward(model, batch, meta_batch, objective, inner_lr=cfg.meta_inner_lr,
                                                  contrastive=contrastive, scale=1.0 / len(micro))
                step_j += parts["meta_J"].item() / len(micro)
            else:
                # Only the last micro-batch syncs gradients across processes.
                with accelerator.no_sync(wrapped) if k < len(micro) - 1 else nullcontext():
                    with accelerator.autocast():
                        loss, parts = compute_loss(wrapped, batch, objective, contrastive)
                    accelerator.backward(loss / len(micro))
            step_loss += loss.item() / len(micro)
            step_acc += (parts["chosen"] > parts["rejected"]).float().mean().item() / len(micro)
            step_cl += parts["contrastive_loss"].item() / len(micro) if contrastive is not None else 0.0
            seen_pairs += len(idx)
        if meta_items is not None and world > 1:
            # MetaRM computes gradients on the unwrapped model (torch.func), outside DDP: average them here.
            for p in model.parameters():
                if p.grad is not None:
                    p.grad = accelerator.reduce(p.grad, reduction="mean")
        if contrastive is not None and contrastive.prototypes is not None and world > 1:
            # The prototypes live outside the DDP-wrapped model: average their gradient by hand.
            contrastive.prototypes.grad = accelerator.reduce(contrastive.prototypes.grad, reduction="mean")
        if cfg.max_grad_norm > 0:
            accelerator.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        step_seconds += time.perf_counter() - t_step
        steps_timed += 1
        bar.update(1)
        log_buffer.append([step_loss, step_acc, step_cl, step_j])
        bar.set_postfix(loss=f"{step_loss:.3f}")

        is_last = step == total_steps
        if (cfg.eval_every and step % cfg.eval_every == 0) or is_last:
            # Average over the steps since the last line, and over processes.
            local = torch.tensor(log_buffer, dtype=torch.float64).mean(0).to(accelerator.device)
            train_loss, train_acc, train_cl, train_j = accelerator.reduce(local, reduction="mean").tolist()
            record = {"step": step, "epoch": step * cfg.grad_accum * world / per_epoch,
                      "train/loss": train_loss, "train/accuracy": train_acc,
                      "train/lr": scheduler.get_last_lr()[-1]}
            if contrastive is not None:
                record["train/contrastive_loss"] = train_cl
            if meta_items is not None:
                record["train/meta_J"] = train_j
            last_eval = evaluate()
            record.update(last_eval)
            log(record)
            log_buffer = []
        if accelerator.is_main_process and ((cfg.save_every and step % cfg.save_every == 0)
                                            or (stop_after_steps is not None and step >= stop_after_steps)):
            _save_checkpoint(ckpt, model, optimizer, scheduler, step, log_buffer, _run_identity(cfg), contrastive,
                             timing={"train_seconds": time.time() - t0, "step_seconds": step_seconds,
                                     "steps_timed": steps_timed, "seen_pairs": seen_pairs})
        if stop_after_steps is not None and step >= stop_after_steps and not is_last:
            bar.close()
            return TrainResult(model, out, {"stopped_at_step": step})
    bar.close()
    train_s = time.time() - t0
    for h in dropout_hooks:
        h.remove()

    # ---- final model and results
    accelerator.wait_for_everyone()
    results: dict[str, Any] = {"steps": total_steps, "train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs),
                               "trainable_params": n_trainable, "train_seconds": train_s,
                               "train_pairs_per_s": seen_pairs * world / max(train_s, 1e-9),
                               "s_per_step": step_seconds / max(steps_timed, 1),
                               "eval_labels": _eval_labels_note(eval_pairs, test_pairs),
                               "run_config": _run_identity(cfg)}
    results.update(last_eval or evaluate())  # the loop evaluated at its last step, unless resumed past it
    if test_pairs:
        results.update(evaluate_pairs(wrapped, test_pairs, prefix="test", batch_size=cfg.eval_batch_size,
                                      accelerator=accelerator))
    if accelerator.is_main_process:
        model.save_pretrained(out / "model")
        write_model_card(out / "model", cfg, results)
        (out / "results.json").write_text(json.dumps(results, indent=1))
        shutil.rmtree(ckpt, ignore_errors=True)
    return TrainResult(model, out, results)
