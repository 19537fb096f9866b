"""Candidate reward models made of a frozen backbone and a trained linear Bradley-Terry head.

For each backbone, every text (prompt + chosen, prompt + rejected) of the 8,552 hh-rlhf pairs is
encoded once; the features are cached under runs/. A linear head r = w·f is fitted on the training
split with the BT loss (logistic regression on f_c - f_r, no intercept), its L2 strength chosen on
the validation split, and its accuracy reported on the test split (the same seeded 70/10/20 split as
`rmkit train`).

Features per backbone:
- minilm: the pooled [CLS] vector (what `AutoModelForSequenceClassification` reads), the mean over all
  tokens and over the response tokens, at the last layer and at layer 3 of 6;
- smollm2: the final-token state (what a decoder RM reads), the mean response state at the last and
  the middle layer, and the response's log-likelihood under the chat model (sum, mean, length).

    .venv/bin/python benchmarks/frozen_features.py minilm --max-length 256
    .venv/bin/python benchmarks/frozen_features.py smollm2 --max-length 192

Results: benchmarks/results/frozen_<backbone>.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from rmkit.provenance import write_result
from rmkit.assets import resolve_model
from rmkit.data import get_splits, load_preferences

ROOT = Path(__file__).resolve().parents[1]


def _prompt_response_ids(tok, pairs, max_length: int, chat: bool):
    """Token ids of (prompt, response) for every text, the response kept whole up to max_length."""
    items = []
    for p in pairs:
        if chat:
            ptxt = tok.apply_chat_template(p.prompt, tokenize=False, add_generation_prompt=True)
        else:
            ptxt = "\n\n".join(f"{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in p.prompt)
            ptxt += "\n\nAssistant:"
        pi = tok(ptxt, add_special_tokens=False)["input_ids"]
        for resp in (p.chosen, p.rejected):
            rtxt = "\n\n".join(m["content"] for m in resp) + ("<|im_end|>" if chat else "")
            ri = tok(rtxt, add_special_tokens=False)["input_ids"][: max_length - 16]
            items.append((pi[-(max_length - 3 - len(ri)):] if max_length - 3 - len(ri) > 0 else [], ri))
    return items


def encode(backbone: str, pairs, max_length: int, batch_size: int) -> dict[str, np.ndarray]:
    from tqdm.auto import tqdm
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(backbone)
    tok = AutoTokenizer.from_pretrained(path)
    chat = bool(tok.chat_template)
    model = (AutoModelForCausalLM if chat else AutoModel).from_pretrained(path).eval()
    items = _prompt_response_ids(tok, pairs, max_length, chat)
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]) + len(items[i][1]))
    feats: dict[str, list] = {}
    out: dict[str, np.ndarray] = {}
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    with torch.inference_mode():
        for s in tqdm(range(0, len(order), batch_size), desc=f"encode {backbone}"):
            idx = order[s: s + batch_size]
            if chat:
                seqs = [items[i][0] + items[i][1] for i in idx]
                starts = [len(items[i][0]) for i in idx]
            else:
                seqs = [[tok.cls_token_id] + items[i][0] + [tok.sep_token_id] + items[i][1] + [tok.sep_token_id]
                        for i in idx]
                starts = [len(items[i][0]) + 2 for i in idx]
            n = max(map(len, seqs))
            ids = torch.full((len(seqs), n), pad)
            mask = torch.zeros_like(ids)
            for j, x in enumerate(seqs):
                ids[j, : len(x)] = torch.tensor(x)
                mask[j, : len(x)] = 1
            o = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            hs = o.hidden_states
            last, mid = hs[-1], hs[len(hs) // 2]
            resp = torch.zeros(mask.shape, dtype=torch.float32)
            ends = [len(x) - (0 if chat else 1) for x in seqs]
            for j, (a, b) in enumerate(zip(starts, ends)):
                resp[j, a: max(b, a + 1)] = 1
            mean = lambda h, m: (h * m[..., None]).sum(1) / m.sum(1, keepdim=True)  # noqa: E731
            got = {"mean_resp_last": mean(last, resp), "mean_resp_mid": mean(mid, resp)}
            if chat:
                got["final_token"] = last[torch.arange(len(seqs)), torch.tensor(ends) - 1]
                logp = torch.log_softmax(o.logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
                lp = [logp[j, a - 1: b - 1] for j, (a, b) in enumerate(zip(starts, ends))]
                got["loglik"] = torch.tensor([[x.sum(), x.mean(), float(len(x))] for x in lp])
            else:
                got["cls_pooled"] = o.pooler_output
                got["mean_all_last"] = mean(last, mask.float())
                got["mean_all_mid"] = mean(mid, mask.float())
            for k, v in got.items():
                feats.setdefault(k, [None] * len(items))
                for j, i in enumerate(idx):
                    feats[k][i] = v[j].float().numpy()
    for k, v in feats.items():
        out[k] = np.stack(v)
    return out


def fit_bt_head(diff_train, diff_val, diff_test, Cs=(0.001, 0.01, 0.1, 1.0, 10.0)):
    """Linear BT head by logistic regression on differences; C picked on validation."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([diff_train, -diff_train])
    y = np.r_[np.ones(len(diff_train)), np.zeros(len(diff_train))]
    best = None
    for C in Cs:
        w = LogisticRegression(C=C, fit_intercept=False, max_iter=3000).fit(x, y).coef_[0]
        val = float(np.mean(diff_val @ w > 0))
        if best is None or val > best[0]:
            best = (val, C, w)
    val, C, w = best
    return {"val_accuracy": val, "test_accuracy": float(np.mean(diff_test @ w > 0)), "C": C}, w


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backbone", choices=["minilm", "smollm2"])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hh-rlhf"))
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--limit", type=int, default=None, help="rows per file (a quick look)")
    args = parser.parse_args()
    torch.manual_seed(0)
    ds = load_preferences(args.data, limit=args.limit)
    pairs = ds.pairs
    splits = get_splits(ds, None, seed=0)
    pos = {p.id: i for i, p in enumerate(pairs)}
    cache = ROOT / "runs" / "feature_cache" / f"{args.backbone}_{args.max_length}_{args.limit}.npz"
    t0 = time.time()
    if cache.exists():
        feats = dict(np.load(cache))
    else:
        feats = encode(args.backbone, pairs, args.max_length, args.batch_size)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **feats)
    encode_s = time.time() - t0
    idx = {k: np.array([pos[i] for i in v]) for k, v in splits.items()}
    results = {"backbone": args.backbone, "max_length": args.max_length, "encode_seconds": encode_s,
               "texts": 2 * len(pairs), "features": {}}
    for name, f in feats.items():
        if f.shape[1] > 8:  # embeddings: unit-normalise so one C grid fits every layer
            f = f / np.linalg.norm(f, axis=1, keepdims=True).clip(1e-6)
        else:  # a few scalar features: standardise, and add the log length
            f = np.concatenate([f, np.log1p(f[:, -1:])], 1)
            f = (f - f.mean(0)) / f.std(0).clip(1e-6)
        diff = f[0::2] - f[1::2]
        res, _ = fit_bt_head(diff[idx["train"]], diff[idx["validation"]], diff[idx["test"]])
        results["features"][name] = res
        print(name, res, flush=True)
    out = ROOT / "benchmarks" / "results" / f"frozen_{args.backbone}{'' if args.limit is None else '_limit'}.json"
    write_result(out, results)


if __name__ == "__main__":
    main()
