"""An rmkit reward model is what the cluster engines take as a reward model: TRL's trainers (real TRL,
one GRPO step) and OpenRLHF's reading of a sequence-regression checkpoint (base model + ``score`` head,
the value at the last token)."""

import pytest
import torch

from rmkit.data import load_preferences
from rmkit.models import RewardModel


@pytest.fixture(scope="module")
def questions(shared_data):
    pairs = load_preferences(shared_data / "hh-rlhf" / "helpful-base" / "test.jsonl.gz", limit=40).pairs
    return [p.prompt for p in pairs if len(p.prompt) == 1][:4]


@pytest.mark.parametrize("backbone", ["tiny_bert", "tiny_llama"])
def test_trl_grpo_reads_an_rmkit_reward_model(backbone, request, tiny_policy, questions, tmp_path):
    """TRL renders (prompt, completion) with the RM tokenizer's chat template, tokenizes without special
    tokens and reads ``logits[:, 0]``; a transcript RM (BERT) is saved with a template that makes this
    give exactly rmkit's rewards."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    rm_dir = tmp_path / "rm"
    RewardModel.from_pretrained(request.getfixturevalue(backbone), max_length=128).save_pretrained(rm_dir)
    seen = {"prompts": [], "completions": []}

    def recorder(prompts, completions, **kw):  # a second reward function, weight 0: sees what TRL scored
        seen["prompts"] += prompts
        seen["completions"] += completions
        return [0.0] * len(prompts)

    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=6, max_steps=1, report_to="none", save_strategy="no", use_cpu=True,
                      reward_weights=[1.0, 0.0], logging_steps=1, seed=0, bf16=False)  # TRL defaults to bf16
    trainer = GRPOTrainer(model=tiny_policy, reward_funcs=[str(rm_dir), recorder], args=args,
                          train_dataset=Dataset.from_list([{"prompt": q} for q in questions]))
    got = []
    trainer.reward_funcs[0].register_forward_hook(lambda m, i, o: got.append(o.logits[:, 0].detach().clone()))
    trainer.train()
    assert seen["prompts"] and len(torch.cat(got)) == len(seen["prompts"])
    rm = RewardModel.from_pretrained(rm_dir)
    expected = rm.score(seen["prompts"], seen["completions"])
    torch.testing.assert_close(torch.cat(got), expected, atol=1e-4, rtol=0)


def test_openrlhf_style_reading_of_a_decoder_reward_model(tiny_llama, questions, tmp_path):
    """OpenRLHF builds its reward model from the checkpoint's base model and a linear ``score`` head and
    takes the value at the last real token; done here by hand from the saved files."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    rm = RewardModel.from_pretrained(tiny_llama, max_length=128)
    rm.save_pretrained(tmp_path / "rm")
    weights = load_file(str(tmp_path / "rm" / "model.safetensors"))
    assert "score.weight" in weights  # the head's name OpenRLHF's value_head_prefix expects
    base = AutoModel.from_pretrained(tmp_path / "rm").eval()
    answers = [[{"role": "assistant", "content": a}] for a in ["Sure.", "I cannot help with that.", "Yes", "No idea"]]
    ids = rm.encode(questions, answers)
    batch = rm.collate(ids)
    with torch.no_grad():
        hidden = base(**batch).last_hidden_state
        values = hidden @ weights["score.weight"].T
        last = batch["attention_mask"].sum(1) - 1  # right padding: the last real token
        theirs = values[torch.arange(len(ids)), last, 0]
    torch.testing.assert_close(theirs, rm.score(questions, answers), atol=1e-4, rtol=0)
