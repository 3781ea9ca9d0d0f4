"""Unit tests: the generator is a plain class, driven with Context and PlayedEvent."""

from __future__ import annotations

import math

import pytest

from midi_bridge.plugin import API_VERSION, Context, Note, PlayedEvent
from midi_bridge.runtime.discovery import contract_problem
from midi_bridge_arpeggiator import ArpeggiatorGenerator

BPM = 120.0


def on(pitch: int, beat: float, velocity: int = 100) -> PlayedEvent:
    return PlayedEvent(True, pitch, velocity, 0, beat=beat, seconds=beat * 60 / BPM)


def off(pitch: int, beat: float) -> PlayedEvent:
    return PlayedEvent(False, pitch, 0, 0, beat=beat, seconds=beat * 60 / BPM)


def ctx(beat: float = 0.0, phrase=(), **kw) -> Context:
    return Context(BPM, beat, max_notes=kw.pop("max_notes", 16), max_beats=kw.pop("max_beats", 8.0),
                   phrase=tuple(phrase), **kw)


def accompany(gen: ArpeggiatorGenerator, event: PlayedEvent, context: Context | None = None) -> list[Note]:
    gen.observe(event)                       # the engine calls observe first
    return list(gen.accompany(event, context or ctx(event.beat)))


def test_declares_the_contract():
    assert ArpeggiatorGenerator.api_version == API_VERSION[0]
    assert ArpeggiatorGenerator.modes == {"continue", "accompany"}
    assert contract_problem(ArpeggiatorGenerator) == ""      # what the bridge checks at load


def test_accompanies_a_held_note_with_its_triad_an_octave_below():
    notes = accompany(ArpeggiatorGenerator(), on(60, beat=4.0))
    assert [n.pitch for n in notes[:8]] == [48, 52, 55, 52] * 2        # C E G E (updown)
    assert [n.start for n in notes[:4]] == [0.0, 0.25, 0.5, 0.75]        # sixteenths
    assert all(n.duration == pytest.approx(0.25 * 0.9) for n in notes)   # gate
    assert all(n.pitch < 60 for n in notes)                              # under the melody
    assert notes[-1].start < 8                                           # hold_beats
    assert notes[0].velocity == 80 and notes[1].velocity == 68           # beat accented


def test_the_third_follows_what_was_played():
    gen = ArpeggiatorGenerator()
    for p in (57, 60, 64, 60, 57):           # A C E: A minor
        gen.observe(on(p, 0.0))
    notes = accompany(gen, on(57, beat=1.0))
    assert {n.pitch for n in notes} == {45, 48, 52}                      # A C E, not A C# E


def test_steps_fall_on_the_song_grid():
    # a note played a little after beat 2: the second step waits for the next sixteenth
    notes = accompany(ArpeggiatorGenerator(), on(60, beat=2.05))
    assert notes[0].start == 0.0
    assert notes[1].start == pytest.approx(0.2)                          # beat 2.25
    assert all(math.isclose((2.05 + n.start) / 0.25, round((2.05 + n.start) / 0.25))
               for n in notes[1:])
    # just before a grid point: that point is skipped, no two notes crowd together
    notes = accompany(ArpeggiatorGenerator(), on(60, beat=2.24))
    assert notes[1].start == pytest.approx(0.26)                         # beat 2.5


def test_continues_a_phrase_by_arpeggiating_its_last_notes():
    gen = ArpeggiatorGenerator()
    phrase = [on(p, i * 0.5) for i, p in enumerate([60, 62, 64, 65, 67, 72, 67, 64])]
    for ev in phrase:
        gen.observe(ev)
    answer = gen.continuation(ctx(4.0, phrase, max_notes=16, max_beats=8.0))
    notes = list(answer)
    assert [n.pitch for n in notes[:4]] == [64, 67, 72, 67]              # last 3 distinct: E G C
    assert len(notes) == 16                                              # max_notes
    assert [n.start for n in notes] == [i * 0.25 for i in range(16)]
    assert gen.rating_context()["tones"] == [64, 67, 72]


def test_a_phrase_across_a_daw_loop_is_answered_the_same():
    # under MIDI clock, beat is the song position: the DAW looped from 16 back to 0
    # between the phrase's notes, so its beats go 15.0, 15.5, 0.0, 0.5
    looped = [on(p, b) for p, b in zip([60, 64, 67, 64], [15.0, 15.5, 0.0, 0.5])]
    steady = [on(p, 15.0 + i * 0.5) for i, p in enumerate([60, 64, 67, 64])]
    answers = []
    for phrase, now in ((looped, 1.0), (steady, 17.0)):
        gen = ArpeggiatorGenerator()
        for ev in phrase:
            gen.observe(ev)
        answers.append(list(gen.continuation(ctx(now, phrase))))
    assert answers[0] == answers[1] and len(answers[0]) == 16
    assert all(n.start >= 0 for n in answers[0])
    # accompaniment just after the loop: the steps are on the song's grid from beat 0
    notes = accompany(ArpeggiatorGenerator(), on(60, beat=0.1))
    assert [n.start for n in notes[:3]] == pytest.approx([0.0, 0.15, 0.4])      # beats 0.25, 0.5


def test_continuation_is_lazy_and_bounded_by_max_beats():
    gen = ArpeggiatorGenerator()
    phrase = [on(60, 0.0), on(64, 0.5)]
    answer = gen.continuation(ctx(2.0, phrase, max_notes=100, max_beats=1.0))
    first = next(answer)                     # nothing computed ahead
    assert first.start == 0.0
    rest = list(answer)
    assert len(rest) == 3 and rest[-1].start < 1.0


def test_a_single_note_phrase_is_answered_with_its_triad():
    notes = list(ArpeggiatorGenerator().continuation(ctx(phrase=[on(62, 0.0), on(62, 0.5)])))
    assert {n.pitch for n in notes} == {62, 66, 69}                      # D F# A


def test_an_empty_phrase_gets_no_answer():
    assert list(ArpeggiatorGenerator().continuation(ctx())) == []


def test_low_density_halves_the_rate():
    notes = accompany(ArpeggiatorGenerator(), on(60, 0.0), ctx(0.0, density=0.3))
    assert [n.start for n in notes[:3]] == [0.0, 0.5, 1.0]


def test_temperature_varies_the_order_but_keeps_the_chord():
    plain = [n.pitch for n in accompany(ArpeggiatorGenerator({"seed": 1}), on(60, 0.0))]
    hot = [n.pitch for n in accompany(ArpeggiatorGenerator({"seed": 1}), on(60, 0.0),
                                      ctx(0.0, temperature=2.0))]
    assert set(hot) <= {48, 52, 55}
    assert hot != plain
    # no temperature from the performer: the configured one (0: exactly the pattern)
    again = [n.pitch for n in accompany(ArpeggiatorGenerator({"seed": 1}), on(60, 0.0),
                                        ctx(0.0, temperature=None))]
    assert again == plain


def test_notes_stay_in_range():
    notes = accompany(ArpeggiatorGenerator({"octave": 0}), on(125, 0.0, velocity=127))
    assert notes and all(0 <= n.pitch <= 127 and 1 <= n.velocity <= 127 for n in notes)
    assert accompany(ArpeggiatorGenerator({"octave": -3}), on(20, 0.0)) == []


def test_reset_forgets_what_was_heard():
    gen = ArpeggiatorGenerator()
    for p in (57, 60, 57, 60):
        gen.observe(on(p, 0.0))
    assert gen.triad(57)[1] == 60
    gen.reset()
    assert gen.triad(57)[1] == 61


def test_note_offs_are_ignored():
    gen = ArpeggiatorGenerator()
    gen.observe(off(63, 0.0))
    assert gen.triad(60)[1] == 64


@pytest.mark.parametrize("settings", [{"step": 0}, {"pattern": "random"}, {"gate": 1.5},
                                      {"octave": 0.5}, {"notes": 0}, {"temperature": -1}])
def test_bad_settings_are_refused_with_a_message(settings):
    key = next(iter(settings))
    with pytest.raises(ValueError, match=key):
        ArpeggiatorGenerator(settings)
