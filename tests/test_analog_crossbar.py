"""The PCM crossbar model and the crossbar wake decision: maths, device statistics, streaming."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gate_core import cards
from gate_core.errors import ConfigError
from sensors.analog import AnalogConfig, AnalogFrontEnd
from sensors.analog import crossbar as xb
from sensors.analog.config import CrossbarConfig
from sensors.analog.crossbar_decision import DEFAULT_MODEL, CrossbarDecision, CrossbarNet, DelayLine, delay_rows
from tests.analog_helpers import burst_scene, pink_bed

IDEAL = dict(prog_noise_scale=0.0, read_noise_scale=0.0, drift_scale=0.0, levels=0, dac_bits=0, adc_bits=0,
             ir_drop=0.0, drift_compensation=False)
TICK_S = 0.01


def layer(w, b=None, *, out_range=1e6, relu=False, seed=0, **cfg):
    w = np.asarray(w, dtype=np.float64)
    b = np.zeros(w.shape[1]) if b is None else b
    return xb.CrossbarLayer(w, b, cfg=CrossbarConfig(**{**IDEAL, **cfg}), out_range=out_range, relu=relu,
                            program_rng=np.random.default_rng(seed), read_interval_s=TICK_S)


def uniform_targets(g_frac: float, n: int = 20000, **cfg) -> xb.Programmed:
    """n devices all programmed to g_frac * g_max (one column, positive weights)."""
    w = np.full((n, 1), g_frac)
    w[0, 0] = 1.0  # sets w_max, so every other device targets g_frac * g_max
    return xb.program(w, CrossbarConfig(**{**IDEAL, **cfg}), np.random.default_rng(1), TICK_S)


# --------------------------------------------------------------------------- crossbar maths


def test_ideal_devices_reproduce_the_float_product():
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(30, 7)), rng.normal(size=7)
    x = rng.uniform(-1, 1, size=(50, 30))
    y = layer(w, b)(x, np.random.default_rng(1))
    np.testing.assert_allclose(y, x @ w + b, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(layer(w, b, relu=True)(x, np.random.default_rng(1)), np.maximum(x @ w + b, 0),
                               atol=1e-9)


def test_programming_noise_follows_the_published_polynomial():
    # Joshi et al. 2020 / aihwkit fit: sigma_prog = 0.2635 + 1.9650 g - 1.1731 g^2 uS at G_max = 25 uS.
    assert xb.prog_sigma_us(np.array([0.0]))[0] == pytest.approx(0.2635)
    assert xb.prog_sigma_us(np.array([25.0]))[0] == pytest.approx(0.2635 + 1.9650 - 1.1731)
    for g in (0.2, 0.5, 0.9):
        p = uniform_targets(g, prog_noise_scale=1.0)
        err = p.g_plus[1:, 0] - g * 25.0
        assert np.std(err) == pytest.approx(xb.prog_sigma_us(np.array([g * 25.0]))[0], rel=0.05)
        assert abs(np.mean(err)) < 0.05
    half = uniform_targets(0.5, prog_noise_scale=0.5)
    assert np.std(half.g_plus[1:, 0] - 12.5) == pytest.approx(0.5 * xb.prog_sigma_us(np.array([12.5]))[0], rel=0.05)


def test_drift_is_a_power_law_in_time_with_the_published_exponents():
    g = 0.3
    mu, sd = xb.drift_nu_stats(np.array([g * 25.0]))
    assert mu[0] == pytest.approx(np.clip(-0.0155 * math.log(g) + 0.0244, 0.049, 0.1))
    assert sd[0] == pytest.approx(np.clip(-0.0125 * math.log(g) - 0.0059, 0.008, 0.045))
    ratios = {}
    for t in (3600.0, 86400.0 * 365):
        p = uniform_targets(g, drift_scale=1.0, drift_s=t)
        ratios[t] = p.g_plus[1:, 0] / (g * 25.0)
    # Same devices (same seed), so nu read back from either time must agree: G(t) = G0 ((t + t0)/t0)^-nu.
    nus = {t: -np.log(r) / math.log((t + xb.T0_S) / xb.T0_S) for t, r in ratios.items()}
    np.testing.assert_allclose(nus[3600.0], nus[86400.0 * 365], rtol=1e-9)
    nu = nus[3600.0]
    assert np.mean(nu) == pytest.approx(mu[0], rel=0.05)
    assert np.std(nu) == pytest.approx(sd[0], rel=0.1)
    assert np.all(ratios[86400.0 * 365] < ratios[3600.0])
    # No drift at the reference read.
    np.testing.assert_allclose(uniform_targets(g, drift_scale=1.0, drift_s=0.0).g_plus[1:, 0], g * 25.0)


def test_read_noise_splits_the_published_variance_between_slow_and_per_read_parts():
    g, t = 0.4, 86400.0
    p = uniform_targets(g, read_noise_scale=1.0, drift_s=t)
    q = xb.q_s(np.array([g * 25.0]))[0]
    assert q == pytest.approx(min(0.0088 / g ** 0.65, 0.2))
    slow = np.var(p.g_plus[1:, 0] / (g * 25.0))
    fast = np.mean(p.read_var[1:, 0]) / (g * 25.0) ** 2
    total = q ** 2 * xb.read_noise_log(t + xb.T0_S)
    assert slow + fast == pytest.approx(total, rel=0.05)
    assert fast == pytest.approx(q ** 2 * xb.read_noise_log(TICK_S), rel=0.02)  # sigma grows with G(t)
    # Per-read noise on an output: sd = sqrt(sum x_i^2 var_i) / beta, linear in read_noise_scale.
    sds = []
    for scale in (1.0, 2.0):
        lay = layer(np.full((64, 1), 0.5), read_noise_scale=scale, drift_s=t)
        x = np.full((4000, 64), 0.5)
        sds.append(np.std(lay(x, np.random.default_rng(3))[:, 0]))
    assert sds[1] / sds[0] == pytest.approx(2.0, rel=0.08)


def test_drift_compensation_restores_the_output_scale():
    rng = np.random.default_rng(5)
    w = rng.uniform(0.1, 1.0, size=(100, 8))
    x = np.ones((1, 100)) * 0.8
    ideal = x @ w
    year = 365 * 86400.0
    raw = layer(w, drift_scale=1.0, drift_s=year)(x, np.random.default_rng(0))
    comp = layer(w, drift_scale=1.0, drift_s=year, drift_compensation=True)(x, np.random.default_rng(0))
    # nu ~ 0.05 over a year: ((t + t0)/t0)^-0.05 is about 0.5.
    assert np.mean(raw / ideal) < 0.6
    assert np.mean(comp / ideal) == pytest.approx(1.0, abs=0.03)


def test_dac_and_adc_quantise_to_their_grids():
    x = np.linspace(-1.2, 1.2, 97)
    q = xb.quantise_signed(x, 4, 1.0)
    assert set(np.round(q * 7).astype(int)) <= set(range(-7, 8))
    assert np.max(np.abs(q - np.clip(x, -1, 1))) <= 0.5 / 7 + 1e-12
    y = layer(np.eye(3), adc_bits=3, out_range=2.0)(np.array([[0.3, -0.9, 1.0]]), np.random.default_rng(0))
    assert np.allclose(y * 3 / 2.0, np.round(y * 3 / 2.0))  # multiples of 2/3


def test_limited_levels_snap_targets():
    p = uniform_targets(0.37, levels=5)  # targets on 0, 6.25, 12.5, 18.75, 25 uS: 9.25 -> 6.25
    assert np.allclose(p.g_plus[1:, 0], 6.25)
    assert np.allclose(uniform_targets(0.4, levels=5).g_plus[1:, 0], 12.5)


def test_ir_drop_attenuates_far_devices_most():
    a = xb._ir_attenuation(4, 3, 0.1)
    assert a[-1, -1] == pytest.approx(0.9)
    assert a[0, 0] > a[-1, 0] > a[-1, -1]
    w = np.ones((4, 3))
    y = layer(w, ir_drop=0.1)(np.ones((1, 4)), np.random.default_rng(0))
    assert np.all(y < 4.0) and y[0, 0] > y[0, 2]


def test_chip_is_a_seed():
    w = np.random.default_rng(2).normal(size=(20, 4))
    x = np.random.default_rng(3).uniform(-1, 1, size=(10, 20))
    noisy = dict(prog_noise_scale=1.0, read_noise_scale=1.0, drift_scale=1.0, drift_s=3600.0)
    a = layer(w, seed=7, **noisy)(x, np.random.default_rng(1))
    b = layer(w, seed=7, **noisy)(x, np.random.default_rng(1))
    c = layer(w, seed=8, **noisy)(x, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


# --------------------------------------------------------------------------- the decision in the front end


@pytest.fixture(scope="module")
def net_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    taps = (0, 3, 6)
    n_in = 12 * len(taps)
    net = CrossbarNet(taps=taps, smooth_ms=20.0, full_scale_db=30.0, tick_ms=10.0, n_channels=12, threshold=0.0,
                      layers=((rng.normal(size=(n_in, 6)) * 0.3, rng.normal(size=6) * 0.1, 100.0),
                              (rng.normal(size=(6, 1)), np.array([-0.5]), 100.0)))
    path = tmp_path_factory.mktemp("xb") / "net.npz"
    net.save(path)
    return path


def xb_config(path, **crossbar) -> AnalogConfig:
    return AnalogConfig(decision={"rule": "crossbar", "crossbar": {"model": str(path), **crossbar}})


def test_network_file_round_trips(net_file):
    net = CrossbarNet.load(net_file)
    assert net.taps == (0, 3, 6) and net.n_inputs == 36
    assert net.macs_per_tick == 37 * 6 + 7 * 1


def test_delay_line_is_chunk_invariant():
    x = np.random.default_rng(0).normal(size=(50, 3))
    whole = DelayLine((0, 2, 5), 3)(x)
    line = DelayLine((0, 2, 5), 3)
    parts = np.concatenate([line(x[:7]), line(x[7:8]), line(x[8:])])
    np.testing.assert_array_equal(whole, parts)
    np.testing.assert_array_equal(whole[10, 3:6], x[8])       # lag 2
    np.testing.assert_array_equal(whole[1, 6:9], np.full(3, -1.0))  # before power-up: quiet


def test_front_end_with_crossbar_is_chunk_invariant_and_deterministic(net_file):
    x = burst_scene(0)
    cfg = xb_config(net_file)
    whole = AnalogFrontEnd(config=cfg).process(x)
    assert whole.score is not None and whole.score.shape == (whole.n_ticks,)
    for chunk in (160, 1234, 16000):
        part = AnalogFrontEnd(config=cfg).process_all(x, chunk_samples=chunk)
        np.testing.assert_array_equal(part.score, whole.score)
        np.testing.assert_array_equal(part.open, whole.open)
        assert part.events == whole.events
    fe = AnalogFrontEnd(config=cfg)
    fe.process(x)
    fe.reset()
    np.testing.assert_array_equal(fe.process(x).score, whole.score)
    other = AnalogFrontEnd(config=AnalogConfig(**{**cfg.model_dump(), "nonideal": {"seed": 1}})).process(x)
    assert not np.array_equal(other.score, whole.score)


def test_streaming_decision_matches_the_float_network_on_ideal_devices(net_file):
    x = pink_bed(2.0, -50.0)
    x[8000:16000] += pink_bed(0.5, -20.0, seed=3)
    cfg = xb_config(net_file, **IDEAL)
    fe = AnalogFrontEnd(config=cfg)
    block = fe.process(x)
    net = CrossbarNet.load(net_file)
    ref = net.forward_float(delay_rows(net, block.envelopes_db - block.floor_db, fe.tick_s))
    np.testing.assert_allclose(block.score, ref, atol=1e-5)
    np.testing.assert_array_equal(fe.crossbar(np.zeros((0, 12)))[0], np.zeros(0, bool))


def test_bad_crossbar_settings_name_the_field(tmp_path, net_file):
    with pytest.raises(ConfigError, match="analog.decision.crossbar.model"):
        AnalogFrontEnd(config=xb_config(tmp_path / "missing.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="analog.decision.crossbar.model"):
        AnalogFrontEnd(config=xb_config(tmp_path / "junk.npz"))
    with pytest.raises(ConfigError, match="trained on 12 channels"):
        AnalogFrontEnd(config=AnalogConfig(n_channels=8, decision={"rule": "crossbar",
                                                                   "crossbar": {"model": str(net_file)}}))
    with pytest.raises(ValueError, match="drift_s"):
        CrossbarConfig(drift_s=-1.0)
    with pytest.raises(ValueError, match="adc_bits"):
        AnalogConfig(decision={"rule": "crossbar", "crossbar": {"adc_bits": 40}})


def test_training_labels_weigh_negatives_under_tv_and_music():
    from sensors.analog import train_crossbar as tc
    from sensors.scenario import Label

    def lab(a, b, label, kind):
        return Label(a, b, label, kind, "", None, int(a * 16000), int(b * 16000))

    labels = [lab(0.0, 20.0, "speech", "tv"), lab(30.0, 40.0, "noise", "music"), lab(5.0, 5.9, "wake", "wake"),
              lab(10.0, 10.8, "confusable", "confusable"), lab(50.0, 51.0, "speech", "speech")]
    y, w = tc.tick_labels(labels, 6000, TICK_S)
    at = lambda t: int(round(t / TICK_S)) - 1  # noqa: E731
    assert w[at(2.0)] == w[at(35.0)] == tc.AMBIENT_WEIGHT > 1.0      # TV speech, music: heavier negatives
    assert y[at(2.0)] == 0.0 and w[at(45.0)] == w[at(50.5)] == 1.0   # elsewhere, speech included: weight 1
    assert y[at(5.6)] == 1.0 and w[at(5.6)] == 1.0                   # a wake word over the TV stays positive
    assert w[at(4.9)] == 0.0 and w[at(6.3)] == 0.0                   # ... with its unscored margins
    assert w[at(10.4)] == tc.CONFUSABLE_WEIGHT                       # a confusable phrase keeps its weight


def test_shipped_network_and_card():
    from sensors.analog.train_crossbar import EVAL_SCENES

    net = CrossbarNet.load(DEFAULT_MODEL)
    card, record = cards.read_runtime(DEFAULT_MODEL), cards.read_record(DEFAULT_MODEL)
    assert card["threshold"] == pytest.approx(net.threshold)
    assert card["inputs"]["taps_ticks"] == list(net.taps) and card["inputs"]["channels"] == net.n_channels
    assert record["macs_per_tick"] == net.macs_per_tick
    assert set(record["training"]["engines"]) <= {"espeak", "pico", "rhvoice"}
    trained_on = record["training"]["train_scenes"]
    assert not [t for t in trained_on for r, s in EVAL_SCENES if t.startswith(f"{r} seed {s},")]
    assert card["layers"] == [list(w.shape) for w, _, _ in net.layers]
    assert DEFAULT_MODEL.stat().st_size < 64_000
    fe = AnalogFrontEnd(config=AnalogConfig(decision={"rule": "crossbar"}))
    assert isinstance(fe.crossbar, CrossbarDecision)
    # Silence never looks keyword-like.
    assert not fe.process(np.zeros(32000, np.float32)).open.any()


def test_crossbar_profile_prices_the_crossbar_stage_with_sources():
    from gate.energy import CROSSBAR, EnergyModel, LedgerSnapshot, StageCounts, load_profile

    p = load_profile("mcu-crossbar")
    for sec in [p.host, p.cloud, *p.stages.values()]:
        figures = {k: v for k, v in sec.model_dump().items() if k != "source"}
        if any(v not in (0, 0.0) for k, v in figures.items() if not (k == "pue" and v == 1.0)):
            assert sec.source.strip()
    hour = LedgerSnapshot(audio_seconds=3600.0, stages={CROSSBAR: StageCounts(invocations=360_000)})
    assert EnergyModel(profile=p).price(hour).stage_j[CROSSBAR] == pytest.approx(360_000 * 84.6e-9)
    assert CROSSBAR in EnergyModel.from_profile("mcu-analog").price(hour).unpriced
