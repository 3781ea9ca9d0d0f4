"""``midi-bridge bench witness``: where the answers land on the DAW's grid, seen from outside.

A real ``midi-bridge run`` (continue mode, ``--quantize 1/16``) follows a MIDI clock on a
private JACK server.  The clock and the player's phrases come from a frame-accurate JACK
client of this module (the clock at 24 ppqn, optionally with jitter: each tick moved off
its nominal time by a uniform random +-J % of the tick interval, independently, so the
clock keeps its tempo; jackd2 1.9.21 as packaged by Debian has no ``jack_midi_clock``,
whose ``-J`` jitter accumulates from tick to tick instead);
jackd2's own ``jack_midi_dump -a`` records the clock and the bridge's output on one input,
every event with its frame.  The grid is the least-squares line through the dump's clock
frames (the unjittered clock); an answer note-on's error is its frame minus the nearest
1/16 of that line, in ms.  Nothing in the figures is stamped by the bridge or by us.
"""

from __future__ import annotations

import contextlib
import random
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from midi_bridge.runtime import jack
from midi_bridge.runtime.jackmidi import JackMidi

from . import jackd
from .driver import Child, bridge_cmd, unique_name
from .report import summary

SERVER_NAME = "mb-bench-witness"
PLAYER, OUT = 0, 1
_DUMP = re.compile(r"^\s*(\d+):\s+((?:[0-9a-f]{2} ?)+)", re.M)


class Source:
    """The DAW's side: Start + a 24-ppqn clock and the player's phrases, frame-accurately."""

    def __init__(self, server: str, bpm: float, jitter_pct: float, seed: int) -> None:
        self.jm = JackMidi(unique_name("mb-wit-src"), [], ["clock", "notes"], lambda *a: None, server=server)
        self.tick_ns = 60e9 / (bpm * 24)
        self.jitter = jitter_pct / 100.0
        self.rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.origin_ns = 0

    def start(self, lead_s: float = 0.3) -> None:
        self.origin_ns = self.jm.now_ns() + int(lead_s * 1e9)
        self.jm.send(0, (0xFA,), self.origin_ns - int(self.tick_ns / 2))
        self._thread = threading.Thread(target=self._run, name="witness-clock", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        k = 0
        while not self._stop.is_set():
            horizon = self.jm.now_ns() + 200_000_000  # keep the ring 200 ms ahead
            while self.origin_ns + k * self.tick_ns < horizon:
                wobble = self.rng.uniform(-self.jitter, self.jitter) * self.tick_ns
                self.jm.send(0, (0xF8,), int(self.origin_ns + k * self.tick_ns + wobble))
                k += 1
            self._stop.wait(0.05)

    def beat_ns(self, beat: float) -> int:
        return int(self.origin_ns + beat * 24 * self.tick_ns)

    def phrase(self, beat: float, notes: int = 4, step: float = 0.5) -> float:
        """Schedule ``notes`` eighth notes from ``beat``; returns the beat after the last."""
        for i in range(notes):
            on = self.beat_ns(beat + i * step)
            self.jm.send(1, (0x90 | PLAYER, 60 + (2 * i) % 12, 90), on)
            self.jm.send(1, (0x80 | PLAYER, 60 + (2 * i) % 12, 0), on + int(step * 0.6 * 24 * self.tick_ns))
        return beat + notes * step

    def close(self) -> None:
        self.jm.send(0, (0xFC,))
        time.sleep(0.05)
        self._stop.set()
        if self._thread:
            self._thread.join(2.0)
        self.jm.close()


def grid_errors(events: list[tuple[int, bytes]], rate: int, channel: int = OUT) -> list[float]:
    """Signed ms from each note-on on ``channel`` to the nearest 1/16 of the clock's line."""
    ticks = [f for f, m in events if m[:1] == b"\xf8"]
    if len(ticks) < 48:
        return []
    n = len(ticks)
    mean_k, mean_f = (n - 1) / 2, sum(ticks) / n
    slope = (sum((k - mean_k) * (f - mean_f) for k, f in enumerate(ticks))
             / sum((k - mean_k) ** 2 for k in range(n)))
    f0, sixteenth = mean_f - slope * mean_k, 6 * slope
    out = []
    for f, m in events:
        if len(m) == 3 and m[0] == 0x90 | channel and m[2] > 0:
            pos = (f - f0) / sixteenth
            out.append((f - (f0 + round(pos) * sixteenth)) / rate * 1e3)
    return out


def run_case(server: str, period: int, rate: int, jitter_pct: float, phrases: int, bpm: float,
             generator: str, seed: int, workdir: Path, backend: str = "jack") -> dict[str, Any]:
    config = {"engine": {"output_channel": OUT + 1, "bpm": bpm}, "thru": {"enabled": False},
              "clock": {"follow": True}, "logging": {"level": "info"},
              "phrase": {"silence_ms": 250, "min_notes": 2},
              "continuation": {"max_notes": 8, "max_beats": 2.0, "start_on": "beat"}}
    path = workdir / f"witness-{period}-{jitter_pct}-{backend}.yaml"
    path.write_text(yaml.safe_dump(config))
    client = unique_name("mb-wit-bridge")
    with contextlib.ExitStack() as stack:
        bridge = Child(bridge_cmd(client, str(path), "--mode", "continue", "--generator", generator,
                                  "--quantize", "1/16", "--backend", backend),
                       jack.client_env(server), "ready:", "bridge")
        stack.callback(bridge.stop)
        bridge.wait_ready()
        dump_name = unique_name("mb-wit-dump")
        dump = subprocess.Popen(["jack_midi_dump", "-a", dump_name], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=jack.client_env(server))
        stack.callback(lambda: dump.poll() is None and dump.kill())
        src = Source(server, bpm, jitter_pct, seed)
        stack.callback(src.close)
        ports = wait_ports(lambda: [x.name for x in src.jm.client.get_ports(is_midi=True)],
                            [f"{dump_name}:input", "midi-bridge in", "midi-bridge out"], client)
        for a, b in ((f"{src.jm.name}:clock", ports["midi-bridge in"]),
                     (f"{src.jm.name}:notes", ports["midi-bridge in"]),
                     (f"{src.jm.name}:clock", f"{dump_name}:input"),
                     (ports["midi-bridge out"], f"{dump_name}:input")):
            src.jm.client.connect(a, b)
        time.sleep(0.3)
        src.start()
        beat = 4.0                                        # a bar of clock first
        for _ in range(phrases):
            end = src.phrase(beat)
            beat = float(int(end) + 4)                   # room for a 2-beat answer
        time.sleep((src.beat_ns(beat + 1) - src.jm.now_ns()) / 1e9)
        xruns = src.jm.xruns
        src.close()
        dump.terminate()
        events = [(int(f), bytes.fromhex(b)) for f, b in _DUMP.findall(dump.communicate(timeout=10)[0])]
    errors = grid_errors(events, rate)
    row = summary([abs(e) for e in errors])
    return {**row, "mean_ms": round(sum(errors) / len(errors), 3) if errors else None,
            "period": period, "jitter_pct": jitter_pct, "phrases": phrases, "backend": backend,
            "within_1ms": sum(abs(e) <= 1.0 for e in errors), "source_xruns": xruns}


def jack_lsp(server: str) -> list[str]:
    """Every port of ``server`` (jackd2's ``jack_lsp``)."""
    return subprocess.run(["jack_lsp"], capture_output=True, text=True, env=jack.client_env(server),
                          timeout=10).stdout.splitlines()


def wait_ports(listing, wanted: list[str], client: str, timeout: float = 10.0) -> dict[str, str]:
    """Full names: an exact name, or the bridge's port (``client...:name``); ``listing()``
    gives the ports there are now."""
    deadline = time.monotonic() + timeout
    while True:
        names = listing()
        found = {}
        for w in wanted:
            hit = [n for n in names if n == w or (n.startswith(client) and n.endswith(":" + w))]
            if hit:
                found[w] = hit[0]
        if len(found) == len(wanted) or time.monotonic() > deadline:
            missing = set(wanted) - set(found)
            if missing:
                raise RuntimeError(f"JACK ports not found: {sorted(missing)}")
            return found
        time.sleep(0.05)


def idle_xruns(server: str, seconds: float) -> int:
    """xruns the server reports while nothing but this counting client runs."""
    jm = JackMidi(unique_name("mb-wit-idle"), [], [], lambda *a: None, server=server)
    try:
        time.sleep(seconds)
        return jm.xruns
    finally:
        jm.close()


def xrun_case(server: str, period: int, rate: int, seconds: float, bpm: float, generator: str,
              seed: int, workdir: Path, backend: str = "jack") -> dict[str, Any]:
    """xruns over ``seconds`` with the server idle, then as long with the bridge jamming
    (a clock and a phrase every 6 beats, answered), counted by a JACK client of ours."""
    idle = idle_xruns(server, seconds)
    phrases = max(1, int(seconds / (6 * 60 / bpm)))
    jam = run_case(server, period, rate, 0.0, phrases, bpm, generator, seed, workdir, backend)
    return {"period": period, "seconds": round(seconds, 1), "idle": idle,
            "jamming": jam["source_xruns"], "jamming_notes": jam["n"], "backend": backend,
            "met": jam["source_xruns"] <= idle}


def run(periods: list[int], jitters: list[float], phrases: int = 8, bpm: float = 100.0,
        generator: str = "markov", rate: int = 48000, seed: int = 1, progress=lambda s: None,
        backends: tuple[str, ...] = ("jack",), xrun_seconds: float = 0.0, realtime: bool = True) -> dict:
    if shutil.which("jack_midi_dump") is None:
        raise jackd.JackError("jack_midi_dump (jackd2's example clients) is missing")
    workdir = Path(tempfile.mkdtemp(prefix="mb-witness-"))
    rows: list[dict] = []
    xruns = None
    try:
        if xrun_seconds:
            with jackd.JackServer(SERVER_NAME, rate=rate, period=periods[0], realtime=realtime):
                progress(f"xruns: {xrun_seconds:g} s idle, then {xrun_seconds:g} s jamming ...")
                xruns = xrun_case(SERVER_NAME, periods[0], rate, xrun_seconds, bpm, generator, seed,
                                  workdir, backends[0])
                progress(f"  {xruns}")
        for period in periods:
            with jackd.JackServer(SERVER_NAME, rate=rate, period=period, realtime=realtime):
                for backend in backends:
                    for jitter in jitters:
                        progress(f"{backend}, period {period}, jitter {jitter} % ...")
                        rows.append(run_case(SERVER_NAME, period, rate, jitter, phrases, bpm, generator,
                                             seed, workdir, backend))
                        progress(f"  {rows[-1]}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    met = all(r["max_ms"] is not None and r["max_ms"] <= 1.0 for r in rows if r["backend"] == "jack")
    return {"bpm": bpm, "rate": rate, "generator": generator, "realtime": realtime, "rows": rows, "xruns": xruns,
            "target_ms": 1.0, "met": met and (xruns is None or xruns["met"])}
