"""``midi-bridge bench latency``: reading jackd2's tester, combining rounds, and one short real
run (shape only: the figures come from the benchmark, never from timed tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from midi_bridge.bench.latency import combine, parse

REPO = Path(__file__).resolve().parents[1]

TESTER = """Waiting for connections ...
Reported out-port latency: 0.00-0.00 ms (0-0 frames)
Average latency: 2.64 ms (126.90 frames)
Lowest latency: 0.02 ms (1 frames)
Highest latency: 5.33 ms (256 frames)
Peak MIDI jitter: 5.31 ms (255 frames)
Average MIDI jitter: 1.31 ms (62.60 frames)

Latency Plot:
0.0 - 0.1 ms: 12

Messages sent: 500
Messages received: 499
Unexpected messages received: 249
"""


def test_the_testers_summary_is_read_as_numbers():
    row = parse(TESTER)
    assert row == {"average_ms": 2.64, "lowest_ms": 0.02, "highest_ms": 5.33, "jitter_ms": 1.31,
                   "sent": 500, "received": 499, "unexpected": 249, "xruns": False}


def test_a_timed_out_tester_measured_nothing_and_lost_what_it_sent():
    row = parse("jack_midi_latency_test: timeout\nMessages sent: 3\nMessages received: 0\n")
    assert "average_ms" not in row
    assert combine([row], 500)["lost"] == 3


def test_rounds_combine_into_the_mean_of_averages_and_the_extremes():
    a, b = parse(TESTER), parse(TESTER.replace("2.64", "2.44").replace("5.33", "5.50"))
    c = combine([a, b, {"unexpected": 0}], 500)  # the third round printed nothing at all
    assert c["average_ms"] == pytest.approx(2.54)
    assert (c["lowest_ms"], c["highest_ms"]) == (0.02, 5.50)
    assert c["sent"] == 1500 and c["lost"] == 1 + 1 + 500
    assert c["unexpected"] == 498


@pytest.mark.jack
def test_a_short_latency_run_measures_the_echo_and_the_bridge(jack_server):
    done = subprocess.run([sys.executable, "-m", "midi_bridge", "bench", "latency", "--json", "-q",
                           "--rounds", "1", "--samples", "50", "--backends", "jack"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert set(result["subjects"]) == {"echo", "bridge jack"}
    for name, row in result["subjects"].items():
        assert row["sent"] == 50 and row["lost"] == 0, (name, row)
        assert row["average_ms"] is not None and row["average_ms"] > 0, (name, row)
    assert result["subjects"]["bridge jack"]["ratio_to_echo"] > 0
    assert result["met"] is (done.returncode == 0)
