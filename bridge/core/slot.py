"""The active generator and its fault policy.

:class:`GeneratorSlot` holds which generator plays (and the one before, to fall back
on), selects and swaps generators (a swap is constructed off the engine thread by the
generator host, then handed over between events), and is the only way into plugin code:
every call goes through its :class:`midi_bridge.core.faults.PluginGuard` (errors, time
budgets).  A generator that raised, or overran its budget ``engine.max_overruns`` times
in a row, is replaced between events by the previous one, or by thru.  Invalid notes are
checked here too (counted as ``bad_notes``, warned about once).

The engine is told through the hooks it passes: ``end_all`` (end every note now),
``marker`` (a recording marker), ``selected`` (a generator was made current) and
``fell_back`` (playing thru now: the phrase is void).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Protocol

from midi_bridge.plugin import Generator, Note, PluginError

from .faults import PluginGuard
from .modes import THRU

log = logging.getLogger(__name__)


class Host(Protocol):
    """What the slot needs of the generator host (:class:`midi_bridge.runtime.host.GeneratorHost`)."""

    def names(self) -> list[str]: ...
    def get(self, name: str) -> Generator: ...
    def resolve(self, selector: str | int, current: str | None, mode: str | None = None) -> str | None: ...
    def request(self, name: str, on_ready: Callable[[str, Generator | None, str], None]) -> None: ...


def valid_note(n: Any, need_duration: bool = False) -> bool:
    """Pitch and velocity in range, a channel 0-15 or None, a finite start >= 0 and a finite
    duration > 0 (or None where allowed)."""
    return (isinstance(n, Note) and isinstance(n.pitch, int) and 0 <= n.pitch <= 127
            and isinstance(n.velocity, int) and 1 <= n.velocity <= 127
            and (n.channel is None or (isinstance(n.channel, int) and 0 <= n.channel <= 15))
            and isinstance(n.start, (int, float)) and math.isfinite(n.start) and n.start >= 0
            and (n.duration is None and not need_duration
                 or isinstance(n.duration, (int, float)) and math.isfinite(n.duration) and n.duration > 0))


class GeneratorSlot:
    def __init__(self, host: Host, budget_ms: float, max_overruns: int, stats: dict[str, int], *,
                 mode: Callable[[], str], end_all: Callable[[], None], marker: Callable[[str], None],
                 selected: Callable[[str], None], fell_back: Callable[[], None]) -> None:
        self.host = host
        self.gen: Generator | None = None
        self.name: str | None = None
        self.prev_name: str | None = None
        self.wanted: str | None = None  # the generator selected last (swaps load in the background)
        self.guard = PluginGuard(budget_ms, max_overruns)
        self.guard.on_error = self._error
        self.fallback_thru = False      # a failed generator left nothing to fall back on
        self.stats = stats
        self.warned: set[str] = set()
        self._mode, self._end_all, self._marker = mode, end_all, marker
        self._selected, self._fell_back = selected, fell_back

    def call(self, fn: Callable, *args: Any) -> Any:
        """A generator call under its time budget; None if it raised or overran."""
        return self.guard.call(fn, *args)

    # -- selection ----------------------------------------------------------------------------

    def set(self, name: str, gen: Generator) -> None:
        """Make ``gen`` current; checks the mode (raises PluginError if unsupported)."""
        mode = self._mode()
        if mode != THRU and mode not in gen.modes:
            raise PluginError(f"generator '{name}' does not support mode '{mode}' "
                              f"(it supports: {', '.join(sorted(gen.modes)) or 'none'})")
        if self.gen is not None:
            self._end_all()
            self.stats["swaps"] += 1
            log.info("generator: %s -> %s", self.name, name)
            if self.name != name:
                self.prev_name = self.name
        if self.fallback_thru:
            self._end_all()
            self.fallback_thru = False
            log.info("generator: %s (thru fallback ended)", name)
        self.gen, self.name = gen, name
        self.guard.reset()
        self.call(gen.reset)
        self._selected(name)

    def ready(self, name: str, gen: Generator | None, err: str) -> None:
        """A swap's generator, constructed (``gen`` None: it failed)."""
        if gen is None:
            log.error("swap to '%s' failed: %s (keeping '%s')", name, err, self.name)
            return
        if self.wanted is not None and name != self.wanted:
            # loaded in the background, but another generator was selected since (a
            # program change back, a knob turned on): the last selection wins
            log.info("generator '%s' loaded but no longer selected (last selection: '%s')",
                     name, self.wanted)
            return
        try:
            self.set(name, gen)
        except PluginError as e:
            log.warning("swap refused: %s (keeping '%s')", e, self.name)

    def request(self, selector: str | int) -> None:
        """Select a generator by name, program number or ``"next"`` (loads in the background)."""
        name = self.host.resolve(selector, self.name, self._mode())
        if name is None:
            return
        self.wanted = name  # a load still under way for another name is void now
        if name != self.name:
            self.host.request(name, self.ready)

    # -- faults -------------------------------------------------------------------------------

    def _error(self, where: str, e: BaseException) -> None:
        self.stats["plugin_errors"] += 1
        if f"err:{where}" not in self.warned:
            self.warned.add(f"err:{where}")
            log.error("generator '%s' raised in %s: %s: %s (the bridge keeps running; "
                      "further errors are counted)", self.name, where, type(e).__name__, e,
                      exc_info=e)
        self.guard.failed = True

    def check(self) -> None:
        """Between events: replace a generator that raised or kept overrunning its budget."""
        g = self.guard
        self.stats["overruns"] = g.overruns
        if g.failed or g.exhausted:
            why = "raised" if g.failed else f"overran its {g.budget_ms:g} ms budget {g.max_overruns} times in a row"
            self._replace(why)

    def _replace(self, why: str) -> None:
        name = self.name
        self.stats["replaced"] += 1
        self._end_all()
        self.guard.reset()
        prev = self.prev_name
        self._marker(f"generator {name} failed")
        if prev is not None and prev != name:
            try:
                gen = self.host.get(prev)
                self.prev_name = None
                self.gen = None  # no second panic, no swap count
                self.set(prev, gen)
                log.error("generator '%s' %s: replaced by the previous generator '%s' "
                          "(select it again to retry)", name, why, prev)
                return
            except PluginError as e:
                log.error("previous generator '%s' is not usable either: %s", prev, e)
        self.gen = self.name = None
        self.fallback_thru = True
        self._fell_back()
        log.error("generator '%s' %s: playing thru (what you play passes to the output) until "
                  "another generator is selected", name, why)

    def valid(self, n: Any, need_duration: bool = False) -> bool:
        """``n`` is a note the engine can play (else counted in ``bad_notes``, warned once)."""
        if valid_note(n, need_duration):
            return True
        self.stats["bad_notes"] += 1
        self.warn_once("bad_note", f"generator '{self.name}' produced an invalid note {n!r}; "
                                   "skipped (pitch/velocity 0-127, start >= 0, finite duration > 0)")
        return False

    def warn_once(self, key: str, text: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            log.warning(text)
