"""`seqtrain-data`: generate, finalize, verify, preview; each subcommand parses its dataclass.

Each command imports its module when it runs: they load torch and PIL (seconds), which
`seqtrain-data --help` and `--version` do not need.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TypeVar

from seqtrain.common.errors import report_user_errors
from seqtrain.common.subcommands import Commands, dispatch

PROG = "seqtrain-data"
T = TypeVar("T")


def _parse(cls: type[T], argv: list[str], name: str) -> T:
    """argv parsed into `cls` (flags = its fields), as `seqtrain-data <name>`."""
    from seqtrain.common.cliparse import parse_config

    return parse_config(cls, argv, f"{PROG} {name}", cls.__doc__ or "")


def _generate(argv: list[str]) -> None:
    from data_gen.config import GenConfig

    cfg = _parse(GenConfig, argv, "generate")  # before torch's import: flag errors stay fast
    from data_gen.generate import generate

    generate(cfg)


def _finalize(argv: list[str]) -> None:
    from data_gen.finalize import FinalizeConfig, finalize
    from seqtrain.common.storage import locate

    finalize(locate(_parse(FinalizeConfig, argv, "finalize").out))


def _verify(argv: list[str]) -> None:
    from data_gen.verify import VerifyConfig, verify

    cfg = _parse(VerifyConfig, argv, "verify")
    bad = verify(cfg.out)
    if bad:
        print(f"{PROG}: {bad} bad shard(s) in {cfg.out}", file=sys.stderr)
        raise SystemExit(1)


def _preview(argv: list[str]) -> None:
    from data_gen.preview import PreviewConfig, preview

    preview(_parse(PreviewConfig, argv, "preview"))


COMMANDS: Commands = {
    "generate": (_generate, "render shards (this node's part) and, alone, the manifest"),
    "finalize": (_finalize, "merge all nodes' parts: manifest"),
    "verify": (_verify, "check every shard against the manifest"),
    "preview": (_preview, "draw a PNG grid of samples with their labels"),
}


@report_user_errors(PROG)
def main(argv: Sequence[str] | None = None) -> None:
    dispatch(PROG, COMMANDS, argv)
