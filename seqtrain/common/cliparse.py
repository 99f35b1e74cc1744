"""Dataclass configs to command lines (via tyro), with `--config file.yaml`, `--print-config`
and one-line errors."""

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
from typing import Annotated, Any, TypeVar

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


@dataclasses.dataclass(kw_only=True)  # after any config's required (positional) fields
class FileFlags:
    """The flags every command has beside its own config's fields."""

    config: Annotated[Path | None, tyro.conf.arg(metavar="PATH", help_behavior_hint="")] = None
    """YAML file (a run's config.yaml, a recipe) replacing the defaults; other flags override it."""
    print_config: tyro.conf.FlagCreatePairsOff[bool] = False
    """Print the resolved config as YAML (what the run's config.yaml holds) and exit."""


def parse_config(cls: type[T], argv: Sequence[str] | None, prog: str, description: str) -> T:
    """Parse `argv` into `cls`; flags are the dataclass fields, help comes from field docstrings.

    `--config FILE.yaml` (or `--config=FILE.yaml`, anywhere in argv) loads defaults from a YAML
    file written by `dump_config`; flags given on the command line override it. `--print-config`
    prints the resolved config and exits 0.
    """
    path, argv = _take_config_path(list(sys.argv[1:] if argv is None else argv))
    default = load_config(cls, path) if path else None
    # tyro parses cls plus FileFlags, so --help lists them; --config was taken out above.
    with_flags = dataclasses.make_dataclass(cls.__name__, [], bases=(cls, FileFlags))
    flagged_default = None if default is None else with_flags(**_fields(default))
    parsed = _tyro_cli(with_flags, argv, prog, description, flagged_default)
    config = cls(**_fields(parsed, of=cls))
    if parsed.print_config:
        print(dump_config(config), end="")
        raise SystemExit(0)
    return config


def _take_config_path(argv: list[str]) -> tuple[Path | None, list[str]]:
    """The path of `--config PATH` or `--config=PATH`, and argv without it."""
    found = [i for i, arg in enumerate(argv) if arg == "--config" or arg.startswith("--config=")]
    if not found:
        return None, argv
    if len(found) > 1:
        raise UserError("--config is given more than once")
    i = found[0]
    _, inline, value = argv[i].partition("=")
    if not inline:
        value = argv[i + 1] if i + 1 < len(argv) else ""
    if not value or value.startswith("-"):
        raise UserError("--config needs a YAML file")
    return Path(value), argv[:i] + argv[i + (1 if inline else 2) :]


def _fields(config: Any, of: type | None = None) -> dict[str, Any]:
    """The init values of `config`'s fields (of the dataclass `of`, default its own)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(of or config) if f.init}


def _tyro_cli(cls: type[T], argv: list[str], prog: str, description: str, default: T | None) -> T:
    """tyro.cli with flat flag names; a bad command line is a UserError of one line."""
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
