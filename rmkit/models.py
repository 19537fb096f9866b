"""Reward models on any Hugging Face backbone.

A `RewardModel` wraps a standard ``AutoModelForSequenceClassification`` with ``num_labels=1``, so the
saved checkpoint is exactly what TRL, OpenRLHF and RewardBench load, and rmkit's rewards are that
model's logits. rmkit adds three things around it:

- rendering: chat messages -> text (the tokenizer's chat template where it has one, else a plain
  ``Human:``/``Assistant:`` transcript), tokenized and truncated from the left so the response is kept;
- features: the vector the scalar head reads (the paper's f(x, y)), captured from the head's input,
  for contrastive losses and t-SNE. Decoders: the final hidden state of the last non-pad token;
  BERT-style encoders: the pooled [CLS] vector;
- parameter selection (`set_trainable`): train everything, the head only, or the top N layers.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from .assets import load_pretrained, resolve_model
from .batching import TokenIds, length_sorted_batches
from .data import ROLE_NAMES, Message, PreferencePair, transcript

logger = logging.getLogger(__name__)
RMKIT_FILE = "rmkit.json"


def _load_seq_cls(path: str, **kwargs) -> nn.Module:
    """``AutoModelForSequenceClassification(num_labels=1)``, with transformers' load report (a table that
    flags every fresh reward head as MISSING, shown to every audit user) replaced by what matters: one
    info line when only the head is new, a warning naming any backbone weight the checkpoint lacks."""
    from transformers import AutoModelForSequenceClassification

    # A filter, not a level: transformers runs extra checks (and warns) when this logger's own level is
    # WARNING or above. Size mismatches and conversion errors still raise.
    report_logger = logging.getLogger("transformers.modeling_utils")
    no_report = lambda record: "LOAD REPORT" not in record.getMessage()  # noqa: E731
    report_logger.addFilter(no_report)
    try:
        model, info = load_pretrained(AutoModelForSequenceClassification, path, num_labels=1, output_loading_info=True,
                                      **kwargs)
    finally:
        report_logger.removeFilter(no_report)
    prefix = f"{model.base_model_prefix}."
    missing = sorted(info.get("missing_keys") or [])
    backbone = [k for k in missing if k.startswith(prefix)]
    if backbone:
        logger.warning("%s: the checkpoint lacks %d backbone weights, initialised at random: %s",
                       path, len(backbone), ", ".join(backbone[:8]) + (" ..." if len(backbone) > 8 else ""))
    if len(missing) > len(backbone):
        logger.info("%s: new reward head (%s), initialised at random", path,
                    ", ".join(k for k in missing if not k.startswith(prefix)))
    return model


def _cut_at_word(text: str, keep: int) -> str:
    """The end of ``text``, from the first whitespace within its last ``keep`` characters (the whole text if there
    is none)."""
    start = len(text) - keep
    for k in range(start, len(text)):
        if text[k].isspace():
            return text[k:]
    return text


class RewardOutput(NamedTuple):
    """A tuple, so DDP and ``torch.func`` pass it through untouched."""

    rewards: torch.Tensor  # (B,)
    features: torch.Tensor  # (B, H)


def _find_head(model: nn.Module) -> nn.Linear:
    """The linear layer whose output is the reward (``score`` for decoders, ``classifier`` for BERT)."""
    for name in ("score", "classifier", "classifier.out_proj", "classifier.dense_out", "out_proj"):
        mod = model
        for part in name.split("."):
            mod = getattr(mod, part, None)
            if mod is None:
                break
        if isinstance(mod, nn.Linear) and mod.out_features == 1:
            return mod
    raise ValueError(
        f"cannot find the scalar head of {type(model).__name__}: expected a Linear(H, 1) named "
        "score, classifier or classifier.out_proj"
    )


def _layer_list(model: nn.Module) -> nn.ModuleList:
    """The backbone's stack of transformer blocks: the longest ModuleList in the model."""
    best = None
    for mod in model.modules():
        if isinstance(mod, nn.ModuleList) and (best is None or len(mod) > len(best)):
            best = mod
    if best is None:
        raise ValueError(f"{type(model).__name__} has no list of layers to select from")
    return best


def transcript_template(tokenizer) -> str:
    """A Jinja chat template reproducing `RewardModel.render`'s transcript and the special tokens the
    tokenizer adds around a text (``[CLS] ... [SEP]`` for BERT)."""
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    start = next(i for i in range(len(full)) if full[i: i + len(bare)] == bare)
    prefix = tokenizer.decode(full[:start]) if start else ""
    suffix = tokenizer.decode(full[start + len(bare):]) if start + len(bare) < len(full) else ""
    names = ", ".join(f"'{k}': '{v}'" for k, v in ROLE_NAMES.items())
    return (f"{{%- set names = {{{names}}} -%}}{prefix}"
            "{%- for m in messages -%}{%- if not loop.first %}{{ '\\n\\n' }}{% endif -%}"
            "{{ names.get(m['role'], m['role']) }}: {{ m['content'] }}{%- endfor -%}"
            f"{suffix}")


class RewardModel(nn.Module):
    """A scalar reward model: ``rewards, features = rm(input_ids, attention_mask)``."""

    def __init__(self, model: nn.Module, tokenizer, *, max_length: int = 512, render: str | None = None):
        super().__init__()
        if getattr(model.config, "num_labels", 1) != 1:
            raise ValueError(f"a reward model needs num_labels=1, got {model.config.num_labels}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        # A plain reference, not a registered submodule: an alias of model.classifier/score under a second
        # name breaks torch.func.functional_call (it restores aliased weights wrongly), which MetaRM uses.
        object.__setattr__(self, "head", _find_head(model))
        # "template": the tokenizer's chat template; "transcript": Human:/Assistant: text plus the tokenizer's
        # own special tokens. Saved RMs record which, because save_pretrained gives transcript RMs a template too.
        if render is None:
            render = "template" if getattr(tokenizer, "chat_template", None) else "transcript"
        if render not in ("template", "transcript"):
            raise ValueError(f"render must be 'template' or 'transcript', got {render!r}")
        self.use_chat_template = render == "template"
        tokenizer.truncation_side = "left"

    # ---------------------------------------------------------------- loading and saving
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = "minilm",
        *,
        max_length: int | None = None,
        dtype: torch.dtype | None = None,
        **kwargs,
    ) -> "RewardModel":
        """Load a backbone or a saved reward model by hub id, local path, or rmkit alias (``minilm``)."""
        from transformers import AutoTokenizer

        path = resolve_model(name_or_path)
        tokenizer = load_pretrained(AutoTokenizer, path)
        if tokenizer.pad_token is None:  # decoders: pad with EOS, as TRL does
            tokenizer.pad_token = tokenizer.eos_token
        model = _load_seq_cls(path, dtype=dtype or torch.float32, **kwargs)
        model.config.pad_token_id = tokenizer.pad_token_id
        saved = Path(path) / RMKIT_FILE
        meta = json.loads(saved.read_text()) if saved.exists() else {}
        if max_length is None:
            max_length = meta.get("max_length") or min(getattr(tokenizer, "model_max_length", 512), 512)
        return cls(model, tokenizer, max_length=max_length, render=meta.get("render"))

    def save_pretrained(self, path: str | Path) -> None:
        """Write a standard checkpoint (safetensors, config, tokenizer) plus ``rmkit.json``.

        A transcript-rendered RM (e.g. BERT) is saved with a chat template that writes the same text and
        special tokens, so tools that render with the RM tokenizer's template and ``add_special_tokens=False``
        (TRL's GRPO/RLOO reward models) feed it exactly the tokens rmkit does.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        saved_template = self.tokenizer.chat_template
        if not self.use_chat_template:
            self.tokenizer.chat_template = transcript_template(self.tokenizer)
        try:
            self.tokenizer.save_pretrained(path)
        finally:
            self.tokenizer.chat_template = saved_template
        render = "template" if self.use_chat_template else "transcript"
        (path / RMKIT_FILE).write_text(json.dumps({"max_length": self.max_length, "render": render,
                                                   "format": "rmkit-rm-v1"}))

    # ---------------------------------------------------------------- text -> tokens
    def render(self, prompt: Sequence[Message], response: Sequence[Message]) -> str:
        """The text the reward model reads for one (prompt, response)."""
        messages = list(prompt) + list(response)
        if self.use_chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return transcript(messages)

    def encode(self, prompts: Sequence[Sequence[Message]], responses: Sequence[Sequence[Message]]) -> list[list[int]]:
        """Token ids for each (prompt, response), truncated from the left to ``max_length``."""
        texts = [self.render(p, r) for p, r in zip(prompts, responses)]
        # A chat template writes its special tokens into the text; otherwise the tokenizer adds them.
        return self.tokenize(texts, add_special_tokens=not self.use_chat_template)

    CUT_CHARS_PER_TOKEN = 64  # a text longer than this many characters per kept token is cut before tokenizing

    def tokenize(self, texts: Sequence[str], *, add_special_tokens: bool) -> list[list[int]]:
        """Token ids of ``texts``, truncated from the left to ``max_length`` (truncation_side is "left", set in
        __init__: the response at the end is what survives). A text far longer than what is kept is first cut to
        its end at a word boundary, so a 2 MB text costs what 32k characters do instead of ~300 MB of tokenizer
        memory; the ids are the same, since tokens do not cross a word boundary and the cut keeps more than
        ``max_length`` tokens (checked: where it keeps fewer, the whole text is tokenized)."""
        keep = self.max_length * self.CUT_CHARS_PER_TOKEN
        cut = [t if len(t) <= keep else _cut_at_word(t, keep) for t in texts]
        ids: list[list[int]] = []
        for s in range(0, len(cut), 256):  # in chunks: one call over 50k texts held 2 GB of tokenizer state
            ids += self.tokenizer(cut[s: s + 256], add_special_tokens=add_special_tokens, truncation=True,
                                  max_length=self.max_length)["input_ids"]
        for k, (full, short) in enumerate(zip(texts, cut)):
            if short is not full and len(self.tokenizer(short, add_special_tokens=False, verbose=False)["input_ids"]) \
                    <= self.max_length:
                ids[k] = self.tokenizer(full, add_special_tokens=add_special_tokens, truncation=True,
                                        max_length=self.max_length)["input_ids"]
        return ids

    def encode_pairs(self, pairs: Sequence[PreferencePair], *, flat: bool = False
                     ) -> tuple[Sequence[Sequence[int]], Sequence[Sequence[int]]]:
        """Token ids of every pair's chosen and rejected side: ``(chosen_ids, rejected_ids)``, as lists, or with
        ``flat`` as `TokenIds` (int32, tokenized 4,096 pairs at a time: for large datasets)."""
        if not flat:
            prompts = [p.prompt for p in pairs]
            return self.encode(prompts, [p.chosen for p in pairs]), self.encode(prompts, [p.rejected for p in pairs])
        def side_ids(side: str):  # chunk by chunk: only one chunk's pairs and id lists are alive
            for s in range(0, len(pairs), 4096):
                chunk = pairs[s: s + 4096]
                yield self.encode([p.prompt for p in chunk], [getattr(p, side) for p in chunk])

        return TokenIds.from_chunks(side_ids("chosen")), TokenIds.from_chunks(side_ids("rejected"))

    def collate(self, ids: Sequence[Sequence[int]], device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Right-pad to the longest sequence in the batch (dynamic padding)."""
        n = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(ids), n), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), n), dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = torch.as_tensor(x, dtype=torch.long)
            attention_mask[i, : len(x)] = 1
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        return {k: v.to(device) for k, v in out.items()} if device is not None else out

    # ---------------------------------------------------------------- forward
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> RewardOutput:
        captured: list[torch.Tensor] = []
        hook = self.head.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0]))
        try:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, 1)
        finally:
            hook.remove()
        feats = captured[-1]
        if feats.dim() == 3:  # decoder heads score every position: take the pooled one, as HF does
            non_pad = (input_ids != self.model.config.pad_token_id).to(torch.int32)
            idx = (torch.arange(input_ids.shape[1], device=input_ids.device, dtype=torch.int32) * non_pad).argmax(-1)
            feats = feats[torch.arange(feats.shape[0], device=feats.device), idx]
        return RewardOutput(rewards=logits.squeeze(-1), features=feats)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, pooling: str = "native",
              layers: Sequence[int] | None = None) -> torch.Tensor:
        """Features for cached-feature heads, ``(B, V, H)``: ``native`` (V = 1: what the head reads, as in
        `forward`) or ``mean`` (V = len(layers): the mean over non-pad tokens of each hidden layer in
        ``layers``: 0 = embeddings, -1 = last; default the middle block). All layers come from one pass."""
        if pooling == "native":
            return self(input_ids, attention_mask).features.unsqueeze(1)
        if pooling != "mean":
            raise ValueError(f"pooling must be 'native' or 'mean', got {pooling!r}")
        base = self.model.base_model
        hidden = base(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
        picked = [(len(hidden) - 1) // 2] if layers is None else list(layers)
        m = attention_mask.unsqueeze(-1).to(hidden[0].dtype)
        count = m.sum(1).clamp_min(1.0)
        return torch.stack([(hidden[i] * m).sum(1) / count for i in picked], 1)

    @property
    def num_layers(self) -> int:
        """Transformer blocks: hidden layers 1..num_layers follow the embeddings (layer 0)."""
        return int(self.model.config.num_hidden_layers)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def batches(self, ids: Sequence[list[int]], batch_size: int, *, progress: bool = False, desc: str = "scoring"):
        """``(indices, padded batch on the model's device)`` over token ids, shortest first (little padding);
        results go back to input order by the indices."""
        from tqdm.auto import tqdm

        for idx in tqdm(length_sorted_batches([len(x) for x in ids], batch_size), desc=desc, disable=not progress):
            yield idx, self.collate([ids[i] for i in idx], self.device)

    def embed_texts(self, prompts: Sequence[Sequence[Message]], responses: Sequence[Sequence[Message]],
                    layers: Sequence[int], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Token-mean features ``(B, V, H)`` of each (prompt, response) at hidden ``layers``."""
        ids = self.encode(prompts, responses)
        out = np.zeros((len(ids), len(layers), int(self.model.config.hidden_size)), np.float32)
        was_training = self.training
        self.eval()
        with torch.inference_mode():
            for idx, batch in self.batches(ids, batch_size, progress=progress, desc="embedding"):
                out[idx] = self.embed(**batch, pooling="mean", layers=list(layers)).float().cpu().numpy()
        self.train(was_training)
        return out

    @torch.inference_mode()
    def score(
        self,
        prompts: Sequence[Sequence[Message]],
        responses: Sequence[Sequence[Message]],
        *,
        batch_size: int = 32,
    ) -> torch.Tensor:
        """Rewards for (prompt, response) pairs, batched by length; returns (N,) in input order. No gradient is
        kept (no_grad rather than inference_mode: callers such as PPO may modify the rewards in place)."""
        was_training = self.training
        self.eval()
        ids = self.encode(prompts, responses)
        out = torch.empty(len(ids))
        with torch.no_grad():
            for idx, batch in self.batches(ids, batch_size):
                out[idx] = self(**batch).rewards.float().cpu()
        self.train(was_training)
        return out


def set_trainable(model: nn.Module, spec: str, *, head: nn.Module | None = None) -> int:
    """Choose which parameters train: ``all``, ``head`` or ``top:N`` (top N blocks, final norm/pooler, head).

    ``model`` is a `RewardModel`, or any module holding a stack of blocks with its ``head`` given (the
    PPO critic). Returns the number of trainable parameters.
    """
    module = model.model if head is None else model
    head = model.head if head is None else head
    params = dict(module.named_parameters())
    if spec == "all":
        for p in params.values():
            p.requires_grad_(True)
    elif spec == "head" or spec.startswith("top:"):
        for p in params.values():
            p.requires_grad_(False)
        for p in head.parameters():
            p.requires_grad_(True)
        if spec.startswith("top:"):
            try:
                n = int(spec.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"train_layers 'top:N' needs an integer N, got {spec!r}") from None
            layers = _layer_list(module)
            for block in list(layers)[len(layers) - n:] if n > 0 else []:
                for p in block.parameters():
                    p.requires_grad_(True)
            # What sits after the blocks (final norm, BERT's pooler) is part of the "top".
            for name, p in params.items():
                if any(key in name for key in ("pooler", "norm.weight", "norm.bias", "final_layer_norm", "ln_f")) \
                        and ".layers." not in name and ".layer." not in name and ".h." not in name:
                    p.requires_grad_(True)
    else:
        raise ValueError(f"train_layers must be 'all', 'head' or 'top:N', got {spec!r}")
    return sum(p.numel() for p in params.values() if p.requires_grad)


def set_dropout(model: RewardModel, p: float) -> list:
    """Make the backbone stochastic with dropout ``p`` (the views of contrastive learning).

    Every ``nn.Dropout`` gets probability ``p``. Backbones built without dropout layers (Llama-style
    decoders keep only an attention-dropout float, usually 0) get dropout on every block's output
    through forward hooks instead. Returns the hooks' handles (``handle.remove()`` undoes them).
    Dropout acts only in training mode, so scoring is unaffected.
    """
    layers = [m for m in model.model.modules() if isinstance(m, nn.Dropout)]
    for m in layers:
        m.p = float(p)
    if layers:
        return []

    def hook(module, _inp, out):
        if not module.training or p == 0:
            return out
        if isinstance(out, tuple):
            return (nn.functional.dropout(out[0], p, True),) + out[1:]
        return nn.functional.dropout(out, p, True)

    return [block.register_forward_hook(hook) for block in _layer_list(model.model)]
