"""Following a DAW's MIDI clock: tempo, song position and transport.

A DAW sends 0xF8 24 times per quarter note, Start (FA: from the top), Continue (FB),
Stop (FC), and Song Position Pointer (F2, in 16ths = 6 clocks) before a Continue from
the middle of a song.  Clock bytes arrive with jitter: a JACK client sees them at period
boundaries, a USB interface batches them.  The tempo is therefore not taken from one
interval but from a least-squares line through the arrival times of the last
``window`` clocks (two beats by default): jitter averages out (error ~ jitter /
(sqrt(N) * N/3.5)), and a tempo change is followed within the window.  The sums are
kept incrementally, so each clock costs O(1).

When no clock has arrived for ``timeout_ns`` the follower reports the internal tempo
(``source == "internal"``); the engine keeps counting beats from where they were.
"""

from __future__ import annotations

from collections import deque

PPQN = 24
#: Tempo estimates outside this range are not taken (a JACK period or a USB packet can
#: deliver two clocks microseconds apart; DAWs offer about 20-999 bpm).
MIN_BPM, MAX_BPM = 1.0, 1000.0
_MIN_NS_PER_TICK = 60e9 / (MAX_BPM * PPQN)
_MAX_NS_PER_TICK = 60e9 / (MIN_BPM * PPQN)


class ClockFollower:
    def __init__(self, internal_bpm: float, window: int = 48, timeout_ns: int = 500_000_000) -> None:
        self.internal_bpm = float(internal_bpm)
        self.window = window
        self.timeout_ns = timeout_ns
        self.running = False          # transport state (Start/Continue vs Stop)
        self._armed = False           # Start/Continue seen, waiting for the first clock
        self.ticks = 0                # song position in clocks
        self.last_tick_ns: int | None = None
        self._pts: deque[tuple[int, int]] = deque()  # (tick index, t_ns - base)
        self._base: int | None = None
        self._sx = self._sy = self._sxx = self._sxy = 0.0
        self._n_total = 0             # clocks seen since the line was last reset
        self._ns_per_tick = 60e9 / (self.internal_bpm * PPQN)

    # -- incoming messages ---------------------------------------------------------------

    def clock(self, t_ns: int) -> None:
        """One 0xF8.  Advances the song position when the transport runs."""
        if self.last_tick_ns is not None:
            gap = t_ns - self.last_tick_ns
            # A gap: the clock stopped and restarted, maybe at a new tempo.  Right after a
            # reset (one point) a gap shorter than the timeout is the new, slower tempo's
            # first interval, judged by the old tempo: taken, or a large tempo drop would
            # reset the line at every clock and never be followed.
            if gap > 4 * self._ns_per_tick + 50e6 and (len(self._pts) > 1 or gap > self.timeout_ns):
                self._reset_line()
        self.last_tick_ns = t_ns
        if self._base is None:
            self._base = t_ns
        x, y = self._n_total, t_ns - self._base
        self._n_total += 1
        self._pts.append((x, y))
        self._sx += x
        self._sy += y
        self._sxx += x * x
        self._sxy += x * y
        if len(self._pts) > self.window:
            ox, oy = self._pts.popleft()
            self._sx -= ox
            self._sy -= oy
            self._sxx -= ox * ox
            self._sxy -= ox * oy
        if self._n_total > 4096:
            self._rebase()
        n = len(self._pts)
        if n >= 3:
            den = n * self._sxx - self._sx * self._sx
            if den > 0:
                slope = (n * self._sxy - self._sx * self._sy) / den
                if _MIN_NS_PER_TICK <= slope <= _MAX_NS_PER_TICK:
                    self._ns_per_tick = slope
        elif n == 2:
            d = float(self._pts[1][1] - self._pts[0][1])
            if _MIN_NS_PER_TICK <= d <= _MAX_NS_PER_TICK:
                self._ns_per_tick = d
        if self.running:
            if self._armed:
                self._armed = False  # the first clock after Start/Continue *is* the position
            else:
                self.ticks += 1

    def start(self, t_ns: int) -> None:
        self.ticks = 0
        self.running = True
        self._armed = True

    def continue_(self, t_ns: int) -> None:
        self.running = True
        self._armed = True

    def stop(self, t_ns: int) -> None:
        self.running = False

    def next_clock_beats(self) -> float:
        """The song position, in beats, that the next clock will have (transport running)."""
        return (self.ticks + (0 if self._armed else 1)) / PPQN

    def song_position(self, sixteenths: int) -> None:
        """Where the next clock is (a DAW looping sends it while its clock runs)."""
        self.ticks = sixteenths * 6
        if self.running:
            self._armed = True

    def _rebase(self) -> None:
        """Shift the window's coordinates to start at (0, 0), so the sums stay small enough
        for float64 in a session of any length (O(window), once every few thousand clocks)."""
        x0, y0 = self._pts[0]
        base = self._base + y0
        pts = [(x - x0, y - y0) for x, y in self._pts]
        self._reset_line()
        self._base = base
        for x, y in pts:
            self._pts.append((x, y))
            self._sx += x
            self._sy += y
            self._sxx += x * x
            self._sxy += x * y
        self._n_total = pts[-1][0] + 1

    def _reset_line(self) -> None:
        self._pts.clear()
        self._base = None
        self._sx = self._sy = self._sxx = self._sxy = 0.0
        self._n_total = 0

    # -- what the engine reads -------------------------------------------------------------

    def synced(self, now_ns: int) -> bool:
        """True while a clock is arriving."""
        return self.last_tick_ns is not None and now_ns - self.last_tick_ns <= self.timeout_ns

    def bpm(self, now_ns: int) -> float:
        if not self.synced(now_ns):
            return self.internal_bpm
        return 60e9 / (self._ns_per_tick * PPQN)

    @property
    def source(self) -> str:
        return "midi" if self.last_tick_ns is not None else "internal"

    def position_beats(self, now_ns: int) -> float:
        """Song position in beats at ``now_ns``.

        Interpolated from where the fitted line puts the last clock rather than from its
        arrival time: arrivals are late by up to a period at random, the line is not, so
        beat times do not jump with every clock's jitter."""
        if self.last_tick_ns is None:
            return 0.0
        frac = 0.0
        if self.running and not self._armed:
            t_last = float(self.last_tick_ns)
            n = len(self._pts)
            if n >= 3 and self._base is not None:
                intercept = (self._sy - self._ns_per_tick * self._sx) / n
                t_last = self._base + intercept + self._ns_per_tick * self._pts[-1][0]
            frac = min(1.0, max(-1.0, (now_ns - t_last) / self._ns_per_tick))
        return (self.ticks + frac) / PPQN

    def ns_per_beat(self, now_ns: int) -> float:
        return 60e9 / self.bpm(now_ns)
