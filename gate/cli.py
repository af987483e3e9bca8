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
    p.add_argument("--log-level", default=os.environ.get("GATE_LOG_LEVEL", "WARNING"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log verbosity (stderr)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cfg = sub.add_parser("config", help="print or check a thresholds file")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    cfg_sub.add_parser("default", help="print the complete, commented default thresholds file")
    check = cfg_sub.add_parser("check", help="validate FILE: exit 0 if valid, 2 with the problems if not")
    check.add_argument("file", metavar="FILE")

    rp = sub.add_parser("replay", help="run the cascade over audio files as fast as possible")
    rp.add_argument("files", nargs="+", metavar="FILE", help="WAV/FLAC/... files (any rate; converted to 16 kHz mono)")
    rp.add_argument("--report", metavar="OUT.json", help="write the JSON report here")
    rp.add_argument("--profile", metavar="NAME|FILE", help="energy device profile (overrides energy.profile)")
    rp.add_argument("--quiet", action="store_true", help="no summary on stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "config":
            return _config(args)
        if args.command == "replay":
            return _replay(args)
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


def _replay(args: argparse.Namespace) -> int:
    from gate.config import load_settings
    from gate.replay import replay_files
    from gate.report import summary_text, write_report

    settings = load_settings(args.config)
    if args.profile:
        settings.energy.profile = args.profile
    report = replay_files([Path(f) for f in args.files], settings=settings)
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
