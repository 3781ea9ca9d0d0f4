"""The engine with in-memory ports and a manual clock.

Every test drives :class:`midi_bridge.core.engine.Engine` the way ``render`` does: input is handed
over at a chosen instant, the engine's deadlines are visited in order, and the output
sink records ``(clock time, message)``.  Defaults unless a test says otherwise: 120 bpm
(a beat is 500 ms), silence 600 ms, min_notes 2, lookahead 30 ms, output channel 1 (0).
"""

from __future__ import annotations

import logging
import math

import pytest

from midi_bridge.core import midi
from midi_bridge.core.messages import Swap
from midi_bridge.plugin import Note, PluginError
from midi_bridge.commands.render import run_until

from helpers import MS, Both, Endless, Intervals, Melody, Rig, plugin_info, unmatched

CC64, CC123 = midi.CC_SUSTAIN, midi.CC_ALL_NOTES_OFF


def panic_tail(channels):
    """The CC part of a panic: CC64=0 on each channel, then CC123 on each channel."""
    return ([(0xB0 | c, CC64, 0) for c in channels] + [(0xB0 | c, CC123, 0) for c in channels])


def phrase(rig, t0=0, pitches=(60, 62)):
    """Play short notes 200 ms apart starting at ``t0``; returns when the last one ended."""
    t = t0
    for p in pitches:
        rig.tap(t, p, 100)
        t += 200
    return t - 100


# -- phrase detection -------------------------------------------------------------------


def test_no_answer_while_a_key_is_held_then_answer_after_silence():
    rig = Rig({"m": Melody})
    rig.tap(0, 60)
    rig.on(200, 62)
    rig.advance(10_000)  # a key is held: never an answer, however long
    assert rig.out == []
    assert rig.gen.contexts == []
    rig.off(10_000, 62)
    rig.advance(10_599)
    assert rig.out == [], "answered before silence_ms had passed"
    rig.advance(10_600)
    assert rig.note_ons() == [(10_600.0, 0, 72)]
    rig.advance(20_000)
    assert [p for _, _, p in rig.note_ons()] == [72, 74, 76, 77]
    # start = 0/0.5/1/1.5 beats after the answer began, each 0.5 beat long
    assert [t for t, _, _ in rig.note_ons()] == [10_600, 10_850, 11_100, 11_350]
    assert [t for t, _, _ in rig.note_offs()] == [10_850, 11_100, 11_350, 11_600]
    assert unmatched(rig.msgs()) == {}
    assert rig.engine.stats["answers"] == 1


def test_silence_counts_from_the_last_note_off_and_restarts_on_new_notes():
    rig = Rig({"m": Melody})
    rig.tap(0, 60)
    rig.tap(400, 62)       # 300 ms after the first release: the phrase goes on
    rig.tap(900, 64)       # last release at 1000
    rig.advance(1599)
    assert rig.out == []
    rig.advance(1600)
    assert rig.note_ons()[0][0] == 1600
    ctx = rig.gen.contexts[0]
    assert [e.pitch for e in ctx.phrase] == [60, 62, 64]
    assert all(e.on for e in ctx.phrase)
    assert (ctx.tempo_bpm, ctx.max_notes, ctx.max_beats) == (120.0, 16, 8)
    assert ctx.beat == pytest.approx(1600 / 500)


def test_a_phrase_shorter_than_min_notes_is_not_answered():
    rig = Rig({"m": Melody}, phrase={"min_notes": 3})
    rig.tap(0, 60)
    rig.tap(200, 62)
    rig.advance(10_000)
    assert rig.out == [] and rig.gen.contexts == []
    rig.tap(10_000, 64)  # the third note completes the phrase
    rig.advance(10_700)
    assert rig.note_ons()[0][0] == 10_700
    assert [e.pitch for e in rig.gen.contexts[0].phrase] == [60, 62, 64]


def test_one_note_is_not_a_phrase_by_default():
    rig = Rig({"m": Melody})
    rig.tap(0, 60)
    rig.advance(30_000)
    assert rig.out == []


def test_each_phrase_is_answered_once():
    rig = Rig({"m": Melody})
    phrase(rig)
    rig.advance(30_000)
    assert len(rig.gen.contexts) == 1
    assert len(rig.note_ons()) == 4


def test_phrase_handed_to_the_generator_is_bounded_by_phrase_max_notes():
    rig = Rig({"m": Melody}, phrase={"max_notes": 3})
    phrase(rig, pitches=(60, 61, 62, 63, 64, 65))
    rig.advance(5000)
    assert [e.pitch for e in rig.gen.contexts[0].phrase] == [63, 64, 65]


class Sparse(Melody):
    """Notes two seconds apart: pulling must follow the clock, not run ahead."""

    NOTES = [(60 + i, 4.0 * i, 1.0) for i in range(6)]


def test_continuation_is_pulled_lazily_within_the_lookahead():
    rig = Rig({"m": Sparse}, continuation={"max_beats": 64})
    end = phrase(rig)
    t0 = end + 600
    rig.advance(t0)
    assert len(rig.gen.pulls) <= 2  # the first note, and at most the next one to know its time
    rig.advance(t0 + 1000)
    assert len(rig.gen.pulls) == 2, "pulled notes that start seconds later"
    # the engine wakes up by itself lookahead_ms before the next note is due
    assert rig.engine.next_deadline(rig.clock.t) == (t0 + 2000 - 30) * MS
    run_until(rig.engine, rig.clock, (t0 + 2000 - 31) * MS)
    assert len(rig.gen.pulls) == 2
    run_until(rig.engine, rig.clock, (t0 + 2000 - 30) * MS)  # the second note enters the lookahead
    assert len(rig.gen.pulls) == 3
    assert rig.clock.t == (t0 + 2000 - 30) * MS
    rig.advance(t0 + 20_000)
    starts = [t0 * MS + int(s * 500 * MS) for _, s, _ in Sparse.NOTES]
    look = 30 * MS
    pulls = rig.gen.pulls
    assert len(pulls) == len(Sparse.NOTES)
    for k in range(1, len(pulls)):
        # note k is only asked for once note k-1 is due within the lookahead
        assert pulls[k] >= starts[k - 1] - look, f"note {k} pulled too early"
        assert pulls[k] <= starts[k] - look, f"note {k} pulled too late"
    assert [t * MS for t, _, _ in rig.note_ons()] == starts  # and each sounds on time
    assert unmatched(rig.msgs()) == {}


def test_continuation_stops_at_max_notes_and_closes_the_iterator():
    rig = Rig({"m": Endless}, continuation={"max_notes": 5, "max_beats": 100})
    end = phrase(rig)
    rig.advance(end + 60_000)
    assert len(rig.note_ons()) == 5
    assert rig.gen.closed == 1
    assert len(rig.gen.pulls) <= 6
    assert unmatched(rig.msgs()) == {}


def test_continuation_stops_at_max_beats_and_clips_the_last_note():
    rig = Rig({"m": Endless}, continuation={"max_notes": 1000, "max_beats": 2})
    end = phrase(rig)
    t0 = end + 600
    rig.advance(end + 60_000)
    ons = rig.note_ons()
    assert [t - t0 for t, _, _ in ons] == [125 * i for i in range(8)]  # starts < 2 beats
    assert max(t for t, _, _ in rig.note_offs()) == t0 + 1000  # nothing sounds past 2 beats
    assert rig.gen.closed == 1
    assert unmatched(rig.msgs()) == {}


class Held(Melody):
    NOTES = [(60, 0.0, 50.0)]


def test_a_long_continuation_note_is_ended_after_max_note_beats():
    rig = Rig({"m": Held}, continuation={"max_beats": 256}, engine={"max_note_beats": 4})
    end = phrase(rig)
    t0 = end + 600
    rig.advance(t0 + 60_000)
    assert rig.note_ons() == [(t0, 0, 60)]
    assert rig.note_offs() == [(t0 + 2000, 0, 60)]


class Chords(Melody):
    """Overlapping notes on two channels (the third on channel 4, i.e. 3)."""

    NOTES = [(72, 0.0, 4.0), (76, 0.0, 4.0), (79, 1.0, 4.0, 3), (84, 2.0, 4.0), (86, 3.0, 4.0),
             (88, 4.0, 4.0), (89, 5.0, 4.0), (91, 6.0, 4.0)]


def test_playing_during_an_answer_interrupts_it_cleanly():
    rig = Rig({"m": Chords})
    end = phrase(rig)
    t0 = end + 600
    rig.advance(t0 + 1200)
    assert {(c, p) for _, c, p in rig.note_ons()} == {(0, 72), (0, 76), (3, 79), (0, 84)}
    assert rig.gen.closed == 0
    m = rig.mark()
    rig.on(t0 + 1200, 65)
    assert rig.gen.closed == 1, "the continuation iterator was not closed (its finally did not run)"
    after = rig.timed(m)
    assert all(t == t0 + 1200 for t, _ in after)
    assert [msg for _, msg in after] == [
        (0x80, 72, 0), (0x80, 76, 0), (0x80, 84, 0), (0x83, 79, 0),
    ] + panic_tail([0, 3])
    assert rig.engine.stats["interrupted"] == 1
    # nothing more of the old answer, ever (pitches 72.. belong to it; the player played 65)
    rig.off(t0 + 1300, 65)
    rig.advance(t0 + 1300 + 599)
    assert rig.msgs(m) == [msg for _, msg in after]
    assert unmatched(rig.msgs()) == {}


def test_after_an_interruption_the_new_phrase_is_answered():
    rig = Rig({"m": Chords}, phrase={"min_notes": 2})
    end = phrase(rig)
    t0 = end + 600
    rig.advance(t0 + 700)
    rig.tap(t0 + 700, 65)      # interrupts and starts a new phrase
    rig.tap(t0 + 900, 67)
    m = rig.mark()
    rig.advance(t0 + 1000 + 599)
    assert rig.msgs(m) == []
    rig.advance(t0 + 1000 + 600)
    assert len(rig.gen.contexts) == 2
    assert [e.pitch for e in rig.gen.contexts[1].phrase] == [65, 67]
    assert rig.note_ons(m)[0] == (t0 + 1600, 0, 72)
    rig.advance(t0 + 60_000)
    assert unmatched(rig.msgs()) == {}


def test_playing_while_the_last_answer_notes_still_sound_interrupts_them():
    class OneLong(Melody):
        NOTES = [(72, 0.0, 4.0)]

    rig = Rig({"m": OneLong})
    end = phrase(rig)
    t0 = end + 600
    rig.advance(t0 + 500)
    assert rig.gen.closed == 1  # the iterator ran out, the note still sounds
    m = rig.mark()
    rig.on(t0 + 500, 64)
    assert rig.msgs(m) == [(0x80, 72, 0)] + panic_tail([0])
    rig.advance(t0 + 5000)
    assert rig.note_offs() == [(t0 + 500, 0, 72)]  # its own end does not come again


def test_playing_after_the_answer_ended_sends_no_panic():
    rig = Rig({"m": Melody})
    end = phrase(rig)
    rig.advance(end + 600 + 3000)
    m = rig.mark()
    rig.on(end + 4000, 64)
    assert rig.msgs(m) == []
    assert rig.engine.stats["interrupted"] == 0


# -- accompany ------------------------------------------------------------------------------


def test_accompaniment_starts_with_the_played_note_and_ends_with_its_release():
    rig = Rig({"i": Intervals}, engine={"mode": "accompany"})
    rig.on(100, 60, 77)
    assert rig.timed() == [(100, (0x90, 64, 77)), (100, (0x90, 67, 77))]
    rig.advance(900)
    assert len(rig.out) == 2
    rig.off(900, 60)
    assert sorted(rig.timed()[2:]) == [(900, (0x80, 64, 0)), (900, (0x80, 67, 0))]
    rig.advance(20_000)
    assert len(rig.out) == 4
    assert unmatched(rig.msgs()) == {}
    assert [e.on for e in rig.gen.observed] == [True, False]


def test_each_played_note_has_its_own_accompaniment():
    rig = Rig({"i": Intervals}, engine={"mode": "accompany"})
    rig.on(0, 60)
    rig.on(100, 72)
    rig.off(200, 60)
    assert sorted(rig.note_offs()) == [(200, 0, 64), (200, 0, 67)]
    assert len(rig.note_ons()) == 4
    rig.off(300, 72)
    assert sorted(rig.note_offs()[2:]) == [(300, 0, 76), (300, 0, 79)]
    assert unmatched(rig.msgs()) == {}


def test_repressing_a_key_ends_its_old_accompaniment_first():
    rig = Rig({"i": Intervals}, engine={"mode": "accompany"})
    rig.on(0, 60)
    m = rig.mark()
    rig.on(100, 60, 50)  # no note-off in between (a lost note-off, or a controller that repeats)
    after = rig.msgs(m)
    assert sorted(after[:2]) == [(0x80, 64, 0), (0x80, 67, 0)]
    assert after[2:] == [(0x90, 64, 50), (0x90, 67, 50)]
    rig.off(200, 60)
    rig.advance(20_000)
    assert unmatched(rig.msgs()) == {}
    assert len(rig.note_offs()) == 4


def test_accompaniment_on_the_configured_output_channel():
    rig = Rig({"i": Intervals}, engine={"mode": "accompany", "output_channel": 5})
    rig.on(0, 60, ch=2)
    assert {m[0] for m in rig.msgs()} == {0x94}
    rig.off(100, 60, ch=2)
    assert {m[0] for m in rig.msgs()} == {0x94, 0x84}
    assert unmatched(rig.msgs()) == {}


def test_accompaniment_note_with_its_own_channel():
    class Ch10(Intervals):
        CHANNEL = 9

    rig = Rig({"i": Ch10}, engine={"mode": "accompany"})
    rig.tap(0, 60)
    assert {m[0] & 0x0F for m in rig.msgs()} == {9}
    assert unmatched(rig.msgs()) == {}


def test_delayed_accompaniment_released_before_it_starts_never_sounds():
    class Late(Intervals):
        START = 1.0  # a beat after the played note

    rig = Rig({"i": Late}, engine={"mode": "accompany"})
    rig.on(0, 60)
    rig.off(200, 60)
    rig.advance(10_000)
    assert rig.out == []
    rig.on(10_000, 62)
    rig.advance(10_499)
    assert rig.out == []
    rig.advance(10_500)
    assert len(rig.note_ons()) == 2


def test_accompaniment_with_a_fixed_duration_ends_by_itself():
    class Short(Intervals):
        DURATION = 0.5

    rig = Rig({"i": Short}, engine={"mode": "accompany"})
    rig.on(0, 60)
    rig.advance(10_000)
    assert sorted(rig.note_offs()) == [(250, 0, 64), (250, 0, 67)]
    rig.off(10_000, 60)
    assert len(rig.note_offs()) == 2  # no second note-off on release
    assert unmatched(rig.msgs()) == {}


def test_accompaniment_of_a_held_note_is_ended_after_max_note_beats():
    rig = Rig({"i": Intervals}, engine={"mode": "accompany", "max_note_beats": 8})
    rig.on(0, 60)
    rig.advance(60_000)
    assert sorted(rig.note_offs()) == [(4000, 0, 64), (4000, 0, 67)]
    rig.off(60_000, 60)
    rig.advance(70_000)
    assert len(rig.note_offs()) == 2, "release after the safety note-off sent a second note-off"


def test_shared_accompaniment_pitch_is_not_cut_by_the_older_parent():
    class Pedal(Intervals):
        INTERVALS = ()

        def accompany(self, event, context):
            return [Note(84, 80, 0.0, None)]  # the same pitch under every played note

    rig = Rig({"i": Pedal}, engine={"mode": "accompany"})
    rig.on(0, 60)
    rig.on(100, 62)      # retrigger: the old 84 ends, a new one starts
    assert rig.msgs() == [(0x90, 84, 80), (0x80, 84, 0), (0x90, 84, 80)]
    rig.off(200, 60)     # the older parent's end must not cut the newer note
    assert len(rig.out) == 3
    rig.off(300, 62)
    assert rig.timed()[3:] == [(300, (0x80, 84, 0))]
    assert unmatched(rig.msgs()) == {}


# -- thru -------------------------------------------------------------------------------------


THRU_INPUT = [
    (0x90, 60, 100), (0xB0, 1, 64), (0xE0, 0, 80), (0xA0, 60, 30), (0xD0, 40),
    (0xC0, 5), (0x91, 62, 90), (0x81, 62, 0), (0x80, 60, 0), (0xB3, 7, 100),
]


def test_thru_mode_passes_everything_unchanged():
    rig = Rig(engine={"mode": "thru"})
    for i, m in enumerate(THRU_INPUT):
        rig.send(10 * i, *m)
    rig.advance(10_000)
    assert rig.timed() == [(10 * i, m) for i, m in enumerate(THRU_INPUT)]
    assert rig.engine.gen is None


def test_thru_mode_remaps_the_channel():
    rig = Rig(engine={"mode": "thru"}, thru={"channel": 3})
    for i, m in enumerate(THRU_INPUT):
        rig.send(10 * i, *m)
    assert rig.msgs() == [((m[0] & 0xF0) | 2,) + m[1:] for m in THRU_INPUT]


def test_thru_note_on_velocity_zero_goes_out_as_note_off():
    rig = Rig(engine={"mode": "thru"})
    rig.send(0, 0x90, 60, 100)
    rig.send(10, 0x90, 60, 0)
    assert rig.msgs() == [(0x90, 60, 100), (0x80, 60, 0)]


def test_thru_mode_keeps_the_release_velocity():
    """BUG candidate: a note-off's release velocity is replaced by 0 in thru."""
    rig = Rig(engine={"mode": "thru"})
    rig.send(0, 0x90, 60, 100)
    rig.send(10, 0x80, 60, 64)
    assert rig.msgs() == [(0x90, 60, 100), (0x80, 60, 64)]


def test_thru_enabled_in_continue_mode_passes_the_phrase_and_still_answers():
    rig = Rig({"m": Melody}, thru={"enabled": True, "channel": 2})
    rig.on(0, 60)
    rig.send(50, 0xB0, 64, 127)
    rig.off(100, 60)
    rig.tap(200, 62)
    rig.send(350, 0xB0, 64, 0)
    assert rig.timed() == [(0, (0x91, 60, 100)), (50, (0xB1, 64, 127)), (100, (0x81, 60, 0)),
                           (200, (0x91, 62, 100)), (300, (0x81, 62, 0)), (350, (0xB1, 64, 0))]
    rig.advance(950)
    assert rig.note_ons(6) == [(900, 0, 72)]   # silence counts from the last note
    m = rig.mark()
    rig.on(1000, 65)  # interrupts: the answer ends, then the played note passes
    assert rig.msgs(m) == [(0x80, 72, 0)] + panic_tail([0]) + [(0x91, 65, 100)]  # (not the player's channel)
    rig.off(1100, 65)
    assert rig.msgs()[-1] == (0x81, 65, 0)
    rig.advance(1100 + 599)
    rig.stop()
    assert unmatched(rig.msgs()) == {}


def test_an_interruption_leaves_the_players_pedal_alone_where_thru_plays():
    """Thru on the answer's channel (a controller played through the bridge): playing over
    the answer ends the answer's notes, but sends no CC64=0 / CC123 there, which released
    the pedal the player's foot still holds and cut their sustained notes."""
    rig = Rig({"m": Melody}, thru={"enabled": True})
    rig.send(0, 0xB0, 64, 127)                 # pedal down, and kept down
    phrase(rig, 10)
    rig.advance(1050)
    assert rig.note_ons(0)[-1][2] == 72        # the answer sounds
    m = rig.mark()
    rig.on(1100, 65)
    assert rig.msgs(m) == [(0x80, 72, 0), (0x90, 65, 100)]
    assert rig.engine.stats["interrupted"] == 1
    rig.off(1200, 65)
    rig.advance(5000)
    assert not any(msg[0] & 0xF0 == 0xB0 for msg in rig.msgs(m))
    rig.stop()                                  # the bridge's own stop still panics
    assert rig.msgs()[-2:] == panic_tail([0])
    assert unmatched(rig.msgs()) == {}


def test_input_channel_filter():
    rig = Rig({"m": Melody}, input={"channels": [2]}, thru={"enabled": True})
    phrase(rig)             # channel 1: filtered
    rig.advance(5000)
    assert rig.out == []
    assert rig.engine.stats["filtered"] == 4
    rig.tap(5000, 60, ch=1)
    rig.tap(5200, 62, ch=1)
    rig.advance(6000)
    assert (5000, (0x91, 60, 100)) in rig.timed()
    assert len(rig.gen.contexts) == 1


def test_system_messages_are_ignored():
    rig = Rig({"m": Melody}, thru={"enabled": True})
    for t in range(10):
        rig.send(t, 0xF8)
    assert rig.out == []
    assert rig.engine.stats["system"] == 10


# -- panic / stop -----------------------------------------------------------------------------


def test_stop_ends_every_sounding_note_then_sustain_then_all_notes_off():
    rig = Rig({"i": Intervals}, engine={"mode": "accompany"}, thru={"enabled": True, "channel": 3})
    rig.on(0, 60)
    rig.on(10, 62)
    assert len(rig.note_ons()) == 6
    m = rig.mark()
    rig.advance(1000)
    rig.stop()
    assert rig.timed(m) and all(t == 1000 for t, _ in rig.timed(m))
    after = rig.msgs(m)
    offs = [(0x80, 64, 0), (0x80, 66, 0), (0x80, 67, 0), (0x80, 69, 0), (0x82, 60, 0), (0x82, 62, 0)]
    assert after == offs + panic_tail([0, 2])
    assert unmatched(rig.msgs()) == {}
    # the keys released later: nothing more to end; their note-offs pass as played (thru
    # is transparent: a note-off for a note already ended is a harmless repeat)
    rig.off(2000, 60)
    rig.off(2000, 62)
    assert rig.msgs(m) == after + [(0x82, 60, 0), (0x82, 62, 0)]
    assert rig.engine.sched.sounding == {}


def test_stop_during_an_answer_drops_what_is_pending():
    rig = Rig({"m": Chords})
    end = phrase(rig)
    t0 = end + 600
    rig.advance(t0 + 200)
    rig.stop()
    rig.advance(t0 + 60_000)
    assert {p for _, _, p in rig.note_ons()} == {72, 76}
    assert unmatched(rig.msgs()) == {}
    assert rig.msgs()[-2:] == [(0xB0, CC64, 0), (0xB0, CC123, 0)]


def test_stop_with_nothing_played_sends_nothing():
    rig = Rig({"m": Melody})
    rig.stop()
    assert rig.out == []


def test_stop_sends_cc_to_every_channel_used_even_without_sounding_notes():
    rig = Rig(engine={"mode": "thru"})
    rig.send(0, 0xB4, 1, 20)
    rig.stop()
    assert rig.msgs() == [(0xB4, 1, 20), (0xB4, CC64, 0), (0xB4, CC123, 0)]


# -- feedback guard -------------------------------------------------------------------------


def test_own_output_echoed_back_within_the_window_is_ignored():
    rig = Rig({"i": Intervals}, engine={"mode": "accompany"}, input={"feedback_window_ms": 30})
    rig.on(0, 60)                 # sends note-ons 64 and 67
    rig.send(10, 0x90, 64, 100)   # echo of our 64
    rig.send(29, 0x90, 67, 100)   # echo of our 67
    assert rig.engine.stats["echoes"] == 2
    assert [e.pitch for e in rig.gen.asked] == [60]
    assert len(rig.out) == 2
    rig.off(100, 60)              # we send note-offs 64, 67
    rig.send(110, 0x90, 64, 0)    # echo arriving as note-on velocity 0 = the same note-off
    assert rig.engine.stats["echoes"] == 3
    assert [(e.on, e.pitch) for e in rig.gen.observed] == [(True, 60), (False, 60)]


def test_the_same_message_after_the_window_or_not_ours_is_processed():
    rig = Rig({"i": Intervals}, engine={"mode": "accompany"}, input={"feedback_window_ms": 30})
    rig.on(0, 60)
    rig.send(5, 0x90, 65, 100)    # not sent by us
    rig.send(31, 0x90, 64, 100)   # ours, but after the window
    rig.send(31, 0x91, 67, 100)   # same note, other channel: not ours
    assert rig.engine.stats["echoes"] == 0
    assert [e.pitch for e in rig.gen.asked] == [60, 65, 64, 67]


def test_one_echo_is_consumed_per_copy_sent():
    rig = Rig({"i": Intervals}, engine={"mode": "accompany"})
    rig.on(0, 60)
    rig.send(1, 0x90, 64, 100)
    rig.send(2, 0x90, 64, 100)    # only one copy was sent: this one is played
    assert rig.engine.stats["echoes"] == 1
    assert [e.pitch for e in rig.gen.asked] == [60, 64]


def test_feedback_window_zero_turns_the_guard_off():
    rig = Rig({"i": Intervals}, engine={"mode": "accompany"}, input={"feedback_window_ms": 0})
    rig.on(0, 60)
    rig.send(0, 0x90, 64, 100)
    assert rig.engine.stats["echoes"] == 0
    assert [e.pitch for e in rig.gen.asked] == [60, 64]


def test_a_feedback_loop_does_not_run_away():
    """Every output message comes straight back to the input 5 ms later: nothing of it is
    taken for playing (no interruption, no second answer)."""
    rig = Rig({"m": Melody})
    end = phrase(rig)
    rig.advance(end + 600)
    seen, limit = 0, (end + 10_000) * MS
    while True:
        if seen < len(rig.out):
            t, msg = rig.out[seen]
            seen += 1
            rig.send(t / MS + 5, *msg)
            continue
        d = rig.engine.next_deadline(rig.clock.t)
        if d is None or d > limit:
            break
        rig.advance(d / MS)
    rig.advance(end + 20_000)
    assert len(rig.out) == 8 and seen == 8
    assert rig.engine.stats["echoes"] == 8
    assert rig.engine.stats["interrupted"] == 0
    assert len(rig.gen.contexts) == 1
    assert len(rig.gen.observed) == 4  # only the player's notes


# -- hot swap --------------------------------------------------------------------------------


class A(Both):
    NOTES = [(72 + i, float(i), 1.0) for i in range(8)]


class B(Melody):
    NOTES = [(48 + i, float(i), 1.0) for i in range(8)]


class C(Intervals):
    pass


def pc(rig, t, program):
    rig.send(t, 0xCF, program)  # program change on the default control channel 16


def test_program_change_selects_a_generator_and_ends_its_notes():
    rig = Rig({"a": A, "b": B, "c": C}, start="a")
    assert rig.host.names() == ["a", "b", "c"]
    old = rig.gen
    end = phrase(rig)
    t0 = end + 600
    rig.advance(t0 + 1250)
    assert rig.note_ons()[-1] == (t0 + 1000, 0, 74)
    m = rig.mark()
    pc(rig, t0 + 1250, 1)          # program 2 as a DAW shows it: the second generator
    assert rig.engine.gen_name == "b"
    assert isinstance(rig.gen, B) and rig.gen.resets == 1
    assert old.closed == 1
    assert rig.msgs(m) == [(0x80, 74, 0)] + panic_tail([0])
    assert rig.engine.stats["swaps"] == 1
    rig.advance(t0 + 10_000)
    assert rig.msgs(m)[4:] == [], "the old generator's answer went on after the swap"
    # the new generator answers the next phrase
    end = phrase(rig, t0 + 10_000)
    rig.advance(end + 600)
    assert rig.note_ons(m)[0] == (end + 600, 0, 48)
    rig.stop()
    assert unmatched(rig.msgs()) == {}


def test_swap_to_a_generator_without_the_mode_is_refused_and_the_old_one_keeps_playing(caplog):
    rig = Rig({"a": A, "b": B, "c": C}, start="b")
    end = phrase(rig)
    t0 = end + 600
    rig.advance(t0 + 1250)
    m = rig.mark()
    with caplog.at_level(logging.WARNING):
        pc(rig, t0 + 1250, 2)      # c: accompany only, we are in continue mode
    assert rig.engine.gen_name == "b"
    assert "does not support mode 'continue'" in caplog.text
    assert rig.msgs(m) == []
    rig.advance(t0 + 10_000)
    assert [p for _, _, p in rig.note_ons(m)] == [51, 52, 53, 54, 55]  # the answer goes on
    assert rig.engine.stats["swaps"] == 0
    assert unmatched(rig.msgs()) == {}


def test_next_cc_steps_through_the_order_and_wraps():
    rig = Rig({"a": A, "b": B, "c": C}, start="a",
              control={"next_cc": 20, "order": ["a", "b"]}, thru={"enabled": True})
    rig.send(0, 0xBF, 20, 127)
    assert rig.engine.gen_name == "b"
    rig.send(10, 0xBF, 20, 0)      # the pedal's release: no step
    rig.send(20, 0xBF, 20, 63)
    assert rig.engine.gen_name == "b"
    rig.send(30, 0xBF, 20, 64)
    assert rig.engine.gen_name == "a"
    rig.send(40, 0xBF, 21, 127)    # another CC on the control channel: not a step
    assert rig.engine.gen_name == "a"
    assert rig.engine.stats["swaps"] == 2
    # the control CCs were not passed through; the other CC was
    assert rig.msgs() == [(0xBF, 21, 127)]


def test_program_change_on_a_played_channel_passes_through_and_swaps_nothing():
    rig = Rig({"a": A, "b": B}, start="a", thru={"enabled": True})
    rig.send(0, 0xC0, 1)
    assert rig.engine.gen_name == "a"
    assert rig.msgs() == [(0xC0, 1)]
    pc(rig, 10, 1)
    assert rig.engine.gen_name == "b"
    assert all(m[0] != 0xCF for m in rig.msgs()), "the control channel's program change was passed through"


def test_program_change_out_of_range_selects_nothing():
    rig = Rig({"a": A, "b": B}, start="a")
    pc(rig, 0, 5)
    pc(rig, 1, 0)  # the current one: nothing to do
    assert rig.engine.gen_name == "a"
    assert rig.engine.stats["swaps"] == 0


def test_program_change_off_in_config():
    rig = Rig({"a": A, "b": B}, start="a", control={"program_change": False}, thru={"enabled": True})
    pc(rig, 0, 1)
    assert rig.engine.gen_name == "a"
    assert rig.msgs() == [(0xCF, 1)]


def test_swap_in_accompany_mode_ends_the_accompaniment():
    rig = Rig({"a": Both, "c": C}, start="a", engine={"mode": "accompany"})
    rig.on(0, 60)
    m = rig.mark()
    pc(rig, 100, 1)
    assert rig.engine.gen_name == "c"
    assert sorted(rig.msgs(m)[:2]) == [(0x80, 64, 0), (0x80, 67, 0)]
    assert rig.msgs(m)[2:] == panic_tail([0])
    rig.off(200, 60)
    assert len(rig.msgs(m)) == 4
    rig.tap(300, 62)
    assert sorted(rig.note_ons(m)) == [(300, 0, 66), (300, 0, 69)]
    assert unmatched(rig.msgs()) == {}


def test_swap_back_reuses_the_constructed_generator():
    rig = Rig({"a": A, "b": B}, start="a")
    first = rig.gen
    pc(rig, 0, 1)
    pc(rig, 1, 0)
    assert rig.gen is first


def test_swap_to_a_generator_that_fails_to_construct_keeps_the_old_one(caplog):
    class Boom(Melody):
        def __init__(self, config=None):
            raise RuntimeError("no checkpoint")

    rig = Rig({"a": A, "boom": Boom}, start="a")
    with caplog.at_level(logging.ERROR):
        pc(rig, 0, 1)
    assert rig.engine.gen_name == "a"
    assert "no checkpoint" in caplog.text
    end = phrase(rig, 10)
    rig.advance(end + 600)
    assert rig.note_ons()[0][2] == 72


def test_a_slow_load_overtaken_by_a_later_selection_does_not_replace_it():
    """Program change to b (loading in the background), then back to a (the current one)
    before b is ready: b arriving later must not replace the generator last selected."""
    import threading
    from midi_bridge.runtime.host import GeneratorHost

    rig = Rig({"a": A, "b": B}, start="a")
    posted, ready = [], threading.Event()
    gate = threading.Event()

    class SlowB(B):
        def __init__(self, config=None):
            gate.wait(10)            # a checkpoint that takes a while to load
            super().__init__(config)

    def post(item):
        posted.append(item)
        ready.set()

    host = GeneratorHost(rig.cfg["generators"], rig.cfg["control"]["order"],
                         plugins={**rig.host.plugins, "b": plugin_info("b", SlowB)}, post=post)
    host._instances["a"] = rig.gen
    rig.engine.host = host
    pc(rig, 0, 1)                    # b: starts loading
    pc(rig, 10, 0)                   # a again, before b is ready
    gate.set()
    assert ready.wait(10)
    rig.engine.handle(posted.pop(), rig.clock.t)
    assert rig.engine.gen_name == "a", "the stale load of b replaced the selected generator"
    assert rig.engine.stats["swaps"] == 0
    # selecting b again still works (instance reused)
    ready.clear()
    pc(rig, 20, 1)
    assert ready.wait(10)
    item = posted.pop()
    assert type(item) is Swap and (item.name, item.err) == ("b", "") and isinstance(item.gen, SlowB)
    rig.engine.handle(item, rig.clock.t)
    assert rig.engine.gen_name == "b"


def test_set_generator_refuses_an_unsupported_mode():
    rig = Rig(engine={"mode": "accompany"})
    with pytest.raises(PluginError, match="does not support mode 'accompany'"):
        rig.engine.set_generator("m", Melody())
    assert rig.engine.gen is None


# -- broken plugins ----------------------------------------------------------------------------


class ObserveRaises(Melody):
    def observe(self, event):
        raise ValueError("observe is broken")


class ContinuationRaisesOnce(Melody):
    calls = 0

    def continuation(self, context):
        type(self).calls += 1
        if type(self).calls == 1:
            raise RuntimeError("first answer is broken")
        return super().continuation(context)


class ContinuationRaisesMidway(Melody):
    NOTES = [(72, 0.0, 1.0), (74, 0.5, 1.0)]

    def continuation(self, context):
        inner = super().continuation(context)

        def gen():
            yield next(inner)
            yield next(inner)
            raise KeyError("ran out of ideas")
        return gen()


class AccompanyRaises(Intervals):
    def accompany(self, event, context):
        if event.pitch == 61:
            raise ZeroDivisionError("broken for C#")
        return super().accompany(event, context)


def test_generator_raising_in_observe_is_logged_counted_and_replaced_by_thru(caplog):
    rig = Rig({"m": ObserveRaises})
    with caplog.at_level(logging.ERROR):
        end = phrase(rig, pitches=(60, 62, 64))
        rig.advance(end + 5000)
    assert rig.engine.stats["plugin_errors"] == 1
    assert rig.engine.stats["replaced"] == 1
    assert caplog.text.count("raised in observe") == 1
    assert "observe is broken" in caplog.text and "playing thru" in caplog.text
    assert rig.engine.gen is None
    # what is played after the failure passes through, and nothing hangs
    assert [p for _, _, p in rig.note_ons()] == [62, 64]
    assert unmatched(rig.msgs()) == {}


def test_a_failing_generator_is_replaced_by_the_previous_one(caplog):
    rig = Rig({"a": Melody, "broken": ObserveRaises}, start="a")
    rig.send(0, 0xCF, 1)                  # program change 2 on the control channel
    assert rig.engine.gen_name == "broken"
    with caplog.at_level(logging.ERROR):
        end = phrase(rig, 10)
        rig.advance(end + 5000)
    assert rig.engine.gen_name == "a"
    assert "replaced by the previous generator 'a'" in caplog.text
    assert len(rig.note_ons()) == 4, "the previous generator answers the phrase"
    assert unmatched(rig.msgs()) == {}


def test_selecting_a_generator_ends_the_thru_fallback():
    rig = Rig({"broken": ObserveRaises, "a": Melody}, start="broken")
    rig.tap(0, 60)
    assert rig.engine.gen is None and rig.engine.stats["replaced"] == 1
    rig.send(200, 0xCF, 0)                # program change 1: 'a'
    assert rig.engine.gen_name == "a"
    mark = rig.mark()
    end = phrase(rig, 300)
    rig.advance(end + 5000)
    assert [p for _, _, p in rig.note_ons(mark)] == [72, 74, 76, 77], "no more thru, an answer"


def test_generator_raising_when_asked_for_a_continuation(caplog):
    ContinuationRaisesOnce.calls = 0
    rig = Rig({"m": ContinuationRaisesOnce})
    with caplog.at_level(logging.ERROR):
        end = phrase(rig)
        rig.advance(end + 5000)
    assert rig.out == []
    assert rig.engine.stats["plugin_errors"] == 1
    assert "first answer is broken" in caplog.text
    assert rig.engine.stats["replaced"] == 1


def test_generator_raising_in_the_middle_of_a_continuation():
    rig = Rig({"m": ContinuationRaisesMidway})
    end = phrase(rig)
    rig.advance(end + 10_000)
    # 74 was scheduled when pulling the next note raised: replacing the generator ends
    # everything it had started or scheduled
    assert [p for _, _, p in rig.note_ons()] == [72]
    assert rig.engine.stats["plugin_errors"] == 1
    assert rig.engine.stats["replaced"] == 1
    assert unmatched(rig.msgs()) == {}


def test_generator_raising_in_accompany_keeps_the_played_notes_flowing():
    rig = Rig({"i": AccompanyRaises}, engine={"mode": "accompany"}, thru={"enabled": True, "channel": 2})
    rig.on(0, 60)
    rig.on(10, 61)
    rig.on(20, 62)
    assert rig.engine.stats["plugin_errors"] == 1
    assert (10, (0x91, 61, 100)) in rig.timed(), "the played note still passes through"
    assert (20, (0x91, 62, 100)) in rig.timed()
    assert {p for _, c, p in rig.note_ons() if c == 0} == {64, 67}
    for t, p in ((30, 60), (40, 61), (50, 62)):
        rig.off(t, p)
    assert unmatched(rig.msgs()) == {}


class BadNotes(Melody):
    NOTES = [(200, 0.0, 0.5), (60, 0.0, math.nan), (61, 0.0, 0.5)]

    def continuation(self, context):
        inner = super().continuation(context)

        def gen():
            yield next(inner)                                  # pitch 200
            yield next(inner)                                  # NaN duration
            yield Note(62, 0, 0.0, 0.5)                        # velocity 0
            yield Note(63, 90, -1.0, 0.5)                      # starts before the answer
            yield Note(64, 90, 0.0, 0.5, 16)                   # channel 17
            yield "not a note"
            yield Note(65.5, 90, 0.0, 0.5)                     # float pitch
            yield Note(66, 90, 0.0, None)                      # no duration in a continuation
            yield Note(67, 90, math.inf, 0.5)
            yield next(inner)                                  # valid: 61
            yield Note(68, 90, 0.25, 0.5)                      # valid
        return gen()


def test_invalid_continuation_notes_are_skipped_and_counted(caplog):
    rig = Rig({"m": BadNotes})
    with caplog.at_level(logging.WARNING):
        end = phrase(rig)
        rig.advance(end + 5000)
    assert [p for _, _, p in rig.note_ons()] == [61, 68]
    assert rig.engine.stats["bad_notes"] == 9
    assert caplog.text.count("invalid note") == 1
    assert unmatched(rig.msgs()) == {}


def test_invalid_accompaniment_notes_are_skipped_and_counted():
    class BadAcc(Intervals):
        def accompany(self, event, context):
            return [Note(200, 90, 0.0, None), Note(64, 0, 0.0, None), Note(65, 90, 0.0, math.nan),
                    Note(66, 90, math.nan, None), None, Note(68, 90, 0.0, math.inf),
                    Note(69, 90, 0.0, -1.0), Note(67, 90, 0.0, None)]

    rig = Rig({"i": BadAcc}, engine={"mode": "accompany"})
    rig.tap(0, 60)
    assert rig.note_ons() == [(0, 0, 67)]
    assert rig.engine.stats["bad_notes"] == 7
    assert unmatched(rig.msgs()) == {}


def test_accompany_returning_a_non_iterable_is_a_plugin_error_not_a_crash():
    """BUG candidate: the engine iterates whatever accompany returned, outside its guard."""
    class ReturnsNote(Intervals):
        def accompany(self, event, context):
            return Note(event.pitch + 4)  # forgot the list

    rig = Rig({"i": ReturnsNote}, engine={"mode": "accompany"})
    rig.on(0, 60)           # must not raise out of the engine
    rig.off(100, 60)
    assert rig.engine.stats["plugin_errors"] == 1
    assert unmatched(rig.msgs()) == {}


def test_continuation_returning_a_non_iterator_is_a_plugin_error_not_a_crash():
    """BUG candidate: iter() of what continuation returned is outside the engine's guard."""
    class ReturnsNumber(Melody):
        def continuation(self, context):
            return 42

    rig = Rig({"m": ReturnsNumber})
    end = phrase(rig)
    rig.advance(end + 5000)  # must not raise out of the engine
    assert rig.engine.stats["plugin_errors"] == 1
    assert rig.out == []


def test_a_continuation_of_only_invalid_notes_does_not_stall_the_engine():
    """BUG candidate: invalid notes do not count towards max_notes, so an endless stream
    of them keeps the engine thread inside one tick forever."""
    class Garbage(Melody):
        pulled = 0

        def continuation(self, context):
            def gen():
                while True:
                    type(self).pulled += 1
                    if type(self).pulled > 5000:   # keeps this test from hanging
                        raise RuntimeError("still pulling")
                    yield Note(200, 90, 0.0, 0.5)
            return gen()

    Garbage.pulled = 0
    rig = Rig({"m": Garbage}, continuation={"max_notes": 16})
    end = phrase(rig)
    rig.advance(end + 5000)
    assert rig.out == []
    assert Garbage.pulled <= 16 + 1, f"pulled {Garbage.pulled} invalid notes in one answer"


def test_generator_raising_in_reset_on_selection_is_counted():
    class ResetRaises(Melody):
        def reset(self):
            raise RuntimeError("reset broken")

    rig = Rig({"m": ResetRaises})
    assert rig.engine.gen_name == "m"
    assert rig.engine.stats["plugin_errors"] == 1
    rig.tap(0, 60)
    assert rig.engine.stats["replaced"] == 1 and rig.engine.gen is None
    assert [p for _, _, p in rig.note_ons()] == [60]


def test_next_deadline_is_none_when_idle():
    rig = Rig({"m": Melody})
    assert rig.engine.next_deadline(0) is None
    rig.tap(0, 60)
    assert rig.engine.next_deadline(rig.clock.t) is None  # one note: no phrase end to wait for
    rig.tap(200, 62)
    assert rig.engine.next_deadline(rig.clock.t) == (300 + 600) * MS
    rig.advance(10_000)
    assert rig.engine.next_deadline(rig.clock.t) is None


def test_a_note_held_through_thru_is_not_cut_by_the_safety_note_off():
    rig = Rig(engine={"mode": "thru", "max_note_beats": 1})
    rig.on(0, 60)
    rig.advance(60_000)       # a pad held for a minute
    assert rig.msgs() == [(0x90, 60, 100)]
    rig.off(60_000, 60)
    assert rig.timed()[-1] == (60_000, (0x80, 60, 0))


def test_a_players_note_off_equal_to_one_the_bridge_just_sent_is_not_taken_for_an_echo():
    """Dropping it would leave the player's note (and its accompaniment) hanging."""
    from helpers import Intervals

    class Unison(Intervals):
        INTERVALS = (0,)  # the accompaniment doubles the played pitch on the output channel

    rig = Rig({"u": Unison}, engine={"mode": "accompany"}, thru={"enabled": True})
    rig.on(0, 60)
    rig.off(5, 60)   # within the feedback window of the bridge's own note-off (0x80, 60, 0)
    assert not unmatched(rig.msgs())
    assert rig.engine.stats["echoes"] == 0


def test_a_daw_panic_on_every_channel_releases_lost_keys_even_on_the_output_channel():
    """A DAW's panic sends CC123 on all 16 channels at once.  The bridge passes the first
    ones through to its output channel, so the player's CC123 on that channel arrives
    within the feedback window of the bridge's own: it must still release the keys whose
    note-offs were lost there, or the phrase stays open and the bridge never answers."""
    rig = Rig({"m": Melody}, engine={"mode": "continue", "output_channel": 16},
              thru={"enabled": True, "channel": 16}, phrase={"silence_ms": 300})
    rig.on(0, 60, ch=15)
    rig.on(10, 62, ch=0)     # both note-offs lost
    for ch in range(16):
        rig.send(500, 0xB0 | ch, CC123, 0)
    assert not rig.engine.held
    rig.advance(1500)
    assert rig.engine.stats["answers"] == 1, "the phrase ended and was answered"
    # with no key held there, the bridge's own CC123 coming back is still an echo
    rig.send(1500, 0xBF, CC123, 0)   # passed through: the bridge sends CC123 on channel 16
    before = rig.engine.stats["echoes"]
    rig.send(1501, 0xBF, CC123, 0)
    assert rig.engine.stats["echoes"] == before + 1


def test_speculation_resumes_with_the_generator_that_replaces_a_failed_one():
    """A generator whose continuation fails while pre-sampling turned speculation off for
    the rest of the session, for every generator selected after it."""
    class Broken(Melody):
        def continuation(self, context):
            raise RuntimeError("broken continuation")

    rig = Rig({"m": Melody, "bad": Broken}, start="m", continuation={"speculate": True})
    pc(rig, 0, 0)                        # (the order is by name: bad, m)
    assert rig.engine.gen_name == "bad"
    end = phrase(rig, 10)
    rig.advance(end + 1)                 # pre-sampling asks 'bad': it raises, is replaced
    assert rig.engine.gen_name == "m" and rig.engine.stats["replaced"] == 1
    speculated = rig.engine.stats["speculated"]
    end = phrase(rig, end + 100)
    rig.advance(end + 1)
    assert rig.engine.stats["speculated"] > speculated, "no pre-sampling any more"
    rig.advance(end + 600)
    assert rig.engine.stats["speculation_used"] == 1
    assert rig.note_ons()[0][0] == end + 600


def test_a_clock_without_transport_sets_the_answers_tempo():
    """MIDI clock arriving with the transport stopped (a drum machine or a DAW that sends
    clock while stopped): the answer follows the clock's tempo, its notes' starts as well
    as their lengths; they used to start at engine.bpm and last at the clock's tempo
    (overlapping)."""
    rig = Rig({"m": Melody}, continuation={"start_on": "now"})
    tick_ms = 1000 / 24            # 60 bpm: a beat is a second
    state = {"t": 0.0}

    def clocks(upto):
        while state["t"] + tick_ms <= upto:
            state["t"] += tick_ms
            rig.send(state["t"], 0xF8)
        rig.advance(upto)

    clocks(3000)
    assert rig.engine.bpm(rig.clock.t) == pytest.approx(60) and not rig.engine.sync.running
    for on, off, pitch in [(3000, 3100, 60), (3200, 3300, 62)]:
        clocks(on)
        rig.on(on, pitch)
        clocks(off)
        rig.off(off, pitch)
    clocks(9000)
    ons = [t for t, _, _ in rig.note_ons()]
    offs = [t for t, _, _ in rig.note_offs()][-4:]
    assert len(ons) == 4
    assert [round(b - a) for a, b in zip(ons, ons[1:])] == [500, 500, 500]  # 0.5 beat at 60 bpm
    assert [round(b - a) for a, b in zip(ons, offs)] == [500, 500, 500, 500]
    assert unmatched(rig.msgs()) == {}


def test_the_internal_tempo_returns_to_engine_bpm_when_a_stopped_clock_goes_away():
    rig = Rig({"m": Melody})
    for i in range(1, 6):          # a few clocks at 60 bpm, no transport, then nothing
        rig.send(i * 1000 / 24, 0xF8)
    rig.advance(2000)              # past clock.timeout_ms
    assert rig.engine.bpm(rig.clock.t) == 120
    assert rig.engine.tempo.bpm == 120


class _Transport:
    """Drive a rig with MIDI clock at ``bpm`` (and transport messages), tick by tick."""

    def __init__(self, rig, bpm: float = 120.0) -> None:
        self.rig, self.tick_ms, self.k = rig, 60_000 / (bpm * 24), 0

    def clocks(self, upto: float) -> None:
        while (self.k + 1) * self.tick_ms <= upto + 1e-6:
            self.k += 1
            self.rig.send(self.k * self.tick_ms, 0xF8)
        self.rig.advance(upto)

    def phrase(self, at: float) -> None:
        for on, pitch in [(at, 60), (at + 250, 62)]:
            self.clocks(on)
            self.rig.on(on, pitch)
            self.clocks(on + 100)
            self.rig.off(on + 100, pitch)


def _gaps(rig, since: int = 0) -> list[int]:
    ons = [t for t, _, _ in rig.note_ons(since)]
    return [round(b - a) for a, b in zip(ons, ons[1:])]


def test_an_answer_goes_on_in_time_when_the_clock_stops_without_stop():
    """The DAW crashes or the cable is pulled mid-answer (no Stop): the answer goes on at
    the internal tempo from where it was; the notes that fell due while the clock was
    awaited used to go out all at once when it timed out."""
    rig = Rig({"m": Endless})
    tr = _Transport(rig)
    rig.send(0, 0xFA)                          # Start
    tr.clocks(1500)
    tr.phrase(1500)
    tr.clocks(3000)                            # the answer plays in time with the clock
    assert set(_gaps(rig)) == {125}            # a 1/4 beat at 120 bpm
    mark = rig.mark()
    rig.advance(6000)                          # the clock stops; engine.bpm is 120 too
    gaps = _gaps(rig, mark)
    assert len(gaps) >= 10
    assert min(gaps) >= 120, gaps              # no burst of overdue notes
    assert unmatched(rig.msgs()) == {}


def test_an_answer_goes_on_in_time_across_a_loop_jump():
    """A DAW looping sends Song Position while its clock runs: the answer goes on at its
    pace; it used to wait for the position it had reached to come round again (a jump
    back), or send every note up to the new position at once (a jump forward)."""
    for jump in (-16, +16):                    # sixteenths: 4 beats back, 4 beats on
        rig = Rig({"m": Endless})
        tr = _Transport(rig)
        rig.send(0, 0xFA)
        tr.clocks(1500)
        tr.phrase(1500)
        tr.clocks(3000)
        pos = rig.engine.sync.ticks // 6 + 1   # the next clock's 16th, then moved
        rig.send(3010, 0xF2, (pos + jump) & 0x7F, (pos + jump) >> 7)  # before the next clock
        mark = rig.mark()
        tr.clocks(5000)
        gaps = _gaps(rig, mark)
        assert len(gaps) >= 10, (jump, gaps)
        assert set(gaps) <= {124, 125, 126}, (jump, gaps)
        assert unmatched(rig.msgs()) == {}


def test_an_answer_on_a_clock_without_transport_goes_on_when_the_daw_starts():
    """Clock running with the transport stopped, an answer playing, then Start: the
    answer goes on at its pace (it used to wait until the song reached the beat it was
    at on the free-running timeline)."""
    rig = Rig({"m": Endless})
    tr = _Transport(rig)
    tr.clocks(1500)
    tr.phrase(1500)
    tr.clocks(3000)
    assert _gaps(rig) and set(_gaps(rig)) <= {124, 125, 126}
    rig.send(3010, 0xFA)                       # Start (the next clock is the song's first)
    mark = rig.mark()
    tr.clocks(5000)
    gaps = _gaps(rig, mark)
    assert len(gaps) >= 10, gaps
    assert set(gaps) <= {124, 125, 126}, gaps
    assert unmatched(rig.msgs()) == {}


def test_a_runaway_accompaniment_is_capped(caplog):
    """One played note answered with thousands of notes: the first MAX_ACCOMPANY play, the
    rest are counted as bad notes and named once in the log."""
    from midi_bridge.core.engine import MAX_ACCOMPANY

    class Flood(Intervals):
        def accompany(self, event, context):
            return [Note(p % 128, 80, 0.0, None) for p in range(5000)]

    rig = Rig({"f": Flood}, engine={"mode": "accompany"})
    with caplog.at_level(logging.WARNING):
        rig.on(0, 60)
        rig.advance(2000)
    assert len(rig.note_ons()) == MAX_ACCOMPANY
    assert rig.engine.stats["bad_notes"] == 5000 - MAX_ACCOMPANY
    assert "returned 5000 accompaniment notes" in caplog.text
    rig.off(2100, 60)
    rig.advance(4000)
    assert unmatched(rig.msgs()) == {}


def test_humanise_spreads_answer_notes_around_the_beat_not_early():
    """One random offset per note: it was drawn anew at every look at the next note, and
    the note went out on the first draw early enough (notes ~6 ms early on average, with
    less spread than asked)."""
    import statistics

    rig = Rig({"m": Endless}, output={"humanize_ms": 20},
              continuation={"max_notes": 1024, "max_beats": 256})
    rig.engine._rng.seed(1)
    phrase(rig)
    rig.advance(200_000)
    ons = [t for t, _, _ in rig.note_ons()][2:]     # (after the played phrase)
    step = 60_000 / 120 * Endless.STEP                 # the answer's grid, ms
    offsets = [t - ons[0] - i * step for i, t in enumerate(ons)]
    offsets = [o - statistics.median(offsets) for o in offsets]
    assert len(ons) > 500
    assert abs(statistics.mean(offsets)) < 3.0
    assert statistics.pstdev(offsets) > 16.0


def test_a_dotted_grid_never_starts_an_answer_before_its_beat():
    """Clocked, `start_on: beat`, quantised to 1/8. from the song's start: the nearest grid
    point to the answer's first beat can be before it; the note went out at once (on
    neither the beat nor the grid)."""
    rig = Rig({"m": Melody}, output={"quantize": "1/8."}, phrase={"silence_ms": 200},
              continuation={"start_on": "beat"})
    tr = _Transport(rig)
    rig.send(0, 0xFA)                           # Start: the first clock is beat 0
    tr.clocks(1000)
    tr.phrase(1000)                             # ends at 1550 ms, beat ~3.06: the answer on beat 4
    tr.clocks(4000)
    ons = [t for t, _, p in rig.note_ons() if p >= 72]
    assert ons, rig.timed()
    first = (ons[0] - tr.tick_ms) / 500         # in beats (120 bpm)
    assert first >= 4.0 - 1e-3, first           # not before the answer's beat (4)
    assert abs(first / 0.75 - round(first / 0.75)) < 1e-3, first  # and on the 1/8. grid


# -- the engine's parts (issue 12): one send path, core imports nothing above it -----------------

class Witness(Both):
    """Both modes; at every generator call it records what the engine had sent by then."""

    OUT: list = []        # the rig's output (set by the test)
    LOOKAHEAD = [(72, 0.0, 0.5), (74, 0.0, 0.5), (76, 0.0, 0.5)]  # all due at the answer's start

    def __init__(self, config=None) -> None:
        super().__init__(config)
        self.seen: list[tuple[str, list]] = []

    def _sent(self, where: str) -> None:
        self.seen.append((where, [m for _, m in self.OUT]))

    def observe(self, event) -> None:
        self._sent("observe")
        super().observe(event)

    def accompany(self, event, context):
        self._sent("accompany")
        return super().accompany(event, context)

    def continuation(self, context):
        def notes():
            for pitch, start, duration in self.LOOKAHEAD:
                self._sent(f"next {pitch}")
                yield Note(pitch, 90, start, duration)
        return notes()


def test_what_is_played_goes_out_before_any_generator_work():
    rig = Rig({"w": Witness}, engine={"mode": "accompany"}, thru={"enabled": True})
    Witness.OUT = rig.out
    rig.on(0, 60)
    (where, sent), (where2, sent2) = rig.gen.seen[-2:]
    assert (where, where2) == ("observe", "accompany")
    assert sent[-1] == sent2[-1] == (0x90, 60, 100), "the played note waited for the generator"


def test_an_interrupted_answer_is_ended_before_the_generator_hears_the_new_note():
    rig = Rig({"w": Witness}, thru={"enabled": True}, phrase={"silence_ms": 100, "min_notes": 1})
    Witness.OUT = rig.out
    Witness.LOOKAHEAD = [(72, 0.0, 4.0)]
    try:
        rig.tap(0, 60)
        rig.advance(300)                              # the answer's note sounds
        assert (0x90, 72, 90) in rig.msgs()
        rig.on(400, 64)
    finally:
        Witness.LOOKAHEAD = [(72, 0.0, 0.5), (74, 0.0, 0.5), (76, 0.0, 0.5)]
    where, sent = rig.gen.seen[-1]
    assert where == "observe"
    tail = sent[sent.index((0x90, 72, 90)) + 1:]
    assert (0x80, 72, 0) in tail and tail[-1] == (0x90, 64, 100), tail


def test_a_due_answer_note_leaves_before_the_generator_samples_the_next():
    rig = Rig({"w": Witness}, phrase={"silence_ms": 100, "min_notes": 1})
    Witness.OUT = rig.out
    rig.tap(0, 60)
    rig.advance(300)
    pulls = [(w, [m[1] for m in sent if m[0] == 0x90]) for w, sent in rig.gen.seen if w.startswith("next")]
    assert pulls == [("next 72", []), ("next 74", [72]), ("next 76", [72, 74])]


def test_core_imports_nothing_above_it():
    """The core room imports the plugin contract and itself only (before: the engine
    imported midi_bridge.runtime.host for a type)."""
    from test_layout import imports, modules, room
    bad = [f"{m} imports {t}" for m, p in modules().items() if room(m) == "core"
           for t in imports(m, p) if room(t) not in ("core", "plugin")]
    assert not bad, bad
