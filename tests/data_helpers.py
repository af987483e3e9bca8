"""Shared helpers for the data-tool tests (imported by tests/test_data_*.py)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` by relative path: equal dicts mean byte-identical trees."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def no_partials(parent: Path) -> bool:
    return not any(p.name.startswith(".") and ".partial-" in p.name for p in parent.iterdir())


def empty_path_dir(tmp_path: Path) -> str:
    """A PATH with nothing on it but the essentials the CLI itself needs (no TTS binaries)."""
    d = tmp_path / "emptybin"
    d.mkdir(exist_ok=True)
    return str(d)
