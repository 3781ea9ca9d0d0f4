"""A transparent thru: in thru mode, and with ``thru.enabled`` in the other modes, every
message on a listened channel passes as played -- a note-off for a note the bridge did not
see start, CCs, pitch bend, both aftertouches, program
changes not used for control -- while the note book keeps ending exactly what the bridge
started (a key played again while it sounds is still ended first: no output ever
has two note-ons of one key without a note-off between).  Mapped controls, the control channel, the feedback guard and the channel filter
still take what is theirs."""

from __future__ import annotations

import pytest

from midi_bridge.core import midi

from helpers import Intervals, Melody, Rig, unmatched

#: Each kind of channel message, as played on channel 1 (0).
KINDS = {
    "note_on": [(0x90, 60, 100)],
    "note_on_off": [(0x90, 60, 100), (0x80, 60, 64)],           # release velocity kept
    "orphan_note_off": [(0x80, 0, 0)],                            # jack_midi_latency_test's first
    "orphan_note_off_velocity": [(0x80, 61, 90)],
    "cc": [(0xB0, 7, 90), (0xB0, 64, 127), (0xB0, 64, 0)],
    "pitch_bend": [(0xE0, 0, 64), (0xE0, 127, 127)],
    "channel_aftertouch": [(0xD0, 77)],
    "poly_aftertouch": [(0x90, 62, 80), (0xA0, 62, 50), (0x80, 62, 0)],
    "program_change": [(0xC0, 5)],                                # not the control channel
    "latency_test": [(0x80, 0, 0), (0x90, 127, 127)],             # what the latency test plays
}


def thru_mode() -> Rig:
    return Rig(engine={"mode": "thru"})


def thru_enabled() -> Rig:
    return Rig({"m": Melody}, thru={"enabled": True})


SETUPS = {"thru mode": thru_mode, "thru.enabled": thru_enabled}


def play(rig: Rig, msgs, t0: float = 0.0, step: float = 40.0) -> float:
    t = t0
    for m in msgs:
        rig.send(t, *m)
        t += step
    return t


@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("kind", KINDS)
def test_each_message_kind_passes_unchanged(setup, kind):
    rig = SETUPS[setup]()
    msgs = KINDS[kind]
    play(rig, msgs)               # 40 ms apart: past the feedback guard, inside the silence
    assert rig.msgs() == msgs
    assert rig.engine.stats["events_in"] == len(msgs)


@pytest.mark.parametrize("setup", SETUPS)
def test_an_orphan_note_off_leaves_the_note_book_as_it_was(setup):
    rig = SETUPS[setup]()
    rig.send(0, 0x80, 0, 0)
    rig.send(10, 0x80, 61, 90)
    assert rig.msgs() == [(0x80, 0, 0), (0x80, 61, 90)]
    assert rig.engine.sched.sounding == {}
    rig.on(20, 60)
    rig.send(30, 0x80, 60, 0)      # a real release still ends it
    assert rig.engine.sched.sounding == {}
    rig.send(40, 0x80, 60, 0)      # released twice: the second passes too (a harmless repeat)
    assert rig.msgs()[-1] == (0x80, 60, 0)
    assert rig.engine.sched.sounding == {}


def test_an_orphan_note_off_never_ends_a_note_the_generator_sounds():
    """The answer sounds 72 on the player's channel; the player's note-off for a 72 the
    bridge never saw start must not cut it (nor take it out of the book)."""
    rig = Rig({"m": Melody}, thru={"enabled": True})
    rig.tap(0, 60)
    rig.tap(200, 62)
    rig.advance(900)                               # the answer's first note, 72, sounds
    assert (0, 72) in rig.engine.sched.sounding
    mark = rig.mark()
    rig.send(905, 0x80, 72, 0)                     # orphan: the player never pressed 72
    assert rig.msgs(mark) == []
    owner = rig.engine.sched.sounding[(0, 72)][1]
    assert owner != "thru"
    rig.send(910, 0x80, 50, 0)                     # an orphan where nothing sounds passes
    assert rig.msgs(mark) == [(0x80, 50, 0)]
    rig.advance(5000)
    assert unmatched(rig.msgs()) == {}
    assert rig.engine.sched.sounding == {}


def test_the_latency_tests_stream_passes_with_a_note_off_before_each_repeated_note_on():
    rig = thru_mode()
    play(rig, [(0x80, 0, 0), (0x90, 127, 127)] * 3)
    assert rig.msgs() == [(0x80, 0, 0), (0x90, 127, 127),
                          (0x80, 0, 0), (0x80, 127, 0), (0x90, 127, 127),
                          (0x80, 0, 0), (0x80, 127, 0), (0x90, 127, 127)]
    assert list(rig.engine.sched.sounding) == [(0, 127)]
    rig.off(300, 127)
    assert rig.engine.sched.sounding == {}


@pytest.mark.parametrize("setup", SETUPS)
def test_panic_and_stop_end_exactly_what_the_bridge_started(setup):
    for end in ("panic", "stop"):
        rig = SETUPS[setup]()
        rig.on(0, 60)
        rig.on(10, 62)
        rig.send(20, 0x80, 64, 0)      # orphan: passed, nothing to end later
        rig.on(30, 65)
        rig.off(40, 65)
        mark = rig.mark()
        if end == "panic":
            rig.engine.command("panic")
        else:
            rig.send(50, 0xFC)         # transport Stop
        rig.advance(100)
        offs = [m for m in rig.msgs(mark) if m[0] & 0xF0 == midi.NOTE_OFF]
        assert offs == [(0x80, 60, 0), (0x80, 62, 0)], end
        assert rig.engine.sched.sounding == {}


def test_a_program_change_bound_to_generator_selection_is_consumed_not_passed():
    rig = Rig({"a": Melody, "b": Intervals}, start="a", thru={"enabled": True},
              engine={"mode": "thru"})
    rig.send(0, 0xC0 | 15, 1)          # control channel 16, program 2: generator b
    assert rig.msgs() == []
    assert rig.engine.gen_name == "b"
    assert rig.engine.stats["control"] == 1
    rig.send(10, 0xC0, 1)              # the same on channel 1: the player's, passed
    assert rig.msgs() == [(0xC0, 1)]


def test_mapped_controls_the_channel_filter_and_the_feedback_guard_stay():
    rig = Rig(engine={"mode": "thru"}, input={"channels": [1, 2]},
              control={"map": {"density": "cc 21"}})
    rig.send(0, 0xB0, 21, 10)          # mapped: consumed
    rig.send(10, 0xB0 | 2, 7, 90)      # channel 3: not listened to
    rig.send(20, 0x81, 40, 0)          # channel 2: passes (an orphan note-off)
    assert rig.msgs() == [(0x81, 40, 0)]
    rig.send(30, 0x81, 40, 0)          # the bridge's own output back within 30 ms: dropped
    assert rig.msgs() == [(0x81, 40, 0)]
    assert rig.engine.stats["echoes"] == 1
    rig.send(100, 0x81, 40, 0)         # later: the player's again, passed
    assert rig.msgs() == [(0x81, 40, 0)] * 2


def test_the_scheduler_passes_a_release_of_a_note_nobody_sounds_only_for_its_passthrough_tag():
    from midi_bridge.core.scheduler import Scheduler

    out = []
    s = Scheduler(out.append)
    s.passthrough = "thru"
    s.note(0, None, 0, 72, 100, "cont")             # a generated note on (0, 72)
    s.note(0, None, 0, 60, 90, "thru", safety=False)
    s.release(1, 0, 72, "thru")                     # sounds for another owner: not ended
    s.release(1, 0, 60, "thru", 30)                 # its own: ended, velocity kept
    s.release(1, 0, 50, "thru", 20)                 # nobody sounds it: passes
    s.release(1, 0, 51, "cont")                     # not the passthrough tag: dropped
    s.pump(1)
    assert out == [(0x90, 72, 100), (0x90, 60, 90), (0x80, 60, 30), (0x80, 50, 20)]
    assert list(s.sounding) == [(0, 72)] and s.sounding[(0, 72)][1] == "cont"
    s.panic(2)
    s.pump(2)
    assert [m for m in out[4:] if m[0] & 0xF0 == midi.NOTE_OFF] == [(0x80, 72, 0)]
