"""Attack rmkit as a careless or hostile user would, and count what happens to each attack.

Families: data rows, review tables, the judge's verdict parser, a misbehaving judge endpoint, configs, outputs
(atomic writes, spreadsheet injection, output folders), stale work (resume and reuse after the data or settings
changed), model folders, the reward-model server, and clear errors for common mistakes. Every case of issue 41 is
one of them. Each attack ends as one of

- ``correct``: the result is what it should be (the right statuses, decisions, numbers, or a refusal where one is due);
- ``clear_error``: a DataError / ValueError / FileNotFoundError (or a JobFailed) whose message names the thing;
- ``silent_wrong``: a result that is wrong without a word (the failure that matters most);
- ``crash``: any other exception (a traceback);
- ``hang``: no answer within the attack's time limit.

    .venv/bin/python benchmarks/attacks.py            # ~3 minutes on 2 cores; writes benchmarks/results/attacks.json

The server probes also record their measured bounds (a real request's latency while 64 clients trickle headers;
the process's peak RSS while the largest allowed bodies arrive).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import resource
import shutil
import socket
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from rmkit.assets import tiny_model
from rmkit.config import JobFailed, load_config
from rmkit.data import DataError, load_preferences, read_table
from rmkit.files import write_table
from rmkit.provenance import write_result

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CLEAR = (DataError, ValueError, FileNotFoundError, JobFailed)


class Attacks:
    """Runs attacks and keeps their outcomes."""

    def __init__(self, work: Path):
        self.work = work
        self.cases: list[dict] = []
        self.measured: dict = {}

    def run(self, family: str, name: str, fn, *, timeout: float = 120.0, names: str | None = None) -> str:
        """``fn()`` returns True (correct) or False (silent_wrong), or raises. ``names``: text a clear error must hold
        (e.g. the file or field); an error without it is a crash."""
        box: dict = {}

        def call():
            try:
                box["ok"] = bool(fn())
            except CLEAR as e:
                box["error"] = e
            except BaseException as e:  # noqa: BLE001 - a crash is an outcome here
                box["crash"] = e
                box["tb"] = traceback.format_exc(limit=3)

        t = threading.Thread(target=call, daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            outcome, detail = "hang", f"no answer in {timeout:g} s"
        elif "crash" in box:
            outcome, detail = "crash", f"{type(box['crash']).__name__}: {box['crash']}"[:300]
        elif "error" in box:
            msg = str(box["error"])
            good = bool(msg.strip()) and (names is None or names in msg)
            outcome, detail = ("clear_error" if good else "crash"), msg[:300]
        else:
            outcome, detail = ("correct" if box["ok"] else "silent_wrong"), ""
        self.cases.append({"family": family, "name": name, "outcome": outcome, "detail": detail})
        return outcome

    def expect_error(self, family: str, name: str, fn, names: str, **kw) -> str:
        """An attack that must be refused: returning normally is silent_wrong."""
        return self.run(family, name, lambda: fn() and False, names=names, **kw)

    def summary(self) -> dict:
        families: dict = {}
        for c in self.cases:
            f = families.setdefault(c["family"], Counter())
            f["tried"] += 1
            f[c["outcome"]] += 1
        outcomes = ("correct", "clear_error", "silent_wrong", "crash", "hang")
        totals = {o: sum(f[o] for f in families.values()) for o in outcomes}
        return {"attacks": len(self.cases), "totals": totals,
                "families": {k: {"tried": v["tried"], **{o: v[o] for o in outcomes}} for k, v in families.items()},
                "goal_met": totals["silent_wrong"] == totals["crash"] == totals["hang"] == 0 and len(self.cases) >= 200}


# ----------------------------------------------------------------------------------------------------------------
# Data rows


def data_rows(a: Attacks) -> None:
    base = {"prompt": "q", "chosen": "a", "rejected": "b"}
    cases = [("label", float("nan"), "bad_value"), ("label", float("inf"), "bad_value"),
             ("label", -float("inf"), "bad_value"), ("label", 2.0, "bad_value"), ("label", -1.0, "bad_value"),
             ("label", 1.0000001, "bad_value"), ("label", "x", "bad_type"), ("label", True, "bad_type"),
             ("label", [1], "bad_type"), ("label", {"a": 1}, "bad_type"), ("label", None, "ok"), ("label", 0, "ok"),
             ("label", 1, "ok"), ("label", 0.5, "ok"), ("label", "0.25", "ok"),
             ("weight", -5, "bad_value"), ("weight", float("inf"), "bad_value"), ("weight", float("nan"), "ok"),
             ("weight", "3", "ok"), ("weight", "abc", "bad_type"), ("weight", True, "bad_type"), ("weight", 0, "ok"),
             ("margin", float("inf"), "bad_value"), ("margin", -float("inf"), "bad_value"),
             ("margin", float("nan"), "ok"), ("margin", "x", "bad_type"), ("margin", 5, "ok"), ("margin", -5, "ok"),
             ("original_label", 1.5, "bad_value"), ("original_label", -0.1, "bad_value"),
             ("original_label", float("nan"), "ok"), ("original_label", 0, "ok")]
    for field, value, status in cases:
        def check(field=field, value=value, status=status):
            row = load_preferences([{**base, field: value}]).rows[0]
            return row.status == status and (status == "ok" or field in row.detail)
        a.run("data_rows", f"{field}={value!r}", check)
    structural = [({"prompt": "q", "chosen": "a"}, "missing_field"), ({**base, "chosen": "  "}, "empty_response"),
                  ({**base, "rejected": "a"}, "identical"), ({**base, "chosen": [{"x": 1}]}, "bad_type"),
                  ({**base, "prompt": 7}, "bad_type"),
                  ({"chosen": "no turns", "rejected": "none"}, "unparseable_transcript"),
                  ({"query": "q", "response1": "a", "response2": "b", "human": "maybe"}, "bad_type"),
                  ({"query": "q", "response1": "a", "response2": "b", "human": "TIE"}, "tie")]
    for k, (rec, status) in enumerate(structural):
        a.run("data_rows", f"structure {k} -> {status}",
              lambda rec=rec, status=status: load_preferences([rec]).rows[0].status == status)
    # a pairwise winner column named `label`: orients the pair, is no probability label
    for winner in (1, 2, "1", "2", "model1"):
        def check(winner=winner):
            rec = {"query": "q", "response1": "one", "response2": "two", "label": winner}
            p = load_preferences([rec], winner_key="label").pairs[0]
            return p.label == 1.0 and p.chosen[0]["content"] == ("two" if str(winner) == "2" else "one")
        a.run("data_rows", f"winner_key=label, label={winner!r}", check)
    a.expect_error("data_rows", "strict mode names file, row and field",
                   lambda: load_preferences([base, {**base, "label": 3}], strict=True), names="row 1")


# ----------------------------------------------------------------------------------------------------------------
# Review tables


def review_tables(a: Attacks) -> None:
    from rmkit.reviews import read_review_table, read_reviews

    d = a.work / "reviews"
    d.mkdir()

    def csv(name: str, text: str, encoding: str = "utf-8") -> Path:
        (d / name).write_bytes(text.encode(encoding))
        return d / name

    ok = [("plain", "id,review\np1,flip\np2,keep\np3,drop\np4,\n", {"p1": "flip", "p2": "keep", "p3": "drop"}),
          ("case and spaces", "id,review\np1, FLIP \np2,Keep\n", {"p1": "flip", "p2": "keep"}),
          ("bom", "\ufeffid,review\np1,flip\n", {"p1": "flip"}),
          ("crlf", "id,review\r\np1,flip\r\np2,drop\r\n", {"p1": "flip", "p2": "drop"}),
          ("quoted newline", 'id,review,chosen\np1,flip,"two\nlines"\n', {"p1": "flip"}),
          ("semicolons", "id;review\np1;flip\np2;keep\n", {"p1": "flip", "p2": "keep"}),
          ("tabs", "id\treview\np1\tdrop\n", {"p1": "drop"}),
          ("NA and nan ids", "id,review\nNA,flip\nnan,keep\nNone,drop\n", {"NA": "flip", "nan": "keep", "None": "drop"}),
          ("numeric-looking ids", "id,review\n0012,flip\n12,keep\n1.50,drop\n",
           {"0012": "flip", "12": "keep", "1.50": "drop"}),
          ("escaped formula id", "id,review\n'=SUM(1),flip\n'@x,keep\n", {"=SUM(1)": "flip", "@x": "keep"}),
          ("same decision twice", "id,review\np1,flip\np1,flip\n", {"p1": "flip"}),
          ("judge labels", "id,judge_label,status\np1,1.0,ok\np2,0.0,ok\np3,0.5,ok\np4,,failed\n",
           {"p1": "keep", "p2": "flip"}),
          ("judge split orders", "id,judge_label\np1,0.25\np2,0.75\n", {}),
          ("judge status not ok", "id,judge_label,status\np1,0.0,truncated\np2,0.0,unparseable\np3,1.0,failed\n", {}),
          ("review and judge", "id,review,judge_label,status\np1,keep,0.0,ok\np2,,0.0,ok\np3,,,\n",
           {"p1": "keep", "p2": "flip"}),
          ("empty review column with judge labels", "id,review,judge_label\np1,,1\np2,,0\n", {"p1": "keep", "p2": "flip"}),
          ("judge NaN text", "id,judge_label\np1,NaN\np2,1\n", {"p2": "keep"}),
          ("upper-case suffix", "id,review\np1,flip\n", {"p1": "flip"})]
    for name, text, want in ok:
        path = csv(name.replace(" ", "_") + (".CSV" if name == "upper-case suffix" else ".csv"), text)
        a.run("review_tables", name, lambda p=path, w=want: read_reviews(p) == w)
    bad = [("conflicting duplicates", "id,review\np1,flip\np2,keep\np1,keep\n", "reviewed twice"),
           ("judge label A/B", "id,judge_label\np1,A\np2,B\n", "judge_label"),
           ("judge label 2", "id,judge_label\np1,2\n", "judge_label"),
           ("judge label -1", "id,judge_label\np1,-1\n", "judge_label"),
           ("unknown decision", "id,review\np1,yes\n", "field review"),
           ("no id column", "pair,review\np1,flip\n", "id column"),
           ("no decision column", "id,note\np1,x\n", "review column"),
           ("empty id", "id,review\n,flip\n", "field id"),
           ("header only", "id\n", "review column")]
    for name, text, names in bad:
        path = csv(name.replace(" ", "_").replace("/", "") + ".csv", text)
        a.expect_error("review_tables", name, lambda p=path: read_reviews(p), names=names)
    a.expect_error("review_tables", "cp1252 bytes", lambda: read_reviews(csv("cp.csv", "id,review\ncafé,flip\n",
                                                                              "cp1252")), names="not UTF-8")
    a.expect_error("review_tables", "empty file", lambda: read_reviews(csv("empty.csv", "")), names="empty.csv")
    a.expect_error("review_tables", "not a table suffix", lambda: read_reviews(csv("r.txt", "id,review\n")), names="r.txt")
    a.expect_error("review_tables", "missing file", lambda: read_reviews(d / "nope.csv"), names="nope.csv")
    a.run("review_tables", "counts say why rows decide nothing",
          lambda: read_review_table(csv("why.csv", "id,judge_label,status\np1,0.5,ok\np2,0,failed\np3,,\n")).undecided
          == {"p1": "tie", "p2": "failed", "p3": "blank"})


# ----------------------------------------------------------------------------------------------------------------
# The judge


PARSER = [("[[A]]", "A"), ("[[B]]", "B"), ("[[C]]", "C"), ("First [[A]] then on reflection [[B]]", "B"),
          ("End with [[A]], [[B]] or [[C]]", None), ("Hard to say. End with [[A]], [[B]] or [[C]] (tie).", None),
          ("Per the rules ([[A]], [[B]] or [[C]]) I pick [[B]]", "B"), ("Answer: A is worse than B.", None),
          ("Verdict: B is not better", None), ("Response A is not better; B is.", None),
          ("Response A is better.", "A"), ("Assistant B was preferred.", "B"), ("Verdict: A", "A"),
          ("Final answer: **Response B**", "B"), ("B", "B"), ("(A)", "A"), ("C.", "C"), ("It's a tie", "C"),
          ("It is not a tie, A wins", None), ("Both are equally good.", "C"), ("I cannot decide.", None), ("", None),
          (None, None), ("Response A is better for tone but Response B is better for accuracy.", None),
          ("My choice is [A]", "A"), ("[[ b ]]", "B"), ("Neither; no verdict.", None), ("A or B? Unsure.", None),
          ("**Verdict: A**", "A"), ("The winner is B", "B"), ("Answer: B was inferior to A", None)]


def judge_parser(a: Attacks) -> None:
    from rmkit.judge import parse_verdict

    for text, want in PARSER:
        a.run("judge_parser", repr(text)[:60], lambda t=text, w=want: parse_verdict(t) == w)


def judge_replies(a: Attacks) -> None:
    import rmkit.judge as judge
    from rmkit.data import load_preferences as lp

    from rmkit.testing import FaultServer  # an OpenAI-compatible endpoint that misbehaves on purpose

    os.environ.setdefault("OPENAI_API_KEY", "sk-attack")
    markers = ["LISTCONTENT", "INTCONTENT", "EMPTYCONTENT", "NULLCONTENT", "WORSE", "ECHO", "LATEVERDICT", "FLOOD",
               "GARBAGE", "ALWAYS500", "FAULT429x1", "HUGE", "RAMBLE", "plain"]
    pairs = lp([{"prompt": f"item-{i} {m} q?", "chosen": "a", "rejected": "b"} for i, m in enumerate(markers)]).pairs
    server = FaultServer(slow_seconds=0.5)
    cfg = judge.JudgeConfig(judge_model="fake", max_retries=1, backoff_base=0.01, backoff_max=0.02,
                            cache_dir=str(a.work / "judge_cache"), max_reply_chars=1000, timeout=5)
    try:
        table = judge.judge_pairs(pairs, cfg, output=a.work / "judge.jsonl", base_url=server.url, progress=False)
        by = dict(zip(markers, table.to_dict("records")))
        decided = {"LISTCONTENT", "FAULT429x1", "plain"}
        for m in markers:
            r = by[m]
            good = (r["status"] == "ok" and r["judge_label"] in (0.0, 1.0)) if m in decided else \
                (r["status"] != "ok" or math.isnan(r["judge_label"])) and math.isnan(r["judge_label"])
            a.run("judge_replies", m, lambda g=good: g)
        cached = [json.loads(p.read_text()) for p in (a.work / "judge_cache").rglob("*.json")]
        a.run("judge_replies", "no bad reply cached",
              lambda: all(isinstance(c.get("text"), str) and c["text"].strip() for c in cached))
        a.run("judge_replies", "flood not asked twice", lambda: by["FLOOD"]["attempts"] == 1)
    finally:
        server.close()


# ----------------------------------------------------------------------------------------------------------------
# Configs


def configs(a: Attacks) -> None:
    from rmkit.audit import AuditConfig
    from rmkit.training import TrainConfig

    d = a.work / "configs"
    d.mkdir()

    def yml(name: str, text: str) -> Path:
        (d / name).write_text(text)
        return d / name

    for depth in (3, 6, 9):
        bomb = 'finetune_settings:\n  a: &a ["x","x","x","x","x","x","x","x","x"]\n' + "".join(
            f"  {c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
            for p, c in list(zip("abcdefghij", "bcdefghijk"))[:depth])
        path = yml(f"bomb{depth}.yaml", bomb)
        a.expect_error("configs", f"alias bomb, {depth} levels", lambda p=path: load_config(AuditConfig, p),
                       names="aliases", timeout=20)
    for tag in ("!!python/object/apply:os.system ['echo pwned']", "!!python/name:os.system", "!!python/module:os"):
        path = yml(f"tag{len(tag)}.yaml", f"data: {tag}\n")
        a.expect_error("configs", f"tag {tag.split()[0]}", lambda p=path: load_config(AuditConfig, p), names=path.name)
    bad = [({"members": 2.7}, "members"), ({"members": True}, "members"), ({"members": "ten"}, "members"),
           ({"min_confidence": "nan"}, "min_confidence"), ({"min_confidence": float("inf")}, "min_confidence"),
           ({"finetune_settings": "not a dict"}, "finetune_settings"), ({"finetune_settings": [1, 2]}, "finetune_settings"),
           ({"model": ["a", "b"]}, "model"), ({"layers": "x,y"}, "layers"), ({"memebrs": 3}, "memebrs"),
           ({"rules": "strict"}, "rules"), ({"min_confidence": 0.2}, "min_confidence")]
    for over, names in bad:
        a.expect_error("configs", f"{over}", lambda o=over: load_config(AuditConfig, None, o), names=names)
    a.expect_error("configs", "top-level list", lambda: load_config(AuditConfig, yml("list.yaml", "- 1\n- 2\n")),
                   names="mapping")
    a.expect_error("configs", "binary bytes", lambda: load_config(AuditConfig, yml("bin.yaml", "\x00\x01\xff")),
                   names="bin.yaml")
    a.expect_error("configs", "missing file", lambda: load_config(AuditConfig, d / "nope.yaml"), names="nope.yaml")
    a.run("configs", "empty file gives the defaults", lambda: load_config(TrainConfig, yml("e.yaml", "")) == TrainConfig())
    a.run("configs", "2.0 reads as 2", lambda: load_config(AuditConfig, None, {"members": 2.0}).members == 2)


# ----------------------------------------------------------------------------------------------------------------
# Outputs


def outputs(a: Attacks, tiny: str) -> None:
    from rmkit.audit import AuditConfig, run_audit
    from rmkit.denoise import DenoiseConfig, run_denoise
    from rmkit.scoring import ScoreConfig, run_score
    from rmkit.training import TrainConfig, train_reward_model

    d = a.work / "outputs"
    d.mkdir()
    old = pd.DataFrame({"id": [f"p{i}" for i in range(199)], "x": range(199)})
    for suffix, method in ((".csv", "to_csv"), (".parquet", "to_parquet"), (".jsonl", "to_json")):
        path = d / f"t{suffix}"
        write_table(path, old)
        real = getattr(pd.DataFrame, method)

        def cut(self, target, *args, real=real, **kw):
            real(self.iloc[:37], target, *args, **kw)
            raise OSError(28, "No space left on device")

        setattr(pd.DataFrame, method, cut)
        try:
            write_table(path, pd.DataFrame({"id": ["new"] * 500, "x": range(500)}))
        except OSError:
            pass
        finally:
            setattr(pd.DataFrame, method, real)
        a.run("outputs", f"full disk mid-write {suffix}", lambda p=path: read_table(p)["id"].tolist() == old["id"].tolist())
    for cell in ("=HYPERLINK(\"http://evil\")", "@SUM(A1)", "+1+1", "-1+1", "\t=x", "\r=x", "'=x", "=1\n=2"):
        def check(cell=cell):
            write_table(d / "inj.csv", pd.DataFrame({"id": [cell], "subset": [cell], "n": [1]}))
            raw = (d / "inj.csv").read_bytes().decode()
            lines = [x for x in raw.split("\r\n")[1:] if x]
            first = lines[0].lstrip('"')
            return first[:1] not in "=+-@\t\r" and read_table(d / "inj.csv")["id"].tolist() == [cell]
        a.run("outputs", f"spreadsheet cell {cell!r}", check)
    data_dir = d / "data"
    data_dir.mkdir()
    src = DATA / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"
    (data_dir / "pairs.jsonl").write_text("".join(x for _, x in zip(range(40), gzip.open(src, "rt"))))
    for name, fn in (("audit", lambda out: run_audit(AuditConfig(data=str(data_dir), output_dir=str(out), model=tiny))),
                     ("train", lambda out: train_reward_model(TrainConfig(data=str(data_dir), output_dir=str(out),
                                                                          model=tiny))),
                     ("score", lambda out: run_score(ScoreConfig(data=str(data_dir), model=tiny, output_dir=str(out))))):
        a.expect_error("outputs", f"{name} into the data folder", lambda fn=fn: fn(data_dir), names="data folder")
        a.expect_error("outputs", f"{name} into a subfolder of the data", lambda fn=fn: fn(data_dir / "runs"),
                       names="data folder")
    (d / "afile").write_text("x")
    a.expect_error("outputs", "output_dir is a file",
                   lambda: run_audit(AuditConfig(data=str(data_dir / "pairs.jsonl"), output_dir=str(d / "afile"))),
                   names="is a file")
    audit = d / "audit"
    run_audit(AuditConfig(data=str(data_dir / "pairs.jsonl"), output_dir=str(audit), model=tiny, members=2,
                          max_length=32, cache_dir=str(a.work / "cache")), progress=False)
    a.expect_error("outputs", "denoise into the audit's folder",
                   lambda: run_denoise(DenoiseConfig(strength=str(audit / "strength.parquet"), preset="flip",
                                                     output_dir=str(audit))), names="the audit's folder")
    a.run("outputs", "data folder untouched", lambda: sorted(p.name for p in data_dir.iterdir()) == ["pairs.jsonl"])
    flagged = pd.read_csv(audit / "flagged.csv", dtype=str, keep_default_na=False)
    a.run("outputs", "flagged.csv reads whole", lambda: len(flagged) == len(read_table(audit / "flagged.csv")) > 0)


# ----------------------------------------------------------------------------------------------------------------
# Stale work: resume and reuse after the data or settings changed


def stale_work(a: Attacks, tiny: str) -> None:
    from rmkit.ensemble import EnsembleConfig, ensemble_diffs
    from rmkit.judge import JudgeRunConfig, run_judge
    from rmkit.scoring import ScoreConfig, run_score
    from rmkit.training import TrainConfig, train_reward_model

    d = a.work / "stale"
    d.mkdir()
    src = DATA / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"
    rows = [json.loads(x) for _, x in zip(range(40), gzip.open(src, "rt"))]
    swapped = [dict(r) for r in rows]
    swapped[5]["chosen"], swapped[5]["rejected"] = rows[5]["rejected"], rows[5]["chosen"]
    data = d / "pairs.jsonl"

    def write(recs):
        data.write_text("".join(json.dumps(r) + "\n" for r in recs))

    write(rows)
    cfg = TrainConfig(data=str(data), model=tiny, max_length=32, batch_size=4, epochs=1, eval_every=0, save_every=2,
                      output_dir=str(d / "rm"), eval_test=False)
    train_reward_model(cfg, stop_after_steps=3)
    write(swapped)
    a.expect_error("stale_work", "train resumed after the data was edited in place", lambda: train_reward_model(cfg),
                   names="data (content of the pairs)")
    write(rows)
    a.run("stale_work", "train resumed on the same data", lambda: train_reward_model(cfg).metrics["train_pairs"] == 28)
    write(swapped)
    a.expect_error("stale_work", "finished run returned for edited data", lambda: train_reward_model(cfg),
                   names="data (content of the pairs)")
    recs = [{"id": f"q{i}", "prompt": f"question {i}", "chosen": "a helpful, polite answer", "rejected": "go away"}
            for i in range(16)]
    other = [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} if i == 3 else r for i, r in enumerate(recs)]
    common = dict(model=tiny, members=2, folds=2, backbone="finetune_members", max_length=16, finetune_epochs=1,
                  finetune_batch_size=4, finetune_lr=1e-3, device="cpu")
    ensemble_diffs(EnsembleConfig(**common), load_preferences(recs).pairs, work_dir=d / "work", progress=False)
    a.expect_error("stale_work", "finetune_members reused on other data",
                   lambda: ensemble_diffs(EnsembleConfig(**common), load_preferences(other).pairs, work_dir=d / "work",
                                          progress=False), names="data (content of the pairs)")
    a.expect_error("stale_work", "finetune_members reused with another lr",
                   lambda: ensemble_diffs(EnsembleConfig(**{**common, "finetune_lr": 2e-3}),
                                          load_preferences(recs).pairs, work_dir=d / "work", progress=False),
                   names="finetune_lr")
    # scoring in parts: the data edited between runs must not reuse the old parts
    write(rows)
    score_cfg = ScoreConfig(data=str(data), model=tiny, output_dir=str(d / "score"), chunk_rows=10)
    run_score(score_cfg)
    write(swapped)
    run_score(score_cfg)
    run_score(ScoreConfig(data=str(data), model=tiny, output_dir=str(d / "score_fresh"), chunk_rows=10))
    a.run("stale_work", "score parts recomputed after an edit in place",
          lambda: np.allclose(pd.read_parquet(d / "score" / "scores.parquet")["diff"],
                              pd.read_parquet(d / "score_fresh" / "scores.parquet")["diff"]))
    (d / "judge").mkdir()
    (d / "judge" / "judgments.jsonl").write_text("")
    JudgeRunConfig(output_dir=str(d / "judge"), judge_model="a")  # settings of a first judge, saved below
    from rmkit.config import save_config

    save_config(JudgeRunConfig(data=str(data), output_dir=str(d / "judge"), judge_model="a"), d / "judge" / "config.yaml")
    a.expect_error("stale_work", "judge resumed with another model",
                   lambda: run_judge(JudgeRunConfig(data=str(data), output_dir=str(d / "judge"), judge_model="b",
                                                    base_url="http://127.0.0.1:9")), names="judge_model")


# ----------------------------------------------------------------------------------------------------------------
# Model folders


def model_folders(a: Attacks, tiny: str) -> None:
    from rmkit.models import RewardModel

    d = a.work / "models"
    d.mkdir()

    def copy(name: str) -> Path:
        shutil.copytree(tiny, d / name)
        return d / name

    custom = copy("custom")
    cfg = json.loads((custom / "config.json").read_text())
    cfg.update(model_type="evil-bert", auto_map={"AutoConfig": "evil.EvilConfig",
                                                 "AutoModelForSequenceClassification": "evil.EvilModel"})
    (custom / "config.json").write_text(json.dumps(cfg))
    (custom / "evil.py").write_text("raise SystemExit('remote code ran')\n")
    a.expect_error("model_folders", "auto_map asks for remote code", lambda: RewardModel.from_pretrained(str(custom)),
                   names=str(custom), timeout=60)
    for name, keep in (("truncated", 0.5), ("empty", 0.0), ("header only", 0.001)):
        bad = copy(name.replace(" ", "_"))
        w = bad / "model.safetensors"
        w.write_bytes(w.read_bytes()[: int(w.stat().st_size * keep)])
        a.expect_error("model_folders", f"{name} safetensors", lambda b=bad: RewardModel.from_pretrained(str(b)),
                       names="model.safetensors")
    broken = copy("bad_config")
    (broken / "config.json").write_text("{not json")
    a.expect_error("model_folders", "config.json not JSON", lambda: RewardModel.from_pretrained(str(broken)),
                   names=str(broken))
    a.expect_error("model_folders", "no such folder", lambda: RewardModel.from_pretrained(str(d / "nope")),
                   names="nope")
    (d / "empty_dir").mkdir()
    a.expect_error("model_folders", "an empty folder", lambda: RewardModel.from_pretrained(str(d / "empty_dir")),
                   names="empty_dir")


# ----------------------------------------------------------------------------------------------------------------
# The server


def _post(url: str, body: bytes, headers: dict | None = None, timeout: float = 30) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _raw(host: str, port: int, data: bytes, timeout: float = 15) -> bytes:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        try:
            return s.recv(200)
        except socket.timeout:
            return b""


def server(a: Attacks, tiny: str) -> None:
    from urllib.parse import urlparse

    from rmkit.models import RewardModel
    from rmkit.serve import RewardServer, ServeConfig

    os.environ["RMKIT_ATTACK_TOKEN"] = "attack-token"
    rm = RewardModel.from_pretrained(tiny, max_length=64).eval()
    cfg = ServeConfig(port=0, api_key_env="RMKIT_ATTACK_TOKEN", request_timeout=5.0, precision="fp32")
    auth = {"Authorization": "Bearer attack-token"}
    body = json.dumps({"prompts": ["hi"], "completions": ["hello"]}).encode()
    with RewardServer(rm, cfg) as srv:
        u = urlparse(srv.url)
        host, port = u.hostname, u.port
        # 64 clients trickle a header line every 0.5 s: a real request must still be answered within 2 s
        slow = [socket.create_connection((host, port)) for _ in range(64)]
        stop = threading.Event()

        def trickle():
            k = 0
            while not stop.is_set():
                for s in slow:
                    try:
                        s.sendall(b"POST /score HTTP/1.1\r\n" if k == 0 else f"X-{k}: 1\r\n".encode())
                    except OSError:
                        pass
                k += 1
                stop.wait(0.5)

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        time.sleep(1.5)
        latencies = []
        for _ in range(5):
            t0 = time.time()
            status, _ = _post(srv.url + "/score", body, auth)
            latencies.append(time.time() - t0 if status == 200 else float("inf"))
        a.run("server", "a real request while 64 clients trickle headers", lambda: max(latencies) < 2.0)
        t1 = time.time()
        with urllib.request.urlopen(srv.url + "/health", timeout=5) as r:
            health = json.loads(r.read())
        a.run("server", "/health while 64 clients trickle", lambda: time.time() - t1 < 2.0 and health == {"status": "ok"})
        time.sleep(cfg.request_timeout + 0.5)
        slow[0].settimeout(3)
        got = slow[0].recv(100)
        a.run("server", "a trickler is cut off at request_timeout", lambda: got.startswith(b"HTTP/1.1 408"))
        stop.set()
        t.join()
        for s in slow:
            s.close()
        a.measured["slow_headers"] = {"clients": 64, "seconds_between_lines": 0.5,
                                      "request_timeout": cfg.request_timeout,
                                      "real_request_latency_s": {"max": max(latencies),
                                                                 "median": float(np.median(latencies))}}
        probes = [("oversized head", b"POST /score HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
                  ("Content-Length over the limit", b"POST /score HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n", b"413"),
                  ("chunked body", b"POST /score HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"411"),
                  ("Content-Length abc", b"POST /score HTTP/1.1\r\nContent-Length: abc\r\n\r\n{}", b"400"),
                  ("Content-Length -1", b"POST /score HTTP/1.1\r\nContent-Length: -1\r\n\r\n{}", b"400"),
                  ("not HTTP", b"HELLO\r\n\r\n", b"400"),
                  ("body shorter than its length", b"POST /score HTTP/1.1\r\nContent-Length: 100\r\n\r\n{", b"408")]
        for name, data, code in probes:
            a.run("server", name, lambda d=data, c=code: _raw(host, port, d, timeout=cfg.request_timeout + 5)
                  .split(b" ")[1:2] == [c])
        for name, raw, code in (("no token", (body, {}), 401), ("wrong token", (body, {"Authorization": "Bearer x"}), 401),
                                ("lower-case bearer", (body, {"Authorization": "bearer attack-token"}), 200),
                                ("lone surrogate", (b'{"prompts": ["\\ud800"], "completions": ["a"]}', auth), 400),
                                ("deep nesting", (b'{"prompts": ' + b"[" * 5000 + b"]" * 5000 + b"}", auth), 400),
                                ("not JSON", (b"<html>", auth), 400)):
            a.run("server", name, lambda r=raw, c=code: _post(srv.url + "/score", r[0], r[1])[0] == c)
        # memory: the largest allowed bodies, one after another from 8 clients at once
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        # bodies just under the limit: one long completion, and the most texts a request may hold, each long
        n = cfg.max_request_texts
        shapes = {"one long text": {"prompts": ["q"], "completions": ["word " * (cfg.max_body_bytes // 5 - 40)]},
                  "many long texts": {"prompts": ["q"] * n,
                                      "completions": ["word " * (cfg.max_body_bytes // (5 * n) - 10)] * n}}
        codes = []

        def client(big: bytes):
            for _ in range(3):
                status, out = _post(srv.url + "/score", big, auth, timeout=300)
                codes.append(status)
                if status != 200:
                    a.measured.setdefault("errors", []).append(str(out)[:200])

        for shape, obj in shapes.items():
            big = json.dumps(obj).encode()
            threads = [threading.Thread(target=client, args=(big,)) for _ in range(8)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            a.measured.setdefault("large_bodies", {})[shape] = {"body_bytes": len(big)}
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        a.measured["large_bodies"].update({
            "clients": 8, "requests": len(codes), "answered_200": codes.count(200), "peak_rss_gb_before": rss0,
            "peak_rss_gb_after": rss1, "peak_rss_growth_gb": rss1 - rss0, "stated_limit_gb": 0.5,
            "max_inflight": cfg.max_inflight, "max_body_bytes": cfg.max_body_bytes, "statuses": dict(Counter(codes))})
        a.run("server", "largest bodies from 8 clients: answered, RSS growth under 0.5 GB",
              lambda: codes.count(200) == len(codes) and rss1 - rss0 < 0.5)
        # a connection flood past max_connections: 503 at once
        flood_cfg = ServeConfig(port=0, max_connections=16, precision="fp32")
    with RewardServer(rm, flood_cfg) as srv2:
        u = urlparse(srv2.url)
        held = [socket.create_connection((u.hostname, u.port)) for _ in range(16)]
        time.sleep(0.3)
        got = _raw(u.hostname, u.port, b"", timeout=5)
        a.run("server", "connections past max_connections get 503", lambda: got.startswith(b"HTTP/1.1 503"))
        for s in held:
            s.close()
    os.environ["RMKIT_ATTACK_TOKEN"] = "sécret"
    a.expect_error("server", "a non-ASCII token is refused at start",
                   lambda: ServeConfig(api_key_env="RMKIT_ATTACK_TOKEN").check(), names="non-ASCII")
    a.expect_error("server", "an unset token variable", lambda: ServeConfig(api_key_env="RMKIT_NOT_SET").check(),
                   names="RMKIT_NOT_SET")


# ----------------------------------------------------------------------------------------------------------------
# Clear errors for common mistakes


def clear_errors(a: Attacks, tiny: str) -> None:
    from rmkit.audit import AuditConfig, run_audit
    from rmkit.denoise import DenoiseConfig, run_denoise
    from rmkit.ensemble import encode_features
    from rmkit.models import RewardModel
    from rmkit.serve import RewardFunction

    d = a.work / "clear"
    d.mkdir()
    for n in (1, 2):
        path = d / f"few{n}.jsonl"
        path.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "good", "rejected": "bad"}) + "\n"
                                for i in range(n)))
        a.expect_error("clear_errors", f"audit of {n} pairs", lambda p=path, n=n: run_audit(AuditConfig(
            data=str(p), output_dir=str(d / f"a{n}"), model=tiny, members=2, max_length=16,
            cache_dir=str(a.work / "cache")), progress=False), names="too few")
    (d / "empty.jsonl").write_text("")
    a.expect_error("clear_errors", "an empty data file", lambda: run_audit(AuditConfig(
        data=str(d / "empty.jsonl"), output_dir=str(d / "ae"), model=tiny), progress=False), names="empty.jsonl")
    a.expect_error("clear_errors", "a missing data path", lambda: run_audit(AuditConfig(
        data=str(d / "nope.jsonl"), output_dir=str(d / "an"), model=tiny), progress=False), names="nope.jsonl")
    a.expect_error("clear_errors", "denoise on the audit folder", lambda: run_denoise(DenoiseConfig(
        strength=str(d), preset="flip", output_dir=str(d / "dn"))), names="is a folder")
    a.expect_error("clear_errors", "denoise without reviews or preset", lambda: run_denoise(DenoiseConfig(
        strength=str(d / "x.parquet"), output_dir=str(d / "dn"))), names="nothing to act on")
    a.expect_error("clear_errors", "RewardFunction with an unset token",
                   lambda: RewardFunction(url="http://127.0.0.1:9/get_reward", api_key_env="RMKIT_NOT_SET")(["a"], ["b"]),
                   names="RMKIT_NOT_SET")
    # a full disk when the feature cache is made: an error naming the folder, not SIGBUS
    rm = RewardModel.from_pretrained(tiny, max_length=16)
    pairs = load_preferences([{"prompt": "q", "chosen": "a", "rejected": "b"}]).pairs
    real = os.posix_fallocate

    def full(fd, offset, length):
        raise OSError(28, "No space left on device")

    os.posix_fallocate = full
    try:
        a.expect_error("clear_errors", "feature cache on a full disk", lambda: encode_features(
            rm, pairs, cache_dir=d / "fullcache", model_id=tiny, progress=False), names="fullcache")
    finally:
        os.posix_fallocate = real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "attacks.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        a = Attacks(work)
        tiny = tiny_model("bert", work / "tiny_bert")
        for family in (data_rows, review_tables, judge_parser, judge_replies, configs):
            family(a)
        for family in (outputs, stale_work, model_folders, server, clear_errors):
            family(a, tiny)
    result = {**a.summary(), "measured": a.measured, "seconds": time.time() - t0, "cases": a.cases}
    write_result(args.out, result)
    print(json.dumps({k: result[k] for k in ("attacks", "totals", "goal_met")}, indent=1))
    for c in a.cases:
        if c["outcome"] in ("silent_wrong", "crash", "hang"):
            print(f"{c['outcome']}: {c['family']} / {c['name']}: {c['detail']}")


if __name__ == "__main__":
    main()
