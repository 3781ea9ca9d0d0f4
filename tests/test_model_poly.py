"""The polyphonic note model: every note of a chord folded, chordal answers, accompaniment
from the same model (dt = 0 events), the monophonic path unchanged, the chorale export."""

import importlib.util
import random

import numpy as np
import pytest
import torch

from midi_bridge.generators.rnn import RNNGenerator
from midi_bridge.model import checkpoint
from midi_bridge.model.encoding import NOTE_SPEC, GridNote
from midi_bridge.model.rnn import EventRNN, ModelConfig
from midi_bridge.plugin import Context, PlayedEvent, PluginError
from midi_bridge.training.chords import _onset_stats, measure, passages
from midi_bridge.training.cli import main as model_cli
from midi_bridge.training.dataset import prepare
from midi_bridge.training.midifile import read_midi, write_midi

TINY = ["--hidden", "32", "--emb", "16", "--head", "32", "--layers", "1", "--batch-events", "512", "--quiet"]
CHORDS = [(72, 67, 64, 48), (74, 69, 65, 50), (71, 67, 62, 43), (72, 67, 64, 48)]


def ev(on, pitch, beat, vel=90):
    return PlayedEvent(on=on, pitch=pitch, velocity=vel, channel=0, beat=beat, seconds=beat / 2)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=16, layers=1, emb=8, head=16)
    checkpoint.save(d / "mono.pt", EventRNN(NOTE_SPEC, 1, cfg), {"styles": ["folk"], "mono": True})
    checkpoint.save(d / "poly.pt", EventRNN(NOTE_SPEC, 1, cfg), {"styles": ["any"], "mono": False})
    return d


def _chordal_corpus(root, n=24, seed=0):
    """Block chords (four voices, one onset each beat) and single lines, one style."""
    rng = random.Random(seed)
    (root / "any").mkdir(parents=True)
    for i in range(n):
        t, voices = 0, [[], [], [], []]
        for _ in range(24):
            chord = rng.choice(CHORDS)
            shift = rng.choice((-2, 0, 2))
            for v, p in enumerate(chord):
                voices[v].append(GridNote(t, p + shift, 12, 80))
            t += 12
        write_midi(root / "any" / f"c{i}.mid", voices)
        t, line = 0, []
        for _ in range(48):
            line.append(GridNote(t, rng.choice((60, 62, 64, 65, 67, 69, 71, 72)), 6, 80))
            t += 6
        write_midi(root / "any" / f"m{i}.mid", [line])
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("poly")
    _chordal_corpus(root / "src")
    prepare([root / "src"], root / "ds", log=lambda *a, **k: None)
    assert model_cli(["train", "-d", str(root / "ds"), "-o", str(root / "run"), "--epochs", "40",
                      "--lr", "0.01", "--seed", "0", *TINY]) == 0
    return root


def make(path, **kw):
    cfg = {"checkpoint": str(path), "harmonizer": None, "seed": 1, "device": "cpu"}
    cfg.update(kw)
    return RNNGenerator(cfg)


def _spy(g):
    fed = []
    orig = g.st.feed

    def feed(event):
        fed.append(tuple(int(v) for v in event))
        return orig(event)

    g.st.feed = feed
    return fed


def play_chords(g, chords, beat=0.0, length=1.0, jitter=0.0):
    for chord in chords:
        order = list(chord)
        random.Random(int(beat * 7)).shuffle(order)  # played in any order
        for j, p in enumerate(order):
            g.observe(ev(True, p, beat + j * jitter))
        for p in chord:
            g.observe(ev(False, p, beat + length * 0.9))
        beat += length
    return beat


def test_plugin_observes_every_note_of_a_chord(ckpts):
    g = make(ckpts / "poly.pt")
    fed = _spy(g)
    play_chords(g, CHORDS[:2], jitter=0.01)  # a few ms apart, as a hand plays them
    assert [e[1] for e in fed] == [72, 67, 64, 48, 74, 69, 65, 50]  # high -> low, as trained
    assert [e[0] for e in fed] == [0, 0, 0, 0, 12, 0, 0, 0]  # one onset per chord
    assert all(e[2] == 11 for e in fed)  # 0.9 beat held (from the chord's onset)


def test_monophonic_checkpoint_as_today(ckpts):
    g = make(ckpts / "mono.pt", harmonizer=None)
    fed = _spy(g)
    play_chords(g, CHORDS[:2])
    g.continuation(Context(tempo_bpm=120, beat=2.0)).close()
    assert [e[1] for e in fed] == [72, 74]  # only the top note of each chord
    assert not g.acc_model
    with pytest.raises(PluginError, match="polyphonic"):
        make(ckpts / "mono.pt", accompaniment="model")
    with pytest.raises(ValueError, match="accompaniment"):
        make(ckpts / "poly.pt", accompaniment="choir")


def test_accompaniment_from_the_note_model_is_dt0_events(ckpts):
    g = make(ckpts / "poly.pt", voices=3, low=30, high=90)
    assert g.acc_model and g.harm is None  # auto: a polyphonic checkpoint accompanies itself
    fed = _spy(g)
    e = ev(True, 79, 4.0)
    g.observe(e)
    notes = g.accompany(e, Context(tempo_bpm=100, beat=4.0))
    assert len(notes) == 3
    assert all(n.start == 0.0 and n.duration is None for n in notes)
    pitches = [n.pitch for n in notes]
    assert pitches == sorted(pitches, reverse=True) and pitches[0] < 79 and pitches[-1] >= 30
    assert fed[0][1] == 79 and fed[0][2] >= 1  # the played note, folded at once
    assert [f[0] for f in fed[1:]] == [0, 0, 0] and [f[1] for f in fed[1:]] == pitches
    g.observe(ev(False, 79, 5.0))  # its note-off folds nothing more
    assert len(fed) == 4
    e2 = ev(True, 76, 5.0)
    g.observe(e2)
    assert len(g.accompany(e2, Context(tempo_bpm=100, beat=5.0))) == 3
    assert fed[4][:2] == (12, 76)


def test_polyphonic_checkpoint_answers_chords_with_chords(trained):
    g = make(trained / "run" / "best.pt", temperature=0.7)
    chordal = []
    for seed in range(3):
        g.reset()
        g.st.rng = np.random.default_rng(seed)
        end = play_chords(g, CHORDS * 2)
        it = g.continuation(Context(tempo_bpm=120, beat=end, max_notes=16, max_beats=16))
        starts = [n.start for n, _ in zip(it, range(16))]
        it.close()
        onsets, chords, _ = _onset_stats(starts)
        chordal.append(chords)
    assert sum(chordal) >= 6, chordal  # simultaneous onsets of two or more notes


def test_chords_measure_on_a_dataset(trained):
    res = measure(RNNGenerator, str(trained / "run" / "best.pt"), str(trained / "ds"), split="train", prompt=16,
                  answer=16, per_piece=1)
    assert res["passages"] >= 20 and 0.1 < res["corpus_chord_share"] < 0.5, res
    assert res["answer_chord_share"] > 0.05, res


def test_passages_and_onset_stats():
    notes = [GridNote(t, 60 + i, 3) for t in range(0, 60, 6) for i in range(2)]
    out = passages(notes, prompt=5, answer=4, per_piece=2)
    assert out and all(len(p) % 2 == 0 and p[0].start < a[0].start for p, a in out)  # whole chords
    assert _onset_stats([0.0, 0.0, 0.5, 1.0, 1.0, 1.0]) == (3, 2, 6)


@pytest.mark.skipif(importlib.util.find_spec("music21") is None, reason="needs the corpus extra (music21)")
def test_corpus_export_writes_all_chorale_voices_and_licences(tmp_path):
    assert model_cli(["corpus", "export", "-o", str(tmp_path), "--no-folk", "--limit", "1"]) == 0
    piece = read_midi(tmp_path / "chorale" / "bach" / "riemenschneider-001.mid")
    assert len(piece.tracks) == 4 and all(len(t) > 10 for t in piece.tracks)
    means = sorted(np.mean([n.pitch for n in t]) for t in piece.tracks)
    assert means[-1] - means[0] > 12  # soprano to bass
    text = (tmp_path / "LICENCES.txt").read_text()
    assert "chorale/" in text and "four voices" in text and "essenFolksong" in text
