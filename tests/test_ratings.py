"""bridge/stage/ratings.py: the non-blocking writer and the loader; plugins/rnn.py's rating_context."""

import json
import logging

import torch

from midi_bridge.model import checkpoint
from midi_bridge.model.encoding import NOTE_SPEC
from midi_bridge.model.rnn import EventRNN, ModelConfig
from midi_bridge.plugin import Context, PlayedEvent
from midi_bridge.stage.ratings import RatingsWriter, load_ratings


def record(rating, answer=((64, 90, 0.0, 0.5), (65, 90, 0.5, 0.5))):
    return {"rating": rating, "generator": "rnn", "context": {"checkpoint": "melody.pt"},
            "phrase": [[60, 90, 0.0], [62, 90, 0.5]], "answer": [list(a) for a in answer], "bpm": 120.0}


def test_writer_appends_and_loader_round_trips(tmp_path):
    path = tmp_path / "sub" / "ratings.jsonl"
    w = RatingsWriter(path)
    w.add(record(1))
    w.add(record(-1))
    w.close()
    assert w.written == 2 and w.errors == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    back = load_ratings(path)
    assert [r["rating"] for r in back] == [1, -1]
    assert back[0]["answer"] == [[64, 90, 0.0, 0.5], [65, 90, 0.5, 0.5]]
    assert back[0]["phrase"][1] == [62, 90, 0.5] and back[0]["bpm"] == 120.0
    assert "T" in back[0]["time"]  # ISO time added by the writer
    w2 = RatingsWriter(path)  # appends to an existing file
    w2.add(record(1))
    w2.close()
    assert len(load_ratings(path)) == 3


def test_loader_skips_bad_lines_with_a_counted_warning(tmp_path, caplog):
    path = tmp_path / "r.jsonl"
    good = json.dumps(dict(record(1), time="2026-01-01T00:00:00+00:00"))
    path.write_text("\n".join([good, "{not json", json.dumps({"rating": 5, "answer": []}),
                               json.dumps([1, 2]), "", good]) + "\n")
    with caplog.at_level(logging.WARNING, logger="midi_bridge.ratings"):
        back = load_ratings(path)
    assert len(back) == 2
    assert "skipped 3 bad line(s)" in caplog.text


def test_writer_add_never_raises_and_unwritable_records_are_counted(tmp_path):
    w = RatingsWriter(tmp_path / "r.jsonl")
    w.add({"rating": 1, "answer": [], "bad": object()})  # not JSON-able: counted, not raised
    w.add(record(1))
    w.close()
    w.add(record(1))  # after close: ignored
    assert w.errors == 1 and w.written == 1


def test_rnn_rating_context_has_checkpoint_state_and_temperature(tmp_path):
    from midi_bridge.generators.rnn import RNNGenerator

    torch.manual_seed(0)
    checkpoint.save(tmp_path / "mel.pt", EventRNN(NOTE_SPEC, 2, ModelConfig(hidden=16, layers=1, emb=8, head=16)),
                    {"styles": ["folk", "chorale"], "mono": True})
    g = RNNGenerator({"checkpoint": str(tmp_path / "mel.pt"), "harmonizer": None, "seed": 1, "device": "cpu",
                      "temperature": 0.7})
    for i, p in enumerate((60, 62, 64)):
        g.observe(PlayedEvent(True, p, 90, 0, i * 0.5, i * 0.25))
        g.observe(PlayedEvent(False, p, 0, 0, i * 0.5 + 0.4, i * 0.25 + 0.2))
    it = g.continuation(Context(tempo_bpm=120, beat=2.0, max_notes=4))
    before = g.st.snapshot()[0].flatten().tolist()
    notes = [next(it) for _ in range(3)]
    assert notes
    ctx = g.rating_context()
    json.dumps(ctx)
    assert ctx["checkpoint"] == "mel.pt" and ctx["temperature"] == 0.7 and ctx["style"] == "folk"
    assert ctx["state_shape"] == [1, 16] and len(ctx["state"]) == 16
    assert ctx["state"] == [round(v, 4) for v in before]  # the state the answer was sampled from
    assert ctx["state"] != [round(v, 4) for v in g.st.snapshot()[0].flatten().tolist()]  # not the state now
    it.close()


def test_a_line_cut_by_a_crash_does_not_swallow_the_next_sessions_first_rating(tmp_path):
    """A power cut or a full disk can leave the last line without its newline: the next
    session's first rating must start on a line of its own, not be glued to the fragment."""
    path = tmp_path / "r.jsonl"
    good = json.dumps(dict(record(1), time="2026-01-01T00:00:00+00:00"))
    path.write_text(good + "\n" + good[:40])          # the second line was cut
    w = RatingsWriter(path)
    w.add(record(-1))
    w.close()
    assert [r["rating"] for r in load_ratings(path)] == [1, -1]
