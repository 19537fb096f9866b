"""MetaRM: the difference loss by hand, one step against a hand-written computation, and the trainer."""

import copy
import dataclasses
import json
import math

import pytest
import torch

from rmkit.data import load_preferences
from rmkit.losses import difference_loss
from rmkit.metarm import encode_meta_batch, metarm_backward
from rmkit.models import RewardModel
from rmkit.metaset import read_meta_set, write_meta_set
from rmkit.objectives import get_objective, make_batch
from rmkit.training import TrainConfig, train_reward_model


def test_difference_loss_by_hand():
    r = torch.tensor([[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]])
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    # prompt 1: gaps 1, 3, 2; prompt 2: all gaps 0 -> 3 * sigmoid(0)
    expected = 0.5 * ((2 / 9) * (s(1) + s(3) + s(2)) + (2 / 9) * 3 * 0.5)
    assert difference_loss(r).item() == pytest.approx(expected, abs=1e-7)
    with pytest.raises(ValueError, match="k >= 2"):
        difference_loss(torch.zeros(3, 1))


META = [{"id": f"m{i}", "prompt": [{"role": "user", "content": q}], "responses": rs} for i, (q, rs) in enumerate([
    ("How do I bake bread?", ["Mix flour, water, yeast; knead, rise, bake.", "No.", "Bread is food."]),
    ("Name a prime number.", ["7", "Seven is prime because it has no divisors but 1 and itself.", "I like numbers."]),
])]


@pytest.fixture(scope="module")
def pairs(shared_data):
    return load_preferences(shared_data / "hh-rlhf" / "helpful-base" / "test.jsonl.gz", limit=24).pairs


def test_one_metarm_step_equals_the_hand_computation(tiny_bert, pairs):
    torch.manual_seed(0)
    rm = RewardModel.from_pretrained(tiny_bert, max_length=48).eval()  # eval: no dropout, so both paths are exact
    eta, alpha = 0.5, 0.1  # large steps, so a wrong update cannot hide below the tolerance
    c, r = rm.encode_pairs(pairs[:4])
    batch = make_batch(rm, pairs, c, r, [0, 1, 2, 3], "cpu")
    meta = encode_meta_batch(rm, META, "cpu")

    # By hand: J's gradient by ordinary backprop, theta' written into a copy, L's gradient there,
    # and plain SGD on the original parameters.
    theta = {n: p.detach().clone() for n, p in rm.named_parameters()}
    J = difference_loss(rm(meta["input_ids"], meta["attention_mask"]).rewards.view(-1, 3))
    gJ = torch.autograd.grad(J, list(rm.parameters()))
    adapted = copy.deepcopy(rm)
    with torch.no_grad():
        for p, g in zip(adapted.parameters(), gJ):
            p.add_(eta * g)
    out = adapted(batch["input_ids"], batch["attention_mask"])
    L = -torch.nn.functional.logsigmoid(out.rewards[:4] - out.rewards[4:]).mean()
    gL = torch.autograd.grad(L, list(adapted.parameters()))
    expected = {n: theta[n] - alpha * g for (n, _), g in zip(rm.named_parameters(), gL)}

    opt = torch.optim.SGD(rm.parameters(), lr=alpha)
    opt.zero_grad()
    loss, parts = metarm_backward(rm, batch, meta, get_objective("bt"), inner_lr=eta)
    opt.step()
    assert loss.item() == pytest.approx(L.item(), abs=1e-6)
    assert parts["meta_J"].item() == pytest.approx(J.item(), abs=1e-6)
    moved = 0
    for n, p in rm.named_parameters():
        torch.testing.assert_close(p.detach(), expected[n], atol=1e-6, rtol=0, msg=n)
        moved += not torch.equal(p.detach(), theta[n])
    assert moved > 0.5 * len(theta)  # the step really changed the weights


@pytest.mark.parametrize("extra", [{}, {"objective": "soft"}, {"objective": "margin"}, {"contrastive": "simcse"}])
def test_metarm_training_through_the_trainer(tiny_bert, pairs, tmp_path, extra):
    if extra.get("objective") == "margin":  # margins as rmkit denoise writes them
        pairs = [dataclasses.replace(p, margin=0.1 * (i % 5)) for i, p in enumerate(pairs)]
    write_meta_set(tmp_path / "meta.jsonl", [m["id"] for m in META], [m["prompt"] for m in META],
                   [m["responses"] for m in META])
    assert read_meta_set(tmp_path / "meta.jsonl")[1]["responses"] == META[1]["responses"]
    cfg = TrainConfig(model=tiny_bert, output_dir=str(tmp_path / "rm"), max_length=32, batch_size=4, epochs=1,
                      lr=1e-3, eval_every=2, save_every=0, meta_data=str(tmp_path / "meta.jsonl"), meta_prompts=2,
                      meta_inner_lr=1e-2, **extra)
    result = train_reward_model(cfg, train_pairs=pairs[:16], eval_pairs=pairs[16:])
    logged = [json.loads(x) for x in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert all(0.5 * 2 / 3 <= r["train/meta_J"] <= 2 / 3 for r in logged)  # J's range for k = 3: [1/3, 2/3)
    assert math.isfinite(result.metrics["eval/loss"])


def test_meta_set_errors_name_the_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "q", "responses": ["a", "b"]}\n{"prompt": "q", "responses": ["a"]}\n')
    with pytest.raises(ValueError, match="bad.jsonl, line 2: field 'responses'"):
        read_meta_set(tmp_path / "bad.jsonl")
    (tmp_path / "cut.jsonl").write_text('{"prompt": "q", "responses": ["a", "b"]}\n{"prompt": "q", "resp\n')
    with pytest.raises(ValueError, match="cut.jsonl, line 2: not a JSON record"):
        read_meta_set(tmp_path / "cut.jsonl")
    (tmp_path / "list.jsonl").write_text('["q", "a", "b"]\n')
    with pytest.raises(ValueError, match="list.jsonl, line 1: a record must be a JSON object"):
        read_meta_set(tmp_path / "list.jsonl")


def test_sample_meta_set_and_metarm_from_the_cli(tiny_policy, tiny_bert, shared_data, tmp_path):
    from rmkit.cli import main

    data = shared_data / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"
    meta = tmp_path / "meta.jsonl"
    args = ["sample", str(data), "--policy", tiny_policy, "--k", "2", "--max-prompts", "3", "--batch-size", "2",
            "--max-new-tokens", "6", "--output", str(meta)]
    assert main(args) == 0
    items = read_meta_set(meta)
    assert len(items) == 3 and all(len(it["responses"]) == 2 for it in items)
    assert main(args) == 0 and len(read_meta_set(meta)) == 3  # a rerun finds every prompt done
    # Killed in the second chunk's write (its one line cut short): the rerun draws that chunk again, the same.
    whole = meta.read_text()
    meta.write_text(whole[: whole.rfind("\n", 0, len(whole) - 1) + 20])
    assert main(args) == 0 and meta.read_text() == whole
    # Killed halfway through the first chunk's write: only the missing prompt is added, with the same responses.
    lines = whole.splitlines(keepends=True)
    meta.write_text(lines[0] + lines[2])
    assert main(args) == 0
    assert sorted(meta.read_text().splitlines()) == sorted(whole.splitlines())
    assert main([*args, "--temperature", "0.5"]) == 2  # other draws would mix with the held ones: refused
    assert main(["metarm", str(data), "--model", tiny_bert, "--output-dir", str(tmp_path / "rm")]) == 2  # no meta set
    assert main(["metarm", str(data), "--model", tiny_bert, "--meta-data", str(meta), "--max-pairs", "8",
                 "--batch-size", "4", "--max-length", "32", "--meta-prompts", "2",
                 "--eval-test", "false", "--output-dir", str(tmp_path / "rm")]) == 0
    logged = [json.loads(x) for x in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert "train/meta_J" in logged[-1]


def test_metarm_members_of_a_finetuned_ensemble(tiny_bert, pairs, tmp_path):
    """Fine-tuned ensemble members can train with MetaRM (strength from RMs adapted to a policy's responses)."""
    import numpy as np

    from rmkit.ensemble import EnsembleConfig, ensemble_diffs

    write_meta_set(tmp_path / "meta.jsonl", [m["id"] for m in META], [m["prompt"] for m in META],
                   [m["responses"] for m in META])
    cfg = EnsembleConfig(model=tiny_bert, members=2, folds=2, backbone="finetune_folds", max_length=32,
                         finetune_batch_size=4, finetune_lr=1e-3,
                         finetune_settings={"meta_data": str(tmp_path / "meta.jsonl"), "meta_inner_lr": 1e-2,
                                            "meta_prompts": 2})
    diffs, _ = ensemble_diffs(cfg, pairs[:16], work_dir=tmp_path / "ens", progress=False)
    assert np.isfinite(diffs).sum() == 16
    metrics = [json.loads(x) for x in (tmp_path / "ens" / "fold0" / "metrics.jsonl").read_text().splitlines()]
    assert "train/meta_J" in metrics[-1]  # the member trained with MetaRM
    with pytest.raises(ValueError, match="finetune_settings"):
        ensemble_diffs(EnsembleConfig(model=tiny_bert, members=2, backbone="finetune_folds",
                                      finetune_settings={"no_such_setting": 1}), pairs[:8],
                       work_dir=tmp_path / "bad", progress=False)
