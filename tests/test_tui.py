"""The live status screen: what it shows, what keys send, when it is on, and a real run under a pty."""

from __future__ import annotations

import io
import logging
import os
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

rich = pytest.importorskip("rich")
from rich.console import Console  # noqa: E402

from midi_bridge.commands import cli
from midi_bridge.stage import tui
from midi_bridge.core.messages import STOP, Command  # noqa: E402
from midi_bridge.stage.stats import LatencyWindow, Snapshot, snapshot  # noqa: E402
from helpers import MS, Both, Melody, Rig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def text_of(renderable, width: int = 100) -> str:
    console = Console(record=True, width=width, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text()


class FakePorts:
    backend = "jack"
    in_names = ["mb:midi-bridge in"]
    out_names = ["mb:midi-bridge out"]
    callback_errors = 0


# -- drawing ----------------------------------------------------------------------------------

def test_panel_shows_every_field():
    rig = Rig({"melody": Melody}, engine={"mode": "continue", "bpm": 100},
              phrase={"silence_ms": 400, "min_notes": 2})
    rig.engine.controls.update({"temperature": 0.8, "density": 0.5, "length": 1.5})
    rig.tap(0, 60)
    rig.tap(150, 62)
    w = LatencyWindow(60)
    for lat in (1, 2, 3):
        w.add(rig.clock.t, lat * MS)
    snap = snapshot(rig.engine, FakePorts(), w, now_ns=rig.clock.t)
    text = text_of(tui.render(snap, ["12:00:00 INFO midi_bridge.commands.live: ready: hello"], window_s=60))
    for expected in ("midi-bridge", "mb:midi-bridge in", "mb:midi-bridge out", "(jack)",
                     "generator", "melody", "mode continue", "internal clock", "100.0 bpm",
                     "waiting for silence (2 notes)", "in 2 (4 events)", "p50 2.00 ms",
                     "p99 3.00 ms", "(3 over 60 s)", "worst lateness", "temperature 0.80",
                     "density 0.50", "length 1.50", "ready: hello", "p panic", "q quit"):
        assert expected in text, f"{expected!r} missing from:\n{text}"


def test_panel_without_data_and_with_problems():
    snap = Snapshot(generator=None, mode="thru", clock="midi", transport="running", bpm=128.0,
                    errors={"malformed": 3, "engine_errors": 1}, late=2, late_max_ms=12.5,
                    dropped=0, notes_out=7, sent=20)
    text = text_of(tui.render(snap))
    for expected in ("generator  -", "mode thru", "MIDI clock", "128.0 bpm", "transport running",
                     "p50 -", "p99 -", "late 2   worst lateness 12.5 ms   dropped 0", "malformed 3",
                     "engine_errors 1", "out 7 notes, 20 msgs", "temperature default"):
        assert expected in text, f"{expected!r} missing from:\n{text}"


def test_panel_shows_a_recording_that_is_not_being_saved():
    """A failing --record write (disk full) is logged once and soon scrolls away: the panel
    keeps saying so while it lasts."""
    rig = Rig({"melody": Melody})

    class Rec:
        path, error = "sessions/take.mid", None

    rig.engine.recorder = Rec()
    text = text_of(tui.render(snapshot(rig.engine, FakePorts(), now_ns=rig.clock.t)))
    assert "recording" in text and "sessions/take.mid" in text and "NOT SAVING" not in text
    Rec.error = "[Errno 28] No space left on device"
    text = text_of(tui.render(snapshot(rig.engine, FakePorts(), now_ns=rig.clock.t)))
    assert "NOT SAVING: [Errno 28] No space left on device" in text


def test_panel_keeps_markup_in_names_literal():
    snap = Snapshot(generator="[bold]x[/bold]", in_ports=["in [1]"], mode="continue")
    text = text_of(tui.render(snap, ["a [red]log[/red] line"]))
    assert "[bold]x[/bold]" in text and "in [1]" in text and "a [red]log[/red] line" in text


def test_log_lines_wrap_at_the_screen_width_and_the_last_ones_that_fit_are_shown():
    """A long line shows its end (the fix it names), not an ellipsis; of the wrapped lines
    the last LOG_LINES screen lines are shown."""
    refused = ("12:00:00 WARNING midi_bridge.core.slot: swap refused: generator 'harmony' does "
               "not support mode 'continue' (it supports: accompany) (keeping 'markov')")
    lines = [f"12:00:0{i} INFO x: line {i}" for i in range(4)] + [refused]
    text = text_of(tui.render(Snapshot(mode="continue"), lines), width=60)
    flat = re.sub(r"\s*│\s*", " ", text)
    assert "…" not in text
    assert "(it supports: accompany) (keeping 'markov')" in re.sub(r"\s+", " ", flat)
    # the refused line takes 3 screen lines at this width: with lines 2 and 3, that is 5
    assert "line 2" in text and "line 3" in text
    assert "line 1" not in text and "line 0" not in text, "older lines than fit are shown"
    log_rows = text.split("controls")[1].splitlines()[2:-1]  # below the grid's last row
    assert len([r for r in log_rows if r.strip("│ ")]) == tui.LOG_LINES
    wide = text_of(tui.render(Snapshot(mode="continue"), lines), width=200)
    assert "line 0" in wide and "(keeping 'markov')" in wide  # one screen line each


@pytest.mark.parametrize("thru, says", [
    (False, "continue mode: a played note sends nothing at once"),
    (True, "p50 "),
])
def test_latency_row_in_continue_mode_says_what_is_measured(thru, says):
    """12 notes played in continue mode: without thru nothing goes out at once, so there is
    no latency sample, and the row says why instead of "no notes played"."""
    rig = Rig({"melody": Melody}, thru={"enabled": thru}, phrase={"silence_ms": 2000})
    rig.engine.latency = LatencyWindow(60)
    for i in range(12):
        rig.tap(i * 100, 60 + i, 50)
    snap = snapshot(rig.engine, FakePorts(), now_ns=rig.clock.t)
    assert snap.notes_in == 12 and snap.thru is thru
    assert (snap.latency_count == 12) is thru
    text = text_of(tui.render(snap), width=200)
    assert says in text
    assert "no notes played" not in text and "no played note sent anything" not in text


def test_latency_row_without_samples_elsewhere_says_nothing_was_sent():
    text = text_of(tui.render(Snapshot(mode="accompany")), width=200)
    assert "no played note sent anything in the last 60 s" in text


def test_status_screen_frame_reads_the_engine():
    rig = Rig({"melody": Melody})
    rig.on(0, 60)

    class Thread:
        inbox = queue.SimpleQueue()
        crashes = 0

        def stop(self):
            self.inbox.put(STOP)

    screen = tui.StatusScreen(rig.engine, FakePorts(), Thread(), LatencyWindow(60))
    text = text_of(screen.frame())
    assert "melody" in text and "playing (1 notes)" in text


# -- keys -------------------------------------------------------------------------------------

def feed(text: str) -> tuple[list[tuple], list[str]]:
    posted: list[tuple] = []
    quits: list[str] = []
    tui.KeyHandler(posted.append, lambda: quits.append("stop")).feed(text)
    return posted, quits


@pytest.mark.parametrize("key, item", [
    ("p", Command("panic")),
    ("n", Command("next")),
    ("m", Command("mode", (None,))),
    ("+", Command("temperature", (1.25,))),
    ("=", Command("temperature", (1.25,))),
    ("-", Command("temperature", (0.8,))),
])
def test_each_key_posts_its_command(key, item):
    posted, quits = feed(key)
    assert posted == [item] and not quits
    assert tui.key_command(key) == item


def test_q_stops_once_and_other_keys_do_nothing():
    posted, quits = feed("xq Pq\r\n")
    assert posted == [] and quits == ["stop"]


def test_several_keys_in_one_read_and_escape_sequences_ignored():
    # arrow up, F1 (ESC O P), Home: their letters must not be taken for keys
    posted, _ = feed("pn\x1b[A\x1bOP\x1b[1;5H+-m")
    assert posted == [Command("panic"), Command("next"), Command("temperature", (1.25,)),
                      Command("temperature", (0.8,)), Command("mode", (None,))]


def test_keys_reach_the_engine_through_its_inbox():
    """Posted commands are what the engine thread handles (never a direct call)."""
    rig = Rig({"both": Both}, engine={"mode": "continue"})
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    tui.KeyHandler(inbox.put, lambda: None).feed("++m")
    assert rig.engine.controls.get("temperature") is None  # nothing happened yet
    while not inbox.empty():
        rig.engine.handle(inbox.get(), rig.clock.t)
    assert rig.engine.controls["temperature"] == pytest.approx(1.5625, abs=1e-3)
    assert rig.engine.mode == "accompany"


# -- when it is on ----------------------------------------------------------------------------

class Stream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("setting, tty, show, warns", [
    ("auto", True, True, False),
    ("auto", False, False, False),
    ("on", True, True, False),
    ("on", False, False, True),
    ("off", True, False, False),
    ("off", False, False, False),
])
def test_when_the_screen_is_shown(setting, tty, show, warns, monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    got, warning = tui.wanted(setting, Stream(tty), Stream(tty))
    assert got is show
    assert (warning is not None) is warns
    if warns:
        assert "not a terminal" in warning


def test_a_dumb_terminal_gets_plain_logs(monkeypatch):
    monkeypatch.setenv("TERM", "dumb")
    assert tui.wanted("auto", Stream(True), Stream(True)) == (False, None)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert tui.wanted("auto", Stream(True), Stream(True)) == (True, None)


def test_a_terminal_is_needed_on_both_sides():
    assert tui.wanted("auto", Stream(True), Stream(False))[0] is False
    assert tui.wanted("auto", Stream(False), Stream(True))[0] is False
    assert tui.wanted("auto", io.StringIO(), io.StringIO())[0] is False


def test_no_screen_in_the_background(monkeypatch):
    """``midi-bridge run &``: touching the terminal would stop the bridge (SIGTTOU/SIGTTIN)."""
    monkeypatch.setattr(tui, "_foreground", lambda fd: False)
    assert tui.wanted("auto", Stream(True), Stream(True)) == (False, None)
    show, warning = tui.wanted("on", Stream(True), Stream(True))
    assert not show and "background" in warning


def test_cli_flags_set_status_tui(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("status: {tui: auto}\n")
    parser = cli.build_parser()
    for argv, expected in ((["run"], "auto"), (["run", "--no-tui"], "off"), (["run", "--tui"], "on")):
        args = parser.parse_args(argv + ["--config", str(path)])
        assert cli._load_config(args)["status"]["tui"] == expected
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--tui", "--no-tui"])


# -- logging while the screen is up -------------------------------------------------------------

def test_log_records_go_to_the_ring_and_handlers_come_back():
    root = logging.getLogger()
    before = root.handlers[:]
    ring = tui.RingHandler(size=3)
    with tui.logs_into(ring):
        assert root.handlers == [ring]
        logger = logging.getLogger("midi_bridge.test")
        for i in range(5):
            logger.warning("line %d", i)
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    assert root.handlers == before
    lines = list(ring.lines)
    assert len(lines) == 3
    assert "line 3" in lines[0] and "line 4" in lines[1]
    assert lines[2].endswith("ValueError: boom")  # a traceback shows as its last line


def test_handlers_come_back_after_an_exception():
    root = logging.getLogger()
    before = root.handlers[:]
    with pytest.raises(RuntimeError):
        with tui.logs_into(tui.RingHandler()):
            raise RuntimeError
    assert root.handlers == before


# -- terminal mode ----------------------------------------------------------------------------

posix_only = pytest.mark.skipif(os.name != "posix", reason="termios/pty are POSIX")


@posix_only
def test_terminal_keys_cbreak_and_restore():
    import pty
    import termios
    master, slave = pty.openpty()
    try:
        stream = os.fdopen(slave, "rb", buffering=0, closefd=False)
        before = termios.tcgetattr(slave)
        with pytest.raises(RuntimeError):
            with tui.TerminalKeys(stream) as keys:
                mode = termios.tcgetattr(slave)
                assert not mode[3] & termios.ICANON and not mode[3] & termios.ECHO
                assert mode[3] & termios.ISIG  # Ctrl-C still stops the bridge
                assert keys.read(0) == ""
                os.write(master, b"pq")
                assert keys.read(5) == "pq"
                raise RuntimeError("the display failed")
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_terminal_keys_without_a_terminal():
    with tui.TerminalKeys(io.StringIO()) as keys:
        assert keys.read(0) == ""


# -- a real bridge under a pseudo-terminal ------------------------------------------------------

ANSI = re.compile(r"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-Za-z]|.)")
CONFIG = {"engine": {"output_channel": 2}, "thru": {"enabled": False}}


class PtyBridge:
    """``python -m midi_bridge run --backend jack`` with a pseudo-terminal as its stdin/out/err."""

    def __init__(self, args: list[str], config_path: Path, cols: int = 120, rows: int = 40) -> None:
        import fcntl
        import pty
        import struct
        import termios
        from midiclient import unique_client_name
        self.client = unique_client_name("mb-test-tui")
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.saved_mode = termios.tcgetattr(self.slave)
        self.cmd = [sys.executable, "-m", "midi_bridge", "run", "--backend", "jack",
                    "--client-name", self.client, "--config", str(config_path), *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "xterm-256color"}
        for var in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TERM_PROGRAM"):
            env.pop(var, None)
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, stdin=self.slave, stdout=self.slave,
                                     stderr=self.slave, env=env, start_new_session=True)
        self.raw = bytearray()
        self._done = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._done.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:
                    return
                if not data:
                    return
                self.raw.extend(data)

    @property
    def text(self) -> str:
        return ANSI.sub("", bytes(self.raw).decode("utf-8", "replace")).replace("\r", "")

    def wait_for(self, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while what not in self.text:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                time.sleep(0.2)
                rc = self.proc.poll()
                pytest.fail(f"{what!r} not seen ({'exit ' + str(rc) if rc is not None else 'timeout'})"
                            f": {' '.join(self.cmd)}\n--- output ---\n{self.text}", pytrace=False)
            time.sleep(0.05)

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait(self, timeout: float = 15.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.close()
            pytest.fail(f"bridge still running after {timeout} s\n{self.text}", pytrace=False)

    def terminal_mode(self) -> list:
        import termios
        return termios.tcgetattr(self.slave)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        time.sleep(0.1)
        self._done.set()
        self._reader.join(2)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def pty_bridge(jack_server, tmp_path):
    bridges: list[PtyBridge] = []

    def start(*args: str, config: dict | None = None) -> PtyBridge:
        path = tmp_path / f"config{len(bridges)}.yaml"
        path.write_text(yaml.safe_dump(config or CONFIG))
        bridges.append(PtyBridge(list(args), path))
        return bridges[-1]

    yield start
    for b in bridges:
        b.close()
        print(f"--- {' '.join(b.cmd)} (exit {b.proc.returncode}) ---\n{b.text}")


@posix_only
@pytest.mark.jack
def test_tui_under_a_terminal_shows_the_state_and_q_quits(pty_bridge, jack_server):
    from midiclient import MidiClient
    bridge = pty_bridge("--mode", "accompany", "--generator", "harmony")
    bridge.wait_for("ready:")
    bridge.wait_for("p50")  # the status screen is up
    text = bridge.text[bridge.text.index("ready:"):]
    assert "harmony" in text.split("ready:", 1)[1].split("\n", 1)[1], text  # in the panel
    assert "mode accompany" in text and "q quit" in text
    midi = MidiClient("midi-bridge in", "midi-bridge out", client=bridge.client)
    try:
        midi.note_on(60, 100, 0)
        midi.wait_for(lambda ms: any(m.is_note_on for m in ms), timeout=5, what="accompaniment")
        bridge.wait_for("in 1 (1 events)", timeout=10)  # the screen follows the engine
        midi.note_off(60, 0)
        bridge.wait_for("in 1 (2 events)", timeout=10)
    finally:
        midi.close()
    import termios
    assert not bridge.terminal_mode()[3] & termios.ICANON  # cbreak while the screen is up
    bridge.type(b"+")  # keys go to the engine thread, the screen shows what it did
    bridge.wait_for("temperature 1.25", timeout=10)
    bridge.type(b"m")
    bridge.wait_for("mode thru", timeout=10)
    bridge.type(b"q")
    assert bridge.wait() == 0, bridge.text
    bridge.wait_for("stopped:", timeout=5)
    assert bridge.terminal_mode() == bridge.saved_mode  # the terminal is given back as it was


@posix_only
@pytest.mark.jack
def test_tui_stops_cleanly_on_sigterm(pty_bridge):
    bridge = pty_bridge("--mode", "thru")
    bridge.wait_for("p50")
    bridge.proc.send_signal(signal.SIGTERM)
    assert bridge.wait() == 0, bridge.text
    bridge.wait_for("stopped:", timeout=5)
    assert bridge.terminal_mode() == bridge.saved_mode


@posix_only
@pytest.mark.jack
def test_no_tui_under_a_terminal_keeps_plain_logs(pty_bridge):
    bridge = pty_bridge("--mode", "thru", "--no-tui")
    bridge.wait_for("ready:")
    bridge.proc.send_signal(signal.SIGINT)
    assert bridge.wait() == 0, bridge.text
    bridge.wait_for("stopped:", timeout=5)
    # A screen draws a frame when it starts and when it ends: none was drawn.
    assert "p50" not in bridge.text and "q quit" not in bridge.text, bridge.text
    assert "SIGINT: ending all notes and stopping" in bridge.text  # the log, as plain lines


def test_a_failing_screen_falls_back_to_plain_logs(monkeypatch, caplog):
    """The display must never take the bridge down: the caller keeps waiting on the engine."""
    monkeypatch.setattr(tui, "wanted", lambda setting: (True, None))

    def broken(self):
        raise RuntimeError("cannot draw")

    monkeypatch.setattr(tui.StatusScreen, "run", broken)

    class Thread:
        inbox = queue.SimpleQueue()

        def stop(self):
            self.inbox.put(STOP)

    with caplog.at_level(logging.ERROR):
        assert tui.run_if_wanted("on", object(), None, Thread()) is False
    assert "status screen failed" in caplog.text
    assert Thread.inbox.empty()  # the bridge was not stopped


def test_plain_logs_when_not_wanted(monkeypatch, caplog):
    monkeypatch.setattr(tui, "wanted", lambda setting: (False, "no terminal here"))
    with caplog.at_level(logging.WARNING):
        assert tui.run_if_wanted("on", object(), None, object()) is False
    assert "no terminal here" in caplog.text
