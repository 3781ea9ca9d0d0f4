"""A JACK MIDI test driver: plays into the bridge's input, records the bridge's output."""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
from typing import Callable, NamedTuple, Sequence

import rtmidi

NOTE_OFF, NOTE_ON, CONTROL = 0x80, 0x90, 0xB0
_serial = itertools.count()


def unique_client_name(prefix: str) -> str:
    """A JACK client name not used before by this process.

    Reusing a name right after a client of that name closed races with the server's
    clean-up of the old one (which shares per-name futex files) and can leave the new
    client deaf, so every bridge and driver in the tests gets its own name.
    """
    return f"{prefix}-{os.getpid()}-{next(_serial)}"


class Received(NamedTuple):
    t_ns: int  # time.perf_counter_ns() when the callback ran
    data: bytes

    @property
    def kind(self) -> int:
        return self.data[0] & 0xF0

    @property
    def channel(self) -> int:
        return self.data[0] & 0x0F

    @property
    def is_note_on(self) -> bool:
        return self.kind == NOTE_ON and len(self.data) == 3 and self.data[2] > 0

    @property
    def is_note_off(self) -> bool:
        return len(self.data) == 3 and (
            self.kind == NOTE_OFF or (self.kind == NOTE_ON and self.data[2] == 0))

    def is_cc(self, number: int, value: int | None = None) -> bool:
        return (self.kind == CONTROL and len(self.data) == 3 and self.data[1] == number
                and (value is None or self.data[2] == value))


class MidiClient:
    """Connects a MidiOut to the port matching ``to_port`` and a MidiIn from ``from_port``.

    Ports are matched on the port part of ``client:port`` (JACK renames a duplicate
    client ``midi-bridge`` to ``midi-bridge-01``), never on this driver's own ports, and
    when ``client`` is given only on ports of that client (or its renamed ``client-NN``).
    """

    def __init__(self, to_port: str = "midi-bridge in", from_port: str = "midi-bridge out",
                 client: str | None = None, name: str | None = None,
                 timeout: float = 10.0, settle: float = 0.1) -> None:
        self.name = name or unique_client_name("mb-test-driver")
        self.client = client
        self.received: list[Received] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
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
        # A new JACK connection takes effect in a later process cycle: what is sent
        # before then is dropped.
        time.sleep(settle)

    @staticmethod
    def _named(client: str, name: str) -> bool:
        return re.fullmatch(re.escape(name) + r"(-\d+)?", client) is not None

    def _open(self, midi, match: str, own_port: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            ports = midi.get_ports()
            for index, full in enumerate(ports):
                client, _, port = full.partition(":")
                if (match in port and not self._named(client, self.name)
                        and (self.client is None or self._named(client, self.client))):
                    midi.open_port(index, own_port)
                    return full
            if time.monotonic() > deadline:
                raise TimeoutError(f"no JACK port matching {match!r}; ports: {ports}")
            time.sleep(0.05)

    def _on_message(self, event, _data=None) -> None:
        t_ns = time.perf_counter_ns()
        try:  # exceptions raised here would vanish without a trace
            message, _delta = event
            with self._lock:
                self.received.append(Received(t_ns, bytes(message)))
        except BaseException as exc:
            self.errors.append(exc)

    # -- sending ------------------------------------------------------------------------------

    def send(self, data: bytes | Sequence[int]) -> int:
        """Send one message; returns time.perf_counter_ns() just before sending."""
        t_ns = time.perf_counter_ns()
        self.midi_out.send_message(list(data))
        return t_ns

    def note_on(self, pitch: int, velocity: int = 100, channel: int = 0) -> int:
        return self.send([NOTE_ON | channel, pitch, velocity])

    def note_off(self, pitch: int, channel: int = 0, velocity: int = 0) -> int:
        return self.send([NOTE_OFF | channel, pitch, velocity])

    # -- receiving ----------------------------------------------------------------------------

    def messages(self) -> list[Received]:
        self.check()
        with self._lock:
            return list(self.received)

    def clear(self) -> None:
        with self._lock:
            self.received.clear()

    def check(self) -> None:
        if self.errors:
            raise AssertionError(f"MIDI input callback failed: {self.errors!r}")

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 5.0,
                 what: str = "") -> list[Received]:
        """Poll until ``predicate(messages)`` is true; returns the messages.

        Raises AssertionError (with everything received) on timeout.
        """
        deadline = time.monotonic() + timeout
        while True:
            got = self.messages()
            if predicate(got):
                return got
            if time.monotonic() > deadline:
                dump = "\n".join(f"  {m.t_ns / 1e9:.4f} {m.data.hex(' ')}" for m in got)
                raise AssertionError(f"timed out after {timeout} s waiting for "
                                     f"{what or predicate!r} (sending to {self.out_port!r}, "
                                     f"receiving from {self.in_port!r}); received "
                                     f"{len(got)}:\n{dump}")
            time.sleep(0.005)

    def close(self) -> None:
        for midi in (getattr(self, "midi_in", None), getattr(self, "midi_out", None)):
            if midi is not None and not midi.is_deleted:
                if isinstance(midi, rtmidi.MidiIn):
                    midi.cancel_callback()
                midi.close_port()
                midi.delete()

    def __enter__(self) -> "MidiClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def unmatched_note_ons(messages: Sequence[Received], channel: int | None = None) -> list[Received]:
    """Note-ons (on ``channel``, or any) not followed by a note-off of the same key."""
    sounding: dict[tuple[int, int], list[Received]] = {}
    for m in messages:
        if channel is not None and m.channel != channel:
            continue
        key = (m.channel, m.data[1]) if len(m.data) > 1 else None
        if m.is_note_on:
            sounding.setdefault(key, []).append(m)
        elif m.is_note_off and sounding.get(key):
            sounding[key].pop(0)
    return [m for ms in sounding.values() for m in ms]
