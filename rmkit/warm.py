"""Weight-averaged reward models (WARM, Ramé et al. 2024, "WARM: On the Benefits of Weight Averaged Reward Models").

Reward models fine-tuned from one initialisation (the same base model and head) with different seeds, data orders or
learning rates stay in one linearly connected basin; averaging their weights gives one model with much of the
prediction ensemble's robustness to label noise and distribution shift at a single model's inference cost.

    model = average_reward_models(["runs/rm0", "runs/rm1", "runs/rm2"], "runs/warm/model")
    rmkit average runs/rm0 runs/rm1 runs/rm2 --output-dir runs/warm      # or: rmkit train --warm 3

Averaging refuses members that cannot be averaged, naming the mismatch: another architecture (config or weight
shapes), or another initialisation (each `rmkit train` run records ``init_fingerprint``, a hash of its weights
before training, in results.json). The result is a plain ``AutoModelForSequenceClassification`` checkpoint with a
model card naming its members.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .configs.warm import AverageConfig  # noqa: F401 - the settings, beside the job
from .files import check_output_dir, write_json

# config.json keys that say nothing about the architecture
_IGNORED = {"_name_or_path", "name_or_path", "transformers_version", "torch_dtype", "dtype", "id2label", "label2id"}


@dataclass
class Member:
    model: Path  # the model folder
    init: str | None  # its init_fingerprint, where its run recorded one


def find_member(path: str | Path) -> Member:
    """A member from an `rmkit train` output folder (its ``model/`` and ``results.json``) or a model folder."""
    p = Path(path)
    model = p / "model" if (p / "model" / "config.json").exists() else p
    if not (model / "config.json").exists():
        raise FileNotFoundError(f"{path}: neither a model folder (config.json) nor an rmkit train output (model/)")
    results = model.parent / "results.json"
    init = json.loads(results.read_text()).get("init_fingerprint") if results.exists() else None
    return Member(model, init)


def check_members(members: Sequence[Member], *, allow_unknown_init: bool = False) -> None:
    """Refuse members that cannot be averaged, naming the mismatch (architecture first, then initialisation)."""
    from safetensors import safe_open

    if len(members) < 2:
        raise ValueError("averaging needs at least two members")
    first = members[0]
    cfg0 = {k: v for k, v in json.loads((first.model / "config.json").read_text()).items() if k not in _IGNORED}
    shapes0 = _shapes(first.model, safe_open)
    for m in members[1:]:
        cfg = {k: v for k, v in json.loads((m.model / "config.json").read_text()).items() if k not in _IGNORED}
        differ = sorted(k for k in set(cfg0) | set(cfg) if cfg0.get(k) != cfg.get(k))
        if differ:
            raise ValueError(f"{m.model} and {first.model} differ in architecture ({', '.join(differ[:5])}): members "
                             "must share one base model")
        shapes = _shapes(m.model, safe_open)
        if shapes != shapes0:
            diff = sorted(set(shapes.items()) ^ set(shapes0.items()))[:3]
            raise ValueError(f"{m.model} and {first.model} differ in their weights' names or shapes ({diff})")
    inits = {m.init for m in members}
    if None in inits and not allow_unknown_init:
        unknown = [str(m.model) for m in members if m.init is None]
        raise ValueError(f"{unknown[0]}: its initialisation is unknown (no init_fingerprint in its results.json): "
                         "train members with rmkit train (same model and init_seed), or pass allow_unknown_init")
    if len(inits - {None}) > 1:
        by = {}
        for m in members:
            by.setdefault(m.init, []).append(str(m.model))
        raise ValueError("members start from different initialisations (init_fingerprint "
                         + "; ".join(f"{k}: {', '.join(v)}" for k, v in by.items())
                         + "): train them from the same model with the same init_seed")


def _shapes(folder: Path, safe_open) -> dict[str, tuple]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                out[k] = tuple(st.get_slice(k).get_shape())
    return out


def average_reward_models(paths: Sequence[str | Path], output: str | Path, *, allow_unknown_init: bool = False):
    """Average the weights of reward models trained from one initialisation; save the result to ``output`` (a plain
    sequence-classification checkpoint with rmkit's settings and a model card) and return it as a `RewardModel`."""
    import torch

    from .models import RewardModel

    members = [find_member(p) for p in paths]
    check_members(members, allow_unknown_init=allow_unknown_init)
    models = [RewardModel.from_pretrained(str(m.model)) for m in members]
    states = [m.model.state_dict() for m in models]
    avg = {}
    for k, t in states[0].items():
        if torch.is_floating_point(t):
            avg[k] = sum(s[k].double() for s in states).div(len(states)).to(t.dtype)
        else:  # integer buffers (position ids): equal in every member, kept
            avg[k] = t
    out_model = models[0]
    out_model.model.load_state_dict(avg)
    out = check_output_dir(output)
    out_model.save_pretrained(out)
    names = [str(m.model) for m in members]
    write_json(out / "warm.json", {"members": names, "init_fingerprint": members[0].init, "method": "uniform average"})
    (out / "README.md").write_text(_card(names, members[0].init))
    return out_model


def _card(names: list[str], init: str | None) -> str:
    rows = "\n".join(f"- `{n}`" for n in names)
    return f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [reward-model, rlhf, rmkit, warm]
---
# Weight-averaged reward model (WARM)

The uniform average of the weights of {len(names)} reward models fine-tuned from one initialisation
(init fingerprint `{init or "unknown"}`), as in Ramé et al. 2024. Members:

{rows}

Load it as any reward model: `AutoModelForSequenceClassification.from_pretrained(...)` (num_labels=1) or
`rmkit.models.RewardModel.from_pretrained(...)`.
"""


def run_average(cfg: "AverageConfig") -> dict:
    """``rmkit average RUN... --output-dir OUT``."""
    from .config import save_config, validate

    validate(cfg)
    average_reward_models(cfg.models, Path(cfg.output_dir) / "model", allow_unknown_init=cfg.allow_unknown_init)
    save_config(cfg, Path(cfg.output_dir) / "config.yaml")
    return {"members": list(cfg.models), "output": str(Path(cfg.output_dir) / "model")}
