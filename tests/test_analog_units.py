"""Unit tests of the analog front end's parts: filter bank, board draws, detectors and logic."""

from __future__ import annotations

import numpy as np
import pytest
from analog_helpers import SR, config, ideal, run
from pydantic import ValidationError

from gate_core.errors import ConfigError
from sensors.analog import AnalogConfig, AnalogFrontEnd, GateEvent, duty_cycle, open_intervals
from sensors.analog import testbench as sc
from sensors.analog.config import DecisionConfig
from sensors.analog.detect import FloorTracker, OnePole
from sensors.analog.logic import DebouncedGate, Hysteresis, decide

# --- filter bank -------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 3])
def test_tone_at_each_centre_lights_that_channel_most(seed):
    fe = AnalogFrontEnd(config=config(**{"nonideal.seed": seed}))
    for k, fc in enumerate(fe.centres_hz):
        fe.reset()
        env = fe.process(sc.tone(SR // 2, fc, amplitude=0.1)).envelopes_db
        assert int(np.argmax(env[20:].mean(axis=0))) == k, f"tone at {fc:.0f} Hz"


def test_full_scale_sine_reads_0_dbfs_at_its_channel():
    fe = AnalogFrontEnd(config=ideal())
    for k, fc in enumerate(fe.centres_hz):
        fe.reset()
        level = fe.process(sc.tone(SR // 2, fc)).envelopes_db[20:, k].mean()
        assert level == pytest.approx(0.0, abs=0.3), f"channel {k} at {fc:.0f} Hz"


@pytest.mark.parametrize("rate", [8000, 48000])
def test_other_sample_rates_keep_the_tick_and_the_level(rate):
    fe = AnalogFrontEnd(config=ideal(f_high_hz=3500.0), sample_rate=rate)
    assert fe.tick_s == pytest.approx(0.01)
    k = 6
    env = fe.process(sc.tone(rate, fe.centres_hz[k], amplitude=0.5, sr=rate)).envelopes_db
    assert env.shape[0] == 100
    assert int(np.argmax(env[20:].mean(axis=0))) == k
    assert env[20:, k].mean() == pytest.approx(-6.02, abs=0.3)


def test_digital_silence_reads_the_circuit_floor():
    env = run(ideal(abs_floor_dbfs=-65.0), np.zeros(SR, np.float32)).envelopes_db
    np.testing.assert_allclose(env, -65.0, atol=1e-4)


def test_higher_order_rejects_more_out_of_band():
    leak = []
    for order in (2, 6):
        fe = AnalogFrontEnd(config=ideal(filter_order=order))
        env = fe.process(sc.tone(SR // 2, fe.centres_hz[6] * 1.6, amplitude=0.5)).envelopes_db
        leak.append(env[20:, 6].mean())
    assert leak[1] < leak[0] - 10.0


def test_higher_q_leaks_less_into_the_neighbour_channel():
    leak = []
    for q in (2.0, 6.0):
        fe = AnalogFrontEnd(config=ideal(q=q))
        env = fe.process(sc.tone(SR // 2, fe.centres_hz[6], amplitude=0.5)).envelopes_db[20:].mean(axis=0)
        leak.append(env[7] - env[6])
    assert leak[1] < leak[0] - 5.0


def test_envelope_decays_with_its_rc_time_constant():
    # An amplitude RC decays 20*log10(e) = 8.69 dB per time constant once the input stops.
    x = np.concatenate([sc.tone(SR, 1000.0, amplitude=0.5), np.zeros(SR // 2, np.float32)])
    block = run(ideal(envelope_tau_ms=50.0), x)
    ch = int(np.argmax(block.envelopes_db[90]))
    tail = block.envelopes_db[:, ch]
    t0 = 100 + 3  # the analysis frame (16 ms) has left the tone behind by then
    assert tail[t0] - tail[t0 + 5] == pytest.approx(8.69, rel=0.03)


def test_explicit_centres_override_the_geometric_layout():
    fe = AnalogFrontEnd(config=ideal(centres_hz=[300.0, 800.0, 2000.0], **{"decision.k": 2}))
    np.testing.assert_allclose(fe.nominal_centres_hz, [300.0, 800.0, 2000.0])
    assert fe.process(np.zeros(1600, np.float32)).envelopes_db.shape == (10, 3)


# --- board non-idealities ----------------------------------------------------------------------

def test_mismatch_is_reproducible_by_seed_and_changes_with_it():
    a, b, c = (AnalogFrontEnd(config=config(**{"nonideal.seed": s})) for s in (7, 7, 8))
    np.testing.assert_array_equal(a.centres_hz, b.centres_hz)
    np.testing.assert_array_equal(a.gains_db, b.gains_db)
    np.testing.assert_array_equal(a.offsets_db, b.offsets_db)
    assert not np.allclose(a.centres_hz, c.centres_hz)
    assert not np.allclose(a.offsets_db, c.offsets_db)
    assert np.all(np.abs(a.centres_hz / a.nominal_centres_hz - 1) < 0.1)
    assert not np.allclose(a.centres_hz, a.nominal_centres_hz)


def test_ideal_board_has_nominal_centres():
    fe = AnalogFrontEnd(config=ideal())
    np.testing.assert_allclose(fe.centres_hz, np.geomspace(250.0, 4000.0, 12))


def test_gain_mismatch_shifts_channel_levels():
    x = sc.at_dbfs(sc.white_noise(SR, np.random.default_rng(0)), -30.0)
    flat = run(ideal(), x).envelopes_db[20:].mean(axis=0)
    fe = AnalogFrontEnd(config=ideal(**{"nonideal.gain_mismatch_db": 3.0}))
    skewed = fe.process(x).envelopes_db[20:].mean(axis=0)
    np.testing.assert_allclose(skewed - flat, fe.gains_db, atol=0.6)


def test_ripple_modulates_a_steady_envelope_by_its_depth():
    x = sc.tone(2 * SR, 1000.0, amplitude=0.1)
    steady = run(ideal(), x).envelopes_db[50:]
    rippled = run(ideal(**{"nonideal.envelope_ripple_pct": 10.0}), x).envelopes_db[50:]
    assert steady.std(axis=0).max() < 0.01
    # (1 + 0.1 cos U) in dB has an RMS of about 8.69 * 0.1 / sqrt(2) = 0.61 dB.
    assert rippled.std(axis=0).mean() == pytest.approx(0.61, rel=0.15)


def test_comparator_offsets_decide_channels_in_silence():
    cfg = ideal(margin_db=0.0, hysteresis_db=0.0, **{"nonideal.comparator_offset_db": 3.0})
    fe = AnalogFrontEnd(config=cfg)
    above = fe.process(np.zeros(SR, np.float32)).above
    np.testing.assert_array_equal(above[-1], fe.offsets_db > 0)
    assert np.all(above == above[-1])


def test_comparator_noise_flips_a_zero_margin_comparator_about_half_the_time():
    cfg = ideal(margin_db=0.0, hysteresis_db=0.0, **{"nonideal.comparator_noise_db": 2.0})
    above = run(cfg, np.zeros(5 * SR, np.float32)).above
    assert above.mean() == pytest.approx(0.5, abs=0.05)


# --- detectors ---------------------------------------------------------------------------------

def test_one_pole_primes_on_first_value_and_decays_with_its_tau():
    lp = OnePole(np.exp(-1.0 / 10.0))  # tau = 10 ticks
    x = np.concatenate([np.full((5, 1), 4.0), np.zeros((30, 1))])
    y = lp(x)
    np.testing.assert_allclose(y[:5], 4.0)
    assert y[5 + 9, 0] == pytest.approx(4.0 * np.exp(-1.0), rel=1e-9)


def test_one_pole_short_and_long_blocks_agree():
    x = np.random.default_rng(0).standard_normal((100, 3))
    whole = OnePole(0.9)(x)  # lfilter path
    short = OnePole(0.9)
    parts = np.concatenate([short(x[a:b]) for a, b in ((0, 1), (1, 20), (20, 52), (52, 100))])
    np.testing.assert_allclose(parts, whole, rtol=1e-12, atol=1e-12)


def test_floor_climbs_at_its_slew_rate_and_drops_at_once():
    tracker = FloorTracker(smooth_pole=0.0, rise_per_tick_db=0.5)  # no smoothing: floor follows valleys
    level = np.concatenate([np.full(10, -60.0), np.full(40, -40.0), np.full(10, -70.0)])[:, None]
    floor = tracker(level)[:, 0]
    np.testing.assert_allclose(floor[:10], -60.0)
    np.testing.assert_allclose(np.diff(floor[10:50])[:30], 0.5)
    np.testing.assert_allclose(floor[49], -40.0)
    np.testing.assert_allclose(floor[50:], -70.0)


def test_floor_tracks_a_noise_step_at_the_configured_rate():
    x = np.concatenate([pink(5.0, -70.0), pink(20.0, -30.0, seed=1)])
    fe = AnalogFrontEnd(config=config(floor_rise_db_per_s=2.0))
    floor = fe.process(x).floor_db.mean(axis=1)
    t = 7.0 / fe.tick_s, 12.0 / fe.tick_s
    slope = (floor[int(t[1])] - floor[int(t[0])]) / 5.0
    assert slope == pytest.approx(2.0, rel=0.02)


def pink(seconds, level, seed=0):
    return sc.at_dbfs(sc.pink_noise(int(seconds * SR), np.random.default_rng(seed)), level)


# --- comparators and decision ------------------------------------------------------------------

def test_hysteresis_holds_between_thresholds():
    h = Hysteresis(on_level=7.0, off_level=5.0, n_channels=1)
    x = np.array([0, 6, 7.5, 6, 5.5, 4.9, 6, 6.9, 7.1, 5.0, 4.99])[:, None]
    got = h(x)[:, 0]
    np.testing.assert_array_equal(got, [0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0])


def test_hysteresis_state_carries_across_blocks():
    h = Hysteresis(on_level=7.0, off_level=5.0, n_channels=2)
    assert h(np.array([[8.0, 0.0]])).tolist() == [[True, False]]
    assert h(np.array([[6.0, 6.0], [6.0, 6.0]])).tolist() == [[True, False], [True, False]]


def test_k_of_n_counts_channels():
    above = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]], bool)
    cfg = DecisionConfig(rule="k_of_n", k=3)
    np.testing.assert_array_equal(decide(above, cfg), [False, True, False])


def test_weighted_sum_uses_the_weights():
    above = np.array([[1, 0, 0, 0], [0, 1, 1, 1], [1, 1, 0, 0]], bool)
    cfg = DecisionConfig(rule="weighted", weights=[3.0, 1.0, 1.0, 0.5], threshold=3.0)
    np.testing.assert_array_equal(decide(above, cfg), [True, False, True])


def test_k_of_n_rejects_a_narrow_tone_that_k_equal_1_accepts():
    x = np.concatenate([pink(2.0, -50.0), pink(1.0, -50.0, 1) + sc.tone(SR, 2000.0, amplitude=0.003)])
    strict = run(ideal(**{"decision.k": 3}), x)
    loose = run(ideal(**{"decision.k": 1}), x)
    assert not strict.open.any()
    assert loose.open.any()


def test_weighted_rule_opens_on_a_heavily_weighted_channel():
    fe = AnalogFrontEnd(config=ideal())
    tone_hz = fe.centres_hz[7]
    x = np.concatenate([pink(2.0, -50.0), pink(1.0, -50.0, 1) + sc.tone(SR, tone_hz, amplitude=0.003)])
    weights = [0.1] * 12
    weights[7] = 5.0
    heavy = run(ideal(**{"decision.rule": "weighted", "decision.weights": weights, "decision.threshold": 5.0}), x)
    flat = run(ideal(**{"decision.rule": "weighted", "decision.threshold": 3.0}), x)
    assert heavy.open.any()
    assert not flat.open.any()


# --- debounce and hangover ---------------------------------------------------------------------

def test_debounce_needs_the_decision_to_hold():
    gate = DebouncedGate(min_open_ticks=3, hangover_ticks=0)
    d = np.array([1, 1, 0, 1, 1, 1, 1, 0, 0], bool)
    np.testing.assert_array_equal(gate(d, 0), [0, 0, 0, 0, 0, 1, 1, 0, 0])


def test_hangover_keeps_the_gate_open_and_blips_do_not_extend_it():
    gate = DebouncedGate(min_open_ticks=2, hangover_ticks=3)
    d = np.array([1, 1, 0, 0, 1, 0, 0, 0, 0], bool)
    np.testing.assert_array_equal(gate(d, 0), [0, 1, 1, 1, 1, 0, 0, 0, 0])


def test_debounce_and_hangover_carry_across_blocks():
    d = np.array([0, 1, 1, 1, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0], bool)
    whole = DebouncedGate(min_open_ticks=2, hangover_ticks=2)(d, 0)
    split = DebouncedGate(min_open_ticks=2, hangover_ticks=2)
    parts = [split(d[a:b], a) for a, b in ((0, 2), (2, 3), (3, 7), (7, 14))]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def _tone_burst_scene():
    x = pink(5.0, -60.0)
    x[3 * SR:int(3.5 * SR)] += sc.tone(SR // 2, 1000.0, amplitude=0.1)
    return x


def test_hangover_duration_is_audio_time():
    x = _tone_burst_scene()
    closes = []
    for hang in (0.1, 0.5):
        (opened, closed), = open_intervals(run(config(hangover_s=hang), x).events, 5.0)
        assert 3.0 < opened < 3.06
        closes.append(closed)
    assert closes[1] - closes[0] == pytest.approx(0.4, abs=1e-9)
    assert 3.5 + 0.1 <= closes[0] <= 3.5 + 0.1 + 0.15


def test_debounce_delays_the_open_by_its_duration():
    x = _tone_burst_scene()
    opens = [run(config(min_open_s=m), x).events[0].t_s for m in (0.0, 0.05)]
    # min_open_s = 0 still needs one tick; 0.05 s needs five, so the open moves by four ticks.
    assert opens[1] - opens[0] == pytest.approx(0.04, abs=1e-9)


def test_event_times_are_whole_ticks_on_the_audio_clock():
    block = run(config(), _tone_burst_scene())
    assert block.events and all(isinstance(e, GateEvent) for e in block.events)
    for ev in block.events:
        ticks = ev.t_s / block.tick_s
        assert ticks == pytest.approx(round(ticks), abs=1e-6)
    np.testing.assert_allclose(block.times_s[:3], [0.01, 0.02, 0.03])
    assert block.t0_s == pytest.approx(0.01)


# --- events and metrics ------------------------------------------------------------------------

def test_open_intervals_pairs_events_and_closes_at_the_end():
    evs = [GateEvent("open", 1.0), GateEvent("close", 1.5), GateEvent("open", 3.0)]
    assert open_intervals(evs, 4.0) == [(1.0, 1.5), (3.0, 4.0)]
    assert open_intervals([], 4.0) == []
    assert duty_cycle([(1.0, 1.5), (3.0, 4.0)], 10.0) == pytest.approx(0.15)
    assert duty_cycle([], 0.0) == 0.0


# --- configuration -----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    {"f_low_hz": 3000.0, "f_high_hz": 2000.0},
    {"filter_order": 3},
    {"decision": {"k": 13}},
    {"decision": {"weights": [1.0, 2.0]}},
    {"decision": {"rule": "weighted", "threshold": 20.0}},
    {"centres_hz": [500.0, 400.0, 900.0]},
    {"n_channels": 1},
    {"nonideal": {"seed": -1}},
    {"margin_db": -1.0},
    {"hangover": 0.3},
])
def test_invalid_configs_are_rejected(bad):
    with pytest.raises(ValidationError):
        AnalogConfig(**bad)


def test_tick_must_be_whole_samples():
    with pytest.raises(ConfigError, match="analog.tick_ms"):
        AnalogFrontEnd(config=AnalogConfig(tick_ms=10.03))


def test_band_must_fit_below_nyquist():
    with pytest.raises(ConfigError, match="analog.f_high_hz"):
        AnalogFrontEnd(config=AnalogConfig(f_high_hz=4000.0), sample_rate=8000)


def test_process_rejects_wrong_shapes_and_dtypes():
    fe = AnalogFrontEnd(config=AnalogConfig())
    with pytest.raises(TypeError):
        fe.process(np.zeros((2, 160), np.int16))
    with pytest.raises(TypeError):
        fe.process(np.zeros(160, np.int32))
