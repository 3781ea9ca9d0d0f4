"""What the runtime needs to know about JACK: who runs (jackd2's registry), and how fast.

jackd2 lists its servers in the shared-memory registry ``/dev/shm/jack-shm-registry``
(at most 8 per machine): the port supervisor reads it to notice that the server it
plays on is gone or restarted (:func:`registered_pid`, :func:`pid_alive`), and the
latency compensation asks a server for its period and rate (:func:`settings`,
:func:`period_ms`).  Starting and stopping a private server for the tests and the
benchmark is :mod:`midi_bridge.bench.jackd`.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

REGISTRY = Path("/dev/shm/jack-shm-registry")
MAX_SERVERS = 8
_HEADER = 24  # magic, protocol, type, size, hdr_len, entry_len (6 x 32 bit)


def client_env(name: str) -> dict[str, str]:
    """Environment for a JACK client of server ``name`` that never autostarts one."""
    return {**os.environ, "JACK_DEFAULT_SERVER": name, "JACK_NO_START_SERVER": "1"}


# -- the shared-memory registry (Linux; absent elsewhere) ---------------------------------

def _slots() -> tuple[int, list[tuple[int, int, str]]] | None:
    """``(stride, [(offset, pid, raw name)])`` of the used slots, None without a registry."""
    try:
        data = REGISTRY.read_bytes()
        stride = (struct.unpack_from("<I", data, 16)[0] - _HEADER) // MAX_SERVERS
    except (OSError, struct.error):
        return None
    if data[:4] != b"KCAJ" or stride < 8:
        return None
    used = []
    for i in range(MAX_SERVERS):
        offset = _HEADER + i * stride
        pid = struct.unpack_from("<i", data, offset)[0]
        raw = data[offset + 4 : offset + stride].split(b"\0", 1)[0].decode(errors="replace")
        if pid:
            used.append((offset, pid, raw))
    return stride, used


def registry_servers() -> list[tuple[int, str]] | None:
    """``(pid, server name)`` of each used slot, or None without a registry."""
    slots = _slots()
    if slots is None:
        return None
    # jackd stores "jack-<uid>:<name>:"
    return [(pid, raw.split(":", 1)[-1].rstrip(":")) for _, pid, raw in slots[1]]


def own_slot(name: str) -> tuple[int, int, int] | None:
    """``(offset, pid, stride)`` of this user's slot for server ``name``, if listed."""
    slots = _slots()
    for offset, pid, raw in slots[1] if slots else ():
        if raw == f"jack-{os.getuid()}:{name}:":
            return offset, pid, slots[0]
    return None


def registered_pid(name: str) -> int | None:
    """pid the registry lists for server ``name`` (this user), or None."""
    slot = own_slot(name)
    return slot[1] if slot else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_jackd_of(pid: int, name: str) -> bool | None:
    """Whether ``pid`` is a jackd serving ``name`` (None when /proc can't tell)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    args = [a.decode(errors="replace") for a in argv if a]
    if not args or not os.path.basename(args[0]).startswith("jackd"):
        return False
    named = {f"-n{name}", f"--name={name}"}
    pairs = zip(args, args[1:])
    return any(a in named for a in args) or any(
        a in ("-n", "--name") and b == name for a, b in pairs
    )


# -- probing --------------------------------------------------------------------------------

def settings(name: str, timeout: float = 5.0) -> tuple[int | None, int | None]:
    """``(period in frames, sample rate)`` of the running server ``name`` (None: unknown).

    Asks with jackd2's example clients ``jack_bufsize`` / ``jack_samplerate`` (which print
    the current values when given no argument).
    """
    def ask(tool: str, pattern: str) -> int | None:
        if not shutil.which(tool):
            return None
        try:
            done = subprocess.run([tool], env=client_env(name), capture_output=True, text=True,
                                  timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            return None
        m = re.search(pattern, done.stdout)
        return int(m.group(1)) if done.returncode == 0 and m else None

    period, rate = ask("jack_bufsize", r"(\d+)"), ask("jack_samplerate", r"(\d+)")
    if period is None or rate is None:
        period, rate = _settings_libjack(name)
    return period, rate


def _settings_libjack(name: str) -> tuple[int | None, int | None]:
    """The same through libjack (ctypes), for systems without the example clients."""
    import ctypes
    import ctypes.util
    lib_name = ctypes.util.find_library("jack")
    if lib_name is None:
        return None, None
    try:
        lib = ctypes.CDLL(lib_name)
        lib.jack_client_open.restype = ctypes.c_void_p
        lib.jack_client_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int),
                                         ctypes.c_char_p]
        for f in ("jack_get_buffer_size", "jack_get_sample_rate", "jack_client_close"):
            getattr(lib, f).argtypes = [ctypes.c_void_p]
        status = ctypes.c_int(0)
        # JackNoStartServer (1) | JackServerName (4): never start one, ask this one
        client = lib.jack_client_open(b"mb-probe", 1 | 4, ctypes.byref(status), name.encode())
        if not client:
            return None, None
        try:
            return int(lib.jack_get_buffer_size(client)), int(lib.jack_get_sample_rate(client))
        finally:
            lib.jack_client_close(client)
    except (OSError, AttributeError):
        return None, None


def period_ms(name: str | None = None) -> float | None:
    """The JACK period of server ``name`` (default: the one clients use) in ms, or None."""
    name = name or os.environ.get("JACK_DEFAULT_SERVER") or "default"
    period, rate = settings(name)
    return None if not period or not rate else 1000.0 * period / rate


# -- the server -----------------------------------------------------------------------------
