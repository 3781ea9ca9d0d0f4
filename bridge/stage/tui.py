"""The live status screen of ``midi-bridge run`` (rich), with single-key controls.

It runs in the **main** thread, after the engine thread has started: a few times a
second it reads the engine's state (:func:`midi_bridge.stage.stats.snapshot`: plain attribute reads,
no locks, nothing on the engine's path) and redraws one compact panel - ports,
generator, mode, clock source and tempo, phrase state, notes in/out, latency p50/p99
over ``status.window_s``, late/dropped messages, temperature - with the last log lines
at the bottom (log records go to a small ring while the screen is up, not over it); the
panel itself is drawn by :mod:`.panel`.

Keys never touch the engine: each puts a :class:`~midi_bridge.core.messages.Command` on
the engine's inbox, handled by the engine thread between two events:

* ``p`` panic, end every note: ``Command("panic")``
* ``n`` next generator: ``Command("next")``
* ``m`` mode continue -> accompany -> thru: ``Command("mode", (None,))`` (None: cycle)
* ``+`` (or ``=``) / ``-`` temperature x1.25 / /1.25: ``Command("temperature", (factor,))``
* ``q`` quit, like Ctrl-C: the engine thread's stop item.

Keys are read without blocking: POSIX puts the terminal in cbreak mode (no echo, no
line buffering, Ctrl-C still a signal) and ``select()`` waits on stdin between redraws;
the terminal's settings are restored on exit, on an exception and when a signal stops
the bridge (the loop ends with the engine thread).  Windows polls ``msvcrt.kbhit``.

``status.tui``: ``auto`` shows the screen only when stdin and stdout are terminals (not
``TERM=dumb``) and the bridge runs in the foreground; ``on`` asks for it (plain logs and
a warning without a terminal); ``off`` (``--no-tui``) keeps plain logs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import time
from collections import deque
from typing import Any, Callable, Iterator

from midi_bridge.core.messages import Command

from .panel import HELP, LOG_LINES, render  # noqa: F401 - HELP, render: re-exported
from .stats import LatencyWindow, snapshot

try:
    from rich.console import Console
    from rich.live import Live
    from rich.panel import Panel  # noqa: F401 - (the type of a frame)
except ImportError:  # pragma: no cover - rich is a dependency; plain logs without it
    Console = None  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)

TEMPERATURE_STEP = 1.25
#: key -> inbox item (q is handled apart: it stops the engine thread).
KEYS: dict[str, Command] = {
    "p": Command("panic"),
    "n": Command("next"),
    "m": Command("mode", (None,)),
    "+": Command("temperature", (TEMPERATURE_STEP,)),
    "=": Command("temperature", (TEMPERATURE_STEP,)),  # the unshifted '+' key
    "-": Command("temperature", (1 / TEMPERATURE_STEP,)),
}
QUIT = "q"
REFRESH_S = 0.25

_ESCAPE = re.compile(r"\x1b(?:\[[0-9;?]*[@-~]|O.|.)?", re.DOTALL)  # arrow keys, F-keys, ...


# -- whether to show it -----------------------------------------------------------------------

def _isatty(stream: Any) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _foreground(fd: int | None) -> bool:
    """False when ``fd`` is our controlling terminal and another process group owns it
    (``midi-bridge run &``): touching it would stop the bridge with SIGTTOU/SIGTTIN."""
    if fd is None or os.name != "posix":
        return True
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:  # not our controlling terminal: no job control applies
        return True


def _fileno(stream: Any) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return None


def wanted(setting: str, stdin: Any = None, stdout: Any = None) -> tuple[bool, str | None]:
    """``(show the screen, warning or None)`` for ``status.tui`` = auto | on | off."""
    if setting == "off":
        return False, None
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    # A dumb terminal (Emacs' shell, some CI consoles) cannot redraw in place.
    tty = _isatty(stdin) and _isatty(stdout) and os.environ.get("TERM", "") not in ("dumb", "unknown")
    if Console is None:
        return False, ("the status screen needs the 'rich' package (pip install 'rich>=13'); "
                       "plain logs") if setting == "on" else None
    if setting == "on" and not tty:
        return False, ("status.tui is 'on' but stdin/stdout is not a terminal: plain logs "
                       "(use --no-tui or status.tui: auto to silence this)")
    if tty and not _foreground(_fileno(stdin)):
        return False, ("status.tui is 'on' but the bridge runs in the background: plain logs"
                       if setting == "on" else None)
    return tty, None


# -- keys -------------------------------------------------------------------------------------

def key_command(key: str) -> tuple | None:
    """The inbox item for one key (None: not a command key; ``q`` is not one either)."""
    return KEYS.get(key)


class KeyHandler:
    """Turns typed text into inbox commands: ``feed(text)`` -> True once ``q`` was typed."""

    def __init__(self, post: Callable[[tuple], None], quit: Callable[[], None]) -> None:
        self.post = post
        self.quit = quit
        self.quitting = False

    def feed(self, text: str) -> bool:
        for key in _ESCAPE.sub("", text):
            if key == QUIT:
                if not self.quitting:
                    self.quitting = True
                    log.info("q: ending all notes and stopping")
                    self.quit()
                continue
            item = key_command(key)
            if item is not None:
                self.post(item)
        return self.quitting


class TerminalKeys:
    """Single keypresses from a terminal, without blocking (context manager).

    POSIX: cbreak mode on ``stream`` (echo and line buffering off, signals kept) for the
    duration; the previous settings are restored on exit - also when leaving by an
    exception.  After Ctrl-Z and ``fg`` cbreak mode is set again; while the bridge runs in
    the background (``bg``) the terminal is left alone (touching it would stop the bridge).
    """

    def __init__(self, stream: Any = None) -> None:
        self.stream = sys.stdin if stream is None else stream
        self.fd: int | None = None
        self._saved: list | None = None
        self._eof = False
        self._old_cont: Any = None

    def __enter__(self) -> "TerminalKeys":
        if os.name == "nt":
            return self
        try:
            import termios
            import tty
            self.fd = self.stream.fileno()
            if not _foreground(self.fd):
                raise OSError("in the background")
            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd, termios.TCSANOW)
        except (ImportError, AttributeError, ValueError, OSError):
            self.fd, self._saved = None, None
            return self
        import signal
        if hasattr(signal, "SIGCONT"):
            with contextlib.suppress(ValueError):  # not the main thread: no handler
                self._old_cont = signal.signal(signal.SIGCONT, self._on_cont)
        return self

    def _on_cont(self, _signum: int, _frame: Any) -> None:
        if not _foreground(self.fd):  # continued with 'bg': leave the terminal alone
            return
        with contextlib.suppress(Exception):
            import termios
            import tty
            tty.setcbreak(self.fd, termios.TCSANOW)

    def restore(self) -> None:
        # In the background the shell has the terminal (and its own settings) back.
        if self._saved is not None and self.fd is not None and _foreground(self.fd):
            import termios
            with contextlib.suppress(OSError, ValueError):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None
        if self._old_cont is not None:
            import signal
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGCONT, self._old_cont)
            self._old_cont = None

    def __exit__(self, *exc: Any) -> None:
        self.restore()

    def read(self, timeout: float) -> str:
        """What was typed, waiting up to ``timeout`` seconds for the first key ('' if none)."""
        if os.name == "nt":
            return self._read_windows(timeout)
        if self.fd is None or self._eof or not _foreground(self.fd):
            time.sleep(timeout)  # (a read in the background would stop the bridge)
            return ""
        import select
        try:
            ready, _, _ = select.select([self.fd], [], [], timeout)
            if not ready:
                return ""
            data = os.read(self.fd, 64)
        except (OSError, ValueError):
            data = b""
        if not data:  # end of input: no more keys, but keep the screen
            self._eof = True
            return ""
        return data.decode("utf-8", "ignore")

    def _read_windows(self, timeout: float) -> str:  # pragma: no cover - Windows only
        import msvcrt
        deadline = time.monotonic() + timeout
        keys = []
        while True:
            while msvcrt.kbhit():
                ch = msvcrt.getwch()
                if ch in ("\x00", "\xe0"):  # a function/arrow key: its code follows
                    msvcrt.getwch()
                    continue
                keys.append(ch)
            if keys or time.monotonic() >= deadline:
                return "".join(keys)
            time.sleep(0.02)


# -- logging while the screen is up -------------------------------------------------------

class RingHandler(logging.Handler):
    """Keeps the last ``size`` formatted log lines (shown at the bottom of the panel)."""

    def __init__(self, size: int = LOG_LINES) -> None:
        super().__init__()
        self.lines: deque[str] = deque(maxlen=size)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                            datefmt="%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 - a bad log call must not stop anything
            self.handleError(record)
            return
        # A traceback shows as its last line (the panel is small).
        self.lines.append(text.rstrip().splitlines()[-1] if record.exc_info else text)


@contextlib.contextmanager
def logs_into(handler: logging.Handler) -> Iterator[None]:
    """Route the root logger's records to ``handler`` only, restoring its handlers after."""
    root = logging.getLogger()
    saved = root.handlers[:]
    if saved:
        handler.setLevel(min(h.level for h in saved))
    root.handlers = [handler]
    try:
        yield
    finally:
        root.handlers = saved


# -- the loop ---------------------------------------------------------------------------------

class StatusScreen:
    """Draws the panel and handles keys until the engine thread ends."""

    def __init__(self, engine: Any, ports: Any, thread: Any, window: LatencyWindow | None = None,
                 window_s: float = 60.0, console: "Console | None" = None,
                 stdin: Any = None, refresh_s: float = REFRESH_S) -> None:
        self.engine, self.ports, self.thread, self.window = engine, ports, thread, window
        self.window_s = window_s
        self.console = console
        self.stdin = stdin
        self.refresh_s = refresh_s
        self.ring = RingHandler()
        self.keys = KeyHandler(thread.inbox.put, thread.stop)

    def frame(self) -> "Panel":
        snap = snapshot(self.engine, self.ports, self.window, thread=self.thread)
        return render(snap, self.ring.lines, self.window_s)

    def run(self) -> None:
        console = self.console or Console()
        with logs_into(self.ring), TerminalKeys(self.stdin) as term, \
                Live(self.frame(), console=console, auto_refresh=False, transient=False) as live:
            next_draw = 0.0
            while self.thread.is_alive():
                typed = term.read(self.refresh_s)
                if typed:
                    self.keys.feed(typed)
                    next_draw = 0.0  # show the effect at once
                now = time.monotonic()
                if now >= next_draw:
                    live.update(self.frame(), refresh=True)
                    next_draw = now + self.refresh_s
            live.update(self.frame(), refresh=True)


def run_if_wanted(setting: str, engine: Any, ports: Any, thread: Any,
                  window: LatencyWindow | None = None, window_s: float = 60.0) -> bool:
    """Show the status screen until the engine thread ends, if ``setting`` wants it.

    Returns False when the caller should wait for the engine thread itself (plain logs,
    or the screen failed: the error is logged and the bridge carries on without it)."""
    show, warning = wanted(setting)
    if warning:
        log.warning(warning)
    if not show:
        return False
    try:
        StatusScreen(engine, ports, thread, window, window_s).run()
    except Exception:  # noqa: BLE001 - the display must never take the bridge down
        log.exception("status screen failed; plain logs from now on")
        return False
    return True
