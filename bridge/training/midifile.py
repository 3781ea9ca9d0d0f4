"""Reading and cleaning .mid files with mido, and writing grid notes back to MIDI.

Cleaning (each counted in :class:`CleanStats`): drum tracks and channel 10 notes are
dropped, the channels of a track (every track of a type 0 file) read as separate tracks,
empty tracks ignored, unterminated notes closed at the track's end, notes are
snapped to the grid, zero-length notes dropped (a note that only becomes zero-length by
snapping keeps one step), overlapping notes of one pitch are cut where the next starts,
duplicates removed, notes longer than 8 beats clipped, and tempos outside
20-400 bpm ignored (times are in beats, so tempo only matters when writing back).  A file
with a silence of more than :data:`MAX_GAP_BEATS` beats (a corrupt delta time) is refused.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import mido

from midi_bridge.model.encoding import MAX_DUR, STEPS_PER_BEAT, GridNote, bin_to_vel, vel_to_bin

DRUM_CHANNEL = 9
TEMPO_RANGE = (20.0, 400.0)
MAX_GAP_BEATS = 4096  # a longer silence (34 minutes at 120 bpm) skips the file


class MidiFileError(Exception):
    """A file that cannot be used; the message is the reason shown to people."""


@dataclass
class CleanStats:
    counts: Counter = field(default_factory=Counter)

    def add(self, what: str, n: int = 1) -> None:
        if n:
            self.counts[what] += n


@dataclass
class Piece:
    """A cleaned file: one list of grid notes per (non-empty, non-drum) track."""

    tracks: list[list[GridNote]]
    tempo_bpm: float
    stats: CleanStats

    def all_notes(self) -> list[GridNote]:
        return [n for t in self.tracks for n in t]


def read_midi(path: str | Path, data: bytes | None = None) -> Piece:
    """Read and clean one file.  Raises :class:`MidiFileError` with a reason."""
    try:
        if data is not None:
            import io
            mid = mido.MidiFile(file=io.BytesIO(data), clip=True)
        else:
            mid = mido.MidiFile(str(path), clip=True)
    except (OSError, EOFError, ValueError, KeyError, IndexError) as exc:
        raise MidiFileError(f"unreadable MIDI ({type(exc).__name__}: {exc})") from exc
    if mid.type == 2:
        raise MidiFileError("type 2 (asynchronous) MIDI files are not supported")
    tpb = mid.ticks_per_beat
    if not tpb or tpb <= 0:
        raise MidiFileError("SMPTE time division (no beats) is not supported")
    stats = CleanStats()
    tempo = None
    tracks: list[list[GridNote]] = []
    for ti, track in enumerate(mid.tracks):
        raw = _track_notes(track, stats)
        for msg in track:
            if msg.type == "set_tempo":
                bpm = mido.tempo2bpm(msg.tempo)
                if TEMPO_RANGE[0] <= bpm <= TEMPO_RANGE[1]:
                    tempo = bpm if tempo is None else tempo
                else:
                    stats.add("absurd tempo ignored")
        if raw is None:
            stats.add("drum track dropped")
            continue
        # one part per channel: a type 0 file (or any track) that carries melody, bass and
        # chords on separate channels is read as separate tracks, as a type 1 file would be
        channels = sorted({r[4] for r in raw})
        parts = [[r[:4] for r in raw if r[4] == ch] for ch in channels] or [[]]
        for part in parts:
            notes = _snap(part, tpb, len(tracks), stats)
            if notes:
                tracks.append(notes)
            else:
                stats.add("empty track ignored")
    if not tracks:
        raise MidiFileError("no notes (empty or drums only)")
    onsets = sorted({0} | {n.start for t in tracks for n in t})
    gap = max(b - a for a, b in zip(onsets, onsets[1:])) if len(onsets) > 1 else 0
    if gap > MAX_GAP_BEATS * STEPS_PER_BEAT:  # a corrupt delta time; encoding it would take GBs
        raise MidiFileError(f"a silence of {gap // STEPS_PER_BEAT:,} beats between notes "
                            f"(more than {MAX_GAP_BEATS:,}: corrupt timing?)")
    return Piece(tracks, tempo or 120.0, stats)


def _track_notes(track, stats: CleanStats):
    """(start_tick, end_tick, pitch, vel, channel) of one track, or None for a drum track."""
    now = 0
    open_: dict[tuple[int, int], list[tuple[int, int]]] = {}
    orphan_off: dict[tuple[int, int], int] = {}  # note-offs with nothing open, by tick
    closed: dict[tuple[int, int], int] = {}  # the tick each key's last note ended
    out = []
    drums = other = 0
    name = ""
    for msg in track:
        now += msg.time
        if msg.type == "track_name":
            name = msg.name.lower()
        elif msg.type == "note_on" and msg.velocity > 0:
            if msg.channel == DRUM_CHANNEL:
                drums += 1
                continue
            other += 1
            key = (msg.channel, msg.note)
            if orphan_off.get(key) == now:  # a zero-length note written off-before-on
                del orphan_off[key]
                stats.add("zero-length note dropped")
                continue
            open_.setdefault(key, []).append((now, msg.velocity))
        elif msg.type in ("note_off", "note_on"):
            key = (msg.channel, msg.note)
            stack = open_.get(key)
            if stack:
                start, vel = stack.pop(0)
                out.append((start, now, msg.note, vel, msg.channel))
                closed[key] = now
            elif closed.get(key) != now:  # not a doubled note-off (note_on 0 + note_off) of a note just ended
                orphan_off[key] = now
    for (channel, pitch), stack in open_.items():
        for start, vel in stack:
            stats.add("unterminated note closed")
            out.append((start, max(now, start), pitch, vel, channel))
    if drums:
        stats.add("drum notes dropped", drums)
    if other == 0 and (drums or "drum" in name):
        return None
    return out


def _snap(raw, tpb: int, track: int, stats: CleanStats) -> list[GridNote]:
    by_key: dict[tuple[int, int], GridNote] = {}
    for start, end, pitch, vel in raw:
        if end <= start:
            stats.add("zero-length note dropped")
            continue
        s = round(start * STEPS_PER_BEAT / tpb)
        e = round(end * STEPS_PER_BEAT / tpb)
        dur = e - s
        if dur < 1:
            dur = 1
        if dur > MAX_DUR:
            stats.add("long note clipped")
            dur = MAX_DUR
        if (s, pitch) in by_key:
            stats.add("duplicate note removed")
            if by_key[(s, pitch)].dur >= dur:
                continue
        by_key[(s, pitch)] = GridNote(s, pitch, dur, bin_to_vel(vel_to_bin(vel)), track)
    notes = sorted(by_key.values(), key=lambda n: (n.pitch, n.start))
    out = []
    for i, n in enumerate(notes):
        nxt = notes[i + 1] if i + 1 < len(notes) else None
        if nxt is not None and nxt.pitch == n.pitch and n.start + n.dur > nxt.start:
            stats.add("overlapping note cut")
            n = GridNote(n.start, n.pitch, nxt.start - n.start, n.vel, n.track)
        out.append(n)
    return sorted(out, key=lambda n: (n.start, -n.pitch))


def write_midi(path: str | Path | None, tracks: list[list[GridNote]], tempo_bpm: float = 120.0,
               ticks_per_beat: int = 480, channel: int = 0) -> mido.MidiFile:
    """Write grid notes (one list per track) as a type 1 file; returns the MidiFile."""
    scale = ticks_per_beat // STEPS_PER_BEAT
    mid = mido.MidiFile(type=1, ticks_per_beat=ticks_per_beat)
    meta = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo_bpm), time=0)])
    mid.tracks.append(meta)
    for notes in tracks:
        evs = []
        for n in notes:
            evs.append(((n.start + n.dur) * scale, 0, n.pitch, 0))
            evs.append((n.start * scale, 1, n.pitch, n.vel))
        evs.sort()
        tr = mido.MidiTrack()
        last = 0
        for tick, on, pitch, vel in evs:
            kind = "note_on" if on else "note_off"
            tr.append(mido.Message(kind, note=pitch, velocity=vel, channel=channel, time=tick - last))
            last = tick
        mid.tracks.append(tr)
    if path is not None:
        mid.save(str(path))
    return mid
