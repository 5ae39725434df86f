"""The command line's error contract: every error is one ``error: ...`` line on stderr and
exit status 2, never a traceback.

* Bad arguments are refused by the parsers themselves (:class:`Parser`; argument types
  :func:`positive_int`, :func:`nonneg_int`, :func:`positive_float`, :func:`nonneg_float`, :func:`finite_float`,
  :func:`fraction`), with the argument named.
* A command that raises one of the library's own errors (:class:`evrtrl.errors.EvrtrlError`),
  an operating-system error that is the user's to fix (a missing, read-only or full
  location, a file where a directory is expected, ...; :data:`USER_ERRNOS`), a missing
  optional package (:data:`evrtrl.extras.INSTALL`; a
  :class:`~evrtrl.errors.MissingExtraError` or a plain ImportError of one of them) or MemoryError ends with that one line.
* Anything else is a bug and keeps its traceback (exit status 1), so that it gets reported.
* Ctrl-C ends with ``error: interrupted`` and exit status 130.

:func:`run` implements it once for every entry point (``evrtrl``, ``python -m
evrtrl.training.cli``, ``python -m evrtrl.neuromorphic.cli``).
"""
from __future__ import annotations

import argparse
import errno
import math
import sys
from typing import NoReturn, Sequence

from evrtrl.errors import EvrtrlError
from evrtrl.extras import INSTALL, install_hint

__all__ = ["Parser", "run", "user_error_message", "positive_int", "nonneg_int", "positive_float",
           "nonneg_float", "finite_float", "fraction", "USER_ERRNOS", "EXIT_ERROR"]

EXIT_ERROR = 2

#: errno values of OSErrors that are the user's to fix (reported as one line)
USER_ERRNOS = frozenset({
    errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EACCES, errno.EPERM, errno.EROFS,
    errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG, errno.ELOOP, errno.EFBIG, errno.ENOTEMPTY,
})

#: OSError subclasses that are the user's to fix even when raised without an errno
_USER_OSERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one ``error: PROG: ...`` line (exit 2).
    Sub-parsers made with ``add_subparsers()`` are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _number(text: str, cast, what: str, ok) -> float | int:
    try:
        v = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(v):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
    return v


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _number(text, int, "an integer >= 1", lambda v: v >= 1)


def nonneg_int(text: str) -> int:
    """An integer >= 0."""
    return _number(text, int, "an integer >= 0", lambda v: v >= 0)


def positive_float(text: str) -> float:
    """A finite number > 0 (``inf`` and ``nan`` are refused)."""
    return _number(text, float, "a finite number > 0", lambda v: math.isfinite(v) and v > 0)


def nonneg_float(text: str) -> float:
    """A finite number >= 0."""
    return _number(text, float, "a finite number >= 0", lambda v: math.isfinite(v) and v >= 0)


def finite_float(text: str) -> float:
    """A finite number."""
    return _number(text, float, "a finite number", math.isfinite)


def fraction(text: str) -> float:
    """A number in (0, 1]."""
    return _number(text, float, "a number in (0, 1]", lambda v: 0 < v <= 1)


def user_error_message(exc: BaseException) -> str | None:
    """The one-line message for an error that is the user's to fix; None for a bug."""
    if isinstance(exc, EvrtrlError):
        return " ".join(str(exc).split("\n"))
    if isinstance(exc, ImportError) and exc.name and exc.name.split(".")[0] in INSTALL:
        top = exc.name.split(".")[0]
        return f"the optional package '{top}' is not installed and this command needs it: {install_hint(top)}"
    if isinstance(exc, OSError) and (exc.errno in USER_ERRNOS or isinstance(exc, _USER_OSERRORS)):
        where = exc.filename if exc.filename is not None else ""
        where += f" -> {exc.filename2}" if exc.filename2 is not None else ""
        return f"{where}: {exc.strerror}" if where and exc.strerror else (exc.strerror or str(exc))
    if isinstance(exc, MemoryError):
        return f"out of memory{': ' + str(exc) if str(exc) else ''}"
    return None


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the chosen command (``args.func(args) -> int``) under the contract."""
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        msg = user_error_message(exc)
        if msg is None:
            raise
        print(f"error: {msg}", file=sys.stderr)
        return EXIT_ERROR
