"""Linear Bradley-Terry heads on cached features: many ensemble members for the cost of one encoding.

A head scores a response by ``r = w · f`` (no bias: it cancels in every difference), trained with
the BT loss ``-log sigmoid(w · (f_c - f_r))`` plus ``l2 * |w|^2``. All M members train together as one
(M, H) weight matrix in full-batch L-BFGS; each member sees only its own training pairs (a mask),
so cross-fitting costs nothing extra.

Shapes: ``chosen_features (N, H)``, ``rejected_features (N, H)``, ``train_mask (M, N)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .seeding import id_bucket


def fold_of(ids: Sequence[str], folds: int, *, seed: int = 0) -> np.ndarray:
    """A fold in ``[0, folds)`` for each pair, from a seeded hash of its id (stable across runs and orderings)."""
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    return np.array([id_bucket(seed, i, folds) for i in ids])


def member_masks(n_pairs: int, fold: np.ndarray, *, members: int, mode: str, seed: int = 0,
                 bootstrap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Which pairs each member trains on and which it scores: two (M, N) boolean masks.

    - ``seeds``: every member trains on every pair (a bootstrap resample when ``bootstrap``) and
      scores every pair: in-sample, as in the paper.
    - ``crossfit``: member m belongs to fold ``m % K``; it trains on the other folds and scores its own,
      so each pair is scored by about M / K members that never saw it.
    """
    if mode not in ("seeds", "crossfit"):
        raise ValueError(f"mode must be 'seeds' or 'crossfit', got {mode!r}")
    rng = np.random.default_rng(seed)
    k = int(fold.max()) + 1 if len(fold) else 1
    if mode == "crossfit" and (k < 2 or members < k):
        raise ValueError(f"crossfit needs at least 2 folds and members >= folds (got {k} folds, {members} members)")
    train = np.zeros((members, n_pairs), dtype=np.float32)  # float: bootstrap counts
    score = np.zeros((members, n_pairs), dtype=bool)
    for m in range(members):
        pool = np.arange(n_pairs) if mode == "seeds" else np.flatnonzero(fold != m % k)
        if bootstrap:
            np.add.at(train[m], rng.choice(pool, size=len(pool), replace=True), 1.0)
        else:
            train[m, pool] = 1.0
        score[m] = True if mode == "seeds" else (fold == m % k)
    return train, score


LOSS_ROWS = 65536  # pairs per slice of the loss's backward pass when the features are held whole


def train_bt_heads(
    chosen_features: np.ndarray,
    rejected_features: np.ndarray,
    train_weights: np.ndarray,
    *,
    l2: float | np.ndarray = 1e-3,
    max_iter: int = 200,
    labels: np.ndarray | None = None,
    margins: np.ndarray | None = None,
    chunk_rows: int | None = None,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Fit M linear BT heads at once; returns ``W (M, H)``.

    ``train_weights (M, N)`` says how often member m sees pair i (0 = not at all; bootstrap counts
    allowed). ``l2``: one penalty for all heads, or one per head ``(M,)``. ``labels (N,)``, if given,
    is the probability that chosen is preferred (1 by default; soft labels and ties welcome).
    ``margins (N,)``: the loss reads ``w · (f_c - f_r) - m`` (Eq. 6, as `losses.bradley_terry_loss`).

    Full-batch L-BFGS on the exact loss. ``chunk_rows``: read the features (e.g. a memory-mapped cache larger than
    memory) ``chunk_rows`` pairs at a time in every evaluation, accumulating the same loss and gradient, so memory
    holds one chunk, not ``(N, H)``; the solution is the full-batch one up to the order of float sums. ``device``: where
    the heads train (a GPU: float32 there; the CPU keeps float64).
    """
    device = torch.device(device or "cpu")
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    n = len(chosen_features)
    stream = chunk_rows is not None and chunk_rows < n
    # (M, N) in float32, cast a slice at a time in the loss: M heads by N pairs in float64 would be the job's
    # largest array (the L2 search trains 8 penalties x K folds of heads at once)
    w_train = torch.as_tensor(np.asarray(train_weights, np.float32), device=device)
    y = torch.ones(n, dtype=dtype, device=device) if labels is None else torch.as_tensor(labels, dtype=dtype,
                                                                                          device=device)
    m = torch.zeros(n, dtype=dtype, device=device) if margins is None else torch.as_tensor(margins, dtype=dtype,
                                                                                            device=device)
    counts = torch.as_tensor(np.asarray(train_weights).sum(1, dtype=np.float64), dtype=dtype,
                             device=device).clamp_min(1.0)  # (M,)
    penalty = torch.as_tensor(np.broadcast_to(np.asarray(l2, dtype=np.float64), (w_train.shape[0],)).copy(),
                              dtype=dtype, device=device)
    width = np.shape(chosen_features)[1]
    W = torch.zeros(w_train.shape[0], width, dtype=dtype, device=device, requires_grad=True)
    opt = torch.optim.LBFGS([W], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9)
    # Hard labels (every pair's chosen preferred, the audit's case): the (1 - y) term is exactly zero, so leaving it
    # out gives the same loss and gradient bit for bit, for a fifth less of the heads' time.
    hard = bool((y == 1).all())

    def pairs_loss(d: torch.Tensor, s: int, e: int) -> torch.Tensor:
        z = W @ d.T - m[s:e]  # (M, rows) reward differences, less each pair's margin
        per_pair = -F.logsigmoid(z) if hard else -(y[s:e] * F.logsigmoid(z) + (1 - y[s:e]) * F.logsigmoid(-z))
        return ((per_pair * w_train[:, s:e].to(dtype)).sum(1) / counts).sum()

    if not stream:
        c, r = np.asarray(chosen_features), np.asarray(rejected_features)
        if c.dtype == np.float16:  # a float16 cache: subtract in float64, not in float16
            c, r = c.astype(np.float64), r.astype(np.float64)
        d = torch.as_tensor(c - r, dtype=dtype, device=device)

        def closure():
            opt.zero_grad()
            if n <= LOSS_ROWS:
                loss = pairs_loss(d, 0, n) + (penalty * (W ** 2).sum(1)).sum()
                loss.backward()
                return loss
            # Past LOSS_ROWS pairs the loss's (M, rows) intermediates, kept for backward, would cost more than the
            # features (~4 KB a pair in the L2 search): backward a slice at a time, adding up the same gradient.
            total = (penalty * (W ** 2).sum(1)).sum()
            total.backward()
            total = total.detach()
            for s in range(0, n, LOSS_ROWS):
                part = pairs_loss(d[s: s + LOSS_ROWS], s, min(n, s + LOSS_ROWS))
                part.backward()
                total = total + part.detach()
            return total
    else:
        def closure():
            opt.zero_grad()
            total = (penalty * (W ** 2).sum(1)).sum()
            total.backward()
            total = total.detach()
            for s in range(0, n, chunk_rows):
                e = min(n, s + chunk_rows)
                d = torch.as_tensor(np.asarray(chosen_features[s:e], np.float64)
                                    - np.asarray(rejected_features[s:e], np.float64), dtype=dtype, device=device)
                part = pairs_loss(d, s, e)
                part.backward()  # gradients add up chunk by chunk: one chunk in memory at a time
                total = total + part.detach()
            return total

    opt.step(closure)
    return W.detach().cpu().numpy()


def head_diffs(W: np.ndarray, chosen_features: np.ndarray, rejected_features: np.ndarray,
               score_mask: np.ndarray | None = None) -> np.ndarray:
    """Reward differences ``(M, N)`` of every head on every pair; NaN where ``score_mask`` is False."""
    n = len(chosen_features)
    diffs = np.empty((len(W), n))
    for s in range(0, n, 65536):  # in chunks: a memory-mapped cache is never held whole
        e = min(n, s + 65536)
        diffs[:, s:e] = W @ (np.asarray(chosen_features[s:e], np.float64)
                             - np.asarray(rejected_features[s:e], np.float64)).T
    if score_mask is not None:
        diffs = np.where(score_mask, diffs, np.nan)
    return diffs


L2_GRID = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)


def select_l2(
    chosen_features: np.ndarray,
    rejected_features: np.ndarray,
    fold: np.ndarray,
    *,
    grid: Sequence[float] = L2_GRID,
    labels: np.ndarray | None = None,
    chunk_rows: int | None = None,
    device: str | torch.device | None = None,
) -> tuple[float, dict[float, float]]:
    """The L2 penalty of the grid with the lowest cross-fitted BT log-loss on the data's own labels.

    ``fold (N,)``: each pair's fold (``-1``: left out). For every penalty, one head per fold trains
    on the other folds and is scored on its own, all penalties in one batch. Uses nothing but the
    labels an audit already has (no clean labels), so the audit can pick it itself; with label noise
    the best penalty is larger than on clean data, which is the point of picking it on the data.
    ``chunk_rows`` and ``device`` as `train_bt_heads`. Returns the chosen penalty and the log-loss of each.
    """
    fold = np.asarray(fold)
    folds = [k for k in np.unique(fold) if k >= 0]
    if len(folds) < 2:
        raise ValueError("select_l2 needs at least 2 folds")
    y = np.ones(len(fold)) if labels is None else np.asarray(labels, np.float64)
    members = [(a, k) for a in grid for k in folds]
    train = np.stack([(fold != k) & (fold >= 0) for _, k in members]).astype(np.float32)
    W = train_bt_heads(chosen_features, rejected_features, train, l2=np.array([a for a, _ in members]), labels=y,
                       chunk_rows=chunk_rows, device=device)
    losses: dict[float, float] = {a: 0.0 for a in grid}
    for s in range(0, len(fold), 65536):  # scored a slice of pairs at a time: no (G*K, N) array
        z = head_diffs(W, chosen_features[s: s + 65536], rejected_features[s: s + 65536])  # (G*K, rows)
        ys, fs = y[s: s + 65536], fold[s: s + 65536]
        for j, (a, k) in enumerate(members):
            held = fs == k
            nll = ys[held] * np.logaddexp(0.0, -z[j, held]) + (1 - ys[held]) * np.logaddexp(0.0, z[j, held])
            losses[a] += float(nll.sum())
    scored = max(1, int((fold >= 0).sum()))
    losses = {a: v / scored for a, v in losses.items()}
    return min(losses, key=losses.get), losses


def sgd_margins(diff_features: np.ndarray, *, epochs: int = 20, lr: float = 0.05, batch_size: int = 64,
                l2: float = 1e-3, seed: int = 0) -> np.ndarray:
    """Training dynamics of one linear BT head on ``diff_features (N, H)`` (chosen minus rejected, as labelled,
    standardised by the caller): minibatch SGD over every pair, and every pair's margin ``w . d`` after each epoch,
    ``(epochs, N)``: what `rmkit.detectors.aum` and ``cartography`` read, at the cost of a few seconds where a
    fine-tune's take an hour."""
    gen = torch.Generator().manual_seed(seed)
    d = torch.as_tensor(np.asarray(diff_features), dtype=torch.float32)
    w = torch.zeros(d.shape[1], requires_grad=True)
    opt = torch.optim.SGD([w], lr=lr)
    out = np.zeros((epochs, d.shape[0]))
    for e in range(epochs):
        for idx in torch.randperm(d.shape[0], generator=gen).split(batch_size):
            loss = F.softplus(-(d[idx] @ w)).mean() + l2 * (w * w).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            out[e] = (d @ w).numpy()
    return out
