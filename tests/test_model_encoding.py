"""Event encoding: exact MIDI -> events -> MIDI round trips at the grid."""

import random

import mido
import numpy as np
import pytest

from midi_bridge.model.encoding import (HARMONY_SPEC, MAX_DT, NONE, NOTE_SPEC, WAIT, GridNote, bin_to_vel,
                                   decode_notes, encode_notes, harmony_rows, sort_notes, to_monophonic)
from midi_bridge.training.midifile import MidiFileError, read_midi, write_midi


def random_piece(rng, poly: bool, n=200):
    notes, t = [], 0
    for _ in range(n):
        t += rng.choice([0, 1, 3, 4, 6, 8, 12, 24, 30, 200]) if poly else rng.choice([1, 3, 4, 6, 12, 24, 150])
        chord = rng.sample(range(40, 90), rng.choice([1, 2, 3]) if poly else 1)
        for p in chord:
            dur = rng.randint(1, 96) if poly else None
            notes.append((t, p, dur, bin_to_vel(rng.randint(0, 31))))
    out, seen = [], set()
    for i, (s, p, d, v) in enumerate(notes):
        if (s, p) in seen:
            continue
        seen.add((s, p))
        if d is None:  # monophonic: end before the next onset
            nxt = next((x[0] for x in notes[i + 1:] if x[0] > s), s + 12)
            d = min(96, nxt - s)
        out.append(GridNote(s, p, d, v))
    if poly:  # no overlapping notes of one pitch (the cleaner cuts them)
        out = [n for n in out if not any(m.pitch == n.pitch and m.start < n.start < m.start + m.dur for m in out)]
    return sort_notes(out)


@pytest.mark.parametrize("poly", [False, True])
def test_events_round_trip(poly):
    notes = random_piece(random.Random(poly), poly)
    ev = encode_notes(notes)
    assert ev.shape[1] == 4 and ev.dtype == np.int16
    assert (ev[:, 0] <= MAX_DT).all()
    assert (ev[:, 1] == WAIT).any(), "long gaps use WAIT events"
    assert decode_notes(ev) == notes
    for i, f in enumerate(NOTE_SPEC.fields):
        assert ev[:, i].min() >= 0 and ev[:, i].max() < f.size


@pytest.mark.parametrize("poly", [False, True])
def test_midi_round_trip(tmp_path, poly):
    notes = random_piece(random.Random(7 + poly), poly)
    path = tmp_path / "x.mid"
    write_midi(path, [notes], tempo_bpm=97.0)
    piece = read_midi(path)
    assert piece.tempo_bpm == pytest.approx(97.0, abs=0.01)
    back = decode_notes(encode_notes(piece.all_notes()))
    assert back == notes
    # and once more through MIDI: a fixed point
    write_midi(tmp_path / "y.mid", [back], tempo_bpm=97.0)
    assert decode_notes(encode_notes(read_midi(tmp_path / "y.mid").all_notes())) == notes


def test_off_grid_times_snap(tmp_path):
    mid = mido.MidiFile(ticks_per_beat=96)
    tr = mido.MidiTrack()
    # onset 0.26 beat -> step 3; 1/3 beat triplet is exact on the grid
    tr += [mido.Message("note_on", note=60, velocity=100, time=25), mido.Message("note_off", note=60, time=32),
           mido.Message("note_on", note=62, velocity=100, time=0), mido.Message("note_on", note=62, velocity=0, time=0),
           mido.Message("note_on", note=64, velocity=100, time=0), mido.Message("note_off", note=64, time=96)]
    mid.tracks.append(tr)
    mid.save(tmp_path / "a.mid")
    piece = read_midi(tmp_path / "a.mid")
    assert [(n.start, n.pitch, n.dur) for n in piece.all_notes()] == [(3, 60, 4), (7, 64, 12)]
    assert piece.stats.counts["zero-length note dropped"] == 1


def test_cleaning_drums_overlaps_tempo(tmp_path):
    mid = mido.MidiFile(ticks_per_beat=12)
    meta = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(2000))])
    drums = mido.MidiTrack([mido.Message("note_on", channel=9, note=36, velocity=100),
                            mido.Message("note_off", channel=9, note=36, time=6)])
    mel = mido.MidiTrack([mido.Message("note_on", note=60, velocity=100),
                          mido.Message("note_on", note=60, velocity=100, time=6),
                          mido.Message("note_off", note=60, time=6), mido.Message("note_off", note=60, time=6)])
    mid.tracks += [meta, drums, mel]
    mid.save(tmp_path / "b.mid")
    piece = read_midi(tmp_path / "b.mid")
    assert len(piece.tracks) == 1 and piece.tempo_bpm == 120.0
    assert [(n.start, n.dur) for n in piece.tracks[0]] == [(0, 6), (6, 12)]
    c = piece.stats.counts
    assert c["drum track dropped"] == 1 and c["absurd tempo ignored"] == 1 and c["overlapping note cut"] == 1


def test_bad_files(tmp_path):
    (tmp_path / "junk.mid").write_bytes(b"not midi at all")
    with pytest.raises(MidiFileError, match="unreadable"):
        read_midi(tmp_path / "junk.mid")
    mid = mido.MidiFile()
    mid.tracks.append(mido.MidiTrack([mido.MetaMessage("track_name", name="empty")]))
    mid.save(tmp_path / "empty.mid")
    with pytest.raises(MidiFileError, match="no notes"):
        read_midi(tmp_path / "empty.mid")


def test_monophonic_skyline():
    notes = [GridNote(0, 60, 12), GridNote(0, 67, 24), GridNote(6, 64, 12)]
    assert to_monophonic(notes) == [GridNote(0, 67, 6), GridNote(6, 64, 12)]
    ev = encode_notes(to_monophonic(notes))
    assert (ev[:, 0] > 0).sum() == len(ev) - 1  # only the first onset has dt 0


def test_harmony_rows():
    sop = [GridNote(0, 72, 12), GridNote(12, 74, 12), GridNote(24, 76, 12)]
    alto = [GridNote(0, 67, 24), GridNote(24, 67, 12)]
    tenor = [GridNote(0, 64, 36)]
    bass = [GridNote(0, 48, 12), GridNote(24, 24, 12)]  # 52 semitones below: out of range
    rows = harmony_rows(sop, [alto, tenor, bass])
    assert rows.tolist() == [[0, 72, 24, 8, 5], [12, 74, NONE, 10, 7], [12, 76, NONE, 12, 9]]
    assert rows.shape[1] == len(HARMONY_SPEC.fields)


def test_zero_length_note_written_off_before_on(tmp_path):
    """music21 writes grace notes as note-off then note-on at one tick: no stuck note."""
    mid = mido.MidiFile(ticks_per_beat=12)
    mid.tracks.append(mido.MidiTrack([
        mido.Message("note_on", note=60, velocity=90), mido.Message("note_off", note=60, time=12),
        mido.Message("note_off", note=74, time=0), mido.Message("note_on", note=74, velocity=90, time=0),
        mido.Message("note_on", note=72, velocity=90, time=0), mido.Message("note_off", note=72, time=12)]))
    mid.save(tmp_path / "g.mid")
    piece = read_midi(tmp_path / "g.mid")
    assert [(n.start, n.pitch, n.dur) for n in piece.all_notes()] == [(0, 60, 12), (12, 72, 12)]
    assert piece.stats.counts["zero-length note dropped"] == 1


def test_corrupt_huge_delta_time_is_refused(tmp_path):
    """A delta time of 2**28 ticks (a corrupt file) would encode as hundreds of thousands
    of WAIT rows (GBs at small ticks_per_beat); the file is skipped with a reason."""
    from midi_bridge.training.dataset import encode_file

    mid = mido.MidiFile(ticks_per_beat=96)
    tr = mido.MidiTrack()
    for i in range(10):
        tr += [mido.Message("note_on", note=60 + i, velocity=90, time=0x0FFFFFFF if i == 5 else 0),
               mido.Message("note_off", note=60 + i, time=48)]
    mid.tracks.append(tr)
    mid.save(tmp_path / "gap.mid")
    with pytest.raises(MidiFileError, match="silence of 2,796,203 beats"):
        read_midi(tmp_path / "gap.mid")
    rows, reason, _ = encode_file(tmp_path / "gap.mid", "notes", mono=False)
    assert rows is None and "corrupt timing" in reason


def test_doubled_note_offs_keep_repeated_notes(tmp_path):
    """Some files end each note twice (note_on velocity 0 and note_off); a repeated note
    starting at that tick is a real note, not a zero-length one."""
    M = mido.Message
    mid = mido.MidiFile(ticks_per_beat=12)
    tr = mido.MidiTrack()
    for i in range(3):
        tr += [M("note_on", note=60, velocity=90, time=0), M("note_on", note=60, velocity=0, time=12),
               M("note_off", note=60, time=0)]
    mid.tracks.append(tr)
    mid.save(tmp_path / "d.mid")
    piece = read_midi(tmp_path / "d.mid")
    assert [(n.start, n.pitch, n.dur) for n in piece.all_notes()] == [(0, 60, 12), (12, 60, 12), (24, 60, 12)]
    assert not piece.stats.counts
