"""Reward-model training: one loop on `accelerate`, for this CPU, one GPU, or `accelerate launch`.

The loop reads top to bottom: data, model, optimizer, resume, then the steps. The per-pair objective
is a function ``objective(chosen_rewards, rejected_rewards, batch) -> loss`` chosen by name from
`rmkit.objectives.OBJECTIVES`; `rmkit.objectives.compute_loss` is the single step function that MetaRM
and ensembles reuse.

Logged metrics (``metrics.jsonl``, one JSON object per line):

- ``train/loss``, ``train/accuracy``: mean over the optimizer steps since the last log line.
- ``train/lr``: the learning rate of the first parameter group.
- ``eval/loss``, ``eval/accuracy``, ``eval/margin_mean``, ``eval/reward_mean``, ``eval/reward_std``:
  on the validation pairs (see `rmkit.scoring.pair_metrics`).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .config import (require_same_settings, save_config, to_dict,
                     validate)
from .assets import hub_id_of
from .warm import average_reward_models
from .files import append_jsonl, atomic_path, check_output_dir, keep_logged_through, write_json
from .hardware import resolve_precision
from .data import (PreferencePair, data_folder_guard, get_splits, pairs_at, pairs_fingerprint,
                   stratified_sample)
from .metarm import encode_meta_batch, metarm_backward, tokenize_meta_items
from .metaset import read_meta_set
from .batching import length_grouped_batches
from .objectives import ContrastiveTerm, LengthTerm, check_pair_fields, compute_loss, get_objective, make_batch
from .models import RewardModel, set_dropout, set_trainable
from .scoring import accuracy_per_subset, label_views, pair_metrics, read_judge_labels, score_token_pairs
from .configs.training import TrainConfig  # noqa: F401 - the settings, beside the job


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


# Settings that may change between a killed run and its resumption; any other change is an error. `columnar` only
# chooses where rows are held (the same numbers either way, tests/test_cli.py).
_RESUMABLE_CHANGES = {"resume", "eval_every", "save_every", "eval_batch_size", "eval_test", "output_dir", "columnar"}


def _run_identity(cfg: TrainConfig, splits: Sequence[Sequence[PreferencePair]] | None = None, *,
                  pairs_given: bool = False) -> dict[str, Any]:
    """What a run's results depend on: its settings, and with ``splits`` (train, eval, test) the fingerprint of the
    pairs it reads (`pairs_fingerprint`: an edit in place, such as a swapped pair, is another run). With
    ``pairs_given`` (pairs passed in Python) the ``data`` path is not read, and the fingerprint alone names the data."""
    identity = {k: v for k, v in to_dict(cfg).items() if k not in _RESUMABLE_CHANGES}
    if pairs_given:
        identity.pop("data", None)
    if splits is not None:
        identity["data (content of the pairs)"] = pairs_fingerprint(itertools.chain(*splits))
    return identity


def _same_identity(saved: dict[str, Any], now: dict[str, Any], where: Path, hint: str, what: str) -> None:
    """Refuse when ``now`` differs from a run's ``saved`` identity. A setting the saved run does not name (added to
    rmkit since it was written) passes only at its default, the behaviour that run had; a setting it names that
    ``now`` does not (the data path, when pairs are passed in) is not compared."""
    defaults = to_dict(TrainConfig())
    before = {k: saved[k] if k in saved else (v if v == defaults.get(k) else "(not set)") for k, v in now.items()}
    require_same_settings(before, now, where, hint, what=what)


def _save_checkpoint(path: Path, model: RewardModel, optimizer, scheduler, step: int, log_buffer: list,
                     identity: dict[str, Any], extra: torch.nn.Module | None = None,
                     timing: dict[str, float] | None = None) -> None:
    from safetensors.torch import save_file

    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    with atomic_path(path) as tmp:  # a kill mid-write leaves the previous checkpoint intact
        tmp.mkdir(parents=True)
        trainable = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trainable, str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng,
                    "extra": extra.state_dict() if extra is not None else {}}, tmp / "state.pt")
        (tmp / "progress.json").write_text(json.dumps({"step": step, "log_buffer": log_buffer, "config": identity,
                                                       "timing": timing or {}}))


def _load_checkpoint(path: Path, model: RewardModel, optimizer, scheduler, identity: dict[str, Any],
                     extra: torch.nn.Module | None = None) -> tuple[int, list, dict]:
    from safetensors.torch import load_file

    progress = json.loads((path / "progress.json").read_text())
    _same_identity(progress.get("config", {}), identity, path,
                   "resuming would mix two runs: restore those settings, or set resume=false to start over",
                   "was written with")

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
    hub_id = hub_id_of(cfg.model)  # the hub's metadata names a hub id: an alias's, never a local path
    base = f"base_model: {hub_id}\n" if hub_id else ""
    card = f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [reward-model, rlhf, rmkit]
{base}---
# Reward model trained with rmkit

- base model: `{hub_id or cfg.model}` (max length {cfg.max_length} tokens, left-truncated so the response is kept)
- data: `{cfg.data or "pairs given in Python"}`; {results.get("train_pairs")} training pairs, split seed {cfg.split_seed}
- objective: `{cfg.objective}`{extras}
- steps: {results.get("steps")}, lr {cfg.lr}, batch {cfg.batch_size} x {cfg.grad_accum}
- evaluation labels: {results.get("eval_labels", "as given")}

| metric | value |
|---|---|
{metrics}

## Load

With rmkit (its rendering and truncation): `RewardModel.from_pretrained("{path.name}").score(prompts, responses)`.
With plain transformers, the same rewards for conversations within {cfg.max_length} tokens: the tokenizer carries the
chat template that renders a conversation as the model read it in training (special tokens included, so none are
added). Longer ones lose their beginning in both; an encoder's leading special token survives only in rmkit's.

```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer
tok = AutoTokenizer.from_pretrained("{path.name}"); tok.truncation_side = "left"  # keep the response
model = AutoModelForSequenceClassification.from_pretrained("{path.name}")  # num_labels=1: the logit is the reward
text = tok.apply_chat_template(prompt_messages + response_messages, tokenize=False)
ids = tok(text, add_special_tokens=False, truncation=True, max_length={cfg.max_length}, return_tensors="pt")
reward = model(**ids).logits[0, 0].item()
```
"""
    (path / "README.md").write_text(card)


def _mixed_precision(spec: str) -> str:
    """accelerate's setting for ``spec``: ``auto`` is `resolve_precision`'s rule for jobs that update weights
    (bf16 on a GPU with bfloat16, fp32 elsewhere, as PPO's), in accelerate's words (fp32 is ``no``)."""
    if spec != "auto":
        return spec
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = resolve_precision("auto", device, training=True, announce=int(os.environ.get("RANK", "0")) == 0)
    return "no" if chosen == "fp32" else chosen


def _finished_run(cfg: TrainConfig, out: Path, device: torch.device, now: dict[str, Any]) -> "TrainResult | None":
    """A finished run of the same settings and data (``now``, `_run_identity`) in ``out``, loaded onto ``device``
    (where a run that trains leaves its model: a rerun does not train again, and returns what a first run does); other
    settings or data are refused, naming them."""
    if not ((out / "results.json").exists() and (out / "model").exists() and cfg.resume):
        return None
    saved = json.loads((out / "results.json").read_text())
    _same_identity(saved.get("run_config", now), now, out,
                   "choose another output_dir, or set resume=false to overwrite it", "holds a finished run with")
    return TrainResult(RewardModel.from_pretrained(str(out / "model")).to(device), out, saved)


def _split_pairs(cfg: TrainConfig, out: Path, *, write: bool
                 ) -> tuple[list[PreferencePair], list[PreferencePair], list[PreferencePair]]:
    """Train, validation and test pairs of ``cfg.data`` by its saved split (created, and written by the main
    process only, when missing: splits are deterministic, so every process computes the same ones)."""
    if not cfg.data:
        raise ValueError("rmkit train needs data: a file, a directory or a hub dataset name (rmkit train DATA)")
    ds = cfg.read(cfg.data)
    splits_path = Path(cfg.splits_file) if cfg.splits_file else out / "splits.json"
    splits = get_splits(ds, splits_path if write or splits_path.exists() else None,
                        fractions=tuple(cfg.split_fractions), seed=cfg.split_seed)
    if cfg.max_pairs is not None:  # a seeded sample of the data, each subset in proportion; the split as for all of it
        ds = ds.sample(cfg.max_pairs, seed=cfg.split_seed)
    pairs = ds.pairs
    if hasattr(pairs, "take"):  # rows held in Arrow: pick by position, make pairs only when a batch needs them
        at = {i: k for k, i in enumerate(pairs.ids)}
        pick = lambda name: pairs.take([at[i] for i in splits[name] if i in at])  # noqa: E731
    else:
        by_id = {p.id: p for p in pairs}
        pick = lambda name: [by_id[i] for i in splits[name] if i in by_id]  # noqa: E731
    return pick("train"), pick("validation"), pick("test") if cfg.eval_test else []


def _training_data(cfg: TrainConfig, out: Path, train_pairs, eval_pairs, *, write: bool
                   ) -> tuple[list[PreferencePair], list[PreferencePair], list[PreferencePair]]:
    """Train, validation and test pairs: `_split_pairs` of ``cfg.data`` unless pairs were given (then ``max_pairs`` is
    the same seeded, stratified sample of them); checked for the fields the objective reads."""
    test_pairs: list[PreferencePair] = []
    if train_pairs is None:
        train_pairs, split_eval, test_pairs = _split_pairs(cfg, out, write=write)
        eval_pairs = split_eval if eval_pairs is None else eval_pairs
    elif cfg.max_pairs is not None:
        train_pairs, eval_pairs = ([x[k] for k in stratified_sample([p.subset for p in x], cfg.max_pairs, cfg.split_seed)]
                                   for x in (list(train_pairs), list(eval_pairs or [])))
    train_pairs, eval_pairs, test_pairs = (x if hasattr(x, "take") else list(x or [])
                                           for x in (train_pairs, eval_pairs, test_pairs))
    if not train_pairs:
        raise ValueError("no training pairs")
    check_pair_fields(train_pairs, cfg.objective)
    return train_pairs, eval_pairs, test_pairs


def _batch_plan(lengths: Sequence[int], cfg: TrainConfig, world: int, rank: int) -> tuple[list[list[int]], int]:
    """This process's micro-batches for the whole run (every epoch's length-grouped batches, fixed by the seed,
    sharded over processes) and the number of batches per epoch."""
    per_epoch = math.ceil(len(lengths) / cfg.batch_size)
    n_micro = max(cfg.grad_accum, int(round(per_epoch * cfg.epochs)))
    if cfg.max_steps:
        n_micro = cfg.max_steps * cfg.grad_accum * world
    plan: list[list[int]] = []
    epoch = 0
    # ODIN reads the correlation of rewards with length inside a batch: batches grouped by length would leave it
    # nothing to see, so its batches are drawn at random (more padding).
    mega = 1 if cfg.objective == "odin" else 50
    while len(plan) < n_micro:
        plan += length_grouped_batches(lengths, cfg.batch_size, seed=cfg.seed * 1000 + epoch, mega=mega)
        epoch += 1
    return plan[:n_micro][rank::world][: n_micro // world], per_epoch


def _optimizer(model: RewardModel, aux: torch.nn.Module | None, cfg: TrainConfig, total_steps: int):
    """AdamW over what trains (the head, SwAV's prototypes and ODIN's length head at ``head_lr``), warmup then
    ``lr_schedule``."""
    head_ids = {id(p) for p in model.head.parameters()}
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    head = [p for p in model.parameters() if p.requires_grad and id(p) in head_ids]
    groups = [{"params": head, "lr": cfg.head_lr or cfg.lr}]
    if body:
        groups.append({"params": body, "lr": cfg.lr})
    extra = [p for p in aux.parameters() if p.requires_grad] if aux is not None else []
    if extra:
        groups.append({"params": extra, "lr": cfg.head_lr or cfg.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(cfg.lr_schedule, int(cfg.warmup_ratio * total_steps), total_steps))
    return optimizer, scheduler


def _accelerator(cfg: TrainConfig):
    from accelerate import Accelerator

    # On a CPU-only machine launched with several processes (torchrun), accelerate sets up gloo only when told it
    # runs on the CPU.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(mixed_precision=_mixed_precision(cfg.mixed_precision), cpu=multi_cpu)


def train_warm(cfg: TrainConfig, *, train_pairs: Sequence[PreferencePair] | None = None,
               eval_pairs: Sequence[PreferencePair] | None = None) -> "TrainResult":
    """WARM (Rame et al. 2024): ``cfg.warm`` members fine-tuned from one initialisation (the base model and head
    seed ``init_seed``, default ``seed``), member m with seed ``seed + m`` (its data order and dropout), each in
    OUTPUT_DIR/members/m (resumable like any run), then their weights averaged into OUTPUT_DIR/model
    (`rmkit.warm.average_reward_models`): the ensemble's robustness at one model's inference cost. The result's
    metrics are the averaged model's on the validation and test pairs."""
    out = Path(cfg.output_dir)
    init_seed = cfg.seed if cfg.init_seed is None else cfg.init_seed
    members = []
    for m in range(cfg.warm):
        sub = replace(cfg, warm=0, seed=cfg.seed + m, init_seed=init_seed, output_dir=str(out / "members" / str(m)))
        res = train_reward_model(sub, train_pairs=train_pairs, eval_pairs=eval_pairs)
        members.append(str(res.output_dir / "model"))
    model = average_reward_models(members, out / "model")
    results = {"warm_members": members, "base_model": cfg.model, "init_seed": init_seed}
    _, eval_pairs, test_pairs = _training_data(replace(cfg, warm=0), out, train_pairs, eval_pairs, write=True)
    for prefix, pairs in (("eval", eval_pairs), ("test", test_pairs)):
        if pairs:
            results.update(evaluate_pairs(model, pairs, prefix=prefix, batch_size=cfg.eval_batch_size))
    write_json(out / "results.json", results)
    save_config(cfg, out / "config.yaml")
    return TrainResult(model, out, results)


def _terms(cfg: TrainConfig, model: RewardModel, device) -> tuple[ContrastiveTerm | None, LengthTerm | None, list]:
    """The training terms beside the RM loss (a contrastive term, ODIN's length head) on ``device``, and the hooks that
    add dropout for the contrastive views."""
    contrastive = ContrastiveTerm.from_config(cfg, model.head.in_features)
    length_term = LengthTerm.from_config(cfg, model.head.in_features)
    hooks = set_dropout(model, cfg.contrastive_dropout) if contrastive is not None else []
    model.to(device)
    for term in (contrastive, length_term):
        if term is not None:
            term.to(device)
    return contrastive, length_term, hooks


def _response_lengths(model: RewardModel, pairs: Sequence[PreferencePair]) -> tuple[list[int], list[int]]:
    """Each pair's chosen and rejected response length in the RM's tokens (what ODIN keeps out of the reward)."""
    count = lambda texts: [len(x) for x in model.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]  # noqa: E731
    return count([p.chosen_text for p in pairs]), count([p.rejected_text for p in pairs])


def init_fingerprint(model: torch.nn.Module) -> str:
    """A hash of a model's weights before training: WARM averages only members that started from the same ones."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:24]


def _trim_log(metrics_path: Path, step: int) -> None:
    """A fresh run starts a fresh log; a resumed one drops the lines logged after its checkpoint (before the
    kill), which it logs again."""
    if not metrics_path.exists():
        return
    if step == 0:
        metrics_path.unlink()
        return
    keep_logged_through(metrics_path, step)


def _margins_log(cfg: TrainConfig, out: Path, world: int, rank: int, step: int) -> Path | None:
    """Where the training dynamics go (``log_pair_margins``; each process its own file), trimmed to ``step``."""
    if not cfg.log_pair_margins:
        return None
    path = out / (f"pair_margins.rank{rank}.jsonl" if world > 1 else "pair_margins.jsonl")
    _trim_log(path, step)
    return path


def _log_margins(path: Path, step: int, ids: list[str], parts: dict) -> None:
    """Training dynamics (AUM, cartography): each pair's margin as the step that trains on it computed it."""
    append_jsonl(path, {"step": step, "id": ids, "margin": (parts["chosen"] - parts["rejected"]).detach().float().tolist()})


def _average_grads_outside_ddp(accelerator, meta_model: RewardModel | None, aux: torch.nn.Module | None):
    """Gradients DDP does not see, averaged over processes by hand: MetaRM's (computed on the unwrapped model
    with torch.func), SwAV's prototypes and ODIN's length head (they live outside the wrapped model)."""
    if meta_model is not None:
        for p in meta_model.parameters():
            if p.grad is not None:
                p.grad = accelerator.reduce(p.grad, reduction="mean")
    for p in (aux.parameters() if aux is not None else []):
        if p.grad is not None:
            p.grad = accelerator.reduce(p.grad, reduction="mean")


def _train_record(accelerator, log_buffer: list, *, step: int, epoch: float, lr: float, contrastive: bool,
                  meta: bool) -> dict[str, Any]:
    """A log line's training part: means over the steps since the last line, and over processes."""
    local = torch.tensor(log_buffer, dtype=torch.float64).mean(0).to(accelerator.device)
    loss, acc, cl, j = accelerator.reduce(local, reduction="mean").tolist()
    record = {"step": step, "epoch": epoch, "train/loss": loss, "train/accuracy": acc, "train/lr": lr}
    if contrastive:
        record["train/contrastive_loss"] = cl
    if meta:
        record["train/meta_J"] = j
    return record


def _save_final(model: RewardModel, cfg: TrainConfig, results: dict[str, Any], out: Path) -> None:
    """The model (safetensors) with its card, results.json; the checkpoint is no longer needed."""
    model.save_pretrained(out / "model")
    write_model_card(out / "model", cfg, results)
    write_json(out / "results.json", results)
    shutil.rmtree(out / "checkpoint", ignore_errors=True)


@dataclass
class TrainResult:
    model: RewardModel
    output_dir: Path
    metrics: dict[str, Any]


def train_reward_model(cfg: TrainConfig, *, train_pairs: Sequence[PreferencePair] | None = None,
                       eval_pairs: Sequence[PreferencePair] | None = None, model: RewardModel | None = None,
                       stop_after_steps: int | None = None) -> TrainResult:
    """Train a reward model; writes ``model/``, ``metrics.jsonl``, ``results.json`` and ``config.yaml``.

    Pairs come from ``cfg.data`` and its saved split unless given directly. ``stop_after_steps``
    ends the run early after writing a checkpoint, as a kill would (used to test resuming). Under
    torchrun or ``accelerate launch``, end the script with :func:`rmkit.hardware.end_distributed`.
    """
    from tqdm.auto import tqdm

    validate(cfg)  # before any model loads
    if cfg.warm:
        return train_warm(cfg, train_pairs=train_pairs, eval_pairs=eval_pairs)
    objective = get_objective(cfg.objective)
    accelerator = _accelerator(cfg)
    out = Path(cfg.output_dir)
    given = train_pairs is not None  # pairs passed in Python: named by their content, not by the data path
    if accelerator.is_main_process:
        check_output_dir(out, not_in={} if given else data_folder_guard(cfg.data))

    # ---- data: the saved split of cfg.data (or a seeded sample of it: max_pairs), unless pairs were given
    train_pairs, eval_pairs, test_pairs = _training_data(cfg, out, train_pairs, eval_pairs,
                                                         write=accelerator.is_main_process)
    # A finished or resumable run is valid for these settings and this data only.
    identity = _run_identity(cfg, (train_pairs, eval_pairs, test_pairs), pairs_given=given)
    finished = _finished_run(cfg, out, accelerator.device, identity)
    if finished is not None:
        accelerator.print(f"{out} already holds a finished run; loading it (set resume=false to retrain)")
        return finished
    if accelerator.is_main_process:
        save_config(cfg, out / "config.yaml")

    # ---- model (the head's init depends on the seed, or on init_seed: WARM's members share one)
    torch.manual_seed(cfg.seed if cfg.init_seed is None else cfg.init_seed)
    if model is None:
        model = RewardModel.from_pretrained(cfg.model, max_length=cfg.max_length)
    if cfg.init_seed is not None:
        torch.manual_seed(cfg.seed)  # batch order and dropout from the member's own seed
    init = init_fingerprint(model)
    n_trainable = set_trainable(model, cfg.train_layers)
    contrastive, length_term, dropout_hooks = _terms(cfg, model, accelerator.device)
    aux = contrastive if contrastive is not None else length_term  # trained and checkpointed beside the model
    # Tokenize once; every epoch and every evaluation reuses the ids (flat int32: a million pairs' ids as lists
    # would outweigh the rest of the run).
    c_ids, r_ids = model.encode_pairs(train_pairs, flat=True)
    ev_c, ev_r = model.encode_pairs(eval_pairs, flat=True) if eval_pairs else ([], [])
    ev_labels = grading_labels(eval_pairs)
    ev_judge = read_judge_labels(cfg.judge_labels, [p.id for p in eval_pairs]) if cfg.judge_labels else None
    lengths = np.maximum(c_ids.length, r_ids.length).tolist()
    responses = _response_lengths(model, train_pairs) if length_term is not None else None

    meta_items = read_meta_set(cfg.meta_data) if cfg.meta_data else None
    meta_ids = tokenize_meta_items(model, meta_items) if meta_items else None  # once, like the pairs

    # ---- batch plan: every epoch's length-grouped batches, fixed by the seed; each process its shard
    world, rank = accelerator.num_processes, accelerator.process_index
    plan, per_epoch = _batch_plan(lengths, cfg, world, rank)
    total_steps = len(plan) // cfg.grad_accum

    # ---- optimizer and schedule
    optimizer, scheduler = _optimizer(model, aux, cfg, total_steps)
    wrapped, optimizer = accelerator.prepare(model, optimizer)

    # ---- resume
    ckpt = out / "checkpoint"
    step, log_buffer, timing = 0, [], {}
    if cfg.resume and ckpt.exists():
        step, log_buffer, timing = _load_checkpoint(ckpt, model, optimizer, scheduler, identity, aux)
        accelerator.print(f"resuming from {ckpt} at step {step}/{total_steps}")
    metrics_path = out / "metrics.jsonl"
    if accelerator.is_main_process:
        _trim_log(metrics_path, step)
    margins_path = _margins_log(cfg, out, world, rank, step)

    def log(record: dict[str, Any]) -> None:
        if accelerator.is_main_process:
            append_jsonl(metrics_path, record)

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
            batch = make_batch(model, train_pairs, c_ids, r_ids, idx, accelerator.device, lengths=responses)
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
                        loss, parts = compute_loss(wrapped, batch, objective, contrastive, length_term)
                    accelerator.backward(loss / len(micro))
            if margins_path is not None:
                _log_margins(margins_path, step + 1, [p.id for p in pairs_at(train_pairs, idx)], parts)
            step_loss += loss.item() / len(micro)
            step_acc += (parts["chosen"] > parts["rejected"]).float().mean().item() / len(micro)
            step_cl += parts["contrastive_loss"].item() / len(micro) if contrastive is not None else 0.0
            seen_pairs += len(idx)
        if world > 1:
            _average_grads_outside_ddp(accelerator, model if meta_items is not None else None, aux)
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
            record = _train_record(accelerator, log_buffer, step=step, epoch=step * cfg.grad_accum * world / per_epoch,
                                   lr=scheduler.get_last_lr()[-1], contrastive=contrastive is not None,
                                   meta=meta_items is not None)
            last_eval = evaluate()
            record.update(last_eval)
            log(record)
            log_buffer = []
        if accelerator.is_main_process and ((cfg.save_every and step % cfg.save_every == 0)
                                            or (stop_after_steps is not None and step >= stop_after_steps)):
            _save_checkpoint(ckpt, model, optimizer, scheduler, step, log_buffer, identity, aux,
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
                               "run_config": identity, "init_fingerprint": init}
    results.update(last_eval or evaluate())  # the loop evaluated at its last step, unless resumed past it
    if test_pairs:
        results.update(evaluate_pairs(wrapped, test_pairs, prefix="test", batch_size=cfg.eval_batch_size,
                                      accelerator=accelerator))
    if accelerator.is_main_process:
        _save_final(model, cfg, results, out)
    return TrainResult(model, out, results)
