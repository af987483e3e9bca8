"""Node cascade: replay speed on the demo scenario, live-node CPU at a typical duty cycle, latency, memory.

- ``cascade_x_realtime``: audio seconds per wall second of the whole cascade (analog gate, ADC
  model, log-mel + KWS while open, segmenter, FLAC encoder, estimated radio) over the demo scene,
  best of three, one thread. Model loading is excluded; everything per-sample is included.
- ``node_cpu_pct``: the live node (paced source in 20 ms blocks -> cascade -> spool -> MQTT to an
  embedded broker) fed ~22 s of the demo scene in real time; process CPU time over wall time, all
  threads of the node included (the broker is a separate process and not counted).
- ``segment_latency_*``: for segments published during that run, broker arrival minus the wall
  time at which the segment's last sample was fed (``heard``), and minus encode time (``encode``).
- ``peak_rss_mb``: ru_maxrss of this process after both runs.

The demo scene is datasets/demo (from `gate-data scenario`); without it a 2-minute scene is made.
The KWS is the shipped model, else the loudness stand-in of tests/ (the result says which).
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "datasets" / "demo"
LIVE_SPAN_S = (20.0, 42.0)  # a wake word + command, a lone wake word, other speech: a typical stretch
sys.path.insert(0, str(ROOT / "tests"))


def _scene() -> tuple[np.ndarray, str]:
    from sensors.wavfile import read_audio

    if (DEMO / "scenario.json").is_file():
        from sensors.scenario import scenario_inputs

        path, _ = scenario_inputs(DEMO)
        return read_audio(path), str(path.relative_to(ROOT))
    from node_helpers import wake_scene

    tmp = Path(tempfile.mkdtemp(prefix="gate-bench-"))
    _, pcm, _ = wake_scene(tmp / "scene.wav", seconds=120.0, at_s=[10.0, 45.0, 80.0], bed_dbfs=-55.0)
    return pcm, "generated 2-minute scene (datasets/demo missing)"


def _settings(tmp: Path, *, standin: bool = False):
    from kws_standin import STANDIN, kws_model_path

    from gate.config import GateSettings

    model, real = (STANDIN, False) if standin else kws_model_path()
    s = GateSettings()
    s.kws.model_path = str(model)
    s.mqtt.spool_dir = str(tmp / "spool")
    return s, real


def _replay_speed(settings, audio: np.ndarray) -> tuple[float, dict]:
    from gate.cascade import Cascade
    from gate.energy import ANALOG_GATE, EnergyLedger
    from gate.kws import KeywordSpotter
    from gate.replay import EstimatedRadio

    kws = KeywordSpotter.from_config(settings.kws)
    best, info = 0.0, {}
    for _ in range(3):
        ledger = EnergyLedger(always_on=(ANALOG_GATE,))
        c = Cascade.from_config(settings, ledger=ledger, kws=kws,
                                publisher=EstimatedRadio(ledger=ledger, mqtt=settings.mqtt))
        t0 = time.perf_counter()
        n = 0
        for a in range(0, audio.size, 1 << 16):
            n += len(c.process(audio[a:a + (1 << 16)]).segments)
        n += len(c.flush().segments)
        dt = time.perf_counter() - t0
        if audio.size / 16000 / dt > best:
            best = audio.size / 16000 / dt
            snap = ledger.snapshot()
            info = {"segments": n, "adc_duty": snap["adc"].active_seconds / snap.audio_seconds,
                    "kws_inferences": snap["features_kws"].invocations}
    return best, info


def _live(settings, audio: np.ndarray) -> dict:
    from mqtt_helpers import Collector

    from gate.node import PacedSource, run_node
    from gate.transport.broker import EmbeddedBroker
    from gate_core.wire import decode_segment

    with EmbeddedBroker() as broker:
        arrivals: list[tuple[float, bytes]] = []
        col = Collector(broker.host, broker.port, ["gate/+/segments"], client_id="bench")
        col.client.on_message = lambda c, u, m: arrivals.append((time.time(), bytes(m.payload)))
        source = PacedSource(audio, block_ms=settings.node.blocksize_ms, realtime=True)
        r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        t = threading.Thread(target=run_node, kwargs=dict(settings=settings, config_path=None, broker=broker.url,
                                                          install_signals=False, source=source))
        t.start()
        t.join()
        r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        time.sleep(0.5)
        col.close()
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    heard, encode = [], []
    for arrived, payload in arrivals:
        h, _ = decode_segment(payload, max_bytes=1 << 22)
        heard.append(arrived - (source.started_unix + h.t_end_s))
        encode.append(arrived - h.sent_unix)
    return {"node_cpu_pct": 100.0 * cpu / (w1 - w0), "live_audio_s": audio.size / 16000, "live_wall_s": w1 - w0,
            "live_segments": len(arrivals),
            "segment_latency_heard_to_broker_ms_max": 1000 * max(heard) if heard else None,
            "segment_latency_encode_to_broker_ms_max": 1000 * max(encode) if encode else None}


def run() -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    audio, scene = _scene()
    with tempfile.TemporaryDirectory(prefix="gate-bench-node-") as tmp:
        settings, real_model = _settings(Path(tmp))
        x_rt, info = _replay_speed(settings, audio)
        # The stand-in fires on every loud stretch, so segments are cut, encoded and published: the
        # live run exercises every stage (and gives latencies) whatever the shipped model's recall.
        standin, _ = _settings(Path(tmp), standin=True)
        x_rt_standin, info_standin = _replay_speed(standin, audio)
        a, b = (int(t * 16000) for t in LIVE_SPAN_S)
        live = _live(standin, audio[a:b])
    return {
        "scene": scene, "scene_s": audio.size / 16000,
        "kws_model": "shipped" if real_model else "loudness stand-in (tests/data/kws_standin.tflite)",
        "cascade_x_realtime": x_rt, "cascade_x_realtime_target": 300, **info,
        "cascade_x_realtime_with_standin_kws": x_rt_standin,
        "segments_with_standin_kws": info_standin["segments"],
        "live_kws_model": "loudness stand-in", **live, "node_cpu_pct_max": 5,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
