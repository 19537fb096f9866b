"""The LLM judge: the verdict parser, faults from a misbehaving server, and a real llama.cpp server."""

import json
import math
import os

import numpy as np
import pytest

from rmkit.data import load_preferences
from rmkit.judge import (JudgeConfig, agreement_by_strength, compare_policies, judge_pairs, parse_verdict,
                         wilson_interval, win_tie_lose)
from rmkit.testing import FaultServer


@pytest.mark.parametrize("reply,verdict", [
    ("[[A]]", "A"), ("After weighing both, Response B is more helpful. [[B]]", "B"), ("[[ c ]]", "C"),
    ("First I thought [[A]] but on reflection [[B]]", "B"), ("B", "B"), ("(A)", "A"), ("**B**", "B"), ("C.", "C"),
    ("Verdict: A", "A"), ("Final answer: **Response B**", "B"), ("My choice is [A]", "A"),
    ("Assistant A is better because it answers the question.", "A"), ("Both are equally good.", "C"),
    ("It's a tie", "C"), ("I cannot decide.", None), ("", None), (None, None),
    ("Response A is better for tone but Response B is better for accuracy.", None),
    # issue 41, item 3: doubt is no verdict; the final verdict counts, not an instruction quoted back
    ("Answer: A is worse than B.", None), ("Response A is not better; B is.", None), ("It is not a tie, A wins", None),
    ("Hard to say. End with [[A]], [[B]] or [[C]]", None), ("End with [[A]], [[B]] or [[C]] (tie). I pick [[B]]", "B"),
])
def test_parse_verdict_accepts_the_forms_models_give(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_wilson_and_win_tie_lose_by_hand():
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    out = win_tie_lose([1.0, 1.0, 0.5, 0.0, math.nan])
    assert (out["judged"], out["win"], out["tie"], out["lose"]) == (4, 2, 1, 1)
    assert out["win_rate"] == 0.5 and out["net_win_rate"] == 0.25


def test_agreement_by_strength_compares_extremes():
    mean = np.arange(20, dtype=float)
    judge = np.array([0.0] * 5 + [1.0] * 15)
    judge[7] = 0.5  # ties leave the count
    out = agreement_by_strength(mean, judge, n=5)
    assert out["agreement_weakest"] == 0.0 and out["agreement_strongest"] == 1.0 and out["judged_pairs"] == 19


def _items(markers):
    recs = [{"prompt": f"item-{i} {m} question?", "chosen": f"good answer {i}", "rejected": f"bad answer {i}"}
            for i, m in enumerate(markers)]
    return load_preferences(recs).pairs


def test_faults_retries_statuses_cache_and_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-must-not-leak")
    server = FaultServer(slow_seconds=2.0)
    markers = ["FAULT429x2", "FAULT500x1", "ALWAYS500", "SLOW", "GARBAGE", "GARBAGEx1", "RAMBLE", "plain"]
    pairs = _items(markers)
    cfg = JudgeConfig(judge_model="fake", max_retries=2, backoff_base=0.01, backoff_max=0.05, timeout=0.5, concurrency=4,
                      cache_dir=str(tmp_path / "cache"))
    try:
        table = judge_pairs(pairs, cfg, output=tmp_path / "run1.jsonl", base_url=server.url, progress=False)
        by = {m: row for m, row in zip(markers, table.to_dict("records"))}
        assert len(table) == len(pairs) and list(table["id"]) == [p.id for p in pairs]  # nothing lost
        assert by["FAULT429x2"]["status"] == "ok" and by["FAULT429x2"]["attempts"] == 3
        assert by["FAULT500x1"]["status"] == "ok" and by["FAULT500x1"]["attempts"] == 2
        assert by["GARBAGEx1"]["status"] == "ok" and by["GARBAGEx1"]["attempts"] == 2
        for m in ("ALWAYS500", "SLOW", "GARBAGE"):
            assert by[m]["status"] == "failed" and by[m]["attempts"] == 3, m
            assert math.isnan(by[m]["judge_label"])
        assert "InternalServerError" in by["ALWAYS500"]["error"] and "Timeout" in by["SLOW"]["error"]
        assert by["RAMBLE"]["status"] == "unparseable"
        # The verdict [[A]] maps back through the per-item order to the pair's chosen (1) or rejected (0) side.
        for m in ("FAULT429x2", "plain"):
            assert by[m]["judge_label"] == (0.0 if by[m]["swapped"] else 1.0)
        assert table["swapped"].any() and not table["swapped"].all()  # orders are mixed

        before = server.counts.copy()
        # A rerun into the same file resumes: finished items are skipped, failed ones are tried again.
        again = judge_pairs(pairs, cfg, output=tmp_path / "run1.jsonl", base_url=server.url, progress=False)
        assert list(again["status"]) == list(table["status"])
        asked = {k for k in server.counts if server.counts[k] != before[k]}
        assert asked == {f"item-{markers.index(m)}" for m in ("ALWAYS500", "SLOW", "GARBAGE")}
        # A fresh run (new output) answers every finished item from the cache: no request reaches the server.
        before = server.counts.copy()
        fresh = judge_pairs(pairs, cfg, output=tmp_path / "run2.jsonl", base_url=server.url, progress=False)
        ok = fresh["status"].isin(["ok", "unparseable"])
        assert fresh.loc[ok, "cached"].tolist() == [1] * int(ok.sum())
        assert all(server.counts[f"item-{i}"] == before[f"item-{i}"] for i in np.flatnonzero(ok))
    finally:
        server.close()
    written = "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    assert "sk-test-must-not-leak" not in written


def test_cache_keyed_by_endpoint_and_cut_replies_not_cached(tmp_path, monkeypatch):
    """An answer cached from one server under a model name is never served for another endpoint; a reply cut
    by the token limit is used but not cached as final."""
    from rmkit.judge import JudgeClient

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-must-not-leak")
    one, two = FaultServer(), FaultServer()
    cfg = JudgeConfig(judge_model="gpt-4o", cache_dir=str(tmp_path / "cache"), max_retries=0)
    msgs = [{"role": "user", "content": "item-1 which is better?"}]
    cut = [{"role": "user", "content": "item-2 CUT which is better?"}]
    try:
        assert not JudgeClient(cfg, base_url=one.url).complete(msgs).cached
        assert JudgeClient(cfg, base_url=one.url).complete(msgs).cached
        assert not JudgeClient(cfg, base_url=two.url).complete(msgs).cached  # another endpoint: asked again
        assert two.counts["item-1"] == 1
        for _ in range(2):
            reply = JudgeClient(cfg, base_url=one.url).complete(cut)
            assert reply.text and not reply.cached
        assert one.counts["item-2"] == 2
    finally:
        one.close()
        two.close()


def test_retry_after_cut_resume_and_huge_replies(tmp_path, monkeypatch):
    import rmkit.judge as judge

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-must-not-leak")
    waits = []
    monkeypatch.setattr(judge.time, "sleep", lambda s: waits.append(s))
    server = FaultServer()
    pairs = _items(["RETRYAFTERx1", "HUGE", "plain"])
    cfg = JudgeConfig(judge_model="fake", max_retries=2, backoff_base=0.01, backoff_max=0.05, max_retry_after=5.0,
                      cache_dir=str(tmp_path / "cache"), concurrency=1, max_reply_chars=1000)
    out = tmp_path / "run.jsonl"
    try:
        table = judge_pairs(pairs, cfg, output=out, base_url=server.url, progress=False)
        assert waits == [5.0]  # Retry-After: 7, bounded by max_retry_after, not the 0.01 s backoff
        by = dict(zip(["RETRYAFTERx1", "HUGE", "plain"], table.to_dict("records")))
        assert by["RETRYAFTERx1"]["status"] == "ok" and by["RETRYAFTERx1"]["attempts"] == 2
        assert by["HUGE"]["status"] == "truncated" and len(by["HUGE"]["verdicts"][0]) == 1000
        # A kill mid-write leaves a cut last line: skipped with a warning, that item judged again.
        lines = out.read_text().splitlines()
        out.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
        before = server.counts.copy()
        with pytest.warns(UserWarning, match="unfinished record"):
            again = judge_pairs(pairs, cfg, output=out, base_url=server.url, progress=False)
        assert len(again) == 3 and set(again["status"]) <= {"ok", "truncated"}
        assert sum(server.counts[k] - before[k] for k in server.counts) <= 1
        # the cut line is gone and the new record has a line of its own: the file reads whole
        assert sorted(json.loads(x)["id"] for x in out.read_text().splitlines()) == sorted(again["id"])
    finally:
        server.close()


def test_bad_replies_are_never_decisions_nor_cached(tmp_path, monkeypatch):
    """Issue 41, items 3 and 9: content that is not a verdict (a number, empty, null, a flood) fails and is never
    cached; a doubtful or quoted verdict and a reply whose final verdict lies past the cut decide nothing; text parts
    are joined."""
    import rmkit.judge as judge

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setattr(judge.time, "sleep", lambda s: None)
    server = FaultServer()
    markers = ["LISTCONTENT", "INTCONTENT", "EMPTYCONTENT", "NULLCONTENT", "WORSE", "ECHO", "LATEVERDICT", "FLOOD"]
    pairs = _items(markers)
    cfg = JudgeConfig(judge_model="fake", max_retries=1, cache_dir=str(tmp_path / "cache"), max_reply_chars=1000)
    try:
        table = judge_pairs(pairs, cfg, output=tmp_path / "run.jsonl", base_url=server.url, progress=False)
        by = dict(zip(markers, table.to_dict("records")))
        assert by["LISTCONTENT"]["status"] == "ok" and by["LISTCONTENT"]["judge_label"] in (0.0, 1.0)
        for m in ("INTCONTENT", "EMPTYCONTENT", "NULLCONTENT"):
            assert by[m]["status"] == "failed" and by[m]["attempts"] == 2, m  # retried, then failed
        assert "not text" in by["INTCONTENT"]["error"] and "empty" in by["EMPTYCONTENT"]["error"]
        assert by["FLOOD"]["status"] == "failed" and by["FLOOD"]["attempts"] == 1  # not asked for a second flood
        assert "ReplyTooLarge" in by["FLOOD"]["error"] or "not read further" in by["FLOOD"]["error"]
        assert by["WORSE"]["status"] == "unparseable" and by["ECHO"]["status"] == "unparseable"
        assert by["LATEVERDICT"]["status"] == "truncated"
        for m in markers[1:]:
            assert math.isnan(by[m]["judge_label"]), m
        cached = [json.loads(p.read_text())["text"] for p in (tmp_path / "cache").rglob("*.json")]
        assert all(isinstance(t, str) and t.strip() for t in cached)  # no empty, null or number cached
        # A rerun asks the failed ones again (nothing bad came back from the cache)
        before = server.counts.copy()
        judge_pairs(pairs, cfg, output=tmp_path / "run2.jsonl", base_url=server.url, progress=False)
        for i, m in enumerate(markers):
            if by[m]["status"] == "failed":
                assert server.counts[f"item-{i}"] > before[f"item-{i}"], m
    finally:
        server.close()


def test_judge_run_fails_loudly_when_most_items_get_no_verdict(tmp_path, monkeypatch, capsys):
    """Issue 46, item 4: a run where most items failed writes its tables and exits 1, saying why and what to change."""
    from rmkit.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    server = FaultServer()
    recs = [{"id": f"r{i}", "prompt": f"item-{i} {m} q?", "chosen": "a", "rejected": "b"}
            for i, m in enumerate(["RAMBLE", "RAMBLE", "plain"])]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    args = ["judge", str(data), "--judge-model", "fake", "--base-url", server.url, "--cache-dir", str(tmp_path / "c"),
            "--output-dir", str(tmp_path / "out")]
    try:
        assert main(args) == 1
        err = capsys.readouterr().err
        assert "2 of 3 items got no verdict" in err and "--max-tokens" in err
        assert len(__import__("pandas").read_parquet(tmp_path / "out" / "judge_labels.parquet")) == 3
        assert main([*args, "--max-failed-share", "0.7"]) == 0
    finally:
        server.close()


def test_secrets_redacted_from_errors():
    from rmkit.judge import redact

    text = "Error 401: Incorrect API key provided: sk-proj-abcdef123456. headers={'Authorization': 'Bearer sk-x1y2z3w4v5'}"
    out = redact(text, "sk-proj-abcdef123456")
    assert "abcdef123456" not in out and "sk-x1y2z3w4v5" not in out and "Incorrect API key provided: [redacted]" in out
    assert redact("Authorization: Bearer my-local-token here", None) == "Authorization: Bearer [redacted] here"


def test_missing_key_for_openai_is_a_clear_error(monkeypatch, tmp_path):
    from rmkit.judge import JudgeClient

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValueError, match=r"\$OPENAI_API_KEY"):
        JudgeClient(JudgeConfig(cache_dir=str(tmp_path)))


@pytest.fixture(scope="module")
def llama_server():
    from rmkit.judge import LocalServer

    server = LocalServer("smollm2", n_ctx=4096, threads=2, parallel=2)
    yield server
    server.close()


def test_real_llama_cpp_server_with_the_openai_client(llama_server, shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-must-not-leak")
    assert llama_server.url.startswith("http://127.0.0.1:")
    pairs = load_preferences(shared_data / "hh-rlhf" / "helpful-base" / "test.jsonl.gz", limit=4).pairs
    cfg = JudgeConfig(judge_model="smollm2", max_tokens=24, max_chars=400, concurrency=2, cache_dir=str(tmp_path / "c"),
                      both_orders=True)
    table = judge_pairs(pairs, cfg, output=tmp_path / "j.jsonl", base_url=llama_server.url, progress=False)
    assert len(table) == 4 and set(table["status"]) <= {"ok", "unparseable", "failed"}
    assert (table["status"] != "failed").all()  # a live local server answers every request
    assert (table["prompt_tokens"] > 0).all() and (table["completion_tokens"] > 0).all()
    assert all(len(v) == 2 for v in table["verdicts"])  # both orders asked
    ok = table["status"] == "ok"
    assert table.loc[ok, "judge_label"].isin([0.0, 0.5, 1.0]).all()  # averaged over two orders
    res = compare_policies([p.prompt for p in pairs[:3]], [p.chosen for p in pairs[:3]], [p.rejected for p in pairs[:3]],
                           cfg, output=tmp_path / "cmp.jsonl", base_url=llama_server.url, progress=False)
    assert res["win"] + res["tie"] + res["lose"] == res["judged"] == res["status"]["ok"]
    assert res["items"] == 3 and res["prompt_tokens"] > 0
    assert "sk-test-must-not-leak" not in (tmp_path / "j.jsonl").read_text() + json.dumps(res)


def test_cli_judge_with_local_server(shared_data, tmp_path, monkeypatch, capfd):
    from rmkit.cli import main

    monkeypatch.setenv("RMKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = tmp_path / "judge"
    args = ["judge", str(shared_data / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"), "--local-model", "smollm2",
            "--judge-model", "smollm2", "--max-pairs", "3", "--max-tokens", "16", "--max-chars", "300",
            "--output-dir", str(out)]
    args += ["--max-failed-share", "1"]  # a 135M judge with 16 tokens gives few verdicts
    assert main(args) == 0
    assert "slot" not in capfd.readouterr().err  # llama.cpp's per-request log stays off the terminal
    assert main([*args, "--max-chars", "200"]) == 2  # verdicts on other prompts would mix with the held ones
    labels = __import__("pandas").read_parquet(out / "judge_labels.parquet")
    assert len(labels) == 3 and {"id", "judge_label", "status"} <= set(labels.columns)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["items"] == 3 and sum(summary["status"].values()) == 3
    assert "api_key" not in (out / "config.yaml").read_text().replace("api_key_env", "")
    assert os.environ.get("OPENAI_API_KEY") is None
    # The audit's review export as the ids to judge (its id column; the rest of the table is ignored): those pairs
    # alone, in its order. The same requests as above, so the cache answers them.
    wanted = labels["id"].tolist()[::-2]
    pd = __import__("pandas")
    pd.DataFrame({"id": wanted, "p_label_wrong": [0.9, 0.8], "review": ""}).to_csv(tmp_path / "flagged.csv", index=False)
    assert main([*args, "--ids", str(tmp_path / "flagged.csv"), "--output-dir", str(tmp_path / "judge_ids")]) == 0
    assert pd.read_parquet(tmp_path / "judge_ids" / "judge_labels.parquet")["id"].tolist() == wanted
