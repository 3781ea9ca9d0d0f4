"""The bridge's ports on the native JACK backend (:mod:`.jackmidi`): one client, every port.

Same interface as :class:`.ports.Ports` (the engine, the supervisor and the status screen
do not know which one they have), with these differences:

* the ports are those of two JACK clients, named after ``ports.client_name``: the inputs
  ``NAME:midi-bridge in`` and ``NAME:from SPEC`` per extra input, the outputs
  ``NAME-out:midi-bridge out`` and ``NAME-out:to SPEC`` per extra output (two clients,
  not one: see :class:`.jackmidi.JackMidi`); an extra port is *connected* to the first
  matching port of another client when it appears and disconnected when it goes;
* input is stamped with the frame it arrived at (on the engine's clock), not with the
  moment a backend thread got round to it;
* :meth:`send_at` takes the message's due time and the backend writes it at that frame
  (:meth:`send`: at the start of the next period, as python-rtmidi does for everything).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from midi_bridge.core.messages import Input

from .jackmidi import JackMidi, JackMidiError
from .ports import BackendError, Ports, Slot

log = logging.getLogger(__name__)


class JackPorts(Ports):
    def __init__(self, client_name: str = "midi-bridge", put: Callable | None = None,
                 server: str | None = None) -> None:
        super().__init__("jack", client_name, put)
        self.server = server
        self.jm: JackMidi | None = None
        self._outs: list[int] = []        # indexes of the JackMidi outputs that play now
        self._jack_lock = threading.Lock()

    @property
    def xruns(self) -> int:
        return self.jm.xruns if self.jm is not None else 0

    def period_ns(self) -> int | None:
        jm = self.jm
        return None if jm is None else round(jm.period * 1e9 / jm.rate)

    def latency_ns(self) -> tuple[int, int]:
        """``(capture, playback)`` worst latency of the graph around our ports (ns)."""
        jm = self.jm
        if jm is None:
            return 0, 0
        cap, play = jm.latency_frames()
        return round(cap * 1e9 / jm.rate), round(play * 1e9 / jm.rate)

    # -- sending ----------------------------------------------------------------------------

    def send(self, msg: tuple[int, ...]) -> None:
        """At the start of the next period (as python-rtmidi sends everything)."""
        self.send_at(msg, None)

    def send_at(self, msg: tuple[int, ...], due_ns: int | None) -> None:
        """At the frame of ``due_ns`` (the engine's clock); None or past: at once."""
        jm, outs = self.jm, self._outs
        if jm is None or not outs:
            self.dropped += 1
            return
        for i in outs:
            if jm.send(i, msg, due_ns) is None:
                self.dropped += 1

    # -- opening ----------------------------------------------------------------------------

    def _port_name(self, slot: Slot) -> str:
        if slot.virtual:
            return slot.spec
        return f"to {slot.spec}" if slot.output else f"from {slot.spec}"

    def _input(self, put, index_of: list[int]) -> Callable[[int, int, bytes], None]:
        def on_input(t_ns: int, i: int, data: bytes) -> None:
            try:
                put(Input(t_ns, index_of[i], data))
            except Exception:  # noqa: BLE001 - would vanish inside JACK's thread otherwise
                self.callback_errors += 1
                log.exception("MIDI input callback failed")
        return on_input

    def build(self) -> None:
        ins = [s for s in self.slots if not s.output]
        outs = [s for s in self.slots if s.output]
        with self.admin:
            try:
                jm = JackMidi(self.client_name, [self._port_name(s) for s in ins],
                              [self._port_name(s) for s in outs],
                              self._input(self._put, [s.index for s in ins]), server=self.server)
            except JackMidiError as e:
                raise BackendError(f"could not open MIDI ports on jack: {e}") from None
            self.jm = jm
            for slot in self.slots:
                slot.midi = None
                if slot.virtual:
                    slot.midi, slot.name, slot.seen = jm, slot.spec, True
            self._outs = [k for k, s in enumerate(outs) if s.virtual]
            self.connected = True

    def _teardown(self) -> None:
        self._outs = []
        self.connected = False
        jm, self.jm = self.jm, None
        for slot in self.slots:
            slot.midi, slot.name = None, None
        if jm is not None:
            try:
                jm.close()
            except Exception:  # noqa: BLE001 - a dead server's client may not close cleanly
                log.debug("closing the JACK client failed", exc_info=True)

    # -- extra ports ------------------------------------------------------------------------

    def _own_full(self, slot: Slot) -> str:
        client = self.jm.out_name if slot.output else self.jm.name
        return f"{client}:{self._port_name(slot)}"

    def is_own(self, name: str) -> bool:
        jm = self.jm
        return ((jm is not None and name.partition(":")[0] in (jm.name, jm.out_name))
                or super().is_own(name))

    def listing(self, output: bool) -> list[str] | None:
        """Other clients' MIDI ports: the ones we can play to (``output``) or listen to."""
        jm = self.jm
        if jm is None:
            return None
        ports = jm.client.get_ports(is_midi=True, is_input=output, is_output=not output)
        return [p.name for p in ports if not self.is_own(p.name)]

    def connect(self, slot: Slot, names: list[str] | None = None) -> str | None:
        with self.admin:
            if slot.name is not None or not self.connected or self.jm is None:
                return slot.name
            names = self.listing(slot.output) if names is None else names
            name = self.match(slot, names or [])
            if name is None:
                return None
            ours = self._own_full(slot)
            pair = (ours, name) if slot.output else (name, ours)
            try:
                self.jm.client.connect(*pair)
            except Exception as e:  # noqa: BLE001 - jack.JackError: the port just went
                log.debug("connecting %s -> %s failed: %s", *pair, e)
                return None
            slot.midi, slot.name, slot.seen = self.jm, name, True
            if slot.output:
                outs = [s for s in self.slots if s.output]
                self._outs = sorted(set(self._outs) | {outs.index(slot)})
            return name

    def release(self, slot: Slot) -> None:
        with self.admin:
            name, slot.midi, slot.name = slot.name, None, None
            if name is None or self.jm is None:
                return
            if slot.output:
                outs = [s for s in self.slots if s.output]
                self._outs = [k for k in self._outs if k != outs.index(slot)]
            ours = self._own_full(slot)
            pair = (ours, name) if slot.output else (name, ours)
            try:
                self.jm.client.disconnect(*pair)
            except Exception:  # noqa: BLE001 - the peer is gone: nothing to undo
                pass
