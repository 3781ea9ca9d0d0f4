"""End to end: a real ``midi-bridge run`` subprocess on the session's JACK server.

The player plays on MIDI channel 1 (mido 0); generated notes go out on channel 2 (mido 1).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from midiclient import MidiClient, Received, unique_client_name, unmatched_note_ons

REPO = Path(__file__).resolve().parents[1]
ECHO_PLUGIN = Path(__file__).parent / "fixtures" / "echo_plugin"
PLAYER_CH, OUT_CH = 0, 1
SILENCE_MS = 400
MAX_NOTES, MAX_BEATS, BPM = 8, 4, 120
CONFIG = {
    "engine": {"output_channel": OUT_CH + 1, "bpm": BPM},
    "phrase": {"silence_ms": SILENCE_MS, "min_notes": 2},
    "continuation": {"max_notes": MAX_NOTES, "max_beats": MAX_BEATS},
    "thru": {"enabled": False},
}


class Bridge:
    """``python -m midi_bridge run --backend jack ...`` with its merged stdout/stderr collected."""

    def __init__(self, args: list[str], config_path: Path) -> None:
        self.client = unique_client_name("mb-test-bridge")  # see unique_client_name
        self.cmd = [sys.executable, "-m", "midi_bridge", "run", "--backend", "jack",
                    "--client-name", self.client, "--config", str(config_path), "-v", *args]
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if "ready:" in line:
                self.ready.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                rc = self.proc.poll()
                self.stop()
                time.sleep(0.1)  # let the reader drain
                pytest.fail(f"bridge not ready ({'exit ' + str(rc) if rc is not None else 'timeout'}"
                            f"): {' '.join(self.cmd)}\n--- output ---\n{self.output}",
                            pytrace=False)

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"bridge ignored signal {sig} for {timeout} s\n{self.output}",
                        pytrace=False)

    def stop(self) -> None:
        """Teardown: SIGTERM and wait; SIGKILL only as a last resort."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def start_bridge(jack_server, tmp_path):
    """``start_bridge(*cli_args, config=...)`` -> a ready :class:`Bridge`; stopped after."""
    bridges: list[Bridge] = []

    def start(*args: str, config: dict | None = None) -> Bridge:
        path = tmp_path / f"config{len(bridges)}.yaml"
        path.write_text(yaml.safe_dump(CONFIG if config is None else config))
        bridge = Bridge(list(args), path)
        bridges.append(bridge)
        bridge.wait_ready()
        return bridge

    yield start
    for bridge in bridges:
        bridge.stop()
        print(f"--- {' '.join(bridge.cmd)} (exit {bridge.proc.returncode}) ---\n{bridge.output}")


@pytest.fixture
def driver(jack_server):
    """``driver(bridge)`` -> a :class:`MidiClient` wired to that bridge's ports."""
    clients: list[MidiClient] = []

    def connect(bridge: Bridge) -> MidiClient:
        clients.append(MidiClient("midi-bridge in", "midi-bridge out", client=bridge.client))
        return clients[-1]

    yield connect
    for client in clients:
        client.close()


def note_ons(messages: list[Received], channel: int | None = OUT_CH) -> list[Received]:
    return [m for m in messages if m.is_note_on and (channel is None or m.channel == channel)]


def play_phrase(midi: MidiClient, pitches: list[int], on_s: float = 0.12,
                gap_s: float = 0.04) -> int:
    """Play ``pitches`` on the player's channel; the perf_counter_ns of the last note-off."""
    return midi.play_phrase(pitches, PLAYER_CH, on_s, gap_s)


def plugins_json() -> dict[str, dict]:
    done = subprocess.run([sys.executable, "-m", "midi_bridge", "plugins", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    assert isinstance(listing, list)
    for entry in listing:
        assert {"name", "status", "distribution", "version"} <= set(entry), entry
    return {entry["name"]: entry for entry in listing}


# -- modes --------------------------------------------------------------------------------------

@pytest.mark.jack
def test_continue_mode_answers_after_the_silence(start_bridge, driver):
    bridge = start_bridge("--mode", "continue", "--generator", "markov")
    midi = driver(bridge)
    phrase_end = play_phrase(midi, [60, 62, 64, 65, 67, 69])
    got = midi.wait_for(lambda ms: note_ons(ms), timeout=10, what="a continuation")
    first = note_ons(got)[0]
    waited_ms = (first.t_ns - phrase_end) / 1e6
    assert waited_ms >= 0.5 * SILENCE_MS, f"answered {waited_ms:.0f} ms after the phrase"
    time.sleep(MAX_BEATS * 60 / BPM + 1.0)  # the whole answer has had time to play
    got = midi.wait_for(lambda ms: not unmatched_note_ons(ms), timeout=5,
                        what="note-offs for every generated note")
    assert 1 <= len(note_ons(got)) <= MAX_NOTES
    assert not note_ons(got, PLAYER_CH), "thru is disabled: the phrase must not be echoed"


@pytest.mark.jack
def test_accompany_mode_notes_follow_the_played_note(start_bridge, driver):
    bridge = start_bridge("--mode", "accompany", "--generator", "harmony")
    midi = driver(bridge)
    pressed = midi.note_on(60, 100, PLAYER_CH)
    got = midi.wait_for(lambda ms: note_ons(ms), timeout=3, what="accompaniment")
    latency_ms = (note_ons(got)[0].t_ns - pressed) / 1e6
    assert latency_ms < 500, f"accompaniment took {latency_ms:.0f} ms"
    time.sleep(0.3)
    assert unmatched_note_ons(midi.messages(), OUT_CH), "accompaniment sounds while held"
    midi.note_off(60, PLAYER_CH)
    midi.wait_for(lambda ms: not unmatched_note_ons(ms), timeout=3,
                  what="accompaniment to end with the played note")


@pytest.mark.jack
@pytest.mark.parametrize("mode, generator", [("continue", "gan"), ("accompany", "rnn")])
def test_the_shipped_networks_play_through_jack(start_bridge, driver, mode, generator):
    """The conditional GAN answers a phrase and the RNN harmonizer accompanies a held note,
    with their shipped checkpoints, and every note they start ends."""
    bridge = start_bridge("--mode", mode, "--generator", generator, "--no-tui")
    midi = driver(bridge)
    if mode == "continue":
        play_phrase(midi, [62, 64, 66, 67, 69, 71])
        midi.wait_for(lambda ms: note_ons(ms), timeout=10, what=f"a {generator} continuation")
        time.sleep(MAX_BEATS * 60 / BPM + 1.0)
    else:
        midi.note_on(67, 100, PLAYER_CH)
        midi.wait_for(lambda ms: note_ons(ms), timeout=5, what=f"{generator} accompaniment")
        time.sleep(0.3)
        midi.note_off(67, PLAYER_CH)
    got = midi.wait_for(lambda ms: not unmatched_note_ons(ms), timeout=5, what="every note to end")
    assert 1 <= len(note_ons(got)) <= (MAX_NOTES if mode == "continue" else 8)
    assert bridge.terminate(signal.SIGTERM) == 0, bridge.output
    assert "Traceback" not in bridge.output, bridge.output


@pytest.mark.jack
def test_thru_mode_passes_notes_unchanged(start_bridge, driver):
    bridge = start_bridge("--mode", "thru", config={**CONFIG, "thru": {"enabled": True, "channel": "same"}})
    midi = driver(bridge)
    sent = [bytes([0x90, 60, 100]), bytes([0x93, 64, 80]), bytes([0x80, 60, 0]),
            bytes([0x83, 64, 64]), bytes([0x9F, 127, 1]), bytes([0x8F, 127, 0])]
    for data in sent:
        midi.send(data)
        time.sleep(0.02)
    got = midi.wait_for(lambda ms: len([m for m in ms if m.kind in (0x80, 0x90)]) >= len(sent),
                        timeout=3, what="the notes played")
    time.sleep(0.2)
    assert [m.data for m in midi.messages() if m.kind in (0x80, 0x90)] == sent


@pytest.mark.jack
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_ends_sounding_notes_then_panics(start_bridge, driver, sig):
    """SIGTERM (a service manager, kill) and SIGHUP (the terminal was closed)."""
    bridge = start_bridge("--mode", "accompany", "--generator", "harmony")
    midi = driver(bridge)
    midi.note_on(60, 100, PLAYER_CH)
    midi.note_on(64, 100, PLAYER_CH)
    midi.wait_for(lambda ms: note_ons(ms), timeout=3, what="accompaniment")
    time.sleep(0.3)
    assert unmatched_note_ons(midi.messages()), "notes should be sounding before SIGTERM"
    rc = bridge.terminate(sig)
    assert rc == 0, bridge.output
    used = {m.channel for m in note_ons(midi.messages(), None)}
    got = midi.wait_for(lambda ms: all(any(m.is_cc(123) and m.channel == ch for m in ms)
                                       for ch in used),
                        timeout=3, what=f"CC123 on channels {sorted(used)}")
    assert not unmatched_note_ons(got), "every note-on must get its note-off"
    last_off = max(i for i, m in enumerate(got) if m.is_note_off)
    for ch in used:
        sustain_off = next(i for i, m in enumerate(got) if m.is_cc(64, 0) and m.channel == ch)
        all_off = next(i for i, m in enumerate(got) if m.is_cc(123) and m.channel == ch)
        assert last_off < sustain_off < all_off, (ch, [m.data.hex() for m in got])


@pytest.mark.jack
def test_record_holds_the_session_and_is_closed_on_sigterm(start_bridge, driver, tmp_path):
    """--record: the played and generated notes, per source, every note ended after SIGTERM."""
    import mido

    rec = tmp_path / "rec"
    bridge = start_bridge("--mode", "accompany", "--generator", "harmony", "--record", str(rec),
                          config={**CONFIG, "thru": {"enabled": True, "channel": 3}})
    midi = driver(bridge)
    midi.note_on(60, 100, PLAYER_CH)
    midi.note_on(64, 100, PLAYER_CH)
    midi.wait_for(lambda ms: note_ons(ms), timeout=3, what="accompaniment")
    time.sleep(0.2)
    assert bridge.terminate(signal.SIGTERM) == 0, bridge.output   # keys still held
    files = sorted(rec.glob("session-*.mid"))
    assert len(files) == 1, (files, bridge.output)
    tracks = {t.name: t for t in mido.MidiFile(files[0]).tracks}
    assert {"input", "out: harmony", "out: thru"} <= set(tracks), sorted(tracks)
    played = [m.note for m in tracks["input"] if m.type == "note_on" and m.velocity]
    assert played == [60, 64]
    for name in ("out: harmony", "out: thru"):
        sounding = set()
        for m in tracks[name]:
            if m.type == "note_on" and m.velocity:
                sounding.add((m.channel, m.note))
            elif m.type in ("note_off", "note_on"):
                sounding.discard((m.channel, m.note))
        assert not sounding, f"{name}: notes left sounding in the recording: {sounding}"
    assert any(m.type == "note_on" and m.velocity for m in tracks["out: harmony"])


@pytest.mark.jack
def test_a_pad_rates_the_last_answer_into_the_ratings_file(start_bridge, driver, tmp_path):
    from midi_bridge.stage.ratings import load_ratings

    ratings = tmp_path / "ratings.jsonl"
    bridge = start_bridge("--mode", "continue", "--generator", "rnn", "--no-tui", config={
        **CONFIG, "control": {"map": {"rate_good": "note 36 ch 10", "rate_bad": "note 37 ch 10"}},
        "record": {"ratings": str(ratings)}})
    midi = driver(bridge)
    play_phrase(midi, [60, 62, 64, 65, 67])
    midi.wait_for(lambda ms: note_ons(ms), timeout=10, what="an answer")
    time.sleep(MAX_BEATS * 60 / BPM + 0.5)
    midi.send(bytes([0x99, 36, 100]))
    midi.send(bytes([0x89, 36, 0]))
    deadline = time.monotonic() + 5
    while not ratings.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert bridge.terminate(signal.SIGTERM) == 0, bridge.output
    (r,) = load_ratings(ratings)
    assert r["rating"] == 1 and r["generator"] == "rnn"
    assert [p[0] for p in r["phrase"]] == [60, 62, 64, 65, 67]
    assert 1 <= len(r["answer"]) <= MAX_NOTES
    assert r["context"]["checkpoint"] == "melody.pt" and r["context"]["state"], r["context"].keys()
    assert not note_ons(midi.messages(), 9), "the pad is not played"


# -- plugins --------------------------------------------------------------------------------------

def test_builtin_generators_load():
    listing = plugins_json()
    for name in ("markov", "harmony", "rnn", "gan"):
        assert listing.get(name, {}).get("status") == "ok", listing.get(name)


@pytest.fixture(scope="module")
def echo_plugin(tmp_path_factory):
    """Install the fixture distribution into this interpreter's environment, then remove it."""
    src = tmp_path_factory.mktemp("echo") / "echo_plugin"
    shutil.copytree(ECHO_PLUGIN, src)  # building writes into the source tree
    pip = [sys.executable, "-m", "pip"]
    flags = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    try:
        subprocess.run([*pip, "install", "-q", "--no-deps", *flags, str(src)],
                       check=True, timeout=300)
        yield "echo"
    finally:
        subprocess.run([*pip, "uninstall", "-q", "-y", "mb-echo-plugin"], timeout=120)


def test_external_plugin_is_listed(echo_plugin):
    entry = plugins_json().get(echo_plugin)
    assert entry is not None, "the echo entry point is not listed"
    assert entry["status"] == "ok", entry
    assert entry["distribution"] == "mb-echo-plugin" and entry["version"] == "0.1.0", entry


@pytest.mark.jack
def test_external_plugin_accompanies(echo_plugin, start_bridge, driver):
    bridge = start_bridge("--mode", "accompany", "--generator", echo_plugin)
    midi = driver(bridge)
    midi.note_on(60, 90, PLAYER_CH)
    got = midi.wait_for(lambda ms: note_ons(ms), timeout=3, what="the echo")
    assert [(m.data[1], m.data[2]) for m in note_ons(got)] == [(72, 90)]
    midi.note_off(60, PLAYER_CH)
    midi.wait_for(lambda ms: not unmatched_note_ons(ms), timeout=3, what="the echo to end")


@pytest.mark.jack
def test_external_plugin_continues(echo_plugin, start_bridge, driver):
    bridge = start_bridge("--mode", "continue", "--generator", echo_plugin)
    midi = driver(bridge)
    play_phrase(midi, [60, 62, 64])
    got = midi.wait_for(lambda ms: len(note_ons(ms)) >= 3, timeout=10, what="the echoed phrase")
    assert [m.data[1] for m in note_ons(got)][:3] == [72, 74, 76]
    midi.wait_for(lambda ms: not unmatched_note_ons(ms), timeout=5, what="note-offs")


@pytest.mark.jack
def test_a_plugin_stuck_in_native_code_has_its_sounding_notes_ended(echo_plugin, start_bridge, driver):
    """The watchdog cannot cut a plugin blocked in C (time.sleep here); while it is stuck the
    engine thread sends nothing.  The watchdog ends the sounding notes itself, well before
    the plugin returns, and the bridge plays on afterwards."""
    config = {**CONFIG, "generators": {"echo": {"stall_pitch": 61, "stall_s": 4.0}}}
    bridge = start_bridge("--mode", "accompany", "--generator", echo_plugin, config=config)
    midi = driver(bridge)
    midi.note_on(60, 90, PLAYER_CH)
    midi.wait_for(lambda ms: note_ons(ms), timeout=3, what="the echo of 60")
    t0 = time.monotonic()
    midi.note_on(61, 90, PLAYER_CH)   # the plugin blocks for 4 s in accompany
    got = midi.wait_for(lambda ms: any(m.is_note_off and m.data[1] == 72 for m in ms)
                        and any(m.is_cc(123) and m.channel == OUT_CH for m in ms),
                        timeout=3.5, what="the watchdog's note-off for 72 and CC123")
    assert time.monotonic() - t0 < 3.5  # (the plugin is still asleep)
    assert not unmatched_note_ons(got)
    assert "stuck" in bridge.output and "echo" in bridge.output
    midi.note_off(60, PLAYER_CH)
    midi.note_off(61, PLAYER_CH)
    time.sleep(4.5)                   # the plugin returns; the bridge goes on
    n = len(midi.messages())
    midi.note_on(64, 90, PLAYER_CH)
    midi.wait_for(lambda ms: any(m.is_note_on and m.data[1] == 76 for m in ms[n:]), timeout=3,
                  what="the echo of 64 after the stall")
    midi.note_off(64, PLAYER_CH)
    midi.wait_for(lambda ms: not unmatched_note_ons(ms), timeout=3, what="every note ended")


# -- measured from outside ------------------------------------------------------------------------

LATENCY_TEST = shutil.which("jack_midi_latency_test")


def jack_ports(client: str) -> dict[str, str]:
    """The full JACK names of the bridge's ports, {"in": ..., "out": ...} (jack_lsp): on
    clients named ``client`` (python-rtmidi's JACK opens one client per port, its name
    starting with ``client``)."""
    listing = subprocess.run(["jack_lsp"], capture_output=True, text=True, timeout=10).stdout
    ports = [p for p in listing.splitlines() if p.startswith(client)]
    found = {}
    for port in ports:
        short = port.split(":", 1)[1]
        if short.endswith(" in") or short == "in":
            found["in"] = port
        elif short.endswith(" out") or short == "out":
            found["out"] = port
    assert set(found) == {"in", "out"}, f"ports of {client}: {ports}"
    return found


@pytest.mark.jack
@pytest.mark.skipif(LATENCY_TEST is None or shutil.which("jack_lsp") is None,
                    reason="jackd2's example clients (jack_midi_latency_test, jack_lsp) are not installed")
def test_jack_midi_latency_test_measures_the_bridge_in_thru(start_bridge):
    """jackd2's own latency tester through ``--mode thru``: its first message is a note-off
    for a note never started (0x80 0 0), then a note-on, and so on; each one must come
    back.  The tester answers every message it gets with one equal to the one before it,
    a feedback loop by construction, so the feedback guard is off here
    (``input.feedback_window_ms: 0``).  A repeated note-on of a key still sounding is
    preceded by a note-off (the bridge never sends two note-ons of one key without one):
    the tester counts those as unexpected, and only those."""
    samples = 100
    config = {**CONFIG, "input": {"feedback_window_ms": 0}}
    bridge = start_bridge("--mode", "thru", "--no-tui", config=config)
    ports = jack_ports(bridge.client)
    for attempt in range(5):
        done = subprocess.run([LATENCY_TEST, "-s", str(samples), "-t", "5", ports["in"], ports["out"]],
                              capture_output=True, text=True, timeout=120)
        out = done.stdout + done.stderr
        # A cycle the server skipped under load (an xrun) can lose a message before it
        # reaches the bridge's input: that attempt says nothing about the bridge.
        if done.returncode == 0 or "Xruns:" not in out:
            break
        print(f"--- attempt {attempt + 1}: the server had xruns ---\n{out}")
    assert done.returncode == 0, out
    assert "Average latency:" in out, out
    assert f"Messages sent: {samples}\n" in out and f"Messages received: {samples}\n" in out, out
    unexpected = re.search(r"Unexpected messages received: (\d+)", out)
    assert unexpected is None or int(unexpected.group(1)) <= samples // 2, out
    assert bridge.terminate(signal.SIGTERM) == 0, bridge.output
    assert "Traceback" not in bridge.output, bridge.output
