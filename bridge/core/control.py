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
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from . import midi

log = logging.getLogger("midi_bridge.core.engine")

CONTINUOUS = ("temperature", "length", "density", "mode", "generator")
TRIGGERS = ("next", "panic", "rate_good", "rate_bad")
ACTIONS = CONTINUOUS + TRIGGERS
MODES = ("continue", "accompany", "thru")
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


class LiveControls:
    """The engine's side of live controls (mixed into :class:`midi_bridge.core.engine.Engine`, whose
    state it changes; it runs on the engine thread like everything else there)."""

    def command(self, name: str, *args: Any) -> None:
        """A performer's command: ``panic``, ``next``, ``mode`` [name, None: cycle],
        ``temperature`` factor, ``set`` action value, ``rate`` +1/-1."""
        self.stats["commands"] += 1
        now = self._now
        if name == "panic":
            log.info("panic: ending every note")
            self._end_everything(now)
            self._reset_phrase()
            self.held.clear()  # a note-off lost on the way must not keep the phrase open
        elif name == "next":
            self.request_swap("next")
        elif name == "mode":
            mode = args[0] if args and args[0] else MODES[(MODES.index(self.mode) + 1) % len(MODES)]
            self.set_mode(mode)
        elif name == "temperature":
            t = (self.controls["temperature"] or 1.0) * float(args[0])
            self._set_control("temperature", round(max(0.1, min(2.0, t)), 3))
        elif name == "set":
            self._set_control(args[0], args[1])
        elif name == "rate":
            self.rate(int(args[0]))
        else:
            log.warning("unknown command %r ignored", name)

    def set_mode(self, mode: str) -> None:
        if mode == self.mode:
            return
        if mode != "thru" and self.gen is not None and mode not in self.gen.modes:
            log.warning("mode '%s' refused: generator '%s' supports %s (keeping '%s')", mode,
                        self.gen_name, ", ".join(sorted(self.gen.modes)), self.mode)
            self._echo("mode")
            return
        self._end_everything(self._now)
        self._reset_phrase()
        log.info("mode: %s -> %s", self.mode, mode)
        self.mode = mode
        self._marker(f"mode {mode}")
        self._echo("mode")
        if mode != "thru" and self.gen is None and not self._fallback_thru:
            # Started in thru: no generator was loaded.  Load the configured one; until it
            # is ready (or if it cannot play this mode) what is played passes through.
            name = self.cfg["engine"]["generator"]
            log.info("mode %s: loading generator '%s' (playing thru until it is ready)", mode, name)
            self._fallback_thru = True
            self.request_swap(name)

    def _set_control(self, action: str, value: float, echo: bool = True) -> None:
        self.controls[action] = value
        if action == "length":
            n, b = self._base_length
            self.max_notes = max(1, round(n * value))
            self.max_beats = max(0.25, b * value)
        if echo:
            self._echo(action)

    def _mapped(self, b: "Binding", kind: int, value: int, ch: int) -> None:
        """A mapped knob, fader or pad moved."""
        if b.action in TRIGGERS:
            pressed = value > 0 if kind == midi.NOTE_ON else kind == midi.CONTROL and value >= 64
            if not pressed:
                return
            if b.action == "rate_good" or b.action == "rate_bad":
                self.rate(1 if b.action == "rate_good" else -1)
            else:
                self.command(b.action)
            return
        if kind != midi.CONTROL:
            return  # continuous actions read CCs; a note mapped to one only consumes itself
        if b.action == "mode":
            self.set_mode(MODES[pick(value, len(MODES))])
        elif b.action == "generator":
            names = self.host.names()
            if names:
                self.request_swap(pick(value, len(names)))
        else:  # (no echo back to the knob being turned)
            self._set_control(b.action, scale(b.action, value), echo=False)

    def _echo(self, action: str) -> None:
        """Show the current value of ``action`` on its mapped CC (controller LEDs)."""
        if not self.echo:
            return
        b = self.cmap.binding(action)
        if b is None or b.kind != "cc":
            return
        if action == "mode":
            value = choice_value(MODES.index(self.mode), len(MODES))
        elif action == "generator":
            names = self.host.names()
            if self.gen_name not in names:
                return
            value = choice_value(names.index(self.gen_name), len(names))
        else:
            q = self.controls[action]
            value = unscale(action, 1.0 if q is None else q)
        ch = self.control_channel if b.channel is None else b.channel
        self.sched.message(self._now, (midi.CONTROL | ch, b.number, value), CONTROL)
        self.sched.pump(self._now)

    def rate(self, rating: int) -> None:
        """The performer marks the last answer good (+1) or bad (-1)."""
        if self._last is None or not self._last[1]:
            self._warn_once("rate_nothing", "rating ignored: no answer has been played yet")
            return
        prompt, notes = self._last
        if prompt is None:  # accompaniment: the notes played most recently
            prompt = tuple(self.phrase)[-8:]
        ctx = self._call(self.gen.rating_context) if self.gen is not None else None
        record = {
            "rating": rating, "generator": self.gen_name, "mode": self.mode,
            "bpm": round(self.bpm(self._now), 3), "context": dict(ctx or {}),
            "phrase": [[e.pitch, e.velocity, round(e.beat, 4)] for e in prompt],
            "answer": [[n.pitch, n.velocity, round(n.start, 4),
                        None if n.duration is None else round(n.duration, 4)] for n in notes],
        }
        self.stats["ratings"] += 1
        log.info("rated the last answer %s (%d notes)", "good" if rating > 0 else "bad", len(notes))
        self._marker("rating " + ("good" if rating > 0 else "bad"))
        if self.on_rating is not None:
            self.on_rating(record)

    def _marker(self, text: str) -> None:
        if self.recorder is not None:
            self.recorder.marker(self._now, text)
