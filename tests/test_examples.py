"""The example plugin package in examples/midi-bridge-arpeggiator: installed as a user would
(a copy, ``pip install`` into this environment, removed afterwards, as the echo plugin in
test_integration_jack.py is), listed by ``midi-bridge plugins``, played through
``midi-bridge render`` and, on the session's JACK server, through a live ``midi-bridge run``;
and its own tests pass."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import mido
import pytest
import yaml

from midi_bridge.plugin import Context, PlayedEvent
from midiclient import MidiClient, unique_client_name, unmatched_note_ons

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "midi-bridge-arpeggiator"
DIST, NAME = "midi-bridge-arpeggiator", "arpeggiator"
TPB = 480      # ticks per beat of the files written here; 120 bpm
STEP = TPB // 4  # the arpeggiator's default step: a sixteenth
RENDER_CONFIG = {"engine": {"output_channel": 1}, "thru": {"enabled": False},
                 "phrase": {"silence_ms": 600, "min_notes": 2},
                 "continuation": {"max_notes": 16, "max_beats": 8}}


@pytest.fixture(scope="module")
def arpeggiator(tmp_path_factory):
    """Install the example distribution into this interpreter's environment, then remove it."""
    src = tmp_path_factory.mktemp("example") / EXAMPLE.name
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    pip = [sys.executable, "-m", "pip"]
    flags = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    try:
        subprocess.run([*pip, "install", "-q", "--no-deps", *flags, str(src)],
                       check=True, timeout=300)
        yield src
    finally:
        subprocess.run([*pip, "uninstall", "-q", "-y", DIST], timeout=120)


def bridge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "midi_bridge", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"midi-bridge {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def write_notes(path: Path, notes: list[tuple[int, int, int]], tail_beats: int = 4) -> None:
    """``(start tick, length in ticks, pitch)`` on channel 1 at 120 bpm."""
    events = sorted([(t, 1, p) for t, _, p in notes] + [(t + n, 0, p) for t, n, p in notes])
    mf = mido.MidiFile(type=1, ticks_per_beat=TPB)
    tr = mido.MidiTrack()
    tr.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(120), time=0))
    now = 0
    for t, is_on, p in events:
        tr.append(mido.Message("note_on" if is_on else "note_off", note=p,
                               velocity=100 if is_on else 0, time=t - now))
        now = t
    tr.append(mido.MetaMessage("end_of_track", time=tail_beats * TPB))
    mf.tracks.append(tr)
    mf.save(str(path))


def notes_of(track) -> list[tuple[int, str, int]]:
    """(absolute tick, 'on'/'off', pitch)."""
    out, t = [], 0
    for msg in track:
        t += msg.time
        if msg.type == "note_on" and msg.velocity > 0:
            out.append((t, "on", msg.note))
        elif msg.type == "note_off" or (msg.type == "note_on" and msg.velocity == 0):
            out.append((t, "off", msg.note))
    return out


def all_ended(events) -> bool:
    sounding: dict[int, int] = {}
    for _, kind, p in events:
        sounding[p] = sounding.get(p, 0) + (1 if kind == "on" else -1 if sounding.get(p) else 0)
    return not any(sounding.values())


def render(tmp: Path, mode: str, notes: list[tuple[int, int, int]]) -> list[tuple[int, str, int]]:
    src, dst, cfg = tmp / f"{mode}-in.mid", tmp / f"{mode}-out.mid", tmp / "render.yaml"
    write_notes(src, notes)
    cfg.write_text(yaml.safe_dump(RENDER_CONFIG))
    done = bridge("render", str(src), "-o", str(dst), "--config", str(cfg), "--generator", NAME,
                  "--mode", mode, "--json", "-q", cwd=tmp)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["generator"] == NAME and summary["mode"] == mode
    assert summary["plugin_errors"] == 0 and summary["bad_notes"] == 0, summary
    out = mido.MidiFile(str(dst))
    assert [next(m.name for m in tr if m.type == "track_name") for tr in out.tracks] == \
        ["input", f"bridge output ({NAME})"]
    return notes_of(out.tracks[1])


def near(a: int, b: int) -> bool:
    return abs(a - b) <= 1  # nanoseconds to ticks rounds


def test_the_example_is_listed_by_plugins_json(arpeggiator):
    listing = {e["name"]: e for e in json.loads(bridge("plugins", "--json", cwd=REPO).stdout)}
    entry = listing.get(NAME)
    assert entry is not None, f"'{NAME}' is not listed: {sorted(listing)}"
    assert entry["status"] == "ok" and entry["error"] is None, entry
    assert entry["distribution"] == DIST and entry["version"] == "0.1.0", entry
    assert entry["modes"] == ["continue", "accompany"]
    assert entry["entry_point"] == "midi_bridge_arpeggiator:ArpeggiatorGenerator"


def test_render_accompany_arpeggiates_each_held_note(arpeggiator, tmp_path):
    # C, F and G held for a beat each, a beat apart: each gets its triad, an octave below,
    # in sixteenths (up and down: root third fifth third), ended when the key is released
    played = [(0, TPB, 60), (2 * TPB, TPB, 65), (4 * TPB, TPB, 67)]
    gen = render(tmp_path, "accompany", played)
    assert gen, "no accompaniment was generated"
    assert all_ended(gen)
    expected = {60: [48, 52, 55, 52], 65: [53, 57, 60, 57], 67: [55, 59, 62, 59]}
    for start, length, pitch in played:
        ons = [(t, p) for t, kind, p in gen if kind == "on" and start - 1 <= t < start + length]
        assert [p for _, p in ons] == expected[pitch], (pitch, ons)
        assert all(near(t, start + i * STEP) for i, (t, _) in enumerate(ons)), ons
        # every arpeggio note that started while the key was down has ended by its release
        for t_on, p in ons:
            t_off = next(t for t, kind, q in gen if kind == "off" and q == p and t > t_on)
            assert t_off <= start + length + 1, (pitch, t_on, p, t_off)


def test_render_continue_arpeggiates_the_phrase_s_last_notes(arpeggiator, tmp_path):
    # eighth notes C D E F G C' G E, then silence: the answer arpeggiates E G C'
    pitches = [60, 62, 64, 65, 67, 72, 67, 64]
    gen = render(tmp_path, "continue", [(i * TPB // 2, 200, p) for i, p in enumerate(pitches)])
    ons = [(t, p) for t, kind, p in gen if kind == "on"]
    assert ons, "no continuation was generated"
    assert all_ended(gen)
    assert [p for _, p in ons[:4]] == [64, 67, 72, 67]
    assert {p for _, p in ons} == {64, 67, 72}
    assert len(ons) == 16                            # continuation.max_notes
    assert all(near(t - ons[0][0], i * STEP) for i, (t, _) in enumerate(ons))


def test_the_example_s_own_tests_pass(arpeggiator):
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                          cwd=arpeggiator, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout


def _python_blocks(doc: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", doc.read_text(encoding="utf-8"), re.S | re.M)


def _looped_phrase() -> tuple[PlayedEvent, ...]:
    """Eighths at 120 bpm; under MIDI clock the DAW loops from beat 16 back to 0 after the
    second note, so ``beat`` goes 15.0, 15.5, 0.0, 0.5 while ``seconds`` goes on."""
    return tuple(PlayedEvent(True, p, 100, 0, beat=b, seconds=10 + i * 0.25)
                 for i, (p, b) in enumerate(zip([60, 62, 64, 65], [15.0, 15.5, 0.0, 0.5])))


def test_the_plugin_guide_s_example_and_its_tests_work(tmp_path):
    """docs/plugins.md's my_echo.py, with the guide's own unit tests, as a reader copies them."""
    blocks = _python_blocks(REPO / "docs" / "plugins.md")
    module = next(b for b in blocks if b.startswith("# my_echo.py"))
    tests = next(b for b in blocks if "from my_echo import" in b)
    (tmp_path / "my_echo.py").write_text(module)
    (tmp_path / "test_my_echo.py").write_text(tests)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_echo.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout, done.stdout


@pytest.mark.parametrize("where", ["docs/plugins.md", "tests/fixtures/echo_plugin/mb_echo_plugin.py"])
def test_the_echo_examples_keep_the_rhythm_when_the_daw_loops_mid_phrase(where, tmp_path):
    """Before: start = ev.beat - phrase[0].beat went negative after the loop; the engine
    skips such notes (bad_notes), so the answer lost the phrase's end."""
    path = REPO / where
    code = (next(b for b in _python_blocks(path) if b.startswith("# my_echo.py")) if path.suffix == ".md"
            else path.read_text(encoding="utf-8"))
    namespace: dict = {"__name__": "echo_example"}
    exec(compile(code, str(path), "exec"), namespace)
    cls = namespace["EchoGenerator"]
    notes = list(cls({}).continuation(Context(120.0, 1.0, max_notes=16, max_beats=8,
                                              phrase=_looped_phrase())))
    assert [n.pitch for n in notes] == [72, 74, 76, 77]
    assert [n.start for n in notes] == pytest.approx([0.0, 0.5, 1.0, 1.5])
    from midi_bridge.runtime.discovery import contract_problem
    assert contract_problem(cls) == ""                   # and it passes the checks at load


@pytest.mark.jack
def test_live_accompany_plays_the_arpeggio_while_the_key_is_held(arpeggiator, jack_server, tmp_path):
    """A real ``midi-bridge run`` on the session's JACK server, with the installed plugin."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"engine": {"output_channel": 2, "bpm": 120},
                                      "thru": {"enabled": False}}))
    client = unique_client_name("mb-test-arp")
    cmd = [sys.executable, "-m", "midi_bridge", "run", "--backend", "jack", "--client-name", client,
           "--config", str(config), "--generator", NAME, "--mode", "accompany", "-v"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)})
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "ready:" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    midi = None
    try:
        deadline = time.monotonic() + 60
        while not ready.wait(0.05):
            assert proc.poll() is None and time.monotonic() < deadline, \
                f"bridge not ready: {' '.join(cmd)}\n{''.join(lines)}"
        midi = MidiClient("midi-bridge in", "midi-bridge out", client=client)
        midi.note_on(60, 100, 0)
        got = midi.wait_for(lambda ms: len([m for m in ms if m.is_note_on]) >= 4, timeout=5,
                            what="four arpeggio notes")
        midi.note_off(60, 0)
        got = midi.wait_for(lambda ms: not unmatched_note_ons(ms), timeout=5,
                            what="the arpeggio to end with the key")
        ons = [m for m in got if m.is_note_on]
        assert {m.channel for m in ons} == {1}                     # engine.output_channel 2
        assert [m.data[1] for m in ons[:4]] == [48, 52, 55, 52]    # C E G E, an octave below
        gaps = [(b.t_ns - a.t_ns) / 1e6 for a, b in zip(ons[1:], ons[2:4])]
        assert all(100 < g < 150 for g in gaps), gaps              # sixteenths at 120 bpm: 125 ms
    finally:
        if midi is not None:
            midi.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        print(f"--- {' '.join(cmd)} (exit {proc.returncode}) ---\n{''.join(lines)}")
