"""``midi-bridge bench witness``: the grid arithmetic on made-up dumps, and one short real run
(shape only: figures come from the benchmark, never from timed tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from midi_bridge.bench.witness import grid_errors

REPO = Path(__file__).resolve().parents[1]
RATE = 48000
TICK = 1200  # frames per clock at 100 bpm, 48 kHz


def _clock(n: int = 96, start: int = 5000, wobble=lambda k: 0) -> list[tuple[int, bytes]]:
    return [(start + k * TICK + wobble(k), b"\xf8") for k in range(n)]


def test_notes_on_the_grid_have_no_error_and_offsets_are_signed_ms():
    events = _clock() + [(5000 + 6 * TICK * 3, b"\x91\x40\x50"),           # on a 1/16
                         (5000 + 6 * TICK * 5 - 240, b"\x91\x41\x50"),     # 5 ms early
                         (5000 + 6 * TICK * 7 + 48, b"\x91\x42\x50"),      # 1 ms late
                         (5000 + 6 * TICK * 8, b"\x91\x43\x00"),           # velocity 0: an end
                         (5000 + 6 * TICK * 9 + 96, b"\x90\x44\x50")]      # the player's channel
    assert [round(e, 6) for e in grid_errors(sorted(events), RATE)] == [0.0, -5.0, 1.0]


def test_the_grid_is_the_clocks_line_not_its_jitter():
    jitter = [((k * 7919) % 121) - 60 for k in range(96)]  # +-60 frames, 5 % of a tick
    events = _clock(wobble=lambda k: jitter[k]) + [(5000 + 6 * TICK * 4, b"\x91\x40\x50")]
    (err,) = grid_errors(sorted(events), RATE)
    assert abs(err) < 0.2  # the line through jittered ticks, not the nearest jittered tick


def test_too_short_a_clock_measures_nothing():
    assert grid_errors(_clock(n=10) + [(5000, b"\x91\x40\x50")], RATE) == []


@pytest.mark.jack
def test_a_short_witness_run_reports_every_case(jack_server):
    env = {**os.environ}
    done = subprocess.run([sys.executable, "-m", "midi_bridge", "bench", "witness", "--json", "-q",
                           "--periods", "256", "--jitter", "0", "--phrases", "2"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    result = json.loads(done.stdout)
    (row,) = result["rows"]
    assert row["period"] == 256 and row["jitter_pct"] == 0.0
    assert row["n"] >= 2, "the bridge's answers never reached jack_midi_dump"
    assert set(row) >= {"p50_ms", "p99_ms", "max_ms", "mean_ms", "within_1ms", "source_xruns", "backend"}
    assert result["met"] is (done.returncode == 0)
