"""Calling a generator safely: errors, time budgets, and when to give up on it.

Every call the engine makes into a plugin goes through :class:`PluginGuard` (held by
:class:`midi_bridge.core.slot.GeneratorSlot`).  A call that
raises is reported (``on_error``) and marks the generator *failed*; the engine then
replaces it, between events, by the previous generator or by thru.  With a
:class:`midi_bridge.runtime.watchdog.Watchdog` attached (the live bridge attaches one), a call that
runs longer than ``engine.plugin_budget_ms`` is cut short: its output is skipped for that
event, a warning is logged once, the overrun counted, and after ``engine.max_overruns``
overruns in a row the generator is *exhausted* and replaced as well.  Without a watchdog
(rendering, unit tests) calls are not timed.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

log = logging.getLogger(__name__)

#: What :meth:`PluginGuard.next` returns when an iterator ended or failed.
DONE = object()
FAILED = object()


class PluginGuard:
    def __init__(self, budget_ms: float, max_overruns: int, watchdog: Any = None) -> None:
        self.budget_ms = budget_ms
        self.budget_ns = int(budget_ms * 1e6)
        self.max_overruns = max_overruns
        self.watchdog = watchdog
        self.on_error: Callable[[str, BaseException], None] = lambda where, e: None
        #: Called before every generator call (the engine sends what is due: what is played
        #: goes out before any generator work).
        self.before: Callable[[], None] | None = None
        self.failed = False      # the current generator raised
        self.in_a_row = 0        # consecutive overruns of one of its calls (other calls
        self._over_where = ""    # in between, e.g. fast observes, do not reset it)
        self.overruns = 0        # all overruns, for the stats
        self._warned = False

    @property
    def exhausted(self) -> bool:
        return self.in_a_row >= self.max_overruns

    def reset(self) -> None:
        """A new generator: nothing against it yet."""
        self.failed = False
        self.in_a_row = 0

    def call(self, fn: Callable, *args: Any) -> Any:
        """``fn(*args)``, or None if it raised or overran its budget."""
        if self.before is not None:
            self.before()
        wd = self.watchdog
        try:
            if wd is None:
                return fn(*args)
            result, overran = wd.call(fn, *args, budget_ns=self.budget_ns)
        except Exception as e:  # noqa: BLE001 - a plugin bug must not stop the bridge
            self.on_error(getattr(fn, "__name__", "call"), e)
            return None
        if overran:
            self._overran(getattr(fn, "__name__", "call"))
            return None
        if self.in_a_row and getattr(fn, "__name__", "call") == self._over_where:
            self.in_a_row = 0  # the call that overran is fast again
        return result

    def next(self, it: Any) -> Any:
        """The next item of a generator's iterator, :data:`DONE` at its end, or
        :data:`FAILED` when it raised or overran (reported like :meth:`call`)."""
        if self.before is not None:
            self.before()
        wd = self.watchdog
        try:
            if wd is None:
                return next(it)
            result, overran = wd.call(next, it, budget_ns=self.budget_ns)
        except StopIteration:
            return DONE
        except Exception as e:  # noqa: BLE001
            self.on_error("continuation", e)
            return FAILED
        if overran:
            self._overran("continuation")
            return FAILED
        if self.in_a_row and self._over_where == "continuation":
            self.in_a_row = 0
        return result

    def _overran(self, where: str) -> None:
        self.overruns += 1
        self.in_a_row = self.in_a_row + 1 if where == self._over_where else 1
        self._over_where = where
        if not self._warned:
            self._warned = True
            log.warning("generator call %s ran over its %g ms budget and was cut short; its "
                        "output is skipped for that event (after %d in a row the generator is "
                        "swapped out; engine.plugin_budget_ms sets the budget)",
                        where, self.budget_ms, self.max_overruns)
