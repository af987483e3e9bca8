"""`gate-node wyoming`: the node as a Home Assistant wake-word service, or as a Wyoming satellite.

Light on purpose: neither ``wyoming`` nor a KWS runtime is imported until the command runs.
``add_parser(sub)`` registers the subcommand on gate-node's subparsers; ``run(args)`` runs it
(``args.config`` and ``args.log_level`` are gate-node's global options). ``main(argv)`` is the same
command on its own (``python -m gate.wyoming``).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

DEFAULT_URI = "tcp://0.0.0.0:10400"
SATELLITE_EVENTS = ("transcribe", "run-pipeline", "audio")


def _arguments(p: argparse.ArgumentParser) -> None:
    from gate_core.cliutil import input_file, number

    p.add_argument("--uri", metavar="URI",
                   help=f"serve the Wyoming wake-word protocol here: tcp://HOST:PORT or unix://PATH "
                        f"(default {DEFAULT_URI}; Home Assistant's Wyoming integration connects to it)")
    sat = p.add_argument_group("satellite mode", "the node hears its own microphone (or --input) and streams the "
                                                 "segment after each detection to a Wyoming server")
    sat.add_argument("--satellite-uri", metavar="URI",
                     help="the Wyoming server that gets each segment: tcp://HOST:PORT or unix://PATH")
    sat.add_argument("--satellite-event", choices=SATELLITE_EVENTS, default="transcribe",
                     help="what precedes the audio: transcribe (an ASR server, e.g. wyoming-faster-whisper), "
                          "run-pipeline (detection + run-pipeline asr..handle, as a satellite sends), or audio "
                          "alone (default: transcribe)")
    sat.add_argument("--language", metavar="LANG", help="with --satellite-event transcribe: the language to ask for")
    sat.add_argument("--answer-wait", type=number(lo=0, hi=120), default=5.0, metavar="S",
                     help="how long to wait for the server's answer to a segment, s (default 5; it is logged)")
    sat.add_argument("--broker", metavar="URL",
                     help="also publish segments over MQTT: 'embedded' or mqtt://host:port (default: none)")
    sat.add_argument("--device", metavar="NAME|INDEX", help="input device (overrides node.device)")
    sat.add_argument("--input", metavar="FILE", type=input_file, help="feed FILE as if it were the microphone")
    sat.add_argument("--no-realtime", action="store_true", help="with --input: do not pace the file to real time")


def add_parser(sub: Any) -> None:
    """Register `wyoming` on gate-node's subparsers."""
    p = sub.add_parser("wyoming", help="serve the Wyoming wake-word protocol (Home Assistant), or run as a satellite",
                       description="Without --satellite-uri: a Wyoming wake-word service; each client's audio "
                                   "(any rate, width, channels) runs through its own analog gate, KWS and ledger. "
                                   "With --satellite-uri: the live node streams each detection's segment to that "
                                   "Wyoming server. SIGINT/SIGTERM stop cleanly.")
    _arguments(p)


def run(args: argparse.Namespace) -> int:
    from gate_core.cliutil import fail

    satellite = args.satellite_uri is not None
    if satellite and args.uri is not None:
        fail("give --uri (serve the wake-word protocol) or --satellite-uri (stream segments to a server), not both")
    if not satellite:
        used = [flag for flag, v in (("--input", args.input), ("--no-realtime", args.no_realtime),
                                     ("--device", args.device), ("--broker", args.broker),
                                     ("--language", args.language)) if v]
        if used:
            fail(f"{', '.join(used)} only apply with --satellite-uri (the service hears its clients' audio)")
    elif args.no_realtime and args.input is None:
        fail("--no-realtime needs --input")
    from gate.config import load_settings

    settings = load_settings(args.config)
    try:
        import wyoming  # noqa: F401
    except ImportError:
        fail("the wyoming package is not installed: pip install 'gate[wyoming]'", code="wyoming_missing")
    if satellite:
        from gate.wyoming.satellite import parse_uri, run_satellite

        parse_uri(args.satellite_uri)  # a bad URI is refused before the microphone opens
        if args.device is not None:
            settings.node.device = int(args.device) if args.device.isdigit() else args.device
        broker = None if args.broker in (None, "none") else args.broker
        _logging(args.log_level)
        return run_satellite(settings, uri=args.satellite_uri, mode=args.satellite_event, config_path=args.config,
                             language=args.language, answer_wait_s=args.answer_wait,
                             input_file=args.input and str(args.input), realtime=not args.no_realtime, broker=broker)
    import asyncio

    from gate.wyoming.server import check_uri, serve

    uri = args.uri or DEFAULT_URI
    check_uri(uri)
    _logging(args.log_level)
    return asyncio.run(serve(settings, uri))


def _logging(level: str | None) -> None:
    """A service logs at INFO unless told otherwise (gate-node's other commands default to WARNING)."""
    from gate.cli import configure_logging

    configure_logging(level or "INFO")


def main(argv: list[str] | None = None) -> int:
    """`python -m gate.wyoming`: the subcommand with gate-node's global options in front of its own."""
    from gate_core.cliutil import Parser, boundary

    p = Parser(prog="python -m gate.wyoming", description="gate-node wyoming, on its own.")
    p.add_argument("-c", "--config", metavar="FILE", default=os.environ.get("GATE_THRESHOLDS"),
                   help="thresholds file (default: $GATE_THRESHOLDS, else built-in defaults)")
    p.add_argument("--log-level", default=os.environ.get("GATE_LOG_LEVEL"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log verbosity on stderr (default: INFO)")
    _arguments(p)
    args = p.parse_args(argv)
    return boundary("gate-node wyoming", lambda: run(args))
