"""`make bench`: runs every bench/<name>.py that defines run() -> dict and writes bench.json.

Each result may carry goals as pairs ``X`` and ``X_target`` (higher is better) or ``X`` and
``X_max`` (lower is better); a missed goal makes the run exit 1, so goals are checked, not just shown.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import platform
import sys
import time
from pathlib import Path

# One core: the goals are per core. Set before any bench module imports numpy.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

HERE = Path(__file__).resolve().parent
# `python bench/run.py` puts bench/ first on sys.path, where bench/cloud.py would shadow the `cloud`
# package; bench modules are loaded by path, so the repository root is what belongs there.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _needs_arguments(fn) -> bool:
    return any(p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
               for p in inspect.signature(fn).parameters.values())


def goals(results: dict) -> list[tuple[str, float, str, float, bool]]:
    out = []
    for key, value in results.items():
        for suffix, better in (("_target", "min"), ("_max", "max")):
            if key.endswith(suffix):
                name = key[: -len(suffix)]
                if name in results:
                    got = float(results[name])
                    ok = got >= value if better == "min" else got <= value
                    out.append((name, got, ">=" if better == "min" else "<=", float(value), ok))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="bench.json")
    ap.add_argument("only", nargs="*", help="bench names to run (default: all)")
    args = ap.parse_args(argv)
    names = args.only or sorted(p.stem for p in HERE.glob("*.py") if p.stem != "run")
    report = {"machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                          "platform": platform.platform()},
              "started_unix": time.time(), "benches": {}}
    failed = []
    for name in names:
        module = _load(HERE / f"{name}.py")
        if not callable(getattr(module, "run", None)) or _needs_arguments(module.run):
            continue  # e.g. loadtest.py: its own target (`make loadtest`), with its own arguments
        print(f"bench {name} ...", file=sys.stderr, flush=True)
        results = module.run()
        report["benches"][name] = results
        for metric, got, op, target, ok in goals(results):
            print(f"  {metric:40s} {got:12.1f} (goal {op} {target:g}) {'ok' if ok else 'MISSED'}")
            if not ok:
                failed.append(f"{name}.{metric}")
    report["missed_goals"] = failed
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}" + (f"; missed goals: {', '.join(failed)}" if failed else "; all goals met"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
