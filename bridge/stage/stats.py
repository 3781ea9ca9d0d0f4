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

:func:`snapshot` reads the engine's public state from another thread the same way: only
reads of single attributes, ``len()`` of containers and a copy of the stats dict (all
atomic under the GIL), never iteration over a set or dict the engine mutates.
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
    dropped: int | None = None         # messages dropped (when the scheduler counts them)
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
    """idle | playing | waiting for silence | answering (from the engine's public state)."""
    if getattr(engine, "_answer", None) is not None or now_ns < getattr(engine, "_cont_until", 0):
        return "answering"
    if engine.held:
        return "playing"
    if engine.mode == "continue" and engine.phrase_notes and engine.gen is not None:
        return "waiting for silence"
    return "idle"


def snapshot(engine: Any, ports: Any = None, window: LatencyWindow | None = None,
             now_ns: int | None = None, thread: Any = None) -> Snapshot:
    """Read the engine's state (from any thread; see the module's note on thread-safety).

    ``ports`` is the open :class:`midi_bridge.runtime.ports.Ports` (names, callback errors), ``window``
    the :class:`LatencyWindow` the engine writes (default: ``engine.latency``), ``thread``
    the :class:`midi_bridge.runtime.loop.EngineThread` (engine errors); each may be None.
    """
    now = time.perf_counter_ns() if now_ns is None else now_ns
    sched = engine.sched
    stats = dict(engine.stats)
    clocked = engine._clocked(now)
    controls = getattr(engine, "controls", None) or {}
    snap = Snapshot(
        now_ns=now,
        generator=engine.gen_name,
        mode=engine.mode,
        clock="midi" if clocked else "internal",
        transport=("running" if engine.sync.running else "stopped") if clocked else None,
        bpm=float(engine.bpm(now)),
        phrase=phrase_state(engine, now),
        phrase_notes=engine.phrase_notes,
        held=len(engine.held),
        sounding=len(sched.sounding),
        pending=sched.pending(),
        events_in=stats.get("events_in", 0),
        notes_in=stats.get("notes_in", 0),
        notes_out=getattr(sched, "notes_out", None),
        sent=sched.sent,
        answers=stats.get("answers", 0),
        late=getattr(sched, "late", None),
        late_max_ms=getattr(sched, "late_ns_max", 0) / NS_PER_MS,
        dropped=getattr(sched, "dropped", None),
        temperature=controls.get("temperature"),
        density=controls.get("density"),
        length=controls.get("length"),
        stats=stats,
    )
    if ports is not None:
        snap.backend = getattr(ports, "backend", "")
        snap.in_ports = list(getattr(ports, "in_names", ()))
        snap.out_ports = list(getattr(ports, "out_names", ()))
    if window is None:
        window = getattr(engine, "latency", None)
    if window is not None:
        snap.p50_ms, snap.p99_ms, snap.latency_count = window.percentiles(now)
    errors = {k: stats[k] for k in PROBLEMS if stats.get(k)}
    if ports is not None and getattr(ports, "callback_errors", 0):
        errors["callback_errors"] = ports.callback_errors
    if thread is not None and getattr(thread, "crashes", 0):
        errors["engine_errors"] = thread.crashes
    snap.errors = errors
    recorder = getattr(engine, "recorder", None)
    if recorder is not None:
        snap.recording = str(getattr(recorder, "path", "") or "") or None
        snap.recording_error = getattr(recorder, "error", None)
    return snap
