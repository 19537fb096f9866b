"""The reward model: rendering, truncation, features, and the round trip through plain transformers."""

import json
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rmkit.models import RewardModel, set_trainable

PROMPT = [{"role": "user", "content": "How do I boil an egg?"}]
RESPONSES = [[{"role": "assistant", "content": "Put it in boiling water for eight minutes."}],
             [{"role": "assistant", "content": "No."}],
             [{"role": "assistant", "content": "Eggs are great. " * 20}]]


@pytest.fixture(params=["minilm", "tiny_bert", "tiny_llama"])
def rm_path(request):
    return "minilm" if request.param == "minilm" else request.getfixturevalue(request.param)


def test_round_trip_through_auto_model_for_sequence_classification(rm_path, tmp_path):
    torch.manual_seed(0)
    rm = RewardModel.from_pretrained(rm_path, max_length=128).eval()
    ours = rm.score([PROMPT] * 3, RESPONSES)
    rm.save_pretrained(tmp_path / "rm")
    assert (tmp_path / "rm" / "model.safetensors").exists()
    # What a TRL / OpenRLHF / RewardBench user does: plain transformers on the rendered text.
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "rm")
    assert hf.config.num_labels == 1
    texts = [rm.render(PROMPT, r) for r in RESPONSES]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not rm.use_chat_template)
    with torch.no_grad():
        theirs = hf(**enc).logits.squeeze(-1)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    # And rmkit reloads its own checkpoint with the same rewards and settings.
    again = RewardModel.from_pretrained(str(tmp_path / "rm"))
    assert again.max_length == 128
    torch.testing.assert_close(again.score([PROMPT] * 3, RESPONSES), ours, atol=1e-5, rtol=0)


def test_padding_does_not_change_rewards(rm_path):
    rm = RewardModel.from_pretrained(rm_path, max_length=128).eval()
    batched = rm.score([PROMPT] * 3, RESPONSES, batch_size=3)
    single = torch.cat([rm.score([PROMPT], [r], batch_size=1) for r in RESPONSES])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def test_features_are_what_the_head_reads(rm_path):
    rm = RewardModel.from_pretrained(rm_path, max_length=64).eval()
    batch = rm.collate(rm.encode([PROMPT] * 3, RESPONSES))
    with torch.no_grad():
        out = rm(**batch)
    assert out.rewards.shape == (3,) and out.features.shape == (3, rm.model.config.hidden_size)
    torch.testing.assert_close(rm.head(out.features).squeeze(-1), out.rewards, atol=1e-5, rtol=0)


def test_left_truncation_keeps_the_response(tiny_bert, tiny_llama):
    long_prompt = [{"role": "user", "content": "word " * 500}]
    response = [{"role": "assistant", "content": "the final answer is forty two"}]
    bert = RewardModel.from_pretrained(tiny_bert, max_length=32)
    (ids,) = bert.encode([long_prompt], [response])
    assert len(ids) == 32 and ids[0] == bert.tokenizer.cls_token_id and ids[-1] == bert.tokenizer.sep_token_id
    assert bert.tokenizer.decode(ids[-8:-1]).endswith("the final answer is forty two")
    llama = RewardModel.from_pretrained(tiny_llama, max_length=32)
    assert llama.use_chat_template
    (ids,) = llama.encode([long_prompt], [response])
    assert len(ids) == 32 and "the final answer is forty two" in llama.tokenizer.decode(ids)


def test_set_trainable(tiny_bert):
    rm = RewardModel.from_pretrained(tiny_bert)
    total = sum(p.numel() for p in rm.parameters())
    assert set_trainable(rm, "all") == total
    n_head = set_trainable(rm, "head")
    assert n_head == 33 and all(p.requires_grad for p in rm.head.parameters())  # 32 weights + bias
    n_top = set_trainable(rm, "top:1")
    assert n_head < n_top < total
    assert all(p.requires_grad for p in rm.model.bert.encoder.layer[1].parameters())
    assert not any(p.requires_grad for p in rm.model.bert.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in rm.model.bert.pooler.parameters())
    with pytest.raises(ValueError, match="train_layers must be"):
        set_trainable(rm, "top")


def test_load_reports_new_head_in_one_line_and_warns_on_missing_backbone_weights(tiny_bert, tmp_path, caplog):
    """A fresh reward head is expected (info, no transformers table); a backbone weight the checkpoint
    lacks is a real problem and gets a warning that names it."""
    import logging

    from safetensors.torch import load_file, save_file
    from transformers import AutoModel

    backbone = tmp_path / "backbone"  # a plain encoder checkpoint: no reward head at all
    AutoModel.from_pretrained(tiny_bert).save_pretrained(backbone)
    RewardModel.from_pretrained(tiny_bert).tokenizer.save_pretrained(backbone)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        RewardModel.from_pretrained(str(backbone))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("transformers")]
    assert [r for r in caplog.records if r.levelno == logging.INFO and "new reward head (classifier.bias, "
            "classifier.weight)" in r.getMessage()]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "rmkit.models"]

    weights = load_file(backbone / "model.safetensors")
    dropped = next(k for k in weights if "layer.1.output.dense.weight" in k)
    del weights[dropped]
    save_file(weights, backbone / "model.safetensors", metadata={"format": "pt"})
    caplog.clear()
    with caplog.at_level(logging.INFO):
        RewardModel.from_pretrained(str(backbone))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "rmkit.models"]
    assert len(warned) == 1 and "lacks 1 backbone weights" in warned[0]
    assert "encoder.layer.1.output.dense.weight" in warned[0]


def test_model_folders_that_ask_for_remote_code_or_are_damaged_fail_clearly(tiny_bert, tmp_path):
    """Issue 41, item 12: an unknown model_type with auto_map made transformers ask "run custom code? [y/N]" (a hang
    in a batch job); a truncated or empty safetensors file failed with a traceback naming no file."""
    import shutil

    custom = tmp_path / "custom"
    shutil.copytree(tiny_bert, custom)
    cfg = json.loads((custom / "config.json").read_text())
    cfg.update(model_type="evil-bert", auto_map={"AutoConfig": "evil.EvilConfig",
                                                 "AutoModelForSequenceClassification": "evil.EvilModel"})
    (custom / "config.json").write_text(json.dumps(cfg))
    (custom / "evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ValueError, match=str(custom)):
        RewardModel.from_pretrained(str(custom))
    for name, cut in (("truncated", 0.5), ("empty", 0.0)):
        bad = tmp_path / name
        shutil.copytree(tiny_bert, bad)
        weights = bad / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: int(weights.stat().st_size * cut)])
        with pytest.raises(ValueError, match=rf"{bad}: a weights file is damaged or cut short \(model\.safetensors"):
            RewardModel.from_pretrained(str(bad))


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_llama"])
def test_a_huge_text_is_cut_before_tokenizing_with_the_same_ids(name, request):
    """Issue 41, item 8: one 7.9 MB text cost ~1.2 GB of tokenizer memory in the server. A text far longer than what
    the RM keeps is cut at a word boundary first: the ids equal those of the whole text, truncated from the left."""
    import random

    rm = RewardModel.from_pretrained(request.getfixturevalue(name), max_length=64)
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 12))) for _ in range(40_000)]
    texts = [" ".join(words), "x" * 20_000 + " tail", " ".join(words[:500]), "short", "y" * 9000]
    for t in texts:
        whole = rm.tokenizer(t, add_special_tokens=True, truncation=True, max_length=64)["input_ids"]
        assert rm.tokenize([t], add_special_tokens=True)[0] == whole
