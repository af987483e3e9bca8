"""The microphone path for real: PulseAudio null sink <- paplay(WAV), captured by `gate-node run`
through ALSA's pulse plugin, PortAudio and sounddevice, and published to a real mosquitto.

A private PulseAudio daemon runs in this test's own runtime directory, so it neither needs nor
disturbs a desktop session; the node subprocess gets the same PULSE_SERVER.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from kws_standin import STANDIN, shipped_kws_model
from mqtt_helpers import Collector, needs_mosquitto
from node_helpers import needs_espeak, wake_scene

from gate_core.wire import decode_segment

SINK = "gate_test_sink"
GATE_NODE = Path(sys.executable).parent / "gate-node"
MISSING = [b for b in ("pulseaudio", "pactl", "paplay") if shutil.which(b) is None]

pytestmark = [
    needs_mosquitto, needs_espeak, pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)} "
                                             "(Debian: pulseaudio pulseaudio-utils libasound2-plugins)"),
]


def _sounddevice_problem() -> str | None:
    try:
        import sounddevice  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"sounddevice/PortAudio unavailable: {exc}"
    return None


@pytest.fixture
def pulse(tmp_path):
    """A private PulseAudio daemon with a null sink whose monitor is the default source."""
    problem = _sounddevice_problem()
    if problem:
        pytest.skip(problem)
    runtime = tmp_path / "xdg"
    (runtime / "pulse").mkdir(parents=True)
    runtime.chmod(0o700)
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(home),
           "PULSE_SERVER": f"unix:{runtime}/pulse/native"}
    start = subprocess.run(
        ["pulseaudio", "--daemonize=yes", "--exit-idle-time=-1", "-n", "--log-target=stderr",
         f"--load=module-null-sink sink_name={SINK}", "--load=module-native-protocol-unix"],
        env=env, capture_output=True, text=True, timeout=30)
    deadline = time.monotonic() + 10
    while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            pytest.skip(f"PulseAudio daemon did not start (exit {start.returncode}): {start.stderr.strip()[-800:]}")
        time.sleep(0.1)
    subprocess.run(["pactl", "set-default-sink", SINK], env=env, check=True, timeout=10)
    subprocess.run(["pactl", "set-default-source", f"{SINK}.monitor"], env=env, check=True, timeout=10)
    try:
        yield env
    finally:
        subprocess.run(["pulseaudio", "--kill"], env=env, capture_output=True, timeout=30)


class Node:
    """`gate-node run` as a subprocess; stderr is collected by a thread so the pipe never fills."""

    def __init__(self, args: list[str], env: dict) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen([str(GATE_NODE), *args], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for_line(self, needle: str, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: any(needle in ln for ln in self.lines) or self.proc.poll() is not None,
                                       timeout) and any(needle in ln for ln in self.lines)

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    @property
    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines[-60:])


# capture None: 16 kHz, PulseAudio resamples; 48000: the node captures at 48 kHz and resamples itself.
# model "standin" proves the audio path whatever the KWS; "shipped" needs gate/models' model to wake.
@pytest.mark.parametrize(("capture_rate", "model_kind"), [(None, "standin"), (48000, "standin"), (None, "shipped")])
def test_gate_node_run_publishes_the_wake_word_heard_through_pulseaudio(pulse, mosquitto, tmp_path, capture_rate,
                                                                        model_kind):
    real_model = model_kind == "shipped"
    model = shipped_kws_model() if real_model else STANDIN
    wav, _, phrase_s = wake_scene(tmp_path / "hey_jarvis.wav", seconds=6.0, at_s=[1.0], bed_dbfs=-75.0,
                                  sample_rate=22050)
    cfg = tmp_path / "thresholds.yaml"
    cfg.write_text(
        f"kws:\n  model_path: {model}\n"
        f"mqtt:\n  spool_dir: {tmp_path / 'spool'}\n"
        f"node:\n  device: pulse\n  samplerate: {'null' if capture_rate is None else capture_rate}\n"
        "  heartbeat_s: 2.0\n")
    col = Collector(mosquitto.host, mosquitto.port, ["gate/+/segments", "gate/+/status"])
    env = {**pulse, "PYTHONUNBUFFERED": "1"}
    env.pop("JOURNAL_STREAM", None)
    node = Node(["--config", str(cfg), "--log-level", "INFO", "run",
                 "--broker", f"mqtt://{mosquitto.host}:{mosquitto.port}"], env)
    try:
        assert node.wait_for_line("capturing from", 30), f"node did not start capturing:\n{node.log}"
        assert col.wait_for(lambda c: any(b'"online"' in p for p in c.on("/status")), 10), node.log
        # paplay buffers ~1.8 s before sound flows into the sink; the node hears it after that.
        subprocess.run(["paplay", str(wav)], env=pulse, check=True, timeout=60)
        assert col.wait_for(lambda c: len(c.on("/segments")) >= 1, 15), \
            f"no segment published ({'shipped model' if real_model else 'loudness stand-in'}):\n{node.log}"
    finally:
        rc = node.stop()
        col.wait_for(lambda c: any(b'"offline"' in p for p in c.on("/status")), 5)
        col.close()
    assert rc == 0, node.log  # SIGTERM is a clean stop
    header, audio = decode_segment(col.on("/segments")[0], max_bytes=1 << 20)
    assert header.t_start_s <= header.t_detect_s <= header.t_end_s
    # What PortAudio captured is the phrase, not silence: the segment is loud where the phrase is.
    rms_dbfs = 20 * np.log10(np.sqrt(np.mean(audio.astype(np.float64) ** 2)) / 32768 + 1e-12)
    assert rms_dbfs > -45, rms_dbfs
    assert header.duration_s >= phrase_s * 0.5
    assert json.loads(col.on("/status")[-1])["state"] == "offline"
    if capture_rate is not None:
        assert "resampling" in node.log
    assert "microphone" in node.log and "overruns" in node.log
