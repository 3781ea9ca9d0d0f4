"""Musical grids: parsing ``1/16``, ``1/8t``, ``off``; quantising with swing.

Beats are quarter notes.  A grid ``1/N`` is ``4/N`` beats (``1/16`` = 0.25 beat); a
``t`` suffix makes it a triplet (two thirds as long: ``1/8t`` = 1/3 beat); ``1/16.``
is dotted (half as long again).  Swing delays every second grid slot by ``swing`` times
the slot (0 = straight, 1/3 = triplet feel, 0.5 = a dotted feel).
"""

from __future__ import annotations

import math
import re

_GRID = re.compile(r"^1/(\d+)([t.]?)$")


def parse_grid(text: str | None) -> float | None:
    """Grid length in beats, or None for ``off``; raises ValueError with what is allowed."""
    if text is None or str(text).strip().lower() in ("off", "none", "0", ""):
        return None
    m = _GRID.match(str(text).strip().lower())
    if not m or int(m.group(1)) not in (1, 2, 4, 8, 16, 32, 64):
        raise ValueError("'off' or a note value like 1/4, 1/8, 1/16, 1/32, 1/8t (triplet), 1/8. (dotted)")
    beats = 4.0 / int(m.group(1))
    if m.group(2) == "t":
        beats *= 2.0 / 3.0
    elif m.group(2) == ".":
        beats *= 1.5
    return beats


def quantize(beat: float, grid: float | None, swing: float = 0.0, origin: float = 0.0) -> float:
    """The grid point nearest ``beat`` (grid measured from ``origin``), swung."""
    if grid is None:
        return beat
    slot = math.floor((beat - origin) / grid + 0.5)
    q = origin + slot * grid
    if swing and slot % 2 == 1:
        q += swing * grid
    return q


def next_boundary(beat: float, unit: float, origin: float = 0.0, eps: float = 1e-6) -> float:
    """The first multiple of ``unit`` (from ``origin``) at or after ``beat``."""
    return origin + math.ceil((beat - origin) / unit - eps) * unit
