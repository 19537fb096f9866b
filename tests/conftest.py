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
    from rmkit.assets import tiny_model

    return tiny_model("bert", tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """A 2-layer random Llama with SmolLM2's tokenizer and chat template (a decoder reward model)."""
    from rmkit.assets import tiny_model

    return tiny_model("llama", tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory) -> str:
    """A 2-layer random causal Llama with SmolLM2's tokenizer and chat template (a policy), with the
    same shapes as `tiny_llama`, so a `tiny_llama` reward model shares its backbone."""
    from rmkit.assets import tiny_model

    return tiny_model("policy", tmp_path_factory.mktemp("tiny_policy"))
