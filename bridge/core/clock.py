"""Time sources.

:class:`SimClock` is set by hand, for offline rendering and for tests (the live bridge
reads ``time.perf_counter_ns``).  :class:`Tempo` converts between
nanoseconds and beats at the tempo in use (the internal clock's BPM; a MIDI clock
follower can change it while playing).
"""

from __future__ import annotations


class SimClock:
    """A clock that only moves when told to."""

    def __init__(self, t_ns: int = 0) -> None:
        self.t = t_ns

    def now_ns(self) -> int:
        return self.t

    def advance_to(self, t_ns: int) -> None:
        if t_ns > self.t:
            self.t = t_ns


class Tempo:
    """Beats since an origin at a tempo that may change (piecewise constant)."""

    def __init__(self, bpm: float, origin_ns: int = 0) -> None:
        self._origin_ns = origin_ns
        self._origin_beat = 0.0
        self.bpm = float(bpm)
        self.ns_per_beat = 60e9 / self.bpm

    def set_bpm(self, bpm: float, now_ns: int) -> None:
        """Change tempo from ``now_ns`` on, keeping the beat count continuous."""
        self._origin_beat = self.beat_at(now_ns)
        self._origin_ns = now_ns
        self.bpm = float(bpm)
        self.ns_per_beat = 60e9 / self.bpm

    def beat_at(self, t_ns: int) -> float:
        return self._origin_beat + (t_ns - self._origin_ns) / self.ns_per_beat

    def beats_to_ns(self, beats: float) -> int:
        """A duration in beats as nanoseconds at the current tempo."""
        return int(beats * self.ns_per_beat)
