"""`make compare`'s threshold sweep: the detector rerun at many thresholds over recorded scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cloud import compare
from cloud.compare import Context, DetectorSpec, Run, Skip, at_fa, curve, detect, smoothed
from cloud.train.scenes import Scene
from gate_core.detector import Detector

SR = 16_000


@pytest.mark.parametrize("seed", range(8))
def test_the_sweep_fires_exactly_where_the_detector_does(seed):
    rng = np.random.default_rng(seed)
    for _ in range(25):
        n = int(rng.integers(1, 500))
        scores = rng.random(n) ** rng.uniform(0.2, 4.0)
        if rng.random() < 0.5:
            scores = np.round(scores * 256) / 256  # int8-like levels: ties at the threshold
        times = 0.37 + np.arange(n) * 0.03
        smoothing = float(rng.choice([0.0, 0.06, 0.09, 0.3]))
        k = int(rng.integers(1, 4))
        refractory = float(rng.choice([0.0, 0.03, 0.5, 1.5]))
        spec = DetectorSpec.of(Detector(threshold=0.5, smoothing_s=smoothing, min_consecutive=k,
                                        refractory_s=refractory, period_s=0.03))
        for thr in (0.05, 0.3, 0.5, 0.8, 0.99, float(scores[n // 2])):
            ref = Detector(threshold=thr, smoothing_s=smoothing, min_consecutive=k, refractory_s=refractory,
                           period_s=0.03)
            assert detect([(times, scores)], spec, thr) == [d.t_s for d in ref.run(scores, times)]


def test_the_moving_average_is_the_detectors_to_the_bit():
    x = np.random.default_rng(1).random(300)
    d = Detector(threshold=0.5, smoothing_s=0.09, min_consecutive=1, refractory_s=0.0, period_s=0.03)
    mine = smoothed(x, d.window)
    for i, p in enumerate(x):
        d._recent.append(float(p))
        assert mine[i] == sum(d._recent) / len(d._recent)


def test_each_segment_restarts_the_detector():
    spec = DetectorSpec.of(Detector(threshold=0.5, smoothing_s=0.0, min_consecutive=2, refractory_s=1.0,
                                    period_s=0.1))
    a = (np.array([0.1, 0.2, 0.3]), np.array([0.2, 0.9, 0.9]))
    b = (np.array([5.0, 5.1]), np.array([0.9, 0.9]))
    assert detect([a, b], spec) == [0.3, 5.1]
    # As one segment, b's hits would fall within the 10 steps of a's refractory period.
    joined = (np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]))
    assert detect([joined], spec) == [0.3]
    assert detect([(a[0], a[1]), (b[0], np.array([0.9, 0.1]))], spec) == [0.3]


def test_the_default_threshold_and_no_scores_at_all():
    spec = DetectorSpec.plain(0.5, 0.08)
    assert spec.refractory_steps == int(np.ceil(compare.REFRACTORY_S / 0.08))
    assert detect([(np.array([1.0, 1.08]), np.array([0.49, 0.5]))], spec) == [1.08]
    assert detect([(np.array([]), np.array([]))], spec, 0.1) == []
    assert detect([], spec) == []


def _scenes() -> list[Scene]:
    # Two 30-minute scenes (1 h), wake phrases at 100 s, 200 s, ...
    return [Scene(f"s{i}", np.zeros(1800 * SR, np.int16), [(100.0 * j, 100.0 * j + 0.8) for j in range(1, 11)],
                  keyword_voices=["flite:slt", "flite:awb"] * 5, keyword_commands=["on"] * 10,
                  keyword_snr_db=[3.0 * j for j in range(10)]) for i in range(2)]


def _trace(rng: np.random.Generator, scene: Scene) -> compare.Trace:
    """Scores every 0.1 s: each wake phrase peaks at a random height, false peaks elsewhere."""
    t = np.arange(0.1, scene.audio.size / SR, 0.1)
    x = np.full(t.size, 0.01)
    for _, b in scene.keywords:
        x[int(round(b * 10))] = rng.uniform(0.2, 1.0)
    for i in rng.integers(0, t.size, 30):
        x[i] = max(x[i], rng.uniform(0.0, 0.8))
    return [(t, x)]


def _run(scenes: list[Scene], **kw) -> Run:
    rng = np.random.default_rng(3)
    return Run([_trace(rng, s) for s in scenes], DetectorSpec.plain(0.5, 0.1), cpu_s=1.0, **kw)


def test_the_curve_is_the_detector_at_each_threshold_and_includes_the_default():
    scenes = _scenes()
    ctx = Context("t", scenes, lambda: None)
    run = _run(scenes, thresholds=(0.1, 0.3, 0.7))
    pts = curve(run, ctx)
    assert [p["threshold"] for p in pts] == [0.1, 0.3, 0.5, 0.7]
    for p in pts:
        times = [detect(tr, run.detector, p["threshold"]) for tr in run.traces]
        sc = compare._score(ctx, times)
        assert (p["hits"], p["false_accepts"]) == (sc.hits, sc.false_accepts)
    assert pts[0]["false_accepts"] > pts[-1]["false_accepts"] and pts[0]["hits"] > pts[-1]["hits"]


def test_a_later_stage_filters_the_fires_at_every_threshold():
    scenes = _scenes()
    ctx = Context("t", scenes, lambda: None)
    keep_first_half = _run(scenes, keep=lambda i, t: t < 900.0)
    plain = _run(scenes)
    for thr in (0.1, 0.5):
        assert keep_first_half.times(thr) == [[t for t in ts if t < 900.0] for ts in plain.times(thr)]
    assert compare._score(ctx, keep_first_half.times()).hits <= compare._score(ctx, plain.times()).hits


def test_misses_at_matched_false_accepts_take_the_best_point_within_each_target():
    pts = [{"threshold": 0.1, "miss_rate": 0.05, "fa_per_hour": 12.0},
           {"threshold": 0.5, "miss_rate": 0.2, "fa_per_hour": 2.0},
           {"threshold": 0.6, "miss_rate": 0.2, "fa_per_hour": 1.5},
           {"threshold": 0.9, "miss_rate": 0.5, "fa_per_hour": 0.0}]
    got = at_fa(pts, (0.5, 2.0, 10.0, 20.0))
    assert got["0.5"] == {"threshold": 0.9, "miss_rate": 0.5, "fa_per_hour": 0.0}
    assert got["2"] == {"threshold": 0.6, "miss_rate": 0.2, "fa_per_hour": 1.5}  # tie on misses: fewer FA
    assert got["10"]["threshold"] == 0.6 and got["20"]["threshold"] == 0.1
    assert at_fa(pts[:1], (1.0,)) == {"1": None}


def test_a_new_row_is_one_function_and_a_skipped_one_says_why():
    scenes = _scenes()
    engines = {"fake": lambda ctx: _run(ctx.scenes, extra={"note": "x"}),
               "missing": lambda ctx: (_ for _ in ()).throw(Skip("no model here"))}
    rep = compare.compare({"cross_engine": scenes}, engines=engines)
    row = rep["engines"]["fake"]["cross_engine"]
    assert rep["engines"]["missing"]["cross_engine"] == {"skipped": "no model here"}
    assert row["note"] == "x" and row["cpu_s_per_audio_hour"] == 1.0
    assert row["default"]["threshold"] == 0.5 and row["default"]["keywords"] == 20
    assert sum(v["keywords"] for v in row["by_voice"].values()) == 20
    assert sum(v["keywords"] for v in row["by_snr"].values()) == 20
    assert set(row["at_fa_per_hour"]) == {f"{f:g}" for f in compare.FA_TARGETS}
    assert rep["sets"]["cross_engine"] == {"hours": 1.0, "keywords": 20,
                                           "scenes": {"s0": {"hours": 0.5, "keywords": 10},
                                                      "s1": {"hours": 0.5, "keywords": 10}}}
    html = compare.render_html(rep)
    assert html.count("data:image/png;base64,") == 1 and "miss rate per SNR band" in html
    assert any("fake" in line for line in compare.table(rep, "cross_engine"))


def test_bad_minutes_are_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        compare.main(["--cross-minutes", "-3"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("argument --cross-minutes: got -3: expected minutes in (0, 600]")


def test_a_saved_report_is_rendered_again_without_a_run(tmp_path, capsys):
    rep = compare.compare({"held_out": _scenes()}, engines={"fake": lambda ctx: _run(ctx.scenes)})
    saved = tmp_path / "r.json"
    saved.write_text(json.dumps(rep))
    assert compare.main(["--from-json", str(saved), "--html", str(tmp_path / "r.html")]) == 0
    assert "fake" in capsys.readouterr().out and (tmp_path / "r.html").is_file()
    (tmp_path / "bad.json").write_text('{"engines": {}}')
    assert compare.main(["--from-json", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cloud.compare: {tmp_path / 'bad.json'}: not a compare report (KeyError: 'sets')"]
