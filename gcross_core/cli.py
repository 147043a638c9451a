"""One exit-code convention for every command-line tool (console scripts and ``training/*.py``).

- 0: done;
- 2: bad arguments, config or input files (argparse's own errors, :class:`~gcross_core.errors.InputError`,
  missing files/folders and a file where an output folder should go);
- 1: the work failed at run time (any other exception);
- 130: interrupted (Ctrl-C).

Failures print one line on stderr naming the tool and the problem; ``GCROSS_TRACEBACK=1`` adds the
traceback (for bug reports).
"""
from __future__ import annotations

import functools
import os
import sys
import traceback
from typing import Callable, Optional, Sequence

from gcross_core.errors import GcrossError, InputError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
BAD_INPUT = (InputError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)


def exit_code_for(exc: BaseException) -> int:
    """The exit status a tool reports for an exception that ended it."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_BAD_INPUT if isinstance(exc, BAD_INPUT) else EXIT_FAILURE


def _one_line(prog: str, exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return f"{prog}: interrupted"
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, BAD_INPUT):
        return f"{prog}: error: {text}"
    if isinstance(exc, GcrossError):
        return f"{prog}: failed: {text}"
    return f"{prog}: failed: {type(exc).__name__}: {text}"


def cli_main(prog: str) -> Callable[[Callable[..., Optional[int]]], Callable[..., int]]:
    """Decorate a ``main(argv=None) -> int`` so that exceptions become one line and an exit status."""
    def wrap(fn: Callable[..., Optional[int]]) -> Callable[..., int]:
        @functools.wraps(fn)
        def main(argv: Optional[Sequence[str]] = None) -> int:
            try:
                return int(fn(argv) or 0)
            except SystemExit:
                raise  # argparse: exit 2 after its own message; --help: 0
            except BaseException as exc:  # noqa: BLE001 - every failure becomes one line and a status
                if os.environ.get("GCROSS_TRACEBACK"):
                    traceback.print_exc()
                print(_one_line(prog, exc), file=sys.stderr, flush=True)
                return exit_code_for(exc)
        main.cli_prog = prog  # lets tests check that every tool goes through this convention
        return main
    return wrap
