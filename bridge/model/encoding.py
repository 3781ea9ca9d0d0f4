"""Event encoding: notes on a beat grid <-> integer event rows (see docs/encoding.md).

A piece is a list of :class:`GridNote` (times in grid steps of 1/12 beat).  The *note view*
encodes each note as one event row ``(dt, pitch, dur, vel)``:

* ``dt``    steps from the previous event's onset (0 = same onset, a chord), 0..96;
* ``pitch`` MIDI pitch 0..127, or ``WAIT`` (128): no note, only advances time by ``dt``
  (used for gaps longer than 8 beats); a WAIT row has ``dur = 0`` and ``vel = 0``;
* ``dur``   duration in steps, 1..96 (longer notes are clipped to 8 beats);
* ``vel``   velocity bin 0..31 (``vel // 4``; decoded as ``4 * bin + 2``).

Notes are ordered by onset, then pitch from high to low (the melody of a chord first).
Monophonic and polyphonic pieces share the format; a monophonic piece has ``dt > 0``.

The *harmony view* (for the harmonizer) has one row per melody note:
``(dt, pitch, bass, tenor, alto)`` where the voices are intervals in semitones below the
melody pitch (0..47) or ``NONE`` (48) when the voice is silent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

ENCODING_VERSION = 1
STEPS_PER_BEAT = 12
MAX_DT = 96
MAX_DUR = 96
WAIT = 128
VEL_BINS = 32
MAX_INTERVAL = 47
NONE = MAX_INTERVAL + 1


@dataclass(frozen=True)
class FieldSpec:
    name: str
    size: int


@dataclass(frozen=True)
class EventSpec:
    """The fields of one event row, in the order the model predicts them."""

    view: str
    fields: tuple[FieldSpec, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(f.size for f in self.fields)

    def to_dict(self) -> dict:
        return {"view": self.view, "fields": [[f.name, f.size] for f in self.fields]}

    @staticmethod
    def from_dict(d: dict) -> "EventSpec":
        return EventSpec(d["view"], tuple(FieldSpec(n, int(s)) for n, s in d["fields"]))


NOTE_SPEC = EventSpec("notes", (FieldSpec("dt", MAX_DT + 1), FieldSpec("pitch", 129),
                                FieldSpec("dur", MAX_DUR + 1), FieldSpec("vel", VEL_BINS)))
HARMONY_VOICES = ("bass", "tenor", "alto")
HARMONY_SPEC = EventSpec("harmony", (FieldSpec("dt", MAX_DT + 1), FieldSpec("pitch", 128))
                         + tuple(FieldSpec(v, NONE + 1) for v in HARMONY_VOICES))
SPECS = {s.view: s for s in (NOTE_SPEC, HARMONY_SPEC)}


@dataclass(frozen=True, order=True)
class GridNote:
    """A note on the grid: ``start`` and ``dur`` in steps (1/12 beat), ``vel`` 1..127."""

    start: int
    pitch: int
    dur: int
    vel: int = 90
    track: int = 0


def vel_to_bin(vel: int) -> int:
    return min(VEL_BINS - 1, max(0, int(vel) // 4))


def bin_to_vel(b: int) -> int:
    return 4 * int(b) + 2


def beats_to_steps(beats: float) -> int:
    return int(round(beats * STEPS_PER_BEAT))


def steps_to_beats(steps: int) -> float:
    return steps / STEPS_PER_BEAT


def sort_notes(notes: Iterable[GridNote]) -> list[GridNote]:
    """Onset order, the highest pitch of a chord first."""
    return sorted(notes, key=lambda n: (n.start, -n.pitch, n.dur))


def encode_notes(notes: Iterable[GridNote]) -> np.ndarray:
    """Notes -> int16 array ``[n, 4]`` of ``(dt, pitch, dur, vel)`` rows."""
    rows: list[tuple[int, int, int, int]] = []
    t = 0
    for n in sort_notes(notes):
        gap = n.start - t
        if gap < 0:
            raise ValueError("notes must have non-negative onsets")
        while gap > MAX_DT:
            rows.append((MAX_DT, WAIT, 0, 0))
            gap -= MAX_DT
        rows.append((gap, int(n.pitch), max(1, min(MAX_DUR, int(n.dur))), vel_to_bin(n.vel)))
        t = n.start
    return np.asarray(rows, dtype=np.int16).reshape(-1, 4)


def decode_notes(events: np.ndarray | Sequence[Sequence[int]], start: int = 0) -> list[GridNote]:
    """Inverse of :func:`encode_notes` (exact for notes on the grid, <= 8 beats long)."""
    notes: list[GridNote] = []
    t = start
    for dt, pitch, dur, vel in np.asarray(events, dtype=np.int64).reshape(-1, 4).tolist():
        t += dt
        if pitch != WAIT:
            notes.append(GridNote(t, pitch, dur, bin_to_vel(vel)))
    return notes


def to_monophonic(notes: Iterable[GridNote]) -> list[GridNote]:
    """Skyline: at each onset keep the highest note; cut each note at the next onset."""
    by_onset: dict[int, GridNote] = {}
    for n in notes:
        cur = by_onset.get(n.start)
        if cur is None or n.pitch > cur.pitch:
            by_onset[n.start] = n
    out = sorted(by_onset.values())
    mono = []
    for i, n in enumerate(out):
        dur = n.dur if i + 1 == len(out) else min(n.dur, out[i + 1].start - n.start)
        mono.append(GridNote(n.start, n.pitch, max(1, dur), n.vel, n.track))
    return mono


def harmony_rows(melody: Sequence[GridNote], voices: Sequence[Sequence[GridNote]]) -> np.ndarray:
    """One row per melody note: ``(dt, pitch, bass, tenor, alto)``.

    ``voices`` are the lower parts from the highest (alto) to the lowest (bass); each
    voice's entry is the interval below the melody of the note sounding at the melody
    onset, or ``NONE``.
    """
    lower = list(voices)[:3][::-1]  # bass, tenor, alto
    while len(lower) < 3:
        lower.insert(0, [])
    index = [_Sounding(v) for v in lower]
    rows = []
    t = 0
    for n in sorted(melody):
        dt = min(MAX_DT, n.start - t)
        t = n.start
        ivs = []
        for idx in index:
            p = idx.at(n.start)
            iv = n.pitch - p if p is not None else NONE
            ivs.append(iv if 0 <= iv <= MAX_INTERVAL else NONE)
        rows.append((dt, n.pitch, *ivs))
    return np.asarray(rows, dtype=np.int16).reshape(-1, 5)


class _Sounding:
    """Which pitch of a voice sounds at a time (voices are queried in increasing time)."""

    def __init__(self, notes: Sequence[GridNote]):
        self.notes = sorted(notes)
        self.i = 0

    def at(self, t: int) -> int | None:
        notes = self.notes
        while self.i < len(notes) and notes[self.i].start + notes[self.i].dur <= t:
            self.i += 1
        j = self.i
        best = None
        while j < len(notes) and notes[j].start <= t:
            if notes[j].start + notes[j].dur > t:
                best = notes[j].pitch if best is None else max(best, notes[j].pitch)
            j += 1
        return best
