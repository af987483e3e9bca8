"""deploy/: scripts lint clean, units verify, and every file, flag and setting they name exists.

Docker cannot run here, so the compose file is checked structurally: what it mounts exists in the
repository or is produced by the shipped generators, and the commands it runs parse against the
real CLIs. `docker compose config` runs too when the plugin is installed.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gate.config import load_settings
from gate_core.cloud_config import CloudConfig

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNITS = DEPLOY / "systemd"
COMPOSE = DEPLOY / "cloud/compose.yaml"
SCRIPTS = sorted(DEPLOY.rglob("*.sh"))
GATE_CONF = (DEPLOY / "mosquitto/gate.conf").read_text()


def _needs(*tools: str):
    missing = [t for t in tools if shutil.which(t) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)}")


# ---------------------------------------------------------------------------------------------
# Shell scripts


@pytest.mark.parametrize("script", SCRIPTS, ids=[str(s.relative_to(DEPLOY)) for s in SCRIPTS])
def test_script_parses_with_its_own_shell(script):
    shell = "bash" if "bash" in script.read_text().splitlines()[0] else "sh"
    subprocess.run([shell, "-n", script], check=True, timeout=10)


@_needs("shellcheck")
def test_scripts_are_shellcheck_clean():
    r = subprocess.run(["shellcheck", "-x", *SCRIPTS], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout


def _fake_cpufreq(root: Path, governors: str, n: int = 2) -> list[Path]:
    policies = []
    for i in range(n):
        p = root / f"policy{i}"
        p.mkdir(parents=True)
        (p / "scaling_available_governors").write_text(governors + "\n")
        (p / "scaling_governor").write_text("ondemand\n")
        policies.append(p)
    return policies


def _set_governor(cpufreq: Path, governor: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", DEPLOY / "pi/set-governor.sh", governor], capture_output=True, text=True,
                          timeout=10, env={**os.environ, "GATE_CPUFREQ_DIR": str(cpufreq)})


def test_set_governor_sets_every_policy(tmp_path):
    policies = _fake_cpufreq(tmp_path, "conservative ondemand userspace powersave performance schedutil")
    assert _set_governor(tmp_path, "schedutil").returncode == 0
    assert [(p / "scaling_governor").read_text().strip() for p in policies] == ["schedutil", "schedutil"]


def test_set_governor_refuses_an_unoffered_governor_and_changes_nothing(tmp_path):
    policies = _fake_cpufreq(tmp_path, "ondemand powersave performance")
    r = _set_governor(tmp_path, "schedutil")
    assert r.returncode == 1 and "available: ondemand powersave performance" in r.stderr
    assert {(p / "scaling_governor").read_text().strip() for p in policies} == {"ondemand"}


def test_set_governor_says_when_there_is_no_frequency_scaling(tmp_path):
    r = _set_governor(tmp_path, "ondemand")
    assert r.returncode == 1 and "does not scale frequency" in r.stderr


@_needs("mosquitto_passwd")
def test_make_passwords_keeps_existing_secrets_and_refuses_unsafe_names(tmp_path):
    tool = DEPLOY / "mosquitto/make-passwords.sh"
    subprocess.run(["bash", tool, tmp_path, "node1"], check=True, capture_output=True, timeout=30)
    first = (tmp_path / "secrets/node1.password").read_text()
    subprocess.run(["bash", tool, tmp_path, "node1", "node2"], check=True, capture_output=True, timeout=30)
    assert (tmp_path / "secrets/node1.password").read_text() == first
    users = [line.split(":")[0] for line in (tmp_path / "gate.passwd").read_text().splitlines()]
    assert sorted(users) == ["cloud", "node1", "node2"]
    assert oct((tmp_path / "secrets/node1.password").stat().st_mode & 0o777) == "0o600"
    for bad in ("cloud", "node/1", "node+", "#"):
        r = subprocess.run(["bash", tool, tmp_path, bad], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, bad


@_needs("openssl")
def test_dev_certs_carry_the_names_and_purposes_asked_for(tmp_path):
    tool = DEPLOY / "certs/make-dev-certs.sh"
    subprocess.run(["bash", tool, "-n", "broker.example", "-n", "10.0.0.2", "-c", "node1", tmp_path],
                   check=True, capture_output=True, timeout=30)
    ca = (tmp_path / "ca.crt").read_bytes()

    def text(name):
        return subprocess.run(["openssl", "x509", "-in", tmp_path / name, "-noout", "-text"], check=True,
                              capture_output=True, text=True).stdout

    server = text("server.crt")
    assert "DNS:localhost, IP Address:127.0.0.1, DNS:broker.example, IP Address:10.0.0.2" in server
    assert "TLS Web Server Authentication" in server and "CA:FALSE" in server
    assert "TLS Web Client Authentication" in text("node1.crt") and "CN = node1" in text("node1.crt")
    subprocess.run(["openssl", "verify", "-CAfile", tmp_path / "ca.crt", tmp_path / "server.crt",
                    tmp_path / "node1.crt"], check=True, capture_output=True)
    assert oct((tmp_path / "server.key").stat().st_mode & 0o777) == "0o600"
    subprocess.run(["bash", tool, tmp_path], check=True, capture_output=True, timeout=30)
    assert (tmp_path / "ca.crt").read_bytes() == ca, "re-running must keep the CA nodes already trust"


# ---------------------------------------------------------------------------------------------
# systemd units


def _unit(name: str) -> configparser.RawConfigParser:
    cp = configparser.RawConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str
    # Repeated keys (Environment=, SystemCallFilter=) are legal in units; keep the last for lookups.
    cp.read_string((UNITS / name).read_text().replace("\\\n", " "))
    return cp


def _environment(name: str) -> dict[str, str]:
    env = {}
    for line in (UNITS / name).read_text().splitlines():
        if line.startswith("Environment="):
            key, _, value = line.removeprefix("Environment=").partition("=")
            env[key] = value
    return env


def _exec_argv(name: str, key: str = "ExecStart") -> list[str]:
    return shlex.split(_unit(name)["Service"][key])


@_needs("systemd-analyze")
def test_units_pass_systemd_analyze_verify(tmp_path):
    # --root: executables the units name are stubbed in a scratch root, so nothing is installed.
    (tmp_path / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/lib/systemd/system", tmp_path / "usr/lib/systemd/system", symlinks=True)
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    units = sorted(p.name for p in UNITS.glob("*.service"))
    for name in units:
        shutil.copy(UNITS / name, tmp_path / "etc/systemd/system" / name)
        for key in ("ExecStart", "ExecReload"):
            if key in _unit(name)["Service"]:
                exe = tmp_path / _exec_argv(name, key)[0].lstrip("/")
                exe.parent.mkdir(parents=True, exist_ok=True)
                exe.write_text("#!/bin/sh\n")
                exe.chmod(0o755)
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={tmp_path}", *units],
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


HARDENING = {"NoNewPrivileges": "yes", "CapabilityBoundingSet": "", "ProtectSystem": "strict", "ProtectHome": "yes",
             "PrivateTmp": "yes", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "Restart": "on-failure",
             "StandardOutput": "journal", "StandardError": "journal", "UMask": "0077"}


@pytest.mark.parametrize(("name", "own"), [
    ("gate-node.service", {"User": "gate", "SupplementaryGroups": "audio", "StateDirectory": "gate",
                           "DevicePolicy": "closed", "DeviceAllow": "char-alsa rw"}),
    ("gate-cloud.service", {"DynamicUser": "yes", "StateDirectory": "gate-cloud", "PrivateDevices": "yes",
                            "KillMode": "mixed"}),
])
def test_service_units_are_sandboxed_restarting_and_journalled(name, own):
    service = _unit(name)["Service"]
    for key, value in {**HARDENING, **own}.items():
        assert service.get(key) == value, f"{name}: {key}"


def test_node_unit_environment_is_valid_settings_and_spools_into_its_state_directory():
    env = {k: v.replace("%S", "/var/lib") for k, v in _environment("gate-node.service").items()}
    settings = load_settings(None, env=env)
    state = "/var/lib/" + _unit("gate-node.service")["Service"]["StateDirectory"]
    # ProtectHome=yes: everything the node writes (spool, OTA models, federated store) is under its state directory.
    assert settings.mqtt.spool_dir.startswith(state)
    assert settings.kws.ota.model_dir.startswith(state)
    assert settings.kws.federated.store_dir.startswith(state)
    assert env["GATE_THRESHOLDS"] == "/etc/gate/thresholds.yaml"


def test_node_unit_runs_a_real_gate_node_command():
    from gate.cli import build_parser

    argv = _exec_argv("gate-node.service")
    assert argv[0] == "/opt/gate/venv/bin/gate-node"
    assert build_parser().parse_args(argv[1:]).command == "run"


def test_guide_overrides_are_real_settings():
    text = (DEPLOY / "pi/GUIDE.md").read_text()
    env = dict(re.findall(r"^(GATE_[A-Z_]+)=(\S.*)$", text, flags=re.M))
    assert "GATE_MQTT__BROKER" in env and "GATE_NODE__DEVICE" in env
    env = {k: v.strip("'") for k, v in env.items() if "__" in k}
    load_settings(None, env=env)


def _serve_config(argv: list[str], tmp_path: Path, config: Path) -> CloudConfig:
    """Run `gate-cloud serve ... --print-config` with the unit's or compose's own arguments."""
    argv = [config.as_posix() if a in ("/etc/gate/cloud.yaml",) else a for a in argv]
    r = subprocess.run([sys.executable, "-m", "cloud.cli", *argv, "--print-config"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return CloudConfig.model_validate_json(r.stdout)


def test_cloud_unit_command_and_config_agree_with_the_broker(tmp_path):
    argv = [a.replace("${GATE_CLOUD_WORKERS}", _environment("gate-cloud.service")["GATE_CLOUD_WORKERS"])
            .replace("%S", str(tmp_path)) for a in _exec_argv("gate-cloud.service")]
    assert argv[:2] == ["/opt/gate/venv/bin/gate-cloud", "serve"]
    cfg = _serve_config(argv[1:], tmp_path, UNITS / "cloud.yaml")
    assert cfg.workers == 2 and cfg.db_url == f"sqlite:///{tmp_path}/gate-cloud/cloud.sqlite3"
    credential = _unit("gate-cloud.service")["Service"]["LoadCredential"].split(":")[0]
    assert cfg.password_file == f"/run/credentials/gate-cloud.service/{credential}"
    _check_cloud_against_broker(cfg)


def _check_cloud_against_broker(cfg: CloudConfig) -> None:
    assert re.search(rf"^listener {cfg.broker.rsplit(':', 1)[1]} 127\.0\.0\.1$", GATE_CONF, flags=re.M), \
        "the cloud must use the broker's loopback listener"
    assert cfg.broker.startswith("mqtt://127.0.0.1:")
    assert f"\nuser {cfg.username}\n" in (DEPLOY / "mosquitto/gate.acl").read_text()
    (limit,) = re.findall(r"^message_size_limit (\d+)$", GATE_CONF, flags=re.M)
    assert cfg.max_payload_kb * 1024 == int(limit)
    assert cfg.client_id_prefix, "stable client ids let a restarted worker resume its session"


# ---------------------------------------------------------------------------------------------
# Cloud compose


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """deploy/cloud/broker/ as the documented commands produce it."""
    if not (shutil.which("mosquitto_passwd") and shutil.which("openssl")):
        pytest.skip("needs mosquitto_passwd and openssl")
    broker = tmp_path_factory.mktemp("cloud") / "broker"
    subprocess.run(["bash", DEPLOY / "mosquitto/make-passwords.sh", broker, "node1"], check=True,
                   capture_output=True, timeout=30)
    subprocess.run(["bash", DEPLOY / "certs/make-dev-certs.sh", broker / "certs"], check=True,
                   capture_output=True, timeout=30)
    return broker


def _binds(service: dict) -> list[tuple[str, str]]:
    return [tuple(v.split(":")[:2]) for v in service.get("volumes", []) if v.startswith(".")]


def test_compose_mounts_exist_or_are_made_by_the_generators(compose, generated):
    for name, service in compose["services"].items():
        for source, _ in _binds(service):
            rel = Path(source)
            path = generated / rel.relative_to("broker") if rel.parts[0] == "broker" else COMPOSE.parent / rel
            assert path.exists(), f"{name} mounts {source}, which nothing provides"


def test_compose_named_volumes_are_declared(compose):
    used = {v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", [])
            if not v.startswith(".")}
    assert used == set(compose["volumes"])


def test_compose_broker_runs_the_shipped_config_and_publishes_only_tls(compose):
    broker = compose["services"]["mosquitto"]
    targets = {t for _, t in _binds(broker)}
    assert ("../mosquitto/gate.conf", "/etc/mosquitto/mosquitto.conf") in _binds(broker)
    assert ("../mosquitto/gate.acl", "/etc/mosquitto/gate.acl") in _binds(broker)
    assert broker["ports"] == ["8883:8883"]
    entry = (COMPOSE.parent / "mosquitto-entrypoint.sh").read_text()
    assert "-c /etc/mosquitto/mosquitto.conf" in entry
    # Every file gate.conf opens exists in the container: mounted, or installed by the entrypoint.
    named = {v.split(":")[1] for v in broker["volumes"] if not v.startswith(".")}
    for path in re.findall(r"^(?:password_file|acl_file|certfile|keyfile|persistence_location) (\S+)$",
                           GATE_CONF, flags=re.M):
        assert path in targets or path.rstrip("/") in named or re.search(rf"\s{re.escape(path)}$", entry, re.M), path


def test_compose_workers_share_the_brokers_loopback_and_run_real_flags(compose, tmp_path):
    cloud = compose["services"]["cloud"]
    assert cloud["network_mode"] == "service:mosquitto"
    argv = [a.replace("${GATE_CLOUD_WORKERS:-2}", "2") for a in cloud["command"]]
    assert argv[0] == "serve"
    config_target = dict((t, s) for s, t in _binds(cloud))
    cfg = _serve_config(argv, tmp_path, COMPOSE.parent / config_target["/etc/gate/cloud.yaml"])
    _check_cloud_against_broker(cfg)
    entry = (COMPOSE.parent / "worker-entrypoint.sh").read_text()
    secret = next(t for s, t in _binds(cloud) if s.endswith("cloud.password"))
    assert f" {secret} {cfg.password_file}" in entry, "the entrypoint hands the mounted secret to the config's path"
    assert "/run/gate" in cloud["tmpfs"] and cloud["read_only"] is True


def test_dockerfile_copies_what_exists_and_its_ignore_file_lets_through():
    text = (COMPOSE.parent / "Dockerfile").read_text()
    allowed = {line[1:] for line in (COMPOSE.parent / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")}
    for sources in re.findall(r"^COPY (.+) \S+$", text, flags=re.M):
        for src in sources.split():
            assert (ROOT / src).exists(), src
            assert src in allowed, f"{src} is excluded from the build context"
    assert 'ENTRYPOINT ["/bin/sh", "/usr/local/bin/worker-entrypoint.sh"]' in text


def test_shipped_cloud_configs_are_valid():
    for path in (UNITS / "cloud.yaml", COMPOSE.parent / "cloud.yaml"):
        _check_cloud_against_broker(CloudConfig.model_validate(yaml.safe_load(path.read_text())["cloud"]))


@pytest.mark.skipif(subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0
                    if shutil.which("docker") else True, reason="needs the docker compose plugin")
def test_docker_compose_accepts_the_file():
    subprocess.run(["docker", "compose", "-f", COMPOSE, "config", "-q"], check=True, timeout=60)
