"""The gold-standard lab on hh-rlhf: learnability, strength fidelity, planted flips and denoising, graded
against the gold (`rmkit.lab`). Two golds (benchmarks/lab_gold_choice.py chose between them):

    .venv/bin/python benchmarks/lab.py                 # the default gold, SmolLM2's layer 10 (configs/lab_cpu.yaml):
                                                       # results/lab_smollm2.json, reusing lab/gold_hh_smollm2.parquet
    .venv/bin/python benchmarks/lab.py --gold mpnet    # the first gold (MPNet): results/lab.json, lab/gold_hh.parquet
    .venv/bin/python benchmarks/lab.py --fresh-gold    # encodes every text with the gold again (~35-55 min)
    .venv/bin/python benchmarks/lab.py --studies flips # reruns one study, keeping the other blocks of the results
    .venv/bin/python benchmarks/lab.py --studies denoise --set seeds=10 --set "denoise_ceiling=[flip, flip+margin]" \
        --results benchmarks/results/lab_smollm2_denoise_ceiling.json   # any LabConfig setting, as YAML

Writes the results, and the small derived artifacts benchmarks/lab/<gold>.parquet (gold difference per pair id;
no third-party text), <gold>.json (how the gold was made) and <gold>_head.npy."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import yaml
from rmkit.provenance import write_result
from rmkit.lab.hh import GOLDS, ROOT
from rmkit.config import load_config
from rmkit.lab import LabConfig, run_lab

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "lab_cpu.yaml"))
    parser.add_argument("--fresh-gold", action="store_true")
    parser.add_argument("--gold", choices=tuple(GOLDS), default="smollm2",
                        help="smollm2: the config's gold; mpnet: the lab's first gold (the best-of-n, shift, MetaRM "
                             "and second-domain results were measured against it)")
    parser.add_argument("--studies", default=None, help="comma-separated subset of the config's studies")
    parser.add_argument("--results", default=None, help="default: results/lab_smollm2.json or (mpnet) lab.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                        help="override one of the config's settings (repeatable), e.g. seeds=10")
    args = parser.parse_args()
    the = GOLDS[args.gold]
    results = args.results or str(the.result("lab.json"))
    if bad := [item for item in args.set if "=" not in item]:
        parser.error(f"--set takes KEY=YAML, got {bad}")
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    cfg: LabConfig = replace(load_config(LabConfig, args.config, overrides), **the.settings)
    cfg.data = str((ROOT / cfg.data).resolve()) if not Path(cfg.data).is_absolute() else cfg.data
    cfg.output_dir = str(ROOT / "runs" / "lab")
    gold = the.file(".parquet")
    if gold.exists() and not args.fresh_gold:
        cfg.gold_scores = str(gold)
        made = json.loads(gold.with_suffix(".json").read_text())
        if "prompt_aware" in made:  # its base gold plus a relevance term (lab_gold_relevance.py): check the base's
            made = json.loads((gold.parent / made["prompt_aware"]["base"]).read_text())
        if made["model"] != cfg.gold_model or made["head_l2"] != cfg.gold_head_l2 or \
                (cfg.gold_layer is not None and made["layer"] != cfg.gold_layer):
            raise SystemExit(f"{gold.with_suffix('.json')} is the gold of {made['model']} layer {made['layer']} L2 "
                             f"{made['head_l2']}, not the config's: use --fresh-gold to make the config's")
    if args.studies:
        cfg.studies = args.studies.split(",")
    result = run_lab(cfg)
    gold.parent.mkdir(parents=True, exist_ok=True)
    if not cfg.gold_scores:  # a reused gold's artifacts stay as committed (the results keep what this run saw)
        shutil.copy(Path(cfg.output_dir) / "gold.parquet", gold)
        shutil.copy(Path(cfg.output_dir) / "gold.json", gold.with_suffix(".json"))
        if (Path(cfg.output_dir) / "gold_head.npy").exists():  # the gold's head: to score new responses (best-of-n)
            shutil.copy(Path(cfg.output_dir) / "gold_head.npy", the.file("_head.npy"))
    result["data"] = os.path.relpath(cfg.data, ROOT)  # the committed file names no machine's path
    if args.studies and Path(results).exists():  # a rerun of some studies keeps the others' blocks (and the
        before = json.loads(Path(results).read_text())  # bon and shift blocks lab_bon.py writes)
        result = {**before, **result, "timings": {**before.get("timings", {}), **result["timings"]}}
    write_result(results, result, relative_to=ROOT)
    print(json.dumps({k: v for k, v in result.items() if k not in ("flips", "denoise")}, indent=1, default=float))


if __name__ == "__main__":
    main()
