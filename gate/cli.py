"""`gate-node`: the node's command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from gate import __version__
from gate.errors import GateError

log = logging.getLogger("gate")

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gate-node",
        description="Always-on wake-word gating node: analog front end -> KWS -> MQTT, metered in joules.")
    p.add_argument("--version", action="version", version=f"gate {__version__}")
    p.add_argument("-c", "--config", metavar="FILE", default=os.environ.get("GATE_THRESHOLDS"),
                   help="thresholds file (default: $GATE_THRESHOLDS, else built-in defaults)")
    p.add_argument("--log-level", default=os.environ.get("GATE_LOG_LEVEL"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="log verbosity on stderr (default: INFO for run, WARNING otherwise)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cfg = sub.add_parser("config", help="print or check a thresholds file")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    cfg_sub.add_parser("default", help="print the complete, commented default thresholds file")
    check = cfg_sub.add_parser("check", help="validate FILE: exit 0 if valid, 2 with the problems if not")
    check.add_argument("file", metavar="FILE")

    run = sub.add_parser("run", help="the live node: microphone -> cascade -> MQTT, until SIGINT/SIGTERM",
                         description="SIGINT/SIGTERM stop cleanly (the spool is flushed for node.flush_timeout_s); "
                                     "SIGHUP re-reads the thresholds file (an invalid one is logged and ignored).")
    run.add_argument("--device", metavar="NAME|INDEX", help="input device (overrides node.device)")
    run.add_argument("--broker", metavar="URL", help="'embedded' or mqtt://host:port (overrides mqtt.broker)")
    run.add_argument("--input", metavar="FILE", help="feed FILE as if it were the microphone (soak tests, benchmarks)")
    run.add_argument("--no-realtime", action="store_true", help="with --input: do not pace the file to real time")
    run.add_argument("--list-devices", action="store_true", help="list input devices and exit")

    rp = sub.add_parser("replay", help="run the cascade over audio files as fast as possible")
    rp.add_argument("files", nargs="*", metavar="FILE", help="WAV/FLAC/... files (any rate; converted to 16 kHz mono)")
    rp.add_argument("--scenario", metavar="DIR", action="append", default=[],
                    help="a `gate-data scenario` directory: its stream, scored against its labels (repeatable)")
    rp.add_argument("--realtime", action="store_true", help="pace the audio to real time, as a live node sees it")
    rp.add_argument("--broker", metavar="URL", help="publish segments: 'embedded' or mqtt://host:port "
                                                    "(default: none; radio bytes are then computed, not sent)")
    rp.add_argument("--verdict-wait", type=float, metavar="S",
                    help="with --broker, wait up to S s for the cloud's verdicts (default 5, 0 for embedded)")
    rp.add_argument("--report", metavar="OUT.json", help="write the JSON report here")
    rp.add_argument("--profile", metavar="NAME|FILE", help="energy device profile (overrides energy.profile)")
    rp.add_argument("--quiet", action="store_true", help="no summary on stdout")
    return p


def configure_logging(level: str) -> None:
    """stderr only. Under systemd (JOURNAL_STREAM set) journald stamps the time, so we do not."""
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else \
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, stream=sys.stderr, format=fmt, force=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level or ("INFO" if args.command == "run" else "WARNING"))
    try:
        if args.command == "config":
            return _config(args)
        if args.command == "replay":
            return _replay(args)
        if args.command == "run":
            return _run(args)
    except GateError as exc:
        print(f"gate-node: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE


def _config(args: argparse.Namespace) -> int:
    from gate.config import SettingsError, default_yaml, load_settings

    if args.config_command == "default":
        sys.stdout.write(default_yaml())
        return EXIT_OK
    try:
        load_settings(args.file)
    except SettingsError as exc:
        n = len(exc.problems)
        print(f"{args.file}: invalid ({n} problem{'s' if n != 1 else ''})", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.file}: valid")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from gate.config import load_settings
    from gate.node import run_node

    if args.list_devices:
        from sensors.microphone import list_inputs

        for d in list_inputs():
            print(f"{d['index']:3d}  {d['name']}  ({d['channels']} ch, {d['default_rate']:g} Hz)")
        return EXIT_OK
    settings = load_settings(args.config)
    if args.device is not None:
        settings.node.device = int(args.device) if args.device.isdigit() else args.device
    if args.input is None and args.no_realtime:
        print("gate-node: --no-realtime needs --input", file=sys.stderr)
        return EXIT_USAGE
    return run_node(settings=settings, config_path=args.config, input_file=args.input,
                    realtime=not args.no_realtime, broker=args.broker)


def _replay(args: argparse.Namespace) -> int:
    from gate.config import load_settings
    from gate.replay import replay_files
    from gate.report import summary_text, write_report

    if not args.files and not args.scenario:
        print("gate-node replay: give FILE... or --scenario DIR", file=sys.stderr)
        return EXIT_USAGE
    settings = load_settings(args.config)
    if args.profile:
        settings.energy.profile = args.profile
    files = [Path(f) for f in args.files]
    labels = None
    if args.scenario:
        from gate.replay import scenario_inputs

        labels = {}
        for d in args.scenario:
            path, spans = scenario_inputs(Path(d))
            files.append(path)
            labels[str(path)] = spans
    report = replay_files(files, settings=settings, broker=args.broker, realtime=args.realtime,
                          verdict_wait_s=args.verdict_wait, labels=labels)
    if args.report:
        write_report(report, Path(args.report))
    if not args.quiet:
        sys.stdout.write(summary_text(report))
    for failed in report["failed_inputs"]:
        print(f"gate-node: skipped {failed['path']}: {failed['error']}", file=sys.stderr)
    if not report["inputs"]:
        return EXIT_USAGE
    return EXIT_USAGE if report["failed_inputs"] else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
