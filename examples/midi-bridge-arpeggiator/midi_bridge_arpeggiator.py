"""An arpeggiator for midi-bridge: an example of an external generator plugin.

* ``accompany`` mode: every held note gets an arpeggio of its triad (root, third and
  fifth), an octave below it, in steps of ``step`` beats on the song's grid, until the
  key is released.  The third is major or minor as the music so far suggests:
  the triad is minor when the minor third above the root has been played more often than
  the major third.
* ``continue`` mode: the answer arpeggiates the last ``notes`` distinct pitches of the
  phrase, in steps of ``step`` beats from the answer's start, up to the answer's length.
  It never measures time with the played notes' ``beat``: under a DAW's MIDI clock that
  is the song position, which jumps back when the DAW loops, mid-phrase too.

Live controls (plugin contract 1.1): ``Context.density`` below 0.5 halves the rate (one
note every two steps); ``Context.temperature`` (or ``temperature`` in the settings when the
performer has not set one) makes some steps pick another tone of the same chord at random.
Temperature 0 plays the pattern exactly.

Everything a plugin needs comes from ``midi_bridge.plugin``; the bridge ends every note it
starts for us, so there is not a single note-off in this file.
"""

from __future__ import annotations

import math
import random
from typing import Any, Iterator, Mapping

from midi_bridge.plugin import Context, Generator, Note, PlayedEvent

PATTERNS = ("up", "down", "updown")


def _order(tones: list[int], pattern: str) -> list[int]:
    """One cycle of the pattern over ``tones`` (ascending)."""
    if pattern == "down":
        return tones[::-1]
    if pattern == "updown" and len(tones) > 2:
        return tones + tones[-2:0:-1]  # 1 3 5 3: no repeated note at the turns
    return list(tones)


class ArpeggiatorGenerator(Generator):
    name = "arpeggiator"
    api_version = 1  # the plugin contract's major this was written for (midi_bridge.plugin)
    modes = frozenset({"continue", "accompany"})
    default_config: Mapping[str, Any] = {
        "step": 0.25,        # beats per arpeggio note (0.25: sixteenths)
        "pattern": "updown", # up | down | updown (1 3 5 3: four notes a beat in sixteenths)
        "gate": 0.9,         # share of a step each note sounds (0 < gate <= 1)
        "octave": -1,        # accompaniment register, in octaves from the played note
        "hold_beats": 8,     # accompaniment: at most this many beats of arpeggio per note
        "notes": 3,          # continuation: arpeggiate the phrase's last N distinct pitches
        "velocity": 0.8,     # velocity as a share of the played velocity
        "temperature": 0.0,  # randomness when the performer has not set one (0: exact)
        "seed": None,        # an integer for repeatable randomness
    }

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        c = self.config
        # Refuse bad settings with a message: the bridge reports it and keeps going.
        if not (isinstance(c["step"], (int, float)) and 1 / 64 <= c["step"] <= 4):
            raise ValueError(f"step must be a number of beats from 1/64 to 4, not {c['step']!r}")
        if c["pattern"] not in PATTERNS:
            raise ValueError(f"pattern must be one of {', '.join(PATTERNS)}, not {c['pattern']!r}")
        if not (isinstance(c["gate"], (int, float)) and 0 < c["gate"] <= 1):
            raise ValueError(f"gate must be above 0 and at most 1, not {c['gate']!r}")
        if not (isinstance(c["octave"], int) and -3 <= c["octave"] <= 2):
            raise ValueError(f"octave must be an integer from -3 to 2, not {c['octave']!r}")
        if not (isinstance(c["hold_beats"], (int, float)) and 0 < c["hold_beats"] <= 64):
            raise ValueError(f"hold_beats must be above 0 and at most 64, not {c['hold_beats']!r}")
        if not (isinstance(c["notes"], int) and 1 <= c["notes"] <= 16):
            raise ValueError(f"notes must be an integer from 1 to 16, not {c['notes']!r}")
        if not (isinstance(c["velocity"], (int, float)) and 0 < c["velocity"] <= 2):
            raise ValueError(f"velocity must be above 0 and at most 2, not {c['velocity']!r}")
        if not (isinstance(c["temperature"], (int, float)) and 0 <= c["temperature"] <= 4):
            raise ValueError(f"temperature must be from 0 to 4, not {c['temperature']!r}")
        self._rng = random.Random(c["seed"])
        self._heard = [0] * 12          # how often each pitch class was played (bounded)
        self._last: list[int] = []      # what the last answer arpeggiated (rating_context)

    # -- state -----------------------------------------------------------------------------

    def reset(self) -> None:
        self._heard = [0] * 12
        self._last = []

    def observe(self, event: PlayedEvent) -> None:
        """O(1): count the pitch class of each note-on (halved now and then: recent weighs more)."""
        if not event.on:
            return
        pc = event.pitch % 12
        self._heard[pc] += 1
        if self._heard[pc] >= 64:
            self._heard = [n // 2 for n in self._heard]

    def triad(self, root: int) -> list[int]:
        """Root, third and fifth on ``root``; minor when the music so far says so."""
        minor = self._heard[(root + 3) % 12] > self._heard[(root + 4) % 12]
        return [root, root + (3 if minor else 4), root + 7]

    # -- live controls ---------------------------------------------------------------------

    def _step(self, context: Context) -> float:
        density = getattr(context, "density", 1.0)  # contract 1.1; a 1.0 bridge has none
        return self.config["step"] * (2 if density < 0.5 else 1)

    def _chance(self, context: Context) -> float:
        """Chance that a step plays another chord tone instead of the pattern's."""
        t = getattr(context, "temperature", None)
        if t is None:
            t = self.config["temperature"]
        return min(0.5, max(0.0, t) * 0.25)

    def _velocity(self, played: int, on_beat: bool) -> int:
        v = played * self.config["velocity"] * (1.0 if on_beat else 0.85)  # accent the beat
        return max(1, min(127, round(v)))

    # -- modes -----------------------------------------------------------------------------

    def accompany(self, event: PlayedEvent, context: Context) -> list[Note]:
        """The played note's triad, arpeggiated on the song's grid while the key is held."""
        root = event.pitch + 12 * self.config["octave"]
        tones = [p for p in self.triad(root) if 0 <= p <= 127]
        if not tones:
            return []
        step = self._step(context)
        cycle = _order(tones, self.config["pattern"])
        chance = self._chance(context)
        # The first note sounds with the played note; the rest fall on the grid of `step`
        # beats (the song's grid when the DAW sends clock), skipping a grid point that
        # would follow the first note too closely.
        first_grid = math.ceil(event.beat / step) * step - event.beat
        if first_grid < step / 2:
            first_grid += step
        starts = [0.0]
        t = first_grid
        while t < self.config["hold_beats"] and len(starts) < 256:
            starts.append(t)
            t += step
        notes = []
        for i, start in enumerate(starts):
            pitch = cycle[i % len(cycle)]
            if chance and self._rng.random() < chance:
                pitch = self._rng.choice(tones)
            on_beat = abs((event.beat + start) - round(event.beat + start)) < 1e-6
            notes.append(Note(pitch, self._velocity(event.velocity, on_beat or i == 0),
                              start=start, duration=step * self.config["gate"]))
        return notes

    def continuation(self, context: Context) -> Iterator[Note]:
        """Arpeggiate the phrase's last distinct pitches, one note at a time (lazily)."""
        played = [e for e in context.phrase if e.on]
        if not played:
            return
        last: list[int] = []
        for e in reversed(played):          # the last N distinct pitches
            if e.pitch not in last:
                last.append(e.pitch)
                if len(last) == self.config["notes"]:
                    break
        tones = sorted(last) if len(last) > 1 else [p for p in self.triad(last[0]) if p <= 127]
        self._last = tones
        cycle = _order(tones, self.config["pattern"])
        velocity = sum(e.velocity for e in played[-len(last):]) / len(last)
        step = self._step(context)
        max_notes = context.max_notes or 64
        max_beats = context.max_beats or 16.0
        chance = self._chance(context)
        i = 0
        while i < max_notes and i * step < max_beats:
            pitch = cycle[i % len(cycle)]
            if chance and self._rng.random() < chance:
                pitch = self._rng.choice(tones)
            start = i * step
            yield Note(pitch, self._velocity(velocity, abs(start - round(start)) < 1e-6),
                       start=start, duration=step * self.config["gate"])
            i += 1

    def rating_context(self) -> Mapping[str, Any]:
        """Saved with a performer's rating of the last answer (contract 1.1)."""
        return {"pattern": self.config["pattern"], "step": self.config["step"],
                "tones": list(self._last)}
