"""MIDI backends and ports through python-rtmidi.

Backends: ``alsa`` and ``jack`` (Linux), ``coremidi`` (macOS), ``winmm`` (Windows), and
``auto``, which tries what this platform has in order and logs which one it picked.  The
bridge opens a virtual input and a virtual output port (where the backend has virtual
ports) plus optional extra ports matched by a substring of their name: a hardware
controller to listen to, a synth to play.

Input callbacks run on the backend's thread: they stamp the arrival time
(``time.perf_counter_ns``; mido's rtmidi backend drops RtMidi's timestamps), put one tuple
on the engine's queue and return.  An exception in a callback would vanish inside
rtmidi, so it is caught and logged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import rtmidi

log = logging.getLogger(__name__)

APIS = {
    "alsa": rtmidi.API_LINUX_ALSA,
    "jack": rtmidi.API_UNIX_JACK,
    "coremidi": rtmidi.API_MACOSX_CORE,
    "winmm": rtmidi.API_WINDOWS_MM,
}
VIRTUAL = {"alsa", "jack", "coremidi"}
LOOPMIDI = ("Windows has no virtual MIDI ports: create two ports with loopMIDI "
            "(https://www.tobias-erichsen.de/software/loopmidi.html), e.g. 'midi-bridge in' and "
            "'midi-bridge out', and list them under ports.extra_inputs / ports.extra_outputs")
FIXES = {
    "alsa": "load the ALSA sequencer (sudo modprobe snd-seq) or pick another backend",
    "jack": "start a JACK server (on a headless box: jackd -d dummy &) or pick another backend",
    "coremidi": "CoreMIDI is only on macOS",
    "winmm": "WinMM is only on Windows",
}


class BackendError(RuntimeError):
    """No usable backend or port; ``str()`` says what to do.  The CLI exits with code 2."""


def platform_order() -> list[str]:
    if sys.platform.startswith("linux"):
        return ["alsa", "jack"]
    if sys.platform == "darwin":
        return ["coremidi", "jack"]
    if sys.platform.startswith("win"):
        return ["winmm"]
    return ["jack", "alsa"]


@contextlib.contextmanager
def _quiet_stderr():
    """Silence what libjack/libasound print on fd 2 while probing (they do not raise)."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)


def probe(backend: str) -> str:
    """'' if ``backend`` works here, else the reason it does not."""
    api = APIS[backend]
    if api not in rtmidi.get_compiled_api():
        return "not compiled into this python-rtmidi build"
    try:
        with _quiet_stderr():
            m = rtmidi.MidiIn(api, name="midi-bridge-probe")
            m.delete()
        return ""
    except Exception as e:  # noqa: BLE001 - rtmidi raises its own SystemError
        return str(e).strip() or type(e).__name__


def choose(backend: str) -> str:
    """Resolve ``auto``; raise :class:`BackendError` naming every failure and its fix."""
    candidates = platform_order() if backend == "auto" else [backend]
    reasons = []
    for name in candidates:
        why = probe(name)
        if not why:
            if backend == "auto":
                log.info("backend: %s (auto; tried %s)", name, ", ".join(candidates))
            return name
        reasons.append(f"{name}: {why} -> {FIXES[name]}")
    raise BackendError("no MIDI backend works here. " + "; ".join(reasons) +
                       ". Run 'midi-bridge doctor' for details.")


def list_ports(backend: str) -> tuple[list[str], list[str]]:
    """(inputs we can listen to, outputs we can send to) for ``backend``."""
    with _quiet_stderr():
        mi = rtmidi.MidiIn(APIS[backend], name="midi-bridge-list")
        mo = rtmidi.MidiOut(APIS[backend], name="midi-bridge-list")
    try:
        return list(mi.get_ports()), list(mo.get_ports())
    finally:
        mi.delete()
        mo.delete()


def _is_through(name: str) -> bool:
    return "midi through" in name.lower()


@dataclass
class Ports:
    """The open ports; ``send`` writes one message to every output."""

    backend: str
    inputs: list = field(default_factory=list)    # rtmidi.MidiIn objects (kept referenced)
    outputs: list = field(default_factory=list)   # rtmidi.MidiOut objects
    in_names: list[str] = field(default_factory=list)
    out_names: list[str] = field(default_factory=list)
    callback_errors: int = 0

    def send(self, msg: tuple[int, ...]) -> None:
        for out in self.outputs:
            out.send_message(msg)

    def close(self) -> None:
        for m in self.inputs:
            with contextlib.suppress(Exception):
                m.cancel_callback()
        for m in self.inputs + self.outputs:
            with contextlib.suppress(Exception):
                m.close_port()
            # delete() closes the backend client itself: an ALSA virtual port goes away, and
            # JACK is not left with a client that never finished (which stalls its graph).
            with contextlib.suppress(Exception):
                m.delete()
        self.inputs.clear()
        self.outputs.clear()


def open_ports(backend: str, client_name: str, in_name: str, out_name: str,
               extra_inputs: list[str], extra_outputs: list[str],
               put: Callable[[tuple], None]) -> Ports:
    """Open virtual in/out (where possible) and the extra ports; wire inputs to ``put``."""
    api = APIS[backend]
    ports = Ports(backend)
    virtual = backend in VIRTUAL
    if not virtual and not (extra_inputs and extra_outputs):
        raise BackendError(LOOPMIDI)

    def make_callback(index: int) -> Callable:
        now = time.perf_counter_ns

        def callback(event, _data=None):
            try:
                put((now(), index, event[0]))
            except Exception:  # noqa: BLE001 - would vanish inside rtmidi otherwise
                ports.callback_errors += 1
                log.exception("MIDI input callback failed")
        return callback

    def add_input(m: "rtmidi.MidiIn", label: str) -> None:
        m.ignore_types(sysex=True, timing=False, active_sense=True)
        m.set_callback(make_callback(len(ports.inputs)))
        ports.inputs.append(m)
        ports.in_names.append(label)

    try:
        if virtual:
            mi = rtmidi.MidiIn(api, name=client_name)
            mi.open_virtual_port(in_name)
            add_input(mi, _own_port_name(mi, in_name))
            mo = rtmidi.MidiOut(api, name=client_name)
            mo.open_virtual_port(out_name)
            ports.outputs.append(mo)
            ports.out_names.append(_own_port_name(mo, out_name))
        own = set(ports.in_names + ports.out_names)
        for sub in extra_inputs:
            mi = rtmidi.MidiIn(api, name=client_name)
            name = _open_by_substring(mi, sub, "input", own)
            add_input(mi, name)
        for sub in extra_outputs:
            mo = rtmidi.MidiOut(api, name=client_name)
            name = _open_by_substring(mo, sub, "output", own)
            ports.outputs.append(mo)
            ports.out_names.append(name)
    except BackendError:
        ports.close()
        raise
    except Exception as e:  # noqa: BLE001 - rtmidi's SystemError/InvalidPortError
        ports.close()
        raise BackendError(f"could not open MIDI ports on {backend}: {e}. "
                           f"{FIXES.get(backend, '')}") from None
    return ports


def _own_port_name(m, port: str) -> str:
    """The name of a port we created.  Others see it as 'client:port', and JACK may have
    renamed the client ('midi-bridge' -> 'midi-bridge-01'), so ours are matched by port name."""
    return port


def _open_by_substring(m, sub: str, what: str, own: set[str]) -> str:
    names = m.get_ports()
    matches = [(i, n) for i, n in enumerate(names)
               if sub.lower() in n.lower() and not any(n.endswith(o) for o in own)
               and not (_is_through(n) and not _is_through(sub))]
    if not matches:
        m.delete()
        listed = "; ".join(n for n in names if not _is_through(n)) or "none"
        raise BackendError(f"no MIDI {what} port matches '{sub}' (available: {listed}). "
                           f"Check the device is connected, or fix ports.extra_{what}s")
    i, name = matches[0]
    m.open_port(i, name=f"from {name}" if what == "input" else f"to {name}")
    return name
