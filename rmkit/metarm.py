"""MetaRM (Algorithm 1 of the paper): keep a reward model discriminative on the shifted distribution
of a policy's responses, with no new preference labels.

Each step takes a preference batch X_t and a meta batch X_s (prompts with k responses each from the
current policy):

1. the difference loss J(theta; X_s) (Eq. 11, `rmkit.losses.difference_loss`): how far apart the RM puts the
   responses to the same prompt;
2. an inner gradient *ascent* step: theta' = theta + eta * grad J;
3. the RM loss L(X_t; theta') at the adapted parameters (any objective of the trainer, with its
   contrastive term if set);
4. the first-order outer update: grad_{theta'} L is applied to theta by the optimizer.

`metarm_backward` does 1-3 and leaves the outer gradient in ``p.grad``, so the trainer's own loop
(accumulation, clipping, schedule, checkpoints) runs MetaRM: ``rmkit metarm`` is ``rmkit train`` with
a meta set (`rmkit.training.TrainConfig.meta_data`).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.func import functional_call

from .data import Message
from .losses import difference_loss
from .models import RewardModel
from .objectives import compute_loss


@torch.inference_mode()
def meta_J(rm, items: Sequence[dict[str, Any]]) -> float:
    """J of a reward model (a `RewardModel` or a path to one) over a sampled set: prompts with k
    responses each (`rmkit.metaset.read_meta_set`), averaged over prompts. How well the RM still tells
    a policy's responses apart; the paper's measure of discrimination on the shifted distribution."""
    rm = RewardModel.from_pretrained(rm) if isinstance(rm, str) else rm
    k = len(items[0]["responses"])
    prompts = [it["prompt"] for it in items for _ in it["responses"]]
    responses = [[{"role": "assistant", "content": r}] for it in items for r in it["responses"]]
    return difference_loss(rm.score(prompts, responses).view(-1, k)).item()


def tokenize_meta_items(model, items: Sequence[dict[str, Any]]) -> list[list[list[int]]]:
    """Token ids of each meta item's k (prompt, response) texts; the trainer does this once per run."""
    prompts: list[Sequence[Message]] = [it["prompt"] for it in items for _ in it["responses"]]
    responses = [[{"role": "assistant", "content": r}] for it in items for r in it["responses"]]
    flat = model.encode(prompts, responses)
    out, start = [], 0
    for it in items:
        out.append(flat[start: start + len(it["responses"])])
        start += len(it["responses"])
    return out


def encode_meta_batch(model, items: Sequence[dict[str, Any]], device,
                      ids: Sequence[list[list[int]]] | None = None) -> dict[str, Any]:
    """The meta items' (prompt, response) texts padded into one (P*k, T) batch; ``ids`` are their
    token ids from `tokenize_meta_items` when already computed."""
    k = len(items[0]["responses"])
    if any(len(it["responses"]) != k for it in items):
        raise ValueError("every prompt of a meta batch needs the same number of responses k")
    ids = ids if ids is not None else tokenize_meta_items(model, items)
    batch = model.collate([x for item_ids in ids for x in item_ids], device)
    batch["k"] = k
    return batch


def metarm_backward(model: torch.nn.Module, batch: dict[str, Any], meta_batch: dict[str, Any], objective, *,
                    inner_lr: float, contrastive=None, scale: float = 1.0) -> tuple[torch.Tensor, dict[str, Any]]:
    """One MetaRM gradient: adds ``scale * grad_{theta'} L(X_t; theta')`` to every trainable parameter's
    ``.grad``, where ``theta' = theta + inner_lr * grad J(X_s; theta)``. Returns L at theta' and parts
    (``meta_J`` is J at theta, before the inner step)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    # 1. J at theta, and its gradient
    meta_out = functional_call(model, params, (), {"input_ids": meta_batch["input_ids"],
                                                   "attention_mask": meta_batch["attention_mask"]})
    J = difference_loss(meta_out.rewards.view(-1, meta_batch["k"]))
    grads_J = torch.autograd.grad(J, [params[n] for n in names], allow_unused=True)
    # 2. inner ascent step; theta' is a fresh leaf, so the outer gradient is first-order
    adapted = {n: (params[n] + inner_lr * g if g is not None else params[n]).detach().requires_grad_(True)
               for n, g in zip(names, grads_J)}

    # 3. the RM loss at theta', through the trainer's own step function
    def at_adapted(**kw):
        return functional_call(model, adapted, (), kw)

    loss, parts = compute_loss(at_adapted, batch, objective, contrastive)
    extra = [p for p in contrastive.parameters() if p.requires_grad] if contrastive is not None else []
    grads = torch.autograd.grad(loss, [adapted[n] for n in names] + extra, allow_unused=True)
    # 4. the outer update uses grad at theta' as the gradient at theta (Algorithm 1, first order)
    for p, g in zip([params[n] for n in names] + extra, grads):
        if g is None:
            continue
        p.grad = scale * g if p.grad is None else p.grad + scale * g
    parts["meta_J"] = J.detach()
    return loss, parts
