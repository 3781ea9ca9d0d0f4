"""A read-only view of the engine's state, for the status screen (another thread).

:meth:`midi_bridge.core.engine.Engine.snapshot` builds one from single attribute reads,
``len()`` of containers and a copy of the stats dict (each atomic under the GIL); it never
iterates over a set or dict the engine mutates.  The reader gets values, not the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EngineView:
    now_ns: int
    generator: str | None
    mode: str
    thru: bool                      # what is played passes to the output now
    clocked: bool                   # beats follow a MIDI clock now
    transport: str | None           # "running" / "stopped" while clocked, else None
    bpm: float
    phrase: str                     # idle | playing | waiting for silence | answering
    phrase_notes: int
    held: int                       # keys the player holds
    sounding: int                   # notes the bridge has sounding
    pending: int                    # messages waiting in the scheduler
    sent: int                       # messages sent
    notes_out: int                  # note-ons sent
    late: int                       # messages sent late
    late_ns_max: int                # worst lateness of any message sent
    stats: dict[str, int] = field(default_factory=dict)   # a copy
    controls: dict[str, Any] = field(default_factory=dict)  # a copy of the live values
    latency: Any = None             # the latency window the engine writes, if any
    recording: str | None = None    # the file the recorder writes, if any
    recording_error: str | None = None


def view(engine: Any, now: int) -> EngineView:
    """The view of ``engine`` (:class:`midi_bridge.core.engine.Engine`) at ``now``."""
    tl, sched, player = engine.timeline, engine.sched, engine.player
    clocked = tl.clocked(now)
    if player.answering(now):
        phrase = "answering"
    elif engine.held:
        phrase = "playing"
    elif engine.mode == "continue" and engine.phrase_notes and engine.gen is not None:
        phrase = "waiting for silence"
    else:
        phrase = "idle"
    recorder = engine.recorder
    return EngineView(
        now_ns=now, generator=engine.gen_name, mode=engine.mode, thru=engine._thru_active(),
        clocked=clocked,
        transport=("running" if tl.sync.running else "stopped") if clocked else None,
        bpm=float(tl.bpm(now)), phrase=phrase, phrase_notes=engine.phrase_notes,
        held=len(engine.held), sounding=len(sched.sounding), pending=sched.pending(),
        sent=sched.sent, notes_out=sched.notes_out, late=sched.late, late_ns_max=sched.late_ns_max,
        stats=dict(engine.stats), controls=dict(engine.controls), latency=engine.latency,
        recording=None if recorder is None else (str(getattr(recorder, "path", "") or "") or None),
        recording_error=None if recorder is None else getattr(recorder, "error", None))
