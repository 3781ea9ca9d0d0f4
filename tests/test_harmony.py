"""Tests of the rule-based HarmonyGenerator (plugins/harmony.py)."""

from __future__ import annotations

import math
import random

import pytest

from midi_bridge.plugin import Context, Generator, PlayedEvent
from midi_bridge.generators.harmony import MAJOR_PROFILE, MINOR_PROFILE, SCALES, HarmonyGenerator, choose_triad
from midi_bridge.model.keys import MAJOR, MINOR, parse_key

CTX = Context(tempo_bpm=120.0, beat=0.0)
C_MAJOR_SCALE = [60, 62, 64, 65, 67, 69, 71, 72, 71, 69, 67, 65, 64, 62, 60]
A_HARMONIC_MINOR = [57, 59, 60, 62, 64, 65, 68, 69, 68, 65, 64, 62, 60, 59, 57, 60, 64, 69, 68, 69]


def on(pitch, velocity=100):
    return PlayedEvent(True, pitch, velocity, 0, 0.0, 0.0)


def fed(pitches, **config):
    gen = HarmonyGenerator(config)
    for p in pitches:
        gen.observe(on(p))
        gen.observe(PlayedEvent(False, p, 0, 0, 0.5, 0.25))
    return gen


def triad_classes():
    """Every major, minor and diminished triad as a set of pitch classes."""
    return [frozenset((r + i) % 12 for i in shape) for r in range(12) for shape in ((0, 4, 7), (0, 3, 7), (0, 3, 6))]


def pearson(x, y):
    mx, my = sum(x) / 12, sum(y) / 12
    num = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return num / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def test_plugin_declaration():
    assert issubclass(HarmonyGenerator, Generator)
    assert HarmonyGenerator.modes == frozenset({"accompany"})
    assert {"voices", "velocity_scale", "low", "key"} <= set(HarmonyGenerator.default_config)


def test_key_of_c_major_scale():
    assert fed(C_MAJOR_SCALE).key() == (0, MAJOR)


def test_key_of_a_harmonic_minor():
    assert fed(A_HARMONIC_MINOR).key() == (9, MINOR)


def test_key_follows_a_modulation():
    gen = fed(C_MAJOR_SCALE * 2 + [p + 7 for p in C_MAJOR_SCALE] * 3)  # then G major
    assert gen.key() == (7, MAJOR)


def test_incremental_scores_match_krumhansl_schmuckler():
    rng = random.Random(3)
    for _ in range(20):
        gen = fed([rng.choice([60, 62, 63, 65, 67, 70, 71, 72, 74]) for _ in range(rng.randrange(5, 40))])
        hist = gen.histogram()
        corr = {}
        for t in range(12):
            corr[(t, MAJOR)] = pearson(hist, [MAJOR_PROFILE[(pc - t) % 12] for pc in range(12)])
            corr[(t, MINOR)] = pearson(hist, [MINOR_PROFILE[(pc - t) % 12] for pc in range(12)])
        assert corr[gen.key()] == pytest.approx(max(corr.values()), abs=1e-9)


def test_fixed_key_and_parsing():
    assert HarmonyGenerator({"key": "D minor"}).key() == (2, MINOR)
    assert fed(C_MAJOR_SCALE, key="Bb").key() == (10, MAJOR)
    assert parse_key("F# minor") == (6, MINOR) and parse_key("Ebm") == (3, MINOR)
    with pytest.raises(ValueError):
        parse_key("H major")


@pytest.mark.parametrize("voices", [1, 2, 3, 4])
@pytest.mark.parametrize("spread", [0, 1])
def test_accompaniment_is_a_triad_below_the_note(voices, spread):
    gen = fed(C_MAJOR_SCALE, voices=voices, spread=spread, velocity_scale=0.5)
    triads = triad_classes()
    for pitch in range(60, 85):
        notes = gen.accompany(on(pitch, velocity=100), CTX)
        assert len(notes) == voices
        assert all(n.pitch < pitch and n.duration is None and n.start == 0.0 for n in notes)
        assert all(n.velocity == 50 for n in notes)
        assert len({n.pitch for n in notes}) == voices
        root, tones = choose_triad(pitch % 12, gen.key())
        assert pitch % 12 in tones and frozenset(tones) in triads
        assert {n.pitch % 12 for n in notes} <= set(tones)
        assert min(n.pitch for n in notes) % 12 == root  # root in the bass
        if pitch % 12 in SCALES[MAJOR]:
            assert set(tones) <= SCALES[MAJOR]  # in-key notes get diatonic triads


def test_prefers_primary_triads():
    key = (0, MAJOR)
    assert choose_triad(0, key)[0] == 0  # C: I, not IV or vi
    assert choose_triad(7, key)[0] == 0  # G: I, not V or iii
    assert choose_triad(9, key)[0] == 5  # A: IV, not ii or vi
    assert choose_triad(2, key)[0] == 7  # D: V, not ii
    assert choose_triad(11, key)[0] == 7  # B: V, not iii or vii
    a_minor = (9, MINOR)
    assert choose_triad(8, a_minor) == (4, (4, 8, 11))  # G#: E major, the harmonic-minor V
    assert choose_triad(0, a_minor)[0] == 9  # C: i


def test_out_of_key_notes():
    key = (0, MAJOR)
    assert choose_triad(6, key) == (2, (2, 6, 9))  # F#: D major, V/V
    assert choose_triad(3, key) == (0, (0, 3, 7))  # Eb: C minor, borrowed
    assert choose_triad(10, key) == (10, (10, 2, 5))  # Bb: Bb major, bVII
    gen = fed(C_MAJOR_SCALE, voices=3)
    for pitch in (61, 63, 66, 68, 70):
        notes = gen.accompany(on(pitch), CTX)
        root, tones = choose_triad(pitch % 12, gen.key())
        assert pitch % 12 in tones and len(notes) == 3
        assert all(n.pitch < pitch and n.pitch % 12 in tones for n in notes)


def test_before_any_note_the_played_note_is_the_tonic():
    gen = HarmonyGenerator({"voices": 3})
    assert gen.key() is None
    notes = gen.accompany(on(64), CTX)  # E: E major tonic triad
    assert {n.pitch % 12 for n in notes} == {4, 8, 11}
    assert [n.pitch for n in notes] == [52, 59, 56]


def test_low_bound():
    gen = fed(C_MAJOR_SCALE, voices=4, low=40)
    notes = gen.accompany(on(50), CTX)
    assert notes and all(40 <= n.pitch < 50 for n in notes)


def test_bad_config():
    with pytest.raises(ValueError):
        HarmonyGenerator({"voices": 5})
    with pytest.raises(ValueError):
        HarmonyGenerator({"key": "nonsense"})


def test_reset_forgets_the_key_of_the_last_song():
    """reset() runs on the DAW's transport Stop and when the generator is selected again
    (contract: forget phrase state).  Before, the key estimated from the last song stayed,
    so the first notes of a new song in another key got the old key's chords."""

    def on(p, b):
        return PlayedEvent(True, p, 100, 0, b, b / 2)

    old = HarmonyGenerator({})
    for i, p in enumerate([64, 66, 67, 69, 71, 72, 74, 75, 76] * 3):  # E minor
        old.observe(on(p, float(i)))
    old.reset()
    fresh = HarmonyGenerator({})
    first = on(70, 40.0)  # the new song starts on B flat
    for g in (old, fresh):
        g.observe(first)
    assert old.key() == fresh.key() == (10, "major")
    assert old.accompany(first, Context(120.0, 40.0)) == fresh.accompany(first, Context(120.0, 40.0))


def test_reset_keeps_a_fixed_key():
    g = HarmonyGenerator({"key": "D minor"})
    g.reset()
    assert g.key() == (2, "minor")


@pytest.mark.parametrize("settings, key", [
    ({"voices": "three"}, "voices"), ({"voices": 5}, "voices"), ({"spread": 3}, "spread"),
    ({"velocity_scale": "soft"}, "velocity_scale"), ({"low": -1}, "low"), ({"decay": 0}, "decay"),
    ({"decay": 1.5}, "decay"),
])
def test_bad_settings_are_refused_naming_the_key(settings, key):
    from midi_bridge.generators.harmony import HarmonyGenerator

    with pytest.raises(ValueError) as e:
        HarmonyGenerator(settings)
    assert f"generators.harmony.{key}" in str(e.value)
