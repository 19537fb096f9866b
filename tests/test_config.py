"""Config dataclasses: YAML, overrides, typos, and the saved copy that repeats a run."""

import argparse

import pytest

from rmkit.config import add_arguments, config_from_args, load_config, save_config
from rmkit.training import TrainConfig


def test_yaml_then_overrides_then_saved_copy(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1.0e-4\nepochs: 2\nsplit_fractions: [0.8, 0.1, 0.1]\nhead_lr: null\n")
    cfg = load_config(TrainConfig, path, {"epochs": "3", "eval_test": "false"})
    assert cfg.lr == 1e-4 and cfg.epochs == 3.0 and cfg.split_fractions == [0.8, 0.1, 0.1]
    assert cfg.eval_test is False and cfg.head_lr is None and cfg.batch_size == 16
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(TrainConfig, tmp_path / "saved.yaml") == cfg


def test_unknown_and_mistyped_settings_fail_loudly(tmp_path):
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['learning_rate'\]"):
        load_config(TrainConfig, None, {"learning_rate": 1})
    with pytest.raises(ValueError, match="setting 'batch_size': cannot read 'many' as int"):
        load_config(TrainConfig, None, {"batch_size": "many"})


def test_cli_flags_from_the_dataclass():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_arguments(parser, TrainConfig)
    args = parser.parse_args(["--max-length", "64", "--train_layers", "top:2"])
    cfg = config_from_args(TrainConfig, args, {"data": "x.jsonl"})
    assert cfg.max_length == 64 and cfg.train_layers == "top:2" and cfg.data == "x.jsonl"
    assert cfg.lr == TrainConfig().lr  # flags not given keep their defaults


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert configs
    from rmkit.audit import AuditConfig
    from rmkit.lab import LabConfig
    from rmkit.rl import PPOConfig

    kinds = {"train": TrainConfig, "audit": AuditConfig, "ppo": PPOConfig, "lab": LabConfig}
    for path in configs:
        cfg = load_config(kinds[path.name.split("_")[0]], path)
        if isinstance(cfg, (AuditConfig, LabConfig)):
            cfg.check()
    # audit_default.yaml says it is what `rmkit audit DATA` does with no flags: it must not drift from the defaults
    # (it once kept calibration: temperature after the default became length).
    import yaml

    written = yaml.safe_load((Path(__file__).parents[1] / "configs" / "audit_default.yaml").read_text())
    defaults = AuditConfig()
    drift = {k: (v, getattr(defaults, k)) for k, v in written.items()
             if k not in ("data", "output_dir") and getattr(defaults, k) != v}
    assert not drift, drift


def test_yaml_that_would_run_code_or_explode_is_refused(tmp_path):
    """Issue 41, item 11 and its clear-errors list: a YAML alias bomb (335 bytes -> 48 s and a 17.5 MB config.yaml)
    and !!python/object tags are refused by name; values that are not what a setting holds never pass silently."""
    import time

    from rmkit.audit import AuditConfig

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text('finetune_settings:\n  a: &a ["x","x","x","x","x","x","x","x","x"]\n'
                    + "".join(f"  {c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
                              for p, c in zip("abcdefgh", "bcdefghi")))
    t0 = time.time()
    with pytest.raises(ValueError, match=r"bomb\.yaml: not a YAML file rmkit reads \(aliases"):
        load_config(AuditConfig, bomb)
    assert time.time() - t0 < 5
    tag = tmp_path / "tag.yaml"
    tag.write_text("data: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ValueError, match=r"tag\.yaml: not a YAML file rmkit reads"):
        load_config(AuditConfig, tag)
    with pytest.raises(ValueError, match=r"setting 'members': cannot read 2\.7 as int"):
        load_config(AuditConfig, None, {"members": 2.7})
    assert load_config(AuditConfig, None, {"members": 2.0}).members == 2
    with pytest.raises(ValueError, match=r"setting 'finetune_settings': cannot read 'not a dict' as dict"):
        load_config(AuditConfig, None, {"finetune_settings": "not a dict"})
    with pytest.raises(ValueError, match=r"setting 'members': cannot read True as int"):
        load_config(AuditConfig, None, {"members": True})
    with pytest.raises(ValueError, match=r"setting 'min_confidence': cannot read nan as float"):
        load_config(AuditConfig, None, {"min_confidence": "nan"})
    with pytest.raises(FileNotFoundError, match="no such config file"):
        load_config(AuditConfig, tmp_path / "missing.yaml")


def test_max_pairs_means_one_thing_in_every_command():
    """Issue 46, item 2: train --max-pairs took the first pairs of each split, the audit a seeded stratified sample,
    score had none. Every command that reads pairs now takes max_pairs with one help text and one sampler."""
    import dataclasses
    import importlib

    from rmkit.cli import COMMANDS, _config_class
    from rmkit.data import MAX_PAIRS_HELP

    reads_pairs = {"train", "score", "audit", "tsne", "judge", "lab", "metarm"}
    for name in reads_pairs:
        fields = {f.name: f for f in dataclasses.fields(_config_class(COMMANDS[name]))}
        assert "max_pairs" in fields, name
        assert fields["max_pairs"].metadata["help"] == MAX_PAIRS_HELP, name
    for module in ("rmkit.tsne", "rmkit.judge", "rmkit.scoring", "rmkit.lab.proxies", "rmkit.training", "rmkit.audit"):
        src = importlib.import_module(module).__loader__.get_source(module)
        assert "stratified_sample" in src or ".sample(" in src, module


# Settings whose name is shared by commands that describe it with their own details, each with the meaning they
# share (every help text of the name must say it). Any other name shared by two commands has one help text.
SAME_MEANING = {
    "output_dir": "", "data": "", "seed": "seed", "batch_size": "", "max_length": "token", "model": "",
    "precision": "auto", "device": "where models run", "splits_file": "splits", "split": "split",
    "split_seed": "seed", "split_fractions": "fractions", "eval_every": "every N", "save_every": "every N",
    "resume": "checkpoint", "max_grad_norm": "gradient-norm clip", "policy": "causal LM", "reward_model": "reward model",
    "aggregation": "mean, min", "uwo_lambda": "lambda of uwo", "gold": "gold", "temperature": "sampling temperature",
    "max_prompt_tokens": "prompts", "max_prompts": "N", "meta_prompts": "prompts", "eval_prompts": "prompts",
    "cache_dir": "cache", "api_key_env": "environment variable", "min_confidence": "p_label_wrong",
    "strength": "strength.parquet", "models": "comma-separated",
}


def test_a_setting_name_means_one_thing_across_commands():
    """Issue 45: `--temperature` had four meanings (the lab's was a label temperature: now label_temperature),
    `--model` an LLM in judge and an RM elsewhere (now --judge-model). A name two commands share has one help text,
    or is one of SAME_MEANING, every one of whose help texts states the shared meaning."""
    import dataclasses

    from rmkit.cli import COMMANDS, _config_class

    helps: dict[str, dict[str, list[str]]] = {}
    for name, cmd in COMMANDS.items():
        for f in dataclasses.fields(_config_class(cmd)):
            helps.setdefault(f.name, {}).setdefault(f.metadata.get("help", ""), []).append(name)
    bad = []
    for field, texts in helps.items():
        if len(texts) == 1:
            continue
        if field not in SAME_MEANING:
            bad.append(f"--{field}: {len(texts)} help texts ({', '.join(c for cs in texts.values() for c in cs)})")
        else:
            bad += [f"--{field} in {cmds}: does not say '{SAME_MEANING[field]}'" for text, cmds in texts.items()
                    if SAME_MEANING[field].lower() not in text.lower()]
    assert not bad, bad
