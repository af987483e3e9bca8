"""The Wyoming wake-word service: ``describe`` -> ``info``; audio-start/chunk/stop -> ``detection`` or ``not-detected``.

Built on the ``wyoming`` package's AsyncServer and AsyncEventHandler. Every connection has its own
:class:`~gate.wyoming.listener.StreamDetector` (analog gate, KWS, segmenter and ledger), created
at its first audio-start. The cascade runs in a thread pool, one chunk at a time per connection, so
the event loop keeps reading other clients while a chunk is processed.

What a client gets wrong is answered with wyoming's ``error`` event and one log line, and the
connection stays open: an event that is not JSON, an audio-start without a rate, an unsupported
format, audio before audio-start, a wake word this service does not have. A connection that keeps
sending malformed events (``MAX_PROTOCOL_ERRORS``) is closed. Events of other domains are ignored,
as the protocol asks of a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_read_event
from wyoming.info import Attribution, Describe, Info, WakeModel, WakeProgram
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler, AsyncServer, AsyncTcpServer, AsyncUnixServer
from wyoming.wake import Detect, Detection, NotDetected

from gate import __version__
from gate.wyoming.audio import PcmFormat, check_format
from gate.wyoming.listener import StreamDetector, WakeWord, wake_word_of
from gate_core.cliutil import one_line
from gate_core.errors import AudioInputError, GateError, UsageError

if TYPE_CHECKING:
    from gate.config import GateSettings

log = logging.getLogger(__name__)

MAX_PROTOCOL_ERRORS = 20  # malformed events one connection may send before it is closed
ATTRIBUTION = Attribution(name="gate", url="")


def build_info(wake: WakeWord) -> Info:
    model = WakeModel(name=wake.name, attribution=ATTRIBUTION, installed=True, description=wake.description,
                      version=wake.version or __version__, languages=["en"], phrase=wake.phrase)
    program = WakeProgram(name="gate", attribution=ATTRIBUTION, installed=True,
                          description="Analog-gated wake-word node: analog front end, then an int8 keyword spotter",
                          version=__version__, models=[model])
    return Info(wake=[program])


class WakeService:
    """What every connection shares: the settings, the announced wake word and the worker threads."""

    def __init__(self, settings: GateSettings, *, workers: int | None = None) -> None:
        self.settings = settings
        self.wake = wake_word_of(settings)
        self.info = build_info(self.wake)
        self.executor = ThreadPoolExecutor(max_workers=workers or max(2, os.cpu_count() or 1),
                                           thread_name_prefix="gate-wyoming")
        self.clients = 0
        self._next_id = 0

    def check(self) -> None:
        """Build one cascade now, so a model that does not load stops the service before it listens."""
        StreamDetector(self.settings)

    def handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> WakeHandler:
        self._next_id += 1
        return WakeHandler(reader, writer, service=self, client_id=self._next_id)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class WakeHandler(AsyncEventHandler):
    """One client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, service: WakeService,
                 client_id: int) -> None:
        super().__init__(reader, writer)
        self.service = service
        peer = writer.get_extra_info("peername")
        self.name = f"client {client_id}" + (f" ({peer[0]}:{peer[1]})" if isinstance(peer, tuple) else "")
        self.detector: StreamDetector | None = None
        self.errors = 0
        self.wanted = True  # the last detect event asked for our wake word (or for any)
        self.streaming = False
        self.refused = False  # the stream's audio-start was refused: its chunks are dropped quietly
        self.detected = 0
        self.dropped_chunks = 0
        self._loop = asyncio.get_running_loop()

    # -- the read loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """AsyncEventHandler.run, except that a malformed event is answered instead of ending the connection.

        ``async_read_event`` returns None both at end of stream and for a line that is not JSON;
        the reader's EOF tells them apart."""
        self._is_running = True
        self.service.clients += 1
        log.debug("%s connected (%d connected)", self.name, self.service.clients)
        try:
            while self._is_running:
                try:
                    event = await async_read_event(self.reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                except (KeyError, TypeError, AttributeError) as exc:  # JSON, but not an event object
                    if not await self._protocol_error(f"not a Wyoming event ({type(exc).__name__}: {exc})"):
                        break
                    continue
                if event is None:
                    if self.reader.at_eof():
                        break
                    if not await self._protocol_error("malformed event: its header line is not JSON"):
                        break
                    continue
                if not await self.handle_event(event):
                    break
        finally:
            self.service.clients -= 1
            await self.disconnect()
            self.writer.close()

    async def disconnect(self) -> None:
        if self.streaming and self.detector is not None:
            log.info("%s left mid-stream after %.2f s of audio", self.name, self.detector.stats.audio_s)
            self.streaming = False
            det = self.detector
            await self._loop.run_in_executor(self.service.executor, det.stop)
        log.debug("%s disconnected", self.name)

    async def handle_event(self, event: Event) -> bool:
        try:
            return await self._dispatch(event)
        except (ConnectionError, RuntimeError) as exc:
            if self.writer.is_closing():
                return False  # the client went away while we answered
            log.error("%s: %s event failed: %s", self.name, event.type, one_line(exc))
            return await self._send_error(f"{event.type}: {one_line(exc)}", "internal")
        except Exception as exc:  # noqa: BLE001 - one client's bad event must not end the service
            log.exception("%s: %s event failed", self.name, event.type)
            return await self._send_error(f"{event.type}: internal error: {type(exc).__name__}: {exc}", "internal")

    # -- events -----------------------------------------------------------------------------------

    async def _dispatch(self, event: Event) -> bool:
        if AudioChunk.is_type(event.type):
            return await self._chunk(event)
        if Describe.is_type(event.type):
            return await self._send(self.service.info.event())
        if AudioStart.is_type(event.type):
            return await self._start(event)
        if AudioStop.is_type(event.type):
            return await self._stop()
        if Detect.is_type(event.type):
            return await self._detect(event)
        if Ping.is_type(event.type):
            return await self._send(Pong(text=(event.data or {}).get("text")).event())
        log.debug("%s: ignoring %s event", self.name, event.type)
        return True

    async def _detect(self, event: Event) -> bool:
        names = (event.data or {}).get("names")
        if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
            return await self._protocol_error(f"detect: names must be a list of strings, not {names!r}")
        wake = self.service.wake
        ours = {wake.name.lower(), wake.phrase.lower()}
        self.wanted = not names or any(n.lower() in ours for n in names)
        if not self.wanted:
            return await self._protocol_error(f"detect: no wake word named {', '.join(map(repr, names))}; "
                                              f"this service has {wake.name!r}", code="unknown_wake_word")
        return True

    async def _start(self, event: Event) -> bool:
        fmt = await self._format(event, "audio-start")
        if self.streaming:
            log.info("%s: audio-start while a stream is open: the open stream ends here", self.name)
            await self._run(self.detector.stop)
        self.streaming, self.detected, self.dropped_chunks = False, 0, 0
        if fmt is None:
            self.refused = True
            return self.errors < MAX_PROTOCOL_ERRORS
        if self.detector is None:
            self.detector = await self._run(StreamDetector, self.service.settings)
        self.detector.start(fmt)
        self.streaming, self.refused = True, False
        log.debug("%s: stream started (%s)", self.name, fmt)
        return True

    async def _chunk(self, event: Event) -> bool:
        if not self.streaming:
            if self.refused:
                self.dropped_chunks += 1
                return True
            self.refused = True  # one error per stream, not one per chunk
            return await self._protocol_error("audio-chunk before audio-start")
        fmt = await self._format(event, "audio-chunk")
        if fmt is None:
            self.streaming, self.refused = False, True
            await self._run(self.detector.stop)
            return self.errors < MAX_PROTOCOL_ERRORS
        for t_s in await self._run(self.detector.feed, event.payload or b"", fmt):
            if not await self._report(t_s):
                return False
        return True

    async def _stop(self) -> bool:
        if not self.streaming:
            if self.refused:
                self.refused = False
                if self.dropped_chunks:
                    log.info("%s: %d audio-chunk(s) of the refused stream dropped", self.name, self.dropped_chunks)
                return await self._send(NotDetected().event())
            return await self._protocol_error("audio-stop before audio-start")
        self.streaming = False
        for t_s in await self._run(self.detector.stop):
            if not await self._report(t_s):
                return False
        log.info("%s: stream ended: %s", self.name, self.detector.energy_line())
        if not self.detected:
            return await self._send(NotDetected().event())
        return True

    async def _report(self, t_s: float) -> bool:
        if not self.wanted:
            return True
        self.detected += 1
        ms = int(round(t_s * 1000))
        log.info("%s: %s detected at %.3f s of its audio", self.name, self.service.wake.name, t_s)
        return await self._send(Detection(name=self.service.wake.name, timestamp=ms).event())

    # -- helpers ----------------------------------------------------------------------------------

    async def _format(self, event: Event, what: str) -> PcmFormat | None:
        data = event.data if isinstance(event.data, dict) else {}
        missing = [k for k in ("rate", "width", "channels") if k not in data]
        try:
            if missing:
                raise AudioInputError(f"no {', '.join(missing)}", code="audio_format")
            return check_format(data["rate"], data["width"], data["channels"])
        except AudioInputError as exc:
            await self._protocol_error(f"{what}: {exc.args[0]}", code=exc.code)
            return None

    async def _run(self, fn, *args):
        return await self._loop.run_in_executor(self.service.executor, fn, *args)

    async def _protocol_error(self, text: str, code: str = "bad_event") -> bool:
        self.errors += 1
        log.warning("%s: %s", self.name, one_line(text))
        if not await self._send_error(text, code):
            return False
        if self.errors >= MAX_PROTOCOL_ERRORS:
            log.warning("%s: %d malformed events; closing the connection", self.name, self.errors)
            return False
        return True

    async def _send_error(self, text: str, code: str) -> bool:
        return await self._send(Error(text=one_line(text), code=code).event())

    async def _send(self, event: Event) -> bool:
        try:
            await self.write_event(event)
            return True
        except (ConnectionError, RuntimeError):
            return False


def check_uri(uri: str) -> None:
    """A UsageError naming ``uri`` unless the service can listen there (nothing is opened)."""
    _server(uri)


def _server(uri: str) -> AsyncServer:
    if urlparse(uri).scheme not in ("tcp", "unix"):
        raise UsageError(f"--uri {uri!r}: give tcp://HOST:PORT or unix://PATH", code="wyoming_uri")
    try:
        server = AsyncServer.from_uri(uri)
    except ValueError as exc:
        raise UsageError(f"--uri {uri!r}: {exc}", code="wyoming_uri") from None
    assert isinstance(server, (AsyncTcpServer, AsyncUnixServer))
    return server


async def serve(settings: GateSettings, uri: str, *, stop: asyncio.Event | None = None,
                started: asyncio.Event | None = None) -> int:
    """Serve until SIGINT/SIGTERM (or until ``stop`` is set); 0 on a clean stop."""
    server = _server(uri)
    service = WakeService(settings)
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    try:
        await loop.run_in_executor(service.executor, service.check)
        try:
            await server.start(service.handler)
        except OSError as exc:
            raise GateError(f"cannot listen on {uri}: {exc.strerror or exc}", code="wyoming_listen") from None
        log.info("wyoming wake-word service on %s: %r (%s), ready in %.2f s", uri, service.wake.name,
                 service.wake.phrase, time.perf_counter() - t0)
        if settings.kws.federated.enabled:
            log.warning("kws.federated: the wake-word service keeps no feature store (its clients' streams get no "
                        "cloud verdicts); gate-node run and gate-node wyoming --satellite-uri collect")
        stop = stop or asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        if started is not None:
            started.set()
        await stop.wait()
        log.info("stopping: %d client(s) connected", service.clients)
        await server.stop()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
        service.close()
    return 0
