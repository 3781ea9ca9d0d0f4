"""The event loops of ``bench model``: the played notes, one event's cost, where it goes,
and a long session's growth (see :mod:`midi_bridge.bench.model`).  Steppers are duck-typed
(``reset``, ``feed``, ``sample``): the tests drive these loops with a fake clock."""

from __future__ import annotations

import os
import resource
import sys
import time

import numpy as np

_rng = np.random.default_rng(7)
#: Played notes of a session: a random walk, so contexts keep changing and the in-piece
#: cache fills up to its bound (the memory-flatness check needs that).
PLAYED = [(int(d), int(p), int(d), 22) for d, p in zip(_rng.choice([3, 6, 12], 4099),
                                                      60 + np.cumsum(_rng.integers(-4, 5, 4099)) % 24)]


def _rss_kb() -> int:
    """Resident memory in kB (without /proc: the peak so far, ru_maxrss, which macOS gives
    in bytes and Linux in kB)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak


def time_events(st, n: int, warm: int = 50) -> np.ndarray:
    """Per-event seconds of n events: feed a played note, then sample one note of answer
    (Notochord's feed + query; an answer note costs the same: sample, then feed it back)."""
    st.reset()
    out = np.empty(n)
    clock = time.perf_counter
    for i in range(-warm, n):
        t0 = clock()
        st.feed(PLAYED[i % len(PLAYED)])
        st.sample(0.9, 0.95)
        if i >= 0:
            out[i] = clock() - t0
    return out


#: The parts of an event the profiling pass times separately (the stepper's methods):
#: ``cache_us`` the in-piece statistics (count the event, predict the candidates),
#: ``net_us`` the input rows and the recurrent cells, ``heads_us`` the field heads
#: (pre-activations, the prefix rows, the output layers and the copy gate); ``sample_us``
#: is the rest of the event: softmax, mixture, top-p and the draw, and the Python around.
PARTS = (("cache_us", ("_cache_step",)), ("net_us", ("_net",)), ("heads_us", ("_head0", "_next", "_head")))


def profile_parts(st, n: int, warm: int = 50) -> dict:
    """Median per-event microseconds of each of :data:`PARTS` and of the rest
    (``sample_us``) over ``n`` events of :func:`time_events`' loop, the parts timed
    separately (a wrapper around each method: a profiling pass, not the timed one)."""
    clock = time.perf_counter
    acc = {key: 0.0 for key, _ in PARTS}
    busy = [False]
    wrapped = []
    for key, names in PARTS:
        for name in names:
            fn = getattr(st, name, None)
            if fn is None or name in vars(st):
                continue

            def timed(*a, _fn=fn, _key=key):
                if busy[0]:  # (a part calling another is timed once, as the outer one)
                    return _fn(*a)
                busy[0] = True
                t0 = clock()
                try:
                    return _fn(*a)
                finally:
                    acc[_key] += clock() - t0
                    busy[0] = False
            setattr(st, name, timed)
            wrapped.append(name)
    if not wrapped:
        return {}
    parts = {key: np.empty(n) for key, _ in PARTS}
    rest = np.empty(n)
    try:
        st.reset()
        for i in range(-warm, n):
            for key in acc:
                acc[key] = 0.0
            t0 = clock()
            st.feed(PLAYED[i % len(PLAYED)])
            st.sample(0.9, 0.95)
            total = clock() - t0
            if i >= 0:
                for key in acc:
                    parts[key][i] = acc[key]
                rest[i] = total - sum(acc.values())
    finally:
        for name in wrapped:
            delattr(st, name)
    out = {key: round(float(np.median(v)) * 1e6, 1) for key, v in parts.items()}
    out["sample_us"] = round(float(np.median(rest)) * 1e6, 1)
    return out


def long_session(st, n: int, window: int = 500, make=None) -> dict:
    """Medians of the ``window`` events from event 100 on and of the last ``window``
    (never before event 100: a short session's windows overlap instead); memory at event
    100 and at the end; with ``make`` (a new stepper of the same model), also
    :func:`interleaved`."""
    if n < 100:
        raise ValueError(f"a session of {n} events has no event 100: --long must be at least 100 (or 0: none)")
    st.reset()
    early, late = [], []
    rss_early = 0
    clock = time.perf_counter
    for i in range(1, n + 1):
        t0 = clock()
        st.feed(PLAYED[i % len(PLAYED)])
        st.sample(0.9, 0.95)
        dt = clock() - t0
        if 100 <= i < 100 + window:
            early.append(dt)
            if i == 100:
                rss_early = _rss_kb()
        if i > n - window and i >= 100:
            late.append(dt)
    out = {"event_100_us": round(float(np.median(early)) * 1e6, 1),
           f"event_{n}_us": round(float(np.median(late)) * 1e6, 1),
           "rss_kb_event_100": rss_early, f"rss_kb_event_{n}": _rss_kb()}
    if make is not None:
        out.update(interleaved(st, make(), n, window))
    return out


def interleaved(late_st, fresh, n: int, window: int = 500, block: int = 25) -> dict:
    """The session's growth with the machine's drift taken out: ``late_st`` (at event n)
    and ``fresh`` (a new stepper of the same model, brought to event 100) take turns,
    ``block`` events each (a few ms: the drift falls on both; not one each, which would
    evict one's weights from the CPU's cache for the other's every event), over
    ``window`` events; medians of each, and their ratio.  A VM's speed drifts by tens of
    per cent over the minute a long session takes, so the sequential windows compare two
    machines as much as two states; these compare the states."""
    fresh.reset()
    for i in range(1, 100):
        fresh.feed(PLAYED[i % len(PLAYED)])
        fresh.sample(0.9, 0.95)
    early, late = [], []
    clock = time.perf_counter
    for b in range(0, window, block):
        for st, acc, i0 in ((fresh, early, 100 + b), (late_st, late, n + 1 + b)):
            for i in range(i0, i0 + min(block, window - b)):
                t0 = clock()
                st.feed(PLAYED[i % len(PLAYED)])
                st.sample(0.9, 0.95)
                acc.append(clock() - t0)
    e, lt = float(np.median(early)), float(np.median(late))
    return {"interleaved_event_100_us": round(e * 1e6, 1), f"interleaved_event_{n}_us": round(lt * 1e6, 1),
            "growth": round(lt / e, 3) if e > 0 else None}
