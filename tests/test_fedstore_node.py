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
    BACKGROUND_SHARE,
    CAPACITY,
    NEGATIVE,
    NEGATIVE_OFFSETS_S,
    POSITIVE,
    POSITIVE_OFFSETS_S,
    FeatureStore,
    Quant,
)
from gate.kws.config import FederatedConfig, KwsConfig
from gate.kws.interpreter import TFLiteModel, read_card
from gate.kws.stage import KeywordSpotter, outputs_logits, sigmoid
from gate.node import EndOfStream, FederatedCollection, Node, PacedSource, run_node
from gate_core.wire import NodeTopics, Verdict, decode_segment

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
    assert store.counts["background"] == 0
    # The positives are the model's own input around the fire: it is sure of them.
    assert np.median(_posteriors(model, store.x[store.y == POSITIVE], quant)) > 0.5
    assert store.labelled_bytes_in > 0

    # No audio: the store directory holds the one .npz, and it holds int8 windows and labels only.
    assert sorted(p.name for p in store_dir.iterdir()) == ["fedstore.npz"]
    with np.load(store_dir / "fedstore.npz") as z:
        assert sorted(z.files) == ["bg", "meta", "x", "y"]
        assert z["x"].dtype == np.int8 and z["x"].shape == (n_pos + n_neg, 100, 40)
        assert z["y"].dtype == np.int8 and z["bg"].shape == (0, 100, 40)
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
