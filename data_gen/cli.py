"""`seqtrain-data`: generate, finalize, verify, preview; each subcommand parses its dataclass."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from data_gen.config import GenConfig
from data_gen.finalize import FinalizeConfig, finalize
from data_gen.generate import generate
from data_gen.preview import PreviewConfig, preview
from data_gen.verify import VerifyConfig, verify
from seqtrain.cliparse import parse_config
from seqtrain.errors import UserError, report_user_errors

PROG = "seqtrain-data"


def _verify(cfg: VerifyConfig) -> None:
    bad = verify(cfg.out)
    if bad:
        print(f"{PROG}: {bad} bad shard(s) in {cfg.out}", file=sys.stderr)
        raise SystemExit(1)


# name -> (config class, action, one-line description for the overview)
COMMANDS: dict[str, tuple[type, Callable[[Any], object], str]] = {
    "generate": (GenConfig, generate, "render shards (this node's part) and, alone, the manifest"),
    "finalize": (FinalizeConfig, lambda c: finalize(c.out), "merge all nodes' parts: manifest"),
    "verify": (VerifyConfig, _verify, "check every shard against the manifest"),
    "preview": (PreviewConfig, preview, "draw a PNG grid of samples with their labels"),
}


def _usage() -> str:
    lines = [f"usage: {PROG} {{{','.join(COMMANDS)}}} [--help] ...", ""]
    lines += [f"  {name:<9} {desc}" for name, (_, _, desc) in COMMANDS.items()]
    return "\n".join(lines)


@report_user_errors(PROG)
def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        raise UserError(f"unknown command {name!r}: choose one of {', '.join(COMMANDS)}")
    cls, action, _ = COMMANDS[name]
    action(parse_config(cls, rest, prog=f"{PROG} {name}", description=cls.__doc__))
