"""`kws.federated` on gate-node: the setting, the store the node opens, and labels from real verdicts."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from kws_standin import STANDIN, shipped_kws_model
from mqtt_helpers import Collector, needs_mosquitto
from node_helpers import needs_espeak, node_settings, wake_scene

from gate.config import GateSettings, SettingsError, load_settings
from gate.fedstore import (
    AFTER_OFFSETS_S,
    BACKGROUND_EVERY_S,
    BACKGROUND_FIRE_GAP_S,
    BACKGROUND_MAX_POSTERIOR,
    BACKGROUND_SHARE,
    CAPACITY,
    NEGATIVE,
    NEGATIVE_OFFSETS_S,
    POSITIVE,
    POSITIVE_OFFSETS_S,
    BackgroundSampler,
    BackgroundTap,
    FeatureStore,
    Quant,
)
from gate.kws.config import FederatedConfig, KwsConfig
from gate.kws.interpreter import TFLiteModel, read_card
from gate.kws.stage import KeywordSpotter, outputs_logits, sigmoid
from gate.node import EndOfStream, FederatedCollection, Node, PacedSource, run_node
from gate_core.wire import NodeTopics, Verdict, decode_segment
from sensors.wavfile import read_audio

REAL_SPEECH = Path(__file__).resolve().parents[1] / "datasets" / "real_speech"

# -- the setting ------------------------------------------------------------------------------------


def test_defaults_are_the_simulated_fleets_and_off():
    cfg = GateSettings().kws.federated
    assert cfg.enabled is False
    assert (cfg.capacity, cfg.background_share) == (CAPACITY, BACKGROUND_SHARE) == (4000, 0.3)
    assert cfg.store_dir == "~/.local/state/gate/fedstore"


@pytest.mark.parametrize(("body", "field", "says"), [
    ("capacity: 0", "kws.federated.capacity", "got 0"),
    ("capacity: many", "kws.federated.capacity", "got 'many'"),
    ("background_share: 1.0", "kws.federated.background_share", "got 1.0"),
    ("background_share: -0.1", "kws.federated.background_share", "got -0.1"),
    ("store_dir: '  '", "kws.federated.store_dir", "give a directory path"),
    ("enabled: maybe", "kws.federated.enabled", "got 'maybe'"),
    ("capacty: 10", "kws.federated.capacty", "did you mean 'capacity'"),
    ("capacity: 2\n    background_share: 0.9", "kws.federated", "leaves no room for labelled windows"),
])
def test_bad_values_are_one_line_naming_file_and_field(tmp_path, body, field, says):
    f = tmp_path / "t.yaml"
    f.write_text(f"kws:\n  federated:\n    {body}\n")
    with pytest.raises(SettingsError) as exc:
        load_settings(f, env={})
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{f}:") and f" {field}: " in msg and says in msg


def test_the_environment_turns_it_on():
    s = load_settings(None, env={"GATE_KWS__FEDERATED__ENABLED": "true", "GATE_KWS__FEDERATED__STORE_DIR": "/x"})
    assert s.kws.federated == FederatedConfig(enabled=True, store_dir="/x")


# -- the store the node opens -----------------------------------------------------------------------


def _spotter(path: Path | None = None) -> KeywordSpotter:
    return KeywordSpotter.from_config(KwsConfig(model_path=str(path or shipped_kws_model())))


def _enabled(store: Path, **kw) -> GateSettings:
    s = GateSettings()
    s.kws.federated = FederatedConfig(enabled=True, store_dir=str(store), **kw)
    return s


def test_off_opens_nothing(tmp_path):
    s = GateSettings()
    s.kws.federated = FederatedConfig(store_dir=str(tmp_path / "fed"))
    assert FederatedCollection.from_settings(s, _spotter()) is None
    assert not (tmp_path / "fed").exists()


@pytest.mark.parametrize("case", ["corrupt file", "dir is a file", "float-input model"])
def test_a_store_that_cannot_be_opened_is_one_warning_and_the_node_runs_on(tmp_path, caplog, case):
    store = tmp_path / "fed"
    model = None
    if case == "corrupt file":
        store.mkdir()
        (store / "fedstore.npz").write_bytes(b"PK\x03\x04 not a zip at all")
    elif case == "dir is a file":
        store.write_text("")
    else:
        model = STANDIN
    settings = _enabled(store)
    settings.kws.model_path = str(model or shipped_kws_model())
    from gate.cascade import Cascade

    cascade = Cascade.from_config(settings)
    with caplog.at_level(logging.WARNING, logger="gate.node"):
        fed = FederatedCollection.from_settings(settings, cascade.kws)
        node = Node(settings=settings, cascade=cascade, source=PacedSource(np.zeros(8000, np.int16), realtime=False),
                    transport=None, federated=fed)
        assert node.run() == 0
    assert fed is not None and not fed.collecting
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "\n" not in warning and str(store / "fedstore.npz") in warning and "without collecting" in warning
    assert node.stats.blocks == 25 and node.cascade.t_s == pytest.approx(0.5)  # every block heard
    if case == "corrupt file":  # left as it was found, for whoever looks into it
        assert (store / "fedstore.npz").read_bytes() == b"PK\x03\x04 not a zip at all"


def test_existing_callbacks_are_kept_and_run_first(tmp_path):
    from types import SimpleNamespace

    from gate.cascade import Cascade

    settings = _enabled(tmp_path / "fed")
    settings.kws.model_path = str(shipped_kws_model())
    calls: list[str] = []
    cascade = Cascade.from_config(settings, on_segment=lambda p: calls.append("cascade's"))
    transport = SimpleNamespace(on_verdict=lambda v: calls.append("transport's"))
    fed = FederatedCollection.from_settings(settings, cascade.kws)
    fed.on_segment = lambda p: calls.append("segment to the store")
    fed.on_verdict = lambda v: calls.append("verdict to the store")
    Node(settings=settings, cascade=cascade, source=PacedSource(np.zeros(1, np.int16)), transport=transport,
         federated=fed)
    cascade.on_segment(None)
    transport.on_verdict(None)
    assert calls == ["cascade's", "segment to the store", "transport's", "verdict to the store"]


def test_the_collection_follows_a_swapped_model(tmp_path, caplog):
    store = tmp_path / "fed"
    first = _spotter()
    fed = FederatedCollection(_enabled(store).kws.federated, first)
    assert fed.collecting
    fed.collector.store.add(np.ones((3, 100, 40), np.float32), np.array([1, 0, 1]))
    # A release of the same architecture with another input quantization: the stored windows follow it.
    swapped = _spotter()
    q = swapped.model.input
    swapped.model.input = type(q)(q.index, q.shape, q.dtype, q.scale * 2, q.zero_point - 10)
    fed.follow(swapped)
    assert fed.collecting and fed.kws is swapped
    st = fed.collector.store
    assert st.quant == Quant(q.scale * 2, q.zero_point - 10)
    assert np.allclose(st.quant.dequantize(st.x), 1.0, atol=q.scale * 2)
    again = FeatureStore(store, capacity=CAPACITY, frames=100, dim=40, quant=st.quant)
    assert np.array_equal(again.x, st.x) and list(again.y) == [1, 0, 1]
    # A model whose windows are another shape cannot use the store: collection stops, the node does not.
    with caplog.at_level(logging.WARNING, logger="gate.node"):
        fed.follow(_spotter(STANDIN))
    assert not fed.collecting
    assert "does not fit the store" in caplog.text and str(store / "fedstore.npz") in caplog.text


def test_a_verdict_before_the_segments_windows_still_labels_them(tmp_path):
    """The cascade publishes before it calls on_segment: a prompt cloud answers first."""
    from types import SimpleNamespace

    from gate.fedstore import Collector
    from gate.kws.featurize import Featurizer

    quant = Quant.of_input(TFLiteModel(model_path=shipped_kws_model()))
    col = Collector(FeatureStore(tmp_path, capacity=100, frames=100, dim=40, quant=quant), Featurizer("logmel"))
    rng = np.random.default_rng(1)
    seg = SimpleNamespace(t_start_s=10.0, t_detect_s=12.0, samples=(rng.standard_normal(5 * 16000) * 3000
                                                                    ).astype(np.int16))
    assert col.on_verdict(Verdict(segment_id="s1", node_id="n", accepted=False)) == 0
    assert len(col.store) == 0
    col.on_segment(SimpleNamespace(segment=seg, encoded=SimpleNamespace(segment_id="s1")))
    assert col.store.counts["positives"] == 0
    assert col.store.counts["hard_negatives"] == len(NEGATIVE_OFFSETS_S) + len(AFTER_OFFSETS_S)
    # Answered once: a republished verdict finds nothing more to label.
    assert col.on_verdict(Verdict(segment_id="s1", node_id="n", accepted=False)) == 0
    col.on_segment(SimpleNamespace(segment=seg, encoded=SimpleNamespace(segment_id="s2")))
    assert col.store.counts["hard_negatives"] == len(NEGATIVE_OFFSETS_S) + len(AFTER_OFFSETS_S)  # s2: unanswered


# -- end to end: a real broker, a node, the cloud's verdicts -------------------------------------------


class _Verifier:
    """The cloud's stand-in on the broker: answers each new segment with the next of ``decisions``."""

    def __init__(self, mosquitto, decisions: list[bool], node_id: str = "node1") -> None:
        self.decisions = list(decisions)
        self.answered: dict[str, bool] = {}
        self.headers: dict[str, object] = {}
        self.topic = NodeTopics(node_id).verdict
        self.node_id = node_id
        self.all_answered = threading.Event()
        self.col = Collector(mosquitto.host, mosquitto.port, [NodeTopics(node_id).segments], client_id="verifier")
        self.col.client.on_message = self._on_message

    def _on_message(self, client, userdata, msg) -> None:
        header, _ = decode_segment(bytes(msg.payload), max_bytes=1 << 20)
        sid = header.segment_id
        self.headers[sid] = header
        if sid not in self.answered:
            if not self.decisions:
                return
            self.answered[sid] = self.decisions.pop(0)
        v = Verdict(segment_id=sid, node_id=self.node_id, accepted=self.answered[sid])
        client.publish(self.topic, v.to_json(), qos=1)  # the loop thread: no waiting here
        if not self.decisions:
            self.all_answered.set()

    def close(self) -> None:
        self.col.close()


class _FileThenQuiet:
    """The file as fast as the node takes it, then quiet blocks until every segment is answered."""

    def __init__(self, pcm: np.ndarray, done: threading.Event, timeout_s: float = 15.0) -> None:
        self.inner = PacedSource(pcm, realtime=False)
        self.done = done
        self.deadline = time.monotonic() + timeout_s

    def read(self, timeout=None):
        try:
            return self.inner.read(timeout)
        except EndOfStream:
            if self.done.is_set() or time.monotonic() > self.deadline:
                time.sleep(0.3)  # the last verdict's windows reach the store on the transport's thread
                raise
            time.sleep(0.02)
            return np.zeros(320, np.int16)

    def close(self) -> None:
        pass


def _run(settings, mosquitto, pcm, decisions) -> _Verifier:
    verifier = _Verifier(mosquitto, decisions)
    try:
        assert run_node(settings=settings, config_path=None, broker=f"mqtt://{mosquitto.host}:{mosquitto.port}",
                        install_signals=False, source=_FileThenQuiet(pcm, verifier.all_answered)) == 0
    finally:
        verifier.close()
    assert verifier.all_answered.is_set(), f"segments answered: {verifier.answered}"
    return verifier


def _fitting(header, offsets_s: tuple[float, ...], window_s: float = 1.0) -> int:
    """How many of the windows ending at the fire + ``offsets_s`` lie inside the segment: with a short
    pre-roll, the cut-short phrase's windows would start before its first sample."""
    fire, length = header.t_detect_s - header.t_start_s, header.t_end_s - header.t_start_s
    return sum(window_s <= fire + o <= length for o in offsets_s)


def _posteriors(model_path: Path, windows: np.ndarray, quant: Quant) -> np.ndarray:
    m = TFLiteModel(model_path=model_path)
    out = np.array([float(np.ravel(m(quant.dequantize(w)[None]))[0]) for w in windows])
    return sigmoid(out) if outputs_logits(m, read_card(model_path)) else out


@needs_mosquitto
@needs_espeak
def test_verdicts_label_windows_on_disk_without_audio_and_survive_a_restart(mosquitto, tmp_path, caplog):
    model = shipped_kws_model()
    settings = node_settings(tmp_path, model="shipped")
    store_dir = tmp_path / "state" / "fedstore"
    settings.kws.federated = FederatedConfig(enabled=True, store_dir=str(store_dir))
    _, pcm, _ = wake_scene(tmp_path / "room.wav", seconds=13.0, at_s=[2.0, 8.0])

    with caplog.at_level(logging.INFO, logger="gate.node"):
        verifier = _run(settings, mosquitto, pcm, [True, False])
    answered = verifier.answered
    assert sorted(answered.values()) == [False, True]
    # The transport's own verdict callback still ran: the collection was chained after it.
    for sid, ok in answered.items():
        assert f"verdict for {sid}: {'accepted' if ok else 'rejected'}" in caplog.text

    quant = Quant.of_input(TFLiteModel(model_path=model))
    store = FeatureStore(store_dir, capacity=CAPACITY, frames=100, dim=40, quant=quant)
    (accepted,) = [verifier.headers[sid] for sid, ok in answered.items() if ok]
    (rejected,) = [verifier.headers[sid] for sid, ok in answered.items() if not ok]
    n_pos = _fitting(accepted, POSITIVE_OFFSETS_S)
    n_neg = _fitting(rejected, NEGATIVE_OFFSETS_S) + _fitting(accepted, AFTER_OFFSETS_S) + \
        _fitting(rejected, AFTER_OFFSETS_S)
    assert n_pos == len(POSITIVE_OFFSETS_S) and n_neg >= len(NEGATIVE_OFFSETS_S) + 2 * (len(AFTER_OFFSETS_S) - 2)
    assert store.counts["positives"] == n_pos and store.counts["hard_negatives"] == n_neg
    # Background windows, if the talk left room for any, are ones the model scores firmly low.
    assert np.all(_posteriors(model, store.bg, quant) < BACKGROUND_MAX_POSTERIOR)
    # The positives are the model's own input around the fire: it is sure of them.
    assert np.median(_posteriors(model, store.x[store.y == POSITIVE], quant)) > 0.5
    assert store.labelled_bytes_in > 0

    # No audio: the store directory holds the one .npz, and it holds int8 windows and labels only.
    assert sorted(p.name for p in store_dir.iterdir()) == ["fedstore.npz"]
    with np.load(store_dir / "fedstore.npz") as z:
        assert sorted(z.files) == ["bg", "meta", "x", "y"]
        assert z["x"].dtype == np.int8 and z["x"].shape == (n_pos + n_neg, 100, 40)
        assert z["y"].dtype == np.int8 and z["bg"].shape == (len(store.bg), 100, 40)
    before_x, before_y = store.x.copy(), store.y.copy()

    # A restart: the node reopens the store and adds to it.
    caplog.clear()
    _, pcm2, _ = wake_scene(tmp_path / "room2.wav", seconds=7.0, at_s=[2.0])
    with caplog.at_level(logging.INFO, logger="gate.node"):
        (again,) = _run(settings, mosquitto, pcm2, [True]).headers.values()
    assert f"collecting labels in {store_dir / 'fedstore.npz'} ({n_pos} positives, {n_neg} hard negatives" \
        in caplog.text
    after = FeatureStore(store_dir, capacity=CAPACITY, frames=100, dim=40, quant=quant)
    assert after.counts["positives"] == 2 * n_pos
    assert after.counts["hard_negatives"] == n_neg + _fitting(again, AFTER_OFFSETS_S)
    assert np.array_equal(after.x[:len(before_x)], before_x) and np.array_equal(after.y[:len(before_y)], before_y)
    assert {int(v) for v in after.y} == {POSITIVE, NEGATIVE}


# -- background windows: what the KWS scores low, sampled on the audio clock ----------------------------


def _real_speech() -> np.ndarray:
    """datasets/real_speech (LibriVox and pocketsphinx recordings, nobody says the wake phrase), end to end."""
    return np.concatenate([read_audio(f, target_rate=16000) for f in sorted(REAL_SPEECH.glob("*.flac"))])


def test_the_sampler_keeps_no_window_near_a_fire_and_one_per_interval_of_audio():
    sampler = BackgroundSampler()
    fires = [20.0, 20.5, 41.0]
    t = 1.0
    while t < 60.0:
        if fires and t >= fires[0]:
            sampler.fire(fires.pop(0))
        p = 0.9 if 39.0 <= t < 39.5 else 0.05  # a second of near misses: no background
        if sampler.wants(t, p):
            sampler.hold(t, p, np.full((1, 1), t))
        t = round(t + 0.08, 2)
    sampler.finish(60.0)
    times = [t for t, _ in sampler.ready]
    assert times and times[0] == 1.0 and sampler.taken == len(times)
    assert all(b - a >= BACKGROUND_EVERY_S for a, b in zip(times, times[1:], strict=False))
    for t in times:
        assert all(abs(t - f) > BACKGROUND_FIRE_GAP_S for f in (20.0, 20.5, 41.0)) and not 39.0 <= t < 39.5
    # The window held at 19 s (before the fire at 20 s was heard) is dropped; the next one is the first
    # after the gap that follows the fire at 20.5 s.
    assert 13.0 in times and not any(13.0 < t <= 22.5 for t in times) and 22.52 in times
    # The end of the audio: a window whose gap was not heard yet is not kept.
    assert times[-1] <= 60.0 - BACKGROUND_FIRE_GAP_S


def test_the_tap_hands_over_exactly_the_windows_the_model_scored_and_changes_no_detection():
    pcm = _real_speech()[:20 * 16000]
    plain, tapped_kws = _spotter(), _spotter()
    sampler = BackgroundSampler()
    from gate.kws.featurize import Featurizer

    own = tapped_kws.featurizer
    tap = BackgroundTap(tapped_kws, sampler)
    plain.reset(0.0)
    tap.reset(0.0)
    plain.keep_scores = True
    dets_plain, dets_tap = [], []
    for a in range(0, pcm.size, 1000):
        dets_plain += plain.process(pcm[a:a + 1000])
        dets_tap += tap.process(pcm[a:a + 1000])
    sampler.finish(pcm.size / 16000)
    assert [d.t_s for d in dets_tap] == [d.t_s for d in dets_plain]
    assert tap.inferences == plain.inferences and tapped_kws.scores == []  # drained: nothing piles up
    feats = Featurizer("logmel").compute(pcm)
    p_at = {round(s.t_s, 6): s.posterior for s in plain.scores}
    assert len(sampler.ready) >= 2
    for t, window in sampler.ready:
        k = int(round((t - plain.featurizer.frame_end_s(0)) / plain.featurizer.period_s))
        np.testing.assert_array_equal(window, feats[k - 99:k + 1])
        assert p_at[round(t, 6)] < BACKGROUND_MAX_POSTERIOR
    assert tap.untap() is tapped_kws and tapped_kws.featurizer is own and not tapped_kws.keep_scores


def _background_run(tmp_path: Path, mosquitto, pcm: np.ndarray, *, block_ms: float, batch_ms: float,
                    capacity: int = CAPACITY, name: str = "run") -> FeatureStore:
    settings = node_settings(tmp_path / name, model="shipped")
    settings.node.blocksize_ms, settings.node.batch_ms = block_ms, batch_ms
    settings.kws.federated = FederatedConfig(enabled=True, store_dir=str(tmp_path / name / "fed"), capacity=capacity)
    source = PacedSource(pcm, block_ms=block_ms, realtime=False)
    assert run_node(settings=settings, config_path=None, broker=f"mqtt://{mosquitto.host}:{mosquitto.port}",
                    install_signals=False, source=source) == 0
    quant = Quant.of_input(TFLiteModel(model_path=shipped_kws_model()))
    return FeatureStore(tmp_path / name / "fed", capacity=capacity, frames=100, dim=40, quant=quant)


@needs_mosquitto
def test_a_node_replaying_real_speech_fills_the_background_ring_the_same_at_any_chunk_size(mosquitto, tmp_path):
    pcm = _real_speech()
    audio_s = pcm.size / 16000
    a = _background_run(tmp_path, mosquitto, pcm, block_ms=20, batch_ms=100, name="a")
    b = _background_run(tmp_path, mosquitto, pcm, block_ms=64, batch_ms=0, name="b")
    small = _background_run(tmp_path, mosquitto, pcm, block_ms=20, batch_ms=100, capacity=20, name="small")
    n = a.counts["background"]
    # Talk all along: about one window per interval of audio, never more.
    assert audio_s / BACKGROUND_EVERY_S / 2 <= n <= audio_s // BACKGROUND_EVERY_S + 1
    assert np.array_equal(a.bg, b.bg)  # the same windows whatever the chunk size
    assert small.background_cap == 6 < n and np.array_equal(small.bg, a.bg[-6:])  # the cap holds the newest
    assert len(a.x) == len(small.x) == 0  # nobody gave a verdict: no labelled windows
    # They are windows the model scores firmly low, as the node's KWS did.
    model = shipped_kws_model()
    assert np.all(_posteriors(model, a.bg, a.quant) < BACKGROUND_MAX_POSTERIOR)
    # No audio: the one .npz of int8 windows.
    for store in (a, b, small):
        assert sorted(p.name for p in store.root.iterdir()) == ["fedstore.npz"]
    with np.load(a.path) as z:
        assert sorted(z.files) == ["bg", "meta", "x", "y"]
        assert z["bg"].dtype == np.int8 and z["bg"].shape == (n, 100, 40)


def test_a_disk_that_refuses_background_windows_is_one_warning_and_the_node_runs_on(tmp_path, caplog, monkeypatch):
    import gate.fedstore
    from gate.cascade import Cascade

    monkeypatch.setattr(gate.fedstore, "BACKGROUND_BATCH", 2)  # several writes in a short replay
    store = tmp_path / "fed"
    settings = _enabled(store)
    settings.kws.model_path = str(shipped_kws_model())
    pcm = _real_speech()[:40 * 16000]
    cascade = Cascade.from_config(settings)
    with caplog.at_level(logging.WARNING, logger="gate.node"):
        fed = FederatedCollection.from_settings(settings, cascade.kws, labels=False)
        (store / "fedstore.tmp.npz").mkdir()  # every atomic write of the store now fails
        node = Node(settings=settings, cascade=cascade, source=PacedSource(pcm, realtime=False), transport=None,
                    federated=fed)
        assert node.run() == 0
    assert node.cascade.t_s == pytest.approx(pcm.size / 16000)  # every block heard
    assert fed.sampler.taken >= 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    refused = [w for w in warnings if "background windows not kept" in w]
    assert len(refused) == 1 and str(store / "fedstore.npz") in refused[0] and "\n" not in refused[0]
    assert any("labelled windows need the cloud's verdicts" in w for w in warnings)
    assert not (store / "fedstore.npz").exists()


def test_without_verdicts_no_segment_windows_are_held(tmp_path):
    from gate.cascade import Cascade

    settings = _enabled(tmp_path / "fed")
    settings.kws.model_path = str(shipped_kws_model())
    cascade = Cascade.from_config(settings)
    fed = FederatedCollection.from_settings(settings, cascade.kws, labels=False)
    Node(settings=settings, cascade=cascade, source=PacedSource(np.zeros(1, np.int16)), transport=None, federated=fed)
    assert cascade.on_segment is None and isinstance(cascade.kws, BackgroundTap)


@needs_mosquitto
@needs_espeak
def test_the_wyoming_satellite_with_a_broker_keeps_labelled_windows_as_gate_node_run_does(mosquitto, tmp_path, caplog):
    pytest.importorskip("wyoming")
    from mqtt_helpers import free_port

    from gate.wyoming.satellite import run_satellite

    settings = node_settings(tmp_path, model="shipped")
    store_dir = tmp_path / "fedstore"
    settings.kws.federated = FederatedConfig(enabled=True, store_dir=str(store_dir))
    _, pcm, _ = wake_scene(tmp_path / "room.wav", seconds=13.0, at_s=[2.0, 8.0])
    verifier = _Verifier(mosquitto, [True, False])
    try:
        with caplog.at_level(logging.INFO):
            rc = run_satellite(settings, uri=f"tcp://127.0.0.1:{free_port()}", mode="audio", config_path=None,
                               answer_wait_s=0, broker=f"mqtt://{mosquitto.host}:{mosquitto.port}",
                               source=_FileThenQuiet(pcm, verifier.all_answered))
    finally:
        verifier.close()
    assert rc == 0 and verifier.all_answered.is_set()
    assert "labelled windows need the cloud's verdicts" not in caplog.text
    quant = Quant.of_input(TFLiteModel(model_path=shipped_kws_model()))
    store = FeatureStore(store_dir, capacity=CAPACITY, frames=100, dim=40, quant=quant)
    (accepted,) = [verifier.headers[sid] for sid, ok in verifier.answered.items() if ok]
    assert store.counts["positives"] == _fitting(accepted, POSITIVE_OFFSETS_S) == len(POSITIVE_OFFSETS_S)
    assert store.counts["hard_negatives"] >= len(NEGATIVE_OFFSETS_S)


def test_the_tap_follows_a_swapped_spotter_and_a_failing_tap_is_one_warning(tmp_path, caplog):
    from gate.cascade import Cascade

    settings = _enabled(tmp_path / "fed")
    settings.kws.model_path = str(shipped_kws_model())
    cascade = Cascade.from_config(settings)
    fed = FederatedCollection.from_settings(settings, cascade.kws, labels=False)
    Node(settings=settings, cascade=cascade, source=PacedSource(np.zeros(1, np.int16)), transport=None, federated=fed)
    assert isinstance(cascade.kws, BackgroundTap)
    pcm = _real_speech()[:45 * 16000]
    third = pcm.size // 3
    for a in range(0, third, 1600):
        cascade.process(pcm[a:a + 1600])
    before = fed.sampler.taken
    assert before >= 1
    swapped = _spotter()  # an over-the-air release goes in between segments
    cascade.swap_kws(swapped)
    fed.track(cascade)
    assert isinstance(cascade.kws, BackgroundTap) and cascade.kws.kws is swapped and fed.kws is swapped
    for a in range(third, 2 * third, 1600):
        cascade.process(pcm[a:a + 1600])
        fed.track(cascade)
    assert fed.sampler.taken > before
    # Sampling that raises stops sampling, with one warning; the spotter goes on as it was.
    own, sampler = swapped.featurizer.inner, fed.sampler
    sampler.wants = lambda t, p: 1 / 0
    with caplog.at_level(logging.WARNING, logger="gate.node"):
        for a in range(2 * third, pcm.size, 1600):
            cascade.process(pcm[a:a + 1600])
            fed.track(cascade)
    assert cascade.kws is swapped and swapped.featurizer is own and not swapped.keep_scores
    (warning,) = [r.getMessage() for r in caplog.records if "no longer sampling" in r.getMessage()]
    assert "division by zero" in warning and str(tmp_path / "fed" / "fedstore.npz") in warning
    fed.close(cascade.t_s)
    assert fed.collector.store.counts["background"] == sampler.taken  # what was chosen before is kept
