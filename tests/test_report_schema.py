"""Reading a saved replay report back: a bad one is refused in one line naming the file, the field and the value."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gate.cli import main
from gate.config import GateSettings
from gate.replay import replay_files
from gate.report import load_report, write_report
from gate.report_schema import parse_report
from gate_core.errors import GateError
from sensors.wavfile import write_audio

SR = 16000


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A short replay's report (a tone burst, no KWS), as written to disk, and its JSON."""
    tmp = tmp_path_factory.mktemp("saved")
    rng = np.random.default_rng(3)
    x = rng.standard_normal(SR * 4) * 1e-3
    x[SR:2 * SR] += 0.3 * np.sin(2 * np.pi * 800 * np.arange(SR) / SR)
    audio = write_audio(tmp / "burst.wav", x)
    out = tmp / "r.json"
    write_report(replay_files([audio], settings=GateSettings(), kws=None), out)
    return out, json.loads(out.read_text())


def test_a_saved_report_reads_back_and_writes_again_key_for_key(saved, tmp_path):
    path, data = saved
    report = load_report(path)
    assert report.inputs[0].n_opens == 1 and report.kws.available is False and report.detection is None
    again = tmp_path / "again.json"
    write_report(report, again)
    assert again.read_text() == path.read_text()


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda r: r["inputs"][0].__setitem__("duty_cycle", "high"),
     "inputs[0].duty_cycle: Input should be a valid number, unable to parse string as a number (got 'high')"),
    (lambda r: r["totals"].__setitem__("joule", 1.0), "totals.joule: Extra inputs are not permitted (got 1.0)"),
    (lambda r: r["counts"].__setitem__("audio_seconds", -4.0),
     "counts: audio_seconds must be finite and >= 0, got -4.0"),
    (lambda r: r["counts"]["stages"]["adc"].__setitem__("bytes", -1), "counts: stages.adc: bytes"),
    (lambda r: r["baselines"].pop("always_stream"), "baselines: no always_stream baseline"),
    (lambda r: r.__setitem__("schema", "gate.replay/9"),
     "schema: Input should be 'gate.replay/2' (got 'gate.replay/9')"),
    (lambda r: r["radio"].__setitem__("mode", "carrier pigeon"), "radio.mode: Input should be 'broker' or 'estimated' "
                                                                  "(got 'carrier pigeon')"),
    (lambda r: r.pop("kws"), "kws: Field required [report_invalid]"),
])
def test_a_bad_report_is_one_line_naming_the_file_field_and_value(saved, tmp_path, capsys, edit, expected):
    _, data = saved
    bad = json.loads(json.dumps(data))
    edit(bad)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert f"{path}: {expected}" in err, err


def test_parse_report_names_the_first_problem_and_counts_the_rest(saved):
    _, data = saved
    bad = {**data, "audio_seconds": "long", "notes": 3}
    with pytest.raises(ValueError, match=r"^x\.json: audio_seconds: .*\(got 'long'\) \(and 1 more\)$"):
        parse_report(bad, "x.json")
    with pytest.raises(ValueError, match="x.json: not a gate replay report"):
        parse_report({"schema": "gate.replay/2"}, "x.json")


def test_load_report_refuses_with_a_usage_error(saved, tmp_path):
    _, data = saved
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**data, "detections": [{"path": "x"}]}))
    with pytest.raises(GateError, match=r"bad\.json: detections\[0\]\.segment_id: Field required"):
        load_report(path)
