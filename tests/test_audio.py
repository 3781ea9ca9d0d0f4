"""``midi-bridge render --audio``: FluidSynth found and called the right way, or a one-line
message saying how to install what is missing (bridge/commands/audio.py)."""

from __future__ import annotations

import array
import json
import logging
import shutil
import sys
import textwrap
import wave
from pathlib import Path

import mido
import pytest

from midi_bridge.commands import audio, cli
from midi_bridge.commands.audio import AudioError, render_audio

TPB = 480

FAKE = textwrap.dedent("""\
    #!{python}
    # A stand-in for fluidsynth: logs its argv, writes a short WAV where -F says.
    import json, os, sys, wave
    mode = os.environ.get("FAKE_FS_MODE", "ok")
    if sys.argv[1:] == ["-h"]:
        print("Usage:\\n  fluidsynth [options] [soundfonts] [midifiles]\\nPossible options:")
        print(" -F, --fast-render=[file]\\n -i, --no-shell\\n -n, --no-midi-in\\n -r, --sample-rate")
        if mode != "old":
            print(" -q, --quiet\\n    Do not print welcome message\\n -T, --audio-file-type")
        sys.exit(0)
    with open(os.environ["FAKE_FS_LOG"], "a") as f:
        f.write(json.dumps(sys.argv) + "\\n")
    if mode == "fail":
        print("fluidsynth: error: Not a SoundFont or MIDI file or error occurred identifying it", file=sys.stderr)
        sys.exit(3)
    out = sys.argv[sys.argv.index("-F") + 1]
    if mode == "raw":
        open(out, "wb").write(bytes(4096))
        sys.exit(0)
    if mode == "nofile":
        sys.exit(0)
    rate = int(sys.argv[sys.argv.index("-r") + 1])
    with wave.open(out, "wb") as w:
        w.setnchannels(2); w.setsampwidth(2); w.setframerate(rate)
        w.writeframes(bytes(4 * rate // 10))
""")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """An empty working directory, no soundfont from the environment, logging restored."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(audio.ENV, raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fake fluidsynth alone on PATH, a fake soundfont; returns (log file, soundfont)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "fluidsynth"
    exe.write_text(FAKE.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    log = tmp_path / "argv.jsonl"
    monkeypatch.setenv("FAKE_FS_LOG", str(log))
    sf2 = tmp_path / "GM.sf2"
    sf2.write_bytes(b"RIFF\0\0\0\0sfbk")
    return log, sf2


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def write_phrase(path: Path) -> None:
    mf = mido.MidiFile(type=1, ticks_per_beat=TPB)
    tr = mido.MidiTrack()
    tr.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(120), time=0))
    for i, p in enumerate((60, 64, 67, 72)):
        tr.append(mido.Message("note_on", note=p, velocity=100, time=0 if i == 0 else 40))
        tr.append(mido.Message("note_off", note=p, velocity=0, time=200))
    mf.tracks.append(tr)
    mf.save(str(path))


def test_without_fluidsynth_render_audio_exits_2_saying_how_to_install_it(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(sys, "platform", "linux")
    src, dst = tmp_path / "in.mid", tmp_path / "out.mid"
    write_phrase(src)
    rc = cli.main(["render", str(src), "-o", str(dst), "--mode", "thru", "--audio", str(tmp_path / "o.wav")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("midi-bridge: ") and "\n" not in err and "Traceback" not in err
    assert "fluidsynth" in err and "apt-get install fluidsynth" in err and "brew install fluid-synth" in err
    assert not dst.exists(), "the missing tool is reported before any work"


def test_without_a_soundfont_the_message_says_where_to_get_one(tmp_path, monkeypatch, fake, capsys):
    monkeypatch.setattr(audio, "SOUNDFONT_PATHS", (str(tmp_path / "nowhere.sf2"),))
    monkeypatch.setattr(sys, "platform", "linux")
    src = tmp_path / "in.mid"
    write_phrase(src)
    rc = cli.main(["render", str(src), "-o", str(tmp_path / "o.mid"), "--mode", "thru",
                   "--audio", str(tmp_path / "o.wav")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "soundfont" in err and "apt-get install fluid-soundfont-gm" in err and "--soundfont FILE" in err
    assert audio.ENV in err
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(AudioError) as e:
        audio.find_soundfont()
    assert "--soundfont FILE" in str(e.value) and "apt-get" not in str(e.value)


def test_a_named_soundfont_that_does_not_exist_is_reported(tmp_path, monkeypatch, fake, capsys):
    src = tmp_path / "in.mid"
    write_phrase(src)
    rc = cli.main(["render", str(src), "-o", str(tmp_path / "o.mid"), "--mode", "thru",
                   "--audio", str(tmp_path / "o.wav"), "--soundfont", str(tmp_path / "missing.sf2")])
    assert rc == 2
    assert "missing.sf2" in capsys.readouterr().err
    monkeypatch.setenv(audio.ENV, str(tmp_path / "env.sf2"))
    with pytest.raises(AudioError) as e:
        audio.find_soundfont()
    assert "env.sf2" in str(e.value) and audio.ENV in str(e.value)


def test_the_soundfont_search_order(tmp_path, monkeypatch, fake):
    _, sf2 = fake
    other = tmp_path / "other.sf2"
    other.write_bytes(b"x")
    monkeypatch.setattr(audio, "SOUNDFONT_PATHS", (str(tmp_path / "no.sf2"), str(other)))
    assert audio.find_soundfont() == other
    monkeypatch.setenv(audio.ENV, str(sf2))
    assert audio.find_soundfont() == sf2
    assert audio.find_soundfont(other) == other


def test_render_audio_calls_fluidsynth_with_options_then_soundfont_then_midi(tmp_path, fake, capsys):
    log, sf2 = fake
    src, mid, wav = tmp_path / "in.mid", tmp_path / "out.mid", tmp_path / "out.wav"
    write_phrase(src)
    rc = cli.main(["render", str(src), "-o", str(mid), "--mode", "thru", "--audio", str(wav),
                   "--soundfont", str(sf2)])
    assert rc == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"wrote {wav}" in out
    (argv,) = calls(log)
    assert Path(argv[0]).name == "fluidsynth"
    assert argv[1:] == ["-ni", "-q", "-F", str(wav), "-T", "wav", "-r", "44100", str(sf2), str(mid)]
    with wave.open(str(wav)) as w:
        assert w.getframerate() == 44100 and w.getnframes() > 0


def test_an_old_fluidsynth_gets_no_quiet_flag_and_the_rate_is_passed(tmp_path, monkeypatch, fake):
    log, sf2 = fake
    monkeypatch.setenv("FAKE_FS_MODE", "old")
    mid, wav = tmp_path / "in.mid", tmp_path / "x.wav"
    write_phrase(mid)
    assert render_audio(mid, wav, soundfont=sf2, sample_rate=22050) == wav
    (argv,) = calls(log)
    assert argv[1:] == ["-ni", "-F", str(wav), "-r", "22050", str(sf2), str(mid)]
    with wave.open(str(wav)) as w:
        assert w.getframerate() == 22050


@pytest.mark.parametrize("mode, words", [("fail", ["exit 3", "Not a SoundFont"]),
                                         ("raw", ["not as WAV", "libsndfile"]),
                                         ("nofile", ["without writing"])])
def test_a_failed_render_is_one_line_naming_why(tmp_path, monkeypatch, fake, mode, words):
    _, sf2 = fake
    monkeypatch.setenv("FAKE_FS_MODE", mode)
    mid, wav = tmp_path / "in.mid", tmp_path / "x.wav"
    write_phrase(mid)
    wav.write_bytes(b"RIFF....WAVE stale output of an earlier render")
    with pytest.raises(AudioError) as e:
        render_audio(mid, wav, soundfont=sf2)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def _real_soundfont() -> Path | None:
    try:
        return audio.find_soundfont()
    except AudioError:
        return None


@pytest.mark.skipif(shutil.which("fluidsynth") is None or _real_soundfont() is None,
                    reason="fluidsynth or a GM soundfont is not installed "
                           "(apt-get install fluidsynth fluid-soundfont-gm)")
def test_real_fluidsynth_renders_audible_audio(tmp_path, capsys):
    src, mid, wav = tmp_path / "in.mid", tmp_path / "out.mid", tmp_path / "out.wav"
    write_phrase(src)
    rc = cli.main(["render", str(src), "-o", str(mid), "--generator", "harmony", "--mode", "accompany",
                   "--audio", str(wav), "--json", "-q"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["audio"] == str(wav)
    with wave.open(str(wav)) as w:
        assert w.getframerate() == 44100 and w.getsampwidth() == 2
        frames = w.getnframes()
        samples = array.array("h", w.readframes(frames))
    assert frames >= 44100 * 0.9  # the phrase is 0.96 s long (plus the release tail)
    assert max(abs(s) for s in samples) > 500, "the rendered audio is silent"


def test_a_soundfont_under_home_written_with_a_tilde_is_found(tmp_path, monkeypatch, fake):
    """--soundfont=~/sf2/GM.sf2 (the shell does not expand ~ after '=') or
    MIDI_BRIDGE_SOUNDFONT="~/sf2/GM.sf2" (quoted in a profile) name the file in $HOME."""
    home = tmp_path / "home"
    (home / "sf2").mkdir(parents=True)
    sf2 = home / "sf2" / "GM.sf2"
    sf2.write_bytes(b"RIFF\0\0\0\0sfbk")
    monkeypatch.setenv("HOME", str(home))
    assert audio.find_soundfont("~/sf2/GM.sf2") == sf2
    monkeypatch.setenv(audio.ENV, "~/sf2/GM.sf2")
    assert audio.find_soundfont() == sf2


@pytest.mark.parametrize("target", ["out", "in"])
def test_audio_written_over_a_midi_file_is_refused_before_any_work(tmp_path, fake, capsys, target):
    """`render -o x.mid --audio x.mid` (a slip): the MIDI file would be rendered, then
    overwritten (or the input lost) and FluidSynth's error would be misleading."""
    src, dst = tmp_path / "in.mid", tmp_path / "out.mid"
    write_phrase(src)
    before = src.read_bytes()
    rc = cli.main(["render", str(src), "-o", str(dst), "--mode", "thru", "--audio", str(tmp_path / f"{target}.mid")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "is the MIDI file itself" in err and "out.wav" in err
    assert not dst.exists() and src.read_bytes() == before
