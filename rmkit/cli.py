"""The ``rmkit`` command line: a thin layer over the library.

Each subcommand builds its config dataclass (defaults < ``--config FILE.yaml`` < ``--key value``),
calls one library function, and prints what it returned.

    rmkit setup                      prepare the offline default models once
    rmkit data   DATA                formats, statuses, lengths; --output-dir writes rows and splits
    rmkit train  [DATA]              train a reward model            (rmkit.training.train_reward_model)
    rmkit score  DATA MODEL          score every pair with a model   (rmkit.scoring.run_score)
    rmkit audit  DATA                strength, categories, report     (rmkit.audit.run_audit)
    rmkit denoise STRENGTH           a cleaned training set          (rmkit.denoise.run_denoise)
    rmkit tsne   DATA --models A,B   feature separation and t-SNE    (rmkit.tsne.run_tsne)
    rmkit sample DATA                MetaRM's meta set from a policy  (rmkit.policy.run_sample)
    rmkit metarm [DATA] --meta-data  train a reward model with MetaRM (rmkit.training.train_reward_model)
    rmkit ppo    [PROMPTS]           PPO of a policy against an RM    (rmkit.rl.train_ppo)
    rmkit rlhf   [DATA]              rounds of sample, MetaRM, PPO    (rmkit.rlhf.run_rlhf)
    rmkit judge  DATA                LLM-judge labels or win/tie/lose (rmkit.judge.run_judge)
    rmkit serve  MODEL               reward model over HTTP          (rmkit.serve.serve)
    rmkit lab    DATA                gold-standard lab and studies   (rmkit.lab.run_lab)
    rmkit average RUN RUN ...        weight-average reward models (WARM) (rmkit.warm.run_average)
    rmkit bon    PROMPTS             best-of-n with an RM or ensemble (rmkit.bon.run_bon)
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass

from .config import JobFailed, add_arguments, check_inputs, config_from_args
from .data import DataError
from .files import json_text


def _print(obj) -> None:
    if _is_main():
        print(json_text(obj))  # NaN (an undefined metric) prints as null


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0  # under torchrun / accelerate launch, print once


def _show_training(result) -> None:
    _print(result.metrics)
    if _is_main():
        print(f"model saved to {result.output_dir / 'model'}")


def _show_audit(result) -> None:
    if _is_main():
        result.report()
        print(f"report: {result.output_dir / 'report.html'}")


def _show_lab(result) -> None:
    if _is_main():
        _print(importlib.import_module("rmkit.lab").lab_summary(result))
        print("every study's runs: lab.json in the output directory")


def _check_metarm(cfg) -> None:
    if not cfg.meta_data:
        raise ValueError("rmkit metarm needs --meta-data (a meta set written by rmkit sample)")


@dataclass(frozen=True)
class Command:
    """One subcommand: the library function it calls and the config dataclass it builds. Named by import path,
    so ``rmkit --help`` and ``rmkit audit --help`` import only what they show (torch is not needed to list
    the commands)."""

    module: str
    config: str
    function: str
    help: str
    positionals: tuple[tuple[str, str, str], ...] = ()  # (argument, config field, help)
    show: object = _print  # how the function's return value is shown
    before: object = None  # a check of the config before the call (e.g. metarm needs a meta set)


_DATA = (("source", "data", "preference data (overrides the config's `data`)"),)
_PROMPTS = (("source", "data", "prompts: preference data or a file with a prompt column"),)
COMMANDS: dict[str, Command] = {
    "data": Command("data", "DataConfig", "run_data", "inspect preference data: formats, row statuses, lengths, splits",
                    (("source", "data", "a file, directory or hub dataset name"),)),
    "train": Command("training", "TrainConfig", "train_reward_model", "train a reward model", _DATA,
                     show=_show_training),
    "score": Command("scoring", "ScoreConfig", "run_score", "score every pair of a dataset with a reward model",
                     (("source", "data", "preference data"), ("model_path", "model", "a saved reward model"))),
    "audit": Command("audit", "AuditConfig", "run_audit",
                     "preference strength of every pair from an ensemble, with a report",
                     (("source", "data", "preference data to audit"),), show=_show_audit),
    "denoise": Command("denoise", "DenoiseConfig", "run_denoise",
                       "flip, drop, margins or soft labels from an audit's strength",
                       (("strength_table", "strength", "strength.parquet from rmkit audit"),)),
    "tsne": Command("tsne", "TsneConfig", "run_tsne", "t-SNE of chosen vs rejected features, with separation scores",
                    (("source", "data", "preference data"),)),
    "sample": Command("policy", "SampleConfig", "run_sample",
                      "sample k responses per prompt from a policy (MetaRM's meta set)", _PROMPTS),
    "metarm": Command("training", "TrainConfig", "train_reward_model",
                      "train a reward model with MetaRM on a meta set (Algorithm 1)", _DATA, show=_show_training,
                      before=_check_metarm),
    "ppo": Command("rl", "PPOConfig", "train_ppo", "PPO (PPO-max) of a policy against a reward model, on one machine",
                   (("source", "data", "prompts: preference data or a file with a prompt column (overrides `data`)"),)),
    "rlhf": Command("rlhf", "RLHFConfig", "run_rlhf",
                    "iterative RLHF: rounds of meta set, MetaRM, PPO and evaluation",
                    (("source", "data", "preference data for the reward model (overrides `data`)"),)),
    "judge": Command("judge", "JudgeRunConfig", "run_judge",
                     "an LLM judge (OpenAI-compatible API): label pairs or compare policies",
                     (("source", "data", "preference data (task pairs) or a prompt/answer_a/answer_b table (compare)"),)),
    "serve": Command("serve", "ServeConfig", "serve",
                     "serve a reward model over HTTP (OpenRLHF /get_reward, /score, /score_pairs)",
                     (("model_path", "model", "a saved reward model"),), show=lambda _: None),
    "bon": Command("bon", "BonConfig", "run_bon",
                   "best-of-n sampling from a policy, picked by a reward model or an ensemble", _PROMPTS),
    "average": Command("warm", "AverageConfig", "run_average",
                       "average the weights of reward models trained from one initialisation (WARM)",
                       (("members", "models", "the members (rmkit train output folders), space-separated"),)),
    "lab": Command("lab", "LabConfig", "run_lab",
                   "gold-standard lab: a gold RM labels real pairs; studies grade proxies against it",
                   (("source", "data", "real prompts and responses with human labels (the gold's head learns from "
                                       "them)"),), show=_show_lab),
}


# Commands whose settings live in rmkit.configs (their job modules import torch); the others' in the job module.
_CONFIG_MODULES = {"training", "scoring", "audit", "tsne", "policy", "rl", "rlhf", "serve", "bon", "lab", "warm"}


def _config_class(cmd: Command) -> type:
    """The command's config dataclass, imported without its job module (torch and transformers load only when the
    command runs, not for ``--help`` or a mistyped setting)."""
    where = f"rmkit.configs.{cmd.module}" if cmd.module in _CONFIG_MODULES else f"rmkit.{cmd.module}"
    return getattr(importlib.import_module(where), cmd.config)


def _run(name: str, args: argparse.Namespace) -> None:
    cmd = COMMANDS[name]
    cfg = config_from_args(_config_class(cmd), args, {field: getattr(args, arg) for arg, field, _ in cmd.positionals})
    check_inputs(cfg)  # a mistyped path fails now, before the job's module (torch) is imported
    if cmd.before is not None:
        cmd.before(cfg)
    cmd.show(getattr(importlib.import_module(f"rmkit.{cmd.module}"), cmd.function)(cfg))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``rmkit`` parser. ``only``: add the settings of that command alone (what `main` does, so a call
    imports one module); None: every command's."""
    from . import __version__

    # allow_abbrev=False: a mistyped flag (--max-train-pair) must be an error, not another flag's prefix.
    parser = argparse.ArgumentParser(prog="rmkit", description="Robust reward models for RLHF (arXiv 2401.06080).",
                                     allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"rmkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    parser.set_defaults(subparsers={})
    p = sub.add_parser("setup", help="prepare the offline default models (MiniLM, SmolLM2) once",
                       description="prepare the offline default models (MiniLM, SmolLM2) once", allow_abbrev=False)
    p.set_defaults(fn=lambda args: _print(importlib.import_module("rmkit.assets").setup()))
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help, allow_abbrev=False)
        for arg, _, arg_help in cmd.positionals:
            p.add_argument(arg, nargs="*" if arg == "members" else "?", default=None, help=arg_help)
        if only is None or only == name:
            p.add_argument("--config", help="YAML file of settings (flags override it)")
            add_arguments(p, _config_class(cmd))
        p.set_defaults(fn=lambda args, name=name: _run(name, args))
        parser.get_default("subparsers")[name] = p
    return parser


def _unknown(parser: argparse.ArgumentParser, command: str | None, unknown: list[str]) -> None:
    """A mistyped flag is an error of the command it was given to, with its usage and the closest flag it has."""
    import difflib

    sub = parser.get_default("subparsers").get(command) if command else None
    target = sub or parser
    flags = [o for a in target._actions for o in a.option_strings if o.startswith("--")]
    hints = []
    for arg in unknown:
        if arg.startswith("--"):
            close = difflib.get_close_matches(arg.split("=", 1)[0], flags, n=1, cutoff=0.6)
            if close:
                hints.append(f"{arg}: did you mean {close[0]}?")
    target.error(f"unrecognized arguments: {' '.join(unknown)}" + ("; " + "; ".join(hints) if hints else ""))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=chosen if chosen in COMMANDS else "")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _unknown(parser, getattr(args, "command", None), unknown)
    try:
        args.fn(args)
    except (DataError, ValueError, FileNotFoundError) as e:
        print(f"rmkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except JobFailed as e:  # a job that ran and failed by its own measure (e.g. judge: most items got no verdict)
        print(f"rmkit {args.command}: {e}", file=sys.stderr)
        return 1
    if "torch.distributed" in sys.modules:  # the command ran torch; a multi-process run closes its group
        importlib.import_module("rmkit.hardware").end_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
