"""Robust reward models: weight averaging (WARM) and length disentanglement (ODIN) on tiny models."""

import json
import shutil

import numpy as np
import pytest
import torch

from rmkit.data import load_preferences
from rmkit.models import RewardModel
from rmkit.training import TrainConfig, train_reward_model
from rmkit.warm import average_reward_models


@pytest.fixture(scope="module")
def pairs(shared_data):
    return load_preferences(shared_data / "hh-rlhf" / "helpful-base" / "test.jsonl.gz", limit=40).pairs


def _train(model, out, pairs, **kw):
    cfg = dict(model=model, output_dir=str(out), max_length=32, batch_size=4, max_steps=3, eval_every=0,
               save_every=0, lr=1e-3)
    cfg.update(kw)
    return train_reward_model(TrainConfig(**cfg), train_pairs=pairs[:24], eval_pairs=pairs[24:32])


def test_averaging_identical_members_returns_that_model(tiny_bert, pairs, tmp_path):
    one = _train(tiny_bert, tmp_path / "a", pairs)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    avg = average_reward_models([tmp_path / "a", tmp_path / "b"], tmp_path / "warm" / "model")
    for k, v in one.model.state_dict().items():
        torch.testing.assert_close(avg.state_dict()[k], v, msg=k)
    from transformers import AutoModelForSequenceClassification

    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "warm" / "model")
    assert plain.config.num_labels == 1
    card = (tmp_path / "warm" / "model" / "README.md").read_text()
    assert str(tmp_path / "a" / "model") in card and "WARM" in card


def test_averaging_refuses_other_architectures_and_initialisations(tiny_bert, tiny_llama, pairs, tmp_path):
    _train(tiny_bert, tmp_path / "a", pairs, seed=1, init_seed=0)
    _train(tiny_bert, tmp_path / "b", pairs, seed=2, init_seed=0)  # another data order, the same start
    _train(str(tmp_path / "a" / "model"), tmp_path / "c", pairs, seed=3)  # another start: a's trained weights
    _train(tiny_llama, tmp_path / "d", pairs)
    average_reward_models([tmp_path / "a", tmp_path / "b"], tmp_path / "ok")  # shared initialisation: averaged
    with pytest.raises(ValueError, match="differ in architecture"):
        average_reward_models([tmp_path / "a", tmp_path / "d"], tmp_path / "x")
    with pytest.raises(ValueError, match="different initialisations"):
        average_reward_models([tmp_path / "a", tmp_path / "c"], tmp_path / "x")
    (tmp_path / "b" / "results.json").unlink()
    with pytest.raises(ValueError, match="initialisation is unknown"):
        average_reward_models([tmp_path / "a", tmp_path / "b"], tmp_path / "x")


def test_train_warm_trains_members_from_one_start_and_averages_them(tiny_bert, pairs, tmp_path):
    res = _train(tiny_bert, tmp_path / "warm", pairs, warm=2)
    inits = {json.loads((tmp_path / "warm" / "members" / str(m) / "results.json").read_text())["init_fingerprint"]
             for m in range(2)}
    assert len(inits) == 1 and len(res.metrics["warm_members"]) == 2 and "eval/accuracy" in res.metrics
    members = [RewardModel.from_pretrained(p) for p in res.metrics["warm_members"]]
    k = "model.classifier.weight"
    torch.testing.assert_close(res.model.state_dict()[k], (members[0].state_dict()[k] + members[1].state_dict()[k]) / 2)


def test_odins_served_reward_is_not_about_length(tiny_bert, tmp_path):
    """Labels planted on length (the longer response always wins): a BT reward learns length; ODIN's served reward,
    the quality head, stays (nearly) uncorrelated with it, its length head takes the correlation."""
    rng = np.random.default_rng(0)
    recs = []
    for i in range(96):
        a, b = sorted(rng.choice(np.arange(2, 30), 2, replace=False))
        words = rng.choice(["blue", "sky", "tree", "river", "stone"], size=int(b))
        recs.append({"prompt": f"describe item {i}", "chosen": " ".join(words), "rejected": " ".join(words[:a])})
    train = load_preferences(recs).pairs
    common = dict(model=tiny_bert, max_length=48, batch_size=16, epochs=50, lr=1e-3, eval_every=0, save_every=0)
    bt = train_reward_model(TrainConfig(output_dir=str(tmp_path / "bt"), **common), train_pairs=train, eval_pairs=[])
    odin = train_reward_model(TrainConfig(output_dir=str(tmp_path / "odin"), objective="odin", **common),
                              train_pairs=train, eval_pairs=[])
    texts = [" ".join(rng.choice(["blue", "sky", "tree", "river", "stone"], size=n)) for n in list(range(2, 30)) * 3]
    lengths = np.array([len(t.split()) for t in texts])
    prompts = [[{"role": "user", "content": "describe it"}]] * len(texts)
    responses = [[{"role": "assistant", "content": t}] for t in texts]
    rho_bt = np.corrcoef(bt.model.score(prompts, responses).numpy(), lengths)[0, 1]
    rho_odin = np.corrcoef(odin.model.score(prompts, responses).numpy(), lengths)[0, 1]
    assert rho_bt > 0.8, rho_bt
    assert abs(rho_odin) < 0.4, (rho_bt, rho_odin)
