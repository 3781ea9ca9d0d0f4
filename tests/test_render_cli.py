"""``midi-bridge render`` and the other commands that need no MIDI system."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import mido
import pytest

from midi_bridge.commands import cli
from midi_bridge.commands.config import validate
from midi_bridge.commands.render import RenderError, read_events, render

ROOT = Path(__file__).resolve().parents[1]
TPB = 480           # ticks per beat; at 120 bpm a beat is 500 ms
SILENCE_TICKS = 576  # phrase.silence_ms 600 at 120 bpm


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Run in an empty directory (no ./config.yaml: built-in defaults) and restore logging,
    which the CLI reconfigures."""
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def write_phrase(path: Path, pitches=(60, 62, 64, 65, 67, 65, 64, 62, 60, 64, 67, 72),
                 pause_beats: int = 8, bpm: int = 120) -> None:
    """A phrase of eighth notes (each held for 200 ticks), then a pause of ``pause_beats``."""
    mf = mido.MidiFile(type=1, ticks_per_beat=TPB)
    tr = mido.MidiTrack()
    tr.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm), time=0))
    for i, p in enumerate(pitches):
        tr.append(mido.Message("note_on", note=p, velocity=90, time=0 if i == 0 else 40))
        tr.append(mido.Message("note_off", note=p, velocity=0, time=200))
    tr.append(mido.MetaMessage("end_of_track", time=pause_beats * TPB))
    mf.tracks.append(tr)
    mf.save(str(path))


def notes_of(track) -> list[tuple[int, str, int, int]]:
    """(absolute tick, 'on'/'off', channel, pitch) of a track's notes."""
    out, t = [], 0
    for msg in track:
        t += msg.time
        if msg.type == "note_on" and msg.velocity > 0:
            out.append((t, "on", msg.channel, msg.note))
        elif msg.type == "note_off" or (msg.type == "note_on" and msg.velocity == 0):
            out.append((t, "off", msg.channel, msg.note))
    return out


def all_matched(events) -> bool:
    sounding: dict = {}
    for _, kind, ch, p in events:
        key = (ch, p)
        if kind == "on":
            if sounding.get(key):
                return False
            sounding[key] = 1
        elif sounding.get(key):
            sounding[key] = 0
    return not any(sounding.values())


def test_render_continue_with_markov(tmp_path, capsys):
    src, dst = tmp_path / "in.mid", tmp_path / "out.mid"
    write_phrase(src)
    rc = cli.main(["render", str(src), "-o", str(dst), "--generator", "markov", "--mode", "continue"])
    assert rc == 0
    assert "wrote" in capsys.readouterr().out
    out = mido.MidiFile(str(dst))
    assert len(out.tracks) == 2
    names = [next(m.name for m in tr if m.type == "track_name") for tr in out.tracks]
    assert names == ["input", "bridge output (markov)"]
    played = notes_of(mido.MidiFile(str(src)).tracks[0])
    assert notes_of(out.tracks[0]) == played, "the input track is not the input"
    last_off = max(t for t, kind, _, _ in played if kind == "off")
    gen = notes_of(out.tracks[1])
    ons = [t for t, kind, _, _ in gen if kind == "on"]
    assert ons, "no continuation was generated"
    assert min(ons) == last_off + SILENCE_TICKS   # the answer starts after the silence
    assert len(ons) <= 16                          # continuation.max_notes
    assert max(t for t, _, _, _ in gen) <= last_off + SILENCE_TICKS + 8 * TPB + 1  # max_beats
    assert {ch for _, _, ch, _ in gen} == {0}
    assert all_matched(gen)


def test_render_accompany_with_harmony(tmp_path):
    src, dst = tmp_path / "in.mid", tmp_path / "out.mid"
    write_phrase(src)
    rc = cli.main(["render", str(src), "-o", str(dst), "--generator", "harmony",
                   "--mode", "accompany", "--json", "-q"])
    assert rc == 0
    out = mido.MidiFile(str(dst))
    played = notes_of(out.tracks[0])
    gen = notes_of(out.tracks[1])
    assert gen
    played_on = {t for t, k, _, _ in played if k == "on"}
    played_off = {t for t, k, _, _ in played if k == "off"}
    assert {t for t, k, _, _ in gen if k == "on"} == played_on   # every played note accompanied
    assert {t for t, k, _, _ in gen if k == "off"} <= played_off  # and ended with it
    assert all_matched(gen)
    # chord tones sound under the played note
    for t in played_on:
        top = next(p for tt, k, _, p in played if tt == t and k == "on")
        assert all(p < top for tt, k, _, p in gen if tt == t and k == "on")


def test_render_json_summary(tmp_path, capsys):
    src, dst = tmp_path / "in.mid", tmp_path / "out.mid"
    write_phrase(src, pitches=(60, 64, 67))
    rc = cli.main(["render", str(src), "-o", str(dst), "--generator", "harmony",
                   "--mode", "accompany", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["input_events"] == 6
    assert summary["generator"] == "harmony" and summary["mode"] == "accompany"
    assert summary["bpm"] == pytest.approx(120)
    assert summary["plugin_errors"] == 0


def test_render_thru_reproduces_the_input(tmp_path):
    src, dst = tmp_path / "in.mid", tmp_path / "out.mid"
    write_phrase(src)
    assert cli.main(["render", str(src), "-o", str(dst), "--mode", "thru"]) == 0
    out = mido.MidiFile(str(dst))
    # the output also ends with the stop's CC64/CC123; the notes are the input's
    assert notes_of(out.tracks[1]) == notes_of(out.tracks[0])


def test_render_follows_the_file_tempo(tmp_path):
    src, dst = tmp_path / "in.mid", tmp_path / "out.mid"
    write_phrase(src, bpm=60)
    events, bpm = read_events(src)
    assert bpm == pytest.approx(60)
    assert events[1][0] == round(200 / TPB * 1e9)  # 200 ticks at 60 bpm: 416.67 ms
    summary = render(src, dst, validate({"engine": {"mode": "accompany", "generator": "harmony"}}))
    assert summary["bpm"] == pytest.approx(60)


def test_render_a_missing_file_exits_2(tmp_path, capsys):
    rc = cli.main(["render", str(tmp_path / "nope.mid"), "-o", str(tmp_path / "o.mid")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "cannot read MIDI file" in err and "nope.mid" in err
    assert not (tmp_path / "o.mid").exists()


@pytest.mark.parametrize("content", [b"this is not a MIDI file at all\n", b"", b"MThd\x00\x00\x00\x06\x00"])
def test_render_a_garbage_file_exits_2(tmp_path, capsys, content):
    src = tmp_path / "garbage.mid"
    src.write_bytes(content)
    rc = cli.main(["render", str(src), "-o", str(tmp_path / "o.mid")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "cannot read MIDI file" in err and "garbage.mid" in err


def test_read_events_raises_render_error_for_garbage(tmp_path):
    src = tmp_path / "g.mid"
    src.write_bytes(b"\x00" * 64)
    with pytest.raises(RenderError):
        read_events(src)


def test_render_with_an_unknown_generator_exits_2(tmp_path, capsys):
    src = tmp_path / "in.mid"
    write_phrase(src)
    rc = cli.main(["render", str(src), "-o", str(tmp_path / "o.mid"), "--generator", "nosuch"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no generator named 'nosuch'" in err and "markov" in err


def test_render_with_a_generator_that_lacks_the_mode_exits_2(tmp_path, capsys):
    src = tmp_path / "in.mid"
    write_phrase(src)
    rc = cli.main(["render", str(src), "-o", str(tmp_path / "o.mid"), "--generator", "harmony",
                   "--mode", "continue"])
    assert rc == 2
    assert "does not support mode 'continue'" in capsys.readouterr().err


def test_plugins_json_lists_markov_and_harmony_ok(capsys):
    assert cli.main(["plugins", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["markov"]["status"] == "ok" and listed["markov"]["modes"] == ["continue"]
    assert listed["harmony"]["status"] == "ok" and listed["harmony"]["modes"] == ["accompany"]
    for name in ("markov", "harmony"):
        assert listed[name]["distribution"] == "midi-bridge"
        assert listed[name]["version"]
        assert listed[name]["error"] is None


def test_plugins_text_listing(capsys):
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("markov") and " ok " in line for line in out.splitlines())


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "render" in capsys.readouterr().out


needs_no_alsa = pytest.mark.skipif(os.path.exists("/dev/snd/seq"),
                                   reason="this machine has an ALSA sequencer")


@needs_no_alsa
def test_run_on_alsa_without_a_sequencer_exits_2_and_says_what_to_do(capsys):
    rc = cli.main(["run", "--backend", "alsa"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "ALSA sequencer" in err
    assert "Traceback" not in err


@needs_no_alsa
def test_run_on_alsa_as_a_process_exits_2_without_a_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "midi_bridge", "run", "--backend", "alsa"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "ALSA sequencer" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_truncated_file_says_why_it_cannot_be_read(tmp_path):
    """mido raises EOFError with no text for a file that ends early: the message must still
    give a reason, not end in a bare colon."""
    src = tmp_path / "in.mid"
    write_phrase(src)
    src.write_bytes(src.read_bytes()[:40])
    with pytest.raises(RenderError) as e:
        read_events(src)
    reason = str(e.value).split("in.mid:", 1)[1].strip()
    assert reason, f"no reason given: {e.value}"


def test_an_smpte_timed_file_is_refused_with_a_message_not_a_traceback(tmp_path, capsys):
    """A Standard MIDI File may count time in SMPTE frames (negative division); mido reads
    it as negative ticks per beat, the times go negative and writing the output crashed."""
    src = tmp_path / "smpte.mid"
    write_phrase(src)
    data = bytearray(src.read_bytes())
    data[12:14] = bytes([0xE7, 0x28])  # division: -25 fps, 40 ticks per frame
    src.write_bytes(bytes(data))
    rc = cli.main(["render", str(src), "-o", str(tmp_path / "o.mid")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "smpte.mid" in err and "SMPTE" in err
