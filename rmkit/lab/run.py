"""``rmkit lab``: the gold, the labels and the chosen studies, written to lab.json as they finish."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..audit import response_length_diff
from ..calibration import spearman
from ..config import save_config, validate
from ..data import data_folder_guard
from ..files import check_output_dir, write_json, write_table
from ..gold import fit_gold, fit_prompt_aware_gold, gold_files, load_gold
from ..hardware import resolve_device
from ..relevance import SentenceEncoder
from ..configs.lab import STUDIES, LabConfig
from .labels import choose_temperature, read_gold_scores, sample_labels
from .proxies import lab_source_pairs, proxy_features
from .studies import prompt_sensitivity, study_denoise, study_flips, study_learnability, study_strength


def run_lab(cfg: LabConfig, *, progress: bool = True) -> dict[str, Any]:
    """Gold, labels and the chosen studies; writes gold.parquet, labels.parquet (seed 0, flips 0) and lab.json."""
    import pandas as pd

    validate(cfg)
    if not cfg.data:
        raise ValueError("rmkit lab needs data: real prompts and responses with labels")
    out = check_output_dir(cfg.output_dir, not_in=data_folder_guard(cfg.data))
    save_config(cfg, out / "config.yaml")
    t0 = time.time()
    pairs = lab_source_pairs(cfg)
    ids = [p.id for p in pairs]
    result: dict[str, Any] = {"data": cfg.data, "pairs": len(pairs)}
    prompt_aware = None
    if cfg.gold_scores:
        gold_diff = read_gold_scores(cfg.gold_scores, ids)
        made = Path(cfg.gold_scores).with_suffix(".json")  # how the gold was made, saved beside its scores
        gold_info = json.loads(made.read_text()) if made.exists() else {"source": cfg.gold_scores}
        saved = gold_files(made)
        if saved is not None:  # its head too, so this output folder is a gold for policy samples (rmkit bon --gold)
            shutil.copy(saved[1], out / "gold_head.npy")
    else:
        if cfg.gold_head:
            gold = load_gold(cfg.gold_head, cfg.gold_model, layer=cfg.gold_layer, max_length=cfg.gold_max_length,
                             device=cfg.device, precision=cfg.precision)
        else:
            gold = fit_gold(cfg.gold_model, pairs, layer=cfg.gold_layer, max_length=cfg.gold_max_length,
                            head_l2=cfg.gold_head_l2, seed=cfg.seed, batch_size=cfg.batch_size, progress=progress,
                            device=cfg.device, precision=cfg.precision)
        gold_diff = gold.diffs(pairs, batch_size=cfg.batch_size, progress=progress)
        # Does the gold read the prompt? On up to 256 chosen responses of distinct prompts: a gold that does not is
        # hacked with the proxy by a policy that drifts off the question (benchmarks/lab_hack.py).
        first = list({json.dumps(p.prompt, sort_keys=True): k for k, p in reversed(list(enumerate(pairs)))}.values())
        some = sorted(np.random.default_rng(cfg.seed).permutation(first)[:256].tolist())
        prompts, chosen = [pairs[i].prompt for i in some], [pairs[i].chosen for i in some]
        if cfg.gold_relevance and len(some) < 2:
            raise ValueError(f"gold_relevance: {cfg.data} has {len(some)} distinct prompt(s); the relevance weight is "
                             "fitted on answers to different questions (at least 2)")
        np.save(out / ("gold_base_head.npy" if cfg.gold_relevance else "gold_head.npy"), gold.weights)
        if cfg.gold_relevance:
            base_info = dict(gold.info)
            write_json(out / "gold_base.json", base_info)
            gold = prompt_aware = fit_prompt_aware_gold(gold, prompts, chosen, encoder=SentenceEncoder(
                cfg.gold_relevance, device=str(resolve_device(cfg.device))), slack=cfg.gold_relevance_slack,
                seed=cfg.seed, batch_size=cfg.batch_size)
            gold_diff = gold_diff + gold.beta * gold.relevance_diffs(pairs, batch_size=cfg.batch_size, progress=progress)
        gold_info = dict(gold.info)
        if len(some) >= 2:  # undefined on data with one prompt
            gold_info["prompt_sensitivity"] = prompt_sensitivity(
                lambda p, r: gold.score(p, r, batch_size=cfg.batch_size), prompts, chosen, seed=cfg.seed)

    length_diff, unit = response_length_diff(pairs, cfg.proxy_config().model)
    gold_info = {**gold_info, "length_spearman": spearman(gold_diff, length_diff), "length_unit": unit,
                 "abs_diff_median": float(np.median(np.abs(gold_diff)))}
    write_table(out / "gold.parquet", pd.DataFrame({"id": ids, "gold_diff": gold_diff}))
    if prompt_aware is None:
        write_json(out / "gold.json", gold_info)
    else:  # its JSON names the base (gold_base.json, gold_base_head.npy): rmkit bon --gold reads the folder
        prompt_aware.info = gold_info
        prompt_aware.save(out / "gold.json", str(out / "gold_base.json"))
    temperature = cfg.label_temperature or choose_temperature(gold_diff, cfg.against_gold)
    labels = sample_labels(ids, gold_diff, temperature, seed=cfg.seed)
    write_table(out / "labels.parquet", labels)
    result.update(gold=gold_info, temperature=temperature,
                  against_gold=float(labels["against_gold"].mean()))
    result["timings"] = {"gold_seconds": time.time() - t0}
    needs_proxy = [s for s in cfg.studies if s in STUDIES]
    if needs_proxy:
        t1 = time.time()
        proxy = proxy_features(cfg.proxy_config(), pairs, progress=progress)
        result["timings"]["proxy_encoding_seconds"] = time.time() - t1
        result["proxy_precision"] = proxy.cfg.precision
        kw = dict(seeds=cfg.seeds, base_seed=cfg.seed)
        for name in cfg.studies:
            t1 = time.time()
            if name == "learnability":
                result["learnability"] = study_learnability(proxy, gold_diff, temperature, **kw)
                result["proxy_gold_accuracy"] = result["learnability"]["ensemble"]
            elif name == "strength":
                result["strength"] = study_strength(proxy, gold_diff, temperature, **kw)
                result["strength_spearman"] = result["strength"]["strength_spearman"]
            elif name == "flips":
                # cleanlab is the flips study's baseline, not a dependency of rmkit: without it those rows are left
                # out, and lab.json says so
                with_cleanlab = importlib.util.find_spec("cleanlab") is not None
                result["flips"] = study_flips(proxy, gold_diff, temperature, levels=cfg.flip_levels,
                                              with_cleanlab=with_cleanlab, **kw)
                if not with_cleanlab:
                    result["flips"]["note"] = "cleanlab is not installed: its baseline is left out (pip install cleanlab)"
            elif name == "denoise":
                result["denoise"] = study_denoise(proxy, gold_diff, temperature, noise=cfg.denoise_noise,
                                                   reviewed=cfg.denoise_reviewed, ceiling=cfg.denoise_ceiling, **kw)
            result["timings"][f"{name}_seconds"] = time.time() - t1
            write_json(out / "lab.json", result)  # as it goes
    write_json(out / "lab.json", result)
    return result


def lab_summary(result: dict) -> dict:
    """The headline numbers of a `run_lab` result (what ``rmkit lab`` prints; lab.json holds every run): the
    gold, the labels, and per study its main metric, seed means."""
    out = {k: result[k] for k in ("data", "pairs", "temperature", "against_gold") if k in result}
    out["gold"] = {k: result["gold"][k] for k in ("model", "length_spearman") if k in result["gold"]}
    if "prompt_sensitivity" in result["gold"]:
        out["gold"]["prefers_own_prompt"] = result["gold"]["prompt_sensitivity"]["prefers_own"]
    for k in ("proxy_gold_accuracy", "strength_spearman"):
        if k in result:
            out[k] = result[k]
    if "flips" in result:
        out["flips_auroc"] = {level: {who: v["auroc"] for who, v in per.items() if isinstance(v, dict) and "auroc" in v}
                              for level, per in result["flips"].items() if isinstance(per, dict)}
    if "denoise" in result:
        out["denoise"] = {k: result["denoise"][k] for k in ("lost", "best_preset", "recovered_share_best",
                                                            "below_baseline_at_0")}
    return out
