"""The bridge's MIDI ports through python-rtmidi (backends: :mod:`.backends`).

The bridge opens a virtual input and a virtual output port (where the backend has virtual
ports) plus optional extra ports matched by a substring of their name: a hardware
controller to listen to, a synth to play.

Input callbacks run on the backend's thread: they stamp the arrival time
(``time.perf_counter_ns``; mido's rtmidi backend drops RtMidi's timestamps), put one
:class:`~midi_bridge.core.messages.Input` on the engine's queue and return.  An exception in a callback would vanish inside
rtmidi, so it is caught and logged.

Ports come and go while the bridge runs: an extra port that is missing at start is waited
for, one that disappears is re-opened when it comes back, and on JACK the whole set is
re-created after a server restart.  :class:`midi_bridge.runtime.supervise.PortSupervisor` drives that
(from its own thread); this module keeps the send path valid across the swaps.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Callable

import rtmidi

from midi_bridge.core.messages import Input

from .backends import (APIS, FIXES, LOOPMIDI, VIRTUAL, BackendError, choose, close_midi,
                       list_ports, platform_order, probe)

log = logging.getLogger(__name__)

#: (what the backends module holds is re-exported: callers import it from here too)
__all__ = ["APIS", "FIXES", "LOOPMIDI", "VIRTUAL", "BackendError", "choose", "close_midi", "list_ports",
           "platform_order", "probe", "SEND_BUDGET", "Slot", "Ports", "missing_message", "open_ports"]

def _is_through(name: str) -> bool:
    return "midi through" in name.lower()


# RtMidi's JACK output queues each message (plus a 4-byte length) in a 16 KiB ring buffer that
# the client's process callback empties every period.  When the server has died nothing
# empties it, and RtMidi 5.0's sendMessage then spins *holding the GIL* until there is room:
# the whole process would hang (not even SIGTERM gets through).  So while a liveness check
# is installed (JACK), at most this many bytes are written between two checks that the
# server is alive; past it ``send`` checks (cheap) before writing more.
SEND_BUDGET = 8192
_HEADER_BYTES = 4


class Slot:
    """One port of the bridge: a virtual port (``spec`` is its name) or an extra port
    (``spec`` is the substring to match).  ``index`` is the source index inputs report."""

    __slots__ = ("index", "output", "virtual", "spec", "midi", "name", "seen")

    def __init__(self, index: int, output: bool, virtual: bool, spec: str) -> None:
        self.index, self.output, self.virtual, self.spec = index, output, virtual, spec
        self.midi = None            # the rtmidi object (None after a teardown)
        self.name: str | None = None  # what it is open as / connected to (None: not open)
        self.seen = False           # was connected at least once (for 'reconnected' logs)

    @property
    def what(self) -> str:
        return "output" if self.output else "input"

    def __repr__(self) -> str:
        return f"Slot({self.what} {self.spec!r} -> {self.name!r})"


class Ports:
    """The bridge's ports.  ``send`` writes one message to every connected output.

    ``send`` stays valid while ports are re-opened or re-created (a lock guards the list of
    live outputs; swaps happen under it); while no output is connected messages are dropped
    and counted in ``dropped``.  Structural changes (opening, closing, re-creating) are
    serialised by ``admin`` and made by the opener, then only by the supervisor thread.
    """

    def __init__(self, backend: str, client_name: str = "midi-bridge",
                 put: Callable[[Input], None] | None = None) -> None:
        self.backend = backend
        self.api = APIS[backend]
        self.client_name = client_name
        self.callback_errors = 0
        self.dropped = 0            # messages sent while no output was connected
        self.slots: list[Slot] = []
        self.connected = True       # False between a JACK server's death and its return
        self.admin = threading.RLock()
        self._put = put
        self._lock = threading.Lock()
        self._live: list = []       # MidiOut objects ``send`` writes to (replaced, never mutated)
        self._alive: Callable[[], bool] | None = None
        self._unconfirmed = 0       # bytes written since the last liveness confirmation
        self._listers: dict[bool, object] = {}
        self._own = re.compile(re.escape(client_name) + r"(-\d+)?")

    # -- what the engine and the status screen use ----------------------------------------

    def send(self, msg: tuple[int, ...]) -> None:
        with self._lock:
            outs = self._live
            if not outs:
                self.dropped += 1
                return
            if self._alive is not None:
                n = len(msg) + _HEADER_BYTES
                if self._unconfirmed + n > SEND_BUDGET:
                    if not self._alive():
                        self.dropped += 1
                        return
                    self._unconfirmed = 0
                self._unconfirmed += n
            for out in outs:
                out.send_message(msg)

    @property
    def in_names(self) -> list[str]:
        return [s.name for s in self.slots if not s.output and s.name]

    @property
    def out_names(self) -> list[str]:
        return [s.name for s in self.slots if s.output and s.name]

    @property
    def inputs(self) -> list:
        return [s.midi for s in self.slots if not s.output and s.midi is not None]

    @property
    def outputs(self) -> list:
        return [s.midi for s in self.slots if s.output and s.midi is not None]

    def extras(self) -> list[Slot]:
        return [s for s in self.slots if not s.virtual]

    def close(self) -> None:
        if not self.admin.acquire(timeout=15):
            log.warning("ports: the supervisor did not let go; closing anyway")
            self._teardown()
            return
        try:
            self._teardown()
        finally:
            self.admin.release()

    # -- liveness (set by the supervisor on JACK) -----------------------------------------

    def set_liveness(self, alive: Callable[[], bool] | None) -> None:
        """Bound what ``send`` writes between confirmations by ``alive()`` (see SEND_BUDGET)."""
        with self._lock:
            self._alive = alive
            self._unconfirmed = 0

    def confirm_alive(self) -> None:
        """The server was seen alive: the ring buffers are being emptied."""
        with self._lock:
            self._unconfirmed = 0

    # -- opening ----------------------------------------------------------------------------

    def _callback(self, index: int) -> Callable:
        put, now = self._put, time.perf_counter_ns

        def callback(event, _data=None):
            try:
                put(Input(now(), index, event[0]))
            except Exception:  # noqa: BLE001 - would vanish inside rtmidi otherwise
                self.callback_errors += 1
                log.exception("MIDI input callback failed")
        return callback

    def _add(self, output: bool, virtual: bool, spec: str) -> Slot:
        index = sum(1 for s in self.slots if s.output == output)
        slot = Slot(index, output, virtual, spec)
        self.slots.append(slot)
        return slot

    def _new(self, slot: Slot):
        """A fresh rtmidi object for ``slot`` (RtMidi's JACK input does not receive again
        after close_port + open_port on the same object, so a re-open starts afresh)."""
        cls = rtmidi.MidiOut if slot.output else rtmidi.MidiIn
        m = cls(self.api, name=self.client_name)
        if not slot.output:
            m.ignore_types(sysex=True, timing=False, active_sense=True)
            m.set_callback(self._callback(slot.index))
        return m

    def build(self) -> None:
        """Open the virtual ports and the listing clients (rtmidi objects of their own).

        Extra ports are connected by :meth:`connect`.  Raises what rtmidi raises; whatever
        was created by then is deleted again.
        """
        with self.admin:
            try:
                for slot in self.slots:
                    if slot.virtual:
                        slot.midi = m = self._new(slot)
                        m.open_virtual_port(slot.spec)
                        slot.name = slot.spec  # (others see it as client:port; is_own matches it)
                        slot.seen = True
                for output in sorted({s.output for s in self.extras()}):
                    cls = rtmidi.MidiOut if output else rtmidi.MidiIn
                    self._listers[output] = cls(self.api, name=f"{self.client_name}-watch")
            except BaseException:
                self._teardown()
                raise
            with self._lock:
                self._live = [s.midi for s in self.slots if s.output and s.name]
                self._unconfirmed = 0
                self.connected = True

    def _teardown(self) -> None:
        """Stop sending, then delete every rtmidi object (inputs first: an output of a dead
        JACK server takes RtMidi a second to give up on)."""
        with self._lock:
            self._live = []
            self.connected = False
        for slot in sorted(self.slots, key=lambda s: s.output):
            m, slot.midi, slot.name = slot.midi, None, None
            if m is not None:
                close_midi(m)
        listers, self._listers = self._listers, {}
        for m in listers.values():
            close_midi(m)

    def teardown(self) -> None:
        with self.admin:
            self._teardown()

    # -- extra ports ------------------------------------------------------------------------

    def is_own(self, name: str) -> bool:
        """A port of this bridge ('client:port' with our client name, or a virtual port)."""
        client = name.partition(":")[0]
        return (self._own.fullmatch(client) is not None
                or any(name.endswith(s.spec) for s in self.slots if s.virtual))

    def listing(self, output: bool) -> list[str] | None:
        """Names the listing client sees now (outputs we can play to when ``output``)."""
        lister = self._listers.get(output)
        return None if lister is None else list(lister.get_ports())

    def match(self, slot: Slot, names: list[str]) -> str | None:
        sub = slot.spec.lower()
        for n in names:
            if (sub in n.lower() and not self.is_own(n)
                    and not (_is_through(n) and not _is_through(slot.spec))):
                return n
        return None

    def connect(self, slot: Slot, names: list[str] | None = None) -> str | None:
        """Open extra ``slot`` on the first port matching it; its name, or None if none does
        (``names``: a listing just taken, to skip creating a client when nothing matches)."""
        with self.admin:
            if slot.midi is not None or not self.connected:
                return slot.name
            if names is not None and self.match(slot, names) is None:
                return None
            m = self._new(slot)
            try:
                names = list(m.get_ports())
                name = self.match(slot, names)
                if name is None:
                    close_midi(m)
                    return None
                m.open_port(names.index(name),
                            name=f"from {name}" if not slot.output else f"to {name}")
            except BaseException:
                close_midi(m)
                raise
            slot.midi, slot.name, slot.seen = m, name, True
            if slot.output:
                with self._lock:
                    self._live = self._live + [m]
            return name

    def release(self, slot: Slot) -> None:
        """Close extra ``slot`` (its port went away); :meth:`connect` opens it again."""
        with self.admin:
            m, slot.midi, slot.name = slot.midi, None, None
            if m is None:
                return
            if slot.output:
                with self._lock:
                    self._live = [o for o in self._live if o is not m]
            close_midi(m)

    def available(self, slot: Slot) -> str:
        names = self.listing(slot.output)
        return "; ".join(n for n in names or () if not _is_through(n) and not self.is_own(n)) or "none"


def missing_message(slot: Slot, available: str) -> str:
    return (f"no MIDI {slot.what} port matches '{slot.spec}' (available: {available}). "
            f"Check the device is connected and switched on (or the program is running), "
            f"or fix ports.extra_{slot.what}s")


def open_ports(backend: str, client_name: str, in_name: str, out_name: str,
               extra_inputs: list[str], extra_outputs: list[str],
               put: Callable[[Input], None], wait_for_missing: bool = False) -> Ports:
    """Open virtual in/out (where possible) and the extra ports; wire inputs to ``put``.

    An extra port that matches nothing raises :class:`BackendError`, or with
    ``wait_for_missing`` logs a warning and stays unconnected (a
    :class:`midi_bridge.runtime.supervise.PortSupervisor` connects it when it appears).
    """
    if backend == "jack":  # the native backend: one client, output at its due frame
        from .jackports import JackPorts
        ports: Ports = JackPorts(client_name, put)
    else:
        ports = Ports(backend, client_name, put)
    virtual = backend in VIRTUAL
    if not virtual and not (extra_inputs and extra_outputs):
        raise BackendError(LOOPMIDI)
    if virtual:
        ports._add(False, True, in_name)
        ports._add(True, True, out_name)
    for sub in extra_inputs:
        ports._add(False, False, sub)
    for sub in extra_outputs:
        ports._add(True, False, sub)
    try:
        ports.build()
        for slot in ports.extras():
            if ports.connect(slot, ports.listing(slot.output)) is None:
                msg = missing_message(slot, ports.available(slot))
                if not wait_for_missing:
                    raise BackendError(msg)
                log.warning("%s; the bridge connects it when it appears", msg)
    except BackendError:
        ports.close()
        raise
    except Exception as e:  # noqa: BLE001 - rtmidi's SystemError/InvalidPortError
        ports.close()
        raise BackendError(f"could not open MIDI ports on {backend}: {e}. "
                           f"{FIXES.get(backend, '')}") from None
    return ports
