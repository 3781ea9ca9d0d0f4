"""The first-party generators (``midi_bridge.generators``; the repository's plugins/ folder).

Each is registered through the ``midi_bridge.generators`` entry-point group, exactly as a
third-party plugin is, and imports the contract as one does (``midi_bridge.plugin``).

May import: :mod:`midi_bridge.plugin` and the model library (:mod:`midi_bridge.model`).
Not the core, runtime, stage, commands or training; one generator does not import another.
"""

from __future__ import annotations

import math
from typing import Any, Mapping


def checked_number(plugin: str, config: Mapping[str, Any], key: str, *, low: float | None = None,
                   high: float | None = None, integer: bool = False, optional: bool = False):
    """``config[key]`` if it is a finite number (an ``int`` with ``integer``) in
    ``[low, high]`` (``None`` passes with ``optional``); else a ``ValueError`` naming the
    setting and what is allowed, which the bridge reports when the plugin is selected."""
    v = config[key]
    if optional and v is None:
        return None
    kinds = (int,) if integer else (int, float)
    ok = (isinstance(v, kinds) and not isinstance(v, bool) and math.isfinite(v)
          and (low is None or v >= low) and (high is None or v <= high))
    if not ok:
        what = "an integer" if integer else "a number"
        if low is not None and high is not None:
            what += f" from {low:g} to {high:g}"
        elif low is not None:
            what += f" >= {low:g}"
        elif high is not None:
            what += f" <= {high:g}"
        if optional:
            what += " or null"
        raise ValueError(f"{plugin}: generators.{plugin}.{key} must be {what}, not {v!r}")
    return v
