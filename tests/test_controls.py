"""Live controls, performer commands, ratings, accounting and plugin faults in the engine."""

from __future__ import annotations

import logging

import pytest

from midi_bridge.core import control
from midi_bridge.core.engine import ACCOUNTED
from midi_bridge.core.messages import Command
from helpers import Both, Endless, Intervals, Melody, Rig, is_cc, unmatched
from test_engine import phrase


# -- mapping specs ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec, parsed", [
    ("cc 21", ("cc", 21, None)), ("note 36", ("note", 36, None)),
    ("CC21", ("cc", 21, None)), ("note 36 ch 10", ("note", 36, 9)),
])
def test_specs_parse(spec, parsed):
    assert control.parse_spec(spec) == parsed
    kind, number, ch = parsed
    assert control.parse_spec(control.format_spec(kind, number, ch)) == parsed


@pytest.mark.parametrize("spec", ["cc 128", "pitch 3", "note 36 ch 17", 21, "cc", None])
def test_bad_specs_are_refused(spec):
    with pytest.raises(ValueError, match="'cc N' or 'note N'"):
        control.parse_spec(spec)


def test_scales_are_monotonic_and_echo_round_trips():
    for action in ("temperature", "length", "density"):
        values = [control.scale(action, v) for v in range(128)]
        assert values == sorted(values)
        for v in (0, 32, 64, 100, 127):
            assert abs(control.unscale(action, control.scale(action, v)) - v) <= 1
    assert control.scale("temperature", 0) == pytest.approx(0.1)
    assert control.scale("temperature", 127) == pytest.approx(2.0)
    assert 0.9 < control.scale("temperature", 64) < 1.1


def test_a_bad_map_in_the_config_names_the_action():
    from midi_bridge.commands.config import ConfigError, validate
    with pytest.raises(ConfigError, match="control.map.*actions from"):
        validate({"control": {"map": {"volume": "cc 7"}}})
    with pytest.raises(ConfigError, match="control.map.*'cc N'"):
        validate({"control": {"map": {"temperature": "knob 7"}}})


# -- mapped controls -------------------------------------------------------------------------


def test_temperature_knob_reaches_the_generator_and_is_not_played():
    rig = Rig({"m": Melody}, control={"map": {"temperature": "cc 21"}}, thru={"enabled": True})
    rig.send(0, 0xB0, 21, 127)
    assert rig.engine.controls["temperature"] == pytest.approx(2.0)
    assert not any(is_cc(m, 21) for m in rig.msgs()), "a mapped CC is consumed"
    end = phrase(rig, 10)
    rig.advance(end + 5000)
    assert rig.gen.contexts[-1].temperature == pytest.approx(2.0)


def test_density_zero_plays_no_answer_notes_and_density_one_all():
    rig = Rig({"m": Melody}, control={"map": {"density": "cc 22"}})
    rig.send(0, 0xB0, 22, 0)
    end = phrase(rig, 10)
    rig.advance(end + 5000)
    assert rig.note_ons() == [] and rig.engine.stats["thinned"] == 4
    rig.send(end + 5000, 0xB0, 22, 127)
    end = phrase(rig, end + 5100)
    rig.advance(end + 5000)
    assert len(rig.note_ons()) == 4
    assert rig.gen.contexts[-1].density == 1.0


def test_density_thins_accompaniment():
    rig = Rig({"i": Intervals}, engine={"mode": "accompany"}, control={"map": {"density": "cc 22"}})
    rig.send(0, 0xB0, 22, 0)
    rig.tap(10, 60)
    assert rig.note_ons() == []


def test_length_knob_shortens_answers():
    rig = Rig({"m": Endless}, control={"map": {"length": "cc 23"}}, continuation={"max_notes": 16})
    rig.send(0, 0xB0, 23, 0)          # 0.25x: 4 notes
    end = phrase(rig, 10)
    rig.advance(end + 10_000)
    assert len(rig.note_ons()) == 4
    assert rig.gen.contexts[-1].max_notes == 4


def test_mode_knob_switches_modes_in_three_ranges():
    rig = Rig({"b": Both}, control={"map": {"mode": "cc 24"}})
    rig.send(0, 0xB0, 24, 64)
    assert rig.engine.mode == "accompany"
    rig.send(1, 0xB0, 24, 127)
    assert rig.engine.mode == "thru"
    rig.send(2, 0xB0, 24, 0)
    assert rig.engine.mode == "continue"


def test_mode_a_generator_cannot_play_is_refused(caplog):
    rig = Rig({"m": Melody})
    with caplog.at_level(logging.WARNING):
        rig.engine.command("mode", "accompany")
    assert rig.engine.mode == "continue" and "refused" in caplog.text


def test_generator_knob_and_next_pad():
    rig = Rig({"a": Melody, "b": Melody, "c": Melody}, start="a",
              control={"map": {"generator": "cc 25", "next": "note 36 ch 10"}})
    rig.send(0, 0xB0, 25, 127)
    assert rig.engine.gen_name == "c"
    rig.send(1, 0x99, 36, 100)          # the pad on channel 10
    assert rig.engine.gen_name == "a"
    rig.send(2, 0x89, 36, 0)            # its release does nothing, and is not played
    rig.send(3, 0x90, 36, 100)          # the same note on channel 1 is a played note
    assert rig.engine.gen_name == "a" and rig.engine.stats["notes_in"] == 1


def test_a_binding_on_one_channel_wins_over_the_same_control_on_every_channel():
    """'note 36 ch 10' (a pad, learned with its channel) and 'note 36' (any channel): the pad
    on channel 10 is the channel-specific binding, whatever the order in the map; it used
    to fire whichever action was listed first."""
    for mapping in ({"next": "note 36", "panic": "note 36 ch 10"},
                    {"panic": "note 36 ch 10", "next": "note 36"}):
        rig = Rig({"a": Melody, "b": Melody}, start="a", control={"map": mapping})
        rig.send(0, 0x99, 36, 100)          # the pad on channel 10: panic, not next
        assert rig.engine.gen_name == "a", mapping
        rig.send(1, 0x90, 36, 100)          # key 36 on channel 1: next
        assert rig.engine.gen_name == "b", mapping


def test_panic_pad_ends_every_note():
    rig = Rig({"i": Intervals}, engine={"mode": "accompany"}, control={"map": {"panic": "cc 26"}})
    rig.on(0, 60)
    rig.send(10, 0xB0, 26, 127)
    assert unmatched(rig.msgs()) == {}
    assert any(is_cc(m, 123) for m in rig.msgs())


def test_state_is_echoed_on_the_mapped_cc():
    rig = Rig({"b": Both}, control={"map": {"mode": "cc 24", "temperature": "cc 21 ch 2"}})
    rig.engine.command("mode", "thru")
    assert (0xBF, 24, control.choice_value(2, 3)) in rig.msgs(), "echo on the control channel"
    rig.engine.command("temperature", 2.0)
    assert (0xB1, 21, control.unscale("temperature", 2.0)) in rig.msgs()
    mark = rig.mark()
    rig.send(10, 0xB1, 21, 30)           # turning the knob itself echoes nothing back
    assert not any(is_cc(m, 21) for m in rig.msgs(mark))


def test_echo_off():
    rig = Rig({"b": Both}, control={"map": {"mode": "cc 24"}, "echo": False})
    rig.engine.command("mode", "thru")
    assert rig.out == []


# -- commands (terminal keys) ------------------------------------------------------------------


def test_commands_arrive_through_handle():
    rig = Rig({"b": Both, "m": Melody}, start="b")
    e = rig.engine
    e.handle(Command("mode", (None,)), 0)
    assert e.mode == "accompany"
    e.handle(Command("temperature", (1.25,)), 0)
    e.handle(Command("temperature", (1.25,)), 0)
    assert e.controls["temperature"] == pytest.approx(1.5625, abs=1e-3)
    e.handle(Command("temperature", (100,)), 0)
    assert e.controls["temperature"] == 2.0
    e.handle(Command("mode", ("continue",)), 0)
    e.handle(Command("next"), 0)
    assert e.gen_name == "m"
    rig.on(10, 60)
    e.handle(Command("panic"), rig.clock.t)
    assert e.stats["commands"] == 7 and e.stats["events_in"] == 1


# -- ratings -------------------------------------------------------------------------------------


def test_rating_the_last_answer_stores_its_phrase_notes_and_context():
    class Rated(Melody):
        def rating_context(self):
            return {"checkpoint": "x.pt", "state": [0.5]}

    got = []
    rig = Rig({"m": Rated}, control={"map": {"rate_good": "note 36 ch 10", "rate_bad": "cc 30"}})
    rig.engine.on_rating = got.append
    rig.send(0, 0x99, 36, 100)
    assert got == [], "nothing to rate yet"
    end = phrase(rig, 10, pitches=(60, 64))
    rig.advance(end + 5000)
    rig.send(end + 5000, 0x99, 36, 100)
    rig.send(end + 5001, 0xB0, 30, 127)
    rig.send(end + 5002, 0xB0, 30, 0)      # the CC's release is not a second rating
    assert [r["rating"] for r in got] == [1, -1]
    r = got[0]
    assert r["generator"] == "m" and r["context"] == {"checkpoint": "x.pt", "state": [0.5]}
    assert [p[0] for p in r["phrase"]] == [60, 64]
    assert [(n[0], n[2], n[3]) for n in r["answer"]] == [(72, 0.0, 0.5), (74, 0.5, 0.5),
                                                         (76, 1.0, 0.5), (77, 1.5, 0.5)]
    assert rig.engine.stats["ratings"] == 2


# -- accounting and recording -------------------------------------------------------------------


def test_every_input_event_is_counted_once():
    rig = Rig({"m": Melody}, input={"channels": [1, 2]}, control={"map": {"panic": "cc 26"}})
    msgs = [(0x90, 60, 100), (0x80, 60, 0), (0x90, 61, 0), (0xB0, 1, 3), (0x93, 60, 90),
            (0xF8,), (0xFA,), (0xCF, 0), (0xB0, 26, 127), (0x90, 200, 3), (0xE0, 0, 64), ()]
    for i, m in enumerate(msgs):
        rig.send(i, *m)
    st = rig.engine.stats
    assert st["events_in"] == len(msgs) == sum(st[k] for k in ACCOUNTED)
    assert (st["notes_in"], st["notes_off"], st["filtered"], st["control"], st["malformed"]) == (1, 2, 1, 2, 2)


def test_the_recorder_hears_inputs_outputs_by_source_and_markers():
    class Rec:
        def __init__(self):
            self.events = []

        def inp(self, t, msg):
            self.events.append(("in", msg))

        def out(self, t, msg, source):
            self.events.append(("out", msg, source))

        def marker(self, t, text):
            self.events.append(("marker", text))

        def tempo(self, t, bpm):
            self.events.append(("tempo", bpm))

    rig = Rig({"i": Intervals, "b": Both}, start="i", engine={"mode": "accompany"}, thru={"enabled": True})
    rec = Rec()
    rig.engine.attach_recorder(rec)
    rig.tap(0, 60)
    rig.send(200, 0xCF, 0)               # program change 1: 'b'
    assert ("tempo", 120) in rec.events
    assert ("in", (0x90, 60, 100)) in rec.events
    assert ("out", (0x90, 60, 100), "thru") in rec.events
    assert ("out", (0x90, 64, 100), "i") in rec.events
    assert ("marker", "generator b") in rec.events


# -- time budgets ---------------------------------------------------------------------------------


class FakeWatchdog:
    """Stands in for midi_bridge.runtime.watchdog: calls of functions named in ``slow`` 'overrun'."""

    def __init__(self, slow):
        self.slow = slow

    def call(self, fn, *args, budget_ns):
        name = getattr(fn, "__name__", "")
        if name in self.slow:
            return None, True
        return fn(*args), False


def test_an_overrunning_call_is_skipped_and_repeated_overruns_swap_the_generator(caplog):
    rig = Rig({"a": Intervals, "slow": Intervals}, start="a", engine={"mode": "accompany", "max_overruns": 3})
    rig.send(0, 0xCF, 1)
    assert rig.engine.gen_name == "slow"
    rig.engine.guard_calls.watchdog = FakeWatchdog({"accompany"})
    with caplog.at_level(logging.WARNING):
        rig.tap(10, 60)
        assert rig.note_ons() == [], "its output is skipped"
        assert rig.engine.gen_name == "slow"
        rig.tap(200, 62)
        rig.tap(400, 64)
    assert rig.engine.gen_name == "a"
    assert rig.engine.stats["overruns"] == 3 and rig.engine.stats["replaced"] == 1
    assert "budget" in caplog.text and caplog.text.count("cut short") == 1
    rig.engine.guard_calls.watchdog = None
    rig.tap(600, 65)
    assert {p for _, _, p in rig.note_ons()} == {69, 72}


def test_one_overrun_between_good_calls_is_forgiven():
    rig = Rig({"i": Intervals}, engine={"mode": "accompany", "max_overruns": 2})
    wd = FakeWatchdog({"accompany"})
    rig.engine.guard_calls.watchdog = wd
    rig.tap(0, 60)
    wd.slow = set()
    rig.tap(200, 62)
    wd.slow = {"accompany"}
    rig.tap(400, 64)
    assert rig.engine.gen_name == "i" and rig.engine.stats["overruns"] == 2


@pytest.mark.parametrize("how", ["panic", "cc123", "stop"])
def test_a_lost_note_off_does_not_keep_the_phrase_open_for_ever(how):
    rig = Rig({"m": Melody})
    rig.tap(0, 60)
    rig.on(200, 62)                       # its note-off never arrives
    rig.advance(3000)
    assert rig.note_ons() == [], "a held key: no answer yet"
    if how == "panic":
        rig.engine.handle(Command("panic"), rig.clock.t)
    elif how == "cc123":
        rig.send(3000, 0xB0, 123, 0)
    else:
        rig.send(3000, 0xFC)
    assert not rig.engine.held
    end = phrase(rig, 3100)
    mark = rig.mark()
    rig.advance(end + 5000)
    assert [p for _, _, p in rig.note_ons(mark)] == [72, 74, 76, 77], "the next phrase is answered"


def test_rating_an_accompaniment_stores_the_recent_phrase_and_its_notes():
    got = []
    rig = Rig({"i": Intervals}, engine={"mode": "accompany"}, control={"map": {"rate_bad": "cc 30"}})
    rig.engine.on_rating = got.append
    rig.tap(0, 60)
    rig.tap(200, 62)
    rig.send(400, 0xB0, 30, 127)
    (r,) = got
    assert r["rating"] == -1 and r["mode"] == "accompany"
    assert [p[0] for p in r["phrase"]] == [60, 62]
    assert [n[0] for n in r["answer"]] == [66, 69], "the last accompaniment only"


def test_leaving_thru_mode_without_a_generator_loads_the_configured_one():
    """Started with --mode thru (no generator loaded), then 'm' or the mode knob: the bridge
    must not go silent; the configured generator is loaded and answers."""
    rig = Rig({"m": Melody}, engine={"mode": "thru", "generator": "m"})
    assert rig.engine.gen is None
    rig.engine.handle(Command("mode", ("continue",)), rig.clock.t)
    assert rig.engine.mode == "continue" and rig.engine.gen_name == "m"
    rig.tap(0, 60)
    rig.tap(200, 62)
    rig.advance(3000)
    assert [p for _, _, p in rig.note_ons()] == [72, 74, 76, 77]
    assert unmatched(rig.msgs()) == {}


def test_leaving_thru_mode_for_a_mode_the_generator_lacks_keeps_playing_thru(caplog):
    rig = Rig({"m": Melody}, engine={"mode": "thru", "generator": "m"})
    with caplog.at_level(logging.WARNING):
        rig.engine.handle(Command("mode", ("accompany",)), rig.clock.t)
    assert rig.engine.mode == "accompany" and rig.engine.gen is None
    assert "does not support mode 'accompany'" in caplog.text
    rig.tap(0, 60)
    assert rig.note_ons() == [(0, 0, 60)], "what is played must still be heard"
    assert unmatched(rig.msgs()) == {}


def test_a_mapped_pads_pressure_is_consumed_not_passed_thru():
    """A pad mapped to an action sends poly aftertouch while held: it is the control's,
    not music (it went out through thru, on a note the synth never got)."""
    rig = Rig({"m": Melody}, thru={"enabled": True}, control={"map": {"panic": "note 36"}})
    rig.send(0, 0x99, 36, 100)           # the pad, channel 10
    mark = rig.mark()
    rig.send(10, 0xA9, 36, 80)           # its pressure
    rig.send(20, 0xA9, 37, 80)           # an unmapped key's pressure passes
    assert rig.msgs(mark) == [(0xA9, 37, 80)]
    assert set(rig.engine.stats) >= {"control"} and rig.engine.stats["control"] == 2


def test_the_live_controls_log_as_their_own_module(caplog):
    """(before: as "midi_bridge.core.engine", a name written into control.py)"""
    rig = Rig({"m": Melody})
    with caplog.at_level(logging.INFO):
        rig.engine.command("panic")
    assert [r.name for r in caplog.records if "panic" in r.getMessage()] == ["midi_bridge.core.control"]


def test_the_controls_are_an_object_the_engine_calls():
    """Not a mixin sharing the engine's privates: its own state, the engine's public side."""
    rig = Rig({"m": Melody}, control={"map": {"density": "cc 20"}})
    e = rig.engine
    assert not isinstance(e, control.LiveControls) and isinstance(e.live, control.LiveControls)
    rig.send(0, 0xB0, 20, 0)
    assert e.live.values["density"] == 0.0 and e.controls is e.live.values
