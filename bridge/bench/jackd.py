"""Start, reuse and stop a private JACK server (the dummy driver), reclaiming leaked slots.

Used by the integration tests (``tests/jackserver.py`` re-exports this module under the
test server's name; the registry it reads is :mod:`midi_bridge.runtime.jack`) and by ``midi-bridge bench live``, which runs its own server.

jackd2 keeps at most 8 servers per machine in ``/dev/shm/jack-shm-registry``.  A server
that dies uncleanly (SIGKILL, or SIGPIPE when a client vanishes) keeps its slot until a
server of the *same name* starts and stops cleanly; once 8 have leaked no jackd starts.
So every user of this module picks one fixed name per purpose, starts jackd with SIGPIPE
left ignored (``restore_signals=False``), stops it with SIGTERM and wait, and reclaims
the slot whenever it leaked anyway (jackd 1.9.21 installs its own SIGPIPE handler, and
was seen dying of SIGPIPE on SIGTERM after a client had been SIGKILLed).  jackd runs in
its own session, so a Ctrl-C in the terminal reaches only its owner, which stops it
after its clients.  A live server of the requested name is reused and never stopped
(``owned`` is False).
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

from midi_bridge.runtime import jack as registry
from midi_bridge.runtime.jack import client_env, is_jackd_of, pid_alive, registered_pid, registry_servers


class JackError(RuntimeError):
    """jackd is missing, refused to start, or did not stop."""


def jackd_path() -> str | None:
    return shutil.which("jackd")


def leaked(name: str) -> bool:
    """True when the registry still lists ``name`` for a process that is gone."""
    pid = registered_pid(name)
    return pid is not None and not pid_alive(pid)


def _forget_recycled_slot(name: str) -> bool:
    """Clear our own slot when its pid now belongs to an unrelated live process.

    jackd reclaims a slot whose pid is dead, but refuses ("server already active") when
    the dead server's pid has been reused.  Only this user's slot of ``name`` is touched.
    """
    slot = registry.own_slot(name)
    if not slot or not pid_alive(slot[1]) or is_jackd_of(slot[1], name) is not False:
        return False
    offset, pid, stride = slot
    with open(registry.REGISTRY, "r+b") as f:
        f.seek(offset)
        if struct.unpack("<i", f.read(4))[0] != pid:
            return False
        f.seek(offset)
        f.write(b"\0" * stride)
    return True


def _remove_stale_files(name: str) -> None:
    """Delete what dead servers of ``name`` (this user) left in /dev/shm.

    jackd2 keeps one futex file per client, named after the server and the client.  A
    stale one is reused by the next client of that name and can leave it never woken by
    the server ("client ... was not finished"), so it goes before a fresh start.
    """
    uid = os.getuid()
    for pattern in (f"jack_sem.{uid}_{name}_*", f"jack_{name}_{uid}_*"):
        for path in registry.REGISTRY.parent.glob(pattern):
            try:
                path.unlink()
            except OSError:
                pass


# -- probing -----------------------------------------------------------------------------

_RTMIDI_PROBE = "import rtmidi; rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name='mb-probe')"


def responds(name: str, timeout: float = 5.0) -> bool:
    """True when a JACK client can connect to server ``name`` right now."""
    if shutil.which("jack_lsp"):
        cmd = ["jack_lsp", "-s", name]
    else:
        cmd = [sys.executable, "-c", _RTMIDI_PROBE]
    try:
        done = subprocess.run(cmd, env=client_env(name), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


#: Server-name lengths that libjack (jackd2 1.9.21) cannot connect to: every client of a
#: server whose name is exactly 24 characters long aborts in malloc (found with
#: ``jack_lsp -s NAME`` over lengths 20-32; only 24 fails).
BAD_NAME_LENGTHS = frozenset({24})


def check_name(name: str) -> None:
    if len(name) in BAD_NAME_LENGTHS:
        raise JackError(f"JACK server name {name!r} is {len(name)} characters long: libjack 1.9.21 "
                        "crashes every client of such a server; pick a name of another length")


class JackServer:
    """A jackd with the dummy driver.  ``owned`` is False when a live one was reused."""

    def __init__(self, name: str, log_path: str | os.PathLike | None = None,
                 rate: int = 48000, period: int = 256, realtime: bool = False) -> None:
        check_name(name)
        self.name = name
        self.rate, self.period = rate, period  # requested; a reused server has its own
        self.log_path = Path(log_path or Path("/tmp") / f"{name}-jackd.log")
        # realtime: SCHED_FIFO for jackd and its clients' process threads where the system
        # allows it (jackd falls back quietly otherwise), as a musician's JACK runs
        self.command = [jackd_path() or "jackd", "-n", name, "--realtime" if realtime else "--no-realtime",
                        "-d", "dummy", "-r", str(rate), "-p", str(period)]
        self.proc: subprocess.Popen | None = None
        self.owned = False
        self.returncode: int | None = None  # of the last jackd we stopped

    def __enter__(self) -> "JackServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def start(self, timeout: float = 15.0) -> "JackServer":
        """Start jackd, or reuse a live server of the same name."""
        if jackd_path() is None:
            raise JackError("jackd is not installed (Debian/Ubuntu: apt-get install jackd2)")
        if self.running:
            return self
        if responds(self.name):
            self.owned = False  # e.g. a developer's own session: use it, never stop it
            return self
        _forget_recycled_slot(self.name)
        if registered_pid(self.name) is None or leaked(self.name):
            _remove_stale_files(self.name)
        self._launch()
        self._wait_ready(timeout)
        self.owned = True
        return self

    def _launch(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n$ {' '.join(self.command)}\n".encode())
            log.flush()
            # restore_signals=False: jackd starts with Python's ignored SIGPIPE instead of
            # the default action (which kills it uncleanly when a client vanishes).
            # start_new_session: a Ctrl-C in the terminal reaches our process, not jackd,
            # so the server is stopped last, after its clients (SIGTERM and wait).
            self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, restore_signals=False,
                                         start_new_session=True)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise JackError(self._refusal())
            if responds(self.name, timeout=2.0):
                return
            time.sleep(0.05)
        self._terminate(5.0)
        raise JackError(f"jackd '{self.name}' did not accept clients within {timeout:.0f} s;"
                        f" log {self.log_path}:\n{self.log_tail()}")

    def _refusal(self) -> str:
        msg = f"jackd '{self.name}' exited at start; log {self.log_path}:\n{self.log_tail()}"
        servers = registry_servers() or []
        if len(servers) >= registry.MAX_SERVERS:
            dead = [n for pid, n in servers if not pid_alive(pid)]
            msg += (f"\nAll {registry.MAX_SERVERS} JACK server slots are taken; leaked by dead servers: "
                    f"{dead}. Reclaim each by starting and stopping a server of that name, "
                    "e.g. `jackd -n NAME -d dummy` then Ctrl-C.")
        return msg

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait (SIGKILL only after ``timeout``), then reclaim a leaked slot.

        A jackd that had a client die uncleanly (SIGKILLed, crashed) may die of SIGPIPE
        while shutting down, even with SIGPIPE ignored at exec (jackd installs its own
        handler), which leaks its slot.
        """
        if not self.owned or self.proc is None:
            return
        self._terminate(timeout)
        self.owned = False
        if leaked(self.name):
            self.reclaim(timeout)

    def _terminate(self, timeout: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()  # last resort; leaks the slot, which stop() reclaims
                proc.wait()
        self.returncode = proc.returncode

    def kill(self) -> None:
        """SIGKILL the server (leaks its slot; for testing the reclaim path)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        self.owned = False

    def reclaim(self, timeout: float = 15.0) -> None:
        """Free a slot leaked by a dead server of our name: start one, stop it cleanly."""
        if self.running or not leaked(self.name):
            return
        self._launch()
        try:
            self._wait_ready(timeout)
        finally:
            self._terminate(timeout)
