"""The node cascade: unit, contract (chunk-size invariance) and the ledger's short-circuit proof."""

import numpy as np
import pytest
from kws_standin import shipped_kws_model
from node_helpers import at_dbfs, feed, hum, pink_noise

from gate.cascade import Cascade
from gate.config import GateSettings
from gate.encoder import SegmentEncoder
from gate.energy import ADC, ANALOG_GATE, ENCODER, FEATURES_KWS, RADIO, EnergyLedger
from gate.segmenter import Segmenter
from gate_core.audio import float_to_int16
from gate_core.detector import Detection
from gate_core.wire import decode_segment, new_id
from sensors.analog.frontend import AnalogFrontEnd

SR = 16000


class LoudSpotter:
    """A deterministic KWS stand-in: one inference every 30 ms; fires when the last 0.2 s is loud."""

    period = 480
    window = 3200

    def __init__(self, level_dbfs: float = -30.0, refractory_s: float = 1.5) -> None:
        self.level = 10 ** (level_dbfs / 20) * 32768
        self.refractory = int(refractory_s * SR)
        self.inferences = 0
        self.fed_at: list[tuple[int, int]] = []  # (first sample, count) of every call: what the KWS saw
        self.reset()

    def reset(self, t0_s: float = 0.0) -> None:
        self._t0 = int(round(t0_s * SR))
        self._buf = np.zeros(0, np.float64)
        self._n = 0
        self._quiet_until = -1

    def process(self, x: np.ndarray) -> list[Detection]:
        self.fed_at.append((self._t0 + self._n, x.size))
        buf = np.concatenate([self._buf, x.astype(np.float64)])
        base = self._n - self._buf.size  # stream-local index of buf[0]
        out = []
        first = (self._n // self.period + 1) * self.period
        for b in range(first, self._n + x.size + 1, self.period):
            if b < self.window:
                continue
            self.inferences += 1
            w = buf[b - self.window - base:b - base]
            t = self._t0 + b
            if np.sqrt(np.mean(w ** 2)) > self.level and t >= self._quiet_until:
                out.append(Detection(t_s=t / SR, score=0.9))
                self._quiet_until = t + self.refractory
        self._n += x.size
        self._buf = buf[-self.window:]
        return out


def build(settings: GateSettings | None = None, *, kws=None, startup_s: float = 0.0, publisher=None) -> Cascade:
    s = settings or GateSettings()
    ledger = EnergyLedger(always_on=(ANALOG_GATE,))
    return Cascade(front=AnalogFrontEnd.from_config(s.analog), segmenter=Segmenter.from_config(s.segmenter),
                   encoder=SegmentEncoder(node_id="n1", boot_id=new_id(), codec=s.segmenter.codec, wall_clock=None),
                   kws=kws if kws is not None else LoudSpotter(), ledger=ledger, publisher=publisher,
                   adc_startup_s=startup_s)


def run(c: Cascade, x: np.ndarray, chunk: int):
    segs, events = [], []
    for a in range(0, x.size, chunk):
        out = c.process(x[a:a + chunk])
        segs += out.segments
        events += out.events
    segs += c.flush().segments
    return segs, events


def scene(seconds: float = 14.0, *, bursts=((3.0, 1.0), (9.0, 0.6)), bed_dbfs: float = -60.0) -> np.ndarray:
    """A quiet pink bed with speech-band tone bursts (loud enough for LoudSpotter) at (start, length)."""
    rng = np.random.default_rng(3)
    x = at_dbfs(pink_noise(int(seconds * SR), rng), bed_dbfs).astype(np.float64)
    for start, length in bursts:
        n = int(length * SR)
        t = np.arange(n) / SR
        env = np.minimum(1.0, np.minimum(t, length - t) / 0.02)
        tones = np.sin(2 * np.pi * 700 * t) + np.sin(2 * np.pi * 1900 * t)
        x[int(start * SR):int(start * SR) + n] += 0.1 * env * tones
    return float_to_int16(x)


class Sink:
    def __init__(self) -> None:
        self.payloads: list[tuple[str, bytes]] = []

    def publish_segment(self, payload: bytes, *, segment_id: str) -> None:
        self.payloads.append((segment_id, payload))


# --------------------------------------------------------------------------- short circuit


def _brown(n: int, rng: np.random.Generator) -> np.ndarray:
    """Random-walk noise with its drift removed (a leaky integrator): fan and road rumble."""
    from scipy import signal

    return signal.lfilter([1.0], [1.0, -0.995], rng.standard_normal(n))


@pytest.mark.parametrize("kind", ["digital_silence", "pink", "white", "hum", "fan_like_brown"])
def test_kws_is_never_invoked_on_silence_or_stationary_noise(kind):
    rng = np.random.default_rng(11)
    n = 30 * SR
    x = {"digital_silence": lambda: np.zeros(n, np.float32),
         "pink": lambda: at_dbfs(pink_noise(n, rng), -45),
         "white": lambda: at_dbfs(rng.standard_normal(n), -50),
         "hum": lambda: at_dbfs(hum(n, rng), -45),
         "fan_like_brown": lambda: at_dbfs(_brown(n, rng), -45)}[kind]()
    spotter = LoudSpotter()
    c = build(kws=spotter, startup_s=0.01)
    segs, events = run(c, float_to_int16(x), 320)
    snap = c.ledger.snapshot()
    assert events == [] and segs == []
    assert snap[FEATURES_KWS].invocations == 0 and spotter.inferences == 0 and spotter.fed_at == []
    assert snap[ADC].is_zero and snap[ENCODER].is_zero and snap[RADIO].is_zero
    assert snap[ANALOG_GATE].active_seconds == pytest.approx(30.0)
    assert snap[ANALOG_GATE].invocations == 3000  # one decision every 10 ms tick


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("chunk", [37, 160, 333, 4096, 65536])
def test_outputs_and_counts_do_not_depend_on_chunk_size(chunk):
    # Tiny chunks are slow in Python (a call per 2 ms): a shorter scene then, with the same structure.
    x = scene(4.0, bursts=((1.0, 0.6),)) if chunk < 100 else scene()
    ref = build(startup_s=0.012)
    want, want_ev = run(ref, x, x.size)
    c = build(startup_s=0.012)
    got, got_ev = run(c, x, chunk)
    assert want and got_ev == want_ev
    assert [(p.segment.start_sample, p.segment.end_sample, p.segment.detect_sample) for p in got] == \
        [(p.segment.start_sample, p.segment.end_sample, p.segment.detect_sample) for p in want]
    assert all(np.array_equal(a.segment.samples, b.segment.samples) for a, b in zip(got, want, strict=True))
    assert c.counts() == ref.counts()
    a, b = c.ledger.snapshot(), ref.ledger.snapshot()
    for stage in (ANALOG_GATE, ADC, FEATURES_KWS, ENCODER):
        assert a[stage].invocations == b[stage].invocations and a[stage].bytes == b[stage].bytes
        assert a[stage].active_seconds == pytest.approx(b[stage].active_seconds, rel=1e-9, abs=1e-9)


def test_streaming_equals_batch_with_the_real_kws_stage():
    """The same contract with gate.kws.KeywordSpotter (shipped model, else the loudness stand-in)."""
    from gate.kws import KeywordSpotter

    path = shipped_kws_model()
    s = GateSettings()
    s.kws.model_path = str(path)
    x = scene(bursts=((3.0, 1.2),))
    out = []
    for chunk in (x.size, 320, 4999):
        c = build(s, kws=KeywordSpotter.from_config(s.kws))
        segs, _ = run(c, x, chunk)
        out.append(([(p.segment.start_sample, p.segment.end_sample) for p in segs], c.counts()))
    assert out[0] == out[1] == out[2]
    assert out[0][1]["kws_inferences"] > 0


# --------------------------------------------------------------------------- the ADC path


def test_adc_is_charged_from_gate_open_and_delivers_after_startup():
    s = GateSettings()
    s.segmenter.analog_preroll_s = 0.0
    spotter = LoudSpotter(level_dbfs=0.0)  # never fires: this test is about the gate and the ADC
    c = build(s, kws=spotter, startup_s=0.05)
    _, events = run(c, scene(bursts=((3.0, 1.0),)), 320)
    opened = next(e.t_s for e in events if e.kind == "open")
    closed = next(e.t_s for e in events if e.kind == "close")
    n = c.counts()
    assert n["adc_wakes"] == 1
    assert n["adc_on"] == round((closed - opened) * SR)
    assert n["adc_on"] - n["adc_digitised"] == round(0.05 * SR)  # start-up: powered, nothing delivered
    assert spotter.fed_at[0][0] == round((opened + 0.05) * SR)  # the KWS sees audio from ready on
    assert c.ledger.snapshot()[ADC].bytes == 2 * n["adc_digitised"]


def test_analog_preroll_is_digitised_at_wake_and_charged():
    s = GateSettings()
    s.segmenter.analog_preroll_s = 0.5
    spotter = LoudSpotter(level_dbfs=0.0)
    c = build(s, kws=spotter, startup_s=0.01)
    _, events = run(c, scene(bursts=((3.0, 1.0),)), 320)
    opened = next(e.t_s for e in events if e.kind == "open")
    closed = next(e.t_s for e in events if e.kind == "close")
    n = c.counts()
    # The store hands over the 0.5 s before the ADC was ready; digitising it costs ADC time and bytes.
    assert spotter.fed_at[0][0] == round((opened + 0.01 - 0.5) * SR)
    assert n["adc_digitised"] == round((closed - opened - 0.01 + 0.5) * SR)
    assert n["adc_on"] == round((closed - opened + 0.5) * SR)


def test_a_preroll_reaching_into_the_last_run_is_charged_only_for_what_is_new():
    s = GateSettings()
    s.segmenter.analog_preroll_s = 1.0
    spotter = LoudSpotter(level_dbfs=0.0)
    c = build(s, kws=spotter, startup_s=0.0)
    _, events = run(c, scene(bursts=((3.0, 0.5), (3.9, 0.5), (8.0, 0.5))), 320)
    opens = [e.t_s for e in events if e.kind == "open"]
    closes = [e.t_s for e in events if e.kind == "close"]
    assert len(opens) == len(closes) == 3
    assert opens[1] - closes[0] < 1.0 < opens[2] - closes[1]  # the second wake's pre-roll overlaps the first run
    n = c.counts()
    # The first and third wakes read their whole second of pre-roll; the second only the gap since the
    # first run ended (the rest is still in RAM), so each sample is digitised once.
    runs = sum(b - a for a, b in zip(opens, closes))
    expected = runs + 1.0 + (opens[1] - closes[0]) + 1.0
    assert n["adc_digitised"] == pytest.approx(expected * SR, abs=2)
    assert n["adc_on"] == n["adc_digitised"]
    # The KWS still hears the full pre-roll of every wake.
    assert spotter.fed_at[0][0] == round((opens[0] - 1.0) * SR)


def test_adc_is_held_for_the_command_window_after_the_gate_closes():
    s = GateSettings()
    s.segmenter.command_window_s = 4.0
    c = build(s, startup_s=0.0)
    segs, events = run(c, scene(bursts=((3.0, 0.5),)), 320)
    (p,) = segs
    closed = next(e.t_s for e in events if e.kind == "close")
    assert closed < p.segment.t_detect_s + 4.0  # the gate closed mid command window...
    assert p.segment.end_reason == "command_window"  # ...and the segment still got all of it
    assert p.segment.t_end_s == pytest.approx(p.segment.t_detect_s + 4.0)
    n = c.counts()
    assert n["adc_on"] == n["adc_digitised"] == p.segment.end_sample - (p.segment.start_sample)
    # The KWS ran only while the gate was open, never during the hold.
    fed_end = max(a + k for a, k in c.kws.fed_at)
    assert fed_end <= round(closed * SR)


# --------------------------------------------------------------------------- output


def test_segments_are_published_decodable_and_stamped_on_the_audio_clock():
    sink = Sink()
    c = build(publisher=sink)
    x = scene()
    segs, _ = run(c, x, 1000)
    assert len(segs) == 2 and len(sink.payloads) == 2
    for p, (sid, payload) in zip(segs, sink.payloads, strict=True):
        header, audio = decode_segment(payload, max_bytes=1 << 20)
        assert header.segment_id == sid == p.encoded.segment_id
        assert header.t_start_s == p.segment.t_start_s and header.t_end_s == p.segment.t_end_s
        assert header.t_start_s <= header.t_detect_s <= header.t_end_s
        assert np.array_equal(audio, x[p.segment.start_sample:p.segment.end_sample])
        assert header.scores == {"kws": pytest.approx(0.9)} and header.codec == "flac"
        assert header.ledger_delta["stages"]["adc"]["invocations"] >= 1
    snap = c.ledger.snapshot()
    assert snap[ENCODER].invocations == 2
    assert snap[ENCODER].bytes == sum(p.encoded.audio_bytes for p in segs)
    assert snap[ENCODER].bytes < sum(p.segment.nbytes for p in segs)  # FLAC beats PCM


def test_reconfigure_keeps_the_audio_clock():
    c = build()
    x = scene()
    run(c, x[:6 * SR], 1000)
    s = GateSettings()
    s.segmenter.command_window_s = 1.0
    c.reconfigure(s, kws=LoudSpotter())
    rest, _ = run(c, x[6 * SR:], 1000)
    (p,) = rest
    assert p.segment.t_detect_s > 9.0  # stamped on the stream's clock, not the new front end's
    assert p.segment.t_end_s == pytest.approx(p.segment.t_detect_s + 1.0)


def test_from_config_builds_every_stage_with_the_profiles_startup():
    path = shipped_kws_model()
    s = GateSettings()
    s.kws.model_path = str(path)
    s.energy.profile = "mcu-analog"
    c = Cascade.from_config(s)
    assert c.startup == round(0.010 * SR)
    assert c.store == round(s.segmenter.analog_preroll_s * SR)
    with pytest.raises(ValueError, match="always_on"):
        Cascade(front=c.front, segmenter=c.segmenter, encoder=c.encoder, kws=None, ledger=EnergyLedger())


# --------------------------------------------------------------------------- on-node second stage


class FirstRejected:
    """A second stage that rejects the first candidate and accepts the rest; it says what it embedded."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float]] = []
        self.audio_s = 0.0

    def verify(self, samples: np.ndarray, fired_at_s: float) -> tuple[bool, float]:
        self.calls.append((samples.size, fired_at_s))
        self.audio_s += 2.5
        return (len(self.calls) > 1), (0.9 if len(self.calls) > 1 else 0.1)


def test_second_stage_keeps_a_rejected_candidate_off_the_radio_and_is_charged():
    from gate.energy import SECOND_STAGE

    sink, check = Sink(), FirstRejected()
    c = build(publisher=sink)
    c.second_stage = check
    segs, rejected = feed(c, scene(), 1000)
    assert len(check.calls) == 2 and len(rejected) == 1 and len(segs) == 1 and len(sink.payloads) == 1
    assert rejected[0].score == pytest.approx(0.1) and rejected[0].segment.t_detect_s < segs[0].segment.t_detect_s
    # Each check is given its segment and where in it the tiny model fired.
    for (n, fired), seg in zip(check.calls, [rejected[0].segment, segs[0].segment], strict=True):
        assert n == seg.n_samples and fired == pytest.approx(seg.t_detect_s - seg.t_start_s)
    snap = c.ledger.snapshot()
    assert snap[SECOND_STAGE].invocations == 2 and snap[SECOND_STAGE].active_seconds == pytest.approx(5.0)
    assert snap[ENCODER].invocations == 1  # the rejected candidate was never encoded
    assert c.counts()["second_rejected"] == 1


def test_second_stage_is_refused_on_a_profile_that_cannot_run_it():
    from gate.cascade import load_second_stage
    from gate_core.errors import ConfigError

    s = GateSettings()
    s.kws.second_stage.enabled = True
    s.energy.profile = "mcu-analog"
    with pytest.raises(ConfigError, match="mcu-analog.*does not price second_stage"):
        load_second_stage(s)
    s.kws.second_stage.enabled = False
    assert load_second_stage(s) is None
