"""The lab's proxies: a backbone's cached features of the real pairs, the audit's ensemble and a single head trained on
the lab's labels, and the metrics that grade them against the gold."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from ..audit import response_length_diff
from ..data import PreferencePair
from ..detectors import cleanlab_label_issues
from ..ensemble import EnsembleConfig, default_cache_dir, encode_features, heads_on_features, member_layers
from ..hardware import resolve_device, resolve_precision
from ..heads import fold_of, select_l2, train_bt_heads
from ..models import RewardModel
from ..configs.lab import LabConfig
from .labels import orient, read_gold_scores


def gold_accuracy(diff: np.ndarray, gold_diff: np.ndarray) -> float:
    """The lab's accuracy: share of pairs on which a proxy's reward difference ``diff (N,)`` has the sign of the
    gold's ``gold_diff (N,)``, both with the same sides (a tie of the proxy, 0, counts as preferring the second)."""
    return float(np.mean((np.asarray(diff) > 0) == (np.asarray(gold_diff) > 0)))


def detection_metrics(suspicion: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """AUROC, average precision, precision at k (k = number of true issues) and in the 5% most suspect."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    truth = np.asarray(truth, bool)
    k = max(1, int(truth.sum()))
    order = np.argsort(-suspicion, kind="stable")
    top5 = max(1, int(round(0.05 * len(suspicion))))
    return {"auroc": float(roc_auc_score(truth, suspicion)), "ap": float(average_precision_score(truth, suspicion)),
            "precision_at_k": float(truth[order[:k]].mean()), "precision_top5pct": float(truth[order[:top5]].mean())}


def cleanlab_suspicion(diff: np.ndarray, *, seed: int) -> np.ndarray:
    """cleanlab's label quality on pairs as 2-class examples (`rmkit.detectors.cleanlab_label_issues`)."""
    return cleanlab_label_issues(diff, seed=seed)


@dataclass
class ProxyFeatures:
    """A proxy backbone's cached features of the source pairs ``(N, V, H)`` (views = ``views`` layers)."""

    fc: np.ndarray
    fr: np.ndarray
    views: list[int]
    cfg: EnsembleConfig
    ids: list[str]
    num_layers: int
    # Trained heads' diffs by (settings, layers, labels): the studies train the same ensemble on the same labels
    # (learnability and strength fidelity both use seed s's labels), and run_lab repeats none of it.
    _trained: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def ensemble(self, label: np.ndarray, *, seed: int = 0, cfg: EnsembleConfig | None = None) -> np.ndarray:
        """The audit's cross-fitted ensemble trained on the lab's labels: diffs ``(M, N)``, sides as labelled."""
        cfg = replace(cfg or self.cfg, seed=seed)
        layers = member_layers(cfg, self.num_layers)
        return self._heads(cfg, layers, label)

    def by_layer(self, diffs: np.ndarray, *, seed: int = 0) -> dict[int, np.ndarray]:
        """The ensemble's ``diffs (M, N)`` (from `ensemble`, same seed) as one cross-fitted head per block: the
        members reading each layer, averaged where they scored (``{layer: (N,)}``)."""
        layers = np.array(member_layers(replace(self.cfg, seed=seed), self.num_layers))
        return {int(x): np.nanmean(diffs[layers == x], axis=0) for x in sorted(set(layers.tolist()))}

    def single(self, label: np.ndarray, *, seed: int = 0) -> np.ndarray:
        """One cross-fitted RM (a head on the last block, the features a sequence-classification head reads
        from): ``(N,)``."""
        cfg = replace(self.cfg, members=2, bootstrap=False, layers=[self.num_layers], seed=seed)
        return np.nanmean(self._heads(cfg, [self.num_layers] * 2, label), axis=0)

    def _heads(self, cfg: EnsembleConfig, layers: list[int], label: np.ndarray) -> np.ndarray:
        label = np.asarray(label, dtype=bool)
        key = (repr(cfg), tuple(layers), label.tobytes())
        if key not in self._trained:
            if len(self._trained) >= 16:  # (M, N) floats each: a few MB at most, the oldest go first
                self._trained.pop(next(iter(self._trained)))
            c, r = orient(self.fc, self.fr, label)
            pick = [self.views.index(x) for x in sorted(set(layers))]
            self._trained[key] = heads_on_features(cfg, c[:, pick], r[:, pick], self.ids, layers)[0]
        return self._trained[key].copy()  # a caller may write into its diffs


def proxy_features(cfg: EnsembleConfig, pairs: Sequence[PreferencePair], *, batch_size: int = 64,
                   progress: bool = True) -> ProxyFeatures:
    """Encode the source pairs once with the proxy backbone in ``cfg.precision``: the blocks the audit's members
    read, and the last (cached; the same cache entry as `rmkit audit` of the same data with the same settings)."""
    rm = RewardModel.from_pretrained(cfg.model, max_length=cfg.max_length).to(resolve_device(cfg.device))
    views = sorted(set(member_layers(cfg, rm.num_layers)) | {rm.num_layers})
    precision = resolve_precision(cfg.precision, rm.device, announce=cfg.precision == "auto")
    fc, fr = encode_features(rm, pairs, cache_dir=cfg.cache_dir or default_cache_dir(), model_id=cfg.model,
                             pooling="mean", layers=views, batch_size=batch_size, progress=progress,
                             precision=precision)
    return ProxyFeatures(np.asarray(fc), np.asarray(fr), views, replace(cfg, precision=precision),
                         [p.id for p in pairs], rm.num_layers)


class LabInputs(NamedTuple):
    """What the lab's studies take: the settings, the gold difference of every pair ``(N,)`` (source sides), the
    proxy's cached features, the source pairs (in the order of the other three) and their response length
    differences ``(N,)`` (chosen minus rejected, in the proxy's tokens)."""

    cfg: LabConfig
    gold: np.ndarray
    proxy: "ProxyFeatures"
    pairs: list[PreferencePair]
    length_diff: np.ndarray


def lab_source_pairs(cfg: LabConfig) -> list[PreferencePair]:
    """The real pairs the lab runs on: the data, read as ``cfg`` says, or its seeded sample (``max_pairs``)."""
    ds = cfg.read(cfg.data)
    return (ds if cfg.max_pairs is None else ds.sample(cfg.max_pairs, seed=cfg.seed)).pairs


def load_lab_inputs(cfg: LabConfig, gold_scores: str | Path, *, progress: bool = True) -> LabInputs:
    """The lab of ``cfg`` (its data, read as it says) with a gold already made (a gold.parquet, e.g. the committed
    benchmarks/lab/gold_hh_smollm2.parquet) and the proxy's features (encoded once, then cached)."""
    pairs = lab_source_pairs(cfg)
    ids = [p.id for p in pairs]
    proxy = proxy_features(cfg.proxy_config(), pairs, progress=progress)
    length_diff, _ = response_length_diff(pairs, proxy.cfg.model)
    return LabInputs(cfg, read_gold_scores(gold_scores, ids), proxy, pairs, length_diff)


def proxy_heads(proxy: ProxyFeatures, label: np.ndarray, train: np.ndarray, *, seed: int = 0,
                members: int = 5) -> dict[str, tuple[list[int], np.ndarray]]:
    """Reward heads trained on the lab's labels of the ``train`` pairs, to score new responses: ``single`` (one
    head on the last block) and ``ensemble`` (``members`` heads, each on another block and a bootstrap
    resample, as ensembles of RMs differ in what they read and what they saw). Returns name -> (layers, W)."""
    c, r = orient(proxy.fc, proxy.fr, label)
    fold = np.where(train, fold_of(proxy.ids, 2, seed=seed + 5), -1)
    out: dict[str, tuple[list[int], np.ndarray]] = {}
    rng = np.random.default_rng(seed)
    blocks = sorted(set(member_layers(replace(proxy.cfg, mode="seeds", members=members, layers=None),
                                      proxy.num_layers)))
    layers = [blocks[m % len(blocks)] for m in range(members)]
    W = np.zeros((members, proxy.fc.shape[2]))
    pool = np.flatnonzero(train)
    for layer in sorted(set(layers)):
        v = proxy.views.index(layer)
        l2 = select_l2(c[:, v], r[:, v], fold)[0]
        mine = [m for m in range(members) if layers[m] == layer]
        weights = np.zeros((len(mine), len(label)), np.float32)
        for j in range(len(mine)):
            np.add.at(weights[j], rng.choice(pool, size=len(pool), replace=True), 1.0)
        W[mine] = train_bt_heads(c[:, v], r[:, v], weights, l2=l2)
        if layer == proxy.num_layers:
            out["single"] = ([layer], train_bt_heads(c[:, v], r[:, v], train[None].astype(np.float32), l2=l2))
    if "single" not in out:
        v = proxy.views.index(proxy.num_layers)
        l2 = select_l2(c[:, v], r[:, v], fold)[0]
        out["single"] = ([proxy.num_layers], train_bt_heads(c[:, v], r[:, v], train[None].astype(np.float32), l2=l2))
    out["ensemble"] = (layers, W)
    return out


def head_rewards(feats: np.ndarray, views: Sequence[int], heads: tuple[list[int], np.ndarray]) -> np.ndarray:
    """Rewards ``(M, N)`` of the heads `proxy_heads` returns (``(layers, W (M, H))``, head m reading block
    ``layers[m]``) on features ``(N, V, H)`` of the blocks ``views``. Heads are linear, so features of chosen
    minus rejected give reward differences."""
    layers, W = heads
    return np.stack([feats[:, list(views).index(layer)] @ W[m] for m, layer in enumerate(layers)])
