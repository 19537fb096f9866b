"""PPO that optimises a policy against an rmkit reward model (PPO-max, the recipe of Part I of the
series that Part II uses; `../shared/PAPER.md` section 5).

One PPO step, top to bottom in `train_ppo`:

1. rollout: sample one response per prompt from the actor (T 0.8, top-p 0.9, repetition penalty 1.1);
2. score: decode each response and let the reward model read (prompt, response) in its own template,
   so the RM may have another backbone and tokenizer than the policy; one forward pass each of the
   actor (log-probs), the frozen reference (log-probs) and the critic (values), all without gradient;
3. rewards: ``-kl_coef * (log pi - log pi_ref)`` on every response token, plus the RM score,
   normalised by running mean/std and clipped, on the final token;
4. advantages by GAE (lambda 0.95, gamma 1), whitened over the batch; returns = advantages + values;
5. ``ppo_epochs`` passes of shuffled minibatches: the clipped policy loss (plus an optional
   pretraining LM loss, "ptx") and the clipped value loss, each with its own AdamW and global
   gradient clipping.

The critic is a value head on a transformer: a copy of the reward model when it shares the policy's
architecture and tokenizer (PPO-max initialises the critic from the RM), otherwise a copy of the
policy's backbone with a new zero head. Every step appends a line to ``metrics.jsonl``; checkpoints
hold actor, critic, optimizers and reward statistics, and a killed run resumes where it stopped.

For clusters, use TRL or OpenRLHF with rmkit's reward model (a sequence-classification checkpoint, or
``rmkit serve`` as OpenRLHF's remote RM); this PPO is for one machine.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .assets import load_pretrained
from .config import require_same_settings, save_config, validate
from .files import (append_jsonl, atomic_path, check_output_dir, keep_logged_through, read_appended_jsonl, write_json,
                    write_table)
from .hardware import autocast, resolve_device, resolve_precision
from .intervals import mean_interval
from .data import Message, data_folder_guard, load_preferences
from .gold import gold_scorer
from .losses import masked_mean, ppo_policy_loss, ppo_value_loss
from .models import RewardModel, set_trainable
from .policy import encode_prompts, generate, load_policy, load_prompts
from .reward_ensemble import EnsembleRewardModel, load_reward_model
from .configs.rl import PPOConfig  # noqa: F401 - the settings, beside the job


# ------------------------------------------------------------------------------------------
# Pieces: the critic, running reward statistics, GAE.


class ValueModel(nn.Module):
    """A critic: a transformer backbone and a linear head giving one value per token."""

    def __init__(self, backbone: nn.Module, head: nn.Linear):
        super().__init__()
        self.backbone, self.head = backbone, head

    @classmethod
    def from_reward_model(cls, rm: RewardModel) -> "ValueModel":
        """PPO-max's initialisation: the RM's backbone and head, so values start as the RM's reward of each prefix."""
        return cls(copy.deepcopy(rm.model.base_model), copy.deepcopy(rm.head))

    @classmethod
    def from_policy(cls, policy: nn.Module) -> "ValueModel":
        head = nn.Linear(policy.config.hidden_size, 1)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        return cls(copy.deepcopy(policy.base_model), head)

    def forward(self, input_ids, attention_mask, position_ids=None) -> torch.Tensor:
        kw = {"position_ids": position_ids} if position_ids is not None else {}
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kw).last_hidden_state
        return self.head(hidden).squeeze(-1).float()  # (B, T)


def shares_backbone(rm: RewardModel, policy: nn.Module, policy_tokenizer) -> bool:
    """Whether the RM reads the policy's tokens per position (same architecture and vocabulary), so its
    backbone and head can become the critic."""
    return (rm.model.config.model_type == policy.config.model_type
            and rm.model.config.hidden_size == policy.config.hidden_size
            and rm.tokenizer.get_vocab() == policy_tokenizer.get_vocab())


class RunningMoments:
    """Mean and std of every RM score seen so far (Chan et al.'s parallel update)."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: torch.Tensor) -> None:
        n, mean = x.numel(), x.double().mean().item()
        m2 = ((x.double() - mean) ** 2).sum().item()
        delta, total = mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.m2 += m2 + delta ** 2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 1.0

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, d: dict[str, float]) -> None:
        self.count, self.mean, self.m2 = int(d["count"]), float(d["mean"]), float(d["m2"])


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded response tokens (B, T): the value after the
    last response token is 0 (the episode ends). Returns (advantages, returns)."""
    adv = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        next_v = values[:, t + 1] * mask[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        adv[:, t] = last
    return adv, adv + values


def leave_one_out(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``scores (B * k,)``, the k responses of each prompt in a row: each minus the mean of its prompt's other k - 1
    (RLOO's baseline). A prompt's easiness cancels; what is left is how the response compares with its siblings."""
    g = scores.view(-1, k)
    return (g - (g.sum(1, keepdim=True) - g) / (k - 1)).view(-1)


def final_score(scores: torch.Tensor, ended: torch.Tensor, cfg: PPOConfig, moments: RunningMoments) -> torch.Tensor:
    """The reward PPO puts on a response's last token, from its RM score ``(B,)``: the missing-EOS penalty, the
    leave-one-out baseline (``samples_per_prompt`` > 1), running normalisation (updates ``moments``), clipping."""
    score = scores.clone()
    if cfg.missing_eos_penalty is not None:
        score[~ended] -= cfg.missing_eos_penalty
    if cfg.samples_per_prompt > 1:
        score = leave_one_out(score, cfg.samples_per_prompt)
    if cfg.normalize_reward:
        moments.update(score)
        score = (score - moments.mean) / max(moments.std, 1e-6)
    return score.clamp(-cfg.reward_clip, cfg.reward_clip)


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


# ------------------------------------------------------------------------------------------
# Sequences: left-padded prompts + right-padded responses in one (B, P + R) tensor.


def pack(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad: int,
         device) -> dict[str, Any]:
    """``input_ids``, ``attention_mask``, ``position_ids`` (counting real tokens only, as generation
    did), the prompt width ``P`` and the response-token mask (B, R)."""
    P = max(len(p) for p in prompt_ids)
    R = max(1, max(len(r) for r in response_ids))
    ids = torch.full((len(prompt_ids), P + R), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        ids[i, P - len(p): P + len(r)] = torch.as_tensor(list(p) + list(r), dtype=torch.long)
        mask[i, P - len(p): P + len(r)] = 1
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": pos.to(device), "P": P,
            "response_mask": mask[:, P:].float().to(device)}


def select(seq: dict[str, Any], rows) -> dict[str, Any]:
    """Rows of a packed batch, with the columns that are padding in every chosen row cut off."""
    out = {k: (v[rows] if torch.is_tensor(v) else v) for k, v in seq.items()}
    used = out["attention_mask"].any(0).nonzero()
    lo, hi = int(used.min()), int(used.max()) + 1
    lo = min(lo, out["P"] - 1)  # keep the last prompt column: it predicts the first response token
    for k in ("input_ids", "attention_mask", "position_ids"):
        out[k] = out[k][:, lo:hi]
    out["P"] -= lo
    out["response_mask"] = out["response_mask"][:, : hi - seq["P"]]
    return out


def _accepts_logits_to_keep(model) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def response_logprobs(model, seq: dict[str, Any], temperature: float, *,
                      with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities (B, R) the model gives each response token (at the sampling temperature), and
    optionally the entropy of each next-token distribution. Only the response positions go through
    the LM head."""
    P, R = seq["P"], seq["input_ids"].shape[1] - seq["P"]
    kw = {"logits_to_keep": R + 1} if _accepts_logits_to_keep(model) else {}
    logits = model(input_ids=seq["input_ids"], attention_mask=seq["attention_mask"],
                   position_ids=seq["position_ids"], use_cache=False, **kw).logits
    logits = logits[:, -(R + 1):-1].float() / max(temperature, 1e-6)
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, seq["input_ids"][:, P:].unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
    return logp, entropy


def response_values(critic: ValueModel, seq: dict[str, Any]) -> torch.Tensor:
    """The critic's value (B, R) of the state before each response token."""
    v = critic(seq["input_ids"], seq["attention_mask"], seq["position_ids"])
    return v[:, seq["P"] - 1: -1]


# ------------------------------------------------------------------------------------------
# Prompts, ptx data, evaluation


def usable_prompts(tokenizer, ids: Sequence[str], prompts: Sequence[Sequence[Message]],
                   max_tokens: int) -> tuple[list[int], list[list[int]], list[dict[str, Any]]]:
    """Token ids of every prompt and a status row per prompt: ``ok`` or ``too_long`` (never dropped
    silently: the rows go to prompts.csv)."""
    enc = encode_prompts(tokenizer, prompts, max_tokens=10 ** 6)
    rows = [{"id": i, "tokens": len(e), "status": "ok" if len(e) <= max_tokens else "too_long"}
            for i, e in zip(ids, enc)]
    keep = [k for k, r in enumerate(rows) if r["status"] == "ok"]
    return keep, enc, rows


def ptx_batches(tokenizer, source: str, max_tokens: int) -> list[tuple[list[int], int]]:
    """(token ids, prompt length) of each pair's prompt + chosen response in the policy's template."""
    pairs = load_preferences(source).pairs
    prompt_ids = encode_prompts(tokenizer, [p.prompt for p in pairs], max_tokens)
    out = []
    for p, ids in zip(pairs, prompt_ids):
        text = "".join(m["content"] for m in p.chosen if m["role"] == "assistant")
        resp = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append((ids + resp[: max(1, max_tokens - len(ids))], len(ids)))
    return out


def ptx_loss(model, examples: Sequence[tuple[list[int], int]], pad: int, device) -> torch.Tensor:
    """The LM loss on the response tokens of pretraining/SFT examples (right-padded)."""
    n = max(len(x) for x, _ in examples)
    ids = torch.full((len(examples), n), pad, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, (x, p) in enumerate(examples):
        ids[i, : len(x)] = torch.as_tensor(x)
        labels[i, p: len(x)] = ids[i, p: len(x)]
        mask[i, : len(x)] = 1
    return model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss


def _decode(tokenizer, responses: Sequence[Sequence[int]]) -> list[str]:
    return [tokenizer.decode(r, skip_special_tokens=True).strip() for r in responses]


@torch.no_grad()
def rollout(actor, ref, critic, rm: RewardModel, tokenizer, prompts: Sequence[Sequence[Message]],
            prompt_ids: Sequence[Sequence[int]], cfg: PPOConfig, *, seed: int, device) -> dict[str, Any]:
    """Sample, then score: responses, RM scores, and the actor's, reference's and (unless ``critic`` is
    None) critic's per-token log-probs and values (one forward pass each)."""
    t0 = time.perf_counter()
    responses = generate(actor, tokenizer, prompt_ids, cfg, generator_seed=seed)
    t_gen = time.perf_counter() - t0
    texts = _decode(tokenizer, responses)
    scores = rm.score(prompts, [[{"role": "assistant", "content": t}] for t in texts], batch_size=cfg.rm_batch_size)
    ended = torch.tensor([len(r) > 0 and r[-1] == tokenizer.eos_token_id for r in responses])
    seq = pack(prompt_ids, responses, tokenizer.pad_token_id, device)
    logp, _ = response_logprobs(actor, seq, cfg.temperature)
    ref_logp, _ = response_logprobs(ref, seq, cfg.temperature)
    values = response_values(critic, seq) if critic is not None else None
    kl = ((logp - ref_logp) * seq["response_mask"]).sum(1)
    # k3 (Schulman 2020): per token exp(-x) - 1 + x with x = logp - ref_logp; unbiased like kl above and never
    # negative, which the plain sum of log-ratios is on a few short samples near the reference.
    x = (logp - ref_logp) * seq["response_mask"]
    kl_k3 = ((torch.exp(-x) - 1 + x) * seq["response_mask"]).sum(1)
    return {"seq": seq, "responses": responses, "texts": texts, "scores": scores, "ended": ended, "logp": logp,
            "ref_logp": ref_logp, "values": values, "kl": kl.cpu(), "kl_k3": kl_k3.cpu(), "generate_s": t_gen,
            "tokens": int(sum(len(r) for r in responses))}


def evaluate_policy(actor, ref, rm, tokenizer, prompts, prompt_ids, cfg: PPOConfig, device, gold=None
                    ) -> dict[str, Any]:
    """Mean RM score and KL to the reference of sampled responses to the held-out prompts (fixed seed),
    and the per-prompt values under ``per_prompt`` (score, kl, and the response itself, so a later judge or gold
    can grade the same texts), for paired comparisons across steps. With a ``gold`` (`rmkit.gold.gold_scorer`),
    the same responses' gold rewards too (``eval/gold``, per prompt ``gold``); a prompt-aware gold's relevance term
    as well (``eval/gold_relevance``, per prompt ``gold_relevance``: gold = base + beta * relevance), so whether a
    policy leaves the question can be read from the log without encoding the responses again."""
    scores, kls, k3s, lengths, golds, rels, texts = [], [], [], [], [], [], []
    rows = cfg.batch_size * cfg.samples_per_prompt  # as many sequences at once as a rollout
    for s in range(0, len(prompts), rows):
        r = rollout(actor, ref, None, rm, tokenizer, prompts[s: s + rows], prompt_ids[s: s + rows],
                    cfg, seed=cfg.seed * 7919 + s, device=device)
        scores.append(r["scores"])
        kls.append(r["kl"])
        k3s.append(r["kl_k3"])
        lengths += [len(x) for x in r["responses"]]
        texts += r["texts"]
        if gold is not None:
            args = (prompts[s: s + rows], [[{"role": "assistant", "content": t}] for t in r["texts"]])
            if hasattr(gold, "parts"):  # one pass for both: the sum is what `PromptAwareGold.score` returns
                base, rel = gold.parts(*args, batch_size=cfg.rm_batch_size)
                golds.append(base + gold.beta * rel)
                rels.append(rel)
            else:
                golds.append(np.asarray(gold.score(*args, batch_size=cfg.rm_batch_size), dtype=np.float64))
    score, kl = torch.cat(scores), torch.cat(kls)
    out = {"eval/score": score.mean().item(), "eval/kl": kl.mean().item(), "eval/kl_k3": torch.cat(k3s).mean().item(),
           "eval/response_length": float(np.mean(lengths)),
           "per_prompt": {"score": score.tolist(), "kl": kl.tolist(), "response": texts}}
    if gold is not None:
        g = np.concatenate(golds)
        out["eval/gold"] = float(g.mean())
        out["per_prompt"]["gold"] = g.tolist()
    if rels:
        rel = np.concatenate(rels)
        out["eval/gold_relevance"] = float(rel.mean())
        out["per_prompt"]["gold_relevance"] = rel.tolist()
    return out


# ------------------------------------------------------------------------------------------
# Checkpoints


def _identity(cfg: PPOConfig, precision: str) -> dict[str, Any]:
    """What must match for a checkpoint to be continued (not the length of the run or where it is saved); the
    precision as resolved (auto differs by device), named only when not fp32 so older checkpoints still match."""
    d = asdict(cfg)
    for k in ("steps", "save_every", "resume", "output_dir", "eval_every", "device", "rm_batch_size", "precision"):
        d.pop(k)
    if precision != "fp32":
        d["precision"] = precision
    # Settings added later are named only when set, so checkpoints from before them still match.
    for k, default in (("gold", None), ("samples_per_prompt", 1)):
        if d.get(k) == default:
            d.pop(k)
    return d


def _save(path: Path, actor, tokenizer, critic, opt_a, opt_c, moments: RunningMoments, step: int,
          cfg: PPOConfig, precision: str) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:  # a kill mid-save leaves the previous checkpoint intact
        actor.save_pretrained(tmp / "actor", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "actor")
        save_file({k: v.contiguous() for k, v in critic.state_dict().items()}, str(tmp / "critic.safetensors"))
        torch.save({"step": step, "actor_opt": opt_a.state_dict(), "critic_opt": opt_c.state_dict(),
                    "moments": moments.state_dict(), "identity": _identity(cfg, precision)}, tmp / "state.pt")


def _load(path: Path, actor, critic, opt_a, opt_c, moments: RunningMoments, cfg: PPOConfig, precision: str) -> int:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    state = torch.load(path / "state.pt", weights_only=True)
    require_same_settings(state["identity"], _identity(cfg, precision), path, "use another output_dir or --resume false")
    actor.load_state_dict(load_pretrained(AutoModelForCausalLM, str(path / "actor")).state_dict())
    critic.load_state_dict(load_file(str(path / "critic.safetensors")))
    opt_a.load_state_dict(state["actor_opt"])
    opt_c.load_state_dict(state["critic_opt"])
    moments.load_state_dict(state["moments"])
    return int(state["step"])


# ------------------------------------------------------------------------------------------
# The loop


def train_ppo(cfg: PPOConfig) -> dict[str, Any]:
    """Run PPO; returns the summary also written to ``OUTPUT_DIR/summary.json``."""
    import pandas as pd
    from tqdm.auto import tqdm

    validate(cfg)  # before any model loads
    if not cfg.reward_model:
        raise ValueError("PPO needs a reward model: --reward-model PATH (train one with rmkit train)")
    if not cfg.data:
        raise ValueError("PPO needs prompts: rmkit ppo PROMPTS (preference data or a file with a prompt column)")
    out = check_output_dir(cfg.output_dir, not_in=data_folder_guard(cfg.data))
    save_config(cfg, out / "config.yaml")
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device, training=True)
    amp = functools.partial(autocast, device, precision)  # around forward passes only; weights and optimizer fp32
    torch.manual_seed(cfg.seed)
    ids, prompts, skipped = load_prompts(cfg.data, cfg)  # read (and, if strict, checked) before any model loads

    actor, tok = load_policy(cfg.policy)
    actor.to(device).eval()  # eval: no dropout, so rollout and update log-probs agree
    ref = copy.deepcopy(actor).requires_grad_(False)
    rm = load_reward_model(cfg.reward_model, aggregation=cfg.aggregation, uwo_lambda=cfg.uwo_lambda)
    rm = rm.to(device).eval().requires_grad_(False)
    gold = gold_scorer(cfg.gold, device=str(device), precision=precision) if cfg.gold else None
    first_rm = rm.members[0] if isinstance(rm, EnsembleRewardModel) else rm  # an ensemble's critic: its first member
    init = cfg.critic_init
    if init == "auto":
        init = "reward_model" if shares_backbone(first_rm, actor, tok) else "policy"
    critic = (ValueModel.from_reward_model(first_rm) if init == "reward_model" else ValueModel.from_policy(actor))
    critic.to(device).eval()
    set_trainable(critic, cfg.critic_train_layers, head=critic.head)
    critic_params = [p for p in critic.parameters() if p.requires_grad]
    opt_a = torch.optim.AdamW(actor.parameters(), lr=cfg.actor_lr, eps=1e-6)  # eps 1e-6: the paper gives none
    opt_c = torch.optim.AdamW(critic_params, lr=cfg.critic_lr, eps=1e-6)
    moments = RunningMoments()

    # Prompts: held-out evaluation prompts first, the rest feed rollouts in a seeded order.
    keep, enc, rows = usable_prompts(tok, ids, prompts, cfg.max_prompt_tokens)
    # every source row, with why it was or was not used
    write_table(out / "prompts.csv", pd.DataFrame(rows + [{"id": r["id"], "tokens": None, "status": r["status"]}
                                                          for r in skipped]))
    keep = keep[: cfg.max_prompts] if cfg.max_prompts else keep
    if len(keep) <= cfg.eval_prompts:
        raise ValueError(f"{cfg.data}: {len(keep)} prompts fit max_prompt_tokens={cfg.max_prompt_tokens}; need more "
                         f"than eval_prompts={cfg.eval_prompts}")
    order = np.random.default_rng(cfg.seed).permutation(keep).tolist()
    eval_idx, train_idx = order[: cfg.eval_prompts], order[cfg.eval_prompts:]
    eval_p, eval_ids = [prompts[i] for i in eval_idx], [enc[i] for i in eval_idx]
    if isinstance(rm, EnsembleRewardModel) and rm.normalize == "zscore" and rm.stats is None:
        # Members of different scales must not dominate min/uwo: z-score each on the starting policy's responses
        # to the held-out prompts (a fixed seed, so a resumed run gets the same statistics).
        with amp():
            texts = _decode(tok, generate(actor, tok, eval_ids, cfg, generator_seed=cfg.seed + 99991))
            rm.fit_normalization(eval_p, [[{"role": "assistant", "content": t}] for t in texts],
                                 batch_size=cfg.rm_batch_size)
        write_json(out / "ensemble_normalization.json", {"members": rm.names, "stats": rm.stats})
    ptx = ptx_batches(tok, cfg.ptx_data, cfg.max_prompt_tokens + cfg.max_new_tokens) if cfg.ptx_coef > 0 else []

    start = 0
    ckpt = out / "checkpoint"
    metrics_path = out / "metrics.jsonl"
    if cfg.resume and (ckpt / "state.pt").exists():
        start = _load(ckpt, actor, critic, opt_a, opt_c, moments, cfg, precision)
        for path in (metrics_path, out / "eval_scores.jsonl"):  # drop lines logged after the checkpoint
            keep_logged_through(path, start)
    else:
        metrics_path.write_text("")
        (out / "eval_scores.jsonl").unlink(missing_ok=True)

    def log(record: dict[str, Any]) -> None:
        per_prompt = record.pop("per_prompt", None)
        if per_prompt is not None:  # the held-out prompts' own scores, for paired start/end comparisons
            append_jsonl(out / "eval_scores.jsonl", {"step": record["step"], "ids": [ids[i] for i in eval_idx],
                                                     **per_prompt})
        append_jsonl(metrics_path, record)

    if start == 0:
        with amp():
            log({"step": 0, **evaluate_policy(actor, ref, rm, tok, eval_p, eval_ids, cfg, device, gold)})

    bar = tqdm(range(start, cfg.steps), desc="ppo", initial=start, total=cfg.steps)
    for step in bar:
        t0 = time.perf_counter()
        batch_idx = [train_idx[(step * cfg.batch_size + j) % len(train_idx)] for j in range(cfg.batch_size)
                     for _ in range(cfg.samples_per_prompt)]
        with amp():
            r = rollout(actor, ref, critic, rm, tok, [prompts[i] for i in batch_idx], [enc[i] for i in batch_idx],
                        cfg, seed=cfg.seed * 1_000_003 + step, device=device)
        seq, mask = r["seq"], r["seq"]["response_mask"]
        t_rollout = time.perf_counter() - t0

        # Rewards: KL penalty on every token, the normalised and clipped RM score on the last one.
        score = final_score(r["scores"], r["ended"], cfg, moments).to(device)
        rewards = -cfg.kl_coef * (r["logp"] - r["ref_logp"]) * mask
        last = mask.sum(1).long() - 1
        rewards[torch.arange(len(last), device=device), last] += score
        adv, returns = gae(rewards, r["values"], mask, gamma=cfg.gamma, lam=cfg.lam)
        adv = whiten(adv, mask)

        # PPO epochs over shuffled minibatches.
        stats: dict[str, list[float]] = {k: [] for k in ("pg", "vf", "pg_clip", "vf_clip", "approx_kl", "entropy", "ptx")}
        rng = np.random.default_rng([cfg.seed, step])
        for _ in range(cfg.ppo_epochs):
            perm = rng.permutation(len(batch_idx))
            for s in range(0, len(batch_idx), cfg.minibatch_size):
                rows_mb = torch.as_tensor(perm[s: s + cfg.minibatch_size], device=device)
                mb = select(seq, rows_mb)
                R = mb["response_mask"].shape[1]
                m = mb["response_mask"]
                old_logp, mb_adv = r["logp"][rows_mb, :R], adv[rows_mb, :R]
                with amp():
                    logp, entropy = response_logprobs(actor, mb, cfg.temperature, with_entropy=True)
                    if ptx:
                        pick = rng.choice(len(ptx), cfg.minibatch_size)
                        lm = ptx_loss(actor, [ptx[i] for i in pick], tok.pad_token_id, device)
                pg, pg_clip = ppo_policy_loss(logp, old_logp, mb_adv, m, clip=cfg.clip_range)
                ent = masked_mean(entropy, m)
                loss = pg - cfg.entropy_coef * ent if cfg.entropy_coef else pg  # no backward through a 0 term
                if ptx:
                    loss = loss + cfg.ptx_coef * lm
                    stats["ptx"].append(lm.item())
                opt_a.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(actor.parameters(), cfg.max_grad_norm)
                opt_a.step()

                with amp():
                    v = response_values(critic, mb)
                vf, vf_clip = ppo_value_loss(v, r["values"][rows_mb, :R], returns[rows_mb, :R], m, clip=cfg.value_clip)
                opt_c.zero_grad(set_to_none=True)
                vf.backward()
                nn.utils.clip_grad_norm_(critic_params, cfg.max_grad_norm)
                opt_c.step()
                with torch.no_grad():
                    log_ratio = logp - old_logp
                    stats["approx_kl"].append(masked_mean(log_ratio.exp() - 1 - log_ratio, m).item())
                for k, x in (("pg", pg), ("vf", vf), ("pg_clip", pg_clip), ("vf_clip", vf_clip), ("entropy", ent)):
                    stats[k].append(x.item())

        dt = time.perf_counter() - t0
        record = {
            "step": step + 1,
            "reward/score_mean": r["scores"].mean().item(), "reward/score_std": r["scores"].std().item(),
            "reward/shaped_mean": score.mean().item(), "kl/ref": r["kl"].mean().item(),
            "kl/ref_per_token": (r["kl"].sum() / mask.sum().cpu()).item(),
            "policy/entropy": float(np.mean(stats["entropy"])), "policy/response_length": mask.sum(1).mean().item(),
            "policy/eos_rate": r["ended"].float().mean().item(),
            "loss/policy": float(np.mean(stats["pg"])), "loss/value": float(np.mean(stats["vf"])),
            "clipfrac/policy": float(np.mean(stats["pg_clip"])), "clipfrac/value": float(np.mean(stats["vf_clip"])),
            "policy/approx_kl": float(np.mean(stats["approx_kl"])),
            "time/step_s": dt, "time/rollout_s": t_rollout, "time/rollout_tokens_per_s": r["tokens"] / r["generate_s"],
        }
        if stats["ptx"]:
            record["loss/ptx"] = float(np.mean(stats["ptx"]))
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            with amp():
                record.update(evaluate_policy(actor, ref, rm, tok, eval_p, eval_ids, cfg, device, gold))
        log(record)
        bar.set_postfix(score=f"{record['reward/score_mean']:.3f}", kl=f"{record['kl/ref']:.2f}")
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            _save(ckpt, actor, tok, critic, opt_a, opt_c, moments, step + 1, cfg, precision)

    if start < cfg.steps:
        with amp():
            final = evaluate_policy(actor, ref, rm, tok, eval_p, eval_ids, cfg, device, gold)
        log({"step": cfg.steps, **final})
        _save(ckpt, actor, tok, critic, opt_a, opt_c, moments, cfg.steps, cfg, precision)
        actor.save_pretrained(out / "policy", safe_serialization=True)
        tok.save_pretrained(out / "policy")
    summary = summarize_ppo(out, cfg)
    summary.update({"critic_init": init, "prompts_used": len(keep), "prompts_too_long": sum(
        r["status"] == "too_long" for r in rows), "source_rows_without_prompt": len(skipped),
        "policy_dir": str(out / "policy"), "device": str(device), "precision": precision})
    write_json(out / "summary.json", summary)
    return summary


def summarize_ppo(run_dir: str | Path, cfg: PPOConfig) -> dict[str, Any]:
    """Start and end of a run from its files: the held-out evaluation at step 0 and at the end (with a
    paired bootstrap 95% interval of the score gain over the same prompts), and the mean per-step
    rollout throughput and step time."""
    run_dir = Path(run_dir)
    # The log writes an undefined number (a NaN loss) as null; read it back as NaN so means stay numbers.
    recs = [{k: np.nan if v is None else v for k, v in x.items()}
            for x in read_appended_jsonl(run_dir / "metrics.jsonl")]
    evals = [x for x in recs if "eval/score" in x]
    steps = [x for x in recs if "time/step_s" in x]
    # KL to the reference: the k3 estimate (never negative) where the log has it; the plain sum of log-ratios
    # (kl_end_k1, what earlier runs logged) can come out below 0 on a few short samples.
    kl_key = "eval/kl_k3" if "eval/kl_k3" in evals[-1] else "eval/kl"
    kl_end = evals[-1][kl_key]
    out = {
        "steps": max(x["step"] for x in recs),
        "reward_start": evals[0]["eval/score"], "reward_end": evals[-1]["eval/score"],
        "kl_start": evals[0][kl_key], "kl_end": kl_end, "kl_end_k1": evals[-1]["eval/kl"], "kl_budget": cfg.kl_budget,
        "kl_within_budget": bool(kl_end <= cfg.kl_budget),
        "train_score_first5": float(np.mean([x["reward/score_mean"] for x in steps[:5]])) if steps else None,
        "train_score_last5": float(np.mean([x["reward/score_mean"] for x in steps[-5:]])) if steps else None,
        "rollout_tokens_per_s": float(np.mean([x["time/rollout_tokens_per_s"] for x in steps])) if steps else None,
        "s_per_step": float(np.mean([x["time/step_s"] for x in steps])) if steps else None,
        "s_per_step_median": float(np.median([x["time/step_s"] for x in steps])) if steps else None,
        "eval_prompts": cfg.eval_prompts,
    }
    per = read_appended_jsonl(run_dir / "eval_scores.jsonl")
    if len(per) >= 2:
        out["reward_gain"], out["reward_gain_ci95"], out["prompts_improved"] = paired_gain(per[0]["score"],
                                                                                            per[-1]["score"])
    golds = [x for x in evals if "eval/gold" in x]
    if golds:
        # The gold's view of the same held-out samples: where it peaked and what the run kept of that peak. A drop
        # from the peak while eval/score still rises is overoptimization (Gao et al. 2022, Fig. 1).
        peak = max(golds, key=lambda x: x["eval/gold"])
        out.update({"gold_start": golds[0]["eval/gold"], "gold_end": golds[-1]["eval/gold"],
                    "gold_peak": peak["eval/gold"], "gold_peak_step": peak["step"], "gold_peak_kl": peak["eval/kl"]})
        by_step = {x["step"]: x["gold"] for x in per if "gold" in x}
        first, last = min(by_step), max(by_step)
        if first != last:
            out["gold_gain"], out["gold_gain_ci95"], _ = paired_gain(by_step[first], by_step[last])
            if peak["step"] != last:
                out["gold_drop"], out["gold_drop_ci95"], _ = paired_gain(by_step[last], by_step[peak["step"]])
    return out


def paired_gain(before, after) -> tuple[float, list[float], float]:
    """Mean per-prompt gain ``after - before``, its bootstrap 95% interval over prompts (seeded), and the share of
    prompts that gained."""
    gain = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    return float(gain.mean()), list(mean_interval(gain)), float((gain > 0).mean())
