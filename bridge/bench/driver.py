"""The live benchmark's MIDI driver and its child processes (bridges, the echo client).

The driver is two python-rtmidi JACK clients in the benchmark's own process: a MidiOut
connected to the device's input port and a MidiIn connected from its output port.  The
input callback stamps ``time.perf_counter_ns()`` first thing; :meth:`Driver.send`
returns the ``perf_counter_ns()`` taken just before the message is handed to rtmidi.
Sends are serialised with a lock (a clock thread and the player share the MidiOut).

Child processes run in their own session (a Ctrl-C in the terminal reaches the
benchmark only, which then stops them in order: bridge or echo first, the JACK server
last), always with SIGTERM and a wait; SIGKILL only if one ignores SIGTERM.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, NamedTuple, Sequence

import rtmidi

from midi_bridge.runtime.ports import close_midi

NOTE_OFF, NOTE_ON, CONTROL = 0x80, 0x90, 0xB0
_serial = itertools.count()


def unique_name(prefix: str) -> str:
    """A JACK client name used once (reusing one right after it closed can leave it deaf)."""
    return f"{prefix}-{os.getpid()}-{next(_serial)}"


class Msg(NamedTuple):
    t_ns: int  # time.perf_counter_ns() when the input callback ran
    data: bytes

    @property
    def kind(self) -> int:
        return self.data[0] & 0xF0

    @property
    def channel(self) -> int:
        return self.data[0] & 0x0F

    @property
    def is_note_on(self) -> bool:
        return len(self.data) == 3 and self.kind == NOTE_ON and self.data[2] > 0

    @property
    def is_note_off(self) -> bool:
        return len(self.data) == 3 and (self.kind == NOTE_OFF or (
            self.kind == NOTE_ON and self.data[2] == 0))

    def is_cc(self, number: int, value: int | None = None) -> bool:
        return (self.kind == CONTROL and len(self.data) == 3 and self.data[1] == number
                and (value is None or self.data[2] == value))


class Driver:
    """Plays into ``to_port`` and records what comes out of ``from_port``.

    Ports are matched on the port part of ``client:port`` (JACK renames a duplicate client
    ``midi-bridge`` to ``midi-bridge-01``), never on the driver's own ports, and when
    ``client`` is given only on ports of that client (or its renamed ``client-NN``).
    """

    def __init__(self, client: str | None, to_port: str, from_port: str, timeout: float = 10.0,
                 settle: float = 0.2, name: str | None = None) -> None:
        self.name = name or unique_name("mb-bench-driver")
        self.client = client
        self.received: list[Msg] = []
        self.errors: list[BaseException] = []
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self.midi_out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name=self.name)
        self.midi_in = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name=self.name)
        self.midi_in.ignore_types(sysex=True, timing=False, active_sense=True)
        self.midi_in.set_callback(self._on_message)
        try:
            self.out_port = self._open(self.midi_out, to_port, "driver out", timeout)
            self.in_port = self._open(self.midi_in, from_port, "driver in", timeout)
        except BaseException:
            self.close()
            raise
        time.sleep(settle)  # a new JACK connection takes effect in a later cycle

    @staticmethod
    def _named(client: str, name: str) -> bool:
        """``client`` is ``name``'s: itself, its ``-out`` client (the native JACK backend's
        outputs), or either renamed by JACK (``-01``)."""
        return re.fullmatch(re.escape(name) + r"(-out)?(-\d+)?", client) is not None

    def _open(self, midi, match: str, own: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            ports = midi.get_ports()
            for index, full in enumerate(ports):
                client, _, port = full.partition(":")
                if (match in port and not self._named(client, self.name)
                        and (self.client is None or self._named(client, self.client))):
                    midi.open_port(index, own)
                    return full
            if time.monotonic() > deadline:
                raise TimeoutError(f"no JACK port {self.client or '*'}:{match!r}; ports: {ports}")
            time.sleep(0.05)

    def _on_message(self, event, _data=None) -> None:
        t_ns = time.perf_counter_ns()
        try:  # an exception here would vanish inside rtmidi
            with self._cond:
                self.received.append(Msg(t_ns, bytes(event[0])))
                self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001
            self.errors.append(exc)

    def send(self, data: Sequence[int]) -> int:
        """Send one message; returns perf_counter_ns() taken just before sending."""
        with self._send_lock:
            t_ns = time.perf_counter_ns()
            self.midi_out.send_message(list(data))
        return t_ns

    def mark(self) -> int:
        """Index of the next message to arrive (for :meth:`wait` / :meth:`since`)."""
        with self._cond:
            return len(self.received)

    def since(self, start: int) -> list[Msg]:
        with self._cond:
            return self.received[start:]

    def wait(self, start: int, predicate: Callable[[list[Msg]], object],
             timeout: float, poll: float = 0.05) -> object:
        """Wait until ``predicate(messages since start)`` is truthy; returns it (None: timeout).

        Checked on every arrival, and every ``poll`` s for predicates that depend on time."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = predicate(self.received[start:])
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, poll))

    def close(self) -> None:
        for midi in (getattr(self, "midi_in", None), getattr(self, "midi_out", None)):
            if midi is not None and not midi.is_deleted:
                close_midi(midi)  # (safe while the device under test still sends)

    def __enter__(self) -> "Driver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def first_note_on(channel: int | None = None, pitch: int | None = None,
                  after_ns: int = 0) -> Callable[[list[Msg]], Msg | None]:
    def pred(ms: list[Msg]) -> Msg | None:
        for m in ms:
            if (m.is_note_on and m.t_ns >= after_ns and (channel is None or m.channel == channel)
                    and (pitch is None or m.data[1] == pitch)):
                return m
        return None
    return pred


def all_notes_ended(channel: int) -> Callable[[list[Msg]], bool]:
    """True once every note-on on ``channel`` has had its note-off (and one was seen)."""
    def pred(ms: list[Msg]) -> bool:
        sounding: dict[int, int] = {}
        seen = False
        for m in ms:
            if m.channel != channel:
                continue
            if m.is_note_on:
                seen = True
                sounding[m.data[1]] = sounding.get(m.data[1], 0) + 1
            elif m.is_note_off and sounding.get(m.data[1]):
                sounding[m.data[1]] -= 1
        return seen and not any(sounding.values())
    return pred


def answer_over(channel: int, quiet_ns: int) -> Callable[[list[Msg]], bool]:
    """True once every note on ``channel`` has ended and nothing came for ``quiet_ns``."""
    ended = all_notes_ended(channel)

    def pred(ms: list[Msg]) -> bool:
        last = max((m.t_ns for m in ms if m.channel == channel), default=None)
        return last is not None and time.perf_counter_ns() - last >= quiet_ns and ended(ms)
    return pred


class Child:
    """A child process (a bridge or the echo) with its output collected line by line."""

    def __init__(self, cmd: list[str], env: dict[str, str], ready_marker: str, label: str) -> None:
        self.cmd, self.label, self.ready_marker = cmd, label, ready_marker
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.returncode: int | None = None
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                     env={**env, "PYTHONUNBUFFERED": "1"})
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if self.ready_marker in line:
                self.ready.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                rc = self.proc.poll()
                self.stop()
                raise RuntimeError(f"{self.label} not ready ({'exit ' + str(rc) if rc is not None else 'timeout'}):"
                                   f" {' '.join(self.cmd)}\n{self.output[-3000:]}")

    def wait_line(self, pattern: str, timeout: float) -> re.Match | None:
        """The first output line matching ``pattern`` (waits up to ``timeout``)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.lines):
                m = rx.search(line)
                if m:
                    return m
            if time.monotonic() > deadline or self.proc.poll() is not None:
                return None
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait (SIGKILL only after ``timeout``); returns the exit status."""
        proc = self.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._reader.join(2.0)
        self.returncode = proc.returncode
        return self.returncode


def bridge_cmd(client: str, config_path: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "midi_bridge", "run", "--backend", "jack", "--client-name", client,
            "--config", config_path, *args]


def echo_cmd(client: str) -> list[str]:
    return [sys.executable, "-m", "midi_bridge.bench.echo", "--client-name", client]


_STAT = re.compile(r"([a-z_]+) (\d+)")


def parse_stopped(output: str) -> dict[str, int] | None:
    """The counters of the bridge's last ``stopped: events_in N, ...`` log line."""
    found = None
    for line in output.splitlines():
        _, sep, rest = line.partition("stopped: ")
        if sep:
            found = {k: int(v) for k, v in _STAT.findall(rest)}
    return found


class ClockSender:
    """Start, then 0xF8 at 24 ppqn on an absolute schedule, from its own thread."""

    def __init__(self, driver: Driver, bpm: float) -> None:
        self.driver, self.tick_ns = driver, 60e9 / (bpm * 24)
        self.late_ns: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._origin: int | None = None
        self._ready = threading.Event()

    def start(self) -> int:
        """Starts the clock; returns the send time of the first clock after Start."""
        self._thread = threading.Thread(target=self._run, name="bench-clock", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)
        return self._origin

    def _run(self) -> None:
        self.driver.send([0xFA])
        time.sleep(0.002)
        self._origin = origin = self.driver.send([0xF8])
        self._ready.set()
        k = 1
        while not self._stop.is_set():
            due = origin + round(k * self.tick_ns)
            sleep_until(due)
            self.late_ns.append(self.driver.send([0xF8]) - due)
            k += 1

    def stop(self) -> None:
        if self._thread is not None and not self._stop.is_set():
            self._stop.set()
            self._thread.join(2.0)
            with contextlib.suppress(Exception):
                self.driver.send([0xFC])

    def late_p99_ms(self) -> float | None:
        from .report import summary
        return summary([x / 1e6 for x in self.late_ns])["p99_ms"]


def sleep_until(t_ns: int) -> None:
    left = t_ns - time.perf_counter_ns()
    if left > 0:
        time.sleep(left / 1e9)


def match_latencies(sent_on: list[tuple[tuple[int, int], int]], got_on: list) -> list[float]:
    """Latency of each received note-on from the latest send of its ``(pitch, velocity)``
    at or before its arrival (``sent_on``: ``((pitch, velocity), send time)`` in send order).

    Not matched in order per pitch: one lost note would shift every later note of its
    pitch onto an earlier send.  The load row varies the velocity, so a key comes back only
    every 60 x 127 notes, and a stall longer than one cycle of pitches still matches each
    note to its own send."""
    sends: dict[tuple[int, int], list[int]] = {}
    for key, t in sent_on:
        sends.setdefault(tuple(key), []).append(t)
    lat = []
    for m in got_on:
        times = sends.get((m.data[1], m.data[2]))
        if times:
            i = bisect.bisect_right(times, m.t_ns) - 1
            if i >= 0:
                lat.append((m.t_ns - times[i]) / 1e6)
    return lat
