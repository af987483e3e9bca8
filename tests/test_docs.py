"""The tracked files speak only of the project: no notes about how, where or when it was built.

Every text file that git tracks is scanned for phrases that narrate the work instead of describing
the project (numbered work sessions and issues, the machine it was developed on, scratch paths).
The README is also held to its shape: a user's guide, short enough to read, that starts with the
two commands.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()

# Case-insensitive. Each names a kind of process remark, never a project term.
PROCESS_PHRASES = [
    r"\bsession \d",
    r"\bsessions? [0-9]+",
    r"\bissue #?\d+",
    r"\bissues? \d+ and \d+",
    re.escape("development machine"),
    re.escape("development vm"),
    re.escape("this vm"),
    re.escape("other engineers"),
    re.escape("/work/runs"),
    re.escape("/work/main"),
    re.escape("/work/cache"),
]
PATTERN = re.compile("|".join(f"(?:{p})" for p in PROCESS_PHRASES), re.IGNORECASE)
SKIP_DIRS = (".github/", ".ci/")


def _tracked_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    files = []
    for name in out.decode("utf-8", "surrogateescape").split("\0"):
        if not name or name.startswith(SKIP_DIRS):
            continue
        path = ROOT / name
        if path.resolve() == THIS or not path.is_file():
            continue
        files.append(path)
    return files


def _text(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def test_no_process_phrases_in_tracked_files():
    found = []
    for path in _tracked_files():
        text = _text(path)
        if text is None:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            m = PATTERN.search(line)
            if m:
                rel = path.relative_to(ROOT)
                found.append(f"{rel}:{lineno}: {m.group(0)!r}: {line.strip()[:160]}")
    assert not found, "process phrases in tracked files:\n" + "\n".join(found)


def test_readme_is_a_short_guide_that_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines (at most 250)"
    head = "\n".join(lines[:40])
    assert "make demo" in head, "`make demo` is not in README.md's first 40 lines"
    assert "make test" in head, "`make test` is not in README.md's first 40 lines"


def test_the_pattern_catches_what_it_should():
    for bad in ("measured in Session 3", "sessions 5 and 6", "issue #4", "issues 4 and 7",
                "on the Development VM", "this VM", "Other engineers", "/work/runs/x"):
        assert PATTERN.search(bad), bad
    for fine in ("the MQTT session's control traffic", "a persistent session", "no issue here"):
        assert not PATTERN.search(fine), fine
