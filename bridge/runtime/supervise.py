"""Port supervision: extra ports that come and go, and (JACK) a server restart.

:class:`PortSupervisor` is a thread that wakes every ``interval_s`` (0.25 s), off the hot
path: the engine thread never waits for it, and input callbacks keep putting their
:class:`~midi_bridge.core.messages.Input` on the engine's queue with the same port index
before and after a re-open.

* **Extra ports** (``ports.extra_inputs`` / ``extra_outputs``).  A separate rtmidi client
  used only for listing (``<client>-watch``) is asked for the port names each round.  An
  extra port whose peer is not there (at start, or because the device was unplugged or the
  program quit) is logged once; when a matching port appears it is opened again, so a
  port that comes back is re-connected within one interval.
* **JACK server restart.**  rtmidi's JACK clients die with the server, and RtMidi cannot
  tell: listing a dead client returns the dead server's last graph, sending spins forever
  (holding the GIL) once its ring buffer is full, and a *new* client opened while dead ones
  exist makes libjack free them under RtMidi's feet (a crash on the next call).  So
  :class:`JackWatch` watches the server itself, in jackd2's registry
  (``/dev/shm/jack-shm-registry``: the server name's pid): when it is gone, the send path
  stops writing (messages are dropped and counted), every rtmidi object is deleted (an
  output of a dead server takes RtMidi one second, holding the GIL), and no client is
  opened until the server is back; then the virtual ports are re-created with the same
  names, the extra ports re-connected as they appear, and the engine is asked for a panic
  (:data:`~midi_bridge.core.messages.PANIC` on its inbox) so that every note it had
  sounding is ended on the new connection.

Where the server cannot be watched (no jackd2 registry: macOS, PipeWire's JACK, a server
of another user) a server that goes away is not noticed, and the first send that finds
RtMidi's ring buffer full hangs the process with the GIL held.  That case fails loudly
instead: on JACK the supervisor re-arms :func:`faulthandler.dump_traceback_later` every
round, so a process that stops running Python for ``watchdog_s`` (15 s) prints every
thread's stack (the engine's ends in ``Ports.send``) and exits with status 1.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

from midi_bridge.core.messages import PANIC, Command

from . import jack
from .ports import Ports

log = logging.getLogger(__name__)


class JackWatch:
    """Whether the JACK server this process talks to is (still) the one we connected to.

    Reads jackd2's server registry: the pid registered for the server name (this user's,
    ``$JACK_DEFAULT_SERVER`` or ``default``).  ``None`` from :meth:`for_backend` where that
    cannot be watched (not jackd2 on Linux, a server of another user, PipeWire's JACK).
    """

    def __init__(self, server: str) -> None:
        self.server = server
        self.pid = self.running_pid()

    @classmethod
    def for_backend(cls, backend: str) -> "JackWatch | None":
        if backend not in ("jack", "jack-rtmidi"):
            return None
        watch = cls(os.environ.get("JACK_DEFAULT_SERVER") or "default")
        if watch.pid is None:
            log.info("JACK server '%s' is not listed in jackd2's registry (%s): a JACK server "
                     "restart will not be noticed (restart the bridge after one)",
                     watch.server, jack.REGISTRY)
            return None
        return watch

    def running_pid(self) -> int | None:
        """pid of a live jackd registered under our server name, else None."""
        pid = jack.registered_pid(self.server)
        if pid is None or not jack.pid_alive(pid) or _is_jackd(pid) is False:
            return None
        return pid

    def alive(self) -> bool:
        """The server we connected to is still there (cheap: reads the registry)."""
        pid = jack.registered_pid(self.server)
        return pid is not None and pid == self.pid and jack.pid_alive(pid)

    def adopt(self, pid: int) -> None:
        self.pid = pid


def _is_jackd(pid: int) -> bool | None:
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return None
    return os.path.basename(argv0.decode(errors="replace")).startswith("jackd")


class PortSupervisor:
    """Keeps ``ports`` connected; see the module docstring.

    ``post`` puts an item on the engine's inbox (for the panic after a JACK restart).
    ``watch`` defaults to :meth:`JackWatch.for_backend`; pass ``False`` for none.
    ``watchdog_s`` (JACK only; 0 for none): see the module docstring.
    """

    def __init__(self, ports: Ports, interval_s: float = 0.25,
                 post: Callable[[Command], None] | None = None,
                 watch: "JackWatch | None | bool" = None, watchdog_s: float = 15.0) -> None:
        self.ports = ports
        self.interval_s = interval_s
        self.post = post
        self.watch = JackWatch.for_backend(ports.backend) if watch is None else (watch or None)
        self.watchdog_s = watchdog_s if ports.backend in ("jack", "jack-rtmidi") else 0.0
        self.down = False              # the JACK server is gone and our clients deleted
        self.restarts = 0              # JACK server restarts survived
        self.reconnects = 0            # extra ports re-opened after they went away
        self._server_back_at: float | None = None
        self._failures = 0
        self._next_try = 0.0
        self._dropped_before = 0
        self._errors_logged: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.watch is not None:
            ports.set_liveness(self.watch.alive)

    @property
    def needed(self) -> bool:
        return self.watch is not None or bool(self.ports.extras()) or self.watchdog_s > 0

    def start(self) -> "PortSupervisor":
        if self.needed and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="port-supervisor", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("port supervisor did not stop within %.0f s", timeout)
            if self.watchdog_s:
                faulthandler.cancel_dump_traceback_later()
        if self.ports.dropped:
            log.info("ports: %d messages dropped while no output was connected",
                     self.ports.dropped)

    def _arm(self) -> None:
        if self.watchdog_s:
            # A C thread: it fires even while a hung rtmidi call holds the GIL.
            faulthandler.dump_traceback_later(self.watchdog_s, exit=True)

    def _run(self) -> None:
        if self.watchdog_s:
            log.debug("watchdog: a process that runs no Python for %.0f s prints its stacks and "
                      "exits with status 1 (a JACK server that vanished unnoticed)", self.watchdog_s)
        self._arm()
        while not self._stop.wait(self.interval_s):
            self._arm()
            try:
                self.poll()
            except Exception as e:  # noqa: BLE001 - keep supervising; say it once per kind
                key = f"{type(e).__name__}: {e}"
                if key not in self._errors_logged:
                    self._errors_logged.add(key)
                    log.exception("port supervisor: %s (retrying)", key)

    # -- one round ------------------------------------------------------------------------

    def poll(self) -> None:
        """One round: the server, then the extra ports."""
        with self.ports.admin:
            if self.watch is not None and not self._check_server():
                return
            self._check_extras()

    def _check_server(self) -> bool:
        """False while the server is gone (nothing else to do this round)."""
        watch, ports = self.watch, self.ports
        if not self.down:
            if watch.alive() or self._alive_after_all():
                ports.confirm_alive()
                return True
            log.warning("JACK server gone; reconnecting when it returns "
                        "(output is dropped meanwhile)")
            self.down = True
            self._server_back_at = None
            self._failures, self._next_try = 0, 0.0
            self._dropped_before = ports.dropped
            t0 = time.monotonic()
            ports.teardown()  # before any new client: libjack would free the dead ones
            log.debug("deleted the dead server's clients in %.0f ms", (time.monotonic() - t0) * 1e3)
            return False
        pid = watch.running_pid()
        if pid is None:
            self._server_back_at = None
            return False
        now = time.monotonic()
        if self._server_back_at is None:
            self._server_back_at = now
        if now < self._next_try:
            return False
        try:
            ports.build()
        except Exception as e:  # noqa: BLE001 - not accepting clients yet: try again
            self._failures += 1
            # Every try prints libjack's complaints: after a few, try once a second.
            self._next_try = now + (self.interval_s if self._failures < 4 else 1.0)
            if self._failures == 4:
                log.warning("JACK server '%s' is back (pid %d) but refuses clients (%s); "
                            "still trying", watch.server, pid, e)
            return False
        watch.adopt(pid)
        self.down = False
        self.restarts += 1
        log.info("JACK server back: re-created in=%r out=%r %.0f ms after it appeared "
                 "(%d messages dropped meanwhile); ending the notes that were sounding",
                 ", ".join(ports.in_names), ", ".join(ports.out_names),
                 (time.monotonic() - self._server_back_at) * 1e3,
                 ports.dropped - self._dropped_before)
        if self.post is not None:
            self.post(PANIC)
        return True

    def _alive_after_all(self) -> bool:
        """A second look before tearing everything down: one odd read is not enough."""
        time.sleep(0.02)
        return self.watch.alive()

    def _check_extras(self) -> None:
        ports = self.ports
        extras = ports.extras()
        if not extras:
            return
        listed = {out: ports.listing(out) for out in {s.output for s in extras}}
        for slot in extras:
            names = listed.get(slot.output)
            if names is None:
                continue
            if slot.name is not None:
                if slot.name in names:
                    continue
                log.warning("extra %s '%s': port '%s' disappeared; reconnecting when it comes "
                            "back", slot.what, slot.spec, slot.name)
                ports.release(slot)
                continue  # re-opened from the next round on (a JACK client name is reused)
            if ports.match(slot, names) is None:
                continue
            seen = slot.seen
            name = ports.connect(slot)
            if name is None:
                continue
            if seen:
                self.reconnects += 1
                log.info("extra %s '%s': reconnected to '%s'", slot.what, slot.spec, name)
            else:
                log.info("extra %s '%s': connected to '%s'", slot.what, slot.spec, name)

