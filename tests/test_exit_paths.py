"""Exit and failure paths of a live bridge on a real JACK server: no crash, no hang, no
stuck note when it is stopped while MIDI is streaming in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from midiclient import unique_client_name, unmatched_note_ons
from test_integration_jack import (CONFIG, OUT_CH, PLAYER_CH, REPO, driver,  # noqa: F401
                                   note_ons, play_phrase, start_bridge)

# (both scripts) flood ``out`` from a thread, with another Python thread wanting the GIL
_FLOOD = r'''
sys.setswitchinterval(0.0002)   # as midi-bridge run does
done = threading.Event()

def stream():
    i = 0
    while not done.is_set():
        for _ in range(6):
            out.send_message([0x90 | (i % 16), (i // 16) % 128, 100])
            i += 1
        time.sleep(0.001)

def busy():  # another Python thread wanting the GIL (the engine thread, draining)
    x = 0
    while not done.is_set():
        x = (x + 1) % 1000

sender = threading.Thread(target=stream)
sender.start()
threading.Thread(target=busy, daemon=True).start()
'''

# A bridge's ports (midi_bridge.runtime.ports.open_ports, as `midi-bridge run` opens them) with MIDI
# streaming into the input (a DAW playing a dense track, or sending clock), closed while
# it streams: what `midi-bridge run` does on SIGINT/SIGTERM after the engine has ended
# every note.  Its own thread floods the input, so the GIL is as contended as in the
# bridge (engine thread, input callbacks).
_CLOSE_WHILE_STREAMING = r'''
import sys, threading, time, queue
import rtmidi
from midi_bridge.runtime import ports as ports_mod

name = sys.argv[1]
inbox = queue.SimpleQueue()
p = ports_mod.open_ports(sys.argv[2], name, "midi-bridge in", "midi-bridge out", [], [], inbox.put)
if sys.argv[2] == "jack":
    # The source is a JACK-Client port too: python-rtmidi holds the GIL through its calls
    # to the server, which then waits on a JACK-Client callback that needs the GIL.
    from midi_bridge.runtime.jackmidi import JackMidi
    src = JackMidi(name + "-src", [], ["out"], lambda *a: None)
    src.client.connect(src.outports[0], f"{name}:midi-bridge in")

    class out:
        send_message = staticmethod(lambda m: src.send(0, m))
        delete = staticmethod(src.close)
else:
    out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name=name + "-src")
    names = out.get_ports()
    out.open_port(next(i for i, n in enumerate(names)
                       if n.startswith(name + ":") and n.endswith("midi-bridge in")))
''' + _FLOOD + r'''
deadline = time.monotonic() + 5
while inbox.qsize() < 300 and time.monotonic() < deadline:
    time.sleep(0.01)
print("streaming", inbox.qsize(), flush=True)
p.close()
print("closed", flush=True)
done.set()
sender.join()
print("source stopped", flush=True)
out.delete()
'''


# The same for the benchmark's and the tests' MIDI client (midi_bridge.bench.driver.Driver, the
# base of tests/midiclient.MidiClient), closed while the device under test still sends: a
# benchmark run hung this way in its stop row (the bridge's note-offs and CCs arriving).
_DRIVER_CLOSE_WHILE_STREAMING = r'''
import sys, threading, time
import rtmidi
from midi_bridge.bench.driver import Driver

name = sys.argv[1]
src_in = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name=name)
src_in.open_virtual_port("dev in")
src = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name=name)
src.open_virtual_port("dev out")
drv = Driver(name, "dev in", "dev out", settle=0.2)
out = src
''' + _FLOOD + r'''
deadline = time.monotonic() + 5
while len(drv.received) < 300 and time.monotonic() < deadline:
    time.sleep(0.01)
print("streaming", len(drv.received), flush=True)
drv.close()
print("closed", flush=True)
done.set()
sender.join()
print("source stopped", flush=True)
from midi_bridge.runtime.backends import close_midi
for m in (src, src_in):
    close_midi(m)
print("sources closed", flush=True)
'''


@pytest.mark.jack
@pytest.mark.parametrize("which", ["bridge ports jack", "bridge ports jack-rtmidi", "bench/test driver"])
def test_closing_the_ports_while_midi_streams_in_neither_crashes_nor_hangs(jack_server, tmp_path, which):
    """RtMidi's JACK thread calls the input callback holding no GIL until it gets it; the
    ports used to cancel the callback (freeing what that thread is about to use: a crash)
    and close the JACK client (which cancels that thread while it waits for the GIL: a
    hang) with events still arriving.  Seen as exit status -11, or a bridge that never
    exits, after Ctrl-C while a DAW plays into it."""
    script = tmp_path / "close_while_streaming.py"
    bridge_ports = which.startswith("bridge ports")
    script.write_text(_CLOSE_WHILE_STREAMING if bridge_ports else _DRIVER_CLOSE_WHILE_STREAMING)
    failures = []
    for i in range(8):  # (the race was lost about one time in three before the fix)
        # (-X faulthandler: should it crash, the output names the thread and where)
        cmd = [sys.executable, "-X", "faulthandler", str(script), unique_client_name("mb-close")]
        if bridge_ports:
            cmd.append(which.rsplit(" ", 1)[1])  # the backend
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()  # (hung with the GIL lost: SIGTERM cannot reach its Python handler)
            out, _ = proc.communicate()
            failures.append(f"run {i}: hung\n{out}")
            continue
        if proc.returncode != 0 or "closed" not in out:
            failures.append(f"run {i}: exit {proc.returncode}\n{out[-2000:]}")
    assert not failures, "\n".join(failures)


# -- a generator stuck in native code when the bridge is told to stop ---------------------------

_STUCK_PLUGIN = '''
import time
from midi_bridge.plugin import Generator, Note


class Stuck(Generator):
    """Accompanies a fifth up; accompanying ``stall_pitch`` blocks in time.sleep (native
    code: the watchdog cannot cut it) for ``stall_s`` seconds (a deadlock, a dead socket)."""
    name = "stuck"
    modes = frozenset({"accompany"})
    default_config = {"stall_pitch": 61, "stall_s": 120.0}

    def observe(self, event):
        pass

    def accompany(self, event, context):
        if event.pitch == self.config["stall_pitch"]:
            time.sleep(float(self.config["stall_s"]))
        return [Note(event.pitch + 7, 90, start=0.0, duration=None)]
'''


@pytest.fixture
def stuck_plugin(tmp_path, monkeypatch):
    """The ``stuck`` generator, installed for child processes through PYTHONPATH (an
    entry point in a .dist-info next to the module: no pip, nothing left behind)."""
    site = tmp_path / "site"
    info = site / "mb_stuck-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "mb_stuck.py").write_text(_STUCK_PLUGIN)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mb-stuck\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[midi_bridge.generators]\nstuck = mb_stuck:Stuck\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(site), os.environ.get("PYTHONPATH")) if p))
    return "stuck"


@pytest.mark.jack
def test_sigterm_while_a_generator_is_stuck_in_native_code_exits(stuck_plugin, start_bridge, driver):
    """The engine thread cannot leave a plugin call blocked in C; the watchdog ends its
    notes.  SIGTERM (or Ctrl-C, or 'q') then used to wait for that call for ever: the
    bridge said 'stopping' and never exited.  It now gives up on the engine thread after
    a few seconds, says so, and exits with status 1."""
    bridge = start_bridge("--mode", "accompany", "--generator", stuck_plugin, "--no-tui")
    midi = driver(bridge)
    midi.note_on(60, 100, PLAYER_CH)
    midi.wait_for(lambda ms: note_ons(ms), timeout=5, what="the fifth over 60")
    midi.note_on(61, 100, PLAYER_CH)  # the plugin blocks
    midi.wait_for(lambda ms: any(m.is_cc(123) for m in ms), timeout=5,
                  what="the watchdog's CC123 (the plugin is stuck)")
    rc = bridge.terminate(signal.SIGTERM, timeout=20)
    assert rc == 1, bridge.output
    assert "did not stop" in bridge.output and "stuck" in bridge.output, bridge.output
    assert not unmatched_note_ons(midi.messages()), [m.data.hex() for m in midi.messages()]


# -- signals with notes sounding (regressions: these work) --------------------------------------

@pytest.mark.jack
def test_two_signals_mid_answer_end_every_note(start_bridge, driver):
    """Ctrl-C, then a SIGTERM right behind it (a service manager, an impatient user), while
    the shipped RNN is mid-answer: one clean stop, every note ended, CC123, exit 0."""
    bridge = start_bridge("--mode", "continue", "--generator", "rnn", "--no-tui")
    midi = driver(bridge)
    play_phrase(midi, [60, 62, 64, 65, 67, 69])
    midi.wait_for(lambda ms: note_ons(ms), timeout=10, what="an answer")
    bridge.proc.send_signal(signal.SIGINT)
    rc = bridge.terminate(signal.SIGTERM)
    assert rc == 0, bridge.output
    got = midi.wait_for(lambda ms: any(m.is_cc(123) and m.channel == OUT_CH for m in ms),
                        timeout=3, what="CC123")
    assert not unmatched_note_ons(got), [m.data.hex() for m in got]
    assert "Traceback" not in bridge.output, bridge.output


@pytest.mark.jack
def test_sigterm_while_a_swap_loads_ends_every_note(start_bridge, driver):
    """Program change to the RNN (seconds to construct, on the loader thread) with keys
    held, then SIGTERM before it is ready: the held keys' accompaniment is ended, the
    loader does not hold up the exit."""
    config = {**CONFIG, "control": {"order": ["harmony", "rnn"]}}
    bridge = start_bridge("--mode", "accompany", "--generator", "harmony", "--no-tui",
                          config=config)
    midi = driver(bridge)
    midi.note_on(60, 100, PLAYER_CH)
    midi.wait_for(lambda ms: note_ons(ms), timeout=5, what="accompaniment")
    midi.send(bytes([0xCF, 1]))  # program 2 on the control channel: rnn
    midi.note_on(64, 100, PLAYER_CH)
    rc = bridge.terminate(signal.SIGTERM)
    assert rc == 0, bridge.output
    got = midi.wait_for(lambda ms: any(m.is_cc(123) for m in ms), timeout=3, what="CC123")
    assert not unmatched_note_ons(got), [m.data.hex() for m in got]
    assert "Traceback" not in bridge.output, bridge.output
