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
from seqtrain.common.cliparse import parse_config
from seqtrain.common.errors import report_user_errors
from seqtrain.common.storage import locate
from seqtrain.common.subcommands import Commands, dispatch

PROG = "seqtrain-data"


def _verify(cfg: VerifyConfig) -> None:
    bad = verify(cfg.out)
    if bad:
        print(f"{PROG}: {bad} bad shard(s) in {cfg.out}", file=sys.stderr)
        raise SystemExit(1)


def _parsed(cls: type, action: Callable[[Any], object], name: str) -> Callable[[list[str]], object]:
    """A command that parses argv into `cls` (flags = its fields), then runs `action`."""
    return lambda argv: action(parse_config(cls, argv, f"{PROG} {name}", cls.__doc__ or ""))


COMMANDS: Commands = {
    "generate": (
        _parsed(GenConfig, generate, "generate"),
        "render shards (this node's part) and, alone, the manifest",
    ),
    "finalize": (
        _parsed(FinalizeConfig, lambda c: finalize(locate(c.out)), "finalize"),
        "merge all nodes' parts: manifest",
    ),
    "verify": (_parsed(VerifyConfig, _verify, "verify"), "check every shard against the manifest"),
    "preview": (
        _parsed(PreviewConfig, preview, "preview"),
        "draw a PNG grid of samples with their labels",
    ),
}


@report_user_errors(PROG)
def main(argv: Sequence[str] | None = None) -> None:
    dispatch(PROG, COMMANDS, argv)
