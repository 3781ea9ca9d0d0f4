"""MIDI backends through python-rtmidi: which work here, and closing rtmidi objects safely.

Backends: ``alsa`` and ``jack`` (Linux; ``jack`` is the native JACK backend of
:mod:`.jackports`, ``jack-rtmidi`` python-rtmidi's JACK API), ``coremidi`` (macOS),
``winmm`` (Windows), and ``auto``, which tries what this platform has in order and logs
which one it picked
(:func:`choose`).  :func:`close_midi` deletes a MidiIn or MidiOut while MIDI may still
arrive.  The bridge's own ports are in :mod:`midi_bridge.runtime.ports`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import time

import rtmidi

log = logging.getLogger(__name__)

APIS = {
    "alsa": rtmidi.API_LINUX_ALSA,
    "jack": rtmidi.API_UNIX_JACK,         # probed and listed through rtmidi; opened natively
    "jack-rtmidi": rtmidi.API_UNIX_JACK,
    "coremidi": rtmidi.API_MACOSX_CORE,
    "winmm": rtmidi.API_WINDOWS_MM,
}
VIRTUAL = {"alsa", "jack", "jack-rtmidi", "coremidi"}
JACK = ("jack", "jack-rtmidi")
LOOPMIDI = ("Windows has no virtual MIDI ports: create two ports with loopMIDI "
            "(https://www.tobias-erichsen.de/software/loopmidi.html), e.g. 'midi-bridge in' and "
            "'midi-bridge out', and list them under ports.extra_inputs / ports.extra_outputs")
FIXES = {
    "alsa": "load the ALSA sequencer (sudo modprobe snd-seq) or pick another backend",
    "jack": "start a JACK server (on a headless box: jackd -d dummy &) or pick another backend",
    "jack-rtmidi": "start a JACK server (on a headless box: jackd -d dummy &) or pick another backend",
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
    if backend == "jack":
        try:
            import jack  # noqa: F401 - JACK-Client, which loads libjack
        except (ImportError, OSError) as e:
            return (f"the native JACK backend needs JACK-Client and libjack ({e}): "
                    "pip install JACK-Client, or use --backend jack-rtmidi")
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
                       f". Run '{command('doctor')}' for details.")


def command(name: str, argv0: str | None = None) -> str:
    """The command line that runs ``midi-bridge NAME`` from where the user is: through
    ``run.sh`` as they called it (it exports ``MIDI_BRIDGE_LAUNCHER``), the program's path
    when it was started by one (``.venv/bin/midi-bridge``), else ``midi-bridge NAME``."""
    launcher = os.environ.get("MIDI_BRIDGE_LAUNCHER")
    if launcher:
        return f"{launcher if '/' in launcher else './' + launcher} {name}"
    argv0 = sys.argv[0] if argv0 is None else argv0
    if os.path.basename(argv0) == "__main__.py":  # python -m midi_bridge
        return f"python -m midi_bridge {name}"
    if os.sep in argv0 or "/" in argv0:
        return f"{argv0} {name}"
    return f"midi-bridge {name}"


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


#: The (callback, data) tuples of the inputs deleted so far (a few per port re-open).
_CALLBACKS_KEPT: list = []
#: How long a deleted input waits, GIL released, for a callback already under way.
CALLBACK_GRACE_S = 0.05
#: How long a closed JACK port waits before its client is deleted: two cycles at 1024 frames.
JACK_CYCLE_GRACE_S = 0.05


def _open_on_jack(m) -> bool:
    with contextlib.suppress(Exception):
        return bool(m.is_port_open()) and m.get_current_api() == rtmidi.API_UNIX_JACK
    return False


def close_midi(m) -> None:
    """Close and delete a python-rtmidi MidiIn or MidiOut (and its backend client), safely
    while MIDI is still arriving (the bridge's ports, the benchmark's and the tests' clients)."""
    if isinstance(m, rtmidi.MidiIn):
        # RtMidi's JACK thread takes the callback, then waits for the GIL (held here) to
        # call it.  python-rtmidi's cancel_callback frees the (callback, data) tuple that
        # thread is about to use (a crash), and deleting the client cancels that thread
        # while it waits for the GIL (a hang): both seen when closing while MIDI streams
        # in.  So keep the tuple, cancel (new events are queued in C, no GIL needed), and
        # let a callback under way finish before the port and the client go.
        kept = [r for r in gc.get_referents(m) if type(r) is tuple and len(r) == 2]
        if kept:  # (a listing client has no callback)
            _CALLBACKS_KEPT.extend(kept)
            with contextlib.suppress(Exception):
                m.cancel_callback()
            time.sleep(CALLBACK_GRACE_S)
    was_open_on_jack = _open_on_jack(m)
    with contextlib.suppress(Exception):
        m.close_port()
    if was_open_on_jack:
        # RtMidi's JACK destructor frees the port's ring buffers before it closes the client:
        # a process cycle that began before close_port saw the port is still reading them (a
        # rare crash at exit under load).  Let such a cycle end first.
        time.sleep(JACK_CYCLE_GRACE_S)
    # delete() closes the backend client itself: an ALSA virtual port goes away, and
    # JACK is not left with a client that never finished (which stalls its graph).
    with contextlib.suppress(Exception):
        m.delete()
