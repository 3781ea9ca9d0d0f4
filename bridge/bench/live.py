"""``midi-bridge bench live``: end-to-end latency through a private JACK server.

Rows (each measured by an in-process python-rtmidi driver, stamped with perf_counter_ns):

* ``floor``: a bare python-rtmidi echo client (:mod:`midi_bridge.bench.echo`): note-on sent ->
  echoed note-on received.
* ``thru``: the same round trip through ``midi-bridge run --mode thru``.
* ``accompany``: note-on sent -> the first accompaniment note-on received.
* ``continue``: phrase end (the last note-off's send time + ``phrase.silence_ms``) -> the
  answer's first note-on received, without a clock.
* ``grid``: the driver sends Start and 0xF8 at 24 ppqn; the bridge answers with
  ``--quantize 1/16``; |error| of each answer note-on's arrival against the nearest 1/16
  of the driver's clock, counted from the send time of the first clock after Start.
* ``load``: thru, ``load_rate`` notes/s (note-on + note-off) for ``load_seconds``;
  ``lost_input`` = sent - what the bridge logs as ``events_in`` at exit,
  ``dropped_output`` = that ``events_in`` (all of it should pass through) - received.

Sends are paced with a random pause of a few ms to two JACK periods, so they fall at
every phase of the JACK cycle.  ``ratio_p50`` is a row's p50 over the floor's p50.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from midi_bridge.runtime import jack

from . import jackd
from .driver import (Child, ClockSender, Driver, all_notes_ended, answer_over, bridge_cmd,
                     echo_cmd, first_note_on, match_latencies, parse_stopped, sleep_until,
                     unique_name)
from .report import machine_info, percentile, summary, targets  # noqa: F401 - re-exported

SERVER_NAME = "midi-bridge-bench"
ROWS = ("floor", "thru", "accompany", "continue", "grid", "load", "stop")
PLAYER, OUT = 0, 1  # MIDI channels (0-15): the player's, the bridge's generated notes
BRIDGE_PORTS = ("midi-bridge in", "midi-bridge out")
_LATENCY = {"p50_ms": None, "p99_ms": None, "max_ms": None, "n": 0}
#: What a row that failed reports (with "error"): the stable keys, all null.
EMPTY = {"floor": _LATENCY, "thru": _LATENCY, "accompany": _LATENCY, "continue": _LATENCY,
         "grid": _LATENCY, "load": {"lost_input": None, "dropped_output": None},
         "stop": {**_LATENCY, "stuck": None}}


@dataclass
class Options:
    period: int = 256
    rate: int = 48000
    notes: int = 200            # round trips per floor/thru/accompany row
    phrases: int = 40           # phrases for the continue and grid rows
    load_seconds: float = 30.0
    load_rate: float = 200.0    # notes per second (each a note-on and a note-off)
    generator: str = "rnn"      # continue and grid rows (the default trained model)
    accompany_generator: str = "rnn"
    silence_ms: float = 200.0
    bpm: float = 120.0          # the driver's clock for the grid row
    offset_ms: float | str = "auto"  # the bridge's output.offset_ms in the grid row
    server: str | None = None   # use this running server instead of starting one
    rows: tuple[str, ...] = ROWS
    stop_trials: int = 5        # bridges stopped with SIGTERM while notes sound (stop row)
    seed: int = 1
    progress: Callable[[str], None] = field(default=lambda text: None)


class LiveBench:
    def __init__(self, opts: Options) -> None:
        self.o = opts
        self.rng = random.Random(opts.seed)
        self.server = opts.server or SERVER_NAME
        self.period_s = opts.period / opts.rate
        self.workdir = Path(tempfile.mkdtemp(prefix="mb-bench-"))
        self._configs = 0

    # -- children -----------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        return jack.client_env(self.server)

    def _bridge(self, stack: contextlib.ExitStack, mode: str, config: dict, *args: str) -> Child:
        self._configs += 1
        path = self.workdir / f"config{self._configs}.yaml"
        base = {"engine": {"output_channel": OUT + 1, "bpm": self.o.bpm},
                "thru": {"enabled": False}, "logging": {"level": "info"}}
        for section, values in config.items():
            base.setdefault(section, {}).update(values)
        path.write_text(yaml.safe_dump(base))
        client = unique_name("mb-bench-bridge")
        child = Child(bridge_cmd(client, str(path), "--mode", mode, *args), self._env(), "ready:",
                      f"bridge ({mode})")
        child.client = client
        stack.callback(child.stop)
        child.wait_ready()
        return child

    def _driver(self, stack: contextlib.ExitStack, child: Child, ports=BRIDGE_PORTS) -> Driver:
        driver = Driver(child.client, *ports)
        stack.callback(driver.close)
        return driver

    def _pause(self) -> None:
        time.sleep(self.rng.uniform(0.002, 0.002 + 2 * self.period_s))

    # -- rows ---------------------------------------------------------------------------

    def _warm_up(self, driver: Driver, answer: int = PLAYER) -> None:
        """One round trip before measuring, not counted: the route must be up (a new JACK
        connection takes effect in a later cycle, later still on a loaded machine).
        ``answer``: the channel the device answers on (PLAYER: the echo and thru; OUT: an
        accompaniment, which must also have ended before the first trial)."""
        for _ in range(3):
            start = driver.mark()
            t0 = driver.send([0x90 | PLAYER, 35, 1])
            got = driver.wait(start, first_note_on(answer, 35 if answer == PLAYER else None, t0), 2.0)
            driver.send([0x80 | PLAYER, 35, 0])
            if got is not None and answer != PLAYER:
                driver.wait(start, all_notes_ended(answer), 1.0)
            time.sleep(0.05)
            if got is not None:
                return

    def _warm_up_phrase(self, driver: Driver, on_s: float, gap_s: float) -> None:
        """One answered phrase before measuring, not counted (see :meth:`_warm_up`)."""
        for _ in range(3):
            start = driver.mark()
            end = self._phrase(driver, 0, 3, on_s, gap_s)
            if driver.wait(start, first_note_on(OUT, None, end), 2.0 + self.o.silence_ms / 1e3):
                driver.wait(start, answer_over(OUT, 150_000_000), 3.0)
                return

    def round_trips(self, driver: Driver, n: int) -> dict[str, Any]:
        lat, lost = [], 0
        self._warm_up(driver)
        for i in range(n):
            pitch = 36 + i % 60
            start = driver.mark()
            t0 = driver.send([0x90 | PLAYER, pitch, 100])
            got = driver.wait(start, first_note_on(PLAYER, pitch, t0), 1.0)
            if got is None:
                lost += 1
            else:
                lat.append((got.t_ns - t0) / 1e6)
            start = driver.mark()
            driver.send([0x80 | PLAYER, pitch, 0])
            driver.wait(start, lambda ms: any(m.is_note_off and m.data[1] == pitch for m in ms), 1.0)
            self._pause()
        return {**summary(lat), "lost": lost}

    def row_floor(self) -> dict[str, Any]:
        with contextlib.ExitStack() as stack:
            client = unique_name("mb-bench-echo")
            echo = Child(echo_cmd(client), self._env(), "ready", "echo client")
            echo.client = client
            stack.callback(echo.stop)
            echo.wait_ready(30)
            driver = self._driver(stack, echo, ("echo in", "echo out"))
            return self.round_trips(driver, self.o.notes)

    def row_thru(self) -> dict[str, Any]:
        with contextlib.ExitStack() as stack:
            bridge = self._bridge(stack, "thru", {})
            return self.round_trips(self._driver(stack, bridge), self.o.notes)

    def row_accompany(self) -> dict[str, Any]:
        with contextlib.ExitStack() as stack:
            bridge = self._bridge(stack, "accompany", {}, "--generator", self.o.accompany_generator)
            driver = self._driver(stack, bridge)
            self._warm_up(driver, OUT)
            lat, lost = [], 0
            for i in range(self.o.notes):
                pitch = 55 + (i * 7) % 24
                start = driver.mark()
                t0 = driver.send([0x90 | PLAYER, pitch, 100])
                got = driver.wait(start, first_note_on(OUT, None, t0), 1.0)
                if got is None:
                    lost += 1
                else:
                    lat.append((got.t_ns - t0) / 1e6)
                driver.send([0x80 | PLAYER, pitch, 0])
                if got is not None:
                    driver.wait(start, all_notes_ended(OUT), 1.0)
                self._pause()
            return {**summary(lat), "lost": lost, "generator": self.o.accompany_generator}

    def _continue_config(self, max_notes: int, max_beats: float) -> dict:
        return {"phrase": {"silence_ms": self.o.silence_ms, "min_notes": 2},
                "continuation": {"max_notes": max_notes, "max_beats": max_beats}}

    def _phrase(self, driver: Driver, i: int, notes: int, on_s: float, gap_s: float) -> int:
        """Play a short phrase; returns the send time of its last note-off."""
        t_ns = 0
        for k in range(notes):
            pitch = 60 + (i * 5 + k * 2) % 12
            driver.send([0x90 | PLAYER, pitch, 96])
            time.sleep(on_s)
            t_ns = driver.send([0x80 | PLAYER, pitch, 0])
            if k + 1 < notes:
                time.sleep(gap_s)
        return t_ns

    def row_continue(self) -> dict[str, Any]:
        with contextlib.ExitStack() as stack:
            bridge = self._bridge(stack, "continue", self._continue_config(2, 0.5),
                                  "--generator", self.o.generator)
            driver = self._driver(stack, bridge)
            self._warm_up_phrase(driver, 0.04, 0.02)
            silence_ns = self.o.silence_ms * 1e6
            lat, lost = [], 0
            for i in range(self.o.phrases):
                start = driver.mark()
                end = self._phrase(driver, i, 3, 0.04, 0.02)
                got = driver.wait(start, first_note_on(OUT, None, end), 2.0 + silence_ns / 1e9)
                if got is None:
                    lost += 1
                else:
                    lat.append((got.t_ns - end - silence_ns) / 1e6)
                    driver.wait(start, answer_over(OUT, 150_000_000), 3.0)
                self._pause()
            return {**summary(lat), "lost": lost, "generator": self.o.generator,
                    "silence_ms": self.o.silence_ms}

    def row_grid(self) -> dict[str, Any]:
        o = self.o
        with contextlib.ExitStack() as stack:
            bridge = self._bridge(stack, "continue", {**self._continue_config(8, 1.0),
                                                      "clock": {"follow": True},
                                                      "output": {"offset_ms": o.offset_ms},
                                                      "continuation": {"max_notes": 8, "max_beats": 1.0,
                                                                       "start_on": "beat"}},
                                  "--generator", o.generator, "--quantize", "1/16")
            driver = self._driver(stack, bridge)
            clock = ClockSender(driver, o.bpm)
            stack.callback(clock.stop)
            origin = clock.start()
            m = bridge.wait_line(r"clock: following MIDI clock at ([\d.]+) bpm", 10.0)
            estimate = float(m.group(1)) if m else None
            sixteenth = 60e9 / o.bpm / 4
            errors, lost, notes = [], 0, 0
            for i in range(o.phrases):
                start = driver.mark()
                end = self._phrase(driver, i, 3, 0.06, 0.03)
                got = driver.wait(start, answer_over(OUT, 300_000_000), o.silence_ms / 1e3 + 6 * 60 / o.bpm + 2)
                ons = [x for x in driver.since(start) if x.is_note_on and x.channel == OUT and x.t_ns > end]
                if not got or not ons:
                    lost += 1
                for x in ons:
                    e = x.t_ns - origin
                    errors.append((e - round(e / sixteenth) * sixteenth) / 1e6)
                notes += len(ons)
                self._pause()
            clock.stop()
            limit = self.period_s * 1e3 + 1.0
            row = summary([abs(e) for e in errors])
            return {**row, "mean_ms": round(sum(errors) / len(errors), 3) if errors else None,
                    "within_limit": sum(abs(e) <= limit for e in errors), "limit_ms": round(limit, 3),
                    "lost": lost, "bpm": o.bpm, "bpm_estimate": estimate,
                    "bpm_error_pct": None if estimate is None else round(abs(estimate / o.bpm - 1) * 100, 3),
                    "clock_send_late_p99_ms": clock.late_p99_ms(), "generator": o.generator,
                    "offset_ms": o.offset_ms}

    def row_load(self) -> dict[str, Any]:
        o = self.o
        with contextlib.ExitStack() as stack:
            bridge = self._bridge(stack, "thru", {})
            driver = self._driver(stack, bridge)
            start = driver.mark()
            interval = 1e9 / o.load_rate
            total = max(1, round(o.load_seconds * o.load_rate))
            t_start = time.perf_counter_ns() + 10_000_000
            sent_on: list[tuple[tuple[int, int], int]] = []
            for i in range(total):
                # (pitch, velocity) recurs every 60 x 127 notes: each echo is matched to its send
                pitch, velocity = 36 + i % 60, 1 + (i // 60) % 127
                t_on = t_start + round(i * interval)
                sleep_until(t_on)
                sent_on.append(((pitch, velocity), driver.send([0x90 | PLAYER, pitch, velocity])))
                sleep_until(t_on + round(interval / 2))
                driver.send([0x80 | PLAYER, pitch, 0])
            sent = 2 * total
            driver.wait(start, lambda ms: len(ms) >= sent, 3.0)
            time.sleep(0.3)
            received = [m for m in driver.since(start) if m.is_note_on or m.is_note_off]
            lat = match_latencies(sent_on, [m for m in received if m.is_note_on])
            driver.close()
            bridge.stop()
            stats = parse_stopped(bridge.output)
            if stats is None:
                raise RuntimeError(f"the bridge logged no 'stopped:' line:\n{bridge.output[-2000:]}")
            events_in = stats.get("events_in", 0)
            return {"lost_input": sent - events_in, "dropped_output": events_in - len(received),
                    "sent": sent, "bridge_events_in": events_in, "received": len(received),
                    "notes_per_s": o.load_rate, "seconds": o.load_seconds, **summary(lat)}

    def row_stop(self) -> dict[str, Any]:
        """SIGTERM while accompaniment sounds: time until its last note-off arrives."""
        lat, stuck = [], 0
        for trial in range(self.o.stop_trials):
            with contextlib.ExitStack() as stack:
                bridge = self._bridge(stack, "accompany", {}, "--generator", self.o.accompany_generator)
                driver = self._driver(stack, bridge)
                self._warm_up(driver, OUT)  # (thru is off: the accompaniment answers)
                start = driver.mark()
                for k, pitch in enumerate((55, 60, 64)):
                    t0 = driver.send([0x90 | PLAYER, pitch + trial % 5, 100])
                    driver.wait(start, first_note_on(OUT, None, t0), 1.0)
                time.sleep(0.1)
                t_term = time.perf_counter_ns()
                bridge.proc.send_signal(signal.SIGTERM)
                ended = driver.wait(start, all_notes_ended(OUT), 2.0)
                outs = [m for m in driver.since(start) if m.channel == OUT and m.is_note_off]
                if not ended or not outs:
                    stuck += 1
                else:
                    lat.append((max(m.t_ns for m in outs) - t_term) / 1e6)
                for p in (55, 60, 64):
                    driver.send([0x80 | PLAYER, p + trial % 5, 0])
        return {**summary(lat), "stuck": stuck, "trials": self.o.stop_trials,
                "generator": self.o.accompany_generator}

    # -- the whole run ------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        o = self.o
        saved = {k: os.environ.get(k) for k in ("JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER")}
        os.environ.update({"JACK_DEFAULT_SERVER": self.server, "JACK_NO_START_SERVER": "1"})
        server = None
        try:
            if o.server:
                if not jackd.responds(o.server):
                    raise jackd.JackError(f"no JACK server named '{o.server}' is running")
            else:
                server = jackd.JackServer(self.server, rate=o.rate, period=o.period)
                o.progress(f"starting jackd '{self.server}' (dummy, {o.period} frames at {o.rate} Hz)")
                server.start()
                if not server.owned:
                    o.progress(f"reusing the running JACK server '{self.server}'")
            period, rate = jack.settings(self.server)
            if period and rate:
                self.period_s = period / rate
            result: dict[str, Any] = {"machine": machine_info(period, rate)}
            for row in ROWS:
                if row not in o.rows:
                    continue
                o.progress(f"{row} ...")
                t = time.monotonic()
                # The driver's own collector must not pause its JACK callbacks mid-row: the
                # messages of earlier rows pile up, and a full collection of them (~300 ms,
                # three minutes into a full run) stalled the graph and lost load-row input.
                gc.collect()
                gc.freeze()
                gc.disable()
                try:
                    result[row] = getattr(self, f"row_{row}")()
                except Exception as e:  # noqa: BLE001 - report the row, go on with the next
                    result[row] = {**EMPTY[row], "error": f"{type(e).__name__}: {e}"}
                finally:
                    gc.enable()
                o.progress(f"{row}: {result[row]} ({time.monotonic() - t:.1f} s)")
            floor = (result.get("floor") or {}).get("p50_ms")
            for row in ("floor", "thru", "accompany", "continue"):
                if row in result:
                    p50 = result[row]["p50_ms"]
                    result[row]["ratio_p50"] = (round(p50 / floor, 3) if floor and p50 is not None
                                                else None)
            result["targets"] = targets(result)
            return result
        finally:
            if server is not None:
                server.stop()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            for p in self.workdir.glob("*"):
                p.unlink()
            self.workdir.rmdir()


def main(argv: list[str] | None = None) -> int:
    from .cli import main as cli_main
    return cli_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
