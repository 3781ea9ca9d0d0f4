"""A JACK MIDI test driver: plays into the bridge's input, records the bridge's output.

It is the benchmark's driver (:mod:`midi_bridge.bench.driver`) with what tests want on top:
note helpers, and waiting that fails with everything received.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

from midi_bridge.bench.driver import NOTE_OFF, NOTE_ON, Driver, Msg, unique_name

#: A received message: ``t_ns`` (perf_counter_ns in the input callback) and ``data``.
Received = Msg


def unique_client_name(prefix: str) -> str:
    """A JACK client name not used before by this process.

    Reusing a name right after a client of that name closed races with the server's
    clean-up of the old one (which shares per-name futex files) and can leave the new
    client deaf, so every bridge and driver in the tests gets its own name.
    """
    return unique_name(prefix)


class MidiClient(Driver):
    """A MidiOut to the port matching ``to_port``, a MidiIn from ``from_port`` (of ``client``
    when given; see :class:`midi_bridge.bench.driver.Driver` for how ports are matched)."""

    def __init__(self, to_port: str = "midi-bridge in", from_port: str = "midi-bridge out",
                 client: str | None = None, name: str | None = None,
                 timeout: float = 10.0, settle: float = 0.1) -> None:
        super().__init__(client, to_port, from_port, timeout=timeout, settle=settle,
                         name=name or unique_client_name("mb-test-driver"))

    def note_on(self, pitch: int, velocity: int = 100, channel: int = 0) -> int:
        return self.send([NOTE_ON | channel, pitch, velocity])

    def note_off(self, pitch: int, channel: int = 0, velocity: int = 0) -> int:
        return self.send([NOTE_OFF | channel, pitch, velocity])

    def play_phrase(self, pitches: Sequence[int], channel: int = 0, on_s: float = 0.12,
                    gap_s: float = 0.04, velocity: int = 96) -> int:
        """Play ``pitches`` one after the other; returns the perf_counter_ns of the last note-off."""
        t_ns = 0
        for pitch in pitches:
            self.note_on(pitch, velocity, channel)
            time.sleep(on_s)
            t_ns = self.note_off(pitch, channel)
            time.sleep(gap_s)
        return t_ns

    def messages(self) -> list[Received]:
        self.check()
        return self.since(0)

    def clear(self) -> None:
        with self._cond:
            self.received.clear()

    def check(self) -> None:
        if self.errors:
            raise AssertionError(f"MIDI input callback failed: {self.errors!r}")

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 5.0,
                 what: str = "") -> list[Received]:
        """Wait until ``predicate(messages)`` is true; returns the messages.

        Raises AssertionError (with everything received) on timeout.
        """
        if self.wait(0, lambda ms: bool(predicate(ms)) or None, timeout, poll=0.005):
            return self.messages()
        got = self.messages()
        dump = "\n".join(f"  {m.t_ns / 1e9:.4f} {m.data.hex(' ')}" for m in got)
        raise AssertionError(f"timed out after {timeout} s waiting for "
                             f"{what or predicate!r} (sending to {self.out_port!r}, "
                             f"receiving from {self.in_port!r}); received {len(got)}:\n{dump}")


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
