"""Relevance (`rmkit.relevance`) and the prompt-aware gold (`rmkit.gold.PromptAwareGold`): the weight rule by hand,
the fit on a prompt-blind gold, save and load, and the sentence encoder on a tiny model."""

import json
from pathlib import Path

import numpy as np
import pytest

from rmkit.gold import PromptAwareGold, fit_prompt_aware_gold, gold_scorer, prompt_aware_file, relevance_weight
from rmkit.lab import prompt_sensitivity
from rmkit.relevance import SentenceEncoder, other_prompt, turn_text


def test_relevance_weight_by_hand():
    # Own answer wins where base_gap + beta * rel_gap > 0. At beta 0: pairs 1 and 4 win (0.5). The crossings are at
    # 0.5 (pair 4 starts losing), 1 (pair 2 starts winning) and 2 (pair 3): 0.25, 0.5, then the ceiling 0.75.
    base_gap, rel_gap = np.array([1.0, -1.0, -2.0, 0.5]), np.array([1.0, 1.0, 1.0, -1.0])
    fit = relevance_weight(base_gap, rel_gap, slack=0.0)
    assert fit["ceiling"] == 0.75 and fit["prefers_own_base"] == 0.5
    assert fit["beta"] == pytest.approx(2.0) and fit["beta"] > 2.0 and fit["prefers_own"] == 0.75
    # A slack of a quarter is met at beta 0 already: the smallest beta, not the first past a dip.
    assert relevance_weight(base_gap, rel_gap, slack=0.25)["beta"] == 0.0
    # Without pair 1 the base loses both contested pairs: the first crossing (pair 2 at 1) reaches the ceiling.
    assert relevance_weight(base_gap[[1, 2]], rel_gap[[1, 2]], slack=0.5)["beta"] == pytest.approx(1.0)


class _Overlap:
    """A stand-in encoder: relevance is the share of the response's words found in the question."""

    model_id = "overlap"

    def relevance(self, prompts, responses, **_):
        def words(t):
            return set(turn_text(t).lower().split())
        return np.array([len(words(r) & words(p)) / max(len(words(r)), 1) for p, r in zip(prompts, responses)])


class _LengthGold:
    """A prompt-blind gold: longer answers are better, whatever the question."""

    info = {"model": "length"}

    def score(self, prompts, responses, **_):
        return np.array([0.01 * len(turn_text(r)) for r in responses])


def _qa(n=12):
    topics = ["bread", "tea", "chess", "rust", "tides", "moths", "jazz", "clay", "kites", "ferns", "ice", "owls"][:n]
    prompts = [[{"role": "user", "content": f"how do {t} work"}] for t in topics]
    # Answers of different lengths, each naming its own topic: the length gold prefers the longest anywhere.
    responses = [[{"role": "assistant", "content": f"{t} work like this " + "so " * k}] for k, t in enumerate(topics)]
    return prompts, responses


def test_prompt_aware_gold_reads_the_prompt():
    prompts, responses = _qa()
    base = _LengthGold()
    assert prompt_sensitivity(base.score, prompts, responses)["prefers_own"] == 0.0
    gold = fit_prompt_aware_gold(base, prompts, responses, encoder=_Overlap(), slack=0.0)
    fit = gold.info["relevance_weight_fit"]
    assert gold.beta > 0 and fit["ceiling"] == 1.0 and fit["prefers_own"] == 1.0 and fit["prefers_own_base"] < 1
    assert set(fit["beta_by_slack"]) == {"0.0", "0.01", "0.05", "0.1"}
    # Its reward is the base's plus beta times relevance, and with it every answer prefers its own question.
    r = gold.score(prompts, responses)
    b, rel = gold.parts(prompts, responses)
    assert np.allclose(r, b + gold.beta * rel)
    assert prompt_sensitivity(gold.score, prompts, responses)["prefers_own"] == 1.0
    # Each own answer against the answer of the prompt other_prompt pairs it with, under the same question.
    rivals = [responses[j] for j in other_prompt(len(prompts), seed=0)]
    assert (gold.score(prompts, responses) > gold.score(prompts, rivals)).all()
    # A gold that already prefers the own answer needs no relevance term.
    assert fit_prompt_aware_gold(gold, prompts, responses, encoder=_Overlap(), slack=0.0).beta == 0.0
    with pytest.raises(ValueError, match="at least 2 prompts"):
        fit_prompt_aware_gold(base, prompts[:1], responses[:1], encoder=_Overlap())


def test_relevance_diffs_of_pairs():
    from rmkit.data import PreferencePair

    prompts, responses = _qa(3)
    pairs = [PreferencePair(f"p{i}", prompts[i], responses[i], responses[(i + 1) % 3]) for i in range(3)]
    gold = PromptAwareGold(_LengthGold(), 2.0, _Overlap())
    rel = gold.relevance_diffs(pairs)
    by_hand = _Overlap().relevance([p.prompt for p in pairs], [p.chosen for p in pairs]) - _Overlap().relevance(
        [p.prompt for p in pairs], [p.rejected for p in pairs])
    assert np.allclose(rel, by_hand) and (rel > 0).all()


def test_prompt_aware_gold_saved_and_loaded(tmp_path, tiny_bert, monkeypatch):
    import rmkit.gold as gold_mod

    # The base: a tiny reward-model folder (gold_scorer loads it); the encoder: the same tiny model's encoder.
    info = {"note": "kept", "base": {"head": str(tmp_path / "heads" / "h.npy")}}  # a machine path, below the JSON
    gold = PromptAwareGold(gold_scorer(tiny_bert), 0.75, SentenceEncoder(tiny_bert), info)
    path = gold.save(tmp_path / "pa.json", tiny_bert)
    saved = json.loads(path.read_text())
    assert prompt_aware_file(path)["relevance_weight"] == 0.75 and saved["note"] == "kept"
    assert saved["base"]["head"] == str(Path("heads") / "h.npy")  # saved relative: no machine path committed
    assert prompt_aware_file(tmp_path / "missing.json") is None
    loaded = gold_scorer(str(path))
    prompts, responses = _qa(4)
    assert isinstance(loaded, PromptAwareGold) and loaded.beta == 0.75
    assert np.allclose(loaded.score(prompts, responses), gold.score(prompts, responses), atol=1e-5)
    # rmkit bon accepts it as --gold.
    from rmkit.bon import BonConfig

    BonConfig(data="x", reward_model="r", gold=str(path)).check()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"prompt_aware": {"base": tiny_bert}}))
    with pytest.raises(ValueError, match="not a saved prompt-aware gold"):
        gold_mod.load_prompt_aware_gold(bad)


def test_sentence_encoder(tiny_bert):
    enc = SentenceEncoder(tiny_bert)
    texts = ["a short one", "a much longer text than the first one is", "a short one"]
    e = enc.embed(texts, batch_size=2)
    assert e.shape == (3, 32) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert np.array_equal(e[0], e[2])  # a repeated text is encoded once, and lands in both places
    assert np.allclose(e[1], enc.embed([texts[1]])[0], atol=1e-5)  # batching by length changes no embedding
    prompts = [[{"role": "system", "content": "be kind"}, {"role": "user", "content": "a short one"}]]
    assert turn_text(prompts[0]) == "a short one"
    assert enc.relevance(prompts, [[{"role": "assistant", "content": "a short one"}]])[0] == pytest.approx(1, abs=1e-5)
    with pytest.raises(ValueError, match="one response per prompt"):
        enc.relevance(prompts, [])


def test_sentence_encoder_loads_fp32_whatever_the_checkpoint(tiny_bert, tmp_path):
    """transformers 5 loads a bf16 checkpoint in bf16; the encoder (graded against, as a gold's relevance term)
    runs in fp32 as reward models do, with the fp32 checkpoint's embeddings up to bf16 rounding."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    AutoModel.from_pretrained(tiny_bert).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(tmp_path / "bf16")
    enc = SentenceEncoder(str(tmp_path / "bf16"))
    assert {p.dtype for p in enc.model.parameters()} == {torch.float32}
    texts = ["a short one", "a much longer text than the first one is"]
    assert np.allclose(enc.embed(texts), SentenceEncoder(tiny_bert).embed(texts), atol=0.05)


def test_run_lab_with_a_prompt_aware_gold(tiny_bert, shared_data, tmp_path):
    import pandas as pd

    from rmkit.data import load_preferences
    from rmkit.lab import LabConfig, run_lab

    pairs = load_preferences(shared_data / "hh-rlhf" / "helpful-base" / "test.jsonl.gz", limit=24).pairs
    data = tmp_path / "small.jsonl"
    data.write_text("".join(json.dumps({"id": p.id, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected})
                            + "\n" for p in pairs))
    cfg = LabConfig(data=str(data), output_dir=str(tmp_path / "lab"), gold_model=tiny_bert,
                    gold_max_length=32, gold_relevance=tiny_bert, gold_relevance_slack=0.0, studies=[],
                    precision="fp32")
    out = run_lab(cfg, progress=False)
    fit = out["gold"]["relevance_weight_fit"]
    assert fit["slack"] == 0.0 and fit["beta"] >= 0 and fit["prefers_own"] >= fit["ceiling"]
    assert "prompt_sensitivity" in out["gold"] and out["gold"]["base"]["model"] == tiny_bert
    # The output folder is a gold for policy samples: its reward difference on each pair is the gold.parquet's.
    gold = gold_scorer(str(tmp_path / "lab"))
    assert isinstance(gold, PromptAwareGold) and gold.beta == fit["beta"]
    table = pd.read_parquet(tmp_path / "lab" / "gold.parquet")
    by_id = {p.id: p for p in cfg.read(cfg.data).pairs}
    some = [by_id[i] for i in table["id"][:6]]
    d = gold.score([p.prompt for p in some], [p.chosen for p in some]) - gold.score(
        [p.prompt for p in some], [p.rejected for p in some])
    assert np.allclose(d, table["gold_diff"][:6], atol=1e-4)
    with pytest.raises(ValueError, match="gold_relevance fits a term"):
        LabConfig(data=str(data), gold_relevance="mpnet", gold_scores=str(tmp_path / "lab" / "gold.parquet")).check()
