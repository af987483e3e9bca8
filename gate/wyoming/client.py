"""A Wyoming wake-word client on wyoming's AsyncTcpClient: streams PCM, times what comes back.

For checks and benchmarks of a running service (``gate-node wyoming``): each chunk's send time and
each answer's arrival time are kept, so the delay from the chunk that completed a wake word to its
detection event can be read off. After audio-stop a ping is sent; the service answers events in
order, so its pong marks the end of the stream's answers.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.ping import Ping, Pong
from wyoming.wake import Detect, Detection


@dataclass(slots=True)
class StreamResult:
    events: list[Event] = field(default_factory=list)  # everything the service sent, in order
    received_s: list[float] = field(default_factory=list)  # perf_counter at each event's arrival
    sent_s: list[float] = field(default_factory=list)  # perf_counter after each chunk was written
    chunk_end_ms: list[float] = field(default_factory=list)  # audio time at the end of each chunk

    def of_type(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.type == kind]

    @property
    def detections(self) -> list[Detection]:
        return [Detection.from_event(e) for e in self.events if Detection.is_type(e.type)]

    def latencies_s(self) -> list[float]:
        """Per detection: arrival minus the send time of the chunk holding its timestamp (the last
        chunk the detection needed)."""
        out = []
        for e, t in zip(self.events, self.received_s, strict=True):
            if not Detection.is_type(e.type):
                continue
            ms = Detection.from_event(e).timestamp or 0
            i = next((k for k, end in enumerate(self.chunk_end_ms) if end >= ms), len(self.sent_s) - 1)
            out.append(t - self.sent_s[i])
        return out


async def describe(host: str, port: int, timeout: float = 10.0) -> Info:
    async with AsyncTcpClient(host, port) as client:
        await client.write_event(Describe().event())
        while True:
            event = await asyncio.wait_for(client.read_event(), timeout)
            if event is None:
                raise ConnectionError("the service closed the connection before answering describe")
            if Info.is_type(event.type):
                return Info.from_event(event)


async def stream(host: str, port: int, pcm: bytes, *, rate: int = 16_000, width: int = 2, channels: int = 1,
                 chunk_frames: int = 1024, realtime: bool = False, names: list[str] | None = None,
                 stop: bool = True, timeout: float = 30.0) -> StreamResult:
    """Send ``pcm`` as one stream (detect, audio-start, chunks, audio-stop) and collect the answers."""
    result = StreamResult()
    frame = width * channels
    step = chunk_frames * frame
    async with AsyncTcpClient(host, port) as client:

        async def read() -> None:
            while True:
                event = await client.read_event()
                if event is None:
                    return
                result.events.append(event)
                result.received_s.append(time.perf_counter())
                if Pong.is_type(event.type):
                    return

        reader = asyncio.create_task(read())
        try:
            if names is not None:
                await client.write_event(Detect(names=names).event())
            await client.write_event(AudioStart(rate=rate, width=width, channels=channels, timestamp=0).event())
            t0 = time.perf_counter()
            for a in range(0, len(pcm), step):
                end_frames = min(len(pcm), a + step) // frame
                if realtime:
                    await asyncio.sleep(max(0.0, t0 + end_frames / rate - time.perf_counter()))
                chunk = AudioChunk(rate=rate, width=width, channels=channels, audio=pcm[a:a + step],
                                   timestamp=a // frame * 1000 // rate)
                await client.write_event(chunk.event())
                result.sent_s.append(time.perf_counter())
                result.chunk_end_ms.append(end_frames * 1000 / rate)
            if stop:
                await client.write_event(AudioStop(timestamp=len(pcm) // frame * 1000 // rate).event())
                await client.write_event(Ping(text="end").event())
                await asyncio.wait_for(reader, timeout)
        finally:
            if not reader.done():
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
    return result
