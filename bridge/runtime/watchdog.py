"""A time budget for plugin calls that really cuts an overrunning Python call short.

The engine thread wraps every generator call in :meth:`Watchdog.call`::

    result, overran = watchdog.call(gen.observe, event, budget_ns=25_000_000)

If the call is still running when its budget is spent, the watchdog's own (daemon)
thread raises :class:`Overrun` *inside the engine thread*, with CPython's
``PyThreadState_SetAsyncExc``; ``call`` catches it and returns ``(None, True)``.

Why :class:`Overrun` derives from ``BaseException``: plugins often wrap their work in
``except Exception:`` (to log and carry on); an ``Exception`` subclass raised in the middle
of that work would be swallowed there and the call would run on.  Like
``KeyboardInterrupt``, ``Overrun`` passes through ``except Exception``; only a bare
``except:`` or ``except BaseException:`` in the plugin can swallow it (the call then runs
to its end and is still reported as overrun).

Limits (inherent to asynchronous exceptions in CPython):

* the exception is only seen when the engine thread executes Python bytecode: a call
  blocked inside C code (``time.sleep``, a socket read, a long torch operator, a lock
  wait) is cut only when that C function returns to Python; for a torch model, the
  exception lands between two operators;
* it can land anywhere in the plugin's Python code, ``finally`` blocks included: a
  plugin's state may be left half-updated (the engine replaces a generator that keeps
  overrunning, see :mod:`midi_bridge.core.faults`);
* the watchdog thread needs the GIL to fire, so the cut comes up to one GIL switch
  interval (5 ms by default) after the deadline, more on a loaded machine.

The race: the watchdog may fire just as the call returns, so the exception could arrive
after ``call`` has returned, in engine code.  It cannot: the watchdog checks and fires
under a lock; :meth:`disarm` takes the same lock, marks the call over (after which the
watchdog never fires for it), and if the watchdog had already fired for it, clears any
still-pending exception (``PyThreadState_SetAsyncExc(ident, NULL)``) before releasing
the lock.  An exception delivered *inside* ``disarm`` (before it could clear it)
propagates to ``call``, which catches it like any overrun.  So once ``call`` returns, no
``Overrun`` is pending for the engine thread.

Cost: :meth:`arm` stores a deadline, a token (a small int) and the thread's ident in
attributes, and wakes the watchdog thread only when it sleeps past the new deadline
(idle after a quiet second, or a budget shorter than the last one); :meth:`disarm`
takes an uncontended lock.  About a microsecond per call in all.  While calls keep
coming the watchdog thread wakes at most once per budget period.

A call stuck in C code cannot be cut, and while it is stuck the engine thread sends
nothing, note-offs included.  With ``on_stall``, the watchdog calls it once when a call is
still running ``stall_after_s`` past its deadline, holding the lock that :meth:`disarm`
takes: the engine thread cannot leave the plugin call (and send) meanwhile.  The live
runner uses it to end every sounding note from the watchdog thread.

One watchdog serves one engine thread, one call at a time (``arm`` while armed is an
error: calls do not nest).
"""

from __future__ import annotations

import ctypes
import threading
import time
from typing import Any, Callable

__all__ = ["Overrun", "Watchdog"]


class Overrun(BaseException):
    """Raised inside a plugin call that ran past its time budget.

    A ``BaseException`` (not an ``Exception``) so that a plugin's ``except Exception:``
    does not swallow it; see the module documentation."""


# Our own prototypes of PyThreadState_SetAsyncExc (never touch ctypes.pythonapi's shared
# argtypes): one that raises an exception class, one that clears (NULL).
_raise_async = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi))
_clear_async = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi))

_FOREVER = 1 << 62  # "sleeping with no deadline" (an int: comparisons stay cheap)


class Watchdog:
    """Cuts a call short when it overruns its budget.  See the module documentation.

    ``idle_after_s``: with no call for this long the watchdog thread sleeps until the next
    ``arm`` wakes it (the only case besides a shorter budget where ``arm`` signals it)."""

    def __init__(self, idle_after_s: float = 1.0, name: str = "plugin-watchdog",
                 stall_after_s: float = 1.0, on_stall: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()      # held by the watchdog while it checks and fires
        self._wake = threading.Event()
        self._seq = 0                      # last token handed out
        self._armed = 0                    # token of the call running now (0: none)
        self._deadline = 0                 # its deadline, perf_counter_ns
        self._ident = 0                    # the thread it runs on
        self._poll_ns = 25_000_000         # last budget: how long the watchdog naps between calls
        self._fired_token = 0              # the token the watchdog raised Overrun for
        self._sleep_until = _FOREVER       # when the watchdog thread wakes by itself
        self._idle_after_ns = int(idle_after_s * 1e9)
        self._closed = False
        self._stall_ns = int(stall_after_s * 1e9)
        self._on_stall = on_stall
        self._stalled_token = 0            # the token on_stall ran for
        self.fired = 0                     # Overruns raised (stats)
        self.stalls = 0                    # on_stall calls (stats)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- engine thread ----------------------------------------------------------------------

    def arm(self, budget_ns: int) -> int:
        """Start timing a call on this thread; returns the token for :meth:`disarm`."""
        if self._armed:
            raise RuntimeError("watchdog already armed: calls under a budget do not nest")
        deadline = time.perf_counter_ns() + budget_ns
        self._ident = threading.get_ident()
        self._poll_ns = budget_ns
        self._deadline = deadline          # (the deadline is stored before the token: the
        token = self._seq = self._seq + 1  # watchdog reads the token first)
        self._armed = token
        if deadline < self._sleep_until:   # the watchdog would wake too late: tell it
            self._wake.set()
        return token

    def disarm(self, token: int) -> bool:
        """The call of ``token`` is over.  True if the watchdog fired for it (whether or not
        the exception was delivered: a pending one is cleared here)."""
        with self._lock:
            if self._armed == token:
                self._armed = 0
            fired = self._fired_token == token
            if fired:
                self._fired_token = 0
                _clear_async(self._ident, None)
        return fired

    def call(self, fn: Callable[..., Any], *args: Any, budget_ns: int) -> tuple[Any, bool]:
        """``(fn(*args), False)``, or ``(None, True)`` if it overran ``budget_ns`` (cut short
        if it was running Python code).  Exceptions of ``fn`` propagate unchanged."""
        token = self.arm(budget_ns)
        try:
            try:
                result = fn(*args)
            finally:
                overran = self.disarm(token)
        except Overrun:
            self.disarm(token)  # delivered inside disarm, before it finished: finish it
            return None, True
        if overran:  # fired as the call returned; the pending exception was cleared
            return None, True
        return result, False

    def close(self) -> None:
        """Stop the watchdog thread (a call armed now is no longer timed)."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=1.0)

    # -- watchdog thread ----------------------------------------------------------------------

    def _fire(self, token: int) -> None:
        with self._lock:
            if (self._armed == token and self._fired_token != token
                    and time.perf_counter_ns() >= self._deadline):
                self._fired_token = token
                if _raise_async(self._ident, Overrun):
                    self.fired += 1

    def _stall(self, token: int) -> None:
        with self._lock:  # (disarm waits: the engine thread sends nothing meanwhile)
            if self._armed == token and self._stalled_token != token:
                self._stalled_token = token
                self.stalls += 1
                try:
                    self._on_stall()
                except Exception:  # noqa: BLE001 - the watchdog thread must live on
                    import logging

                    logging.getLogger("midi_bridge").exception("watchdog: on_stall failed")

    def _run(self) -> None:
        now_ns = time.perf_counter_ns
        wake = self._wake
        last_seq = -1
        active_until = 0
        while not self._closed:
            token = self._armed        # token first, then its deadline (see arm)
            deadline = self._deadline
            now = now_ns()
            if token and token != self._fired_token:
                if now >= deadline:
                    self._fire(token)
                    continue
                until = deadline
            elif (token and self._on_stall is not None and token != self._stalled_token
                  and self._armed == token):
                # fired, but the call runs on (blocked in C code): on_stall when it stalls
                if now >= deadline + self._stall_ns:
                    self._stall(token)
                    continue
                until = deadline + self._stall_ns
            else:  # between calls (or the call already cut): nap, then go idle
                if self._seq != last_seq:
                    last_seq = self._seq
                    active_until = now + self._idle_after_ns
                until = now + self._poll_ns if now < active_until else _FOREVER
            self._sleep_until = until
            if self._armed != token:   # armed meanwhile (arm may have missed _sleep_until)
                continue
            wake.wait(None if until == _FOREVER else max(0.0, (until - now) / 1e9))
            wake.clear()
