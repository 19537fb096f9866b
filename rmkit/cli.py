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
    rmkit bon    PROMPTS             best-of-n with an RM or ensemble (rmkit.bon.run_bon)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .config import add_arguments, config_from_args
from .data import DataConfig, DataError, run_data
from .scoring import ScoreConfig, run_score
from .training import TrainConfig, train_reward_model


def _print(obj) -> None:
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun / accelerate launch, print once
        print(json.dumps(obj, indent=1, default=str))


def _cmd_setup(args) -> None:
    from .assets import setup

    _print(setup())


def _cmd_data(args) -> None:
    _print(run_data(config_from_args(DataConfig, args, {"data": args.source})))


def _cmd_train(args) -> None:
    _cmd_train_cfg(config_from_args(TrainConfig, args, {"data": args.source}))


def _cmd_train_cfg(cfg: TrainConfig) -> None:
    result = train_reward_model(cfg)
    _print(result.metrics)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"model saved to {result.output_dir / 'model'}")


def _cmd_score(args) -> None:
    _print(run_score(config_from_args(ScoreConfig, args, {"data": args.source, "model": args.model_path})))


def _cmd_audit(args) -> None:
    from .audit import AuditConfig, run_audit

    result = run_audit(config_from_args(AuditConfig, args, {"data": args.source}))
    if int(os.environ.get("RANK", "0")) == 0:
        result.report()
        print(f"report: {result.output_dir / 'report.html'}")


def _cmd_denoise(args) -> None:
    from .denoise import DenoiseConfig, run_denoise

    _print(run_denoise(config_from_args(DenoiseConfig, args, {"strength": args.strength_table})))


def _cmd_tsne(args) -> None:
    from .tsne import TsneConfig, run_tsne

    _print(run_tsne(config_from_args(TsneConfig, args, {"data": args.source})))


def _cmd_sample(args) -> None:
    from .policy import SampleConfig, run_sample

    _print(run_sample(config_from_args(SampleConfig, args, {"data": args.source})))


def _cmd_metarm(args) -> None:
    cfg = config_from_args(TrainConfig, args, {"data": args.source})
    if not cfg.meta_data:
        raise ValueError("rmkit metarm needs --meta-data (a meta set written by rmkit sample)")
    _cmd_train_cfg(cfg)


def _cmd_ppo(args) -> None:
    from .rl import PPOConfig, train_ppo

    _print(train_ppo(config_from_args(PPOConfig, args, {"data": args.source})))


def _cmd_rlhf(args) -> None:
    from .rlhf import RLHFConfig, run_rlhf

    _print(run_rlhf(config_from_args(RLHFConfig, args, {"data": args.source})))


def _cmd_judge(args) -> None:
    from .judge import JudgeRunConfig, run_judge

    _print(run_judge(config_from_args(JudgeRunConfig, args, {"data": args.source})))


def _cmd_serve(args) -> None:
    from .serve import ServeConfig, serve

    serve(config_from_args(ServeConfig, args, {"model": args.model_path}))


def _cmd_bon(args) -> None:
    from .bon import BonConfig, run_bon

    _print(run_bon(config_from_args(BonConfig, args, {"data": args.source})))


def _cmd_lab(args) -> None:
    from .lab import LabConfig, run_lab

    _print(run_lab(config_from_args(LabConfig, args, {"data": args.source})))


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    # allow_abbrev=False: a mistyped flag (--max-train-pair) must be an error, not another flag's prefix.
    parser = argparse.ArgumentParser(prog="rmkit", description="Robust reward models for RLHF (arXiv 2401.06080).",
                                     allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"rmkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, fn, cls, help_text: str, positionals: list[tuple[str, str]]):
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        for pos, pos_help in positionals:
            p.add_argument(pos, nargs="?", default=None, help=pos_help)
        if cls is not None:
            p.add_argument("--config", help="YAML file of settings (flags override it)")
            add_arguments(p, cls)
        p.set_defaults(fn=fn)

    command("setup", _cmd_setup, None, "prepare the offline default models (MiniLM, SmolLM2) once", [])
    command("data", _cmd_data, DataConfig, "inspect preference data: formats, row statuses, lengths, splits",
            [("source", "a file, directory or hub dataset name")])
    command("train", _cmd_train, TrainConfig, "train a reward model",
            [("source", "preference data (overrides the config's `data`)")])
    from .audit import AuditConfig

    command("audit", _cmd_audit, AuditConfig, "preference strength of every pair from an ensemble, with a report",
            [("source", "preference data to audit")])
    from .denoise import DenoiseConfig

    command("denoise", _cmd_denoise, DenoiseConfig, "flip, drop, margins or soft labels from an audit's strength",
            [("strength_table", "strength.parquet from rmkit audit")])
    from .tsne import TsneConfig

    command("tsne", _cmd_tsne, TsneConfig, "t-SNE of chosen vs rejected features, with separation scores",
            [("source", "preference data")])
    from .judge import JudgeRunConfig
    from .policy import SampleConfig

    command("sample", _cmd_sample, SampleConfig, "sample k responses per prompt from a policy (MetaRM's meta set)",
            [("source", "prompts: preference data or a file with a prompt column")])
    command("metarm", _cmd_metarm, TrainConfig, "train a reward model with MetaRM on a meta set (Algorithm 1)",
            [("source", "preference data (overrides the config's `data`)")])
    from .rl import PPOConfig
    from .rlhf import RLHFConfig
    from .serve import ServeConfig

    command("ppo", _cmd_ppo, PPOConfig, "PPO (PPO-max) of a policy against a reward model, on one machine",
            [("source", "prompts: preference data or a file with a prompt column (overrides `data`)")])
    command("rlhf", _cmd_rlhf, RLHFConfig, "iterative RLHF: rounds of meta set, MetaRM, PPO and evaluation",
            [("source", "preference data for the reward model (overrides `data`)")])
    command("judge", _cmd_judge, JudgeRunConfig, "an LLM judge (OpenAI-compatible API): label pairs or compare policies",
            [("source", "preference data (task pairs) or a prompt/answer_a/answer_b table (compare)")])
    command("serve", _cmd_serve, ServeConfig, "serve a reward model over HTTP (OpenRLHF /get_reward, /score, /score_pairs)",
            [("model_path", "a saved reward model")])
    from .bon import BonConfig
    from .lab import LabConfig

    command("bon", _cmd_bon, BonConfig, "best-of-n sampling from a policy, picked by a reward model or an ensemble",
            [("source", "prompts: preference data or a file with a prompt column")])

    command("lab", _cmd_lab, LabConfig, "gold-standard lab: a gold RM labels real pairs; studies grade proxies against it",
            [("source", "real prompts and responses with human labels (the gold's head learns from them)")])
    command("score", _cmd_score, ScoreConfig, "score every pair of a dataset with a reward model",
            [("source", "preference data"), ("model_path", "a saved reward model")])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (DataError, ValueError, FileNotFoundError) as e:
        print(f"rmkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
