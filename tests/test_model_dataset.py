"""prepare: bad files skipped with reasons, deterministic split, cached tensors."""

import json
import random

import pytest
import torch

from midi_bridge.training.dataset import load_meta, load_split, prepare, split_of
from midi_bridge.model.encoding import GridNote
from midi_bridge.training.midifile import write_midi


def make_corpus(root, n=30, seed=0, voices=1):
    rng = random.Random(seed)
    for style in ("folk", "chorale"):
        (root / style).mkdir(parents=True)
        for i in range(n):
            tracks = []
            for v in range(voices):
                t, notes = 0, []
                for _ in range(rng.randint(10, 40)):
                    d = rng.choice([3, 6, 12])
                    notes.append(GridNote(t, rng.randint(60, 72) - 12 * v, d, 90))
                    t += d
                tracks.append(notes)
            write_midi(root / style / f"{i}.mid", tracks)
    (root / "folk" / "junk.mid").write_bytes(b"garbage")
    (root / "folk" / "copy.mid").write_bytes((root / "folk" / "0.mid").read_bytes())
    return root


def test_prepare_counts_split_and_skips(tmp_path, capsys):
    src = make_corpus(tmp_path / "src")
    meta = prepare([src], tmp_path / "ds", mono=True, transpose=1)
    out = capsys.readouterr()
    assert "train:" in out.out and "junk.mid" in out.err
    reasons = {s["file"].rsplit("/", 1)[1]: s["reason"] for s in meta["skipped"]}
    assert reasons["junk.mid"].startswith("unreadable MIDI")
    assert reasons["copy.mid"].startswith("duplicate of")
    assert set(meta["styles"]) == {"folk", "chorale"}
    files = sum(meta["counts"][s]["files"] for s in ("train", "val", "test"))
    assert files == 60
    for split in ("train", "val", "test"):
        for f in meta["files"][split]:
            assert split_of(f["sha256"]) == split
    tr = load_split(tmp_path / "ds", "train")
    assert len(tr) == meta["counts"]["train"]["pieces"] > meta["counts"]["train"]["files"]  # transposed copies
    assert tr.events.dtype == torch.int16 and tr.piece(0).shape[1] == 4
    # deterministic: the same inputs give the same tensors
    meta2 = prepare([src], tmp_path / "ds2", mono=True, transpose=1, jobs=2)
    assert meta2["dataset_hash"] == meta["dataset_hash"]
    assert load_meta(tmp_path / "ds")["spec"]["view"] == "notes"
    json.dumps(meta)


def test_prepare_harmony_view(tmp_path):
    src = make_corpus(tmp_path / "src", n=6, voices=4)
    meta = prepare([src / "chorale"], tmp_path / "ds", view="harmony", style="chorale")
    assert meta["styles"] == ["chorale"]
    split = next(s for s in ("train", "val", "test") if meta["counts"][s]["pieces"])
    assert load_split(tmp_path / "ds", split).events.shape[1] == 5


def test_prepare_nothing_usable_says_so(tmp_path, capsys):
    """A folder of only bad files is an error (exit 2) that lists each file's reason, and
    no empty dataset is written; a folder without MIDI files says so."""
    from midi_bridge.training.cli import main as model_cli

    src = tmp_path / "bad"
    src.mkdir()
    (src / "junk.mid").write_bytes(b"garbage")
    (src / "notes.txt").write_text("not MIDI")
    write_midi(src / "short.mid", [[GridNote(0, 60, 12)]])
    assert model_cli(["prepare", str(src), "-o", str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err
    assert "junk.mid: unreadable MIDI" in err and "short.mid: too short" in err
    assert "none of the 2 MIDI file(s) is usable" in err
    assert not (tmp_path / "ds").exists()
    (tmp_path / "empty").mkdir()
    assert model_cli(["prepare", str(tmp_path / "empty"), "-o", str(tmp_path / "ds")]) == 2
    assert "no MIDI files" in capsys.readouterr().err and not (tmp_path / "ds").exists()


def test_a_huge_file_is_skipped_without_being_read(tmp_path, monkeypatch):
    from midi_bridge.training import dataset

    big = tmp_path / "big.mid"
    write_midi(big, [[GridNote(i * 12, 60 + i % 12, 12) for i in range(40)]])
    monkeypatch.setattr(dataset, "MAX_FILE_BYTES", big.stat().st_size - 1)
    monkeypatch.setattr(type(big), "read_bytes", lambda self: pytest.fail("read"))
    rows, reason, digest = dataset.encode_file(big, "notes", mono=True)
    assert rows is None and "over the" in reason and "limit for one MIDI file" in reason


def _type0(path, voices, n=12):
    """A type 0 file: voice v on channel v (pitches from voices[v]), each voice's notes a
    quarter long; voice 0 (the melody) is silent on the off-beats, the others are not."""
    import mido

    events = []  # (tick, on, channel, pitch)
    for v, base in enumerate(voices):
        step = 480 if v == 0 else 240
        for i in range(n * 480 // step):
            events += [(i * step, 1, v, base + i % 3), ((i + 1) * step - (0 if v == 0 else 240) // 2, 0, v, base + i % 3)]
    events.sort(key=lambda e: (e[0], e[1]))
    tr, last = mido.MidiTrack(), 0
    for tick, on, ch, pitch in events:
        tr.append(mido.Message("note_on", channel=ch, note=pitch, velocity=80 if on else 0, time=tick - last))
        last = tick
    mid = mido.MidiFile(type=0, ticks_per_beat=480)
    mid.tracks.append(tr)
    mid.save(path)


def test_type0_file_channels_are_tracks(tmp_path):
    """In a type 0 file (all channels in one track) --mono keeps the melody channel only,
    and the harmony view finds the lower voices."""
    from midi_bridge.training.dataset import encode_file
    from midi_bridge.training.midifile import read_midi

    _type0(tmp_path / "t0.mid", [76, 64, 55, 43])
    piece = read_midi(tmp_path / "t0.mid")
    assert len(piece.tracks) == 4
    rows, info, _ = encode_file(tmp_path / "t0.mid", "notes", mono=True)
    assert rows is not None and sorted(set(rows[:, 1].tolist())) == [76, 77, 78]
    assert len(rows) == 12 and (rows[1:, 0] == 12).all()
    rows, info, _ = encode_file(tmp_path / "t0.mid", "harmony", mono=False)
    assert rows is not None, info
    assert rows[:, 1].tolist()[:3] == [76, 77, 78] and (rows[:, 2:] != 48).all()
