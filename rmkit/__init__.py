"""rmkit: robust reward models for RLHF (Wang et al. 2024, arXiv 2401.06080).

Modules, in the order data flows through them (docs/ARCHITECTURE.md draws the layers): `data` (pairs and
per-row status), `models` (`RewardModel`), `losses` and `objectives`, `training`, `scoring`, `heads` and
`ensemble` (members and their reward differences), `strength` (Eq. 4, categories, ranking), `calibration`
(p_label_wrong, trust), `audit` and `report` (outputs and the page), `denoise`, `tsne`, `reward_ensemble`,
`bon`, `rl`, `rlhf`, `lab` (a gold RM and studies against it). `config`, `files`, `seeding`, `batching` and
`assets` sit under them; `cli` on top.
"""

__version__ = "0.1.0"
