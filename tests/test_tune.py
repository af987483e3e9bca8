"""`gate-node tune`: a valid thresholds file and a non-dominated front."""

import csv
import json

from report_helpers import slice_demo, standin_config

from gate.cli import main
from gate.config import load_settings
from gate.tune import pareto_front


def _dominates(a: dict, b: dict) -> bool:
    return (a["joules"] <= b["joules"] and a["miss_rate"] <= b["miss_rate"]
            and (a["joules"] < b["joules"] or a["miss_rate"] < b["miss_rate"]))


def test_pareto_front_keeps_exactly_the_non_dominated_points():
    pts = [{"joules": j, "miss_rate": m, "id": i} for i, (j, m) in
           enumerate([(1, 0.9), (2, 0.5), (2, 0.6), (3, 0.5), (4, 0.1), (5, 0.1), (0.5, 1.0)])]
    front = pareto_front(pts, ("joules", "miss_rate"))
    assert [p["id"] for p in front] == [6, 0, 1, 4]
    for p in pts:
        assert (p in front) != any(_dominates(q, p) for q in pts)


def test_tune_writes_a_valid_thresholds_file_and_a_non_dominated_front(tmp_path, capsys):
    d = slice_demo(tmp_path / "demo25")
    cfg = standin_config(tmp_path / "standin.yaml")
    out = tmp_path / "tuned.yaml"
    rc = main(["--config", str(cfg), "tune", "--scenario", str(d), "--target-fa-per-hour", "2000",
               "--out", str(out), "--margin-db", "4,8", "--k", "3", "--kws-thresholds", "0.2,0.5,0.8,0.95",
               "--profile", "mcu-analog", "--jobs", "2"])
    assert rc == 0
    assert main(["config", "check", str(out)]) == 0
    sweep = json.loads(out.with_suffix(".sweep.json").read_text())
    assert len(sweep["points"]) == 2 * 4
    with out.with_suffix(".sweep.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2 * 4
    front, best = sweep["front"], sweep["best"]
    feasible = [p for p in sweep["points"] if p["feasible"]]
    assert front and best in front
    assert all(p["fa_per_hour"] <= 2000 for p in feasible)
    for p in front:
        assert not any(_dominates(q, p) for q in feasible)
    for p in feasible:
        assert p in front or any(_dominates(q, p) or (q["joules"], q["miss_rate"]) == (p["joules"], p["miss_rate"])
                                 for q in front)
    tuned = load_settings(out)
    base = load_settings(cfg)
    assert tuned.kws.threshold == best["kws_threshold"]
    assert (tuned.analog.margin_db, tuned.analog.decision.k) == (best["margin_db"], best["k"])
    # Everything else is carried over from the input settings.
    assert tuned.kws.model_path == base.kws.model_path and tuned.segmenter == base.segmenter
    assert "best" in capsys.readouterr().out
