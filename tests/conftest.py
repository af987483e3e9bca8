"""Fixtures shared by the test modules: a real mosquitto per test, and a PostgreSQL server per module.

Helpers that are not fixtures (the service wrapper, segments, stand-in models, collectors) live in
cloud_helpers.py, mqtt_helpers.py, fault_helpers.py and node_helpers.py.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from mqtt_helpers import MOSQUITTO, Mosquitto

PG_BIN = Path("/usr/lib/postgresql")


@pytest.fixture(name="mosquitto")
def mosquitto_fixture(tmp_path) -> Iterator[Mosquitto]:
    """A real mosquitto on a free loopback port, with persistence in the test's directory."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    broker = Mosquitto(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# ---------------------------------------------------------------------------------------------
# PostgreSQL from Debian's package, started once per test module that asks for it


def _find_pg_bin() -> Path | None:
    for d in sorted(PG_BIN.glob("*/bin"), reverse=True):
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    return None


class PgServer:
    def __init__(self, url: str, restart) -> None:
        self.url = url
        self.restart = restart


@pytest.fixture(scope="module")
def pg_server():
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'psycopg[binary]')")
    bindir = _find_pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not installed (Debian: postgresql)")
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no 'postgres' system user to run the server as")
    if os.geteuid() != 0 and os.geteuid() != user.pw_uid:
        pytest.skip("starting PostgreSQL here needs root (to run as 'postgres') or the postgres user")
    from gate.transport.broker import free_port

    tmp = Path(tempfile.mkdtemp(prefix="gate-pg-"))
    data = tmp / "data"
    os.chown(tmp, user.pw_uid, user.pw_gid)
    port = free_port()
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*as_pg, *args], capture_output=True, text=True, timeout=timeout)

    r = run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    if r.returncode:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip(f"initdb failed: {r.stderr[-300:]}")
    opts = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off"
    r = run(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(tmp / "pg.log"), "-w", "-t", "30", "start")
    if r.returncode:
        log = (tmp / "pg.log").read_text(errors="replace")[-500:] if (tmp / "pg.log").exists() else r.stderr
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {log}")
    def restart() -> None:
        r = run(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(tmp / "pg.log"), "-w", "-t", "30",
                "-m", "immediate", "restart")
        assert r.returncode == 0, r.stderr

    try:
        yield PgServer(f"postgresql://postgres@127.0.0.1:{port}/postgres", restart)
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_url(pg_server) -> str:
    return pg_server.url
