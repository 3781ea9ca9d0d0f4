"""Live controls: MIDI mappings (knobs, faders, pads) to what a performer changes while playing.

``control.map`` in the config maps an *action* to a MIDI control, written ``"cc N"`` or
``"note N"``, optionally with ``" ch C"`` (1-16) to listen on one channel only.  A mapped
message is consumed: it is not played, passed through or handed to the generator.

Continuous actions take the CC value (0-127) and scale it:

* ``temperature`` - sampling temperature 0.1 to 1.0 over the lower half, up to 2.0 above,
* ``length``      - answer length, 0.25x to 2x of ``continuation.max_notes``/``max_beats``,
* ``density``     - 0 to 1: the share of generated notes that are played,
* ``mode``        - continue / accompany / thru in three ranges of the knob,
* ``generator``   - the knob's range split over the generators of ``control.order``.

Trigger actions fire on a note-on, or a CC press (value >= 64): ``next`` (next
generator), ``panic`` (end every note), ``rate_good`` and ``rate_bad`` (rate the last
answer, see :mod:`midi_bridge.stage.ratings`).

With ``control.echo`` the bridge sends each mapped CC's current value back on the output
after a change, so a controller's LED rings and motor faders follow.

:class:`LiveControls` is the object the engine hands mapped messages and commands to; it
holds the map and the performer's values and acts through the engine's public methods
(:class:`Performer`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Protocol

from . import midi
from .modes import MODES

log = logging.getLogger(__name__)

CONTINUOUS = ("temperature", "length", "density", "mode", "generator")
TRIGGERS = ("next", "panic", "rate_good", "rate_bad")
ACTIONS = CONTINUOUS + TRIGGERS
CONTROL = "control"  # scheduler tag of the messages the bridge sends to controllers

_SPEC = re.compile(r"^\s*(cc|note)\s*(\d{1,3})(?:\s+ch\s*(\d{1,2}))?\s*$", re.IGNORECASE)


def parse_spec(spec: Any) -> tuple[str, int, int | None]:
    """``"cc 21"`` -> ``("cc", 21, None)``; ``"note 36 ch 10"`` -> ``("note", 36, 9)``."""
    m = _SPEC.match(spec) if isinstance(spec, str) else None
    if m is None or int(m.group(2)) > 127 or (m.group(3) and not 1 <= int(m.group(3)) <= 16):
        raise ValueError(f"'cc N' or 'note N' with N 0-127, optionally ' ch C' with C 1-16 (not {spec!r})")
    ch = int(m.group(3)) - 1 if m.group(3) else None
    return m.group(1).lower(), int(m.group(2)), ch


def format_spec(kind: str, number: int, channel: int | None = None) -> str:
    """The inverse of :func:`parse_spec` (channel 0-15, written 1-16)."""
    return f"{kind} {number}" + ("" if channel is None else f" ch {channel + 1}")


def scale(action: str, value: int) -> float:
    """A CC value 0-127 as the action's quantity."""
    x = max(0, min(127, value)) / 127.0
    if action == "temperature":  # 0.1 .. 1.0 geometric over the lower half, 1.0 .. 2.0 above
        return round(0.1 * 10.0 ** (2 * x) if x <= 0.5 else 1.0 + 2 * (x - 0.5), 3)
    if action == "length":
        return round(0.25 * (8.0 ** x), 3)  # 0.25x .. 2x, 1x at 1/3 of the travel
    if action == "density":
        return round(x, 3)
    raise ValueError(action)


def unscale(action: str, quantity: float) -> int:
    """The CC value that shows ``quantity`` (for echoing the state to a controller)."""
    import math
    if action == "temperature":
        q = max(0.1, min(2.0, quantity))
        x = math.log10(q / 0.1) / 2 if q <= 1.0 else 0.5 + (q - 1.0) / 2
    elif action == "length":
        x = math.log(max(0.25, min(2.0, quantity)) / 0.25) / math.log(8.0)
    elif action == "density":
        x = max(0.0, min(1.0, quantity))
    else:
        raise ValueError(action)
    return round(x * 127)


def pick(value: int, count: int) -> int:
    """Which of ``count`` choices a CC value 0-127 selects (equal ranges)."""
    return min(count - 1, max(0, value) * count // 128)


def choice_value(index: int, count: int) -> int:
    """The CC value in the middle of choice ``index``'s range (for echo)."""
    return min(127, (2 * index + 1) * 128 // (2 * count))


@dataclass
class Binding:
    action: str
    kind: str          # "cc" or "note"
    number: int
    channel: int | None


class ControlMap:
    """Looks up which action, if any, a channel message is bound to (O(1) per message)."""

    def __init__(self, mapping: dict[str, tuple[str, int, int | None]]) -> None:
        self.bindings = [Binding(a, *spec) for a, spec in mapping.items()]
        self._by_key: dict[tuple[str, int], list[Binding]] = {}
        for b in self.bindings:
            self._by_key.setdefault((b.kind, b.number), []).append(b)
        for found in self._by_key.values():  # a binding on one channel wins over "every channel"
            found.sort(key=lambda b: b.channel is None)

    def __bool__(self) -> bool:
        return bool(self.bindings)

    def match(self, kind: str, number: int, channel: int) -> Binding | None:
        for b in self._by_key.get((kind, number), ()):
            if b.channel is None or b.channel == channel:
                return b
        return None

    def binding(self, action: str) -> Binding | None:
        for b in self.bindings:
            if b.action == action:
                return b
        return None


class Performer(Protocol):
    """What the live controls act on (:class:`midi_bridge.core.engine.Engine`'s public side)."""

    mode: str
    gen_name: str | None
    stats: dict[str, int]
    host: Any

    def panic(self) -> None: ...
    def request_swap(self, selector: str | int) -> None: ...
    def set_mode(self, mode: str) -> None: ...
    def set_length(self, factor: float) -> None: ...
    def rate(self, rating: int) -> None: ...
    def send_control(self, msg: tuple[int, ...]) -> None: ...


class LiveControls:
    """The performer's controls: mapped CCs and notes, control-channel program changes and
    the next-generator CC, and commands (the terminal's keys).  Runs on the engine thread."""

    def __init__(self, config: dict[str, Any], engine: Performer) -> None:
        self.engine = engine
        self.channel: int = config["channel"]
        self.program_change: bool = config["program_change"]
        self.next_cc = config["next_cc"]
        self.cmap = ControlMap(config["map"])
        self.echo_on: bool = config["echo"]
        #: The performer's live values: temperature (None: the generator's own), answer
        #: length (x continuation.max_notes/max_beats) and density (share of notes played).
        self.values: dict[str, Any] = {"temperature": None, "length": 1.0, "density": 1.0}

    def match(self, kind: int, number: int, ch: int) -> Binding | None:
        """The binding of a channel message of ``kind`` (cc, note on/off, poly pressure), if any."""
        return self.cmap.match("cc" if kind == midi.CONTROL else "note", number, ch)

    def command(self, name: str, *args: Any) -> None:
        """A performer's command: ``panic``, ``next``, ``mode`` [name, None: cycle],
        ``temperature`` factor, ``set`` action value, ``rate`` +1/-1."""
        eng = self.engine
        eng.stats["commands"] += 1
        if name == "panic":
            log.info("panic: ending every note")
            eng.panic()
        elif name == "next":
            eng.request_swap("next")
        elif name == "mode":
            mode = args[0] if args and args[0] else MODES[(MODES.index(eng.mode) + 1) % len(MODES)]
            eng.set_mode(mode)
        elif name == "temperature":
            t = (self.values["temperature"] or 1.0) * float(args[0])
            self.set("temperature", round(max(0.1, min(2.0, t)), 3))
        elif name == "set":
            self.set(args[0], args[1])
        elif name == "rate":
            eng.rate(int(args[0]))
        else:
            log.warning("unknown command %r ignored", name)

    def set(self, action: str, value: float, echo: bool = True) -> None:
        self.values[action] = value
        if action == "length":
            self.engine.set_length(value)
        if echo:
            self.echo(action)

    def channel_message(self, kind: int, msg: tuple[int, ...]) -> bool:
        """A program change or the next-generator CC on the control channel (consumed)."""
        if kind == midi.PROGRAM and self.program_change:
            self.engine.request_swap(msg[1])
            return True
        if kind == midi.CONTROL and self.next_cc is not None and msg[1] == self.next_cc:
            if msg[2] >= 64:
                self.engine.request_swap("next")
            return True
        return False

    def mapped(self, b: Binding, kind: int, value: int) -> None:
        """A mapped knob, fader or pad moved."""
        eng = self.engine
        if b.action in TRIGGERS:
            pressed = value > 0 if kind == midi.NOTE_ON else kind == midi.CONTROL and value >= 64
            if not pressed:
                return
            if b.action == "rate_good" or b.action == "rate_bad":
                eng.rate(1 if b.action == "rate_good" else -1)
            else:
                self.command(b.action)
            return
        if kind != midi.CONTROL:
            return  # continuous actions read CCs; a note mapped to one only consumes itself
        if b.action == "mode":
            eng.set_mode(MODES[pick(value, len(MODES))])
        elif b.action == "generator":
            names = eng.host.names()
            if names:
                eng.request_swap(pick(value, len(names)))
        else:  # (no echo back to the knob being turned)
            self.set(b.action, scale(b.action, value), echo=False)

    def echo(self, action: str) -> None:
        """Show the current value of ``action`` on its mapped CC (controller LEDs)."""
        if not self.echo_on:
            return
        b = self.cmap.binding(action)
        if b is None or b.kind != "cc":
            return
        eng = self.engine
        if action == "mode":
            value = choice_value(MODES.index(eng.mode), len(MODES))
        elif action == "generator":
            names = eng.host.names()
            if eng.gen_name not in names:
                return
            value = choice_value(names.index(eng.gen_name), len(names))
        else:
            q = self.values[action]
            value = unscale(action, 1.0 if q is None else q)
        ch = self.channel if b.channel is None else b.channel
        eng.send_control((midi.CONTROL | ch, b.number, value))
