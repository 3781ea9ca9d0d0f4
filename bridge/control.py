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
answer, see :mod:`bridge.ratings`).

With ``control.echo`` the bridge sends each mapped CC's current value back on the output
after a change, so a controller's LED rings and motor faders follow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

CONTINUOUS = ("temperature", "length", "density", "mode", "generator")
TRIGGERS = ("next", "panic", "rate_good", "rate_bad")
ACTIONS = CONTINUOUS + TRIGGERS
MODES = ("continue", "accompany", "thru")

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
