"""How well do a reward model's features separate chosen from rejected responses? (Sec. 5 of the paper.)

The paper shows t-SNE pictures of f(x, y_chosen) and f(x, y_rejected) for a baseline and a SimCSE
reward model. A picture is not a measurement, so `feature_separation` reports, next to the figure:

- ``knn_accuracy``: cross-validated k-NN accuracy of telling a chosen feature from a rejected one
  (folds split by pair, so a pair's two responses never sit on both sides of a split);
- ``silhouette``: the silhouette score of the two groups (cosine distance), -1..1;
- ``pair_accuracy``: how often the model's own head scores the chosen response higher.

    rmkit tsne DATA --models runs/base/model,runs/simcse/model --max-pairs 500
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .config import save_config, validate
from .data import PreferencePair, data_folder_guard, get_splits, load_splits, stratified_sample
from .files import check_output_dir, write_json
from .models import RewardModel
from .configs.tsne import TsneConfig  # noqa: F401 - the settings, beside the job


def model_features(model: RewardModel, pairs: Sequence[PreferencePair], *, batch_size: int = 32):
    """Features and rewards of chosen and rejected: ``(fc (N, H), fr (N, H), rc (N,), rr (N,))``."""
    ids_c, ids_r = model.encode_pairs(pairs)
    feats, rewards = [], []
    model.eval()
    with torch.inference_mode():
        for ids in (ids_c, ids_r):
            f = np.zeros((len(ids), model.model.config.hidden_size), np.float32)
            r = np.zeros(len(ids), np.float32)
            for idx, batch in model.batches(ids, batch_size):
                out = model(**batch)
                f[idx] = out.features.float().cpu().numpy()
                r[idx] = out.rewards.float().cpu().numpy()
            feats.append(f)
            rewards.append(r)
    return feats[0], feats[1], rewards[0], rewards[1]


def feature_separation(fc: np.ndarray, fr: np.ndarray, *, k: int = 10, folds: int = 5, seed: int = 0) -> dict:
    """k-NN accuracy (pair-grouped CV) and silhouette of chosen vs rejected features."""
    from sklearn.metrics import silhouette_score
    from sklearn.model_selection import GroupKFold
    from sklearn.neighbors import KNeighborsClassifier

    x = np.concatenate([fc, fr])
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    y = np.r_[np.ones(len(fc)), np.zeros(len(fr))]
    groups = np.r_[np.arange(len(fc)), np.arange(len(fr))]
    correct = 0
    for train, test in GroupKFold(n_splits=folds).split(x, y, groups):
        clf = KNeighborsClassifier(n_neighbors=min(k, len(train))).fit(x[train], y[train])
        correct += int((clf.predict(x[test]) == y[test]).sum())
    return {"knn_accuracy": correct / len(y), "silhouette": float(silhouette_score(x, y, metric="cosine",
                                                                                    random_state=seed))}


def run_tsne(cfg: TsneConfig) -> dict:
    """Features of held-out pairs for each model: t-SNE side by side, and the separation numbers."""
    validate(cfg)
    if not cfg.data or not cfg.models:
        raise ValueError("rmkit tsne needs data and --models (one or more reward models)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    out = check_output_dir(cfg.output_dir, not_in=data_folder_guard(cfg.data))
    save_config(cfg, out / "config.yaml")
    ds = cfg.read(cfg.data)
    pairs = ds.pairs
    if cfg.split != "all":
        splits = load_splits(cfg.splits_file) if cfg.splits_file else get_splits(ds, None, seed=0)
        keep = set(splits[cfg.split])
        pairs = [p for p in pairs if p.id in keep]
    pairs = [pairs[i] for i in stratified_sample([p.subset for p in pairs], cfg.max_pairs, cfg.seed)]
    fig, axes = plt.subplots(1, len(cfg.models), figsize=(5 * len(cfg.models), 4.6), squeeze=False)
    results = {"pairs": len(pairs), "split": cfg.split, "splits_file": cfg.splits_file, "models": {}}
    for ax, name in zip(axes[0], cfg.models):
        model = RewardModel.from_pretrained(name, max_length=cfg.max_length)
        fc, fr, rc, rr = model_features(model, pairs)
        sep = feature_separation(fc, fr, k=cfg.knn_k, seed=cfg.seed)
        sep["pair_accuracy"] = float(np.mean(rc > rr))
        results["models"][name] = sep
        emb = TSNE(n_components=2, perplexity=min(cfg.perplexity, (2 * len(pairs) - 1) / 3), random_state=cfg.seed,
                   init="pca").fit_transform(np.concatenate([fc, fr]))
        ax.scatter(*emb[len(pairs):].T, s=6, alpha=0.6, color="#cc3311", label="rejected")
        ax.scatter(*emb[: len(pairs)].T, s=6, alpha=0.6, color="#009988", label="chosen")
        label = "/".join(Path(name).parts[-2:]) if Path(name).exists() else name
        ax.set_title(f"{label}\nk-NN acc {sep['knn_accuracy']:.3f}, silhouette {sep['silhouette']:.3f}",
                     fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    fig.savefig(out / "tsne.png", dpi=110)
    plt.close(fig)
    write_json(out / "separation.json", results)
    return results
