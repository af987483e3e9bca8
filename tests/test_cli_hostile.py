"""Every console script keeps one promise on bad input: exit 2, exactly one line on stderr that names
the file, field or value, no traceback, and no output left behind.

The table below drives each subcommand's file, directory and number arguments through a set of
hostile values (missing, a directory, unwritable, empty, binary, truncated JSON/CSV/YAML, wrong
types, negative, NaN, huge). A new argument of one of these kinds belongs in the table.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cloud.cli import main as cloud_main
from gate.cli import main as node_main
from gate_core.cliutil import number, one_line, output_file
from sensors.datacli import main as data_main

ROOT = Path(__file__).resolve().parents[1]
MAINS = {"gate-node": node_main, "gate-cloud": cloud_main, "gate-data": data_main}

BINARY = bytes(range(256)) * 8


def _files(root: Path) -> dict[str, Path]:
    """The hostile inputs, each a path under ``root`` ({name} in the table)."""
    f = {}

    def put(name: str, content: bytes | str) -> None:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        f[name.split("/")[0].split(".")[0]] = p.parent if "/" in name else p

    f["missing"] = root / "no" / "such" / "thing"
    (root / "adir").mkdir()
    f["adir"] = root / "adir"
    (root / "emptydir").mkdir()
    f["emptydir"] = root / "emptydir"
    put("empty.bin", b"")
    put("binary.bin", BINARY)
    put("truncated_json.json", '{"counts": {"audio_seconds": 1.0, "stages": {')
    put("truncated_yaml.yaml", "analog:\n  margin_db: [6,\n")
    put("typo_yaml.yaml", "analog:\n  margn_db: 6\n")
    put("thresholds.yaml", (ROOT / "deploy" / "thresholds.example.yaml").read_text())
    put("wrongtype_report.json", json.dumps({"counts": {"audio_seconds": "long", "stages": {}}, "baselines": {},
                                             "profile": {"name": "pi4"}}))
    put("negative_report.json", json.dumps({"counts": {"stages": {"adc": {"invocations": -3}}}, "baselines": {},
                                            "profile": {"name": "pi4"}}))
    put("notreport.json", "[1, 2, 3]")
    # A scenario directory whose description is cut short, and one whose labels have a malformed row.
    for name, meta, labels in (
        ("badmeta", '{"audio": "stream.fl', None),
        ("badlabels", '{"audio": "stream.wav"}', "start_s,end_s,label,kind,text,snr_db,start_sample,end_sample\n"
                                                  "0.5,zero,wake,wake,hey jarvis,10,8000,16000\n"),
        ("shortrow", '{"audio": "stream.wav"}', "start_s,end_s,label,kind,text,snr_db,start_sample,end_sample\n"
                                                 "0.5,1.0,wake\n"),
    ):
        d = root / name
        d.mkdir()
        (d / "scenario.json").write_text(meta)
        (d / "labels.csv").write_text(labels if labels is not None else "start_s\n")
        sf.write(d / "stream.wav", np.zeros(16_000, np.int16), 16_000, subtype="PCM_16")
        f[name] = d
    (root / "runbad").mkdir()
    (root / "runbad" / "card.json").write_text('{"models": {"tiny_logmel": ')
    f["runbad"] = root / "runbad"
    # Where nothing can be written: below a regular file, and in /proc.
    f["underfile"] = root / "binary.bin" / "out.json"
    f["proc"] = Path("/proc/gate-out.json")
    return f


def _valid(root: Path) -> dict[str, Path]:
    v = {}
    audio = root / "ok" / "one.wav"
    audio.parent.mkdir()
    sf.write(audio, np.zeros(16_000, np.int16), 16_000, subtype="PCM_16")
    v["audio"] = audio
    scen = root / "ok" / "scene"
    scen.mkdir()
    sf.write(scen / "stream.wav", np.zeros(16_000, np.int16), 16_000, subtype="PCM_16")
    (scen / "scenario.json").write_text('{"audio": "stream.wav"}')
    (scen / "labels.csv").write_text("start_s,end_s,label,kind,text,snr_db,start_sample,end_sample\n")
    v["scene"] = scen
    v["recipe"] = ROOT / "datasets" / "recipes" / "hey_jarvis.yaml"
    v["scene_recipe"] = ROOT / "datasets" / "recipes" / "quiet_home.yaml"
    v["report"] = root / "ok" / "report.json"
    from cloud.release import keygen

    v["key"] = keygen(root / "ok" / "keys")[0]
    v["model"] = ROOT / "gate" / "models" / "kws_logmel.tflite"
    v["card"] = ROOT / "gate" / "models" / "kws_logmel.json"
    return v


IN_FILE = ("missing", "adir")
IN_AUDIO = (*IN_FILE, "empty", "binary")
IN_YAML = (*IN_FILE, "binary", "truncated_yaml", "typo_yaml")
IN_JSON = (*IN_FILE, "empty", "binary", "truncated_json", "notreport", "wrongtype_report", "negative_report")
IN_DIR = ("missing", "binary", "emptydir", "badmeta", "badlabels", "shortrow")
OUT_FILE = ("adir", "underfile", "proc")
OUT_DIR = ("binary", "underfile")
NUM_NONNEG = ("-1", "nan", "inf", "1e309", "ten")
NUM_COUNT = ("0", "-2", "nan", "1.5", "99999999999999999999", "x")
NUM_FRACTION = ("-0.1", "1.5", "nan", "")

# (program, argv template, hostile values). {x} is the hostile value; {audio}, {scene}, {recipe},
# {scene_recipe}, {report}, {model}, {card}, {key} are valid inputs, {out} a valid output path, so only {x} is wrong.
TABLE: list[tuple[str, str, tuple[str, ...]]] = [
    ("gate-node", "config check {x}", IN_YAML),
    ("gate-node", "-c {x} replay {audio} --quiet", IN_YAML),
    ("gate-node", "replay {x} --quiet", IN_AUDIO),
    ("gate-node", "replay --scenario {x} --broker none --quiet", IN_DIR),
    ("gate-node", "replay {audio} --report {x} --quiet", OUT_FILE),
    ("gate-node", "replay {audio} --html {x} --quiet", OUT_FILE),
    ("gate-node", "replay {audio} --profile {x} --quiet", (*IN_YAML, "thresholds")),
    ("gate-node", "replay {audio} --broker embedded --verdict-wait {x} --quiet", NUM_NONNEG),
    ("gate-node", "report {x}", IN_JSON),
    ("gate-node", "report {report} --grid {x}", NUM_NONNEG),
    ("gate-node", "report {report} --out {x}", OUT_FILE),
    ("gate-node", "report {report} --profile {x}", (*IN_YAML, "thresholds")),
    ("gate-node", "tune --scenario {x} --out {out}", IN_DIR),
    ("gate-node", "tune --scenario {scene} --out {x}", OUT_FILE),
    ("gate-node", "tune --scenario {scene} --out {out} --sweep-out {x}", OUT_FILE),
    ("gate-node", "tune --scenario {scene} --out {out} --target-fa-per-hour {x}", NUM_NONNEG),
    ("gate-node", "tune --scenario {scene} --out {out} --k {x}", NUM_COUNT),
    ("gate-node", "tune --scenario {scene} --out {out} --kws-thresholds {x}", NUM_FRACTION),
    ("gate-node", "tune --scenario {scene} --out {out} --margin-db {x}", NUM_NONNEG),
    ("gate-node", "tune --scenario {scene} --out {out} --jobs {x}", NUM_COUNT),
    ("gate-node", "run --input {x} --no-realtime", IN_FILE),
    ("gate-node", "wyoming --satellite-uri tcp://127.0.0.1:9 --input {x} --no-realtime", IN_FILE),
    ("gate-node", "wyoming --satellite-uri tcp://127.0.0.1:9 --answer-wait {x}", NUM_NONNEG),
    ("gate-cloud", "federate --nodes {x} --rounds 1 --out {out}", (*NUM_COUNT, "1")),
    ("gate-cloud", "federate --nodes 2 --rounds {x} --out {out}", (*NUM_COUNT, "-1")),
    ("gate-cloud", "federate --nodes 2 --rounds 1 --out {x}", OUT_DIR),
    ("gate-cloud", "federate --nodes 2 --rounds 1 --out {out} --recipe {x}", IN_YAML),
    ("gate-cloud", "federate --nodes 2 --rounds 1 --out {out} --mu {x}", NUM_NONNEG),
    ("gate-cloud", "federate --nodes 2 --rounds 1 --out {out} --collect-minutes {x}", (*NUM_NONNEG, "0")),
    ("gate-cloud", "federate --nodes 2 --rounds 1 --out {out} --cache-dir {x}", OUT_DIR),
    ("gate-cloud", "federate --nodes 2 --rounds 1 --out {out} --key {x}", IN_FILE),
    ("gate-cloud", "keygen --out {x}", OUT_DIR),
    ("gate-cloud", "release {x} --card {card} --key {key} --broker 127.0.0.1:9", (*IN_FILE, "empty", "binary")),
    ("gate-cloud", "release {model} --card {x} --key {key} --broker 127.0.0.1:9",
     (*IN_FILE, "empty", "binary", "truncated_json", "notreport")),
    ("gate-cloud", "release {model} --card {card} --key {x} --broker 127.0.0.1:9",
     (*IN_FILE, "empty", "binary", "truncated_json", "thresholds")),
    ("gate-cloud", "release {model} --card {card} --key {key} --broker {x}", ("nohost", "h:0", "h:65536", ":1883")),
    ("gate-cloud", "release {model} --card {card} --key {key} --node {x} --broker 127.0.0.1:9",
     ("fleet", "a/b", "#")),
    ("gate-cloud", "release {model} --card {card} --key {key} --wait-s {x} --broker 127.0.0.1:9", NUM_NONNEG),
    ("gate-cloud", "train --recipe {x} --out {out}", IN_YAML),
    ("gate-cloud", "train --recipe {recipe} --out {x}", OUT_DIR),
    ("gate-cloud", "train --recipe {recipe} --out {out} --threads {x}", NUM_COUNT),
    ("gate-cloud", "train --recipe {recipe} --out {out} --scene-minutes {x}", (*NUM_NONNEG, "0")),
    ("gate-cloud", "ship {x}", ("missing", "binary", "emptydir", "runbad")),
    ("gate-cloud", "serve --config {x} --print-config", IN_YAML),
    ("gate-cloud", "serve --state-dir {x} --print-config", OUT_DIR),
    ("gate-cloud", "serve --summary-out {x} --print-config", OUT_FILE),
    ("gate-cloud", "serve --workers {x} --print-config", NUM_COUNT),
    ("gate-cloud", "serve --metrics-port {x} --print-config", ("-1", "65536", "nan", "http")),
    ("gate-data", "synth --out {x} --n 1 --quiet", OUT_DIR),
    ("gate-data", "synth --out {out} --n {x} --quiet", NUM_COUNT),
    ("gate-data", "synth --out {out} --config {x} --quiet", IN_YAML),
    ("gate-data", "synth --out {out} --negatives {x} --quiet", (*IN_FILE, "empty")),
    ("gate-data", "scenario --recipe {x} --out {out} --quiet", IN_YAML),
    ("gate-data", "scenario --recipe {scene_recipe} --out {x} --quiet", OUT_DIR),
    ("gate-data", "scenario --recipe {scene_recipe} --out {out} --duration-s {x} --quiet", (*NUM_NONNEG, "0")),
    ("gate-data", "confusables --n {x}", NUM_COUNT),
]
CASES = [(prog, argv, value) for prog, argv, values in TABLE for value in values]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    hostile, valid = _files(root), _valid(root)
    # A real saved report for the commands that take one.
    rc = node_main(["replay", str(valid["audio"]), "--quiet", "--report", str(valid["report"])])
    assert rc == 0 and valid["report"].is_file()
    return root, hostile, valid


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(("prog", "template", "value"), CASES, ids=[f"{p} {t.split()[0]}:{v}" for p, t, v in CASES])
def test_bad_input_exits_2_with_one_line_and_leaves_nothing(prog, template, value, inputs, tmp_path, capfd):
    root, hostile, valid = inputs
    x = str(hostile[value]) if value in hostile else value
    out = tmp_path / "out" / "result"
    words = [w.format(x=x, out=out, **{k: str(v) for k, v in valid.items()}) for w in template.split()]
    before = _tree(root)
    rc = MAINS[prog](words)
    err = capfd.readouterr().err
    lines = err.splitlines()
    assert rc == 2, f"{prog} {' '.join(words)} -> {rc}: {err}"
    assert len(lines) == 1, f"{prog} {' '.join(words)}: {len(lines)} lines on stderr:\n{err}"
    assert "Traceback" not in err
    assert len(lines[0]) <= 400, lines[0]
    # The line names what is wrong: the path, or the argument with its value.
    named = x if value in hostile else value
    assert named in lines[0] or (Path(named).name and Path(named).name in lines[0]) or \
        template.split("{x}")[0].split()[-1] in lines[0], lines[0]
    assert _tree(root) == before, "files appeared among the inputs"
    assert not out.exists() and not (tmp_path / "out").exists(), "an output was left behind"


def test_every_subcommand_with_a_path_or_number_is_in_the_table():
    """The table covers every subcommand that takes a path or number (so a new one is not forgotten)."""
    import argparse

    from cloud.cli import build_parser as cloud_parser
    from gate.cli import build_parser as node_parser
    from sensors.datacli import build_parser as data_parser

    covered = {(prog, t.split()[0] if not t.startswith("-c") else t.split()[2]) for prog, t, _ in TABLE}
    covered |= {(prog, "config") for prog, t, _ in TABLE if t.startswith("config")}
    for prog, parser in (("gate-node", node_parser()), ("gate-cloud", cloud_parser()), ("gate-data", data_parser())):
        subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for name, sub in subs.choices.items():
            takes = [a for a in sub._actions if a.type is not None or (a.nargs is not None and a.dest != "help")]
            if takes and name not in ("voices",):
                assert (prog, name) in covered, f"{prog} {name} has typed arguments and no row in TABLE"


def test_one_line_and_number_reader():
    assert one_line("a\n\n  b\nc") == "a; b; c"
    assert len(one_line("x" * 1000)) == 300
    parse = number(lo=0, hi=10)
    assert parse("3.5") == 3.5
    for bad in ("-1", "11", "nan", "inf", "x"):
        with pytest.raises(Exception):
            parse(bad)
    assert number(integer=True, lo=1)("4") == 4


def test_output_file_refuses_before_work_and_accepts_a_new_directory(tmp_path):
    assert output_file(str(tmp_path / "new" / "deeper" / "r.json")) == tmp_path / "new" / "deeper" / "r.json"
    with pytest.raises(Exception, match="is a directory"):
        output_file(str(tmp_path))


def test_tflite_banner_does_not_reach_stderr(capfd):
    from gate.kws.interpreter import TFLiteModel

    TFLiteModel(model_path=ROOT / "gate" / "models" / "kws_logmel.tflite")
    assert "XNNPACK" not in capfd.readouterr().err


def test_all_inputs_failing_prints_no_table(inputs, capfd):
    _, hostile, _ = inputs
    assert node_main(["replay", str(hostile["binary"]), str(hostile["empty"])]) == 2
    out, err = capfd.readouterr()
    assert out == ""
    assert [ln.split(":")[0] for ln in err.splitlines()] == ["gate-node", "gate-node"]
    assert f"skipped {hostile['binary']}: " in err and f"{hostile['binary']}: {hostile['binary']}" not in err


def test_narrowband_input_is_named(inputs, tmp_path, capfd):
    audio = tmp_path / "phone.wav"
    sf.write(audio, np.zeros(8000, np.int16), 8000, subtype="PCM_16")
    assert node_main(["replay", str(audio), "--quiet"]) == 0
    err = capfd.readouterr().err
    assert "8000 Hz audio is narrowband" in err and str(audio) in err


def test_scenario_replay_defaults_to_the_embedded_broker(monkeypatch, inputs):
    """The README's promise: `--scenario` alone runs the whole cascade with an embedded broker."""
    import gate.replay

    _, _, valid = inputs
    seen = {}

    def fake_replay(files, **kw):
        seen.update(kw)
        raise KeyboardInterrupt  # stop before any work; only the choice is under test

    monkeypatch.setattr(gate.replay, "replay_files", fake_replay)
    assert node_main(["replay", "--scenario", str(valid["scene"]), "--quiet"]) == 130
    assert seen["broker"] == "embedded"
    assert node_main(["replay", "--scenario", str(valid["scene"]), "--broker", "none", "--quiet"]) == 130
    assert seen["broker"] is None
    assert node_main(["replay", str(valid["audio"]), "--quiet"]) == 130
    assert seen["broker"] is None


def test_a_dead_broker_is_said_once_then_at_a_bounded_rate(caplog):
    import logging

    from gate_core.netutil import UnreachableLog

    now = [0.0]
    log = logging.getLogger("test.unreachable")
    u = UnreachableLog(log, "127.0.0.1:1", every_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.unreachable"):
        for _ in range(30):  # 30 retries over 2.5 minutes
            u.failed()
            now[0] += 5
        u.reached()
    texts = [r.getMessage() for r in caplog.records]
    assert len([t for t in texts if "unreachable" in t]) == 3
    assert "127.0.0.1:1" in texts[0] and "reachable again after 30" in texts[-1]


def test_no_input_device_is_explained(monkeypatch, capfd):
    import sensors.microphone

    monkeypatch.setattr(sensors.microphone, "list_inputs", lambda: [])
    assert node_main(["run", "--list-devices"]) == 2
    err = capfd.readouterr().err
    assert "no input device found" in err and "arecord -l" in err and len(err.splitlines()) == 1


def test_serve_config_typo_in_any_section_is_located(tmp_path, capfd):
    cfg = tmp_path / "t.yaml"
    cfg.write_text("cloud:\n  workrs: 2\n")
    assert cloud_main(["serve", "--config", str(cfg), "--print-config"]) == 2
    err = capfd.readouterr().err
    assert f"{cfg}:2:3: cloud.workrs" in err and "did you mean 'workers'" in err
    cfg.write_text("cloud:\n  workers: 2\nkws:\n  threshld: 0.5\n")
    assert cloud_main(["serve", "--config", str(cfg), "--print-config"]) == 2
    assert "kws.threshld" in capfd.readouterr().err
    cfg.write_text("workers: 3\n")  # the cloud section on its own
    assert cloud_main(["serve", "--config", str(cfg), "--print-config"]) == 0
    assert json.loads(capfd.readouterr().out)["workers"] == 3


def test_serve_creates_its_state_dir(tmp_path, capfd):
    state = tmp_path / "a" / "b"
    assert cloud_main(["serve", "--state-dir", str(state), "--print-config"]) == 0
    assert state.is_dir()
    capfd.readouterr()


def test_ship_refuses_a_bad_run_before_copying(tmp_path, capfd):
    run = tmp_path / "run"
    run.mkdir()
    (run / "card.json").write_text(json.dumps({"models": {"verifier": {}}}))
    shutil.copyfile(ROOT / "cloud" / "models" / "verifier.json", run / "verifier.json")
    assert cloud_main(["ship", str(run)]) == 2
    assert "verifier.tflite is missing" in capfd.readouterr().err
