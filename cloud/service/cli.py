"""`gate-cloud serve`: arguments and the command; cloud/cli.py only registers it."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gate_core.cliutil import input_file, number, output_dir, output_file
from gate_core.errors import ConfigError

# Flag -> CloudConfig field; a flag given on the command line wins over the config file.
_OVERRIDES = {"broker": "broker", "group": "group", "workers": "workers", "db": "db_url",
              "metrics_port": "metrics_port", "client_id_prefix": "client_id_prefix", "topic_prefix": "topic_prefix",
              "models_factory": "models_factory"}


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="verify segments from every node (MQTT shared subscription) and answer",
                       description="Subscribe to $share/<group>/<prefix>/+/segments, verify each segment, store the "
                                   "verdict and publish it to <prefix>/<node>/verdict. SIGTERM finishes in-flight "
                                   "segments and exits 0; the JSON summary is written on exit.")
    s.add_argument("--config", type=input_file,
                   help="YAML: a thresholds file with a 'cloud:' section, or that section alone")
    s.add_argument("--broker", help="mqtt://host[:port] or mqtts://host[:port]")
    s.add_argument("--group", help="shared-subscription group")
    s.add_argument("--topic-prefix", help="first topic level (default gate)")
    s.add_argument("--workers", type=number(lo=1, hi=256, integer=True), help="worker processes to start here")
    s.add_argument("--db", help="sqlite:///<path> or postgresql://...")
    s.add_argument("--store-audio", action="store_true", default=None, help="keep segment audio (retention applies)")
    s.add_argument("--metrics-port", type=number(lo=0, hi=65535, integer=True),
                   help="Prometheus/summary port of worker 0 (worker i: +i; 0 = free)")
    s.add_argument("--client-id-prefix", help="MQTT client ids are <prefix>-<index> (default gate-cloud-<host>)")
    s.add_argument("--models-factory", help="module:callable returning CloudModels (default: the shipped models)")
    s.add_argument("--state-dir", type=output_dir,
                   help="each worker keeps worker-<index>-<pid>.json here (state, metrics URL, summary; "
                        "created if missing)")
    s.add_argument("--summary-out", default="-", type=_summary_target,
                   help="write the JSON summary here on exit ('-' = stdout, '' = none)")
    s.add_argument("--print-config", action="store_true", help="print the effective configuration as JSON and exit")
    # Internal: how the supervisor starts each worker with the exact validated configuration.
    s.add_argument("--worker-config-stdin", action="store_true", help=argparse.SUPPRESS)
    s.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)


def serve(args: argparse.Namespace) -> int:
    from gate_core.cloud_config import CloudConfig

    try:
        if args.worker_config_stdin:
            cfg = CloudConfig.model_validate_json(sys.stdin.buffer.read())
        else:
            data = _read_config(args.config) if args.config else {}
            for flag, field in _OVERRIDES.items():
                if getattr(args, flag) is not None:
                    data[field] = getattr(args, flag)
            if args.store_audio:
                data["store_audio"] = True
            cfg = CloudConfig.model_validate(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in err['loc']) or 'cloud'}: {err['msg'].removeprefix('Value error, ')}"
                    for err in exc.errors(include_url=False)]
        raise ConfigError("; ".join(problems)) from None
    if args.state_dir is not None:
        try:
            args.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--state-dir {args.state_dir}: cannot create ({exc.strerror or exc})") from None
    if args.print_config:
        print(cfg.model_dump_json(indent=2))
        return 0

    if args.worker_index is None:  # the supervisor's or the single worker's process, not a supervised child
        from cloud.service.retire import retire_stale

        retire_stale(cfg)
    if args.worker_index is not None or cfg.workers == 1:
        from cloud.service.supervisor import merge_summaries
        from cloud.service.worker import run_worker

        code, summary = run_worker(cfg, index=args.worker_index or 0, state_dir=args.state_dir)
        summary = merge_summaries([summary])  # one shape whatever the number of workers
    else:
        from cloud.service.models import load_models
        from cloud.service.supervisor import supervise

        load_models(cfg)  # fail here, once and clearly, rather than in N workers restarting for ever

        with tempfile.TemporaryDirectory(prefix="gate-cloud-") as tmp:
            code, summary = supervise(cfg, state_dir=args.state_dir or tmp,
                                      log_level=logging.getLevelName(logging.getLogger().level))
    _write_summary(summary, args.summary_out)
    return code


def _read_config(path: Path) -> dict[str, Any]:
    """The cloud section of a thresholds file (every section validated, as the node does), or the
    section on its own; errors name the file, line and field, with a "did you mean"."""
    from gate.config import load_settings

    settings = load_settings(path, env={}, section="cloud")
    return settings.cloud.model_dump(mode="json")


def _summary_target(value: str) -> str:
    """'-' (stdout), '' (none) or a file that can be written."""
    return value if value in ("-", "") else str(output_file(value))


def _write_summary(summary: dict[str, Any], where: str) -> None:
    if not where:
        return
    text = json.dumps(summary, indent=2) + "\n"
    if where == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        from gate_core.cliutil import atomic_write_text

        atomic_write_text(Path(where), text)
