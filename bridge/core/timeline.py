"""The engine's timeline: beats <-> time, on the internal tempo or a DAW's MIDI clock.

With ``clock.follow`` and a clock arriving (:class:`midi_bridge.core.sync.ClockFollower`)
beats are the DAW's song position and tempo; without, the internal :class:`Tempo`
(``engine.bpm``) counts them.  A clock that runs without transport sets the internal
tempo (beats count on from the free-running timeline at the clock's tempo); when the
clock goes away the tempo returns to ``engine.bpm``.  Transport messages that move the
song position (Start, Continue, Song Position) return how far the next clock's beat
moved, for the answer player to follow.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from . import midi
from .clock import Tempo
from .sync import ClockFollower

log = logging.getLogger(__name__)


class Timeline:
    def __init__(self, bpm: float, now_ns: int, clock: dict[str, Any]) -> None:
        self.base_bpm = bpm
        self.tempo = Tempo(bpm, now_ns)
        self.follow: bool = clock["follow"]
        self.sync = ClockFollower(bpm, window=clock["window"], timeout_ns=int(clock["timeout_ms"] * 1e6))
        self.synced = False       # what the log last said about the clock source
        self.clock_tempo = False  # self.tempo follows a clock that runs without transport
        self._logged_bpm = 0.0
        self.recorder: Any = None  # told of tempo changes (recorder.tempo(t, bpm))

    # -- beats and time ---------------------------------------------------------------------

    def clocked(self, now: int) -> bool:
        """Beats are the MIDI clock's now."""
        return self.follow and self.sync.synced(now)

    def beat_at(self, now: int) -> float:
        """Beats now: the DAW's song position when a clock runs, else the internal tempo's."""
        if self.follow and self.sync.synced(now) and self.sync.running:
            return self.sync.position_beats(now)
        return self.tempo.beat_at(now)

    def ns_per_beat(self, now: int) -> float:
        return self.sync.ns_per_beat(now) if self.clocked(now) else self.tempo.ns_per_beat

    def bpm(self, now: int) -> float:
        return self.sync.bpm(now) if self.clocked(now) else self.tempo.bpm

    def song_beat(self, now: int) -> float:
        """Where the song is by its clock (where it was when the clock stopped)."""
        return self.sync.position_beats(now) if self.sync.running else self.tempo.beat_at(now)

    # -- clock and transport ------------------------------------------------------------------

    def clock(self, t: int, now: int) -> None:
        """One 0xF8, arrived at ``t``."""
        sync = self.sync
        sync.clock(t)
        if not sync.running:
            # Clock without transport: beats count on from the free-running timeline,
            # at the clock's tempo (ns_per_beat is the clock's: both must agree).
            self.tempo.set_bpm(sync.bpm(now), now)
            self.clock_tempo = True
        # (sync._pts: the clocks in its line; ClockFollower has no public count of them)
        if not self.synced and sync.synced(now) and len(sync._pts) >= min(sync.window, 48):
            self.synced = True
            self._logged_bpm = sync.bpm(now)
            log.info("clock: following MIDI clock at %.1f bpm", self._logged_bpm)
        elif self.synced and abs(sync.bpm(now) - self._logged_bpm) > 0.02 * self._logged_bpm:
            self._logged_bpm = sync.bpm(now)
            log.info("clock: tempo %.1f bpm", self._logged_bpm)
        if self.synced and self.recorder is not None:
            self.recorder.tempo(t, sync.bpm(now))  # (it keeps changes of 0.1 bpm or more)

    def transport(self, t: int, now: int, msg: tuple[int, ...]) -> float | None:
        """Start, Continue or Song Position (other system messages: nothing).  Returns how
        far the song's next clock beat moved while the transport runs, else None."""
        status, sync = msg[0], self.sync
        if status == midi.START:
            shift = self._jump(now, lambda: sync.start(t))
            log.info("transport: start")
        elif status == midi.CONTINUE:
            shift = self._jump(now, lambda: sync.continue_(t))
            log.info("transport: continue at beat %.2f", sync.position_beats(now))
        elif status == midi.SONG_POSITION:
            shift = self._jump(now, lambda: sync.song_position(msg[1] | (msg[2] << 7)))
        else:
            shift = None
        return shift

    def stop(self, t: int) -> None:
        self.sync.stop(t)
        log.info("transport: stop")

    def _jump(self, now: int, move: Callable[[], None]) -> float | None:
        sync = self.sync
        before = sync.next_clock_beats() if sync.running else self.tempo.beat_at(now)
        move()
        return sync.next_clock_beats() - before if sync.running else None

    def check(self, now: int) -> None:
        """The clock went away: back to the internal tempo (``engine.bpm``)."""
        if self.clock_tempo and not self.clocked(now):
            self.clock_tempo = False  # a clock without transport had set the tempo
            self.tempo.set_bpm(self.base_bpm, now)
        if self.synced and not self.clocked(now):
            self.synced = False
            log.info("clock: MIDI clock lost; internal clock at %.1f bpm", self.tempo.bpm)
            if self.recorder is not None:
                self.recorder.tempo(now, self.tempo.bpm)

    def deadline(self, answer_clocked: bool) -> int | None:
        """When the clock counts as gone (its timeout), while anything depends on it."""
        if self.synced or self.clock_tempo or answer_clocked:
            return self.sync.last_tick_ns + self.sync.timeout_ns + 1
        return None
