"""A 5-node smoke run of the fleet load test (the 100-node run is `make loadtest`, bench/loadtest.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from cloud_helpers import require_cloud_models
from mqtt_helpers import needs_mosquitto

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import loadtest  # noqa: E402

pytestmark = [needs_mosquitto, pytest.mark.slow]


def test_five_nodes_every_segment_stored_and_answered_once(tmp_path, capsys):
    require_cloud_models()
    out = tmp_path / "load.json"
    rc = loadtest.main(["--nodes", "5", "--segments-per-node", "3", "--publish-s", "2", "--duration-s", "90",
                        "--out", str(out)])
    r = json.loads(out.read_text())
    assert rc == 0, capsys.readouterr().out
    assert r["made"] == 15 and r["stored"] == 15 and r["verdicts_received"] == 15
    assert r["lost_before_store"] == r["lost_before_verdict"] == 0
    assert r["stored_duplicates"] == r["verdict_duplicates"] == r["stored_extra"] == 0
    assert r["cloud"]["errors"] == 0 and r["cloud"]["malformed"] == 0
    assert r["publish_to_verdict_s"]["n"] == 15 and r["publish_to_verdict_s"]["p99"] < 30
    assert "publish->verdict" in capsys.readouterr().out
