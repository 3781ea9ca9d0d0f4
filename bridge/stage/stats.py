"""What the status display shows: latency percentiles and a snapshot of the engine's state.

:class:`LatencyWindow` is written by the engine thread - one sample per played note-on:
its arrival stamp and how long until what the bridge plays with it had been sent - and
read by the status display a few times a second.  The write is O(1) into
two preallocated ``array('q')`` rings (nothing grows, nothing is scanned); everything
costly - copying the ring, filtering by age, sorting - happens on the reader's side,
on demand.

Thread-safety: one writer (the engine thread), any number of readers.  A reader copies
the rings (``array`` slicing is one C-level copy under the GIL) and works on the copy.
The two rings are copied one after the other, so a sample written in between can be
torn - its time from one sample, its latency from the one it replaced.  That affects at
most a few samples of thousands in a percentile for display, so it is accepted rather
than paid for with a lock on the engine's path.

:func:`snapshot` reads the engine's state from another thread through the engine's own
read-only view (:meth:`midi_bridge.core.engine.Engine.snapshot`: single attribute reads,
``len()`` of containers and copies of the stats and controls, all atomic under the GIL).
"""

from __future__ import annotations

import time
from array import array
from dataclasses import dataclass, field
from typing import Any

NS_PER_MS = 1_000_000


class LatencyWindow:
    """Latency samples of the last ``window_s`` seconds, for p50/p99 on demand.

    ``capacity`` samples are kept at most; when more than that arrive within the window
    (over ~270 output-producing events per second at the defaults), the percentiles
    cover the most recent ``capacity`` of them.
    """

    __slots__ = ("window_ns", "capacity", "_t", "_lat", "_n")

    def __init__(self, window_s: float = 60.0, capacity: int = 16384) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.window_ns = int(window_s * 1e9)
        self.capacity = capacity
        self._t = array("q", bytes(8 * capacity))     # arrival stamps (ns)
        self._lat = array("q", bytes(8 * capacity))   # latencies (ns)
        self._n = 0                                    # samples ever added

    def add(self, t_ns: int, latency_ns: int) -> None:
        """One sample (engine thread only): O(1), writes into the preallocated rings."""
        i = self._n % self.capacity
        self._t[i] = t_ns
        self._lat[i] = latency_ns
        self._n += 1

    @property
    def total(self) -> int:
        """Samples added since the start (including those that left the window)."""
        return self._n

    def samples(self, now_ns: int) -> list[int]:
        """Latencies (ns) of the samples stamped within ``window_s`` before ``now_ns``, sorted."""
        n = self._n
        ts, lats = self._t[:], self._lat[:]
        filled = min(n, self.capacity)
        cutoff = now_ns - self.window_ns
        if filled < self.capacity:
            ts, lats = ts[:filled], lats[:filled]
        return sorted(lat for t, lat in zip(ts, lats) if t > cutoff)

    def percentiles(self, now_ns: int) -> tuple[float | None, float | None, int]:
        """``(p50_ms, p99_ms, count)`` over the window; ``(None, None, 0)`` without samples.

        Nearest-rank percentiles: the value below which p% of the samples lie (so p99 of
        fewer than 100 samples is their maximum)."""
        vals = self.samples(now_ns)
        if not vals:
            return None, None, 0
        return (_rank(vals, 50) / NS_PER_MS, _rank(vals, 99) / NS_PER_MS, len(vals))


def _rank(sorted_vals: list[int], p: float) -> int:
    n = len(sorted_vals)
    k = max(1, -(-int(p * n) // 100))  # ceil(p/100 * n), at least the first
    return sorted_vals[min(n, k) - 1]


# -- the engine's state, for display ----------------------------------------------------------

@dataclass
class Snapshot:
    """Everything the status display shows, read at one moment (``now_ns``)."""

    now_ns: int = 0
    backend: str = ""
    in_ports: list[str] = field(default_factory=list)
    out_ports: list[str] = field(default_factory=list)
    generator: str | None = None
    mode: str = ""
    thru: bool = False                 # what is played passes to the output
    clock: str = "internal"            # "midi" while a MIDI clock arrives, else "internal"
    transport: str | None = None       # "running" / "stopped" while following a clock
    bpm: float = 0.0
    phrase: str = "idle"               # idle | playing | waiting for silence | answering
    phrase_notes: int = 0
    held: int = 0                      # keys the player holds
    sounding: int = 0                  # notes the bridge has sounding
    pending: int = 0                   # messages waiting in the scheduler
    events_in: int = 0
    notes_in: int = 0
    notes_out: int | None = None       # note-ons sent (when the scheduler counts them)
    sent: int = 0                      # messages sent
    answers: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    latency_count: int = 0
    late: int | None = None            # messages sent late (when the scheduler counts them)
    late_max_ms: float = 0.0           # worst lateness of any message sent
    dropped: int | None = None         # messages dropped while no output was connected (Ports)
    errors: dict[str, int] = field(default_factory=dict)  # non-zero problem counters
    temperature: float | None = None
    density: float | None = None
    length: float | None = None
    stats: dict[str, int] = field(default_factory=dict)
    recording: str | None = None        # the file --record writes, if any
    recording_error: str | None = None  # its last write error (None: the last write worked)


#: Engine stats counted as problems (shown when non-zero).
PROBLEMS = ("malformed", "echoes", "plugin_errors", "bad_notes")


def phrase_state(engine: Any, now_ns: int) -> str:
    """idle | playing | waiting for silence | answering (from the engine's snapshot)."""
    return engine.snapshot(now_ns).phrase


def snapshot(engine: Any, ports: Any = None, window: LatencyWindow | None = None,
             now_ns: int | None = None, thread: Any = None) -> Snapshot:
    """Read the engine's state (from any thread): its :meth:`~midi_bridge.core.engine.Engine.snapshot`.

    ``ports`` is the open :class:`midi_bridge.runtime.ports.Ports` (names, callback errors,
    messages dropped while no output was connected), ``window`` the :class:`LatencyWindow`
    the engine writes (default: the engine's own), ``thread`` the
    :class:`midi_bridge.runtime.loop.EngineThread` (engine errors); each may be None.
    """
    now = time.perf_counter_ns() if now_ns is None else now_ns
    view = engine.snapshot(now)
    stats, controls = view.stats, view.controls
    snap = Snapshot(
        now_ns=now,
        generator=view.generator,
        mode=view.mode,
        thru=view.thru,
        clock="midi" if view.clocked else "internal",
        transport=view.transport,
        bpm=view.bpm,
        phrase=view.phrase,
        phrase_notes=view.phrase_notes,
        held=view.held,
        sounding=view.sounding,
        pending=view.pending,
        events_in=stats.get("events_in", 0),
        notes_in=stats.get("notes_in", 0),
        notes_out=view.notes_out,
        sent=view.sent,
        answers=stats.get("answers", 0),
        late=view.late,
        late_max_ms=view.late_ns_max / NS_PER_MS,
        temperature=controls.get("temperature"),
        density=controls.get("density"),
        length=controls.get("length"),
        stats=stats,
        recording=view.recording,
        recording_error=view.recording_error,
    )
    if ports is not None:
        snap.backend = getattr(ports, "backend", "")
        snap.in_ports = list(getattr(ports, "in_names", ()))
        snap.out_ports = list(getattr(ports, "out_names", ()))
        snap.dropped = getattr(ports, "dropped", None)
    if window is None:
        window = view.latency
    if window is not None:
        snap.p50_ms, snap.p99_ms, snap.latency_count = window.percentiles(now)
    errors = {k: stats[k] for k in PROBLEMS if stats.get(k)}
    if ports is not None and getattr(ports, "callback_errors", 0):
        errors["callback_errors"] = ports.callback_errors
    if thread is not None and getattr(thread, "crashes", 0):
        errors["engine_errors"] = thread.crashes
    snap.errors = errors
    return snap
