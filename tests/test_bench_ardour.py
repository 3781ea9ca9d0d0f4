"""``midi-bridge bench ardour``: the grid arithmetic and the Lua output parsing (always), and
one short real run in Ardour (shape only, skipped where Ardour is not installed: a
benchmark for machines with Ardour, not for CI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from midi_bridge.bench.ardour import (TICKS_PER_BEAT, agreement, faithful, grid_errors, lua_tool, parse_notes,
                                      phrases_spec)
from midi_bridge.bench.jackd import jackd_path

REPO = Path(__file__).resolve().parents[1]
SIXTEENTH = TICKS_PER_BEAT // 4  # 480 ticks


def test_positions_on_the_grid_have_no_error_and_offsets_are_signed_ms():
    # 120 bpm: a beat is 500 ms, a tick 500/1920 ms; 1/16 = 125 ms = 480 ticks
    ticks = [0, 4 * TICKS_PER_BEAT, 5 * SIXTEENTH - 96, 7 * SIXTEENTH + 192, 9 * SIXTEENTH + 240]
    errors = grid_errors(ticks, bpm=120.0)
    assert [round(e, 6) for e in errors[:4]] == [0.0, 0.0, -25.0, 50.0]
    assert abs(errors[4]) == pytest.approx(62.5)  # half way: either neighbour, same size


def test_the_error_scales_with_the_tempo():
    assert grid_errors([SIXTEENTH + 19], bpm=60.0) == pytest.approx([19 * 1000 / 1920])
    assert grid_errors([SIXTEENTH - 19], bpm=100.0) == pytest.approx([-19 * 600 / 1920])


def test_notes_are_parsed_per_track_in_timeline_order():
    out = "\n".join(["LOADED", "ROLL", "XRUNS 0", "TAKE answers b1234",
                     "NOTE player 0 60 90 4:0", "NOTE answers 1 62 80 9:1903",
                     "NOTE answers 1 64 80 8:475", "lua/audioengine queue call-slot ...",
                     "NOTE answers 0 65 80 -1:1900", "DONE"])
    notes = parse_notes(out)
    assert notes["player"] == [(0, 60, 90, 4 * 1920)]
    assert notes["answers"] == [(0, 65, 80, -1920 + 1900), (1, 64, 80, 8 * 1920 + 475),
                                (1, 62, 80, 9 * 1920 + 1903)]
    assert grid_errors([8 * 1920 + 475], bpm=120.0) == pytest.approx([-5 * 500 / 1920])


def test_the_phrases_leave_room_for_an_answer():
    spec, end = phrases_spec(2)
    notes = [tuple(float(x) for x in part.split(",")) for part in spec.split(";")]
    assert len(notes) == 8 and notes[0] == (4.0, 60, 90, 0.3)
    assert [n[0] for n in notes] == [4.0, 4.5, 5.0, 5.5, 10.0, 10.5, 11.0, 11.5]
    assert end == 16.0


def test_take_minus_witness_is_a_median_and_a_spread_note_for_note():
    assert agreement([-5.0, -4.2, -6.0], [-5.1, -4.0, -6.0]) == pytest.approx(
        {"median_ms": 0.0, "spread_ms": 0.2})
    assert agreement([5.2, 5.4, 5.0], [0.0, 0.0, 0.0]) == pytest.approx(  # one period late
        {"median_ms": 5.2, "spread_ms": 0.2})
    assert agreement([-5.0], [-5.1, -4.0]) == {"median_ms": None, "spread_ms": None}
    assert agreement([], []) == {"median_ms": None, "spread_ms": None}


@pytest.mark.skipif(lua_tool() is None, reason="Ardour is not installed (apt-get install ardour)")
@pytest.mark.skipif(jackd_path() is None, reason="jackd is not installed")
def test_a_short_run_in_ardour_reports_every_period():
    done = subprocess.run([sys.executable, "-m", "midi_bridge.bench.ardour", "--json", "-q",
                           "--periods", "256", "--phrases", "2", "--retakes", "0", "--no-realtime"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["grid"] == "1/16" and result["alignment"] == "capture time"
    (row,) = result["rows"]
    assert row["period"] == 256 and row["player_notes"] == row["player_notes_sent"] == 8
    assert set(row) >= {"p50_ms", "p99_ms", "max_ms", "mean_ms", "n", "ardour_xruns", "errors_ms",
                        "witness", "take_vs_witness", "faithful", "takes"}
    assert row["takes"] == 1 and result["realtime"] is False and result["backend"] == "jack"
    assert row["n"] >= 2, "Ardour recorded none of the bridge's answers"
    assert len(row["errors_ms"]) == row["n"]


def test_a_take_is_faithful_when_ardours_timeline_stays_in_step_with_the_frames():
    row = {"n": 3, "witness": {"n": 3}, "take_vs_witness": {"median_ms": 5.2, "spread_ms": 0.13},
           "ardour_xruns": 4}
    assert faithful(row)                                       # a constant period: the graph
    assert not faithful({**row, "take_vs_witness": {"median_ms": 9.0, "spread_ms": 19.0}})  # xruns
    assert not faithful({**row, "take_vs_witness": {"median_ms": None, "spread_ms": None}})
    assert not faithful({**row, "n": 0})
    assert faithful({**row, "witness": None, "ardour_xruns": 0})   # no jack_midi_dump: no xruns
    assert not faithful({**row, "witness": None})
