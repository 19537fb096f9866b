"""The settings of TrainConfig (`rmkit.training`), importable without torch: `rmkit <command> --help` reads them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import check_layers_spec, check_positive, setting
from ..data import MAX_PAIRS_HELP, DataSource, check_split_fractions


@dataclass
class TrainConfig(DataSource):
    """Settings of ``rmkit train`` (and of `train_reward_model`)."""

    data: str = setting("", "preference data: a file, a directory, or a hub dataset name")
    model: str = setting("minilm", "backbone or reward model: hub id, local path, or the alias minilm/smollm2")
    output_dir: str = setting("runs/rm", "where the model, metrics, splits and checkpoints go")
    splits_file: str | None = setting(None, "splits JSON to reuse or create (default: OUTPUT_DIR/splits.json)")
    split_seed: int = setting(0, "seed of the train/validation/test split")
    split_fractions: list[float] = setting([0.7, 0.1, 0.2], "train, validation, test fractions")
    max_length: int = setting(256, "tokens per text; longer texts lose their beginning, never the response")
    train_layers: str = setting("all", "what trains: all, head, or top:N (top N blocks + head)")
    objective: Literal["bt", "margin", "soft", "odin"] = setting(
        "bt", "per-pair loss: bt (Bradley-Terry, Eq. 1), margin (BT minus the pair's margin, Eq. 6), "
        "soft (cross-entropy on the pair's label, Eq. 5; with its margin if it has one), or odin (BT on the served "
        "reward plus a length head that carries the correlation with response length: Chen et al. 2024)")
    odin_length_weight: float = setting(1.0, "odin: weight of the length loss (length head correlated with response "
                                             "length, the served reward not)")
    odin_orth_weight: float = setting(1.0, "odin: weight of the orthogonality of the two heads' weights")
    epochs: float = setting(1.0, "passes over the training pairs (fractions allowed)")
    batch_size: int = setting(16, "pairs per micro-batch (each pair is two texts)")
    grad_accum: int = setting(1, "micro-batches per optimizer step")
    lr: float = setting(3e-5, "peak learning rate of the backbone")
    head_lr: float | None = setting(None, "learning rate of the scalar head (default: lr)")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    warmup_ratio: float = setting(0.05, "share of the steps spent warming up linearly")
    lr_schedule: Literal["linear", "cosine", "constant"] = setting("linear", "after warmup: linear, cosine, or constant")
    max_grad_norm: float = setting(1.0, "global gradient-norm clip (0 disables)")
    seed: int = setting(0, "seed for the head's init, batch order and dropout")
    init_seed: int | None = setting(None, "seed of the head's initialisation alone (default: seed); members that share "
                                          "it and the base model start from the same weights, which weight averaging "
                                          "(rmkit average, train --warm) needs")
    warm: int = setting(0, "train this many members from one initialisation (init_seed, default seed), member m with "
                           "seed + m, and average their weights into OUTPUT_DIR/model (WARM, Rame et al. 2024); 0: one "
                           "model")
    eval_every: int = setting(100, "evaluate on the validation pairs every N optimizer steps (0: only at the end)")
    save_every: int = setting(100, "write a resumable checkpoint every N optimizer steps (0: never)")
    eval_batch_size: int = setting(64, "texts per forward pass when scoring")
    max_pairs: int | None = setting(None, MAX_PAIRS_HELP)  # drawn with split_seed; then split as all of it
    max_steps: int | None = setting(None, "stop after N optimizer steps (overrides epochs)")
    resume: bool = setting(True, "continue from OUTPUT_DIR/checkpoint if one is there")
    eval_test: bool = setting(True, "after training, score the test split (overall and per subset)")
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = setting(
        "auto", "accelerate's mixed precision: auto (bf16 on a GPU that supports it; none on CPUs, where training "
        "stays fp32), no, fp16 or bf16")
    contrastive: Literal["none", "simcse", "simcse-diff", "swav", "swav-diff"] = setting(
        "none", "contrastive term added to the RM loss (Section 3): none, or a preset: "
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
    log_pair_margins: bool = setting(False, "write each training pair's margin (chosen minus rejected reward) as the "
                                            "step that trains on it computes it, to pair_margins.jsonl: the training "
                                            "dynamics rmkit.detectors.aum and cartography read")
    judge_labels: str | None = setting(None, "table (parquet/CSV/JSONL) with columns id, judge_label (1 chosen, "
                                            "0 rejected, 0.5 tie): adds the judge and agreement views to every evaluation")

    def check(self) -> None:
        if self.objective == "odin" and (self.contrastive != "none" or self.meta_data):
            raise ValueError("objective odin trains a length head beside the RM: use it without contrastive and "
                             "meta_data")
        if self.warm == 1 or self.warm < 0:
            raise ValueError(f"warm: the number of members to average, >= 2 (0: one model), got {self.warm}")
        check_layers_spec("train_layers", self.train_layers)
        check_positive(self, "epochs", "batch_size", "grad_accum", "lr", "max_length", "eval_batch_size", "meta_prompts",
                       "max_pairs", "max_steps", "head_lr", "swav_prototypes")
        check_positive(self, "eval_every", "save_every", "warmup_ratio", "weight_decay", "max_grad_norm",
                       "meta_inner_lr", allow_zero=True)
        check_split_fractions(self.split_fractions)
