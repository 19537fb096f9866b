"""Reward-model ensembles that score every pair: the (M, N) reward differences behind preference strength.

Backbones (``EnsembleConfig.backbone``):

- ``frozen`` (shared-backbone fast mode, the CPU default): each text is encoded once by a frozen
  backbone, the features are cached on disk (memory-mapped, reused when model, data and settings
  match, resumed chunk by chunk after a kill), and the M members are linear BT heads trained on the
  cache (`rmkit.heads`). The whole ensemble costs about one encoding pass, and no label reaches a
  member's features, so cross-fitted scores stay out-of-sample. Members read different hidden
  layers (mean-pooled, all taken from the same pass), so they disagree where the features do; heads
  on one layer differ only by a bootstrap resample and nearly coincide. Each layer's L2 penalty is
  picked by cross-fitted log-loss on the labels (`heads.select_l2`). On hh-rlhf with planted flips
  (docs/lab-notebook.md) the picked penalty gained 1.5 points of AUROC and layers instead of
  resamples another half point.
- ``finetune_folds``: per fold k, a backbone fine-tuned on the other folds (so it never saw fold k)
  encodes every pair; the members of fold k are heads on those features. K fine-tunes on (K-1)/K of
  the data each: with K = 2, about the cost of one fine-tune on all of it.
- ``finetune_members``: every member is a fully fine-tuned reward model (`train_reward_model`), for
  GPU users; finished members are kept on disk and a killed run resumes with the rest.

Modes (``EnsembleConfig.mode``): ``crossfit`` (default; each pair scored only by members that never
trained on it) or ``seeds`` (the paper's: every member trains on everything; in-sample scores).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .assets import cache_dir, load_pretrained, resolve_model
from .caches import feature_cache_limit_bytes, mark_used, prune_feature_cache
from .config import from_dict, require_same_settings, validate
from .data import PreferencePair, pair_column, pairs_at, pairs_fingerprint
from .hardware import barrier, process_group, resolve_device, resolve_precision
from .files import atomic_path, atomic_write_bytes, model_identity, write_json
from .batching import TokenIds, length_sorted_batches
from .heads import fold_of, head_diffs, member_masks, select_l2, train_bt_heads
from .models import RewardModel
from .scoring import score_token_pairs
from .training import TrainConfig, train_reward_model
from .configs.ensemble import EnsembleConfig  # noqa: F401 - the settings, beside the job


def member_layers(cfg: EnsembleConfig, num_layers: int) -> list[int]:
    """The hidden layer each member's head reads (mean pooling), ``members`` long.

    Member m reads ``layers[(m // K) % len(layers)]`` (K folds in crossfit, else 1), so every fold's
    members cover the same layers. Default layers: one evenly spaced transformer block per member of
    a fold (MiniLM, 10 members, 2 folds: blocks 1, 2, 4, 5, 6).
    """
    k = cfg.folds if cfg.mode == "crossfit" else 1
    per_fold = -(-cfg.members // k)
    layers = list(cfg.layers) if cfg.layers else sorted(
        {int(round(x)) for x in np.linspace(1, num_layers, min(per_fold, num_layers))})
    return [layers[(m // k) % len(layers)] for m in range(cfg.members)]


# ----------------------------------------------------------------------------------------------
# Feature cache


def _fingerprint(model_id: str, pairs: Sequence[PreferencePair], extra: dict) -> str:
    h = hashlib.sha256()
    h.update(model_identity(model_id).encode())  # a local model: its weights' identity, not just its path
    h.update(json.dumps(extra, sort_keys=True).encode())
    for p in pairs:
        h.update(json.dumps([p.id, p.prompt, p.chosen, p.rejected]).encode())
    return h.hexdigest()[:20]


def encode_features(
    model: RewardModel,
    pairs: Sequence[PreferencePair],
    *,
    cache_dir: str | Path,
    model_id: str,
    pooling: str = "mean",
    layers: Sequence[int] | None = None,
    batch_size: int = 64,
    chunk_batches: int = 16,
    progress: bool = True,
    precision: str = "fp32",
    store: str = "float32",
    dim: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Features of every chosen and rejected text, ``(N, V, H)`` each, cached and memory-mapped.

    ``precision``: ``fp32``, or ``bf16`` (autocast: matmuls in bfloat16, features stored in float32).
    The precision is part of the cache key, so bf16 features are never mixed with fp32 ones.
    Bounded caches (the cache holds 2 N V H numbers: 160 GB for an 8B decoder's 5 layers of 1M pairs in float32):
    ``store`` ``float16`` halves it; ``dim`` projects each view to ``dim`` numbers with a seeded Gaussian random
    projection (`random_projection`, Johnson-Lindenstrauss: inner products, hence linear heads, are kept up to
    ``~1/sqrt(dim)``). Both are part of the cache key; benchmarks/bounded_features.py measures what each costs.

    V views: one per entry of ``layers`` (mean pooling; default the middle block), or 1 (native).
    Texts are encoded in length order; every ``chunk_batches`` batches the arrays are flushed and the
    finished texts recorded by their index in ``done.npy`` (a mask over the 2N texts, replaced
    atomically), so a killed run resumes where it stopped whatever batch size the resumed run uses.
    Batch size does not change the features (one text's features do not depend on its batch-mates
    beyond float rounding), so it is not part of the cache key.

    In rmkit's own cache (`default_cache_dir`) the entries total at most ``$RMKIT_FEATURE_CACHE_GB`` (default 50):
    writing one removes the least recently used finished others (`rmkit.caches.prune_feature_cache`).

    Under a multi-process launch (``accelerate launch --num_processes K rmkit audit ...``, GPUs or CPU processes)
    process r encodes every K-th text still to do into the same cache and records its own progress
    (``done.rank{r}.npy``); rank 0 joins the records when all are done. A killed process's texts are encoded again by
    the next run, whatever its number of processes.
    """
    from tqdm.auto import tqdm

    layers = None if pooling == "native" or layers is None else [int(i) for i in layers]
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    extra = {"max_length": model.max_length, "pooling": pooling, "layers": layers, "cache_version": CACHE_VERSION}
    if precision != "fp32":  # fp32 keys stay as they were
        extra["precision"] = precision
    if store not in ("float32", "float16"):
        raise ValueError(f"store must be float32 or float16, got {store!r}")
    if store != "float32" or dim is not None:  # the default keys stay as they were
        extra.update(store=store, dim=dim)
    key = _fingerprint(model_id, pairs, extra)
    # rmkit's own cache is capped ($RMKIT_FEATURE_CACHE_GB, read now: a bad setting fails before any encoding); a
    # folder the caller names is the caller's
    limit = feature_cache_limit_bytes() if Path(cache_dir).resolve() == default_cache_dir().resolve() else None
    folder = Path(cache_dir) / key
    folder.mkdir(parents=True, exist_ok=True)
    n = len(pairs)
    hidden = int(model.model.config.hidden_size)
    proj = None if dim is None else torch.as_tensor(random_projection(hidden, dim), device=model.device)
    width = hidden if dim is None else dim
    views = 1 if layers is None else len(layers)
    path = folder / "features.npy"
    shape = (2 * n, views, width)
    rank, world = process_group()
    if rank == 0:  # one process makes the file; the others open it once it is there
        mode = "r+" if path.exists() else "w+"
        try:
            feats = np.lib.format.open_memmap(path, mode=mode, dtype=np.dtype(store), shape=shape)
        except ValueError:  # a truncated or foreign array file: start this entry again
            mode = "w+"
            feats = np.lib.format.open_memmap(path, mode=mode, dtype=np.dtype(store), shape=shape)
        if mode == "w+":
            _reserve(path, folder)
            for stale in folder.glob("done*.npy"):  # the records of a file that is no longer there
                stale.unlink()
        feats.flush()
    barrier()
    if rank != 0:
        feats = np.lib.format.open_memmap(path, mode="r+", dtype=np.dtype(store), shape=shape)
    done = np.zeros(2 * n, dtype=bool)
    for record in sorted(folder.glob("done*.npy")):  # done.npy, and the records of a sharded run's processes
        done |= _read_done(record, 2 * n)
    barrier()  # every process read the records before any writes its own
    wrote = not done.all()  # a new or unfinished entry: the cache grows, so the least recently used may go
    todo = np.flatnonzero(~done)[rank::world]  # of the 2N texts (chosen, then rejected): this process's share
    record = folder / ("done.npy" if world == 1 else f"done.rank{rank}.npy")
    # Only the texts still to encode are tokenized: a rerun on a finished cache tokenizes nothing (17k texts took
    # 11 s of a 55 s cached audit on one core).
    # Token ids are kept flat (int32, one array, an offset per text): as Python lists they cost ~9x the memory (an
    # int object per token), the bulk of a large audit's.
    flat, start, length = _token_store(model, pairs, todo, n)
    batches = [todo[b].tolist() for b in length_sorted_batches(length[todo].tolist(), batch_size)]
    was_training = model.training
    model.eval()
    autocast = torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), autocast, tqdm(total=2 * n, initial=int(done.sum()), desc="encoding", unit="text",
                                                disable=not progress or rank != 0) as bar:
        for s in range(0, len(batches), chunk_batches):
            for idx in batches[s: s + chunk_batches]:
                batch = model.collate([flat[start[i]: start[i] + length[i]] for i in idx], model.device)
                f = model.embed(**batch, pooling=pooling, layers=layers).float()
                if proj is not None:
                    with torch.autocast(model.device.type, enabled=False):  # the projection in float32
                        f = f @ proj
                feats[idx] = f.cpu().numpy().astype(store)
                bar.update(len(idx))
                done[idx] = True
            feats.flush()  # rows on disk before the record says they are done
            _write_done(record, done)
    model.train(was_training)
    del feats
    barrier()
    if world > 1 and rank == 0:  # one record again
        for r in sorted(folder.glob("done.rank*.npy")):
            done |= _read_done(r, 2 * n)
        _write_done(folder / "done.npy", done)
        for r in folder.glob("done.rank*.npy"):
            r.unlink()
    barrier()
    feats = np.load(path, mmap_mode="r")
    if rank == 0:
        mark_used(path)
        if limit is not None and wrote:
            prune_feature_cache(Path(cache_dir), folder, limit)
    return feats[:n], feats[n:]


def random_projection(hidden: int, dim: int, seed: int = 0) -> np.ndarray:
    """``(hidden, dim)`` Gaussian matrix scaled by ``1/sqrt(dim)``, from its own seeded generator: every run, machine
    and cache entry projects the same way."""
    if not 0 < dim <= hidden:
        raise ValueError(f"dim must be in [1, {hidden}], got {dim}")
    return (np.random.default_rng([seed, hidden, dim]).standard_normal((hidden, dim)) / np.sqrt(dim)).astype(np.float32)


def _reserve(path: Path, folder: Path) -> None:
    """Give a new memory-mapped cache file its disk blocks now: a sparse file on a disk that fills up later kills the
    process with SIGBUS, and no message, at the first write that finds no block."""
    import os

    size = path.stat().st_size
    try:
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, size)
    except AttributeError:  # no posix_fallocate (macOS, Windows): a check of the free space instead
        import shutil

        if shutil.disk_usage(folder).free < size:
            path.unlink(missing_ok=True)
            raise ValueError(f"the feature cache needs {size / 1e9:.2f} GB in {folder}, which has "
                             f"{shutil.disk_usage(folder).free / 1e9:.2f} GB free: set cache_dir elsewhere") from None
    except OSError as e:
        path.unlink(missing_ok=True)
        raise ValueError(f"the feature cache needs {size / 1e9:.2f} GB in {folder} and cannot have it ({e.strerror}): "
                         "free space there or set cache_dir elsewhere") from None


CACHE_VERSION = 2  # 1 recorded finished work by batch number, which a resume with another batch size misread


def _token_store(model: RewardModel, pairs, todo: np.ndarray, n: int, chunk: int = 4096):
    """Token ids of the texts ``todo`` (of the 2N: chosen, then rejected) as ``(flat, start, length)`` over all 2N
    positions: text i's ids are ``flat[start[i]: start[i] + length[i]]`` (int32; `TokenIds`), tokenized a chunk at a
    time, so no more than one chunk's Python lists are alive."""
    order, chunks = [], []
    for offset, rows, name in ((0, todo[todo < n], "chosen"), (n, todo[todo >= n] - n, "rejected")):
        for s in range(0, len(rows), chunk):
            order.append(rows[s: s + chunk] + offset)
            chunks.append((rows[s: s + chunk], name))
    def encoded(part, name):
        some = pairs_at(pairs, part)  # one read of the chunk's pairs (a read per pair is slow in Arrow)
        return model.encode([p.prompt for p in some], [getattr(p, name) for p in some])

    ids = TokenIds.from_chunks(encoded(part, name) for part, name in chunks)
    start, length = np.zeros(2 * n, np.int64), np.zeros(2 * n, np.int64)
    if order:
        order = np.concatenate(order)
        start[order], length[order] = ids.start, ids.length
    return ids.flat, start, length


def _read_done(path: Path, n_texts: int) -> np.ndarray:
    """The finished-texts mask of a cache entry; an unreadable or mismatched one is rebuilt (nothing done)."""
    import io
    import warnings

    if not path.exists():
        return np.zeros(n_texts, dtype=bool)
    try:
        done = np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)
        if done.dtype == bool and done.shape == (n_texts,):
            return done
        reason = f"shape {done.shape}, dtype {done.dtype}; expected ({n_texts},) bool"
    except (ValueError, OSError, EOFError) as e:
        reason = str(e)
    warnings.warn(f"{path}: unreadable progress record ({reason}); encoding this cache entry again", stacklevel=3)
    return np.zeros(n_texts, dtype=bool)


def _write_done(path: Path, done: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, done, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def default_cache_dir() -> Path:
    return cache_dir() / "features"


# ----------------------------------------------------------------------------------------------
# Ensembles


@dataclass
class EnsemblePlan:
    """What each of the M members does, decided once for every backbone: which fold of pairs it scores,
    what it trains on (bootstrap weights or 0/1), which hidden layer it reads."""

    fold: np.ndarray  # (N,) fold of each pair (all 0 in seeds mode)
    train: np.ndarray  # (M, N) training weight of each pair for each member
    score: np.ndarray  # (M, N) whether the member scores the pair
    layers: list[int]  # (M,) hidden layer each member's head reads (mean pooling; unused under native pooling)
    bootstrap: bool
    select_fold: np.ndarray  # (N,) folds the heads' L2 search cross-fits over
    backbone: list[int] = field(default_factory=list)  # (M,) which frozen backbone (0: model, j: more_models[j-1])

    @property
    def views(self) -> list[int]:
        """The distinct layers, in the order the feature arrays hold them."""
        return sorted(set(self.layers))

    def of_backbone(self, j: int) -> list[int]:
        """The members reading backbone ``j``."""
        return [m for m, b in enumerate(self.backbone or [0] * len(self.layers)) if b == j]


def plan_ensemble(cfg: EnsembleConfig, ids: Sequence[str], layers: Sequence[int] | None = None,
                  backbone: Sequence[int] | None = None) -> EnsemblePlan:
    """Folds (seeded by id), member masks and whether heads resample, for members reading ``layers``
    (`member_layers`; None: members that read no layer, e.g. fine-tuned RMs) of ``backbone`` (default all the
    first). Fine-tuned members (``finetune_members``) differ by their own fine-tune, so they never resample."""
    n = len(ids)
    layers = list(layers) if layers is not None else [0] * cfg.members
    backbone = list(backbone) if backbone is not None else [0] * cfg.members
    if len(layers) != cfg.members:
        raise ValueError(f"layers names the layer of each member: {cfg.members} entries, got {len(layers)} "
                         "(member_layers(cfg, num_layers) gives them)")
    fold = fold_of(ids, cfg.folds, seed=cfg.seed) if cfg.mode == "crossfit" else np.zeros(n, dtype=int)
    if cfg.mode == "crossfit" and len(set(fold.tolist())) < cfg.folds:
        raise ValueError(f"{n} usable pairs are too few to cross-fit {cfg.members} members over {cfg.folds} folds (a "
                         "fold gets no pair): give more pairs (dozens at least; hundreds for a verdict worth reading), "
                         "or mode seeds for in-sample scores")
    boot = member_bootstrap(cfg, layers, backbone) if cfg.backbone != "finetune_members" else False
    train, score = member_masks(n, fold, members=cfg.members, mode=cfg.mode, seed=cfg.seed, bootstrap=boot)
    select_fold = fold if cfg.mode == "crossfit" else fold_of(ids, 2, seed=cfg.seed)
    return EnsemblePlan(fold, train, score, layers, boot, select_fold, backbone)


def mixed_members(cfg: EnsembleConfig, num_layers: Sequence[int]) -> tuple[list[int], list[int]]:
    """Backbone and layer of each member when ``more_models`` adds backbones: member m reads backbone
    ``(m // K) % B`` (K folds, B backbones), so every fold holds members of every backbone; within a backbone
    the members take its evenly spaced blocks in turn (`member_layers`). Returns ``(backbone, layers)``."""
    k = cfg.folds if cfg.mode == "crossfit" else 1
    b = len(num_layers)
    backbone = [(m // k) % b for m in range(cfg.members)]
    layers = [0] * cfg.members
    for j, n_layers in enumerate(num_layers):
        mine = [m for m in range(cfg.members) if backbone[m] == j]
        sub = replace(cfg, members=len(mine), layers=cfg.layers if j == 0 else None)
        for m, layer in zip(mine, member_layers(sub, n_layers)):
            layers[m] = layer
    return backbone, layers


@dataclass
class EnsembleInfo:
    """What an ensemble run used (recorded in the audit's summary) and how long its parts took."""

    members: int
    mode: str
    backbone: str
    member_layers: list[int] | None = None
    head_l2: dict = field(default_factory=dict)  # per layer (or per fold, then per layer)
    bootstrap: bool | None = None
    member_models: list[str] | None = None  # an audit of given reward models
    member_backbones: list[str] | None = None  # frozen members over several backbones (more_models)
    precision: str | None = None  # of the frozen encoding
    heads_by_subset: dict | None = None  # per subset: own or pooled heads, and both's out-of-fold agreement
    seconds: dict[str, float] = field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "seconds" and v is not None}


def ensemble_diffs(
    cfg: EnsembleConfig,
    pairs: Sequence[PreferencePair],
    *,
    work_dir: str | Path,
    progress: bool = True,
) -> tuple[np.ndarray | None, EnsembleInfo]:
    """Reward differences ``(M, N)`` of every member on every pair (NaN where a member does not score).

    Returns the differences and what was used (`EnsembleInfo`). Work products (members, scores) go under
    ``work_dir``; finished pieces are reused when the run is started again. Under a multi-process launch the frozen
    encoding is shared out; the differences are rank 0's (None on the other processes).
    """
    import time

    validate(cfg)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    from transformers import AutoConfig  # here, not at the top: `rmkit audit --help` should not wait for it

    info = EnsembleInfo(cfg.members, cfg.mode, cfg.backbone)
    model = None
    if cfg.backbone == "frozen":
        device = resolve_device(cfg.device)
        info.precision = resolve_precision(cfg.precision, device)
        model = RewardModel.from_pretrained(cfg.model, max_length=cfg.max_length).to(device)
    num_layers = model.num_layers if model is not None else (
        load_pretrained(AutoConfig, resolve_model(cfg.model)).num_hidden_layers if cfg.backbone == "finetune_folds"
        else None)
    if cfg.more_models:
        sizes = [num_layers] + [load_pretrained(AutoConfig, resolve_model(m)).num_hidden_layers for m in cfg.more_models]
        backbone, layers = mixed_members(cfg, sizes)
        plan = plan_ensemble(cfg, [p.id for p in pairs], layers, backbone)
        info.member_backbones = [([cfg.model, *cfg.more_models])[j] for j in backbone]
    else:
        plan = plan_ensemble(cfg, [p.id for p in pairs], member_layers(cfg, num_layers) if num_layers else None)
    info.bootstrap = plan.bootstrap
    info.member_layers = plan.layers if cfg.pooling == "mean" and num_layers else None
    # Each pair's label (1 for ordinary pairs; 0.5 for ties, soft labels as given) is what the heads learn.
    labels = np.array([p.label for p in pairs], dtype=np.float64)
    if cfg.backbone != "frozen":  # fine-tuned members are kept on disk and reused: only for the run they belong to
        check_work(work, cfg, pairs)
    diffs = BACKBONES[cfg.backbone](cfg, pairs, plan, labels, info, work=work, model=model, progress=progress)
    info.seconds["ensemble_seconds"] = time.time() - t0
    return diffs, info


# The settings fine-tuned members depend on (with the backbone's weights and the data's content).
WORK_SETTINGS = ("model", "backbone", "members", "mode", "folds", "max_length", "seed", "pooling", "layers", "head_l2",
                 "bootstrap", "finetune_epochs", "finetune_lr", "finetune_batch_size", "finetune_settings")


def check_work(work: Path, cfg: EnsembleConfig, pairs: Sequence[PreferencePair]) -> None:
    """Record what the members under ``work`` are for (``identity.json``), or refuse work made for another run,
    naming what differs: finished members are reused, so members trained on other data or settings would otherwise
    be scored under this run's name, silently."""
    identity = {**{k: getattr(cfg, k) for k in WORK_SETTINGS}, "model weights": model_identity(cfg.model),
                "data (content of the pairs)": pairs_fingerprint(pairs)}
    identity = json.loads(json.dumps(identity))  # as the file holds it: lists, not tuples
    path = work / "identity.json"
    hint = f"use another output_dir, or delete {work} to train the members again"
    if path.exists():
        require_same_settings(json.loads(path.read_text()), identity, work, hint, what="holds members trained with")
        return
    if any(work.glob("member*")) or any(work.glob("fold*")):
        raise ValueError(f"{work} holds members of a run that recorded no settings (made before rmkit recorded them): "
                         f"they cannot be matched to this one; {hint}")
    write_json(path, identity)


def _frozen_diffs(cfg: EnsembleConfig, pairs, plan: EnsemblePlan, labels: np.ndarray, info: EnsembleInfo, *,
                  work: Path, model: RewardModel, progress: bool) -> np.ndarray | None:
    """Heads on one cached encoding of every pair by each frozen backbone (``model``, then ``more_models``).

    Under a multi-process launch every process encodes its share (`encode_features`) and rank 0 alone fits the heads
    and returns the differences; the others return None."""
    import time

    diffs = np.full((cfg.members, len(pairs)), np.nan)
    # read once for every backbone (a column read: no pair objects made)
    subsets = np.array(pair_column(pairs, "subset"), dtype=object) if cfg.heads_by_subset != "no" else None
    for j, name in enumerate([cfg.model, *cfg.more_models]):
        mine = plan.of_backbone(j)
        rm = model if j == 0 else RewardModel.from_pretrained(name, max_length=cfg.max_length).to(model.device)
        layers = [plan.layers[m] for m in mine]
        views = sorted(set(layers))
        t0 = time.time()
        fc, fr = encode_features(rm, pairs, cache_dir=cfg.cache_dir or default_cache_dir(), model_id=name,
                                 pooling=cfg.pooling, layers=views, batch_size=cfg.batch_size,
                                 progress=progress, precision=info.precision, store=cfg.feature_store,
                                 dim=cfg.feature_dim)
        info.seconds["encode_seconds"] = info.seconds.get("encode_seconds", 0.0) + time.time() - t0
        if process_group()[0] != 0:  # a sharded encoding's other processes are done: rank 0 fits the heads
            continue
        diffs[mine], W, l2 = _fit_heads(cfg, fc, fr, plan.train[mine], plan.score[mine], layers, views,
                                        plan.select_fold, labels, progress=progress)
        own: dict = {}
        if subsets is not None:
            diffs[mine], chosen = heads_by_subset(cfg, fc, fr, plan, mine, subsets, labels, diffs[mine], heads=own)
            info.heads_by_subset = chosen if j == 0 else {**(info.heads_by_subset or {}),
                                                           **{f"{name}:{k}": v for k, v in chosen.items()}}
        info.head_l2.update(l2 if j == 0 else {f"{name}:{k}": v for k, v in l2.items()})
        _save_heads(work, "" if j == 0 else f"_{j}", W, own)
    return diffs if process_group()[0] == 0 else None


def _save_heads(work: Path, suffix: str, W: np.ndarray, own: dict) -> None:
    """The heads that scored the pairs, for a user to read or reuse: ``heads{suffix}.npy`` the pooled ones ``(M, H)``
    and, where subsets used heads of their own, ``heads_by_subset{suffix}.npz`` (``subsets (S,)``, ``heads (S, M,
    H)``); a subset not in it was scored by the pooled heads. Each written atomically."""
    with atomic_path(work / f"heads{suffix}.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, W)
    target = work / f"heads_by_subset{suffix}.npz"
    if not own:
        target.unlink(missing_ok=True)  # an earlier run's subset heads would belong to other settings
        return
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        np.savez(f, subsets=np.array(list(own), dtype=str), heads=np.stack(list(own.values())))


def _finetune_folds_diffs(cfg: EnsembleConfig, pairs, plan: EnsemblePlan, labels: np.ndarray, info: EnsembleInfo,
                          *, work: Path, model: None, progress: bool) -> np.ndarray:
    """Per fold k, a backbone fine-tuned on the other folds encodes every pair; fold k's members are heads on it."""
    ids = [p.id for p in pairs]
    diffs = np.full((cfg.members, len(pairs)), np.nan)
    for k in range(cfg.folds):
        backbone = _finetune(cfg, [p for p, f in zip(pairs, plan.fold) if f != k], work / f"fold{k}", seed=cfg.seed + k)
        model = RewardModel.from_pretrained(str(backbone), max_length=cfg.max_length)
        fc, fr = encode_features(model, pairs, cache_dir=cfg.cache_dir or default_cache_dir(),
                                 model_id=str(backbone), pooling=cfg.pooling, layers=plan.views,
                                 batch_size=cfg.batch_size, progress=progress)
        mine = [m for m in range(cfg.members) if m % cfg.folds == k]
        # The backbone has seen every label outside fold k: pick the penalty by folds inside that part only.
        inner = np.where(plan.fold != k, fold_of(ids, 2, seed=cfg.seed + 1), -1)
        diffs[mine], _, info.head_l2[f"fold{k}"] = _fit_heads(cfg, fc, fr, plan.train[mine], plan.score[mine],
                                                              [plan.layers[m] for m in mine], plan.views, inner, labels)
    return diffs


def _finetune_members_diffs(cfg: EnsembleConfig, pairs, plan: EnsemblePlan, labels: np.ndarray, info: EnsembleInfo,
                            *, work: Path, model: None, progress: bool) -> np.ndarray:
    """Every member a fully fine-tuned RM; finished members are kept on disk (a killed run resumes with the rest);
    with several ``member_devices``, one worker process per device."""
    todo = [m for m in range(cfg.members) if not (work / f"member{m}" / "diffs.npy").exists()]
    devices = cfg.member_devices or []
    if len(devices) > 1 and todo:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(len(devices), mp_context=mp.get_context("spawn")) as pool:
            jobs = [pool.submit(_member_worker, cfg, pairs, [m for m in todo if m % len(devices) == d],
                                plan.train, plan.score, work, dev) for d, dev in enumerate(devices)]
            for job in jobs:
                job.result()  # re-raises a worker's error here
    else:
        _member_worker(cfg, pairs, todo, plan.train, plan.score, work, None)
    return np.stack([np.load(work / f"member{m}" / "diffs.npy") for m in range(cfg.members)])


BACKBONES = {"frozen": _frozen_diffs, "finetune_folds": _finetune_folds_diffs,
             "finetune_members": _finetune_members_diffs}


def member_bootstrap(cfg: EnsembleConfig, layers: list[int], backbone: Sequence[int] | None = None) -> bool:
    """Whether heads train on bootstrap resamples: ``cfg.bootstrap`` if set, else only when two members of a
    fold read the same features (same layer, or native pooling). Resampling is then what makes them differ;
    on the hh-rlhf benchmark it costs about half a point of AUROC where layers already differ."""
    if cfg.bootstrap is not None:
        return cfg.bootstrap
    k = cfg.folds if cfg.mode == "crossfit" else 1
    backbone = list(backbone) if backbone is not None else [0] * cfg.members
    reads = [(m % k, backbone[m], layers[m] if cfg.pooling == "mean" else None) for m in range(cfg.members)]
    return len(set(reads)) < len(reads)


def heads_on_features(cfg: EnsembleConfig, fc: np.ndarray, fr: np.ndarray, ids: Sequence[str],
                      layers: list[int], *, labels: np.ndarray | None = None,
                      subsets: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """The ``frozen`` ensemble on cached features ``(N, V, H)`` (views: ``sorted(set(layers))``, or 1 under
    native pooling): folds, member masks, each layer's L2 and the heads.

    Returns the differences ``(M, N)``, the heads ``(M, H)`` and what was used (``member_layers``,
    ``head_l2`` per layer). Labels enter through the feature rows' order (chosen, rejected), so a
    benchmark can flip pairs by swapping rows and reuse one encoding, and through ``labels (N,)``, the
    probability that the chosen row is preferred (default 1; 0.5 for ties). ``subsets (N,)``: each pair's subset,
    read when ``cfg.heads_by_subset`` is not ``no`` (`heads_by_subset`; without them, one subset).
    """
    plan = plan_ensemble(cfg, ids, layers)
    diffs, W, l2 = _fit_heads(cfg, fc, fr, plan.train, plan.score, plan.layers, plan.views, plan.select_fold, labels)
    chosen = None
    if cfg.heads_by_subset != "no" and subsets is not None:  # no subsets given: one subset, the pooled heads
        diffs, chosen = heads_by_subset(cfg, fc, fr, plan, list(range(cfg.members)), np.asarray(subsets, dtype=object),
                                        labels, diffs)
    return diffs, W, {"member_layers": plan.layers if cfg.pooling == "mean" else None, "head_l2": l2,
                      "bootstrap": plan.bootstrap, "heads_by_subset": chosen}


MIN_SUBSET_PAIRS = 200  # fewer pairs train heads too noisy to be worth more than the pooled ones


def _agrees(diffs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Whether members' mean difference ``diffs (M, n)`` agrees with each decided label ``(n,)``: 1, 0, or NaN (a
    tie, or no member scored the pair)."""
    mean = np.nanmean(diffs, axis=0)
    ok = np.isfinite(mean) & (labels != 0.5)
    return np.where(ok, ((mean > 0) == (labels > 0.5)).astype(float), np.nan)


def own_heads_better(own: np.ndarray, pooled: np.ndarray) -> tuple[float, float, float]:
    """McNemar's z for "own heads agree with the labels more often than pooled ones", from each pair's agreement
    (`_agrees`; 1/0/NaN) under both: ``(z, agreement own, agreement pooled)``. Only the pairs where the two differ
    count, so a subset's ordinary noise does not pick its own heads: auto wants z >= 2 (one-sided p ~ 0.02)."""
    ok = np.isfinite(own) & np.isfinite(pooled)
    b = float(np.sum((own == 1) & (pooled == 0) & ok))
    c = float(np.sum((own == 0) & (pooled == 1) & ok))
    z = (b - c) / np.sqrt(b + c) if b + c else 0.0
    if not ok.any():
        return z, float("nan"), float("nan")
    return z, float(np.mean(own[ok])), float(np.mean(pooled[ok]))


def heads_by_subset(cfg: EnsembleConfig, fc: np.ndarray, fr: np.ndarray, plan: EnsemblePlan, mine: list[int],
                    subsets: np.ndarray, labels: np.ndarray | None, pooled: np.ndarray, *,
                    heads: dict | None = None) -> tuple[np.ndarray, dict]:
    """Members ``mine`` trained again inside each subset (same folds, members and layers; their own L2), in place
    of the pooled heads' differences ``pooled (len(mine), N)`` where ``cfg.heads_by_subset`` says: ``yes`` for every
    subset of at least `MIN_SUBSET_PAIRS` pairs, ``auto`` where the subset's own heads also agree with its labels
    out of fold significantly more often than the pooled heads (`own_heads_better`: a choice made on the labels,
    never on a truth).

    Why: subsets of one dataset can want opposite things. On hh-rlhf the pooled heads agree with harmless-base's
    labels on 45% of pairs (helpful pairs teach them to prefer the more forthcoming answer, which harmless labels
    reject), its own heads on 62%; flips planted in all four subsets are found at AUROC 0.63 instead of 0.58 (0.64
    with calibration_by_subset; benchmarks/results/verdicts.json, ``hh_flips``). Where the truth does not differ by
    subset (rmkit's lab) own heads would lose the other subsets' pairs; auto keeps the pooled ones there. Returns the
    differences and ``{subset: choice}``; ``heads``, when given, receives ``{subset: W (len(mine), H)}`` of the
    subsets that use their own."""
    y = np.ones(len(subsets)) if labels is None else np.asarray(labels, np.float64)
    out = pooled.copy()
    chosen: dict = {}
    for s in sorted(set(subsets.tolist()), key=str):
        m = subsets == s
        if m.sum() < MIN_SUBSET_PAIRS:
            chosen[str(s)] = {"heads": "pooled", "pairs": int(m.sum()), "why": f"fewer than {MIN_SUBSET_PAIRS} pairs"}
            continue
        idx = np.flatnonzero(m)  # the subset's rows only, a layer at a time: the heads cost what pooled ones do
        own, W_own, _ = _fit_heads(cfg, fc, fr, plan.train[mine][:, idx], plan.score[mine][:, idx],
                                   [plan.layers[k] for k in mine], sorted(set(plan.layers[k] for k in mine)),
                                   plan.select_fold[idx], None if labels is None else np.asarray(labels)[idx], rows=idx)
        z, a_own, a_pooled = own_heads_better(_agrees(own, y[idx]), _agrees(pooled[:, idx], y[idx]))
        use = cfg.heads_by_subset == "yes" or z >= 2.0
        if use:
            out[:, idx] = own
            if heads is not None:
                heads[str(s)] = W_own
        chosen[str(s)] = {"heads": "own" if use else "pooled", "pairs": int(m.sum()),
                          "agreement_own": a_own, "agreement_pooled": a_pooled, "mcnemar_z": z}
    return out, chosen


HEAD_MEMORY = 2 * 10**9  # bytes of one layer's chosen and rejected features in float64 the heads hold at once


def _fit_heads(cfg: EnsembleConfig, fc: np.ndarray, fr: np.ndarray, train: np.ndarray, score: np.ndarray,
               layers: list[int], views: list[int], select_fold: np.ndarray,
               labels: np.ndarray | None = None, progress: bool = False,
               rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Heads for members reading cached features ``(N, V, H)``; member j reads view ``views.index(layers[j])``
    (view 0 under native pooling). Returns their differences ``(M, N)``, weights ``(M, H)`` and the L2 per layer.
    ``rows``: the heads see only those rows of ``fc, fr`` (``train``, ``score``, ``select_fold`` and ``labels`` are
    then theirs alone), copied one layer at a time: a subset's rows of every layer at once would hold V times more."""
    from tqdm.auto import tqdm

    diffs = np.full(score.shape, np.nan)
    W = np.zeros((len(layers), fc.shape[2]))
    penalties: dict = {}
    blocks = views if cfg.pooling == "mean" else [None]
    n, width = (fc.shape[0] if rows is None else len(rows)), fc.shape[2]
    # One layer's features in float64 past HEAD_MEMORY bytes: the heads read the memory-mapped cache a chunk at a time
    chunk = cfg.head_chunk_rows or (max(1, HEAD_MEMORY // (16 * width)) if 16 * n * width > HEAD_MEMORY else None)
    device = resolve_device(cfg.device)  # a GPU where the job has one (float32 there), else the CPU in float64
    for v, layer in enumerate(tqdm(blocks, desc="heads (L2 search, then the members), by layer", unit="layer",
                                   disable=not progress)):
        mine = [j for j, lay in enumerate(layers) if cfg.pooling != "mean" or lay == layer]
        if rows is not None:
            c, r = fc[rows, v], fr[rows, v]
        else:
            c, r = (fc[:, v], fr[:, v]) if chunk else (np.asarray(fc[:, v]), np.asarray(fr[:, v]))
        kw = dict(labels=labels, chunk_rows=chunk, device=device)
        l2 = cfg.head_l2 if cfg.head_l2 is not None else select_l2(c, r, select_fold, **kw)[0]
        penalties[str(layer if cfg.pooling == "mean" else "native")] = l2
        W[mine] = train_bt_heads(c, r, train[mine], l2=l2, **kw)
        diffs[mine] = head_diffs(W[mine], c, r, score[mine])
    return diffs, W, penalties


def _member_worker(cfg: EnsembleConfig, pairs: Sequence[PreferencePair], members: list[int], train: np.ndarray,
                   score: np.ndarray, work: Path, device: str | None) -> None:
    """Fine-tune and score ``members`` one after another; each saves ``member{m}/diffs.npy`` when done."""
    import os

    if device is not None:  # before CUDA initialises in this process: it then sees only its device
        os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1] if device.startswith("cuda:") else ""
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, len(cfg.member_devices or [1]))))
    for m in members:
        backbone = _finetune(cfg, [p for p, t in zip(pairs, train[m]) if t > 0], work / f"member{m}",
                             seed=cfg.seed + m)
        model = RewardModel.from_pretrained(str(backbone), max_length=cfg.max_length)
        if torch.cuda.is_available():
            model.cuda()
        d = _score_mask(model, pairs, score[m], cfg.batch_size)
        with atomic_path(work / f"member{m}" / "diffs.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, d)


def _finetune(cfg: EnsembleConfig, train_pairs: list[PreferencePair], out: Path, *, seed: int) -> Path:

    settings = dict(model=cfg.model, output_dir=str(out), max_length=cfg.max_length, epochs=cfg.finetune_epochs,
                    lr=cfg.finetune_lr, batch_size=cfg.finetune_batch_size, seed=seed, eval_every=0,
                    save_every=100, eval_test=False)
    tc = from_dict(TrainConfig, {**settings, **cfg.finetune_settings}, source="finetune_settings")
    train_reward_model(tc, train_pairs=train_pairs, eval_pairs=[])
    return out / "model"


def _score_mask(model: RewardModel, pairs: Sequence[PreferencePair], mask: np.ndarray, batch_size: int) -> np.ndarray:
    idx = np.flatnonzero(mask)
    c, r = model.encode_pairs(pairs_at(pairs, idx))
    rc, rr = score_token_pairs(model, c, r, batch_size=batch_size)
    out = np.full(len(pairs), np.nan)
    out[idx] = rc - rr
    return out

