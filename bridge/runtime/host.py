"""Which generator plays: selection, lazy construction and hot swap.

A swap never stalls input: the new generator is constructed (an RNN may load a
checkpoint) on a loader thread while the engine keeps playing with the current one; when
it is ready the loader posts it to the engine's queue (a :class:`~midi_bridge.core.messages.Swap`) and the engine switches over
between two events (ending every sounding note first).  Constructed generators are kept,
so swapping back is instant.  In simulated time (render, tests) construction is inline.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Mapping

from . import discovery
from midi_bridge.core.messages import Swap
from midi_bridge.plugin import Generator, PluginError

log = logging.getLogger(__name__)


class GeneratorHost:
    def __init__(self, settings: Mapping[str, Mapping[str, Any]], order: list[str] | None = None,
                 plugins: dict[str, discovery.PluginInfo] | None = None,
                 post: Callable[[Swap], None] | None = None) -> None:
        self.plugins = plugins if plugins is not None else discovery.discover()
        self.settings = settings
        #: Order used by program change (index) and "next": config order, else by name.
        self.order = list(order) if order else sorted(self.plugins)
        self._instances: dict[str, Generator] = {}
        self._post = post  # None: construct inline and return
        self._lock = threading.Lock()
        self._loading: set[str] = set()

    def names(self) -> list[str]:
        return self.order

    def get(self, name: str) -> Generator:
        """Construct (or reuse) generator ``name``; raises :class:`PluginError`."""
        with self._lock:
            gen = self._instances.get(name)
        if gen is not None:
            return gen
        info = self.plugins.get(name)
        if info is None:
            known = ", ".join(sorted(self.plugins)) or "none installed"
            raise PluginError(f"no generator named '{name}' (available: {known}; "
                              f"see 'midi-bridge plugins')")
        gen = discovery.create(info, self.settings.get(name))
        with self._lock:
            self._instances[name] = gen
        return gen

    def resolve(self, selector: str | int, current: str | None, mode: str | None = None) -> str | None:
        """A generator name from a program number (index into the order) or ``"next"``.

        ``"next"`` walks the order from ``current`` and takes the first generator that can
        play ``mode`` (:func:`discovery.usable`: one refused at load, or loaded without that
        mode, is skipped; one not loaded yet is tried, once); back at ``current`` it stays."""
        if not self.order:
            return None
        if selector == "next":
            order = self.order
            start = order.index(current) + 1 if current in order else 0
            for k in range(len(order)):
                name = order[(start + k) % len(order)]
                if name == current or mode is None:
                    return name
                info = self.plugins.get(name)
                if info is not None and discovery.usable(info, mode):
                    return name
            return current
        if isinstance(selector, int):
            if 0 <= selector < len(self.order):
                return self.order[selector]
            log.warning("program %d selects nothing: %d generators (%s)", selector + 1,
                        len(self.order), ", ".join(self.order))
            return None
        return selector

    def request(self, name: str, on_ready: Callable[[str, Generator | None, str], None]) -> None:
        """Construct ``name`` off the engine thread, then hand it over via ``post``."""
        def work() -> None:
            try:
                gen, err = self.get(name), ""
            except PluginError as e:
                gen, err = None, str(e)
            except Exception as e:  # noqa: BLE001 - the swap must be answered, never lost
                gen, err = None, f"generator '{name}': {type(e).__name__}: {e}"
            finally:
                with self._lock:
                    self._loading.discard(name)
            if self._post is None:
                on_ready(name, gen, err)
            else:
                self._post(Swap(name, gen, err))

        if self._post is None:
            work()
            return
        with self._lock:
            if name in self._loading:
                return
            self._loading.add(name)
        threading.Thread(target=work, name=f"load-{name}", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            gens, self._instances = list(self._instances.values()), {}
        for gen in gens:
            try:
                gen.close()
            except Exception:  # noqa: BLE001
                log.exception("generator %s failed to close", gen.name)
