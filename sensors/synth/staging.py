"""Write a dataset into a hidden sibling directory and rename it into place only when complete.

An interrupted or failed run leaves at most a ``.NAME.partial-*`` directory, never a NAME that
looks finished; the manifest is written last inside the staged directory for the same reason.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sensors.synth.errors import DataError


def check_output(out: Path, *, force: bool) -> None:
    """Fail early, naming ``out``, if it cannot become a fresh dataset directory."""
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out}: exists and is not a directory", code="output_invalid")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise DataError(f"output {out}: exists and is not empty (pass --force to replace it)", code="output_exists")
    parent = out.parent
    for p in (parent, *parent.parents):
        if p.exists():
            if not p.is_dir():
                raise DataError(f"output {out}: {p} is not a directory", code="output_unwritable")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"output {out}: cannot create {parent} ({exc.strerror or exc})",
                        code="output_unwritable") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(f"output {out}: {parent} is not writable", code="output_unwritable")


@contextmanager
def staged(out: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a staging directory beside ``out``; on success it replaces ``out`` atomically."""
    out = Path(out)
    check_output(out, force=force)
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as exc:
        raise DataError(f"output {out}: cannot write in {out.parent} ({exc.strerror or exc})",
                        code="output_unwritable") from exc
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    os.chmod(stage, 0o755)  # mkdtemp makes it 0700; a dataset is meant to be shared
    trash = None
    if out.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, trash / out.name)
    os.rename(stage, out)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
