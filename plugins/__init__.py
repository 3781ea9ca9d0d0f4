"""First-party generator plugins, registered through the ``midi_bridge.generators`` entry points."""

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
