"""`make compare`'s model of the gated node: where the KWS runs (no competitor packages needed)."""

from __future__ import annotations

import pytest

from cloud.compare import PREROLL_S, runs_with_preroll


def test_each_open_interval_gets_its_preroll():
    assert runs_with_preroll([(5.0, 6.0), (20.0, 21.5)]) == [(5.0 - PREROLL_S, 6.0), (20.0 - PREROLL_S, 21.5)]


def test_preroll_stops_at_the_start_of_the_audio():
    assert runs_with_preroll([(0.3, 1.0)]) == [(0.0, 1.0)]


@pytest.mark.parametrize("gap", [0.0, 0.2, PREROLL_S])
def test_a_gate_that_reopens_within_the_preroll_continues_the_run(gap):
    # Restarting would feed the KWS audio it has already heard and detect the same phrase twice.
    assert runs_with_preroll([(5.0, 6.0), (6.0 + gap, 7.0)]) == [(5.0 - PREROLL_S, 7.0)]


def test_a_later_reopening_starts_a_new_run():
    runs = runs_with_preroll([(5.0, 6.0), (6.0 + PREROLL_S + 0.01, 8.0)])
    assert len(runs) == 2 and runs[1][0] > runs[0][1]


def test_runs_never_overlap_so_awake_time_is_not_counted_twice():
    runs = runs_with_preroll([(1.0, 2.0), (2.5, 2.6), (2.7, 4.0), (10.0, 11.0)])
    assert all(a < b for a, b in runs)
    assert all(runs[i][1] < runs[i + 1][0] for i in range(len(runs) - 1))
