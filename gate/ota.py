"""The node's half of over-the-air model updates: verify, self-test, install, swap, ack (docs/ota.md).

Threads: the transport's worker hands each release payload to :meth:`OtaAgent.offer`, which only
queues it. The agent's own thread checks it (gate_core.release.decode: format, target, hashes,
signature, the profile's size limit), loads the model in a second interpreter beside the running
one, runs the bundled self-test clips through it, and installs it on disk. The node's loop then
calls :meth:`OtaAgent.swap_in` between blocks; the swap happens only when no segment is being
collected, so no audio is dropped and no segment straddles two models. Every outcome is one log
line and one ack on ``<prefix>/<node>/model/ack``; nothing a release carries can stop the node.

On disk (``kws.ota.model_dir``): ``<release>.tflite`` and its card ``<release>.json`` for the active
model and the previous one, and ``state.json`` naming both. Every file is written to a temporary
name, fsynced and renamed, and the state file last, so a node stopped at any point comes back on
the model the state file names, which passed; files the state does not name are half-installs and
are deleted at start. An active model whose file is missing or whose hash is wrong is replaced by
the previous one (:meth:`ModelStore.rollback`).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gate.kws.interpreter import TFLiteModel
from gate.kws.stage import KeywordSpotter
from gate_core import release as fmt
from gate_core.errors import GateError

if TYPE_CHECKING:
    from gate.cascade import Cascade
    from gate.config import GateSettings
    from gate.kws.config import KwsConfig

log = logging.getLogger(__name__)

SELFTEST_DIR = Path(__file__).resolve().parent / "selftest"
STATE = "state.json"
_RELEASE_FILE = re.compile(r"[0-9a-f]{32}")  # only files named like a release are ever deleted


# ------------------------------------------------------------------------------------ self-test


@dataclass(frozen=True, slots=True)
class Clip:
    name: str
    expect: str  # "wake": must be detected; "reject": must not be
    text: str
    samples: np.ndarray


def load_selftest(directory: str | Path | None = None, sample_rate: int = 16_000) -> list[Clip]:
    """The clips of ``directory``/selftest.json (default: the shipped gate/selftest)."""
    from sensors.wavfile import read_audio

    d = Path(directory).expanduser() if directory else SELFTEST_DIR
    try:
        spec = json.loads((d / "selftest.json").read_text(encoding="utf-8"))
        clips = [Clip(c["file"], c["expect"], c.get("text", ""), read_audio(d / c["file"], target_rate=sample_rate))
                 for c in spec["clips"]]
    except (OSError, ValueError, KeyError, TypeError, GateError) as exc:
        raise GateError(f"{d}: not a usable self-test set ({exc})", code="ota_selftest") from None
    if not any(c.expect == "wake" for c in clips) or any(c.expect not in ("wake", "reject") for c in clips):
        raise GateError(f"{d}: a self-test needs 'wake' clips and only 'wake'/'reject' ones", code="ota_selftest")
    return clips


def self_test(spotter: KeywordSpotter, clips: list[Clip]) -> str | None:
    """None when every wake clip fires and no reject clip does; else the first failure, one line."""
    for c in clips:
        spotter.reset(0.0)
        hits = spotter.process(c.samples)
        if c.expect == "wake" and not hits:
            return f"self-test failed: {c.name} ({c.text!r}) not detected"
        if c.expect == "reject" and hits:
            return (f"self-test failed: {c.name} ({c.text!r}) detected at {hits[0].t_s:.2f} s "
                    f"(score {hits[0].score:.2f})")
    spotter.reset(0.0)
    return None


# --------------------------------------------------------------------------------------- store


@dataclass(frozen=True, slots=True)
class Installed:
    release_id: str
    sha256: str
    version: str
    created_unix: float
    model: str  # file name in the store

    @property
    def card(self) -> str:
        return Path(self.model).with_suffix(".json").name


class ModelStore:
    """Installed models on disk: the active one and the previous one, named by ``state.json``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self.active: Installed | None = None
        self.previous: Installed | None = None
        self._load()

    def path(self, entry: Installed) -> Path:
        return self.root / entry.model

    def _load(self) -> None:
        state = self.root / STATE
        try:
            d = json.loads(state.read_text(encoding="utf-8"))
            active = Installed(**d["active"]) if d.get("active") else None
            previous = Installed(**d["previous"]) if d.get("previous") else None
        except FileNotFoundError:
            active = previous = None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.error("OTA: %s is unreadable (%s); running the configured model", state, exc)
            active = previous = None
        self.active, self.previous = active, previous
        if self.active is not None and not self._intact(self.active):
            log.error("OTA: active model %s is missing or damaged; rolling back", self.active.model)
            self.rollback()
        self._sweep()

    def _intact(self, entry: Installed) -> bool:
        try:
            return fmt.sha256_hex(self.path(entry).read_bytes()) == entry.sha256 and \
                (self.root / entry.card).is_file()
        except OSError:
            return False

    def rollback(self) -> Installed | None:
        """Make the previous model active again (or none: the configured model) and say so on disk."""
        prev = self.previous if self.previous is not None and self._intact(self.previous) else None
        self.active, self.previous = prev, None
        self._write_state()
        return self.active

    def install(self, rel: fmt.Release) -> Installed:
        """Write the model and its card, then the state naming it active (the running one becomes previous)."""
        entry = Installed(release_id=rel.release_id, sha256=rel.sha256, version=rel.version,
                          created_unix=rel.created_unix, model=f"{rel.release_id}.tflite")
        _atomic_write(self.root / entry.model, rel.model)
        _atomic_write(self.root / entry.card, fmt.canonical_card(rel.card))
        if self.active is None or self.active.release_id != entry.release_id:
            self.previous = self.active
        self.active = entry
        self._write_state()
        self._sweep()
        return entry

    def _write_state(self) -> None:
        state = {"active": asdict(self.active) if self.active else None,
                 "previous": asdict(self.previous) if self.previous else None}
        _atomic_write(self.root / STATE, json.dumps(state, indent=1).encode())

    def _sweep(self) -> None:
        """Delete temporary files and models the state does not name (half-installs, older releases)."""
        keep = {STATE} | {n for e in (self.active, self.previous) if e for n in (e.model, e.card)}
        for p in self.root.iterdir():
            ours = p.name.startswith(".tmp-") or (p.suffix in (".tflite", ".json") and _RELEASE_FILE.fullmatch(p.stem))
            if p.is_file() and ours and p.name not in keep:
                p.unlink(missing_ok=True)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# --------------------------------------------------------------------------------------- agent


class OtaAgent:
    """Receives releases, checks and installs them, and swaps them into the cascade between segments."""

    def __init__(self, *, kws: KwsConfig, node_id: str, prefix: str = "gate", public_key: Any,
                 store: ModelStore, clips: list[Clip], max_bytes: int | None, sample_rate: int = 16_000,
                 send_ack: Any = None) -> None:
        self.kws = kws
        self.node_id = node_id
        self.prefix = prefix
        self.public_key = public_key
        self.store = store
        self.clips = clips
        self.max_bytes = max_bytes
        self.sample_rate = sample_rate
        self.send_ack = send_ack  # (topic, payload) -> None
        self.topics = [fmt.model_topic(prefix), fmt.model_topic(prefix, node_id)]
        self._inbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._ready: tuple[Installed, KeywordSpotter] | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.running_sha256: str | None = store.active.sha256 if store.active else None
        self.refused = 0
        self.swapped = 0

    @classmethod
    def from_settings(cls, settings: GateSettings) -> OtaAgent | None:
        """The agent the thresholds file asks for, or None when ``kws.ota.public_key`` is null."""
        cfg = settings.kws.ota
        if cfg.public_key is None:
            return None
        from gate.energy import load_profile

        agent = cls(kws=settings.kws, node_id=settings.mqtt.node_id, prefix=settings.mqtt.topic_prefix,
                    public_key=fmt.load_public_key(cfg.public_key), store=ModelStore(cfg.model_dir),
                    clips=load_selftest(cfg.self_test, settings.audio.sample_rate),
                    max_bytes=load_profile(settings.energy.profile).storage.model_max_bytes,
                    sample_rate=settings.audio.sample_rate)
        if agent.running_sha256 is None:  # the configured model, until a release is installed
            from gate.kws.stage import default_model_path

            path = Path(settings.kws.model_path or default_model_path(settings.kws.feature_kind))
            try:
                agent.running_sha256 = fmt.sha256_hex(path.read_bytes())
            except OSError:
                pass
        return agent

    def effective(self, settings: GateSettings) -> GateSettings:
        """``settings`` with kws.model_path on the installed model, when one is active."""
        if self.store.active is None:
            return settings
        kws = settings.kws.model_copy(update={"model_path": str(self.store.path(self.store.active))})
        return settings.model_copy(update={"kws": kws})

    def attach(self, transport) -> None:
        """Subscribe on ``transport`` (before it starts) and ack through it."""
        for t in self.topics:
            transport.add_subscription(t, self.offer)
        self.send_ack = transport.publish_message

    # -- threads ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"gate-ota-{self.node_id}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._inbox.put(None)
            self._thread.join(10)
            self._thread = None

    def offer(self, topic: str, payload: bytes) -> None:
        """A release arrived (transport worker thread): queue it."""
        if payload:  # an empty retained message clears the topic: nothing to install
            self._inbox.put(payload)

    def _run(self) -> None:
        while (payload := self._inbox.get()) is not None:
            try:
                self.handle(payload)
            except Exception as exc:  # noqa: BLE001 - nothing a release carries may stop the node
                log.exception("OTA: release handling failed")
                self._refuse(None, f"internal error: {type(exc).__name__}: {exc}", "ota_internal")

    # -- one release --------------------------------------------------------------------------

    def handle(self, payload: bytes) -> Installed | None:
        """Check, self-test and install one release; the spotter waits for :meth:`swap_in`."""
        limit = None if self.max_bytes is None else self.max_bytes * 4 // 3 + 1_048_576
        if limit is not None and len(payload) > limit:
            return self._refuse(None, f"model too large: a {len(payload)} B release for a {self.max_bytes} B "
                                      "model limit", "release_too_large")
        try:
            rel = fmt.decode(payload, self.public_key, node=self.node_id, max_bytes=self.max_bytes)
        except GateError as exc:
            return self._refuse(None, exc.args[0], exc.code)
        active = self.store.active
        if active is not None and active.release_id == rel.release_id:
            log.info("OTA: release %s (model %s) already running", rel.version, rel.sha256[:12])
            self._ack(fmt.Ack(self.node_id, True, rel.sha256, active.sha256, version=rel.version))
            return active
        if active is not None and rel.created_unix <= active.created_unix:
            return self._refuse(rel, f"stale release: created {rel.created_unix:.0f}, not after the running "
                                     f"one ({active.created_unix:.0f})", "release_stale")
        try:
            spotter = KeywordSpotter.from_parts(self.kws, TFLiteModel(model_content=rel.model), rel.card,
                                                self.sample_rate, where=f"release {rel.version}")
        except GateError as exc:
            return self._refuse(rel, exc.args[0], exc.code)
        failure = self_test(spotter, self.clips)
        if failure is not None:
            return self._refuse(rel, failure, "release_selftest")
        entry = self.store.install(rel)
        with self._lock:
            superseded, self._ready = self._ready, (entry, spotter)
        if superseded is not None:
            old = superseded[0]
            self._refuse(None, f"release {old.version} superseded by {rel.version} before it was swapped in",
                         "release_superseded", sha256=old.sha256)
        log.info("OTA: release %s (model %s) passed %d self-test clips, installed; swapping at the next "
                 "segment boundary", rel.version, rel.sha256[:12], len(self.clips))
        return entry

    def swap_in(self, cascade: Cascade) -> bool:
        """Node loop: put a checked model in when no segment is being collected; True if it did."""
        if self._ready is None or cascade.segmenter.collecting:
            return False
        with self._lock:
            entry, spotter = self._ready
            self._ready = None
        cascade.swap_kws(spotter)
        self.running_sha256 = entry.sha256
        self.swapped += 1
        log.info("OTA: now running model %s (release %s)", entry.sha256[:12], entry.version)
        self._ack(fmt.Ack(self.node_id, True, entry.sha256, entry.sha256, version=entry.version))
        return True

    def _refuse(self, rel: fmt.Release | None, reason: str, code: str, *, sha256: str | None = None) -> None:
        self.refused += 1
        reason = " ".join(reason.split())[:300]
        log.warning("OTA: release refused: %s [%s]; still running %s", reason, code,
                    (self.running_sha256 or "the configured model")[:20])
        self._ack(fmt.Ack(self.node_id, False, rel.sha256 if rel else sha256, self.running_sha256, reason=reason,
                          code=code, version=rel.version if rel else None))
        return None

    def _ack(self, ack: fmt.Ack) -> None:
        if self.send_ack is not None:
            self.send_ack(fmt.ack_topic(self.prefix, self.node_id), ack.to_json())
