"""Config dataclasses <-> YAML files <-> command-line flags.

Every rmkit job takes one dataclass. Its fields carry their help text in ``metadata["help"]``; the
CLI is generated from them. Precedence: dataclass defaults < YAML file (``--config``) < ``--key value``
flags. The resolved config is saved beside every output (``config.yaml``) so a run can be repeated
with ``--config that/config.yaml``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def setting(default: Any, help: str, **kw) -> Any:
    """A dataclass field with its help text (shown by ``--help`` and in the docs)."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


def _base_type(tp: Any) -> Any:
    """``int | None`` -> int; ``Optional[str]`` -> str; others unchanged."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def _coerce(value: Any, tp: Any, name: str) -> Any:
    base = _base_type(tp)
    if value is None:
        return None
    if isinstance(value, str) and value.lower() in ("none", "null") and base is not str:
        return None
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if base in (int, float, str):
            return base(value)
        if typing.get_origin(base) in (list, tuple) or base in (list, tuple):
            if isinstance(value, str):
                value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
            inner = typing.get_args(base)
            return [(_coerce(v, inner[0], name) if inner else v) for v in value]
        if typing.get_origin(base) is dict or base is dict:
            return yaml.safe_load(value) if isinstance(value, str) else dict(value)
    except (TypeError, ValueError):
        raise ValueError(f"setting '{name}': cannot read {value!r} as {getattr(base, '__name__', base)}") from None
    return value


def from_dict(cls: type[T], data: dict[str, Any], *, source: str = "config") -> T:
    """Build a config, checking that every key is a known setting (typos fail loudly)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{source}: unknown setting(s) {unknown} for {cls.__name__}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints[k], k) for k, v in data.items()}
    return cls(**kwargs)


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Defaults, then the YAML file at ``path``, then ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a config file must be a mapping of setting: value")
        data.update(loaded)
    data.update(overrides or {})
    return from_dict(cls, data, source=str(path or "overrides"))


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--name`` flag per field (underscores or dashes), defaulting to 'not given'."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        tp = getattr(_base_type(hints[f.name]), "__name__", str(hints[f.name]))
        parser.add_argument(
            f"--{f.name}", f"--{f.name.replace('_', '-')}", dest=f.name, default=argparse.SUPPRESS,
            metavar=tp.upper(),  # argparse %-formats help strings: a literal % must be doubled
            help=f"{f.metadata.get('help', '')} (default: {default!r})".replace("%", "%%"),
        )


def config_from_args(cls: type[T], args: argparse.Namespace, positional: dict[str, Any] | None = None) -> T:
    """The config for a CLI call: ``--config`` YAML, then flags given, then positional arguments."""
    names = {f.name for f in dataclasses.fields(cls)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    overrides.update({k: v for k, v in (positional or {}).items() if v is not None})
    return load_config(cls, getattr(args, "config", None), overrides)
