"""Reviews of pairs, from a person or a judge: one reader, one set of rules.

A review table has an ``id`` column and either or both of

- ``review``: ``keep``, ``flip`` or ``drop`` (any case), or blank for no decision: the audit's flagged.csv/.jsonl
  filled in by a person;
- ``judge_label`` (with ``status``): what ``rmkit judge`` writes. 1: the judge prefers the pair's chosen side
  (keep), 0: its rejected side (flip), 0.5: a tie, a value in between: two orders that disagree; only a row whose
  ``status`` is ``ok`` (or that has no status column) carries a decision, so a failed, unparseable or truncated
  judgment never flips a pair.

Rules: a person's review wins over a judge label on the same row; an id may appear more than once only with the same
decision (two different decisions are an error naming both rows); a value that is neither (``A``, ``yes``, 2) is an
error naming file, row and field. Rows that carry no decision are counted by why (`ReviewTable.undecided`), never
dropped silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .data import DataError, read_table

REVIEW_DECISIONS = ("keep", "flip", "drop")


@dataclass
class ReviewTable:
    """What a review table decides: ``decisions`` (id -> keep, flip or drop), the judge's labels of its decided
    rows (id -> 0, 0.5 or 1, status ok only) and, for every other row, why it decides nothing."""

    path: str
    columns: list[str] = field(default_factory=list)
    decisions: dict[str, str] = field(default_factory=dict)
    judge_labels: dict[str, float] = field(default_factory=dict)
    undecided: dict[str, str] = field(default_factory=dict)  # id -> blank, tie, split, failed, ...
    from_review: int = 0
    from_judge: int = 0

    def summary(self) -> dict:
        why: dict[str, int] = {}
        for reason in self.undecided.values():
            why[reason] = why.get(reason, 0) + 1
        return {"decisions": len(self.decisions), "by_person": self.from_review, "by_judge": self.from_judge,
                "undecided": why}


def table_row(path: str | Path, row: int) -> int:
    """The row number a user sees: a CSV's header is line 1, JSON lines count from 1."""
    return row + 2 if str(path).lower().endswith(".csv") else row + 1


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _judge_value(path, row: int, v) -> float | None:
    if _blank(v):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise DataError(f"{path}, row {table_row(path, row)}, field judge_label: {v!r} is not a number: 1 means the "
                        "pair's chosen side is better, 0 its rejected side, 0.5 a tie (rmkit judge maps the judge's "
                        "A/B, which follow the display order, to these)") from None
    if math.isnan(x):
        return None
    if not 0.0 <= x <= 1.0:
        raise DataError(f"{path}, row {table_row(path, row)}, field judge_label: {x!r} is not in [0, 1] (1: the chosen "
                        "side is better, 0: the rejected, 0.5: a tie)")
    return x


def read_review_table(path: str | Path) -> ReviewTable:
    """Read a review table (see the module docstring for its columns and rules)."""
    table = read_table(path)
    if "id" not in table.columns:
        raise DataError(f"{path}: a review table needs an id column, and a review column (keep, flip, drop) or a "
                        "judge_label column (as rmkit judge writes)")
    has_review, has_judge = "review" in table.columns, "judge_label" in table.columns
    if not (has_review or has_judge):
        raise DataError(f"{path}: a review table needs a review column (keep, flip, drop) or a judge_label column "
                        f"(as rmkit judge writes); it has {', '.join(map(str, table.columns))}")
    out = ReviewTable(str(path), [str(c) for c in table.columns])
    first_row: dict[str, int] = {}
    n = len(table)
    reviews = table["review"].tolist() if has_review else [None] * n
    labels = table["judge_label"].tolist() if has_judge else [None] * n
    statuses = table["status"].tolist() if "status" in table.columns else ["ok"] * n
    for row, (i, v, j, status) in enumerate(zip(table["id"], reviews, labels, statuses)):
        if _blank(i):
            raise DataError(f"{path}, row {table_row(path, row)}, field id: empty; every review names its pair")
        i = str(i)
        decision, reason, judged = None, "blank", None
        if not _blank(v):
            decision = str(v).strip().lower()
            if decision not in REVIEW_DECISIONS:
                raise DataError(f"{path}, row {table_row(path, row)}, field review: {v!r} is not one of "
                                f"{REVIEW_DECISIONS} (or blank)")
        x = _judge_value(path, row, j) if has_judge else None
        if decision is None and x is not None:
            status = "ok" if _blank(status) else str(status)
            if status != "ok":
                reason = status  # failed, unparseable, truncated: a judgment that is not one
            elif x == 1.0 or x == 0.0:
                decision, judged = ("keep" if x == 1.0 else "flip"), x
            else:
                reason = "tie" if x == 0.5 else "split"  # 0.25 / 0.75: the two orders disagreed
                judged = x if x == 0.5 else None
        if i in first_row:
            before = out.decisions.get(i)
            if before != decision:
                raise DataError(f"{path}: id {i!r} is reviewed twice with different decisions (row "
                                f"{table_row(path, first_row[i])}: {before or 'none'}, row {table_row(path, row)}: "
                                f"{decision or 'none'}); keep one")
            continue
        first_row[i] = row
        if decision is None:
            out.undecided[i] = reason
        else:
            out.decisions[i] = decision
            if judged is None:
                out.from_review += 1
            else:
                out.from_judge += 1
        if judged is not None:
            out.judge_labels[i] = judged
    return out


def read_reviews(path: str | Path) -> dict[str, str]:
    """Reviewed decisions, id -> keep, flip or drop (`read_review_table`'s ``decisions``)."""
    return read_review_table(path).decisions


def read_judge_labels(path: str | Path, ids: Sequence[str]) -> np.ndarray:
    """Judge labels aligned with ``ids`` (1: the judge prefers the pair's chosen side, 0: its rejected side, 0.5: a
    tie); pairs the table lacks, or whose judgment is not ``ok`` or split between two orders, get NaN."""
    table = read_review_table(path)
    if "judge_label" not in table.columns:
        raise DataError(f"{path}: a judge table needs columns id and judge_label")
    return np.array([table.judge_labels.get(str(i), np.nan) for i in ids], dtype=np.float64)
