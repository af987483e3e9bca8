"""A minimal MQTT 3.1.1 broker in asyncio: the fallback when mosquitto is not installed.

Enough for one node and one cloud on a loopback port: CONNECT (anonymous), PUBLISH QoS 0/1 (an
inbound QoS 2 publish is accepted with PUBREC/PUBCOMP and delivered at QoS 1), SUBSCRIBE with
``+``/``#`` and ``$share/<group>/`` groups (one member per message, round robin), UNSUBSCRIBE,
retained messages, last will, keepalive, and persistent sessions (clean_session 0) that keep
subscriptions, unacknowledged and queued QoS 1 messages while the client is away. Nothing is
written to disk and there is no authentication: it only ever binds to loopback.

amqtt was considered and not used: it pulls in 14 packages (typer, rich, argon2, ...) for a
fallback that needs a fraction of one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import struct
import threading
from collections import deque
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14
MAX_PACKET = 16 * 1024 * 1024
MAX_QUEUED = 100_000


class ProtocolError(Exception):
    pass


@dataclass(slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool = False


@dataclass(eq=False)
class Session:
    client_id: str
    clean: bool
    subs: dict[str, int] = field(default_factory=dict)  # filter (maybe $share/...) -> granted QoS
    queue: deque[Message] = field(default_factory=deque)
    inflight: dict[int, Message] = field(default_factory=dict)
    conn: Connection | None = None
    _pids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def next_pid(self) -> int:
        while True:
            pid = next(self._pids) % 65536
            if pid and pid not in self.inflight:
                return pid


def topic_matches(filt: str, topic: str) -> bool:
    """MQTT filter matching; wildcards at the first level never match $-topics (MQTT 3.1.1 4.7.2)."""
    if topic.startswith("$") and filt[:1] in ("+", "#"):
        return False
    f, t = filt.split("/"), topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


def valid_filter(filt: str) -> bool:
    if not filt or "\0" in filt:
        return False
    levels = filt.split("/")
    for i, level in enumerate(levels):
        if ("#" in level and (level != "#" or i != len(levels) - 1)) or ("+" in level and level != "+"):
            return False
    return True


def split_shared(filt: str) -> tuple[str | None, str]:
    if filt.startswith("$share/"):
        parts = filt.split("/", 2)
        if len(parts) == 3 and parts[1] and "+" not in parts[1] and "#" not in parts[1]:
            return parts[1], parts[2]
        return None, ""
    return None, filt


class Connection:
    def __init__(self, broker: PyBroker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.broker, self.reader, self.writer = broker, reader, writer
        self.session: Session | None = None
        self.will: Message | None = None
        self.keepalive = 0

    def send(self, ptype: int, flags: int, body: bytes) -> None:
        if self.writer.is_closing():
            return
        self.writer.write(bytes([ptype << 4 | flags]) + _varint(len(body)) + body)

    def send_publish(self, msg: Message, qos: int, pid: int = 0, dup: bool = False) -> None:
        body = _str(msg.topic) + (struct.pack(">H", pid) if qos else b"") + msg.payload
        self.send(PUBLISH, (8 if dup else 0) | qos << 1 | (1 if msg.retain else 0), body)

    async def read_packet(self) -> tuple[int, int, bytes]:
        timeout = self.keepalive * 1.5 if self.keepalive else None
        head = await asyncio.wait_for(self.reader.readexactly(1), timeout)
        length, mult = 0, 1
        for _ in range(4):
            b = (await self.reader.readexactly(1))[0]
            length += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                break
        else:
            raise ProtocolError("malformed remaining length")
        if length > MAX_PACKET:
            raise ProtocolError("packet too large")
        return head[0] >> 4, head[0] & 0x0F, await self.reader.readexactly(length)

    async def serve(self) -> None:
        clean_exit = False
        try:
            ptype, _, body = await asyncio.wait_for(self.read_packet(), 10)
            if ptype != CONNECT:
                raise ProtocolError("first packet is not CONNECT")
            if not self.broker.on_connect(self, body):
                return
            while True:
                ptype, flags, body = await self.read_packet()
                if ptype == DISCONNECT:
                    clean_exit = True
                    return
                self.broker.on_packet(self, ptype, flags, body)
                await self.writer.drain()
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, ProtocolError,
                struct.error, UnicodeDecodeError, IndexError) as exc:
            log.debug("connection closed: %r", exc)
        finally:
            self.broker.on_close(self, clean_exit)
            self.writer.close()


class PyBroker:
    """Run with :meth:`start` (a background thread with its own event loop) and :meth:`stop`."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.sessions: dict[str, Session] = {}
        self.retained: dict[str, Message] = {}
        self._rr = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[Connection] = set()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> PyBroker:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(asyncio.start_server(self._accept, self.host, self.port))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="gate-pybroker", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            self._server.close()
            for conn in list(self._conns):
                conn.writer.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            asyncio.get_running_loop().stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        self._thread.join(5)
        self._thread = self._loop = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(self, reader, writer)
        self._conns.add(conn)
        try:
            await conn.serve()
        except asyncio.CancelledError:
            pass  # stop(): asyncio would log a cancelled connection task as an error
        finally:
            self._conns.discard(conn)

    # -- protocol -------------------------------------------------------------------------------

    def on_connect(self, conn: Connection, body: bytes) -> bool:
        r = _Reader(body)
        proto, level, flags, conn.keepalive = r.str(), r.byte(), r.byte(), r.u16()
        if (proto, level) not in (("MQTT", 4), ("MQIsdp", 3)):
            conn.send(CONNACK, 0, b"\x00\x01")  # unacceptable protocol version
            return False
        clean = bool(flags & 0x02)
        client_id = r.str()
        if flags & 0x04:
            conn.will = Message(r.str(), r.bin(), (flags >> 3) & 3, bool(flags & 0x20))
        if not client_id:
            if not clean:
                conn.send(CONNACK, 0, b"\x00\x02")  # identifier rejected
                return False
            client_id = "auto-" + secrets.token_hex(8)
        old = self.sessions.get(client_id)
        if old is not None and old.conn is not None:
            old.conn.writer.transport.abort()  # takeover; its will goes out from on_close
            old.conn = None
        if clean or old is None:
            old = self.sessions[client_id] = Session(client_id, clean)
            present = False
        else:
            old.clean = False
            present = True
        old.conn = conn
        conn.session = old
        conn.send(CONNACK, 0, bytes([1 if present else 0, 0]))
        for pid, msg in old.inflight.items():
            conn.send_publish(msg, msg.qos, pid, dup=True)
        while old.queue:
            msg = old.queue.popleft()
            self._send_to(old, msg, msg.qos)
        return True

    def on_packet(self, conn: Connection, ptype: int, flags: int, body: bytes) -> None:
        s = conn.session
        r = _Reader(body)
        if ptype == PUBLISH:
            qos = (flags >> 1) & 3
            if qos == 3:
                raise ProtocolError("QoS 3")
            topic = r.str()
            if not topic or "+" in topic or "#" in topic:
                raise ProtocolError("invalid topic name")
            pid = r.u16() if qos else 0
            self.publish(Message(topic, r.rest(), min(qos, 1), bool(flags & 1)))
            if qos == 1:
                conn.send(PUBACK, 0, struct.pack(">H", pid))
            elif qos == 2:
                conn.send(PUBREC, 0, struct.pack(">H", pid))
        elif ptype == PUBREL:
            conn.send(PUBCOMP, 0, body[:2])
        elif ptype == PUBACK:
            s.inflight.pop(r.u16(), None)
        elif ptype == SUBSCRIBE:
            pid, codes, new = r.u16(), [], []
            while r.left():
                filt, qos = r.str(), r.byte() & 3
                group, real = split_shared(filt)
                ok = valid_filter(real) and qos < 3
                codes.append(min(qos, 1) if ok else 0x80)
                if ok:
                    s.subs[filt] = min(qos, 1)
                    if group is None:
                        new.append((real, min(qos, 1)))
            conn.send(SUBACK, 0, struct.pack(">H", pid) + bytes(codes))
            for real, qos in new:
                for msg in list(self.retained.values()):
                    if topic_matches(real, msg.topic):
                        self._send_to(s, msg, min(qos, msg.qos))
        elif ptype == UNSUBSCRIBE:
            pid = r.u16()
            while r.left():
                s.subs.pop(r.str(), None)
            conn.send(UNSUBACK, 0, struct.pack(">H", pid))
        elif ptype == PINGREQ:
            conn.send(PINGRESP, 0, b"")
        else:
            raise ProtocolError(f"unexpected packet type {ptype}")

    def on_close(self, conn: Connection, clean_exit: bool) -> None:
        s = conn.session
        if s is None or s.conn is not conn:
            if s is not None and not clean_exit and conn.will is not None:
                self.publish(conn.will)
            return
        s.conn = None
        if s.clean:
            self.sessions.pop(s.client_id, None)
        if not clean_exit and conn.will is not None:
            self.publish(conn.will)

    def publish(self, msg: Message) -> None:
        if msg.retain:
            if msg.payload:
                self.retained[msg.topic] = Message(msg.topic, msg.payload, msg.qos, True)
            else:
                self.retained.pop(msg.topic, None)
        live = Message(msg.topic, msg.payload, msg.qos, False)  # retain is cleared for live subscribers
        groups: dict[tuple[str, str], list[tuple[Session, int]]] = {}
        for s in list(self.sessions.values()):
            best = -1
            for filt, qos in s.subs.items():
                group, real = split_shared(filt)
                if not topic_matches(real, msg.topic):
                    continue
                if group is None:
                    best = max(best, qos)
                else:
                    groups.setdefault((group, real), []).append((s, qos))
            if best >= 0:
                self._deliver(s, live, best)
        for members in groups.values():
            online = [m for m in members if m[0].conn is not None] or members
            s, qos = online[next(self._rr) % len(online)]
            self._deliver(s, live, qos)

    def _deliver(self, s: Session, msg: Message, sub_qos: int) -> None:
        qos = min(msg.qos, sub_qos)
        if s.conn is None:
            if qos and not s.clean and len(s.queue) < MAX_QUEUED:
                s.queue.append(Message(msg.topic, msg.payload, qos, msg.retain))
            return
        self._send_to(s, msg, qos)

    def _send_to(self, s: Session, msg: Message, qos: int) -> None:
        if s.conn is None:
            return
        pid = 0
        if qos:
            pid = s.next_pid()
            s.inflight[pid] = Message(msg.topic, msg.payload, qos, msg.retain)
        s.conn.send_publish(msg, qos, pid)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError("packet truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def bin(self) -> bytes:
        return self.take(self.u16())

    def str(self) -> str:
        return self.bin().decode("utf-8")

    def rest(self) -> bytes:
        out = self.data[self.pos:]
        self.pos = len(self.data)
        return out

    def left(self) -> int:
        return len(self.data) - self.pos


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)
