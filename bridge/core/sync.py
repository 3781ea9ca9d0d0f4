"""Following a DAW's MIDI clock: tempo, song position and transport.

A DAW sends 0xF8 24 times per quarter note, Start (FA: from the top), Continue (FB),
Stop (FC), and Song Position Pointer (F2, in 16ths = 6 clocks) before a Continue from
the middle of a song.  Clock bytes arrive with jitter: a JACK client sees them at period
boundaries, a USB interface batches them.  Tempo *and* phase therefore come from a
least-squares line through the arrival times of recent clocks (clock index -> time): the
engine's grid (the time of beat b) is that line, not the last arrival, so a jittered clock
moves it by far less than its jitter.

* The line's window grows from ``window`` clocks (two beats by default: the tempo is
  trusted, and logged, once that many are in) to ``max_window`` (16 beats by default): the
  error of the line's end falls as 2 sigma / sqrt(n).
* The phase may instead be anchored on the last 4, 12 or 48 clocks at the line's tempo:
  a clock whose own phase wanders (``jack_midi_clock -J`` sends each clock a jittered
  period after the previous one) is followed as closely as its wander allows.  Each estimate is scored by how well
  it predicted every clock (mean squared error over about 128 clocks); a shorter anchor is
  used when it is clearly better (``_PREFER``).
* Every clock is first compared with its prediction.  One further off than 3 sigma (or
  2 % of a clock, whichever is more) enters the sums moved to that bound: one clock
  delayed by a stall hardly moves the grid.  A CUSUM of the residuals (in sigma, clipped at
  3, slack 0.75) detects a persistent shift -- a tempo step, a ramp, a jump of the clock's
  phase -- within 3 clocks of a step: the line restarts from the clocks since the shift
  began (as they arrived, at most ``window``), so it follows within a beat.

The sums (x, y, xx, xy over a ring of at most ``max_window`` clocks, and x, y over the
anchors) are kept incrementally, so each clock costs O(1); a restart rebuilds them from at
most ``window`` clocks, a rebase every 4096 clocks from the ring.

When no clock has arrived for ``timeout_ns`` the follower reports the internal tempo
(``source == "internal"``); the engine keeps counting beats from where they were.
"""

from __future__ import annotations

import math
from collections import deque

PPQN = 24
#: Tempo estimates outside this range are not taken (a JACK period or a USB packet can
#: deliver two clocks microseconds apart; DAWs offer about 20-999 bpm).
MIN_BPM, MAX_BPM = 1.0, 1000.0
_MIN_NS_PER_TICK = 60e9 / (MAX_BPM * PPQN)
_MAX_NS_PER_TICK = 60e9 / (MIN_BPM * PPQN)
#: Clocks in the line before outliers and shifts are looked for.
_ROBUST_FROM = 8
#: Outlier bound: this many sigma of the prediction errors, at least this fraction of a clock.
_OUTLIER_SIGMA, _OUTLIER_FLOOR = 3.0, 0.02
#: CUSUM slack and threshold (in sigma): a shift of the residuals restarts the line.
_CUSUM_K, _CUSUM_H = 0.75, 6.0
#: Phase anchors (clocks) besides the whole line; the prediction errors' averaging span;
#: a shorter anchor is taken when its mean squared error is below this fraction of the
#: best longer estimate's.
_ANCHORS = (4, 12, 48)
_SCORE_SPAN = 128
_PREFER = 0.7
#: How far past the last clock the position runs on while the next is awaited (clocks).
_RUN_ON = 2.0
#: Clocks between rebases of the coordinates (float64 sums stay exact enough).
_REBASE_EVERY = 4096


class ClockFollower:
    def __init__(self, internal_bpm: float, window: int = 48, timeout_ns: int = 500_000_000,
                 max_window: int | None = None) -> None:
        self.internal_bpm = float(internal_bpm)
        self.window = window
        self.max_window = max(window, 16 * PPQN if max_window is None else max_window)
        self.timeout_ns = timeout_ns
        self.running = False          # transport state (Start/Continue vs Stop)
        self._armed = False           # Start/Continue seen, waiting for the first clock
        self.ticks = 0                # song position in clocks
        self.last_tick_ns: int | None = None
        #: (clock index, arrival - base, the arrival as it entered the sums), oldest first
        self._pts: deque[tuple[int, float, float]] = deque()
        self._base: int | None = None
        self._asum = {m: [0.0, 0.0] for m in _ANCHORS}  # (sum x, sum y) of the last m clocks
        self._ns_per_tick = 60e9 / (self.internal_bpm * PPQN)
        self.restarts = 0             # shifts detected (the line restarted)
        self._reset_line()

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
        x, y = self._n_total, float(t_ns - self._base)
        self._n_total += 1
        used = self._screen(x, y)
        if used is not None:          # (None: the line restarted, this clock in it)
            self._add(x, y, used)
            if len(self._pts) > self.max_window:
                self._drop_oldest()
        if self._n_total > _REBASE_EVERY:
            self._rebase()
        self._fit()
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

    # -- the line ------------------------------------------------------------------------

    def _estimate(self, m: int, x: int) -> float:
        """Where the whole line (``m == 0``) or anchor ``m`` puts clock ``x``."""
        b, n = self._ns_per_tick, len(self._pts)
        if m == 0 or m >= n:
            return (self._sy - b * self._sx) / n + b * x
        sx, sy = self._asum[m]
        return (sy - b * sx) / m + b * x

    def _screen(self, x: int, y: float) -> float | None:
        """The arrival ``y`` of clock ``x`` as it enters the sums (moved to the outlier
        bound if it is one), or None when a shift restarted the line.  Also scores each
        phase estimate by how well it predicted this clock."""
        n = len(self._pts)
        if n < 3:
            return y
        robust = n >= _ROBUST_FROM
        s = max(self._sigma, _OUTLIER_FLOOR * self._ns_per_tick / _OUTLIER_SIGMA)
        bound = _OUTLIER_SIGMA * s
        k = self._scored = min(self._scored + 1, _SCORE_SPAN)
        for i, m in enumerate((0,) + _ANCHORS):
            e = y - self._estimate(m, x)
            e = min(abs(e), bound) if robust else e
            self._score[i] += (e * e - self._score[i]) / k
        if not robust:
            return y
        pred = self._estimate(self._anchor, x)
        r = y - pred
        z = max(-_OUTLIER_SIGMA, min(_OUTLIER_SIGMA, r / s))
        self._g_up = max(0.0, self._g_up + z - _CUSUM_K)
        self._g_down = max(0.0, self._g_down - z - _CUSUM_K)
        if self._g_up == 0.0:
            self._from_up = x + 1
        if self._g_down == 0.0:
            self._from_down = x + 1
        if self._g_up > _CUSUM_H or self._g_down > _CUSUM_H:
            # Not jitter: restart from the last clock before the shift began (on both lines).
            since = self._from_up if self._g_up > _CUSUM_H else self._from_down
            keep: list[tuple[int, float]] = []
            for px, py, _ in reversed(self._pts):  # (newest first: O(what is kept))
                if len(keep) >= max(3, self.window - 1) or px < since - 1 and len(keep) >= 3:
                    break
                keep.append((px, py))
            keep.reverse()
            self._clear_sums()
            for px, py in keep + [(x, y)]:
                self._add(px, py, py)
            self._from_up = self._from_down = x + 1
            self.restarts += 1
            return None
        return y if abs(r) <= bound else pred + (bound if r > 0 else -bound)

    def _add(self, x: int, y: float, used: float) -> None:
        pts = self._pts
        pts.append((x, y, used))
        self._sx += x
        self._sy += used
        self._sxx += x * x
        self._sxy += x * used
        n = len(pts)
        for m in _ANCHORS:
            s = self._asum[m]
            s[0] += x
            s[1] += used
            if n > m:
                ox, _, oy = pts[-m - 1]
                s[0] -= ox
                s[1] -= oy

    def _drop_oldest(self) -> None:
        ox, _, oy = self._pts.popleft()
        self._sx -= ox
        self._sy -= oy
        self._sxx -= ox * ox
        self._sxy -= ox * oy

    def _fit(self) -> None:
        n = len(self._pts)
        if n >= 3:
            sxx = self._sxx - self._sx * self._sx / n
            if sxx > 0:
                slope = (self._sxy - self._sx * self._sy / n) / sxx
                if _MIN_NS_PER_TICK <= slope <= _MAX_NS_PER_TICK:
                    self._ns_per_tick = slope
            # The phase estimate that has predicted the clocks best lately; a shorter
            # anchor must beat the longer ones clearly (the scores are noisy).
            score, i = self._score, 0
            for j in range(len(_ANCHORS), 0, -1):
                if score[j] < _PREFER * score[i]:
                    i = j
            self._anchor = 0 if i == 0 else _ANCHORS[i - 1]
            self._sigma = math.sqrt(score[i])
        elif n == 2:
            d = self._pts[1][1] - self._pts[0][1]
            if _MIN_NS_PER_TICK <= d <= _MAX_NS_PER_TICK:
                self._ns_per_tick = d

    def _rebase(self) -> None:
        """Shift the window's coordinates to start at (0, 0), so the sums stay small enough
        for float64 in a session of any length (O(window), once every few thousand clocks)."""
        x0, y0, _ = self._pts[0]
        y0 = float(int(y0))
        base = self._base + int(y0)
        pts = [(x - x0, y - y0, u - y0) for x, y, u in self._pts]
        self._clear_sums()
        self._base = base
        for x, y, u in pts:
            self._add(x, y, u)
        self._n_total = pts[-1][0] + 1
        self._from_up = max(0, self._from_up - x0)
        self._from_down = max(0, self._from_down - x0)

    def _clear_sums(self) -> None:
        self._pts.clear()
        self._sx = self._sy = self._sxx = self._sxy = 0.0
        for s in self._asum.values():
            s[0] = s[1] = 0.0
        self._g_up = self._g_down = 0.0
        self._from_up = self._from_down = 0

    def _reset_line(self) -> None:
        self._clear_sums()
        self._base = None
        self._n_total = 0             # clocks seen since the line was last reset
        self._sigma = 0.0             # rms prediction error of the estimate in use (ns)
        self._scored = 0
        self._score = [0.0] * (1 + len(_ANCHORS))  # the line's, then each anchor's
        self._anchor = 0              # the phase estimate in use (0: the whole line)

    # -- what the engine reads -------------------------------------------------------------

    def synced(self, now_ns: int) -> bool:
        """True while a clock is arriving."""
        return self.last_tick_ns is not None and now_ns - self.last_tick_ns <= self.timeout_ns

    def bpm(self, now_ns: int) -> float:
        if not self.synced(now_ns):
            return self.internal_bpm
        return 60e9 / (self._ns_per_tick * PPQN)

    @property
    def clocks_in_line(self) -> int:
        """Clocks in the line now (``window`` of them: the tempo can be trusted; at most
        ``max_window``; fewer again after a gap or a detected tempo change)."""
        return len(self._pts)

    @property
    def source(self) -> str:
        return "midi" if self.last_tick_ns is not None else "internal"

    def position_beats(self, now_ns: int) -> float:
        """Song position in beats at ``now_ns``.

        Interpolated from where the estimate puts the last clock rather than from its
        arrival time: arrivals are late by up to a period at random, the line is not, so
        beat times do not jump with every clock's jitter.  Past the next clock's time the
        position runs on for one more clock (a late clock, or one delayed by a stall, does not
        stall the grid), then waits (a clock that stops does not run the song on)."""
        if self.last_tick_ns is None:
            return 0.0
        frac = 0.0
        if self.running and not self._armed:
            t_last = float(self.last_tick_ns)
            npt = self._ns_per_tick
            if len(self._pts) >= 3 and self._base is not None:
                t_last = self._base + self._estimate(self._anchor, self._pts[-1][0])
            frac = min(_RUN_ON, max(-1.0, (now_ns - t_last) / npt))
        return (self.ticks + frac) / PPQN

    def ns_per_beat(self, now_ns: int) -> float:
        return 60e9 / self.bpm(now_ns)
