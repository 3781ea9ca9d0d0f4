"""What the player plays: the keys held, the phrase so far, and when it counts as ended.

A phrase ends when all keys are up and no note came for ``phrase.silence_ms`` (or
``silence_beats``), once it has ``phrase.min_notes`` notes spanning ``min_beats``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from midi_bridge.plugin import PlayedEvent

from . import midi


class Phrase:
    def __init__(self, config: dict[str, Any]) -> None:
        self.silence_ms: float = config["silence_ms"]
        self.silence_beats: float | None = config["silence_beats"]
        self.min_notes: int = config["min_notes"]
        self.min_beats: float = config["min_beats"]
        self.events: deque[PlayedEvent] = deque(maxlen=config["max_notes"])
        self.notes = 0                         # note-ons in the phrase
        self.start_ns = 0                      # when its first note came
        self.last_input_ns: int | None = None  # when its last note-on or -off came
        self.held: set[tuple[int, int]] = set()  # (channel, pitch) of the keys held
        self.channels: set[int] = set()         # channels the player's notes came on

    def __len__(self) -> int:
        return len(self.events)

    def key(self, on: bool, ch: int, pitch: int) -> None:
        if on:
            self.channels.add(ch)
            self.held.add((ch, pitch))
        else:
            self.held.discard((ch, pitch))

    def add(self, ev: PlayedEvent, now: int) -> None:
        """A played note-on or -off the generator was told of."""
        if ev.on:
            if not self.notes:
                self.start_ns = now
            self.events.append(ev)
            self.notes += 1
        self.last_input_ns = now

    def end_at(self, nspb: float) -> int | None:
        """When the phrase ends if nothing more is played (None: not yet long enough, or a
        key is held)."""
        if self.held or self.notes < self.min_notes or self.last_input_ns is None:
            return None
        if self.min_beats and self.last_input_ns - self.start_ns < self.min_beats * nspb:
            return None
        silence = self.silence_beats * nspb if self.silence_beats else self.silence_ms * 1e6
        return self.last_input_ns + int(silence)

    def answered(self) -> None:
        """Its answer started: the next notes begin a new phrase."""
        self.events.clear()
        self.notes = 0

    def reset(self) -> None:
        self.events.clear()
        self.notes = 0
        self.last_input_ns = None

    def releases_held(self, msg: tuple[int, ...]) -> bool:
        """The note-off of a key the player holds, or All Notes / All Sound Off on a channel
        where the player holds keys: never taken for an echo.  Dropping it would leave the
        note (and what the bridge plays with it) hanging, or the phrase open for ever; a
        DAW's panic sends CC123 on every channel at once, just after the bridge has passed
        the first ones through to its own output."""
        kind, ch = msg[0] & 0xF0, msg[0] & 0x0F
        if kind == midi.NOTE_OFF:
            return (ch, msg[1]) in self.held
        return kind == midi.CONTROL and (msg[1] == 123 or msg[1] == 120) and any(k[0] == ch for k in self.held)

    def all_off(self, ch: int) -> None:
        """All Notes Off / All Sound Off from the player: no key is held on ``ch`` any more
        (a lost note-off must not keep the phrase open for ever)."""
        if self.held:
            self.held = {k for k in self.held if k[0] != ch}
