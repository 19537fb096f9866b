"""Policies: any Hugging Face causal LM (default: the offline SmolLM2-135M-Instruct), its chat template,
and seeded, batched sampling of responses to chat prompts.

Used for MetaRM's meta set (k responses per prompt from the current policy) and by PPO's rollouts.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import torch

from .assets import load_pretrained, resolve_model
from .batching import length_sorted_batches
from .config import require_saved_settings, save_config, validate
from .data import USABLE, DataError, DataSource, Message, as_messages, read_table
from .files import trim_cut_line
from .metaset import read_sample_records, write_meta_set
from .configs.policy import SamplingConfig, SampleConfig  # noqa: F401 - the settings, beside the job


def load_policy(name_or_path: str = "smollm2", *, dtype: torch.dtype = torch.float32):
    """A causal LM and its tokenizer (left padding for generation; pad = EOS when the model has none)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name_or_path)
    arch = getattr(load_pretrained(AutoConfig, path), "architectures", None) or []
    if arch and all(a.endswith("ForSequenceClassification") for a in arch):
        # transformers would load it with a freshly initialised language-model head: a random policy, silently
        raise ValueError(f"policy {name_or_path}: a reward model ({', '.join(arch)}), not a causal LM; pass the "
                         "policy (e.g. the SFT model) instead")
    tok = load_pretrained(AutoTokenizer, path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # generation continues every row from its last real token
    tok.truncation_side = "left"
    model = load_pretrained(AutoModelForCausalLM, path, dtype=dtype)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def render_prompt(tokenizer, prompt: Sequence[Message]) -> str:
    """The prompt as the policy reads it: its chat template with the assistant turn opened."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
    return "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in prompt) + \
        "\n\nAssistant:"


def encode_prompts(tokenizer, prompts: Sequence[Sequence[Message]], max_tokens: int) -> list[list[int]]:
    texts = [render_prompt(tokenizer, p) for p in prompts]
    add_special = not getattr(tokenizer, "chat_template", None)
    return tokenizer(texts, add_special_tokens=add_special, truncation=True, max_length=max_tokens)["input_ids"]


@torch.no_grad()
def generate(model, tokenizer, prompt_ids: Sequence[Sequence[int]], cfg: SamplingConfig, *,
             generator_seed: int | None = None) -> list[list[int]]:
    """Sample one response per prompt (token ids, without the prompt, cut at EOS)."""
    pad = tokenizer.pad_token_id
    n = max(len(x) for x in prompt_ids)
    ids = torch.full((len(prompt_ids), n), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, x in enumerate(prompt_ids):  # left padding
        ids[i, n - len(x):] = torch.as_tensor(x)
        mask[i, n - len(x):] = 1
    dev = next(model.parameters()).device
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    was_training = model.training
    model.eval()
    out = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), do_sample=cfg.temperature > 0,
                         temperature=cfg.temperature if cfg.temperature > 0 else None,
                         top_p=cfg.top_p if cfg.temperature > 0 else None, repetition_penalty=cfg.repetition_penalty,
                         max_new_tokens=cfg.max_new_tokens, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    model.train(was_training)
    responses = []
    for row in out[:, n:].tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id) + 1]  # keep EOS: the policy chose to stop
        responses.append(row)
    return responses


def sample_responses(model, tokenizer, prompts: Sequence[Sequence[Message]], cfg: SamplingConfig, *,
                     k: int = 1, progress: bool = False, first_batch: int = 0) -> list[list[str]]:
    """``k`` sampled responses (text) for each prompt, batched, reproducible for a seed. Batch ``b`` draws with
    the seed's ``first_batch + b``-th generator, so for one prompt, a call with ``first_batch = j`` continues a
    call whose ``k`` was ``j * cfg.batch_size`` (how best-of-n extends n without drawing the first again)."""
    from tqdm.auto import tqdm

    ids = encode_prompts(tokenizer, prompts, cfg.max_prompt_tokens)
    flat = [i for i in range(len(prompts)) for _ in range(k)]
    texts: list[str] = [""] * len(flat)
    batches = length_sorted_batches([len(ids[i]) for i in flat], cfg.batch_size)  # similar lengths share a batch
    for b, idx in enumerate(tqdm(batches, desc="sampling", disable=not progress)):
        resp = generate(model, tokenizer, [ids[flat[j]] for j in idx], cfg,
                        generator_seed=cfg.seed * 100003 + first_batch + b)
        for j, r in zip(idx, resp):
            texts[j] = tokenizer.decode(r, skip_special_tokens=True).strip()
    return [texts[i * k:(i + 1) * k] for i in range(len(prompts))]


def load_prompts(source: str, reader: DataSource | None = None
                 ) -> tuple[list[str], list[list[Message]], list[dict[str, str]]]:
    """Prompt ids and chat prompts from preference data (each pair's prompt, keeping the pair's id) or
    from a JSONL/parquet file with a ``prompt`` column (a string or chat messages; ``id`` optional).

    The third item lists the source rows that gave no prompt (``id``, ``status``, ``detail``: e.g. an
    unparseable transcript), so callers can report them instead of losing them. ``reader``: how preference
    data is read (format, ties, strict; default: detected, not strict)."""
    path = Path(source)
    table_error = None
    if path.is_file() and path.suffix in (".jsonl", ".parquet"):
        try:
            df = read_table(path)
        except ValueError as e:  # not a clean table: rmkit's reader reads it row by row and names the bad rows
            df, table_error = None, e
        if df is not None and "prompt" in df.columns and not {"chosen", "rejected"} <= set(df.columns):
            ids = df["id"].astype(str).tolist() if "id" in df.columns else [f"prompt-{i}" for i in range(len(df))]
            return ids, [as_messages(p) for p in df["prompt"]], []
    try:
        ds = (reader or DataSource()).read(source)
    except DataError as e:
        if table_error is None:
            raise
        # Neither a prompts table nor preference pairs: the table's error first (a prompts file's usual fault, e.g.
        # a lone surrogate "\udc00" no tokenizer reads), not only "no row matches a known format".
        raise DataError(f"{table_error}; read as preference pairs instead: {e}") from None
    pairs = ds.pairs
    skipped = [{"id": i, "status": s, "detail": d} for i, s, d in zip(ds.column("id"), ds.column("status"),
                                                                         ds.column("detail")) if s not in USABLE]
    return [p.id for p in pairs], [p.prompt for p in pairs], skipped


SAMPLING_SETTINGS = ("policy", "temperature", "top_p", "repetition_penalty", "max_new_tokens", "max_prompt_tokens",
                     "seed", "batch_size")  # what a prompt's samples depend on


def check_resume(samples: Path, saved_config: Path, cfg, ids: Sequence[str], prompts: Sequence,
                 settings: Sequence[str] = SAMPLING_SETTINGS) -> dict[str, dict]:
    """The records ``samples`` holds by id (`read_sample_records`), for a run that resumes adding to it; refused,
    naming them, where ``settings`` differ from those in ``saved_config`` (the config the samples were drawn
    with) or a held id now has another prompt: a resumed run must hold what an uninterrupted one would. A last
    line cut short by a kill is removed first."""
    if not samples.exists():
        return {}
    hint = f"use another output, or delete {samples.name} to sample again"
    require_saved_settings(saved_config, cfg, settings, samples, hint)
    trim_cut_line(samples)
    held = read_sample_records(samples)
    changed = [i for i, p in zip(ids, prompts) if i in held and held[i].get("prompt", list(p)) != list(p)]
    if changed:
        raise ValueError(f"{samples} holds samples of other prompts under the ids {', '.join(changed[:5])}"
                         f"{' ...' if len(changed) > 5 else ''} ({len(changed)} in all); {hint}")
    return held


def run_sample(cfg: SampleConfig) -> dict:
    """Sample ``k`` responses per prompt and append them to the meta set, ``batch_size`` prompts at a time."""
    validate(cfg)
    ids, prompts, skipped = load_prompts(cfg.data, cfg)
    end = None if cfg.max_prompts is None else cfg.offset + cfg.max_prompts
    ids, prompts = ids[cfg.offset: end], prompts[cfg.offset: end]
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = check_resume(out, out.with_suffix(".config.yaml"), cfg, ids, prompts, (*SAMPLING_SETTINGS, "k"))
    save_config(cfg, out.with_suffix(".config.yaml"))
    todo = [i for i, x in enumerate(ids) if x not in done]
    model, tok = load_policy(cfg.policy) if todo else (None, None)
    from tqdm.auto import tqdm

    # Chunks of batch_size prompts by place, each with its own seed: a chunk a kill left half written is drawn
    # again whole (the same responses) and only its missing prompts are added.
    bar = tqdm(total=len(todo), desc="sample", unit="prompt", disable=not todo)
    for s in range(0, len(ids), cfg.batch_size):
        chunk = list(range(s, min(s + cfg.batch_size, len(ids))))
        if all(ids[i] in done for i in chunk):
            continue
        part = SamplingConfig(**{f: getattr(cfg, f) for f in SamplingConfig.__dataclass_fields__})
        part.seed = cfg.seed * 1_000_003 + s
        resp = sample_responses(model, tok, [prompts[i] for i in chunk], part, k=cfg.k)
        new = [j for j, i in enumerate(chunk) if ids[i] not in done]
        write_meta_set(out, [ids[chunk[j]] for j in new], [prompts[chunk[j]] for j in new], [resp[j] for j in new],
                       append=True)
        bar.update(len(new))
    bar.close()
    return {"prompts": len(ids), "sampled_now": len(todo), "k": cfg.k, "output": str(out),
            "source_rows_without_prompt": dict(Counter(r["status"] for r in skipped))}
