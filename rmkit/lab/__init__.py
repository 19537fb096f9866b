"""A gold-standard lab: a fixed gold reward model plays the human, so every method can be measured.

As in Gao et al. 2022 ("Scaling Laws for Reward Model Overoptimization") and Coste et al. 2023
("Reward Model Ensembles Help Mitigate Overoptimization"): a **gold** RM scores real prompts and
responses; labels are sampled from Bradley-Terry on its reward difference, with a temperature that
sets how often a label goes against the gold (noise as humans make it: mostly on close pairs), and
optional planted flips on top (noise as a pipeline makes it: anywhere). **Proxy** RMs learn from those
labels, and every study grades them against the gold, never against labels a proxy produced.

    gold = fit_gold("smollm2", pairs, layer=10, head_l2=0.3)  # GoldRM: a frozen layer + a BT head on real labels
    g = gold.diffs(pairs)                                 # (N,) gold r(chosen) - r(rejected)
    T = choose_temperature(g, against=0.225)              # ~22.5% of sampled labels against the gold
    labels = sample_labels(ids, g, T, flips=0.2, seed=0)  # DataFrame: id, gold_diff, sampled, flipped, ...
    lab = lab_pairs(pairs, labels)                        # pairs written as the labels say

Every pair keeps its id, its gold difference, its sampled label and whether it was flipped: truth for
"ambiguous" (a small gold difference) and "mislabeled" (flipped; or, more broadly, against the gold).

Studies (functions over cached proxy features ``(N, V, H)``; `run_lab` runs them and writes lab.json):
`study_learnability`, `study_strength`, `study_flips`, `study_denoise`; `study_shift` on policy samples. The
best-of-n study (`rmkit.bon.study_bon`, the overoptimization curve) runs where the samples are: ``rmkit bon --gold``.
"""

from ..configs.lab import STUDIES, LabConfig  # noqa: F401
from .labels import (  # noqa: F401
    _sigmoid, expected_against, choose_temperature, sample_labels, length_confounded, read_gold_scores, lab_pairs,
    as_labelled, orient)
from .proxies import (  # noqa: F401
    gold_accuracy, detection_metrics, cleanlab_suspicion, ProxyFeatures, proxy_features, LabInputs, lab_source_pairs,
    load_lab_inputs, proxy_heads, head_rewards)
from .studies import (  # noqa: F401
    _mean_std, study_learnability, p_label_right, p_flipped, study_strength, study_flips, DenoiseCase, denoise_case,
    study_denoise, _HeadOnFeatures, prompt_sensitivity, grade_sample_pairs, study_shift)
from .run import run_lab, lab_summary  # noqa: F401
