"""The gold reward model of the lab (`rmkit.lab`): a fixed RM that plays the human.

On a CPU the gold is a frozen backbone's token-mean features of one layer and a linear Bradley-Terry head fitted
on every real human label (`fit_gold`), saved as a head (``gold_head.npy``) beside ``gold.json`` (its backbone,
layer, length), and loaded again with `load_gold` or, from a lab's output folder, `load_gold_saved`. Any other
reward model (a hub id or a folder, e.g. a large RM on a GPU) can be the gold too: `gold_scorer` takes either and
scores policy samples, as ``rmkit bon --gold`` does to draw the overoptimization curve.

    gold = fit_gold("mpnet", pairs)               # GoldRM: frozen backbone + a BT head on the human labels
    g = gold.diffs(pairs)                         # (N,) gold r(chosen) - r(rejected)
    r = gold_scorer("runs/lab").score(prompts, responses)   # (B,) gold reward of samples

A gold fitted on preference pairs need not read the prompt (both responses of a pair answer the same one, so
prompt-only terms cancel); `fit_prompt_aware_gold` adds a relevance term to any gold, weighted so that it prefers
an answer to the question asked over an answer to another question about as often as relevance alone does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .data import PreferencePair
from .ensemble import default_cache_dir, encode_features
from .hardware import autocast, resolve_device, resolve_precision
from .heads import fold_of, select_l2, train_bt_heads
from .models import RewardModel
from .relevance import SentenceEncoder, other_prompt
from .reward_ensemble import load_reward_model


@dataclass
class GoldRM:
    """A frozen backbone's token-mean features of one hidden layer, and a linear head: ``r = w · f``."""

    backbone: RewardModel
    weights: np.ndarray  # (H,)
    layer: int
    model_id: str
    info: dict = field(default_factory=dict)
    precision: str = "fp32"  # resolved: fp32 or bf16 (autocast)

    def features(self, pairs: Sequence[PreferencePair], *, cache_dir: str | Path | None = None,
                 batch_size: int = 32, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        fc, fr = encode_features(self.backbone, pairs, cache_dir=cache_dir or default_cache_dir(),
                                 model_id=self.model_id, pooling="mean", layers=[self.layer],
                                 batch_size=batch_size, progress=progress, precision=self.precision)
        return np.asarray(fc[:, 0]), np.asarray(fr[:, 0])

    def diffs(self, pairs: Sequence[PreferencePair], **kw) -> np.ndarray:
        """Gold ``r(chosen) - r(rejected)`` of every pair ``(N,)``."""
        fc, fr = self.features(pairs, **kw)
        return (fc - fr) @ self.weights

    def score(self, prompts, responses, *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Gold reward of each (prompt, response) ``(B,)``: for policy samples (best-of-n, shift)."""
        with autocast(self.backbone.device, self.precision):
            f = self.backbone.embed_texts(prompts, responses, [self.layer], batch_size=batch_size, progress=progress)
        return f[:, 0] @ self.weights


def fit_gold(model_id: str, pairs: Sequence[PreferencePair], *, layer: int | None = None, max_length: int = 128,
             head_l2: float | None = None, seed: int = 0, batch_size: int = 32, progress: bool = True,
             device: str = "auto", precision: str = "fp32") -> GoldRM:
    """A gold RM: ``model_id``'s frozen features (cached), and one BT head trained on *all* of ``pairs``' labels,
    its L2 picked by cross-fitted log-loss over two folds. Records the head's held-out agreement with the
    labels it learned from (how much of the human signal the gold carries). ``device`` and ``precision``: of the
    encoding (``auto`` resolved as `rmkit.hardware` does)."""
    backbone = RewardModel.from_pretrained(model_id, max_length=max_length).to(resolve_device(device))
    layer = backbone.num_layers if layer is None else layer
    precision = resolve_precision(precision, backbone.device, announce=precision == "auto")
    gold = GoldRM(backbone, np.zeros(0), layer, model_id, precision=precision)
    fc, fr = gold.features(pairs, batch_size=batch_size, progress=progress)
    labels = np.array([p.label for p in pairs], dtype=np.float64)
    gold.weights, l2, agreement = fit_gold_head(fc, fr, [p.id for p in pairs], labels, l2=head_l2, seed=seed)
    gold.info = {"model": model_id, "layer": layer, "max_length": max_length, "precision": precision, "head_l2": l2,
                 "pairs": len(pairs), "heldout_agreement_with_human_labels": agreement}
    return gold


def fit_gold_head(fc: np.ndarray, fr: np.ndarray, ids: Sequence[str], labels: np.ndarray, *,
                  l2: float | None = None, seed: int = 0) -> tuple[np.ndarray, float, float]:
    """The gold's head on features ``fc``, ``fr (N, H)`` of the chosen and rejected texts, trained on *all* the
    human ``labels (N,)``: ``(weights (H,), l2, held-out agreement)``. ``l2`` None: picked by cross-fitted BT
    log-loss over two folds of ``ids``. The agreement is that of two cross-fitted heads with the decided labels:
    how much of the human signal the gold carries (a head scored on its own training labels would overstate it)."""
    fold = fold_of(ids, 2, seed=seed)
    l2 = l2 if l2 is not None else select_l2(fc, fr, fold, labels=labels)[0]
    W = train_bt_heads(fc, fr, np.stack([fold != 0, fold != 1, np.ones(len(ids), bool)]).astype(np.float32),
                       l2=l2, labels=labels)
    held = np.where(fold == 0, (fc - fr) @ W[0], (fc - fr) @ W[1])
    decided = labels != 0.5
    return W[2], float(l2), float(np.mean((held[decided] > 0) == (labels[decided] > 0.5)))


def load_gold(head: str | Path, model_id: str, *, layer: int | None = None, max_length: int = 128,
              device: str = "auto", precision: str = "fp32") -> GoldRM:
    """A gold saved by an earlier run: its head ``(H,)`` (a .npy, e.g. `fit_gold`'s weights) on ``model_id``'s
    frozen features of ``layer`` (default: the last). The same gold can then label another dataset, as the same
    human would label a second domain."""
    weights = np.load(head, allow_pickle=False)
    backbone = RewardModel.from_pretrained(model_id, max_length=max_length).to(resolve_device(device))
    hidden = int(backbone.model.config.hidden_size)
    if weights.shape != (hidden,):
        raise ValueError(f"{head}: a gold head of shape {weights.shape}, but {model_id} has "
                         f"{hidden} features (is gold_model the backbone the head was fitted on?)")
    layer = backbone.num_layers if layer is None else layer
    precision = resolve_precision(precision, backbone.device, announce=precision == "auto")
    return GoldRM(backbone, weights, layer, model_id, {"model": model_id, "layer": layer, "max_length": max_length,
                                                       "precision": precision, "head": str(head)}, precision)


def gold_files(spec: str | Path) -> tuple[Path, Path] | None:
    """``(gold.json, head.npy)`` of a saved lab gold: an ``rmkit lab`` output folder (``gold.json``,
    ``gold_head.npy``) or a ``NAME.json`` with ``NAME_head.npy`` beside it; None where ``spec`` is neither."""
    p = Path(spec)
    info = p / "gold.json" if p.is_dir() else p
    head = info.with_name(info.stem + "_head.npy")
    return (info, head) if info.suffix == ".json" and info.is_file() and head.is_file() else None


def load_gold_saved(spec: str | Path, *, device: str = "auto", precision: str = "fp32") -> GoldRM:
    """A lab gold saved as `gold_files` finds it: the head on the backbone, layer and length its JSON names."""
    found = gold_files(spec)
    if found is None:
        raise ValueError(f"{spec}: no saved gold (a folder with gold.json and gold_head.npy, or NAME.json beside "
                         f"NAME_head.npy)")
    info = json.loads(found[0].read_text())
    missing = [k for k in ("model", "layer", "max_length") if k not in info]
    if missing:
        raise ValueError(f"{found[0]}: no {', '.join(missing)} (needed to rebuild the gold)")
    return load_gold(found[1], info["model"], layer=info["layer"], max_length=info["max_length"],
                     device=device, precision=precision)


class _RewardModelGold:
    """Any reward model (or ensemble) as the gold: `score` returns numpy rewards, as `GoldRM.score` does."""

    def __init__(self, rm, spec: str, device, precision: str):
        self.rm, self.device, self.precision = rm, device, precision
        self.info = {"model": spec, "precision": precision}

    def score(self, prompts, responses, *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        with autocast(self.device, self.precision):
            return self.rm.score(prompts, responses, batch_size=batch_size).float().numpy()


def gold_scorer(spec: str, *, device: str = "auto", precision: str = "fp32"):
    """A gold for policy samples from ``spec``: a saved lab gold (an ``rmkit lab`` output folder, or
    ``NAME.json`` beside ``NAME_head.npy`` as in benchmarks/lab), a saved `PromptAwareGold` (a JSON naming its base
    gold and relevance weight), or any reward model that `rmkit.reward_ensemble.load_reward_model` reads (a folder,
    a hub id, an ensemble). Its ``score(prompts, responses, batch_size=)`` gives ``(B,)`` numpy rewards; ``info``
    says what it is."""
    if prompt_aware_file(spec) is not None:
        return load_prompt_aware_gold(spec, device=device, precision=precision)
    if gold_files(spec) is not None:
        return load_gold_saved(spec, device=device, precision=precision)
    dev = resolve_device(device)
    return _RewardModelGold(load_reward_model(spec).to(dev), spec, dev,
                            resolve_precision(precision, dev, announce=precision == "auto"))


@dataclass
class PromptAwareGold:
    """A gold that reads the prompt: ``r(x, y) = base(x, y) + beta * relevance(x, y)``, relevance the cosine of a
    sentence encoder's embeddings of the question and the answer (`rmkit.relevance`). ``base``: any gold with
    ``score(prompts, responses, batch_size=, progress=)`` (a `GoldRM`, a reward model through `gold_scorer`)."""

    base: Any
    beta: float
    encoder: SentenceEncoder
    info: dict = field(default_factory=dict)

    def parts(self, prompts, responses, *, batch_size: int = 32, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The base gold's reward and the relevance of each (prompt, response): ``(base (B,), relevance (B,))``."""
        base = np.asarray(self.base.score(prompts, responses, batch_size=batch_size, progress=progress), np.float64)
        return base, self.encoder.relevance(prompts, responses, batch_size=batch_size, progress=progress)

    def score(self, prompts, responses, *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        base, rel = self.parts(prompts, responses, batch_size=batch_size, progress=progress)
        return base + self.beta * rel

    def relevance_diffs(self, pairs: Sequence[PreferencePair], *, batch_size: int = 32,
                        progress: bool = False) -> np.ndarray:
        """``relevance(x, chosen) - relevance(x, rejected)`` of every pair ``(N,)``: what the relevance term adds to
        a pair's gold difference (``beta`` times it), with no pass of the base gold."""
        prompts = [p.prompt for p in pairs] * 2
        rel = self.encoder.relevance(prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs],
                                     batch_size=batch_size, progress=progress)
        return rel[: len(pairs)] - rel[len(pairs):]

    def save(self, path: str | Path, base_spec: str) -> Path:
        """``path`` (a JSON): the base gold's spec (relative to the JSON's folder where it lies below it), the
        weight, the encoder and how the weight was chosen; `gold_scorer` rebuilds the gold from it."""
        path = Path(path)
        info = dict(self.info)
        if isinstance(info.get("base"), dict) and "head" in info["base"]:  # a record, not read back: no machine path
            info["base"] = {**info["base"], "head": _relative_to(info["base"]["head"], path.parent)}
        path.write_text(json.dumps({"prompt_aware": {"base": _relative_to(base_spec, path.parent),
                                                     "relevance_weight": self.beta,
                                                     "relevance_model": self.encoder.model_id},
                                    **info}, indent=1))
        return path


def _relative_to(spec: str | Path, folder: Path) -> str:
    """``spec`` relative to ``folder`` where it lies below it; elsewhere, or a hub id, as given."""
    try:
        return str(Path(spec).resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(spec)


def prompt_aware_file(spec: str | Path) -> dict | None:
    """The ``prompt_aware`` block of a saved `PromptAwareGold`'s JSON, None where ``spec`` is not one."""
    p = Path(spec)
    p = p / "gold.json" if p.is_dir() else p  # an rmkit lab output folder
    if p.suffix != ".json" or not p.is_file():
        return None
    block = json.loads(p.read_text()).get("prompt_aware")
    return block if isinstance(block, dict) else None


def load_prompt_aware_gold(spec: str | Path, *, device: str = "auto", precision: str = "fp32") -> PromptAwareGold:
    """A `PromptAwareGold` saved by `PromptAwareGold.save`: its base gold through `gold_scorer`, then the weight."""
    block = prompt_aware_file(spec)
    if block is None or not {"base", "relevance_weight", "relevance_model"} <= set(block):
        raise ValueError(f"{spec}: not a saved prompt-aware gold (a JSON whose prompt_aware block names base, "
                         f"relevance_weight and relevance_model)")
    spec = Path(spec) / "gold.json" if Path(spec).is_dir() else Path(spec)
    base = Path(block["base"])
    base = spec.parent / base if not base.is_absolute() and (spec.parent / base).exists() else base
    info = json.loads(spec.read_text())
    return PromptAwareGold(gold_scorer(str(base), device=device, precision=precision), float(block["relevance_weight"]),
                           SentenceEncoder(block["relevance_model"], device=str(resolve_device(device))), info)


def relevance_weight(base_gap: np.ndarray, rel_gap: np.ndarray, *, slack: float = 0.1) -> dict[str, float]:
    """The smallest ``beta >= 0`` with which ``base + beta * relevance`` prefers the own answer as often as
    relevance alone does, less ``slack``. ``base_gap, rel_gap (N,)``: base gold and relevance of a prompt's own
    answer minus those of another prompt's answer, both under the prompt. The own answer wins where
    ``base_gap + beta * rel_gap > 0``; as beta grows that share tends to ``ceiling = mean(rel_gap > 0)``.
    Returns beta, the share it reaches, the ceiling and the share at beta 0 (the base gold alone)."""
    base_gap, rel_gap = np.asarray(base_gap, np.float64), np.asarray(rel_gap, np.float64)

    def share(beta: np.ndarray) -> np.ndarray:
        return ((base_gap[None] + beta[:, None] * rel_gap[None]) > 0).mean(1)

    # The share changes only where some pair's sign flips, at beta = -base_gap / rel_gap: trying 0 and just past
    # each positive crossing finds the smallest beta that reaches the target.
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = -base_gap / rel_gap
    candidates = np.concatenate([[0.0], np.sort(cross[np.isfinite(cross) & (cross > 0)]) * (1 + 1e-9)])
    ceiling = float((rel_gap > 0).mean())
    shares = share(candidates)
    first = int(np.argmax(shares >= ceiling - slack))
    return {"beta": float(candidates[first]), "prefers_own": float(shares[first]), "ceiling": ceiling,
            "prefers_own_base": float(shares[0]), "slack": slack, "responses": len(base_gap)}


def fit_prompt_aware_gold(base, prompts: Sequence, responses: Sequence, *, encoder: SentenceEncoder | None = None,
                          slack: float = 0.1, seed: int = 0, batch_size: int = 32,
                          progress: bool = False) -> PromptAwareGold:
    """``base`` plus a relevance term weighted by `relevance_weight` on ``prompts`` with their own ``responses``
    (one each, distinct prompts; e.g. the chosen sides of preference pairs), each set against the answer of
    another prompt (`rmkit.relevance.other_prompt`, seeded) under the same prompt.

    Why this rule: a person asked one question prefers an answer to it over an answer to another question nearly
    always, whatever their taste; a gold fitted on same-prompt pairs never saw that contrast. The relevance encoder
    is the best available judge of "answers this question"; the weight lets the base gold overrule it on at most
    ``slack`` of such contrasts, and no more, so the base keeps deciding between two answers to the same question."""
    if len(prompts) != len(responses) or len(prompts) < 2:
        raise ValueError(f"fit_prompt_aware_gold needs at least 2 prompts with one response each, got "
                         f"{len(prompts)} prompts and {len(responses)} responses")
    encoder = encoder or SentenceEncoder()
    other = other_prompt(len(prompts), seed=seed)
    rivals = [responses[j] for j in other]
    gold = PromptAwareGold(base, 0.0, encoder)
    # One pass over own answers and rivals together: the rivals are the same answers, so the encoder embeds each
    # text once (it dedupes within a call).
    b, r = gold.parts(list(prompts) * 2, list(responses) + rivals, batch_size=batch_size, progress=progress)
    n = len(prompts)
    own_b, own_r, riv_b, riv_r = b[:n], r[:n], b[n:], r[n:]
    fit = relevance_weight(own_b - riv_b, own_r - riv_r, slack=slack)
    gold.beta = fit["beta"]
    # How much the rule's one free number moves the weight: the same contrasts under other slacks.
    by_slack = {str(s): relevance_weight(own_b - riv_b, own_r - riv_r, slack=s)["beta"] for s in (0.0, 0.01, 0.05, 0.1)}
    gold.info = {"base": getattr(base, "info", {}), "relevance_model": encoder.model_id,
                 "relevance_weight_fit": {**fit, "seed": seed, "beta_by_slack": by_slack}}
    return gold
