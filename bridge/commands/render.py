"""``midi-bridge render``: the same engine and generator over a MIDI file, in simulated time.

The input file's channel messages are fed to the engine at their times (tempo map
honoured); the engine's deadlines are visited in order, so phrase ends, continuations,
accompaniment and pacing behave as live, only without waiting.  The output file has two
tracks: the input as played and what the bridge sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mido

from midi_bridge.core.clock import SimClock
from midi_bridge.core.engine import Engine
from midi_bridge.core.messages import Input
from midi_bridge.runtime.host import GeneratorHost

TAIL_NS = 600 * 10**9  # never simulate more than ten minutes after the last input


class RenderError(Exception):
    """An unreadable input file; ``str()`` says which and why."""


def read_events(path: str | Path) -> tuple[list[tuple[int, list[int]]], float | None]:
    """Channel messages as ``(t_ns, bytes)`` and the first tempo in BPM (if any)."""
    try:
        mf = mido.MidiFile(str(path))
    except (OSError, EOFError, ValueError, KeyError, IndexError) as e:
        reason = str(e) or ("the file ends early (truncated, or not a Standard MIDI File)"
                            if isinstance(e, EOFError) else type(e).__name__)
        raise RenderError(f"cannot read MIDI file {path}: {reason}") from None
    if mf.ticks_per_beat <= 0:  # (mido reads an SMPTE division as negative ticks per beat)
        raise RenderError(f"cannot read MIDI file {path}: its time is counted in SMPTE frames, "
                          "which is not supported; save it with ticks per quarter note (PPQ)")
    events, t, bpm = [], 0.0, None
    for msg in mf:  # times in seconds, tempo map applied
        t += msg.time
        if msg.is_meta:
            if msg.type == "set_tempo" and bpm is None:
                bpm = mido.tempo2bpm(msg.tempo)
            continue
        if msg.type in ("sysex", "clock", "start", "stop", "continue", "songpos"):
            continue
        events.append((int(round(t * 1e9)), msg.bytes()))
    return events, bpm


def run_until(engine: Engine, clock: SimClock, limit_ns: int) -> None:
    """Visit every engine deadline up to ``limit_ns``, in order."""
    while True:
        d = engine.next_deadline(clock.t)
        if d is None or d > limit_ns:
            return
        clock.advance_to(max(d, clock.t))
        before = (clock.t, engine.sched.pending(), engine.sched.sent)
        engine.tick(clock.t)
        if engine.next_deadline(clock.t) == d and before == (clock.t, engine.sched.pending(), engine.sched.sent):
            clock.advance_to(clock.t + 1000)  # no progress at this instant: move on a microsecond


def render(in_path: str | Path, out_path: str | Path, cfg: dict[str, Any]) -> dict[str, Any]:
    events, file_bpm = read_events(in_path)
    bpm = file_bpm or cfg["engine"]["bpm"]
    cfg["engine"]["bpm"] = bpm
    clock = SimClock(0)
    out: list[tuple[int, tuple[int, ...]]] = []
    host = GeneratorHost(cfg["generators"], cfg["control"]["order"], post=None)
    engine = Engine(cfg, send=lambda msg: out.append((clock.t, msg)), host=host, now_ns=0)
    if cfg["engine"]["mode"] != "thru":
        name = cfg["engine"]["generator"]
        engine.set_generator(name, host.get(name))
    for t_ns, data in events:
        run_until(engine, clock, t_ns)
        clock.advance_to(t_ns)
        engine.handle(Input(t_ns, 0, data), clock.t)
        engine.tick(clock.t)
    last = events[-1][0] if events else 0
    run_until(engine, clock, last + TAIL_NS)
    engine.stop(clock.t)
    run_until(engine, clock, clock.t + TAIL_NS)
    host.close()
    write(out_path, events, out, bpm, engine.gen_name or "thru")
    return {"input_events": len(events), "output_events": len(out), "bpm": bpm,
            "generator": engine.gen_name, "mode": engine.mode, **engine.stats}


def write(path: str | Path, inputs: list, outputs: list, bpm: float, label: str) -> None:
    tpb = 480
    ticks_per_ns = tpb * bpm / 60e9
    mf = mido.MidiFile(type=1, ticks_per_beat=tpb)
    for name, evs in (("input", inputs), (f"bridge output ({label})", outputs)):
        track = mido.MidiTrack()
        track.append(mido.MetaMessage("track_name", name=name, time=0))
        if name == "input":
            track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm), time=0))
        prev = 0
        for t_ns, data in evs:
            tick = int(round(t_ns * ticks_per_ns))
            track.append(mido.Message.from_bytes(list(data), time=tick - prev))
            prev = tick
        mf.tracks.append(track)
    mf.save(str(path))
