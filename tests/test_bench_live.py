"""Smoke test of ``midi-bridge bench live``: tiny counts, the JSON shape, clean shutdown.

A benchmark is not a timed test: no latency target is asserted here, only that the
figures exist, are positive and finite, and that the benchmark leaves nothing running
(its bridges, its echo client, its JACK server and the server's registry slot).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from midi_bridge.bench import jackd
from midi_bridge.runtime import jack
from midi_bridge.bench import cli, live

REPO = Path(__file__).resolve().parents[1]
TINY = ["--notes", "5", "--phrases", "2", "--load-seconds", "1", "--stop-trials", "1"]


def run_bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "midi_bridge.bench.live", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def children_of_bench(pid: int) -> list[str]:
    """Command lines of live processes started for the bench process ``pid`` (by client name)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"mb-bench-bridge-{pid}-" in cmd or f"mb-bench-echo-{pid}-" in cmd:
            found.append(cmd)
    return found


def finite_positive(row: dict, *keys: str) -> None:
    for key in keys:
        value = row[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, row)


@pytest.mark.jack
def test_bench_live_json_shape(jack_server):
    """The bench on its own server (``midi-bridge-bench``), all rows, tiny counts."""
    done = run_bench("--json", "-q", *TINY)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for row in ("floor", "thru", "accompany", "continue"):
        assert {"p50_ms", "p99_ms", "max_ms"} <= set(result[row]), result[row]
    for row in ("floor", "thru", "accompany", "continue"):
        assert "ratio_p50" in result[row], result[row]
    assert result["floor"]["ratio_p50"] == 1.0
    assert {"p99_ms", "max_ms"} <= set(result["grid"])
    assert {"lost_input", "dropped_output"} <= set(result["load"])
    assert result["stop"]["stuck"] == 0 and result["stop"]["n"] == 1, result["stop"]
    finite_positive(result["stop"], "max_ms")
    assert {"cpu", "cores", "python", "jack_period", "jack_rate"} <= set(result["machine"])
    finite_positive(result["floor"], "p50_ms", "p99_ms", "max_ms")
    finite_positive(result["thru"], "p50_ms", "p99_ms", "max_ms", "ratio_p50")
    assert result["floor"]["n"] == result["thru"]["n"] == 5
    assert result["machine"]["jack_period"] == 256 and result["machine"]["jack_rate"] == 48000
    load = result["load"]
    assert isinstance(load["lost_input"], int) and isinstance(load["dropped_output"], int)
    assert load["sent"] == 2 * 200  # 200 notes/s for 1 s, each a note-on and a note-off
    assert load["bridge_events_in"] > 0
    if not jackd.responds(live.SERVER_NAME):  # (unless someone else runs one of that name)
        assert jack.registered_pid(live.SERVER_NAME) is None, "the bench leaked its JACK slot"


@pytest.mark.jack
def test_bench_on_a_running_server_with_a_table(jack_server):
    """``--server NAME`` uses that server (here the test session's) and never stops it."""
    done = run_bench("--server", jack_server, "--rows", "floor,thru", "--notes", "3", "-q")
    assert done.returncode == 0, done.stderr
    assert "floor" in done.stdout and "thru" in done.stdout and "x floor p50" in done.stdout
    assert jackd.responds(jack_server)


@pytest.mark.jack
def test_interrupted_bench_stops_everything(jack_server):
    """SIGINT (Ctrl-C) in the middle of a row: exit 130, no bridge, echo or jackd left."""
    proc = subprocess.Popen([sys.executable, "-m", "midi_bridge.bench.live", "--rows", "thru,load",
                             "--load-seconds", "30"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if line.startswith("bench: load"):
                break
        time.sleep(1.0)  # the load row's bridge is up and being played
        assert children_of_bench(proc.pid), "the load row's bridge should be running"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert children_of_bench(proc.pid) == []
    if not jackd.responds(live.SERVER_NAME):
        assert jack.registered_pid(live.SERVER_NAME) is None, "the bench leaked its JACK slot"


def test_register_adds_live_to_a_bench_command():
    parser = argparse.ArgumentParser(prog="midi-bridge")
    bench = parser.add_subparsers(dest="command").add_parser("bench")
    cli.register(bench.add_subparsers(dest="bench_command"))
    args = parser.parse_args(["bench", "live", "--json", "--period", "128", "--notes", "7",
                              "--load-seconds", "2", "--generator", "markov",
                              "--accompany-generator", "harmony", "--rows", "floor,grid"])
    assert args.func is cli.cmd_live
    opts = cli.options(args)
    assert (opts.period, opts.notes, opts.load_seconds, opts.rows) == (128, 7, 2.0, ("floor", "grid"))
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "live", "--rows", "floor,nope"])


def test_summary_and_table_without_jack():
    s = live.summary([3.0, 1.0, 2.0, 4.0])
    assert s == {"p50_ms": 2.5, "p99_ms": 3.97, "max_ms": 4.0, "n": 4}
    assert live.summary([])["p50_ms"] is None
    result = {"machine": live.machine_info(256, 48000),
              "floor": {**live.summary([8.0, 9.0]), "lost": 0},
              "thru": {**live.summary([8.0, 9.5]), "lost": 0, "ratio_p50": 1.03},
              "grid": {**live.EMPTY["grid"], "error": "boom\nmore"},
              "load": {"lost_input": 0, "dropped_output": 0, "sent": 400, "bridge_events_in": 400,
                       "received": 400, "notes_per_s": 200.0, "seconds": 1.0,
                       **live.summary([8.0])}}
    result["targets"] = live.targets(result)
    assert result["targets"]["thru"]["met"] is True
    assert result["targets"]["load"]["met"] is True
    assert result["targets"]["grid"]["met"] is None
    table = cli.format_table(result)
    assert "grid       ERROR: boom" in table and "1.03x" in table and "lost_input 0" in table
    assert result["machine"]["cores"] == os.cpu_count()


# -- the computations, without JACK -------------------------------------------------------

def _targets(**rows) -> dict:
    return live.targets({"machine": {"jack_period_ms": 5.333}, **rows})


def test_unanswered_trials_fail_the_latency_targets():
    """A played note that got no answer is slower than any limit: the p99 over the answered
    ones alone must not say the target is met (nor n/a when nothing answered)."""
    floor = {**live.summary([8.0, 9.0, 10.0]), "lost": 0}
    fast = live.summary([8.0, 8.5, 9.0])
    t = _targets(floor=floor, thru={**fast, "lost": 1, "ratio_p50": 1.0},
                 accompany={**fast, "lost": 2}, **{"continue": {**fast, "lost": 0}})
    assert t["continue"]["met"] is True
    assert t["accompany"]["met"] is False and t["accompany"]["lost"] == 2
    assert t["thru"]["met"] is False and t["thru"]["lost"] == 1
    nothing = _targets(floor=floor, accompany={**live.summary([]), "lost": 5})
    assert nothing["accompany"]["met"] is False
    assert "2 unanswered" in cli.format_table({"machine": live.machine_info(256, 48000), "targets": t})


def test_an_extra_output_message_does_not_hide_a_lost_input():
    """Thru ends a retriggered note before the new note-on: a note-off lost on the way in
    comes back as one extra note-off out (dropped_output -1), which must not cancel the loss."""
    load = {"lost_input": 1, "dropped_output": -1, "sent": 400, "bridge_events_in": 399, "received": 400}
    t = _targets(load=load)
    assert t["load"]["met"] is False and t["load"]["value"] == 1
    assert _targets(load={**load, "lost_input": 0, "dropped_output": 0})["load"]["met"] is True


def _on(t_ns: int, pitch: int, velocity: int):
    from midi_bridge.bench.driver import Msg
    return Msg(t_ns, bytes([0x90, pitch, velocity]))


def test_load_latencies_survive_a_lost_note():
    """One lost note-on must not shift the matching of every later note of that pitch
    (each would read one pitch cycle, 300 ms at 200 notes/s, too late)."""
    ms = 1_000_000
    sent = [((36, 100), 0), ((37, 100), 5 * ms), ((36, 100), 300 * ms), ((37, 100), 305 * ms)]
    got = [_on(313 * ms, 37, 100), _on(308 * ms, 36, 100)]  # the first two were lost
    assert sorted(live.match_latencies(sent, got)) == [8.0, 8.0]


def test_load_latencies_through_a_stall_longer_than_a_pitch_cycle():
    """Keys are (pitch, velocity): a note held up past the next note of its pitch still
    matches its own send."""
    ms = 1_000_000
    sent = [((36, 1), 0), ((36, 2), 300 * ms)]
    got = [_on(350 * ms, 36, 1), _on(351 * ms, 36, 2)]
    assert live.match_latencies(sent, got) == [350.0, 51.0]


class _FakeDevice:
    """A device on a route whose output connection takes effect late: the first message it
    sends is lost.  ``accompany``: a note-on on PLAYER is answered by a note-on on OUT
    8 ms later (and its note-off by a note-off); ``continue``: every third note-off (a
    phrase's end) by a note-on + note-off on OUT after ``silence_ms``."""

    def __init__(self, mode: str, silence_ms: float = 200.0) -> None:
        self.mode, self.silence_ns = mode, int(silence_ms * 1e6)
        self.received: list = []
        self.out_up = False
        self.offs = 0

    def _emit(self, t_ns: int, data: list[int]) -> None:
        from midi_bridge.bench.driver import Msg
        if not self.out_up:
            self.out_up = True
            return
        self.received.append(Msg(t_ns, bytes(data)))

    def send(self, data) -> int:
        t = time.perf_counter_ns()
        kind, pitch = data[0] & 0xF0, data[1]
        if self.mode == "accompany":
            if kind == 0x90 and data[2] > 0:
                self._emit(t + 8_000_000, [0x90 | live.OUT, pitch - 12, 80])
            elif kind == 0x80:
                self._emit(t + 8_000_000, [0x80 | live.OUT, pitch - 12, 0])
        elif kind == 0x80:
            self.offs += 1
            if self.offs % 3 == 0:
                self._emit(t + self.silence_ns + 5_000_000, [0x90 | live.OUT, 72, 80])
                self._emit(t + self.silence_ns + 90_000_000, [0x80 | live.OUT, 72, 0])
        return t

    def mark(self) -> int:
        return len(self.received)

    def since(self, start: int) -> list:
        return self.received[start:]

    def wait(self, start, predicate, timeout, poll=0.05):
        return predicate(self.received[start:]) or None


@pytest.mark.parametrize("mode", ["accompany", "continue"])
def test_a_late_route_is_not_counted_as_a_lost_answer(monkeypatch, mode):
    """The first answer lost to a connection that is not up yet is the benchmark's, not the
    bridge's: the rows warm the route up (as floor and thru do) before measuring."""
    bench = live.LiveBench(live.Options(notes=6, phrases=3, silence_ms=50.0))
    device = _FakeDevice(mode, silence_ms=50.0)
    monkeypatch.setattr(bench, "_bridge", lambda *a, **k: None)
    monkeypatch.setattr(bench, "_driver", lambda *a, **k: device)
    monkeypatch.setattr(bench, "_pause", lambda: None)
    try:
        row = bench.row_accompany() if mode == "accompany" else bench.row_continue()
    finally:
        bench.workdir.rmdir()
    assert row["lost"] == 0, row
    assert row["n"] == (6 if mode == "accompany" else 3), row


def test_a_failed_load_row_still_gives_the_other_figures():
    """A load row that failed reports its keys as null: the targets must say n/a, not raise
    (which lost every figure of the run after minutes of measuring)."""
    result = {"machine": live.machine_info(256, 48000), "floor": {**live.summary([8.0]), "lost": 0},
              "load": {**live.EMPTY["load"], "error": "RuntimeError: the bridge logged no 'stopped:' line"}}
    result["targets"] = live.targets(result)
    assert result["targets"]["load"]["met"] is None
    assert "load       ERROR: RuntimeError" in cli.format_table(result)
