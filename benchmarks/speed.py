"""Speed and quality side by side, in one run, on this machine (issue: every forward pass at the hardware's rate).

- ``vs_naive``: what a user writes without rmkit (transformers' ``AutoModelForSequenceClassification``, texts in
  their given order in batches of 32 padded to the longest, under ``torch.no_grad``) against rmkit's scoring
  (length-sorted batches, dynamic padding, ``inference_mode``) of the same hh-rlhf pairs; MiniLM; the rewards
  must agree. At 128, 256 and 512 tokens (the headline: 512, MiniLM's context), with the work each path's
  batches hold (``work_ratio``: what padding alone can buy) and the FLOP rate each path ran at.
- ``precision``: rmkit's MiniLM scoring and the audit's encoding in fp32 and in bf16 autocast: texts/s and
  how far the outputs move (max |reward difference|, min cosine of the features).
- ``prefix``: SmolLM2-135M as a decoder RM (a sequence-classification head on it), plain scoring against
  shared-prefix scoring (each pair's prompt once, both responses on its KV cache): pairs/s, max |reward diff|.
- ``audit``: the cold audit of every hh-rlhf pair (encoding included, nothing cached) in fp32 and in the fast
  setting (default: the audit's defaults, whose precision ``auto`` picks bf16 where this CPU's bf16 matmuls
  measure >= 1.5x its fp32 ones); wall time, ratio, and Spearman of the two strength rankings; and how close the
  fp32 encoding came to the CPU's fp32 matmul rate measured just before (its FLOPs estimated from the texts' token
  counts).

    .venv/bin/python benchmarks/speed.py [--pairs 512] [--blocks vs_naive,precision,prefix,audit] [--device cuda]

Writes benchmarks/results/speed.json (``--out`` another file for another kind of machine). Wall-clock numbers: run
it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from rmkit.audit import AuditConfig, run_audit
from rmkit.batching import length_sorted_batches
from rmkit.calibration import spearman
from rmkit.data import load_preferences
from rmkit.ensemble import encode_features
from rmkit.hardware import cpu_bf16_speedup, cpu_has_bf16, native_bf16, resolve_device, resolve_precision
from rmkit.models import RewardModel
from rmkit.prefix import common_prefix_length, score_pairs_shared_prefix
from rmkit.provenance import cpu_model, write_result
from rmkit.scoring import score_token_pairs

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def timed(fn):
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)  # GPU work is asynchronous
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


def naive_scores(rm: RewardModel, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """The loop of transformers' docs: tokenize a batch in the given order, pad to its longest, no_grad."""
    tok, model = rm.tokenizer, rm.model
    out = []
    with torch.no_grad():
        for s in range(0, len(texts), batch_size):
            enc = tok(texts[s: s + batch_size], padding=True, truncation=True, max_length=rm.max_length,
                      return_tensors="pt").to(model.device)
            out.append(model(**enc).logits[:, 0].float().cpu().numpy())
    return np.concatenate(out)


def matmul_gflops() -> dict:
    """What the CPU's matmul does in fp32 and in bf16 (the ceiling of any autocast gain; bf16 only where the CPU
    has bf16 instructions: elsewhere torch emulates it at ~2 GFLOPS and nothing of rmkit's would use it)."""
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))[: 2 if cpu_has_bf16() else 1]:
        a, b = torch.randn(2048, 384, dtype=dtype), torch.randn(384, 1536, dtype=dtype)
        for _ in range(3):
            a @ b
        _, t = timed(lambda a=a, b=b: [a @ b for _ in range(50)])
        out[name] = 50 * 2 * 2048 * 384 * 1536 / t / 1e9
    return out


def vs_naive(pairs, max_length: int, device: torch.device) -> dict:
    rm = RewardModel.from_pretrained("minilm", max_length=max_length).to(device).eval()
    texts = [rm.render(p.prompt, side) for p in pairs for side in (p.chosen, p.rejected)]
    if device.type == "cuda":
        naive_scores(rm, texts[:64])  # CUDA's first calls (context, kernel choice) must not land in the first timing
    naive, t_naive = timed(lambda: naive_scores(rm, texts))
    # Both paths' times include tokenizing (the naive loop tokenizes each batch): on a GPU it is most of the work.
    (c, r), t_tokenize = timed(lambda: rm.encode_pairs(pairs))
    (rc, rr), t_score = timed(lambda: score_token_pairs(rm, c, r, batch_size=64))
    t_rmkit = t_tokenize + t_score
    ours = np.stack([rc, rr], 1).reshape(-1)
    # What padding alone can buy: the work of each path's batches (the naive loop's in the given order, rmkit's
    # length-sorted), so vs_naive splits into the work saved and the rate at which each path does its work.
    lengths = [len(x) for pair in zip(c, r) for x in pair]  # the naive loop's order: chosen, rejected, ...
    batches = {"naive": [list(range(s, min(s + 32, len(lengths)))) for s in range(0, len(lengths), 32)],
               "rmkit": length_sorted_batches(lengths, 64)}
    work = {name: encoder_flops(rm.model.config, b, lengths) for name, b in batches.items()}
    padded = {name: sum(len(x) * max(lengths[k] for k in x) for x in b) for name, b in batches.items()}
    out = {"model": "minilm", "max_length": max_length, "texts": len(texts),
           "naive_texts_per_s": len(texts) / t_naive, "rmkit_texts_per_s": len(texts) / t_rmkit,
           "rmkit_tokenize_s": t_tokenize, "rmkit_score_texts_per_s": len(texts) / t_score,
           "vs_naive": t_naive / t_rmkit, "max_abs_reward_diff": float(np.abs(naive - ours).max()),
           "mean_tokens": float(np.mean(lengths)), "share_at_max_length": float(np.mean(np.array(lengths) >= max_length)),
           "padded_tokens": {**padded, "real": int(sum(lengths))},
           "work_ratio": work["naive"] / work["rmkit"],
           "gflops": {"naive": work["naive"] / t_naive / 1e9, "rmkit": work["rmkit"] / t_rmkit / 1e9}}
    # The above compares fp32 with fp32. rmkit's default precision (auto) is what a user gets; where it picks bf16
    # (a CPU whose bf16 matmuls measure >= 1.5x), time that too, with how far its rewards move.
    auto = resolve_precision("auto", device, announce=False)
    out["auto_precision"] = auto
    if auto != "fp32":
        (ac, ar), t_auto = timed(lambda: score_token_pairs(rm, c, r, batch_size=64, precision=auto))
        out.update(vs_naive_at_auto_precision=t_naive / (t_tokenize + t_auto),
                   auto_max_abs_reward_diff=float(np.abs(naive - np.stack([ac, ar], 1).reshape(-1)).max()))
    return out


def precision_block(pairs, max_length: int, device: torch.device) -> dict:
    rm = RewardModel.from_pretrained("minilm", max_length=max_length).to(device).eval()
    c, r = rm.encode_pairs(pairs)
    out: dict = {"model": "minilm", "max_length": max_length, "texts": 2 * len(pairs), "device": str(device),
                 "cpu_has_bf16": cpu_has_bf16()}
    scores, feats = {}, {}
    if not native_bf16(device):  # rmkit's precision "auto" keeps fp32 here; emulated bf16 would take an hour
        out["bf16"] = "skipped: no bf16 instructions on this CPU"
    for prec in ("fp32", "bf16")[: 2 if native_bf16(device) else 1]:
        (rc, rr), t = timed(lambda prec=prec: score_token_pairs(rm, c, r, batch_size=64, precision=prec))
        scores[prec] = np.concatenate([rc, rr])
        out[f"score_{prec}_texts_per_s"] = 2 * len(pairs) / t
        with tempfile.TemporaryDirectory() as tmp:
            def encode(prec=prec, tmp=tmp):
                return encode_features(rm, pairs, cache_dir=tmp, model_id="minilm", pooling="mean",
                                       layers=[1, 2, 4, 5, 6], batch_size=64, progress=False, precision=prec)

            (fc, fr), t = timed(encode)
            feats[prec] = np.concatenate([np.asarray(fc), np.asarray(fr)]).reshape(-1, 384)
        out[f"encode_{prec}_texts_per_s"] = 2 * len(pairs) / t
    if "bf16" not in feats:
        return out
    a, b = feats["fp32"], feats["bf16"]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)).clip(1e-12)
    out.update(bf16_score_speedup=out["score_bf16_texts_per_s"] / out["score_fp32_texts_per_s"],
               bf16_encode_speedup=out["encode_bf16_texts_per_s"] / out["encode_fp32_texts_per_s"],
               bf16_max_abs_reward_diff=float(np.abs(scores["fp32"] - scores["bf16"]).max()),
               bf16_min_feature_cosine=float(cos.min()))
    return out


def prefix_block(pairs, max_length: int, device: torch.device) -> dict:
    rm = RewardModel.from_pretrained("smollm2", max_length=max_length).to(device).eval()
    c, r = rm.encode_pairs(pairs)
    shared = np.array([common_prefix_length(a, b) for a, b in zip(c, r)])
    total = np.array([len(a) + len(b) for a, b in zip(c, r)])
    (pc, pr), t_plain = timed(lambda: score_token_pairs(rm, c, r, batch_size=16))
    _, t_plain_1 = timed(lambda: score_token_pairs(rm, c, r, batch_size=2))  # the plain path's best batch on a CPU
    (sc, sr), t_prefix = timed(lambda: score_pairs_shared_prefix(rm, c, r, batch_size=16))
    return {"model": "smollm2 (135M, a sequence-classification head)", "max_length": max_length, "pairs": len(pairs),
            "tokens_per_pair": float(total.mean()), "shared_prefix_share": float((2 * shared).sum() / total.sum()),
            "plain_pairs_per_s": len(pairs) / t_plain, "plain_one_pair_per_batch_pairs_per_s": len(pairs) / t_plain_1,
            "prefix_pairs_per_s": len(pairs) / t_prefix, "prefix_speedup": t_plain / t_prefix,
            "prefix_speedup_vs_best_plain_batch": min(t_plain, t_plain_1) / t_prefix,
            "prefix_max_abs_diff": float(max(np.abs(pc - sc).max(), np.abs(pr - sr).max()))}


def encoder_flops(config, batches: list[list[int]], lengths: list[int]) -> float:
    """Floating-point operations of a BERT-style encoder over padded batches (multiply-add = 2):
    per layer and token the four attention projections (4 H^2) and the feed-forward pair (2 H I), and per layer
    and batch the two attention products (2 B T^2 H); embeddings, norms and softmax are left out (small)."""
    h, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    total = 0.0
    for b in batches:
        t = max(lengths[k] for k in b)
        total += n * 2 * (len(b) * t * (4 * h * h + 2 * h * i) + 2 * len(b) * t * t * h)
    return total


def encode_rate(cfg: AuditConfig, fp32_encode_seconds: float, gflops_fp32: float) -> dict:
    """How close the fp32 audit's encoding came to this CPU's fp32 matmul rate: the work it did (estimated from
    its texts' token counts and batches) over the time it took."""
    rm = RewardModel.from_pretrained(cfg.model, max_length=cfg.max_length)
    c, r = rm.encode_pairs(load_preferences(DATA / "hh-rlhf").pairs)
    lengths = [len(x) for x in c + r]
    flops = encoder_flops(rm.model.config, length_sorted_batches(lengths, cfg.batch_size), lengths)
    achieved = flops / fp32_encode_seconds / 1e9
    return {"texts": len(lengths), "mean_tokens": float(np.mean(lengths)), "encode_tflop": flops / 1e12,
            "encode_gflops_fp32": achieved, "matmul_gflops_fp32_same_run": gflops_fp32,
            "share_of_matmul_rate": achieved / gflops_fp32}


def audit_block(fast: dict) -> dict:
    out: dict = {"pairs_source": "all of hh-rlhf's test split", "fast_settings": fast}
    out["matmul_gflops_before"] = matmul_gflops()  # the machine's speed at the time (it varies between runs)
    strength = {}
    for name, extra in (("fp32", {"precision": "fp32"}), ("fast", fast)):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = replace(AuditConfig(data=str(DATA / "hh-rlhf"), output_dir=f"{tmp}/audit", cache_dir=f"{tmp}/cache",
                                      report_pairs=5), **extra)
            result, t = timed(lambda cfg=cfg: run_audit(cfg, progress=False))
            table = result.table
            strength[name] = table.set_index("id")["mean"]
            out[f"{name}_seconds"] = t
            out[f"{name}_timings"] = result.summary["timings"]
            out[f"{name}_precision"] = result.summary["ensemble"].get("precision")  # what auto chose
    out["audit_ratio"] = out["fast_seconds"] / out["fp32_seconds"]
    both = strength["fp32"].dropna().index.intersection(strength["fast"].dropna().index)
    out["strength_spearman"] = spearman(strength["fp32"][both].to_numpy(), strength["fast"][both].to_numpy())
    out["fp32_encoding_rate"] = encode_rate(AuditConfig(), out["fp32_timings"]["encode_seconds"],
                                            out["matmul_gflops_before"]["fp32"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=512, help="hh-rlhf pairs for the scoring measurements")
    parser.add_argument("--prefix-pairs", type=int, default=128)
    parser.add_argument("--blocks", default="vs_naive,precision,prefix,audit",
                        help="blocks to run, comma-separated; the others keep their last measurement in the file")
    parser.add_argument("--skip-audit", action="store_true", help="= --blocks vs_naive,precision,prefix")
    parser.add_argument("--audit-only", action="store_true", help="= --blocks audit")
    parser.add_argument("--fast", default="{}",
                        help="audit settings of the fast run (JSON); default {}: the audit's defaults (precision auto)")
    parser.add_argument("--device", default="cpu", help="where vs_naive, precision and prefix run: cpu, cuda or "
                        "cuda:N (the audit block follows the audit's own device setting, auto)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speed.json"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    ds = load_preferences(DATA / "hh-rlhf")
    rng = np.random.default_rng(0)
    pairs = [ds.pairs[i] for i in sorted(rng.choice(len(ds.pairs), args.pairs, replace=False))]
    result: dict = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                                "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
                                "cpu_has_bf16": cpu_has_bf16(), "bf16_matmul_speedup": cpu_bf16_speedup(),
                                "torch": torch.__version__,
                                "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}}
    path = Path(args.out)

    def save():
        write_result(path, result)

    blocks = ["audit"] if args.audit_only else args.blocks.split(",")
    if args.skip_audit:
        blocks = [b for b in blocks if b != "audit"]
    # Blocks not run this time keep their last measurement in the file.
    result = {**(json.loads(path.read_text()) if path.exists() else {}), **result}
    if set(blocks) - {"audit"}:
        result["matmul_gflops"] = matmul_gflops()
    if "vs_naive" in blocks:
        # The headline is at MiniLM's whole context (512 tokens), what transformers' `truncation=True` gives a
        # naive loop; shorter caps leave less padding to save (work_ratio), so the gain shrinks with them.
        result["vs_naive_by_max_length"] = {str(n): vs_naive(pairs, n, device) for n in (128, 256, 512)}
        result["vs_naive"] = result["vs_naive_by_max_length"]["512"]
        save()
    if "precision" in blocks:
        result["precision"] = precision_block(pairs, 128, device)
        save()
    if "prefix" in blocks:
        result["prefix"] = prefix_block(pairs[: args.prefix_pairs], 1024, device)
        save()
    if "audit" in blocks:
        result["audit"] = audit_block(json.loads(args.fast))
        result["audit"]["date"] = time.strftime("%Y-%m-%d")
        save()
    print(json.dumps({k: result[k] for k in blocks if k in result}, indent=1, default=float))


if __name__ == "__main__":
    main()
