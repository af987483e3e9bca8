"""The replay report's JSON, key for key and number for number, against reports kept in tests/data.

The kept reports were written from the demo scenario with the stand-in KWS: a labelled replay with
the always-on reference pass and an unreadable file beside it, that report re-priced for another
profile, and an unlabelled replay with the on-node second stage. What differs between runs (random
segment ids, temporary paths, the package version) is replaced by placeholders before comparing.
Regenerate with ``.venv/bin/python tests/test_report_golden.py`` after a deliberate change.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from report_helpers import slice_demo, standin_config

from gate.cli import main
from gate.config import load_settings

GOLDEN = Path(__file__).parent / "data" / "replay_golden"
NAMES = ("labelled.json", "repriced.json", "second_stage.json")
IMAGE = re.compile(r"base64,[A-Za-z0-9+/=]+")


def write_reports(tmp: Path) -> dict[str, Any]:
    """The three reports, normalised (see the module doc), and the labelled one's HTML page without
    its images (when matplotlib is there)."""
    scene = slice_demo(tmp / "demo25")
    cfg = standin_config(tmp / "standin.yaml")
    bad = tmp / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00")
    labelled, repriced, second = tmp / "labelled.json", tmp / "repriced.json", tmp / "second_stage.json"
    page = tmp / "labelled.html"
    html = ["--html", str(page)] if importlib.util.find_spec("matplotlib") else []
    assert main(["--config", str(cfg), "replay", str(bad), "--scenario", str(scene), "--broker", "none",
                 "--report", str(labelled), *html, "--quiet", "--no-progress"]) == 2
    assert main(["report", str(labelled), "--profile", "mcu-analog", "--out", str(repriced), "--quiet"]) == 0
    cfg2 = tmp / "second.yaml"
    data = yaml.safe_load(cfg.read_text())
    data["kws"]["second_stage"] = {"enabled": True}
    cfg2.write_text(yaml.safe_dump(data))
    assert main(["--config", str(cfg2), "replay", str(scene / "stream.flac"), "--report", str(second),
                 "--quiet", "--no-progress"]) == 0
    out: dict[str, Any] = {p.name: normalise(json.loads(p.read_text()), tmp, load_settings(c).model_dump(mode="json"))
                           for p, c in ((labelled, cfg), (repriced, cfg), (second, cfg2))}
    if html:
        out[page.name] = IMAGE.sub("base64,<png>", page.read_text()).replace(str(tmp), "<tmp>")
    return out


def normalise(report: dict, tmp: Path, settings: dict) -> Any:
    """Temporary paths, segment ids, the stand-in model's path and the version as placeholders; the
    settings, once checked to be those of the thresholds file, too (they follow the settings schema)."""
    assert report["settings"] == settings
    report = {**report, "settings": "<the thresholds file's settings>"}
    ids: dict[str, str] = {}
    standin = str(Path(__file__).parent / "data")

    def walk(x: Any, key: str | None = None) -> Any:
        if isinstance(x, dict):
            return {walk_key(k): walk(v, k) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        if isinstance(x, str):
            if key == "segment_id":
                return ids.setdefault(x, f"<segment {len(ids)}>")
            if key == "generated_by":
                return "<gate version>"
            return x.replace(str(tmp), "<tmp>").replace(standin, "<tests/data>")
        return x

    def walk_key(k: str) -> str:
        return k.replace(str(tmp), "<tmp>")

    return walk(report)


def _differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Where ``a`` and ``b`` differ: keys (and their order), types, strings and numbers (to 1e-9)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            return [f"{where or '/'}: keys {list(a)} != {list(b)}"]
        return [d for k in a for d in _differences(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _differences(x, y, f"{where}[{i}]")]
    if type(a) is not type(b):
        return [f"{where}: {a!r} ({type(a).__name__}) != {b!r} ({type(b).__name__})"]
    if isinstance(a, float) and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12):
        return []
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    return write_reports(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("name", NAMES)
def test_the_report_json_is_the_kept_one(reports, name):
    kept = json.loads((GOLDEN / name).read_text())
    diffs = _differences(reports[name], kept)
    assert not diffs, f"{name}: {len(diffs)} difference(s), first: " + "; ".join(diffs[:5])


def test_the_html_page_is_the_kept_one(reports):
    pytest.importorskip("matplotlib")
    assert reports["labelled.html"] == (GOLDEN / "labelled.html").read_text()


def test_the_comparison_sees_a_changed_number_a_missing_key_and_a_reordered_one():
    kept = json.loads((GOLDEN / "labelled.json").read_text())
    changed = json.loads(json.dumps(kept))
    changed["totals"]["joules"] *= 1.001
    assert _differences(changed, kept) == [f"/totals/joules: {changed['totals']['joules']!r} != "
                                           f"{kept['totals']['joules']!r}"]
    del changed["cloud_sensitivity"]
    assert any("keys" in d for d in _differences(changed, kept))
    reordered = {k: kept[k] for k in reversed(list(kept))}
    assert _differences(reordered, kept) and _differences({**kept, "radio": 1}, kept)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for name, report in write_reports(Path(d)).items():
            (GOLDEN / name).write_text(report if name.endswith(".html") else json.dumps(report, indent=2) + "\n")
            print(f"wrote {GOLDEN / name}", file=sys.stderr)
