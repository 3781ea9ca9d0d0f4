"""Raw MIDI messages as small tuples of ints, checked and normalised.

The hot path keeps messages as ``(status, data1, data2)`` tuples (``(status,)`` or
``(status, data1)`` for shorter ones): python-rtmidi sends and receives lists of ints, so
nothing is converted twice.  :func:`parse` checks a received message and normalises a
note-on with velocity 0 into a note-off.
"""

from __future__ import annotations

NOTE_OFF = 0x80
NOTE_ON = 0x90
POLY_AT = 0xA0
CONTROL = 0xB0
PROGRAM = 0xC0
CHAN_AT = 0xD0
PITCH_BEND = 0xE0

CC_SUSTAIN = 64
CC_ALL_SOUND_OFF = 120
CC_ALL_NOTES_OFF = 123

CLOCK = 0xF8
START = 0xFA
CONTINUE = 0xFB
STOP = 0xFC
SONG_POSITION = 0xF2

# Data bytes expected after each channel-voice status (high nibble).
_CHANNEL_LEN = {0x80: 2, 0x90: 2, 0xA0: 2, 0xB0: 2, 0xC0: 1, 0xD0: 1, 0xE0: 2}
# System common / real-time: data bytes expected (None = variable, SysEx).
_SYSTEM_LEN = {0xF0: None, 0xF1: 1, 0xF2: 2, 0xF3: 1, 0xF6: 0, 0xF8: 0, 0xFA: 0,
               0xFB: 0, 0xFC: 0, 0xFE: 0, 0xFF: 0}


class MalformedMidi(ValueError):
    """A received message that is not valid MIDI; ``str()`` says why."""


def parse(data: list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """Check one complete message; return it as a tuple, note-on velocity 0 as note-off."""
    if not data:
        raise MalformedMidi("empty message")
    status = data[0]
    if not isinstance(status, int) or not 0x80 <= status <= 0xFF:
        raise MalformedMidi(f"first byte {status!r} is not a status byte (running status is not supported)")
    if status < 0xF0:
        expected = _CHANNEL_LEN[status & 0xF0]
    else:
        if status not in _SYSTEM_LEN:
            raise MalformedMidi(f"undefined status byte 0x{status:02X}")
        expected = _SYSTEM_LEN[status]
        if expected is None:  # SysEx: F0 ... F7
            last = data[-1]
            try:  # bytes() checks every byte is an int 0-255 at C speed (SysEx can be 64 KiB)
                ok = type(last) is int and last == 0xF7 and bytes(data[1:-1]).isascii()
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise MalformedMidi("SysEx not terminated by F7 or with a byte over 0x7F")
            return tuple(data)
    if len(data) != expected + 1:
        raise MalformedMidi(f"status 0x{status:02X} takes {expected} data bytes, got {len(data) - 1}")
    for b in data[1:]:
        if not isinstance(b, int) or not 0 <= b < 0x80:
            raise MalformedMidi(f"data byte {b!r} out of range 0-127")
    if expected == 2:
        if status & 0xF0 == NOTE_ON and data[2] == 0:
            return (NOTE_OFF | (status & 0x0F), data[1], 0)
        return (status, data[1], data[2])
    return tuple(data)


def note_on(channel: int, pitch: int, velocity: int) -> tuple[int, int, int]:
    return (NOTE_ON | channel, pitch, velocity)


def note_off(channel: int, pitch: int, velocity: int = 0) -> tuple[int, int, int]:
    return (NOTE_OFF | channel, pitch, velocity)


def control(channel: int, number: int, value: int) -> tuple[int, int, int]:
    return (CONTROL | channel, number, value)


def describe(msg: tuple[int, ...]) -> str:
    """A short human description (channels shown 1-16), for logs and errors."""
    status = msg[0]
    if status >= 0xF0:
        return f"system 0x{status:02X}"
    kind = {0x80: "note_off", 0x90: "note_on", 0xA0: "poly_aftertouch", 0xB0: "control_change",
            0xC0: "program_change", 0xD0: "aftertouch", 0xE0: "pitchwheel"}[status & 0xF0]
    return f"{kind} ch{(status & 0x0F) + 1} " + " ".join(str(b) for b in msg[1:])
