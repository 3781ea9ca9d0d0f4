"""How far a jittered MIDI clock moves the grid the engine plays on (simulated, no JACK).

``python -m midi_bridge.bench.clock [--json]`` feeds :class:`~midi_bridge.core.sync.ClockFollower`
a 24-ppqn clock after Start whose clocks arrive off their true times by a uniformly random
amount of up to ``jitter`` of the clock period (seeded), and after every clock (once
``settle`` beats have passed) asks where the follower puts the next 1/16: ``now + (k/4 -
position_beats(now)) * ns_per_beat(now)``, the engine's own conversion, at three moments
(the clock's arrival, half-way to the next, just before it).  The error is that time minus
the true, unjittered time of the 16th.  Pure computation: the same seed gives the same
figures on any machine.

``--walk`` makes the jitter cumulative, as ``jack_midi_clock -J`` does (each clock is sent
one period plus the jitter after the previous one, so the DAW's clock itself wanders): the
true 16th is then where its clock was sent.  ``--period-frames N`` also delivers every clock
at the end of a JACK period of N frames at 48 kHz (how the bridge stamps them).
``--follower FILE.py`` measures the ``ClockFollower`` class of another file (an older
``sync.py``: ``git show HEAD:bridge/core/sync.py > /tmp/old_sync.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import random
import sys

from midi_bridge.core.sync import ClockFollower

PPQN = 24


def grid_errors(follower, bpm: float, jitter: float, seconds: float = 60.0, seed: int = 1,
                settle_beats: float = 2.0, walk: bool = False, period_frames: int = 0) -> list[float]:
    """Errors (ms) of the follower's predicted 16ths against the true ones."""
    rng = random.Random(seed)
    per = 60e9 / (bpm * PPQN)
    n = int(seconds * 1e9 / per)
    sent, t = [], 0.0  # when the DAW sent each clock (its grid) and when it arrived
    arrivals = []
    for _ in range(n + 7):
        u = rng.uniform(-jitter, jitter) * per
        if walk:
            sent.append(t)
            arrivals.append(t)
            t += per + u
        else:
            sent.append(len(sent) * per)
            arrivals.append(max(0.0, sent[-1] + u))
    if period_frames:
        p = period_frames / 48000 * 1e9
        arrivals = [math.ceil(a / p) * p for a in arrivals]
    arrivals = [max(a, arrivals[i - 1]) if i else a for i, a in enumerate(arrivals)]  # in order

    def true_16th(k: int) -> float:
        return sent[6 * k] if walk else 6 * k * per

    f = follower
    f.start(0)
    errs: list[float] = []
    for i in range(n):
        a = int(arrivals[i])
        f.clock(a)
        if i < settle_beats * PPQN:
            continue
        nxt = int(arrivals[i + 1])
        for now in (a, (a + nxt) // 2, max(a, nxt - 1)):
            pos = f.position_beats(now)
            k = math.floor(pos * 4 + 1e-9) + 1
            pred = now + (k / 4 - pos) * f.ns_per_beat(now)
            errs.append((pred - true_16th(k)) / 1e6)
    return errs


def summary(errs: list[float]) -> dict:
    a = sorted(abs(e) for e in errs)

    def pct(q: float) -> float:
        return round(a[min(len(a) - 1, int(q * len(a)))], 4)
    return {"p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": round(a[-1], 4),
            "mean_ms": round(sum(errs) / len(errs), 4), "n": len(errs)}


def load_follower(path: str | None):
    if not path:
        return ClockFollower
    spec = importlib.util.spec_from_file_location("_bench_sync", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ClockFollower


def run(bpm: float = 100.0, jitters=(0.0, 0.01, 0.05), seconds: float = 60.0, seeds=(1, 2, 3),
        walk: bool = False, period_frames: int = 0, follower_cls=ClockFollower) -> dict:
    rows = {}
    for j in jitters:
        errs: list[float] = []
        for seed in seeds:
            errs += grid_errors(follower_cls(120), bpm, j, seconds, seed, walk=walk,
                                period_frames=period_frames)
        rows[f"{j:.0%}"] = summary(errs)
    return {"bpm": bpm, "seconds": seconds, "seeds": list(seeds), "walk": walk,
            "period_frames": period_frames, "jitter": rows,
            "machine": platform.machine(), "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m midi_bridge.bench.clock", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--bpm", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=60.0, help="of clock per seed (3 seeds)")
    ap.add_argument("--walk", action="store_true", help="cumulative jitter (jack_midi_clock -J)")
    ap.add_argument("--period-frames", type=int, default=0, help="deliver clocks on JACK periods")
    ap.add_argument("--follower", help="a sync.py whose ClockFollower to measure instead")
    args = ap.parse_args(argv)
    out = run(args.bpm, seconds=args.seconds, walk=args.walk, period_frames=args.period_frames,
              follower_cls=load_follower(args.follower))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"grid error of the predicted 1/16 at {out['bpm']:g} bpm ({out['machine']}, python {out['python']})")
    for j, r in out["jitter"].items():
        print(f"  jitter {j:>3}: p50 {r['p50_ms']:.3f}  p99 {r['p99_ms']:.3f}  max {r['max_ms']:.3f} ms"
              f"  (mean {r['mean_ms']:+.3f}, n {r['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
