"""prepare: bad files skipped with reasons, deterministic split, cached tensors."""

import json
import random

import torch

from bridge.model.dataset import load_meta, load_split, prepare, split_of
from bridge.model.encoding import GridNote
from bridge.model.midifile import write_midi


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
