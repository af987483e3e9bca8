"""What every console script shares: one error boundary and the validating readers of its arguments.

The promise of ``gate-node``, ``gate-cloud`` and ``gate-data``: exit 0 on success, 2 on bad input with
exactly one line on stderr naming the file, field or value, 1 on a failure that is not the input's
fault, 130 when interrupted; never a traceback (``--log-level DEBUG`` logs one for a failure that is
a bug). A command gets all of it by building its parser with :class:`Parser`, declaring its
arguments with the ``type=`` readers below, and running through :func:`boundary`.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from gate_core.errors import GateError, UsageError

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
MAX_LINE = 300  # characters of one error line; longer messages are cut with an ellipsis

log = logging.getLogger("gate.cli")


def one_line(text: object, limit: int = MAX_LINE) -> str:
    """``text`` on one line (newlines become '; ') of at most ``limit`` characters."""
    s = "; ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return s if len(s) <= limit else s[: limit - 1].rstrip() + "…"


def fail(message: str, *, code: str = "usage") -> NoReturn:
    raise UsageError(message, code=code)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the message and where to look), exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {one_line(message)} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace | int:
    """The parsed arguments, or the exit code argparse asked for (--help, --version: 0; bad usage: 2),
    so ``main(argv)`` returns a code instead of raising SystemExit."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE


def boundary(prog: str, command: Callable[[], int]) -> int:
    """Run ``command`` and turn what it raises into an exit code and at most one line on stderr."""
    try:
        return int(command())
    except GateError as exc:
        _say(prog, exc)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout closed early (`| head`): not an error of ours
        _silence_stdout()
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - the boundary: a bug still gets one line, its trace at DEBUG
        log.debug("%s failed", prog, exc_info=True)
        _say(prog, f"internal error: {type(exc).__name__}: {exc} (--log-level DEBUG shows where)")
        return EXIT_FAIL


def _say(prog: str, message: object) -> None:
    text = one_line(message)
    # Messages that already start with the program's name (older call sites) are not prefixed twice.
    sys.stderr.write(f"{text}\n" if text.startswith(f"{prog}") else f"{prog}: {text}\n")
    sys.stderr.flush()


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# ---------------------------------------------------------------------------------------- paths


def output_file(value: str) -> Path:
    """An output file: not a directory, in a directory that exists (or can be made) and is writable.

    Checked before any work, so a long replay never ends in a path it cannot write."""
    if not value:
        raise argparse.ArgumentTypeError("empty path")
    p = Path(value)
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: is a directory; give a file name")
    parent = _existing_ancestor(p.parent)
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: {parent} is not a directory")
    if not _can_create_in(parent):
        raise argparse.ArgumentTypeError(f"{value}: directory {parent} is not writable")
    if p.exists() and not os.access(p, os.W_OK):
        raise argparse.ArgumentTypeError(f"{value}: not writable")
    return p


def output_dir(value: str) -> Path:
    """A directory to write into: an existing writable directory, or one that can be created."""
    if not value:
        raise argparse.ArgumentTypeError("empty path")
    p = Path(value)
    if p.exists() and not p.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: not a directory")
    base = _existing_ancestor(p)
    if not base.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: {base} is not a directory")
    if not _can_create_in(base):
        raise argparse.ArgumentTypeError(f"{value}: {base} is not writable")
    return p


def input_file(value: str) -> Path:
    """A file to read: exists, is a regular file, readable. (Its content is checked by its reader.)"""
    p = Path(value)
    if not value:
        raise argparse.ArgumentTypeError("empty path")
    if not p.exists():
        raise argparse.ArgumentTypeError(f"{value}: no such file")
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: is a directory, not a file")
    if not os.access(p, os.R_OK):
        raise argparse.ArgumentTypeError(f"{value}: not readable")
    return p


def input_dir(value: str) -> Path:
    p = Path(value)
    if not value:
        raise argparse.ArgumentTypeError("empty path")
    if not p.exists():
        raise argparse.ArgumentTypeError(f"{value}: no such directory")
    if not p.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: not a directory")
    if not os.access(p, os.R_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{value}: not readable")
    return p


def _can_create_in(directory: Path) -> bool:
    """Whether a file can be created in ``directory``: tried, since permission bits do not tell
    (root passes os.access everywhere, /proc and read-only mounts refuse anyway)."""
    if not os.access(directory, os.W_OK | os.X_OK):
        return False
    try:
        fd, probe = tempfile.mkstemp(prefix=".gate-probe-", dir=directory)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def _existing_ancestor(p: Path) -> Path:
    p = p if str(p) else Path(".")
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


# -------------------------------------------------------------------------------------- numbers


def number(*, lo: float | None = None, hi: float | None = None, integer: bool = False,
           lo_open: bool = False) -> Callable[[str], Any]:
    """An argparse ``type``: a finite number in [lo, hi] (``lo_open``: lo itself excluded)."""

    def parse(text: str) -> int | float:
        try:
            v: int | float = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if integer else 'a number'}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if lo is not None and (v < lo or (lo_open and v == lo)):
            raise argparse.ArgumentTypeError(f"{text} must be {'>' if lo_open else '>='} {lo:g}")
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"{text} must be <= {hi:g}")
        return v

    parse.__name__ = "integer" if integer else "number"  # argparse names the type in its messages
    return parse


def number_list(*, lo: float | None = None, hi: float | None = None, integer: bool = False) -> Callable[[str], list]:
    """An argparse ``type``: a comma-separated list of numbers, each checked as :func:`number`."""
    one = number(lo=lo, hi=hi, integer=integer)

    def parse(text: str) -> list:
        items = [v.strip() for v in text.split(",") if v.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers")
        return [one(v) for v in items]

    parse.__name__ = "list"
    return parse


# ------------------------------------------------------------------------------------- contents


def read_json(path: Path, what: str = "JSON file") -> Any:
    """The parsed JSON of ``path``; a UsageError naming the file, line and column otherwise."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        fail(f"{path}: no such file", code="input_missing")
    except IsADirectoryError:
        fail(f"{path}: is a directory, not a {what}", code="input_invalid")
    except UnicodeDecodeError:
        fail(f"{path}: not a {what} (not UTF-8 text)", code="input_invalid")
    except OSError as exc:
        fail(f"{path}: cannot read ({exc.strerror or exc})", code="input_unreadable")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{path}:{exc.lineno}:{exc.colno}: not a {what} ({exc.msg})", code="input_invalid")
    except RecursionError:
        fail(f"{path}: not a {what} (nested too deeply)", code="input_invalid")


def read_csv(path: Path, required: tuple[str, ...], what: str = "CSV file") -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV file with a header naming at least ``required``."""
    try:
        with Path(path).open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                fail(f"{path}:1: not a {what}: no column {', '.join(missing)}", code="input_invalid")
            for row in reader:
                if None in row or any(row.get(c) is None for c in required):
                    n = len(reader.fieldnames or [])
                    fail(f"{path}:{reader.line_num}: expected {n} fields", code="input_invalid")
                yield reader.line_num, row
    except UnicodeDecodeError:
        fail(f"{path}: not a {what} (not UTF-8 text)", code="input_invalid")
    except csv.Error as exc:
        fail(f"{path}: not a {what} ({exc})", code="input_invalid")
    except OSError as exc:
        fail(f"{path}: cannot read ({exc.strerror or exc})", code="input_unreadable")


def yaml_error_text(exc: BaseException) -> str:
    """':line:col: YAML syntax error: problem' for a marked YAML error, ': YAML error: ...' otherwise."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is not None:
        return f":{mark.line + 1}:{mark.column + 1}: YAML syntax error: {problem or one_line(exc)}"
    return f": YAML error: {one_line(exc)}"


# ---------------------------------------------------------------------------------------- noise


@contextmanager
def quiet_native_stderr(drop: tuple[str, ...] = ("XNNPACK delegate",)) -> Iterator[None]:
    """Hold what native code writes to fd 2 inside the block and pass on every line but ``drop``'s.

    LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." from C++ on every
    interpreter it makes; that line would precede every one-line error and every quiet run."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr replaced by an object without a descriptor
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            held.seek(0)
            for line in held.read().decode("utf-8", "replace").splitlines(keepends=True):
                if not any(d in line for d in drop):
                    sys.stderr.write(line)
            sys.stderr.flush()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a report is for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
