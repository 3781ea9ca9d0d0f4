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

from bridge import jack
from bridge.bench import cli, live

REPO = Path(__file__).resolve().parents[1]
TINY = ["--notes", "5", "--phrases", "2", "--load-seconds", "1", "--stop-trials", "1"]


def run_bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bridge.bench.live", *args], cwd=REPO,
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
    if not jack.responds(live.SERVER_NAME):  # (unless someone else runs one of that name)
        assert jack.registered_pid(live.SERVER_NAME) is None, "the bench leaked its JACK slot"


@pytest.mark.jack
def test_bench_on_a_running_server_with_a_table(jack_server):
    """``--server NAME`` uses that server (here the test session's) and never stops it."""
    done = run_bench("--server", jack_server, "--rows", "floor,thru", "--notes", "3", "-q")
    assert done.returncode == 0, done.stderr
    assert "floor" in done.stdout and "thru" in done.stdout and "x floor p50" in done.stdout
    assert jack.responds(jack_server)


@pytest.mark.jack
def test_interrupted_bench_stops_everything(jack_server):
    """SIGINT (Ctrl-C) in the middle of a row: exit 130, no bridge, echo or jackd left."""
    proc = subprocess.Popen([sys.executable, "-m", "bridge.bench.live", "--rows", "thru,load",
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
    if not jack.responds(live.SERVER_NAME):
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
