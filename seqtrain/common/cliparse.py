"""Dataclass configs to command lines (via tyro), with `--config file.yaml` and one-line errors."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import tyro
import yaml

from seqtrain.common.errors import UserError

T = TypeVar("T")

_BOX_CHARS = re.compile(r"[│╭╮╰╯─]+")


def _one_line(tyro_stderr: str) -> str:
    """tyro draws errors in a box; keep the message lines (before the first rule) as one line."""
    words = []
    for line in tyro_stderr.splitlines()[1:]:
        if re.fullmatch(r"\s*│\s*─+\s*│\s*", line):
            break
        words.append(_BOX_CHARS.sub(" ", line).strip())
    message = " ".join(w for w in words if w)
    return message or "invalid command line (see --help)"


def parse_config(
    cls: type[T], argv: Sequence[str] | None, prog: str, description: str, default: T | None = None
) -> T:
    """Parse `argv` into `cls`; flags are the dataclass fields, help comes from field docstrings.

    `--config FILE.yaml` (anywhere in argv) loads defaults from a YAML file written by
    `dump_config`; flags given on the command line override it.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if default is None and "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise UserError("--config needs a YAML file")
        default = load_config(cls, Path(argv[i + 1]))
        del argv[i : i + 2]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return tyro.cli(
                cls,
                args=argv,
                prog=prog,
                description=description,
                default=default,
                config=(tyro.conf.OmitArgPrefixes,),
            )
    except SystemExit as e:
        if e.code not in (0, None):
            raise UserError(_one_line(err.getvalue())) from None
        sys.stderr.write(err.getvalue())
        raise


def config_to_dict(config: Any) -> dict:
    """A plain, YAML/JSON-safe dict of a (nested) config dataclass."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def config_from_dict(cls: type[T], data: dict) -> T:
    """Rebuild a (nested) config dataclass; unknown keys are a UserError naming them."""
    if not isinstance(data, dict):
        raise UserError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise UserError(f"unknown config key(s) for {cls.__name__}: {', '.join(unknown)}")
    return cls(**{name: _from_plain(hints[name], value) for name, value in data.items()})


def _from_plain(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    if dataclasses.is_dataclass(hint):
        return config_from_dict(hint, value)
    options = (
        typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType)
        else (hint,)
    )
    if Path in options:
        return Path(value)
    if any(typing.get_origin(o) is tuple for o in options):
        return tuple(value)
    return value


def dump_config(config: Any) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def load_config(cls: type[T], path: Path) -> T:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise UserError(f"cannot read config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UserError(f"config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    return config_from_dict(cls, data or {})
