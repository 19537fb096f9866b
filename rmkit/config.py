"""Config dataclasses <-> YAML files <-> command-line flags.

Every rmkit job takes one dataclass. Its fields carry their help text in ``metadata["help"]``; the
CLI is generated from them. Precedence: dataclass defaults < YAML file (``--config``) < ``--key value``
flags. The resolved config is saved beside every output (``config.yaml``) so a run can be repeated
with ``--config that/config.yaml``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

T = TypeVar("T")


class JobFailed(RuntimeError):
    """A job that ran and failed by its own measure (e.g. most judge items got no verdict): its outputs are written,
    and ``rmkit`` exits with code 1 and this message instead of 0."""


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
    if origin is typing.Literal and None in typing.get_args(tp):  # Literal["a", None]: the choices without None
        return typing.Literal[tuple(a for a in typing.get_args(tp) if a is not None)]
    return tp


def _optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _coerce(value: Any, tp: Any, name: str) -> Any:
    base = _base_type(tp)
    if value is None:
        return None
    if _optional(tp) and isinstance(value, str) and value.strip().lower() in ("none", "null"):
        return None
    if typing.get_origin(base) is typing.Literal:
        choices = typing.get_args(base)
        if isinstance(value, str) and value.lower() in ("none", "null") and None in choices:
            return None
        match = [c for c in choices if c is not None and (c == value or str(c) == str(value))]
        if not match:
            raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
        return match[0]
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
        if base in (int, float):
            if isinstance(value, bool) or isinstance(value, (list, dict)):
                raise ValueError(value)
            if base is int and isinstance(value, float):
                if not value.is_integer():  # int(2.7) is 2: a setting silently other than written
                    raise ValueError(value)
                value = int(value)
            value = base(value)
            if base is float and not math.isfinite(value):
                raise ValueError(value)
            return value
        if base is str:
            if isinstance(value, (list, dict)):
                raise ValueError(value)
            return str(value)
        if typing.get_origin(base) in (list, tuple) or base in (list, tuple):
            if isinstance(value, str):
                value = load_yaml(name, text=value) if value.strip().startswith("[") else value.split(",")
            if not isinstance(value, (list, tuple)):
                raise ValueError(value)
            inner = typing.get_args(base)
            return [(_coerce(v, inner[0], name) if inner else v) for v in value]
        if typing.get_origin(base) is dict or base is dict:
            value = load_yaml(name, text=value) if isinstance(value, str) else value
            if value is None:
                return {}
            if not isinstance(value, dict):
                raise ValueError(value)
            return dict(value)
    except (TypeError, ValueError, OverflowError):
        shown = repr(value) if len(repr(value)) < 200 else repr(value)[:200] + "..."
        kind = getattr(typing.get_origin(base), "__name__", None) or getattr(base, "__name__", base)
        raise ValueError(f"setting '{name}': cannot read {shown} as {kind}") from None
    return value


def from_dict(cls: type[T], data: dict[str, Any], *, source: str = "config") -> T:
    """Build a config, checking that every key is a known setting (typos fail loudly)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{source}: unknown setting(s) {unknown} for {cls.__name__}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints[k], k) for k, v in data.items()}
    return validate(cls(**kwargs))


def check_layers_spec(name: str, spec: str) -> None:
    """``all``, ``head`` or ``top:N`` (N >= 1): which parameters of a model train."""
    if spec in ("all", "head"):
        return
    n = spec[4:] if spec.startswith("top:") else ""
    if not n.isdigit() or int(n) < 1:
        raise ValueError(f"setting '{name}': {spec!r} is not all, head or top:N (N a positive integer)")


def check_positive(cfg: Any, *names: str, allow_zero: bool = False) -> None:
    """Each named setting is > 0 (or >= 0 with ``allow_zero``); None passes (it means 'default')."""
    for n in names:
        v = getattr(cfg, n)
        if v is not None and (v < 0 or (v == 0 and not allow_zero)):
            raise ValueError(f"setting '{n}' must be {'>= 0' if allow_zero else '> 0'}, got {v}")


def require_same_settings(before: dict[str, Any], now: dict[str, Any], where: str | Path, hint: str, *,
                          what: str = "was written with") -> None:
    """Refuse to continue work written with other settings, naming each one that differs: a resumed job must
    give the same numbers as an uninterrupted one, or say why it cannot."""
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        raise ValueError(f"{where} {what} other settings ({', '.join(changed)}); {hint}")


def require_saved_settings(saved_config: str | Path, cfg: Any, names: Sequence[str], where: str | Path,
                           hint: str) -> None:
    """`require_same_settings` against the config a job saved beside its output (``saved_config``, YAML), for
    the settings ``names`` its results depend on; nothing to compare where no config was saved."""
    if not Path(saved_config).exists():
        return
    before = load_yaml(saved_config) or {}
    require_same_settings({k: before.get(k, getattr(cfg, k)) for k in names}, {k: getattr(cfg, k) for k in names},
                          where, hint)


def validate(cfg: T) -> T:
    """Check a config before any model loads: every ``Literal`` field holds one of its choices, then the
    config's own ``check()`` (ranges, combinations, nested settings). Every job calls it first; `from_dict`
    (YAML, the command line) calls it too, so a typo fails before any work starts."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        base = _base_type(hints[f.name])
        value = getattr(cfg, f.name)
        if typing.get_origin(base) is typing.Literal and value is not None and value not in typing.get_args(base):
            raise ValueError(f"{f.name} must be one of {', '.join(map(str, typing.get_args(base)))}; got {value!r}")
    for klass in reversed(type(cfg).__mro__):  # each class's own check (a base such as DataSource has its own)
        check = vars(klass).get("check")
        if callable(check):
            check(cfg)
    return cfg


class _NoAliasLoader(yaml.SafeLoader):
    """YAML's safe loader without anchors and aliases: a config never needs them, and nested aliases (a 'billion
    laughs' file of 335 bytes) expand into gigabytes when the config is saved again."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(None, None, "aliases (*name) are not allowed in rmkit's YAML",
                                                    event.start_mark)
        return super().compose_node(parent, index)


def load_yaml(path: str | Path, text: str | None = None) -> Any:
    """A YAML file (or ``text``) as plain values, or a ValueError naming the file and what is wrong: no aliases, no
    ``!!python/...`` tags (safe loading refuses them), no unreadable bytes."""
    try:
        text = Path(path).read_text(encoding="utf-8") if text is None else text
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not a YAML file rmkit reads ({' '.join(str(e).split())[:300]})") from None


# Settings that name something a job reads (as opposed to writes): a local path among them must exist.
INPUT_SETTINGS = ("data", "model", "models", "policy", "reward_model", "strength", "reviews", "ids", "gold_scores",
                  "gold_head", "meta_data", "judge_labels", "ptx_data", "prompts")
_DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".csv", ".zip", ".npy", ".yaml")


def _looks_local(name: str) -> bool:
    """A name meant as a local path (not an alias or a hub id ``owner/name``)."""
    return (name.startswith((".", "/", "~")) or name.lower().endswith(_DATA_SUFFIXES) or name.count("/") > 1
            or "\\" in name)


def check_inputs(cfg: Any) -> None:
    """Every input setting that names a local path names one that exists: checked as the command line builds the
    config, before the job's module (torch, transformers) is even imported, so a typo in a path costs no model load.
    Hub ids and aliases are checked where they load."""
    for f in dataclasses.fields(cfg):
        if f.name not in INPUT_SETTINGS:
            continue
        value = getattr(cfg, f.name)
        names = value if isinstance(value, list) else str(value).split(",") if isinstance(value, str) else []
        for name in (n.strip() for n in names):
            if name and _looks_local(name) and not Path(name).expanduser().exists():
                raise FileNotFoundError(f"{f.name}: {name}: no such file or directory")


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Defaults, then the YAML file at ``path``, then ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        loaded = load_yaml(path) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a config file must be a mapping of setting: value")
        data.update(loaded)
    data.update(overrides or {})
    return from_dict(cls, data, source=str(path or "overrides"))


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    from .files import atomic_write_text

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--name-with-dashes`` flag per field (``--name_with_underscores`` accepted, not listed), defaulting
    to 'not given'; a ``Literal`` field lists its choices."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        tp = getattr(_base_type(hints[f.name]), "__name__", str(hints[f.name]))
        choices = typing.get_args(_base_type(hints[f.name])) if typing.get_origin(_base_type(hints[f.name])) is \
            typing.Literal else None
        dashed = f"--{f.name.replace('_', '-')}"
        parser.add_argument(
            dashed, dest=f.name, default=argparse.SUPPRESS,
            metavar="{" + ",".join(map(str, choices)) + "}" if choices else tp.upper(),
            # argparse %-formats help strings: a literal % must be doubled
            help=_help_text(f.metadata.get("help", ""), default).replace("%", "%%"),
        )
        if "_" in f.name:  # the field's own spelling works too, unlisted: each option shows once in --help
            parser.add_argument(f"--{f.name}", dest=f.name, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _help_text(text: str, default: Any) -> str:
    """A setting's help with its default, said once: a help that names its own default ("default: lr") keeps it."""
    if "(default:" in text or "default:" in text.split(";")[-1]:
        return text
    return f"{text} (default: {default!r})"


def config_from_args(cls: type[T], args: argparse.Namespace, positional: dict[str, Any] | None = None) -> T:
    """The config for a CLI call: ``--config`` YAML, then flags given, then positional arguments."""
    names = {f.name for f in dataclasses.fields(cls)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    overrides.update({k: v for k, v in (positional or {}).items() if v is not None and v != []})
    return load_config(cls, getattr(args, "config", None), overrides)
