"""Figures for the live benchmark: percentiles, the machine, and issue 4's targets."""

from __future__ import annotations

import contextlib
import math
import os
import platform
from pathlib import Path
from typing import Any


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summary(values_ms: list[float]) -> dict[str, Any]:
    if not values_ms:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None, "n": 0}
    v = sorted(values_ms)
    return {"p50_ms": round(percentile(v, 50), 3), "p99_ms": round(percentile(v, 99), 3),
            "max_ms": round(v[-1], 3), "n": len(v)}


def machine_info(period: int | None, rate: int | None) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        load = None
    import rtmidi
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "python_rtmidi": rtmidi.version.version,
            "jack_period": period, "jack_rate": rate,
            "jack_period_ms": round(period / rate * 1e3, 3) if period and rate else None,
            "load_avg_at_start": load}


def targets(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Issue 4's targets, each with the measured value and whether it is met (None: n/a)."""
    def get(row: str, key: str) -> Any:
        return (r.get(row) or {}).get(key)

    floor99 = get("floor", "p99_ms")
    period_ms = r["machine"]["jack_period_ms"]
    out = {"thru": {"target": "thru p50 <= 1.05 x floor p50", "value": get("thru", "ratio_p50"),
                    "limit": 1.05}}
    for row in ("accompany", "continue"):
        out[row] = {"target": f"{row} p99 <= floor p99 + 1 ms", "value": get(row, "p99_ms"),
                    "limit": None if floor99 is None else round(floor99 + 1.0, 3)}
    out["grid"] = {"target": "grid max |error| <= one JACK period + 1 ms", "value": get("grid", "max_ms"),
                   "limit": None if period_ms is None else round(period_ms + 1.0, 3)}
    out["tempo"] = {"target": "tempo estimate within 0.5 %", "value": get("grid", "bpm_error_pct"),
                    "limit": 0.5}
    load = r.get("load") or {}
    # Each counted on its own: thru ends a retriggered note before the new note-on, so a
    # note-off lost on the way in comes back as one extra note-off (dropped_output -1),
    # which must not cancel the loss.
    lost = (None if load.get("lost_input") is None or load.get("dropped_output") is None
            else max(load["lost_input"], 0) + max(load["dropped_output"], 0))
    out["load"] = {"target": "load: zero lost input, zero dropped output", "value": lost, "limit": 0}
    out["stop"] = {"target": "SIGTERM: every sounding note ended within 50 ms", "value": get("stop", "max_ms"),
                   "limit": 50.0}
    for t in out.values():
        t["met"] = None if t["value"] is None or t["limit"] is None else t["value"] <= t["limit"]
    if get("stop", "stuck"):  # a note that never ended fails it, however fast the others were
        out["stop"]["met"] = False
    for row in ("thru", "accompany", "continue"):
        # A trial that got no answer is slower than any limit: the percentiles cover the
        # answered trials only, so they alone must not meet the target (nor be n/a).
        if get(row, "lost"):
            out[row]["lost"] = get(row, "lost")
            out[row]["met"] = False
    return out
