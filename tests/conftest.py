"""Shared fixtures: the real data beside the repository, and tiny models built in milliseconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RMKIT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    # The real data must be there (CI has it beside the clone): a missing folder is a failure, not a skip.
    assert (SHARED_DATA / "hh-rlhf").is_dir(), f"expected the shared data at {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer random BERT with MiniLM's tokenizer, saved as a sequence-classification checkpoint."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from rmkit.assets import minilm_path

    out = tmp_path_factory.mktemp("tiny_bert")
    tok = AutoTokenizer.from_pretrained(minilm_path())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512, num_labels=1)
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """A 2-layer random Llama with SmolLM2's tokenizer and chat template (a decoder reward model)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from rmkit.assets import smollm2_path

    out = tmp_path_factory.mktemp("tiny_llama")
    tok = AutoTokenizer.from_pretrained(smollm2_path())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, num_labels=1,
                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory) -> str:
    """A 2-layer random causal Llama with SmolLM2's tokenizer and chat template (a policy), with the
    same shapes as `tiny_llama`, so a `tiny_llama` reward model shares its backbone."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from rmkit.assets import smollm2_path

    out = tmp_path_factory.mktemp("tiny_policy")
    tok = AutoTokenizer.from_pretrained(smollm2_path())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)
