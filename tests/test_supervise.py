"""Port supervision: extra ports that come and go, and a JACK server restart.

First the supervisor's logic against a fake rtmidi (no MIDI system needed), then end to
end: a real ``midi-bridge run --mode thru`` process, where notes played into an input come
straight out of the bridge's output, which a test client records.  Timings are only
logged (the machine may be loaded); what is asserted is that the notes flow again and
what the bridge says.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import logging

import pytest
import rtmidi
import yaml

from midi_bridge.runtime import ports as ports_mod
from midi_bridge.bench.driver import Child, bridge_cmd, parse_stopped
from midi_bridge.core.messages import PANIC, Command, Input
from midi_bridge.runtime.supervise import PortSupervisor
from conftest import need_jackd
from jackserver import SERVER_NAME, JackError, JackServer, client_env
from midiclient import MidiClient, unique_client_name

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
CONFIG = {"thru": {"enabled": True, "channel": "same"}}
# A second server, only for the restart test: named after the session's (side-by-side runs).
RESTART_SERVER = f"{SERVER_NAME}-restart"


# -- the logic, against a fake rtmidi -------------------------------------------------------------

class Graph:
    """The fake MIDI system: other programs' ports, and every rtmidi object ever made."""

    def __init__(self) -> None:
        self.readable: list[str] = []   # ports we can listen to (others' outputs)
        self.writable: list[str] = []   # ports we can play to (others' inputs)
        self.objects: list[FakeMidi] = []
        self.down = False


class FakeMidi:
    graph: Graph
    output = False

    def __init__(self, api, name: str = "") -> None:
        if self.graph.down:
            raise SystemError("JACK server not running?")
        self.client, self.port, self.deleted = name, None, False
        self.sent: list = []
        self.callback = None
        self.graph.objects.append(self)

    def get_ports(self) -> list[str]:
        assert not self.deleted
        return list(self.graph.writable if self.output else self.graph.readable)

    def open_port(self, index: int, name: str = "") -> None:
        self.port = self.get_ports()[index]

    def open_virtual_port(self, name: str) -> None:
        self.port = f"{self.client}:{name}"

    def close_port(self) -> None:
        self.port = None

    def delete(self) -> None:
        self.deleted = True

    def ignore_types(self, **_kw) -> None:
        pass

    def set_callback(self, callback) -> None:
        self.callback = callback

    def cancel_callback(self) -> None:
        self.callback = None

    def send_message(self, msg) -> None:
        assert not self.deleted and self.port
        self.sent.append(tuple(msg))


class FakeWatch:
    def __init__(self) -> None:
        self.pid, self.server_pid = 100, 100

    def alive(self) -> bool:
        return self.server_pid == self.pid

    def running_pid(self):
        return self.server_pid

    def adopt(self, pid: int) -> None:
        self.pid = pid


@pytest.fixture
def graph(monkeypatch):
    g = Graph()
    FakeIn = type("MidiIn", (FakeMidi,), {"graph": g, "output": False})
    FakeOut = type("MidiOut", (FakeMidi,), {"graph": g, "output": True})
    monkeypatch.setattr(ports_mod.rtmidi, "MidiIn", FakeIn)
    monkeypatch.setattr(ports_mod.rtmidi, "MidiOut", FakeOut)
    return g


def fake_ports(extra_inputs=(), extra_outputs=(), put=None):
    got: list[tuple] = []
    p = ports_mod.open_ports("jack-rtmidi", "mb", "midi-bridge in", "midi-bridge out", list(extra_inputs),
                             list(extra_outputs), put or got.append, wait_for_missing=True)
    return p, got


def live(graph: Graph, output: bool):
    return [m for m in graph.objects if m.output == output and not m.deleted and m.port]


def test_missing_extra_input_is_waited_for_then_reconnected(graph, caplog):
    caplog.set_level(logging.INFO)
    graph.readable = ["synth:out"]
    p, got = fake_ports(extra_inputs=["keys"])
    assert "no MIDI input port matches 'keys' (available: synth:out)" in caplog.text
    assert "ports.extra_inputs" in caplog.text and "connects it when it appears" in caplog.text
    sup = PortSupervisor(p, watch=False, watchdog_s=0)
    sup.poll()
    assert p.in_names == ["midi-bridge in"]

    graph.readable.append("kbd:keys out")
    sup.poll()
    assert p.in_names == ["midi-bridge in", "kbd:keys out"]
    assert "extra input 'keys': connected to 'kbd:keys out'" in caplog.text
    first = next(m for m in live(graph, False) if m.port == "kbd:keys out")
    first.callback(([0x90, 60, 1], 0.0))
    assert got[-1][1:] == (1, [0x90, 60, 1])  # source 1: the extra input
    assert type(got[-1]) is Input and got[-1].port == 1 and got[-1].data == [0x90, 60, 1]

    graph.readable.remove("kbd:keys out")
    sup.poll()
    sup.poll()
    assert first.deleted and p.in_names == ["midi-bridge in"]
    assert caplog.text.count("'kbd:keys out' disappeared") == 1  # logged once

    graph.readable.append("kbd:keys out")
    sup.poll()
    assert "extra input 'keys': reconnected to 'kbd:keys out'" in caplog.text
    again = next(m for m in live(graph, False) if m.port == "kbd:keys out")
    assert again is not first  # a fresh object: RtMidi's JACK input is deaf after a re-open
    again.callback(([0x90, 61, 1], 0.0))
    assert got[-1][1:] == (1, [0x90, 61, 1])  # the same source index as before
    assert sup.reconnects == 1
    p.close()
    assert not live(graph, False) and not live(graph, True)


def test_own_ports_are_never_matched(graph):
    graph.readable = ["mb-01:midi-bridge out", "mb-02:to synth", "Midi Through:Port-0"]
    p, _ = fake_ports(extra_inputs=["midi-bridge", "synth", "through"])
    assert p.in_names == ["midi-bridge in"]
    p.close()


def test_vanished_extra_output_is_skipped_then_played_to_again(graph):
    p, _ = fake_ports(extra_outputs=["synth"])
    sup = PortSupervisor(p, watch=False, watchdog_s=0)
    own = live(graph, True)[0]
    graph.writable.append("fluid:synth in")
    sup.poll()
    p.send((0x90, 60, 100))
    synth = next(m for m in live(graph, True) if m is not own)
    assert own.sent == synth.sent == [(0x90, 60, 100)]

    graph.writable.clear()
    sup.poll()
    p.send((0x90, 61, 100))  # the own output keeps playing
    assert own.sent[-1] == (0x90, 61, 100) and synth.deleted and p.dropped == 0

    graph.writable.append("fluid:synth in")
    sup.poll()
    p.send((0x90, 62, 100))
    synth2 = next(m for m in live(graph, True) if m is not own)
    assert synth2.sent == [(0x90, 62, 100)]
    p.close()


def test_jack_restart_recreates_ports_and_asks_for_a_panic(graph, caplog):
    caplog.set_level(logging.INFO)
    posted: list[tuple] = []
    graph.readable = ["kbd:keys"]
    p, got = fake_ports(extra_inputs=["keys"])
    watch = FakeWatch()
    sup = PortSupervisor(p, post=posted.append, watch=watch, watchdog_s=0)
    old = [m for m in graph.objects if not m.deleted]
    assert len(old) == 4  # in, out, the extra input, the listing client
    p.send((0x90, 60, 100))

    watch.server_pid = None  # the server is gone
    graph.down = True
    sup.poll()
    assert "JACK server gone; reconnecting when it returns" in caplog.text
    assert all(m.deleted for m in old) and not p.connected
    p.send((0x80, 60, 0))
    assert p.dropped == 1
    sup.poll()  # still gone: no client is opened (libjack would free the dead ones)
    assert len(graph.objects) == 4

    watch.server_pid = 200  # back, but not accepting clients yet
    sup.poll()
    assert sup.down and len(graph.objects) == 4 and not posted
    graph.down = False
    sup._next_try = 0.0
    sup.poll()
    assert not sup.down and watch.pid == 200 and sup.restarts == 1
    assert "JACK server back: re-created in='midi-bridge in' out='midi-bridge out'" in caplog.text
    assert posted == [PANIC] and type(posted[0]) is Command and posted[0].name == "panic"
    out = live(graph, True)
    assert [m.port for m in out] == ["mb:midi-bridge out"]
    p.send((0xB0, 123, 0))
    assert out[0].sent == [(0xB0, 123, 0)]
    sup.poll()  # the extra input comes back with its peer
    assert p.in_names == ["midi-bridge in", "kbd:keys"]
    p.close()


def test_send_writes_a_bounded_amount_between_liveness_checks(graph):
    p, _ = fake_ports()
    out = live(graph, True)[0]
    alive = [True]
    checks = []

    def check() -> bool:
        checks.append(1)
        return alive[0]

    p.set_liveness(check)
    for _ in range(5000):
        p.send((0x90, 60, 100))
    assert len(out.sent) == 5000 and p.dropped == 0 and checks  # alive: checked, never dropped
    alive[0] = False
    p.confirm_alive()
    for _ in range(5000):
        p.send((0x90, 60, 100))
    written = len(out.sent) - 5000
    assert written * 7 <= ports_mod.SEND_BUDGET < (written + 1) * 7
    assert p.dropped == 5000 - written
    p.close()


# -- end to end ---------------------------------------------------------------------------------

def start_bridge(tmp_path: Path, config: dict, env: dict[str, str] | None = None) -> tuple[Child, str]:
    path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    client = unique_client_name("mb-sup-bridge")
    child = Child(bridge_cmd(client, str(path), "--mode", "thru", "-v"), env or dict(os.environ),
                  "ready:", "bridge")
    try:
        child.wait_ready(90)
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    return child, client


def expect_line(bridge: Child, pattern: str, timeout: float = 10.0) -> str:
    m = bridge.wait_line(pattern, timeout)
    assert m, (f"the bridge never logged /{pattern}/ within {timeout} s "
               f"(exit {bridge.proc.poll()}):\n{bridge.output[-4000:]}")
    return m.string.strip()


def expect_count(bridge: Child, pattern: str, n: int, timeout: float = 10.0) -> None:
    """Wait until ``pattern`` is in ``n`` lines of the bridge's output."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while sum(1 for line in list(bridge.lines) if rx.search(line)) < n:
        assert time.monotonic() < deadline and bridge.proc.poll() is None, (
            f"the bridge did not log /{pattern}/ {n} times within {timeout} s "
            f"(exit {bridge.proc.poll()}):\n{bridge.output[-4000:]}")
        time.sleep(0.02)


def stop_cleanly(bridge: Child) -> None:
    assert bridge.proc.poll() is None, f"the bridge died:\n{bridge.output[-4000:]}"
    rc = bridge.stop(15)
    assert rc == 0, f"exit {rc}:\n{bridge.output[-4000:]}"
    assert parse_stopped(bridge.output) is not None, f"no 'stopped:' line:\n{bridge.output[-4000:]}"


class Controller:
    """Another program's MIDI output port (a keyboard that can be unplugged)."""

    def __init__(self, port: str) -> None:
        self.midi = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name=unique_client_name("mb-sup-kbd"))
        self.midi.open_virtual_port(port)

    def note(self, pitch: int) -> None:
        self.midi.send_message([0x90, pitch, 100])
        time.sleep(0.03)
        self.midi.send_message([0x80, pitch, 0])

    def close(self) -> None:
        if not self.midi.is_deleted:
            self.midi.close_port()
            self.midi.delete()


class Synth:
    """Another program's MIDI input port (a synth that can quit), recording what it gets."""

    def __init__(self, port: str) -> None:
        self.got: list[bytes] = []
        self.midi = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name=unique_client_name("mb-sup-synth"))
        self.midi.set_callback(lambda event, _d=None: self.got.append(bytes(event[0])))
        self.midi.open_virtual_port(port)

    def close(self) -> None:
        if not self.midi.is_deleted:
            self.midi.cancel_callback()
            self.midi.close_port()
            self.midi.delete()


def heard(got, pitch: int) -> bool:
    return any(len(d) == 3 and d[0] & 0xF0 == 0x90 and d[1] == pitch and d[2] for d in got)


def play_until_heard(play, got, pitch: int, timeout: float = 5.0) -> float:
    """Play ``pitch`` every 0.2 s until ``got()`` has it; seconds it took (fails on timeout)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        play(pitch)
        end = time.monotonic() + 0.2
        while time.monotonic() < end:
            if heard(got(), pitch):
                return time.monotonic() - t0
            time.sleep(0.01)
    raise AssertionError(f"note {pitch} never came through within {timeout} s; got {got()!r}")


# -- extra ports --------------------------------------------------------------------------------

@pytest.mark.jack
def test_extra_input_waited_for_and_reconnected(jack_server, tmp_path):
    key = f"h6kbd{os.getpid()}"
    bridge, client = start_bridge(tmp_path, {**CONFIG, "ports": {"extra_inputs": [key]}})
    listener = kbd = None
    try:
        warning = expect_line(bridge, rf"WARNING.*'{key}'", 5)
        assert "extra_inputs" in warning and "connects it when it appears" in warning, warning
        listener = MidiClient("midi-bridge in", "midi-bridge out", client=client)
        heard_ = lambda: [m.data for m in listener.messages()]  # noqa: E731

        kbd = Controller(key)
        expect_line(bridge, rf"extra input '{key}': connected to '.*{key}'", 5)
        took = play_until_heard(kbd.note, heard_, 60)
        print(f"first connection: played through after {took:.2f} s")

        kbd.close()
        expect_line(bridge, rf"extra input '{key}': port '.*{key}' disappeared", 5)
        assert bridge.proc.poll() is None
        listener.clear()

        kbd = Controller(key)  # the keyboard is plugged back in
        t0 = time.monotonic()
        expect_line(bridge, rf"extra input '{key}': reconnected to '.*{key}'", 5)
        took = play_until_heard(kbd.note, heard_, 62)
        print(f"reconnected: logged after {time.monotonic() - t0:.2f} s, played through "
              f"{took:.2f} s after it came back")
        # the bridge's own input still works as well
        listener.clear()
        play_until_heard(listener.note_on, heard_, 64)
        stop_cleanly(bridge)
    finally:
        for c in (kbd, listener):
            if c is not None:
                c.close()
        bridge.stop()
        print(bridge.output)


@pytest.mark.jack
def test_extra_output_waited_for_and_reconnected(jack_server, tmp_path):
    key = f"h6synth{os.getpid()}"
    bridge, client = start_bridge(tmp_path, {**CONFIG, "ports": {"extra_outputs": [key]}})
    player = synth = None
    try:
        expect_line(bridge, rf"WARNING.*'{key}'.*extra_outputs", 5)
        player = MidiClient("midi-bridge in", "midi-bridge out", client=client)

        synth = Synth(key)
        expect_line(bridge, rf"extra output '{key}': connected to '.*{key}'", 5)
        play_until_heard(player.note_on, lambda: synth.got, 60)

        synth.close()
        expect_line(bridge, rf"extra output '{key}': port '.*{key}' disappeared", 5)
        player.note_on(61)  # the bridge keeps playing to its own output meanwhile
        player.wait_for(lambda ms: heard([m.data for m in ms], 61), 5, "thru on the own output")

        synth = Synth(key)
        expect_line(bridge, rf"extra output '{key}': reconnected to '.*{key}'", 5)
        play_until_heard(player.note_on, lambda: synth.got, 62)
        stop_cleanly(bridge)
    finally:
        for c in (synth, player):
            if c is not None:
                c.close()
        bridge.stop()
        print(bridge.output)


# -- JACK server restart --------------------------------------------------------------------------

# The test process never holds a JACK client of the restarted server: libjack (jackd2
# 1.9.21) serves one server per process, and frees the clients of a dead server when the
# next client opens.  Playing and listening happen in a child process, once per check.
PLAY = """
import sys, time
from midiclient import MidiClient
client, pitch = sys.argv[1], int(sys.argv[2])
with MidiClient("midi-bridge in", "midi-bridge out", client=client, timeout=15) as m:
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10:
        m.note_on(pitch, 100); time.sleep(0.03); m.note_off(pitch)
        if m.wait(0, lambda ms: any(x.is_note_on and x.data[1] == pitch for x in ms), 0.2):
            print(f"OK {time.monotonic() - t0:.2f}")
            sys.exit(0)
    print("NO ANSWER", [x.data.hex() for x in m.messages()])
    sys.exit(1)
"""


def play_through(env: dict[str, str], client: str, pitch: int) -> str:
    done = subprocess.run([sys.executable, "-c", PLAY, client, str(pitch)], env=env, cwd=TESTS,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"thru failed:\n{done.stdout}\n{done.stderr[-2000:]}"
    return done.stdout.strip()


@pytest.fixture
def restart_server(tmp_path):
    """A JACK server of our own that the test may stop and start (stopped afterwards)."""
    need_jackd()
    server = JackServer(RESTART_SERVER, log_path=tmp_path / "jackd.log")
    try:
        server.start()
    except JackError as exc:
        pytest.fail(str(exc), pytrace=False)
    if not server.owned:
        server.stop()
        pytest.skip(f"a JACK server '{RESTART_SERVER}' runs already (not ours to stop)")
    yield server
    server.stop()


@pytest.mark.jack
def test_jack_server_restart_is_survived(tmp_path, restart_server):
    server = restart_server
    env = {**client_env(RESTART_SERVER),
           "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")])}
    bridge = None
    try:
        bridge, client = start_bridge(tmp_path, CONFIG, env)
        print("before:", play_through(env, client, 60))

        server.stop()  # SIGTERM and wait
        expect_line(bridge, r"JACK server gone; reconnecting when it returns", 10)
        time.sleep(0.5)
        assert bridge.proc.poll() is None, f"the bridge died with the server:\n{bridge.output}"

        server.start()
        t0 = time.monotonic()
        line = expect_line(bridge, r"JACK server back: re-created", 15)
        print(f"back {time.monotonic() - t0:.2f} s after start() returned: {line}")
        print("after:", play_through(env, client, 62))
        assert bridge.proc.poll() is None

        # Gone again, and stopped while it is gone: still a clean exit.
        server.stop()
        expect_count(bridge, r"JACK server gone; reconnecting when it returns", 2, 10)
        stop_cleanly(bridge)
    finally:
        if bridge is not None:
            bridge.stop()
            print(bridge.output)
        server.stop()


# Where the server cannot be watched (no jackd2 registry), a vanished server is not noticed
# and RtMidi's send then spins with the GIL held: the watchdog makes that a loud exit.
HANG = """
import sys
from midi_bridge.runtime.ports import open_ports
from midi_bridge.runtime.supervise import PortSupervisor
p = open_ports(sys.argv[1], "mb-sup-hang", "midi-bridge in", "midi-bridge out", [], [], lambda item: None)
PortSupervisor(p, watch=False, watchdog_s=3).start()
print("READY", flush=True)
sys.stdin.readline()
for _ in range(100000):
    p.send((0x90, 60, 100))
print("NOT REACHED", p.dropped, flush=True)
"""


def _lose_the_server(server, backend: str) -> subprocess.Popen:
    env = {**client_env(RESTART_SERVER), "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", HANG, backend], env=env, cwd=REPO, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout.readline().strip() == "READY", child.stderr.read()
    server.stop()
    child.stdin.write("go\n")
    child.stdin.flush()
    return child


@pytest.mark.jack
def test_unwatched_server_loss_fails_loudly(restart_server):
    """python-rtmidi's JACK send spins with the GIL held once a dead server's ring is full:
    the watchdog makes that hang loud (every thread's stack, exit 1)."""
    server = restart_server
    child = _lose_the_server(server, "jack-rtmidi")
    try:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 1, (child.returncode, out, err[-3000:])
        assert "NOT REACHED" not in out
        assert "Timeout" in err and "in send" in err, err[-3000:]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        server.stop()


@pytest.mark.jack
def test_the_native_backend_never_blocks_when_the_server_is_lost(restart_server):
    """The native backend's send only writes to a lock-free ring: with the server gone it
    fills, and what does not fit is dropped and counted; the bridge's thread goes on."""
    server = restart_server
    child = _lose_the_server(server, "jack")
    try:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, (child.returncode, out, err[-3000:])
        assert "NOT REACHED" in out and int(out.split()[-1]) > 0, (out, err[-2000:])
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        server.stop()
