"""Dispatch `prog <command> [flags]` on the first word; each command parses its own flags."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from seqtrain.common.errors import UserError
from seqtrain.version import __version__

# name -> (run(argv), one-line description for the overview)
Commands = dict[str, tuple[Callable[[list[str]], object], str]]


def usage(prog: str, commands: Commands) -> str:
    lines = [
        f"usage: {prog} <command> [flags]   ({prog} <command> --help)",
        f"       {prog} --version",
        "commands:",
    ]
    lines += [f"  {name:10s} {about}" for name, (_, about) in commands.items()]
    return "\n".join(lines)


def dispatch(prog: str, commands: Commands, argv: Sequence[str] | None) -> None:
    """Run the command named by argv's first word with the rest of argv (or print the version)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(prog, commands))
        return
    if argv[0] == "--version":
        print(f"{prog} {__version__}")
        return
    command, *rest = argv
    if command not in commands:
        raise UserError(f"unknown command {command!r}; choose one of: {', '.join(commands)}")
    commands[command][0](rest)
