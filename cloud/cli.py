"""`gate-cloud`: the cloud side's command line (the serve and train commands arrive with their issues)."""

from __future__ import annotations

import argparse
import logging
import sys

from gate import __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gate-cloud", description="gate's cloud side: verifier service and training.")
    p.add_argument("--version", action="version", version=f"gate {__version__}")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_subparsers(dest="command", metavar="COMMAND")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
