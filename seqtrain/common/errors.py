"""User-facing errors: bad input is reported as one line and a non-zero exit, never a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

EXIT_USAGE = 2


class UserError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""


def report_user_errors(prog: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorate a CLI entry point: a UserError becomes `prog: error: ...` on stderr and exit 2."""

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except UserError as e:
                print(f"{prog}: error: {e}", file=sys.stderr)
                raise SystemExit(EXIT_USAGE) from None
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                raise SystemExit(130) from None

        return wrapper

    return decorate
