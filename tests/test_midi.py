"""midi_bridge.core.midi.parse: normalisation and rejection of malformed input; the engine survives it."""

from __future__ import annotations

import pytest

from midi_bridge.core import midi
from midi_bridge.core.midi import MalformedMidi, parse

from helpers import Melody, Rig


def test_note_on_velocity_zero_is_a_note_off_on_the_same_channel():
    assert parse([0x93, 60, 0]) == (0x83, 60, 0)
    assert parse((0x90, 127, 0)) == (0x80, 127, 0)


@pytest.mark.parametrize("data", [
    [0x90, 60, 100], [0x80, 60, 64], [0xB5, 64, 127], [0xEF, 0, 127], [0xA0, 60, 1],
])
def test_two_data_byte_messages_pass_unchanged_as_tuples(data):
    assert parse(data) == tuple(data)


@pytest.mark.parametrize("data", [[0xC0, 5], [0xDF, 127], [0xF8], [0xFA], [0xFC], [0xF2, 1, 2],
                                  [0xF0, 0x7E, 0x01, 0xF7]])
def test_short_and_system_messages_pass(data):
    assert parse(data) == tuple(data)


@pytest.mark.parametrize("data, reason", [
    ([], "empty"),
    ([60, 100], "running status"),               # running status: no status byte
    ([0x3C, 0x40, 0x00], "not a status byte"),
    ([0xF4], "undefined status"),
    ([0xFD], "undefined status"),
    ([0x90, 60, 128], "out of range"),           # data byte > 127
    ([0x90, 200, 1], "out of range"),
    ([0xB0, 7, 255], "out of range"),
    ([0x90, 60], "takes 2 data bytes, got 1"),    # wrong length
    ([0x90, 60, 100, 5], "takes 2 data bytes, got 3"),
    ([0xC0], "takes 1 data bytes, got 0"),
    ([0xC0, 1, 2], "takes 1 data bytes, got 2"),
    ([0xF8, 0], "takes 0 data bytes, got 1"),
    ([0xF0, 1, 2], "SysEx"),                      # unterminated SysEx
    ([0xF0, 1, 0x90, 0xF7], "SysEx"),
])
def test_malformed_messages_raise_with_a_reason(data, reason):
    with pytest.raises(MalformedMidi) as e:
        parse(data)
    assert reason in str(e.value)
    assert isinstance(e.value, ValueError)


def test_helpers_build_the_messages_they_name():
    assert midi.note_on(15, 60, 90) == (0x9F, 60, 90)
    assert midi.note_off(2, 61) == (0x82, 61, 0)
    assert midi.control(1, midi.CC_ALL_NOTES_OFF, 0) == (0xB1, 123, 0)
    assert midi.describe((0x91, 60, 100)) == "note_on ch2 60 100"


def test_engine_counts_malformed_input_and_keeps_going():
    rig = Rig({"melody": Melody}, engine={"mode": "continue"})
    rig.send(0, 60, 100)             # running status
    rig.send(1, 0x90, 60)            # too short
    rig.send(2, 0x90, 60, 200)       # data byte out of range
    rig.send(3, 0xF4)                # undefined status
    rig.tap(10, 60)
    rig.tap(200, 62)
    rig.advance(2000)
    st = rig.engine.stats
    assert st["malformed"] == 4
    assert st["events_in"] == 8
    assert st["notes_in"] == 2
    assert st["answers"] == 1
    assert rig.note_ons(), "the valid phrase after malformed input is still answered"
