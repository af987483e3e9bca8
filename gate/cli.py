"""`gate-node`: the node's command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gate import __version__
from gate_core.cliutil import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    Parser,
    boundary,
    fail,
    input_dir,
    input_file,
    number,
    number_list,
    output_file,
    parse,
)

if TYPE_CHECKING:
    from gate.report_schema import ReplayReport

log = logging.getLogger("gate")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
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
    check.add_argument("file", metavar="FILE", type=input_file)

    run = sub.add_parser("run", help="the live node: microphone -> cascade -> MQTT, until SIGINT/SIGTERM",
                         description="SIGINT/SIGTERM stop cleanly (the spool is flushed for node.flush_timeout_s); "
                                     "SIGHUP re-reads the thresholds file (an invalid one is logged and ignored).")
    run.add_argument("--device", metavar="NAME|INDEX", help="input device (overrides node.device)")
    run.add_argument("--broker", metavar="URL", help="'embedded' or mqtt://host:port (overrides mqtt.broker)")
    run.add_argument("--input", metavar="FILE", type=input_file,
                     help="feed FILE as if it were the microphone (soak tests, benchmarks)")
    run.add_argument("--no-realtime", action="store_true", help="with --input: do not pace the file to real time")
    run.add_argument("--list-devices", action="store_true", help="list input devices and exit")

    rp = sub.add_parser("replay", help="run the cascade over audio files as fast as possible")
    rp.add_argument("files", nargs="*", metavar="FILE", help="WAV/FLAC/... files (any rate; converted to 16 kHz mono)")
    rp.add_argument("--scenario", metavar="DIR", action="append", default=[], type=input_dir,
                    help="a `gate-data scenario` directory: its stream, scored against its labels (repeatable)")
    rp.add_argument("--realtime", action="store_true", help="pace the audio to real time, as a live node sees it")
    rp.add_argument("--broker", metavar="URL",
                    help="publish segments: 'embedded', mqtt://host:port or 'none' (radio bytes are then computed, "
                         "not sent); default: embedded with --scenario alone, none otherwise")
    rp.add_argument("--verdict-wait", type=number(lo=0), metavar="S",
                    help="with --broker, stop waiting for the cloud's verdicts after S s without a new one "
                         "(default 10 with the replay's own cloud worker, 5 with an external broker)")
    rp.add_argument("--no-cloud", action="store_true",
                    help="with --broker embedded, start no cloud worker (no verdicts)")
    rp.add_argument("--no-reference", action="store_true",
                    help="with --scenario, skip the always-on reference KWS pass (no always-on-KWS misses)")
    rp.add_argument("--report", metavar="OUT.json", type=output_file, help="write the JSON report here")
    rp.add_argument("--html", metavar="OUT.html", type=output_file, help="write the self-contained HTML report here")
    rp.add_argument("--profile", metavar="NAME|FILE", help="energy device profile (overrides energy.profile)")
    rp.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="progress bar on stderr (default: when stderr is a terminal)")
    rp.add_argument("--quiet", action="store_true", help="no summary on stdout")

    rep = sub.add_parser("report", help="re-price a saved replay report for another device profile",
                         description="Prices the counts of a saved report again; the audio is not replayed.")
    rep.add_argument("input", metavar="IN.json", type=input_file,
                     help="a report written by `gate-node replay --report`")
    rep.add_argument("--profile", metavar="NAME|FILE", help="device profile (default: the report's own)")
    rep.add_argument("--grid", type=number(lo=0), metavar="G", help="grid carbon intensity, gCO2e/kWh")
    rep.add_argument("--out", metavar="OUT.json", type=output_file, help="write the re-priced JSON report here")
    rep.add_argument("--html", metavar="OUT.html", type=output_file, help="write the HTML report here")
    rep.add_argument("--quiet", action="store_true", help="no summary on stdout")

    tu = sub.add_parser("tune", help="sweep the analog gate and KWS thresholds over a scenario",
                        description="Replays the scenario once per analog setting (recording KWS posteriors), "
                                    "sweeps the KWS threshold over the recordings, keeps the settings that meet "
                                    "the false-accept target, and writes the best as a complete thresholds file.")
    tu.add_argument("--scenario", metavar="DIR", action="append", required=True, type=input_dir,
                    help="scenario directory (repeatable)")
    tu.add_argument("--target-fa-per-hour", type=number(lo=0), default=0.5, metavar="X",
                    help="false accepts per hour allowed")
    tu.add_argument("--out", metavar="thresholds.yaml", required=True, type=output_file,
                    help="the best thresholds file")
    tu.add_argument("--sweep-out", metavar="FILE.json|.csv", type=output_file,
                    help="every point of the sweep (default: beside --out, .sweep.json and .sweep.csv)")
    tu.add_argument("--margin-db", metavar="LIST", type=number_list(lo=0, hi=40),
                    help="analog margins to try, dB (default: around the current one)")
    tu.add_argument("--k", metavar="LIST", type=number_list(lo=1, hi=64, integer=True),
                    help="k-of-N values to try (default: around the current one)")
    tu.add_argument("--min-open-s", metavar="LIST", type=number_list(lo=0, hi=1),
                    help="debounce times to try, s (default: the current one)")
    tu.add_argument("--kws-thresholds", metavar="LIST", type=number_list(lo=0, hi=1),
                    help="KWS thresholds to sweep (default: 41 on a logit grid)")
    tu.add_argument("--profile", metavar="NAME|FILE", help="device profile the energy is priced with")
    tu.add_argument("--jobs", type=number(lo=1, hi=64, integer=True), default=None,
                    help="replays run in parallel (default: 2 or the CPU count)")
    tu.add_argument("--quiet", action="store_true", help="no table on stdout")

    from gate.wyoming.cli import add_parser as add_wyoming_parser

    add_wyoming_parser(sub)
    return p


def configure_logging(level: str) -> None:
    """stderr only. Under systemd (JOURNAL_STREAM set) journald stamps the time, so we do not."""
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else \
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, stream=sys.stderr, format=fmt, force=True)


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    configure_logging(args.log_level or ("INFO" if args.command == "run" else "WARNING"))
    commands = {"config": _config, "replay": _replay, "report": _report, "tune": _tune, "run": _run,
                "wyoming": _wyoming}
    return boundary("gate-node", lambda: commands[args.command](args))


def _wyoming(args: argparse.Namespace) -> int:
    from gate.wyoming.cli import run

    return run(args)


def _config(args: argparse.Namespace) -> int:
    from gate.config import SettingsError, default_yaml, load_settings

    if args.config_command == "default":
        sys.stdout.write(default_yaml())
        return EXIT_OK
    try:
        load_settings(args.file)
    except SettingsError as exc:
        n = len(exc.problems)
        if n == 1:  # one problem, one line (it names the file, line and field)
            print(f"gate-node config check: {exc.problems[0]}", file=sys.stderr)
            return EXIT_USAGE
        print(f"{args.file}: invalid ({n} problems)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.file}: valid")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from gate.config import load_settings
    from gate.node import run_node

    if args.list_devices:
        from sensors.microphone import NO_INPUT_DEVICE, list_inputs

        devices = list_inputs()
        if not devices:
            fail(NO_INPUT_DEVICE, code="mic_none")
        for d in devices:
            print(f"{d['index']:3d}  {d['name']}  ({d['channels']} ch, {d['default_rate']:g} Hz)")
        return EXIT_OK
    if args.input is None and args.no_realtime:
        fail("--no-realtime needs --input")
    settings = load_settings(args.config)
    if args.device is not None:
        settings.node.device = int(args.device) if args.device.isdigit() else args.device
    return run_node(settings=settings, config_path=args.config, input_file=args.input and str(args.input),
                    realtime=not args.no_realtime, broker=_broker(args.broker))


def _broker(value: str | None) -> str | None:
    """'none' (or nothing) -> None; 'embedded' and URLs as given (URLs are checked by the transport)."""
    return None if value in (None, "none") else value


def _replay(args: argparse.Namespace) -> int:
    from gate.config import load_settings
    from gate.replay import replay_files
    from gate.report import summary_text

    if not args.files and not args.scenario:
        fail("give FILE... or --scenario DIR")
    # The README's promise: a scenario on its own runs the whole cascade, cloud included.
    broker = _broker(args.broker if args.broker is not None else
                     "embedded" if args.scenario and not args.files else None)
    if args.no_cloud and broker != "embedded":
        fail("--no-cloud only applies with --broker embedded (an external broker's service is not ours to start)")
    if args.verdict_wait is not None and broker is None:
        fail("--verdict-wait needs a broker (--broker embedded or mqtt://host:port)")
    settings = load_settings(args.config)
    if args.profile:
        _check_profile(args.profile)
        settings.energy.profile = args.profile
    files, labels = _inputs(args.files, args.scenario)
    with _progress_bar(files, args.progress) as progress:
        report = replay_files(files, settings=settings, broker=broker, realtime=args.realtime,
                              verdict_wait_s=args.verdict_wait, labels=labels,
                              cloud=False if args.no_cloud else None,
                              reference=False if args.no_reference else None, progress=progress)
    skipped = [f"{f.path}: {f.error.removeprefix(f.path + ': ')}" for f in report.failed_inputs]
    for line in skipped:
        print(f"gate-node: skipped {line}", file=sys.stderr)
    if not report.inputs:  # every input was skipped: no report and no zeroed table
        return EXIT_USAGE
    _write_outputs(report, args.report, args.html)
    if not args.quiet:
        sys.stdout.write(summary_text(report))
    return EXIT_USAGE if report.failed_inputs else EXIT_OK


def _check_profile(name_or_path: str) -> None:
    """Load the profile now: a bad --profile is refused before any audio is replayed."""
    from gate.energy import load_profile

    load_profile(name_or_path)


def _inputs(files: list[str], scenarios: list[Path]) -> tuple[list[Path], dict | None]:
    from sensors.scenario import scenario_inputs

    paths = [Path(f) for f in files]
    if not scenarios:
        return paths, None
    labels = {}
    for d in scenarios:
        path, spans = scenario_inputs(Path(d))
        paths.append(path)
        labels[str(path)] = spans
    return paths, labels


class _progress_bar:
    """tqdm over audio seconds on stderr; a no-op callback when off."""

    def __init__(self, files: list[Path], enabled: bool | None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.files = files
        self.bar = None

    def __enter__(self):
        if not self.enabled:
            return None
        import soundfile as sf
        from tqdm import tqdm

        total = 0.0
        for f in self.files:
            try:
                total += sf.info(str(f)).duration
            except (RuntimeError, OSError):
                pass  # reported as a failed input by the replay itself
        self.bar = tqdm(total=round(total, 1), unit="audio s", file=sys.stderr, dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} audio s [{elapsed}<{remaining}]")
        return self.bar.update

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _write_outputs(report: ReplayReport, json_out: Path | None, html_out: Path | None) -> None:
    from gate.report import write_report

    target = None
    try:
        if json_out:
            target = json_out
            write_report(report, Path(json_out))
        if html_out:
            from gate.html_report import write_html

            target = html_out
            write_html(report, Path(html_out))
    except OSError as exc:
        fail(f"{target}: cannot write ({exc.strerror or exc})", code="output_unwritable")


def _report(args: argparse.Namespace) -> int:
    from gate.energy import EnergyModel
    from gate.report import load_report, reprice, summary_text

    saved = load_report(args.input)
    # The settings block follows the thresholds file's schema, not the report's: read as JSON.
    energy = saved.settings.get("energy")
    profile = args.profile or (energy.get("profile") if isinstance(energy, dict) else None) or saved.profile.name
    report = reprice(saved, EnergyModel.from_profile(profile, args.grid))
    _write_outputs(report, args.out, args.html)
    if not args.quiet:
        sys.stdout.write(summary_text(report))
    return EXIT_OK


def _tune(args: argparse.Namespace) -> int:
    from gate.config import load_settings
    from gate.tune import TuneGrid, tune, write_outputs

    settings = load_settings(args.config)
    if args.profile:
        _check_profile(args.profile)
        settings.energy.profile = args.profile
    files, labels = _inputs([], args.scenario)
    grid = TuneGrid.around(settings, margins_db=args.margin_db, ks=args.k, min_open_s=args.min_open_s,
                           kws_thresholds=args.kws_thresholds)
    result = tune(files, labels, settings=settings, grid=grid, target_fa_per_hour=args.target_fa_per_hour,
                  jobs=args.jobs)
    written = write_outputs(result, Path(args.out), sweep_out=Path(args.sweep_out) if args.sweep_out else None)
    if not args.quiet:
        sys.stdout.write(result.summary_text())
        sys.stdout.write("".join(f"wrote {p}\n" for p in written))
    return EXIT_OK if result.best is not None else EXIT_FAIL


if __name__ == "__main__":
    raise SystemExit(main())
