"""The settings of EnsembleConfig (`rmkit.ensemble`), importable without torch: `rmkit <command> --help` reads them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import setting
from .hardware import DEVICES_HELP, PRECISION_HELP, check_device


@dataclass
class EnsembleConfig:
    """How the ensemble is built."""

    model: str = setting("minilm", "backbone: hub id, local path, or alias (minilm, smollm2, mpnet, gemma3)")
    more_models: list[str] = setting(
        [], "frozen: further backbones (e.g. mpnet); the members alternate between `model` and these, so they "
            "differ in pretraining, not only in the layer they read (Eisenstein et al. 2023)")
    members: int = setting(10, "ensemble members M")
    mode: Literal["crossfit", "seeds"] = setting(
        "crossfit", "crossfit (out-of-sample scores) or seeds (the paper's in-sample scores)")
    folds: int = setting(2, "folds K for crossfit; member m scores fold m % K")
    backbone: Literal["frozen", "finetune_folds", "finetune_members"] = setting(
        "frozen", "frozen (cached features + heads), finetune_folds, or finetune_members")
    pooling: Literal["mean", "native"] = setting(
        "mean", "features for heads: mean (over the tokens of a hidden layer) or native "
        "(what a seq-cls head reads)")
    layers: list[int] | None = setting(
        None, "hidden layers whose token means the heads read (0 = embeddings, -1 = last), all from one encoding "
              "pass; members take them in turn, so they differ in what they read, not only in their resample; "
              "default: as many evenly spaced transformer blocks as a fold has members")
    max_length: int = setting(128, "tokens per text (left-truncated, the response kept)")
    batch_size: int = setting(64, "texts per forward pass when encoding")
    head_l2: float | None = setting(None, "L2 penalty of the linear heads; default: picked per layer from 1e-4..1 "
                                          "by cross-fitted log-loss on the data's own labels (heads.select_l2)")
    bootstrap: bool | None = setting(None, "each head trains on a bootstrap resample of its pairs; default: only when "
                                           "members of a fold read the same features and would otherwise coincide")
    seed: int = setting(0, "seed of folds, bootstraps and fine-tuning")
    device: str = setting("auto", DEVICES_HELP)
    precision: Literal["auto", "fp32", "bf16"] = setting(
        "auto", PRECISION_HELP + "; bf16 features are cached apart from fp32 ones")
    cache_dir: str | None = setting(None, "feature cache (default: $RMKIT_CACHE/features or ~/.cache/rmkit/features)")
    feature_store: Literal["float32", "float16"] = setting(
        "float32", "how the feature cache stores numbers: float16 halves its size (benchmarks/bounded_features.py "
                   "measures what it costs)")
    feature_dim: int | None = setting(None, "project each cached view to this many numbers (a seeded random "
                                            "projection): the cache's size is yours to choose; default: the "
                                            "backbone's width")
    head_chunk_rows: int | None = setting(
        None, "the heads read the feature cache this many pairs at a time (memory: one chunk, the solution the "
              "full-batch one); default: all at once, unless one layer's features pass 2 GB")
    heads_by_subset: Literal["no", "auto", "yes"] = setting(
        "auto", "frozen: heads trained per subset (an hh-rlhf data_dir, a source) instead of one set for all pairs: yes "
              "for every subset of 200 pairs or more, auto where a subset's own heads also agree with its labels "
              "out of fold significantly more often than the pooled ones (McNemar z >= 2; hh-rlhf's harmless-base "
              "labels oppose what its helpful pairs teach)")
    finetune_epochs: float = setting(1.0, "epochs of each fine-tune (finetune_* backbones)")
    finetune_lr: float = setting(5e-5, "learning rate of each fine-tune")
    finetune_batch_size: int = setting(16, "pairs per batch of each fine-tune")
    finetune_settings: dict = setting({}, "further TrainConfig settings for each fine-tune, e.g. {meta_data: meta.jsonl} "
                                          "(MetaRM members, adapted to a policy's responses) or {objective: margin}")
    member_devices: list[str] | None = setting(
        None, "finetune_members: train members in parallel, one process per device (e.g. cuda:0,cuda:1); "
              "default: one after another on the current device")

    def check(self) -> None:
        check_device(self.device)
        if self.mode not in ("crossfit", "seeds"):
            raise ValueError(f"mode must be 'crossfit' or 'seeds', got {self.mode!r}")
        if self.backbone not in ("frozen", "finetune_folds", "finetune_members"):
            raise ValueError(f"backbone must be frozen, finetune_folds or finetune_members, got {self.backbone!r}")
        if self.backbone == "finetune_folds" and self.mode != "crossfit":
            raise ValueError("backbone finetune_folds is cross-fitting by construction: use mode crossfit")
        if self.members < 1:
            raise ValueError("members must be >= 1")
        if self.pooling not in ("mean", "native"):
            raise ValueError(f"pooling must be 'mean' or 'native', got {self.pooling!r}")
        if self.pooling == "native" and self.layers:
            raise ValueError("layers apply to mean pooling; native pooling reads what the head reads")
        if self.heads_by_subset not in ("no", "auto", "yes"):
            raise ValueError(f"heads_by_subset must be no, auto or yes, got {self.heads_by_subset!r}")
        if self.heads_by_subset == "yes" and self.backbone != "frozen":  # auto: the frozen backbone's choice only
            raise ValueError("heads_by_subset yes trains heads on frozen features: it needs backbone frozen")
        if self.more_models and self.backbone != "frozen":
            raise ValueError("more_models mixes frozen backbones: it needs backbone frozen")
        if self.more_models and self.members < self.folds * (1 + len(self.more_models)):
            raise ValueError(f"{1 + len(self.more_models)} backbones x {self.folds} folds need members >= "
                             f"{self.folds * (1 + len(self.more_models))}")
