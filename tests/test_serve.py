"""The reward-model server: rewards equal in-process scoring, bad requests get 4xx, concurrent load is batched."""

import json
import threading
import urllib.error
import urllib.request

import pytest
import torch

from rmkit.models import RewardModel
from rmkit.serve import RewardFunction, RewardServer, ServeConfig


def post(url, body, raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def served(tiny_llama):
    rm = RewardModel.from_pretrained(tiny_llama, max_length=64).eval()
    # fp32, the precision of the in-process scoring the tests compare with (auto is bf16 on a CPU with fast bf16)
    with RewardServer(rm, ServeConfig(port=0, max_request_texts=8, max_body_bytes=20_000, precision="fp32")) as srv:
        yield rm, srv


PROMPTS = ["How do I boil an egg?", "What is 2+2?", "Tell me a joke."]
ANSWERS = ["Put it in boiling water for nine minutes.", "4", "Why did the chicken cross the road?"]


def test_rewards_equal_in_process_scoring(served):
    rm, srv = served
    assert srv.url.startswith("http://127.0.0.1:")
    msgs_p = [[{"role": "user", "content": p}] for p in PROMPTS]
    msgs_a = [[{"role": "assistant", "content": a}] for a in ANSWERS]
    expected = rm.score(msgs_p, msgs_a)
    status, out = post(srv.url + "/score", {"prompts": PROMPTS, "completions": ANSWERS})
    assert status == 200
    torch.testing.assert_close(torch.tensor(out["rewards"]), expected, atol=1e-4, rtol=0)
    # OpenRLHF's API: whole texts (here rendered by the RM's own template) -> the same rewards.
    texts = [rm.render(p, a) for p, a in zip(msgs_p, msgs_a)]
    status, out = post(srv.url + "/get_reward", {"query": texts, "prompts": PROMPTS})
    assert status == 200
    torch.testing.assert_close(torch.tensor(out["rewards"]), expected, atol=1e-4, rtol=0)
    status, out = post(srv.url + "/score_pairs", {"pairs": [{"prompt": PROMPTS[0], "chosen": ANSWERS[0],
                                                             "rejected": ANSWERS[1]}]})
    r = out["results"][0]
    assert status == 200 and r["diff"] == pytest.approx(r["chosen_reward"] - r["rejected_reward"])
    assert r["chosen_reward"] == pytest.approx(expected[0].item(), abs=1e-4)
    # TRL's reward-function interface, local and through the server, gives the same numbers.
    local = RewardFunction(rm)(PROMPTS, ANSWERS)
    remote = RewardFunction(url=srv.url)(msgs_p, msgs_a)
    assert local == pytest.approx(expected.tolist(), abs=1e-4) and remote == pytest.approx(local, abs=1e-4)


@pytest.mark.parametrize("path,body,raw,code,message", [
    ("/get_reward", None, b"{not json", 400, "not valid JSON"),
    ("/get_reward", [1, 2], None, 400, "JSON object"),
    ("/get_reward", {"texts": ["a"]}, None, 400, "missing field 'query'"),
    ("/get_reward", {"query": "a"}, None, 400, "must be a list"),
    ("/get_reward", {"query": ["ok", 3]}, None, 400, r"query\[1\] must be a string"),
    ("/get_reward", {"query": ["a"] * 9}, None, 413, "at most 8"),
    ("/get_reward", {"query": ["a" * 30_000]}, None, 413, "bytes"),
    ("/score", {"prompts": ["a"], "completions": []}, None, 400, "differ in length"),
    ("/score", {"prompts": [{"role": "user"}], "completions": ["b"]}, None, 400, r"prompts\[0\]"),
    ("/score_pairs", {"pairs": [{"prompt": "a", "chosen": "b"}]}, None, 400, "missing 'rejected'"),
    ("/nope", {}, None, 404, "no endpoint"),
])
def test_bad_requests_get_4xx_and_the_server_lives_on(served, path, body, raw, code, message):
    _, srv = served
    status, out = post(srv.url + path, body, raw)
    assert status == code and __import__("re").search(message, out["error"]), out
    with urllib.request.urlopen(srv.url + "/health", timeout=10) as r:
        assert json.loads(r.read())["status"] == "ok"


def test_get_on_a_post_endpoint_is_405(served):
    _, srv = served
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(srv.url + "/get_reward", timeout=10)
    assert e.value.code == 405


def test_concurrent_clients_are_batched_and_all_answered(served):
    rm, srv = served
    texts = [rm.render([{"role": "user", "content": p}], [{"role": "assistant", "content": a}])
             for p, a in zip(PROMPTS, ANSWERS)]
    _, ref = post(srv.url + "/get_reward", {"query": texts})
    before = srv.service.batcher.batches
    results, errors = [], []

    def client(k):
        for _ in range(5):
            status, out = post(srv.url + "/get_reward", {"query": texts})
            (results if status == 200 else errors).append(out)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 40
    assert all(r["rewards"] == pytest.approx(ref["rewards"], abs=1e-4) for r in results)
    # 40 requests of 3 texts: fewer forward passes than requests means requests shared batches.
    assert srv.service.batcher.batches - before < 40


def _raw(srv, request: bytes, timeout: float = 10.0) -> bytes:
    import socket
    from urllib.parse import urlparse

    u = urlparse(srv.url)
    with socket.create_connection((u.hostname, u.port), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        try:
            while True:
                c = s.recv(65536)
                if not c:
                    break
                chunks.append(c)
                if b"\r\n\r\n" in b"".join(chunks) and b"}" in c:
                    break
        except socket.timeout:
            pass
    return b"".join(chunks)


def test_malformed_requests_get_4xx_and_the_server_keeps_serving(served):
    _, srv = served
    deep = b'{"query": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    probes = {
        "lone surrogate": b'{"query": ["\\ud800 hi"]}',
        "deep nesting": deep[:19_000],  # cut: still within the body limit, not JSON
        "not json": b"<html>",
        "array body": b"[1, 2]",
        "bad utf-8": b'{"query": ["\xff\xfe"]}',
    }
    for name, body in probes.items():
        status, out = post(srv.url + "/get_reward", None, raw=body)
        assert 400 <= status < 500, (name, status, out)
    status, _ = post(srv.url + "/get_reward", None, raw=b'{"query": ' + b"[" * 5000 + b"]" * 5000 + b"}")
    assert status == 400  # nested deeper than the parser goes
    for header, want in ((b"Content-Length: abc", b"400"), (b"Content-Length: -1", b"400")):
        reply = _raw(srv, b"POST /get_reward HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n\r\n{}")
        assert reply.split(b" ")[1] == want, reply[:200]
    # A body shorter than its Content-Length: answered when the socket times out or closes, never hangs forever.
    status, out = post(srv.url + "/score", {"prompts": ["hi"], "completions": ["hello"]})
    assert status == 200 and len(out["rewards"]) == 1


def test_slow_clients_cannot_stall_real_requests(tiny_llama):
    """Issue 41, item 8: 32 connections sending one header line every 5 s stalled every real request and /health (the
    timeout was per read, not per request). Requests are now read whole on an event loop before a thread sees them:
    64 trickling clients hold sockets, no threads, and a real request is answered at once; a trickler is cut off at
    request_timeout; connections past max_connections get 503 at once."""
    import socket
    import time
    from urllib.parse import urlparse

    rm = RewardModel.from_pretrained(tiny_llama, max_length=32).eval()
    before = threading.active_count()
    cfg = ServeConfig(port=0, request_timeout=3.0, max_connections=80, precision="fp32")
    with RewardServer(rm, cfg) as srv:
        u = urlparse(srv.url)
        slow = [socket.create_connection((u.hostname, u.port)) for _ in range(64)]
        stop = threading.Event()

        def trickle():
            k = 0
            while not stop.is_set():
                for s in slow:
                    try:
                        s.sendall(b"POST /score HTTP/1.1\r\n" if k == 0 else f"X-Slow-{k}: 1\r\n".encode())
                    except OSError:
                        pass
                k += 1
                stop.wait(0.5)

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        time.sleep(1.0)
        t0 = time.time()
        status, out = post(srv.url + "/score", {"prompts": ["hi"], "completions": ["hello"]})
        took = time.time() - t0
        assert status == 200 and took < 2.0, took
        with urllib.request.urlopen(srv.url + "/health", timeout=5) as r:
            assert json.loads(r.read()) == {"status": "ok"}  # says nothing about the model or its load
        assert threading.active_count() - before <= cfg.max_inflight + 3  # workers, batcher, event loop
        # past request_timeout the tricklers are answered 408 and closed
        time.sleep(cfg.request_timeout + 0.5)
        slow[0].settimeout(2)
        assert slow[0].recv(100).startswith(b"HTTP/1.1 408")
        stop.set()
        t.join()
        for s in slow:
            s.close()
        # connections beyond max_connections: 503 at once, not a wait
        held = [socket.create_connection((u.hostname, u.port)) for _ in range(cfg.max_connections)]
        time.sleep(0.3)
        extra = socket.create_connection((u.hostname, u.port), timeout=5)
        assert extra.recv(100).startswith(b"HTTP/1.1 503")
        for s in [*held, extra]:
            s.close()


def test_oversized_heads_and_bodies_are_refused_before_they_are_read(served):
    _, srv = served
    reply = _raw(srv, b"POST /score HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 431"), reply[:100]
    reply = _raw(srv, b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 413"), reply[:100]
    reply = _raw(srv, b"POST /score HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 411"), reply[:100]


def test_bearer_token(tiny_llama, monkeypatch):
    monkeypatch.setenv("RMKIT_TEST_TOKEN", "s3cret-token")
    rm = RewardModel.from_pretrained(tiny_llama, max_length=32).eval()
    with RewardServer(rm, ServeConfig(port=0, api_key_env="RMKIT_TEST_TOKEN")) as srv:
        status, out = post(srv.url + "/score", {"prompts": ["hi"], "completions": ["hello"]})
        assert status == 401 and "token" in out["error"]
        ok = RewardFunction(url=srv.url, api_key_env="RMKIT_TEST_TOKEN")(["hi"], ["hello"])
        assert len(ok) == 1
        with urllib.request.urlopen(srv.url + "/health", timeout=10) as r:  # health stays open for probes
            assert r.status == 200
        lower = urllib.request.Request(srv.url + "/score", method="POST", data=json.dumps(
            {"prompts": ["hi"], "completions": ["hello"]}).encode(), headers={"Authorization": "bearer s3cret-token"})
        with urllib.request.urlopen(lower, timeout=10) as r:  # the scheme is case-insensitive (RFC 7235)
            assert r.status == 200
        # RewardFunction takes the server's root or OpenRLHF's /get_reward address alike
        assert RewardFunction(url=srv.url + "/get_reward", api_key_env="RMKIT_TEST_TOKEN")(["hi"], ["hello"]) == \
            pytest.approx(ok)
        with pytest.raises(ValueError, match=r"\$RMKIT_UNSET_TOKEN, which is not set"):
            RewardFunction(url=srv.url, api_key_env="RMKIT_UNSET_TOKEN")(["hi"], ["hello"])
        with pytest.raises(RuntimeError, match="answered 401"):
            RewardFunction(url=srv.url)(["hi"], ["hello"])
    monkeypatch.delenv("RMKIT_TEST_TOKEN")
    with pytest.raises(ValueError, match="RMKIT_TEST_TOKEN"):
        ServeConfig(api_key_env="RMKIT_TEST_TOKEN").check()
    monkeypatch.setenv("RMKIT_TEST_TOKEN", "sécret")
    with pytest.raises(ValueError, match="non-ASCII"):
        ServeConfig(api_key_env="RMKIT_TEST_TOKEN").check()
