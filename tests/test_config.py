from pathlib import Path

import pytest
import yaml

from gate.cli import main
from gate.config import GateSettings, SettingsError, default_yaml, load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_default_file_round_trips_to_the_defaults(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text(default_yaml())
    assert load_settings(p, env={}) == GateSettings()


def test_shipped_example_is_exactly_the_default_output():
    assert (ROOT / "deploy/thresholds.example.yaml").read_text() == default_yaml()


def test_every_field_is_commented_in_the_default_file():
    lines = default_yaml().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            assert lines[i - 1].strip().startswith("#"), f"no comment above {stripped!r}"


def _write(tmp_path, text):
    p = tmp_path / "t.yaml"
    p.write_text(text)
    return p


def test_unknown_key_is_an_error_with_a_suggestion(tmp_path):
    p = _write(tmp_path, "analog:\n  margin_db: 6\n  hangover: 0.2\n")
    with pytest.raises(SettingsError) as exc:
        load_settings(p, env={})
    (problem,) = exc.value.problems
    assert problem.path == "analog.hangover"
    assert problem.where == f"{p}:3:3"
    assert "unknown key 'hangover'" in problem.message and "did you mean 'hangover_s'" in problem.message


def test_out_of_range_value_names_field_value_and_allowed(tmp_path):
    p = _write(tmp_path, "analog:\n  n_channels: 99\nmqtt:\n  qos: 3\n")
    with pytest.raises(SettingsError) as exc:
        load_settings(p, env={})
    text = str(exc.value)
    assert f"{p}:2:3: analog.n_channels: got 99: Input should be less than or equal to 32" in text
    assert f"{p}:4:3: mqtt.qos: got 3: Input should be less than or equal to 2" in text


def test_cross_field_rule_is_reported(tmp_path):
    p = _write(tmp_path, "analog:\n  n_channels: 4\n  decision:\n    k: 5\n")
    with pytest.raises(SettingsError, match=r"decision.k \(5\) exceeds the number of channels \(4\)"):
        load_settings(p, env={})


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    p = _write(tmp_path, "analog:\n  margin_db: 6\n  q: [1, 2\n")
    with pytest.raises(SettingsError) as exc:
        load_settings(p, env={})
    assert exc.value.problems[0].where.startswith(f"{p}:4:")
    assert "YAML syntax error" in str(exc.value)


@pytest.mark.parametrize("text", ["[1, 2]\n", "just a string\n"])
def test_top_level_must_be_a_mapping(tmp_path, text):
    with pytest.raises(SettingsError, match="expected a mapping"):
        load_settings(_write(tmp_path, text), env={})


def test_empty_file_means_defaults(tmp_path):
    assert load_settings(_write(tmp_path, ""), env={}) == GateSettings()


def test_env_overrides_win_over_the_file_and_parse_as_yaml(tmp_path):
    p = _write(tmp_path, "analog:\n  margin_db: 6\n")
    s = load_settings(p, env={"GATE_ANALOG__MARGIN_DB": "9.5", "GATE_ANALOG__CENTRES_HZ": "[300, 900, 2700]",
                              "GATE_ANALOG__DECISION__K": "2", "GATE_THRESHOLDS": "ignored", "HOME": "/x"})
    assert s.analog.margin_db == 9.5
    assert s.analog.centres_hz == [300, 900, 2700] and s.analog.channel_count == 3
    assert s.analog.decision.k == 2


def test_bad_env_override_names_the_variable():
    with pytest.raises(SettingsError) as exc:
        load_settings(None, env={"GATE_ANALOG__MARGN_DB": "3"})
    assert exc.value.problems[0].where == "env GATE_ANALOG__MARGN_DB"
    with pytest.raises(SettingsError, match="env GATE_MQTT__QOS: mqtt.qos: got 'high'"):
        load_settings(None, env={"GATE_MQTT__QOS": "high"})


@pytest.mark.parametrize("broker,ok", [("embedded", True), ("mqtt://10.0.0.2:1883", True), ("mqtts://h", True),
                                       ("http://h", False), ("mqtt://h:1883/x y", False)])
def test_broker_url(broker, ok):
    if ok:
        assert GateSettings.model_validate({"mqtt": {"broker": broker}}).mqtt.broker == broker
    else:
        with pytest.raises(Exception, match="mqtt://host"):
            GateSettings.model_validate({"mqtt": {"broker": broker}})


def test_config_check_exit_codes_and_output(tmp_path, capsys):
    good = _write(tmp_path, default_yaml())
    assert main(["config", "check", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("analog:\n  q: -1\n  typo: 1\n")
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "invalid (2 problems)" in err
    assert "analog.q: got -1" in err and "greater than or equal to 0.5" in err
    assert "unknown key 'typo'" in err
    assert main(["config", "check", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_config_default_prints_valid_yaml(capsys):
    assert main(["config", "default"]) == 0
    out = capsys.readouterr().out
    assert GateSettings.model_validate(yaml.safe_load(out)) == GateSettings()
