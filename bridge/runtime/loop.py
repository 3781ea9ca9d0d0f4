"""The engine thread: the one thread that owns the generator and the output.

Input callbacks only put an :class:`~midi_bridge.core.messages.Input` on a queue.  This thread blocks on that
queue until the next input or the engine's next deadline, whichever is first (no busy
loop), hands every item to the engine and sends what is due.  If the engine raises (a
bug, not a plugin error: those are caught inside), it ends every sounding note and
carries on; on stop it ends every note, drains the output and returns.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time

from midi_bridge.core.engine import Engine
from midi_bridge.core.messages import STOP

log = logging.getLogger(__name__)


class EngineThread(threading.Thread):
    def __init__(self, engine: Engine, inbox: queue.SimpleQueue, drain_s: float = 0.06,
                 realtime: bool = False, stop_timeout_s: float | None = None) -> None:
        super().__init__(name="engine", daemon=True)
        self.realtime = realtime
        self.engine = engine
        self.inbox = inbox
        self.drain_s = drain_s
        self.crashes = 0
        self.stopped = threading.Event()
        #: How long after :meth:`stop` the thread counts as alive at most (None: until it
        #: ends).  A plugin call blocked in native code (a deadlock, a dead socket) keeps
        #: the thread from ever reaching the stop; the watchdog has ended its notes, and
        #: whoever waits for the thread (the main loop, the status screen) must not wait
        #: for ever.
        self.stop_timeout_s = stop_timeout_s
        self._stop_at: float | None = None

    def stop(self) -> None:
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        self.inbox.put(STOP)

    @property
    def abandoned(self) -> bool:
        """Asked to stop more than ``stop_timeout_s`` ago and still running (stuck)."""
        return (self.stop_timeout_s is not None and self._stop_at is not None
                and super().is_alive() and not self.stopped.is_set()
                and time.monotonic() - self._stop_at > self.stop_timeout_s)

    def is_alive(self) -> bool:
        """Running, and not :attr:`abandoned` (what waiting for the engine means)."""
        return super().is_alive() and not self.abandoned

    def _raise_priority(self) -> None:
        """SCHED_FIFO for this thread when permitted (rtprio limits), else a quiet fallback."""
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(20))
            log.info("engine thread: real-time priority (SCHED_FIFO 20)")
        except (AttributeError, OSError) as e:
            log.info("engine thread: normal priority (real-time scheduling not permitted: %s; "
                     "raise 'rtprio' in /etc/security/limits.conf to allow it)",
                     getattr(e, "strerror", None) or e)

    def run(self) -> None:
        if self.realtime:
            self._raise_priority()
        now_ns = time.perf_counter_ns
        eng, inbox = self.engine, self.inbox
        try:
            while True:
                deadline = eng.next_deadline(now_ns())
                timeout = None if deadline is None else max(0.0, (deadline - now_ns()) / 1e9)
                try:
                    item = inbox.get(timeout=timeout) if timeout != 0.0 else inbox.get_nowait()
                except queue.Empty:
                    item = None
                try:
                    while item is not None:
                        if item is STOP:
                            return
                        eng.handle(item, now_ns())
                        item = inbox.get_nowait() if not inbox.empty() else None
                    eng.tick(now_ns())
                except Exception:  # noqa: BLE001 - keep playing, but never leave a note hanging
                    self.crashes += 1
                    log.exception("engine error (%d so far); ending all notes and carrying on", self.crashes)
                    eng.stop(now_ns())
        finally:
            try:
                eng.stop(now_ns())
                eng.sched.flush(now_ns, time.sleep)
                time.sleep(self.drain_s)  # let the transport deliver the last period
            finally:
                self.stopped.set()
