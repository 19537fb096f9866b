"""rmkit: robust reward models for RLHF (Wang et al. 2024, arXiv 2401.06080).

Modules, in the order data flows through them: `data` (pairs and per-row status), `models`
(`RewardModel`), `losses`, `training`, `scoring`, `heads` and `ensemble` (members and their reward
differences), `strength` (Eq. 4, categories, ranking), `calibration` (p_label_wrong, trust), `audit`
and `report` (outputs and the page), `denoise`, `tsne`, `lab` (a gold RM and studies against it).
`config` and `cli` sit beside them; `assets` finds the offline default models.
"""

__version__ = "0.1.0"
