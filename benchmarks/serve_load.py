"""Load test of ``rmkit serve`` on loopback: N concurrent clients for S seconds against /get_reward.

Each client sends requests of ``--texts`` real hh-rlhf dialogues (rendered as the RM reads them) one
after another over its own keep-alive connection; every reply is checked against in-process scoring
of the same texts. Reports requests, errors (non-200 or wrong rewards), requests/s, texts/s and
latency percentiles.

    .venv/bin/python benchmarks/serve_load.py --model /path/to/saved/rm [--clients 8] [--seconds 20]

Writes benchmarks/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from pathlib import Path

import numpy as np
import torch

from rmkit.provenance import write_result
from rmkit.data import load_preferences
from rmkit.serve import RewardServer, ServeConfig, load_model_for_serving

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--texts", type=int, default=4, help="texts per request")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_load.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)

    cfg = ServeConfig(model=args.model, port=0, max_length=args.max_length)
    model = load_model_for_serving(cfg)
    pairs = load_preferences(args.data, limit=64).pairs
    texts = [model.render(p.prompt, p.chosen) for p in pairs]
    payloads = [texts[i: i + args.texts] for i in range(0, len(texts) - args.texts + 1, args.texts)]
    expected = {}
    for q in payloads:
        ids = model.tokenizer(q, add_special_tokens=not model.use_chat_template, truncation=True,
                              max_length=model.max_length)["input_ids"]
        with torch.inference_mode():
            expected[tuple(q)] = [model(**model.collate([x], model.device)).rewards.item() for x in ids]

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    with RewardServer(model, cfg) as srv:
        host, port = srv.httpd.server_address[:2]
        stop = time.monotonic() + args.seconds

        def client(k: int) -> None:
            conn = http.client.HTTPConnection(host, port, timeout=60)
            i = k
            while time.monotonic() < stop:
                q = payloads[i % len(payloads)]
                i += args.clients
                t = time.perf_counter()
                try:
                    conn.request("POST", "/get_reward", body=json.dumps({"query": q}),
                                 headers={"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    body = json.loads(resp.read())
                    dt = time.perf_counter() - t
                    ok = resp.status == 200 and np.allclose(body["rewards"], expected[tuple(q)], atol=1e-3)
                    with lock:
                        latencies.append(dt) if ok else errors.append(f"{resp.status}: {str(body)[:100]}")
                except Exception as e:  # noqa: BLE001 - counted as an error, the client reconnects
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                    conn = http.client.HTTPConnection(host, port, timeout=60)

        t0 = time.monotonic()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        batches = srv.service.batcher.batches
    n = len(latencies) + len(errors)
    lat = np.array(latencies) * 1000
    result = {"requests": n, "errors": len(errors), "rps": n / wall, "texts_per_s": len(latencies) * args.texts / wall,
              "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
              "p99_ms": float(np.percentile(lat, 99)), "clients": args.clients, "seconds": wall,
              "texts_per_request": args.texts, "forward_passes": batches, "model": args.model,
              "max_length": args.max_length, "error_examples": errors[:5],
              "device": "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"}
    write_result(Path(args.out), result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
