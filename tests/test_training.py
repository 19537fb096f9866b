"""The training loop: resuming is exact, real data lowers the loss, bad settings fail clearly."""

import json

import numpy as np
import pytest
import torch

from rmkit.data import load_preferences
from rmkit.models import RewardModel
from rmkit.scoring import pair_metrics, score_pairs
from rmkit.batching import length_grouped_batches
from rmkit.training import TrainConfig, train_reward_model


@pytest.fixture(scope="module")
def hh_pairs(shared_data):
    return load_preferences(shared_data / "hh-rlhf" / "helpful-base" / "test.jsonl.gz", limit=80).pairs


def test_resume_after_interruption_gives_the_same_weights(tiny_bert, hh_pairs, tmp_path):
    common = dict(model=tiny_bert, max_length=48, batch_size=4, epochs=2, lr=1e-3, eval_every=4,
                  save_every=0, warmup_ratio=0.2, seed=7)
    train, ev = hh_pairs[:24], hh_pairs[24:32]
    full = train_reward_model(TrainConfig(output_dir=str(tmp_path / "full"), **common),
                              train_pairs=train, eval_pairs=ev)
    part = train_reward_model(TrainConfig(output_dir=str(tmp_path / "cut"), **common),
                              train_pairs=train, eval_pairs=ev, stop_after_steps=5)
    assert part.metrics == {"stopped_at_step": 5} and (tmp_path / "cut" / "checkpoint").exists()
    with pytest.raises(ValueError, match=r"other settings \(lr\)"):
        train_reward_model(TrainConfig(output_dir=str(tmp_path / "cut"), **{**common, "lr": 5e-4}),
                           train_pairs=train, eval_pairs=ev)
    # A kill after a log line but before the next checkpoint leaves lines the resumed run logs again (and maybe
    # a cut one): they must not end up twice.
    with (tmp_path / "cut" / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 8, "train/loss": 9.9}) + "\n" + '{"step": 1')
    resumed = train_reward_model(TrainConfig(output_dir=str(tmp_path / "cut"), **common),
                                 train_pairs=train, eval_pairs=ev)
    assert resumed.metrics["steps"] == 12 and resumed.metrics["train_pairs_per_s"] > 0
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)
    assert not (tmp_path / "cut" / "checkpoint").exists()  # cleaned up once finished
    card = (tmp_path / "full" / "model" / "README.md").read_text()  # a model card beside the weights
    assert "base_model:" not in card and f"base model: `{tiny_bert}`" in card and "| eval/accuracy |" in card
    assert "AutoModelForSequenceClassification" in card
    # The metrics log of the resumed run matches the uninterrupted one line for line.
    full_log = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    cut_log = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in cut_log] == [json.loads(x)["step"] for x in full_log] == [4, 8, 12]
    assert json.loads(cut_log[-1])["eval/accuracy"] == json.loads(full_log[-1])["eval/accuracy"]
    # A finished run is not redone: the saved model is loaded back; other settings are refused.
    with pytest.raises(ValueError, match=r"finished run with other settings \(epochs\)"):
        train_reward_model(TrainConfig(output_dir=str(tmp_path / "full"), **{**common, "epochs": 3}), train_pairs=train,
                           eval_pairs=ev)
    again = train_reward_model(TrainConfig(output_dir=str(tmp_path / "full"), **common), train_pairs=train, eval_pairs=ev)
    assert again.model.device == full.model.device  # where a first run leaves its model (the GPU, where there is one)
    torch.testing.assert_close(again.model.state_dict()["model.classifier.weight"], a["model.classifier.weight"])


def test_short_real_training_lowers_the_training_loss(hh_pairs, tmp_path):
    train = hh_pairs[:32]
    torch.manual_seed(0)
    before_model = RewardModel.from_pretrained("minilm", max_length=64)
    before = score_pairs(before_model, train)
    cfg = TrainConfig(model="minilm", output_dir=str(tmp_path / "rm"), max_length=64, batch_size=8, epochs=4,
                      lr=1e-4, head_lr=1e-3, eval_every=0, save_every=0, warmup_ratio=0.0, seed=0)
    result = train_reward_model(cfg, train_pairs=train, eval_pairs=train)
    after = score_pairs(result.model, train)
    loss_before = pair_metrics(before["reward_chosen"].to_numpy(), before["reward_rejected"].to_numpy())["loss"]
    loss_after = pair_metrics(after["reward_chosen"].to_numpy(), after["reward_rejected"].to_numpy())["loss"]
    assert loss_after < loss_before - 0.05, (loss_before, loss_after)
    logged = [json.loads(x) for x in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["eval/loss"] == pytest.approx(loss_after, abs=1e-4)
    assert {"train/loss", "train/accuracy", "train/lr", "eval/accuracy", "eval/margin_mean",
            "eval/reward_mean", "eval/reward_std"} <= set(logged[-1])
    saved = json.loads((tmp_path / "rm" / "results.json").read_text())
    assert saved["train_pairs"] == 32 and saved["train_pairs_per_s"] > 0


def test_margin_objective_needs_margins(tiny_bert, hh_pairs, tmp_path):
    cfg = TrainConfig(model=tiny_bert, output_dir=str(tmp_path), objective="margin", max_length=32, epochs=1,
                      batch_size=4, eval_every=0, save_every=0)
    with pytest.raises(ValueError, match=r"needs a margin for every training pair; pair 'helpful-base-000000' \("):
        train_reward_model(cfg, train_pairs=hh_pairs[:8])
    # a margin on some pairs only (a NaN margin is 'not given'): named before the first step, not mid-training
    from dataclasses import replace

    mixed = [replace(p, margin=1.0) for p in hh_pairs[:7]] + [hh_pairs[7]]
    with pytest.raises(ValueError, match=r"7 training pairs have a margin and 1 do not \(first without: pair "
                                         r"'helpful-base-000007'"):
        train_reward_model(TrainConfig(model=tiny_bert, output_dir=str(tmp_path / "b"), max_length=32, eval_every=0,
                                       save_every=0), train_pairs=mixed)
    with pytest.raises(ValueError, match="objective must be one of"):
        train_reward_model(TrainConfig(model=tiny_bert, objective="hinge", output_dir=str(tmp_path)),
                           train_pairs=hh_pairs[:8])


def test_margin_column_is_used(tiny_bert, tmp_path):
    recs = [{"prompt": f"q{i}", "chosen": "good answer", "rejected": "bad", "margin": 2.0} for i in range(8)]
    pairs = load_preferences(recs).pairs
    cfg = TrainConfig(model=tiny_bert, output_dir=str(tmp_path), objective="margin", max_length=16, epochs=1,
                      batch_size=4, eval_every=0, save_every=0)
    result = train_reward_model(cfg, train_pairs=pairs, eval_pairs=pairs)
    assert np.isfinite(result.metrics["eval/loss"])


def test_length_grouped_batches_cover_every_pair_once():
    lengths = list(np.random.default_rng(0).integers(1, 500, size=203))
    batches = length_grouped_batches(lengths, 8, seed=1, mega=5)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(203))
    assert batches == length_grouped_batches(lengths, 8, seed=1, mega=5)
    # Inside a batch lengths are close: far less spread than in a random batch.
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
    assert spread < 150


def test_two_processes_equal_one_with_gradient_accumulation(tmp_path, shared_data):
    """DDP over 2 CPU processes (torchrun, gloo) takes the same steps as 1 process accumulating 2
    micro-batches: each step averages the same two batches' gradients."""
    import os
    import subprocess
    import sys

    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from rmkit.assets import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, num_labels=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    import gzip

    with gzip.open(shared_data / "hh-rlhf" / "harmless-base" / "test.jsonl.gz", "rt") as f:
        (tmp_path / "data.jsonl").write_text("".join(next(f) for _ in range(60)))
    common = ["train", str(tmp_path / "data.jsonl"), "--model", str(tmp_path / "tiny"), "--max-length", "40",
              "--batch-size", "4", "--epochs", "1", "--lr", "1e-3", "--eval-every", "3", "--save-every", "0"]
    # CPU processes also on a GPU machine: two ranks on one GPU is not a setup DDP runs (NCCL refuses it).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    # --standalone: torchrun picks a free port, so a busy default port cannot fail the test.
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "rmkit.cli", *common, "--output-dir", str(tmp_path / "ddp")],
                         capture_output=True, text=True, env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("model saved to") == 1  # printed once, by rank 0
    single = subprocess.run([sys.executable, "-m", "rmkit.cli", *common, "--grad-accum", "2",
                             "--output-dir", str(tmp_path / "one")], capture_output=True, text=True, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    a = RewardModel.from_pretrained(str(tmp_path / "ddp" / "model")).state_dict()
    b = RewardModel.from_pretrained(str(tmp_path / "one" / "model")).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)
    ra = json.loads((tmp_path / "ddp" / "results.json").read_text())
    rb = json.loads((tmp_path / "one" / "results.json").read_text())
    assert ra["steps"] == rb["steps"] and ra["eval/accuracy"] == pytest.approx(rb["eval/accuracy"])
    la = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in la] == [x["step"] for x in lb]
    assert la[-1]["train/loss"] == pytest.approx(lb[-1]["train/loss"], abs=1e-4)


def test_dropout_views_also_for_backbones_without_dropout(tiny_llama, tiny_bert):
    from rmkit.models import set_dropout

    for path in (tiny_llama, tiny_bert):
        rm = RewardModel.from_pretrained(path, max_length=32)
        batch = rm.collate(rm.encode([[{"role": "user", "content": "hi there"}]], [[{"role": "assistant",
                                                                                   "content": "hello, friend"}]]))
        hooks = set_dropout(rm, 0.05)
        assert bool(hooks) == (path == tiny_llama)  # Llama has no dropout layers: hooks add it after each block
        rm.train()
        a, b = rm(**batch).features, rm(**batch).features
        assert not torch.allclose(a, b)  # two views differ
        rm.eval()
        torch.testing.assert_close(rm(**batch).features, rm(**batch).features)  # scoring is deterministic


@pytest.mark.parametrize("preset", ["simcse", "swav-diff"])
def test_contrastive_training_logs_its_term_and_resumes_exactly(preset, tiny_bert, hh_pairs, tmp_path):
    common = dict(model=tiny_bert, max_length=32, batch_size=4, epochs=1, lr=1e-3, eval_every=2, save_every=0,
                  warmup_ratio=0.0, seed=3, contrastive=preset)
    train, ev = hh_pairs[:16], hh_pairs[16:24]
    full = train_reward_model(TrainConfig(output_dir=str(tmp_path / "full"), **common), train_pairs=train, eval_pairs=ev)
    logged = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["train/contrastive_loss"]) and r["train/contrastive_loss"] > 0 for r in logged)
    train_reward_model(TrainConfig(output_dir=str(tmp_path / "cut"), **common), train_pairs=train, eval_pairs=ev,
                       stop_after_steps=2)
    resumed = train_reward_model(TrainConfig(output_dir=str(tmp_path / "cut"), **common), train_pairs=train,
                                 eval_pairs=ev)
    for k, v in full.model.state_dict().items():
        torch.testing.assert_close(v, resumed.model.state_dict()[k], atol=0, rtol=0, msg=k)


def test_contrastive_term_is_added_with_its_beta(tiny_bert, hh_pairs):
    from rmkit.objectives import ContrastiveTerm, compute_loss, get_objective, make_batch

    rm = RewardModel.from_pretrained(tiny_bert, max_length=32)
    rm.eval()  # no dropout: both views equal, so SimCSE's loss is known from the features alone
    c, r = rm.encode_pairs(hh_pairs[:4])
    batch = make_batch(rm, hh_pairs, c, r, [0, 1, 2, 3], "cpu")
    term = ContrastiveTerm.from_config(TrainConfig(contrastive="simcse", contrastive_beta=0.3), rm.head.in_features)
    plain, _ = compute_loss(rm, batch, get_objective("bt"))
    total, parts = compute_loss(rm, batch, get_objective("bt"), term)
    from rmkit.losses import simcse_loss

    f = parts["features"]
    torch.testing.assert_close(parts["rm_loss"], plain)
    torch.testing.assert_close(total, plain + 0.3 * simcse_loss(f, f, temperature=0.05))
    with pytest.raises(ValueError, match="contrastive must be none or one of"):
        ContrastiveTerm.from_config(TrainConfig(contrastive="moco"), 8)


def test_label_views_by_hand(tmp_path):
    import pandas as pd

    from rmkit.scoring import label_views, read_judge_labels

    pd.DataFrame({"id": ["a", "b", "c", "d", "e"], "judge_label": [1.0, 0.0, 0.5, 1.0, 0.0]}).to_csv(
        tmp_path / "j.csv", index=False)
    judge = read_judge_labels(tmp_path / "j.csv", ["a", "b", "c", "d", "e", "missing"])
    assert np.isnan(judge[-1])
    chosen = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    rejected = np.zeros(6)  # the RM prefers chosen on a, b, c, f; ties on d, e
    out = label_views(chosen, rejected, np.ones(6), judge)
    # judge view: a (right), b (wrong: judge says rejected), d (tie: half), e (tie: half) -> 2 / 4
    assert out["judge/pairs"] == 4 and out["judge/accuracy"] == pytest.approx(0.5)
    # agreement view: a and d (judge agrees with the label) -> (1 + 0.5) / 2
    assert out["agree/pairs"] == 2 and out["agree/accuracy"] == pytest.approx(0.75)
    assert out["judge/agreement_with_labels"] == pytest.approx(0.5)


def test_budget_in_pairs_and_steps(tiny_bert, hh_pairs, tmp_path):
    """``max_pairs`` caps every split the run reads (training, validation, test); ``max_steps`` ends training
    after that many optimizer steps whatever ``epochs`` says, going round the data again if it must."""
    cfg = TrainConfig(model=tiny_bert, max_length=32, batch_size=4, epochs=1, eval_every=0, save_every=0,
                      max_pairs=8, max_steps=5, output_dir=str(tmp_path / "rm"))
    res = train_reward_model(cfg, train_pairs=hh_pairs[:40], eval_pairs=hh_pairs[40:60]).metrics
    assert res["train_pairs"] == 8 and res["eval_pairs"] == 8 and res["steps"] == 5  # 8 pairs: 2 steps an epoch


def test_end_distributed_closes_the_process_group(tmp_path):
    """Every rmkit command ends a multi-process run by closing its group (a gloo group left open can
    abort the process at exit); a one-process gloo group stands in for torchrun here."""
    import torch.distributed as dist

    from rmkit.hardware import end_distributed

    end_distributed()  # nothing to close: a no-op
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    end_distributed()
    assert not dist.is_initialized()


def test_resume_or_reuse_on_data_changed_in_place_is_refused(tiny_bert, shared_data, tmp_path):
    """Issue 41, item 2: the data file edited in place (one pair's chosen and rejected swapped) between a kill and
    the resume, or after a finished run: both refuse, naming the data; the same data resumes as before."""
    import gzip

    rows = [json.loads(x) for x in gzip.open(shared_data / "hh-rlhf" / "helpful-base" / "test.jsonl.gz", "rt")][:40]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig(data=str(data), model=tiny_bert, max_length=32, batch_size=4, epochs=1, eval_every=0,
                      save_every=2, output_dir=str(tmp_path / "rm"), eval_test=False)
    train_reward_model(cfg, stop_after_steps=3)
    swapped = [dict(r) for r in rows]
    swapped[5]["chosen"], swapped[5]["rejected"] = rows[5]["rejected"], rows[5]["chosen"]
    data.write_text("".join(json.dumps(r) + "\n" for r in swapped))  # same size, other content
    with pytest.raises(ValueError, match=r"other settings \(data \(content of the pairs\)\)"):
        train_reward_model(cfg)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = train_reward_model(cfg)  # the same data again: resumes and finishes
    assert done.metrics["train_pairs"] == 28
    data.write_text("".join(json.dumps(r) + "\n" for r in swapped))
    with pytest.raises(ValueError, match=r"finished run with other settings \(data \(content of the pairs\)\)"):
        train_reward_model(cfg)


def test_a_run_written_before_a_setting_existed_is_reused_only_at_its_default(tiny_bert, hh_pairs, tmp_path):
    """A finished run whose saved identity lacks a setting added since (here ODIN's weight) is the same run at that
    setting's default, and another run away from it; pairs passed in Python are named by their content, not by the
    ``data`` path, and ``columnar`` (where rows are held) never makes another run."""
    cfg = TrainConfig(model=tiny_bert, max_length=32, batch_size=4, max_steps=2, eval_every=0, save_every=0,
                      output_dir=str(tmp_path / "rm"), eval_test=False)
    train_reward_model(cfg, train_pairs=hh_pairs[:16], eval_pairs=[])
    results = tmp_path / "rm" / "results.json"
    saved = json.loads(results.read_text())
    del saved["run_config"]["odin_length_weight"]  # as a run written before ODIN was added
    saved["run_config"]["data"] = "somewhere/else.jsonl"  # not read: the pairs were passed in
    results.write_text(json.dumps(saved))
    again = train_reward_model(TrainConfig(**{**cfg.__dict__, "columnar": True}), train_pairs=hh_pairs[:16],
                               eval_pairs=[])
    assert again.metrics["steps"] == saved["steps"]
    with pytest.raises(ValueError, match=r"finished run with other settings \(odin_length_weight\)"):
        train_reward_model(TrainConfig(**{**cfg.__dict__, "odin_length_weight": 3.0}), train_pairs=hh_pairs[:16],
                           eval_pairs=[])


def test_max_pairs_is_a_seeded_sample_of_every_subset(tiny_bert, shared_data, tmp_path):
    """Issue 46, item 2: ``max_pairs`` reads a seeded sample of the data, each subset in proportion, split as the
    whole data is: a quick run trains and tests on every subset, not on the first file's pairs only."""
    cfg = TrainConfig(data=str(shared_data / "hh-rlhf"), model=tiny_bert, max_length=32, batch_size=8, max_steps=1,
                      eval_every=0, save_every=0, max_pairs=200, output_dir=str(tmp_path / "rm"))
    res = train_reward_model(cfg).metrics
    assert res["train_pairs"] + res["eval_pairs"] == pytest.approx(160, abs=8)
    assert set(res["test/per_subset"]) == {"harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled"}


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_llama"])
def test_the_model_cards_plain_transformers_lines_give_rmkits_rewards(name, hh_pairs, tmp_path, request):
    """Issue 46, item 8: the card names a hub id as base model (never an alias or a local path) and shows the lines
    that make plain transformers give rmkit's rewards; they are run here as written."""
    import re

    res = train_reward_model(TrainConfig(model=request.getfixturevalue(name), output_dir=str(tmp_path / "rm"),
                                         max_length=48, max_steps=1, eval_every=0, save_every=0),
                             train_pairs=hh_pairs[:8])
    card = (tmp_path / "rm" / "model" / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1).replace('"model"', repr(str(tmp_path / "rm" / "model")))
    prompt = [{"role": "user", "content": "How do I boil an egg?"}]
    response = [{"role": "assistant", "content": "Eight minutes in boiling water."}]
    scope = {"prompt_messages": prompt, "response_messages": response}
    exec(code, scope)  # noqa: S102 - the card's own lines
    assert scope["reward"] == pytest.approx(res.model.score([prompt], [response]).item(), abs=1e-4)
    trained = train_reward_model(TrainConfig(model="minilm", output_dir=str(tmp_path / "m"), max_length=32,
                                             max_steps=1, eval_every=0, save_every=0), train_pairs=hh_pairs[:4])
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in (trained.output_dir / "model" / "README.md").read_text()
