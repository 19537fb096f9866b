"""The settings of AuditConfig (`rmkit.audit`), importable without torch: `rmkit <command> --help` reads them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..calibration import METHODS
from ..config import setting
from ..data import MAX_PAIRS_HELP, DataSource
from ..strength import CategoryRules
from .ensemble import EnsembleConfig


@dataclass
class AuditConfig(EnsembleConfig, DataSource):
    """Settings of ``rmkit audit``: the ensemble's, plus data, outputs, calibration and category rules."""

    data: str = setting("", "preference data: a file, a directory, or a hub dataset name")
    output_dir: str = setting("runs/audit", "where strength.parquet, summary.json, figures and report.html go")
    rules: Literal["calibrated", "paper"] = setting(
        "calibrated", "how pairs are flagged likely_mislabeled: calibrated (p_label_wrong >= "
        "min_confidence, only in subsets the ensemble can judge) or paper (mean < "
        "mislabeled_below, the paper's rule, for reproducing its analyses)")
    min_confidence: float = setting(0.8, "calibrated rules: the p_label_wrong (or p_flipped) a flag needs")
    noise_rate: float | None = setting(
        None, "the share of labels you know are flipped, e.g. the share a reviewer flips in a random sample of "
              "100 pairs; calibrated rules then flag by p_flipped = P(this label was flipped | the ensemble's view), "
              "which, unlike p_label_wrong, does not count the ensemble's own errors (calibration.flip_posterior)")
    calibration: Literal["length", "temperature", "isotonic"] = setting(
        "length", "map from mean strength to p_label_wrong, cross-fitted on the data's own labels: length (the "
                  "label as Bradley-Terry on strength plus a length term, so a label length alone explains is not "
                  "called wrong; the default since it measured best in the length-confounded lab and equal in the "
                  "plain one), temperature (Platt, strength only) or isotonic")
    calibration_by_subset: bool = setting(
        False, "fit the calibration within each subset of 200+ decided pairs (an hh-rlhf data_dir, a source), over "
               "all pairs for smaller ones: subsets carry different label noise (flips planted on hh-rlhf: AUROC 0.643 "
               "against 0.632 with one calibration; off by default: on the real hh-rlhf audit its 22 extra flags "
               "read by hand were 5 wrong labels, 7 right ones and 10 unclear, 20 of them rejecting the longer answer)")
    flag_unjudged: bool = setting(False, "calibrated rules: flag pairs also in subsets whose held-out agreement "
                                         "interval includes chance (by default the audit says nothing there)")
    length_correction: bool = setting(False, "remove each member's linear effect of the response-length "
                                             "difference (cross-fitted) before strength and calibration")
    mislabeled_below: float = setting(0.0, "paper rules: likely mislabeled when mean strength is below this")
    ambiguous_z: float = setting(1.0, "ambiguous: mean below this many of the pair's own stds")
    strong_quantile: float = setting(0.9, "strong: mean at or above this quantile")
    n_groups: int = setting(20, "groups for the paper's mean/std-by-strength figure")
    report_pairs: int = setting(10, "suspect and ambiguous pairs shown in report.html")
    review_pairs: int = setting(200, "flagged.csv/.jsonl: the flagged pairs, then the most suspect others up to "
                                     "this many, for review")
    review_precision: float | None = setting(
        None, "a review budget by precision: flagged.csv lists the most suspect pairs, as many as keep the expected "
              "share of wrong labels among them at or above this (instead of review_pairs); the report shows what "
              "every budget buys")
    max_pairs: int | None = setting(None, MAX_PAIRS_HELP)
    member_models: list[str] | None = setting(None, "score every pair with reward models you already have (paths or "
                                                    "hub ids, any mix of backbones) instead of training an ensemble; "
                                                    "their scores are in-sample if they saw this data, and the "
                                                    "report says so")

    @property
    def category_rules(self) -> CategoryRules:
        return CategoryRules(self.mislabeled_below, self.ambiguous_z, self.strong_quantile, self.rules,
                             self.min_confidence)

    def check(self) -> None:
        super().check()
        self.category_rules.check()
        if self.review_precision is not None and not 0.0 < self.review_precision <= 1.0:
            raise ValueError(f"review_precision must be in (0, 1], got {self.review_precision}")
        if self.noise_rate is not None and not 0.0 <= self.noise_rate < 0.5:
            raise ValueError(f"noise_rate must be in [0, 0.5), got {self.noise_rate}")
        if self.max_pairs is not None and self.max_pairs < 2:
            raise ValueError(f"max_pairs must be at least 2 (or unset for every pair), got {self.max_pairs}")
        if self.calibration not in METHODS:
            raise ValueError(f"calibration must be one of {METHODS}, got {self.calibration!r}")
