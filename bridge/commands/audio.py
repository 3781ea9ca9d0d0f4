"""Audio for ``midi-bridge render --audio OUT.wav``: the rendered MIDI through FluidSynth.

Needs the ``fluidsynth`` program and a General MIDI SoundFont (``.sf2``).  The soundfont
is ``--soundfont FILE``, else ``$MIDI_BRIDGE_SOUNDFONT``, else the first of
:data:`SOUNDFONT_PATHS` that exists (where Debian/Ubuntu's ``fluid-soundfont-gm`` and
the usual Linux/Homebrew layouts put one).  The command is::

    fluidsynth -ni [-q] -F OUT.wav -T wav -r RATE SOUNDFONT IN.mid

(options first, then the soundfont, then the MIDI file; ``-n`` no MIDI input, ``-i`` no
shell, ``-F`` fast render into the file, ``-T`` its type; ``-q`` where this fluidsynth has
it — 2.x does, 1.1 does not).  Anything missing or failing raises :class:`AudioError`
with one line saying what and how to install it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ENV = "MIDI_BRIDGE_SOUNDFONT"
SOUNDFONT_PATHS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",       # Debian/Ubuntu fluid-soundfont-gm
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/default.sf2",           # Fedora, Arch
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/opt/homebrew/share/soundfonts/default.sf2",  # Homebrew (Apple silicon)
    "/usr/local/share/soundfonts/default.sf2",     # Homebrew (Intel), manual installs
    "/opt/homebrew/share/fluid-synth/sf2/VintageDreamsWaves-v2.sf2",
    "/usr/local/share/fluid-synth/sf2/VintageDreamsWaves-v2.sf2",
)


class AudioError(ValueError):
    """No fluidsynth, no soundfont, or a failed render; ``str()`` is one line with the fix."""


def _install_hint(what: str) -> str:
    if sys.platform == "darwin":
        if what == "fluidsynth":
            return "install it with 'brew install fluid-synth'"
        return ("download a General MIDI soundfont (e.g. FluidR3_GM.sf2 or GeneralUser GS) and "
                f"pass --soundfont FILE or set {ENV}")
    if what == "fluidsynth":
        return ("install it with 'sudo apt-get install fluidsynth fluid-soundfont-gm' "
                "(Debian/Ubuntu; macOS: 'brew install fluid-synth')")
    return ("install one with 'sudo apt-get install fluid-soundfont-gm' (Debian/Ubuntu), "
            f"or pass --soundfont FILE or set {ENV}")


def find_fluidsynth() -> str:
    """The ``fluidsynth`` executable on PATH, or AudioError saying how to install it."""
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise AudioError("audio needs the 'fluidsynth' program, which is not on PATH: "
                         + _install_hint("fluidsynth"))
    return exe


def find_soundfont(soundfont: str | os.PathLike | None = None) -> Path:
    """The soundfont to use: the given file, ``$MIDI_BRIDGE_SOUNDFONT``, or a common path."""
    if soundfont is not None:
        p = Path(soundfont).expanduser()
        if not p.is_file():
            raise AudioError(f"soundfont {p} not found (--soundfont takes a General MIDI .sf2 file)")
        return p
    env = os.environ.get(ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise AudioError(f"soundfont {p} (from ${ENV}) not found: set it to a General MIDI .sf2 file")
        return p
    for c in SOUNDFONT_PATHS:
        if os.path.isfile(c):
            return Path(c)
    raise AudioError("audio needs a General MIDI soundfont (.sf2) and none was found: "
                     + _install_hint("soundfont"))


def check(soundfont: str | os.PathLike | None = None) -> tuple[str, Path]:
    """``(fluidsynth, soundfont)`` or AudioError: call it before doing the work that needs them."""
    return find_fluidsynth(), find_soundfont(soundfont)


def _options(exe: str) -> set[str]:
    """The short options this fluidsynth's ``-h`` lists (best effort: empty if it fails)."""
    try:
        r = subprocess.run([exe, "-h"], capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return set()
    out = set()
    for line in (r.stdout + r.stderr).splitlines():
        s = line.strip()
        if len(s) >= 2 and s[0] == "-" and s[1].isalpha():
            out.add(s[:2])
    return out


def command(exe: str, soundfont: Path, midi_path: Path, wav_path: Path, sample_rate: int,
            options: set[str]) -> list[str]:
    """The fluidsynth command line: options, then the soundfont, then the MIDI file."""
    cmd = [exe, "-ni"]
    if "-q" in options:
        cmd.append("-q")
    cmd += ["-F", str(wav_path)]
    if "-T" in options:
        cmd += ["-T", "wav"]
    cmd += ["-r", str(int(sample_rate)), str(soundfont), str(midi_path)]
    return cmd


def render_audio(midi_path: str | os.PathLike, wav_path: str | os.PathLike,
                 soundfont: str | os.PathLike | None = None, sample_rate: int = 44100,
                 timeout: float | None = None) -> Path:
    """Render ``midi_path`` to ``wav_path`` with FluidSynth; returns the WAV's path.

    ``timeout`` defaults to a minute plus the file's length (fast rendering runs far
    faster than real time).  Raises :class:`AudioError` (one line) on any problem.
    """
    exe, sf2 = check(soundfont)
    midi_path, wav_path = Path(midi_path), Path(wav_path)
    if not midi_path.is_file():
        raise AudioError(f"MIDI file {midi_path} not found")
    if not 8000 <= int(sample_rate) <= 192000:
        raise AudioError(f"sample rate {sample_rate} out of range (8000-192000 Hz)")
    if timeout is None:
        timeout = 60.0
        try:
            import mido
            timeout += mido.MidiFile(str(midi_path)).length
        except Exception:  # noqa: BLE001 - only for the timeout; fluidsynth says what is wrong
            pass
    if wav_path.parent and not wav_path.parent.exists():
        raise AudioError(f"cannot write {wav_path}: directory {wav_path.parent} does not exist")
    try:
        wav_path.unlink()  # so a stale file is never taken for this render's output
    except FileNotFoundError:
        pass
    except OSError as e:
        raise AudioError(f"cannot write {wav_path}: {e.strerror or e}") from None
    cmd = command(exe, sf2, midi_path, wav_path, sample_rate, _options(exe))
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AudioError(f"fluidsynth did not finish rendering {midi_path} within {timeout:.0f} s") from None
    except OSError as e:
        raise AudioError(f"cannot run {exe}: {e.strerror or e}") from None
    if r.returncode != 0:
        raise AudioError(f"fluidsynth failed (exit {r.returncode}) rendering {midi_path} with {sf2}: "
                         + _last_line(r.stderr or r.stdout))
    try:
        with open(wav_path, "rb") as f:
            head = f.read(12)
    except OSError:
        raise AudioError(f"fluidsynth exited without writing {wav_path}: "
                         + _last_line(r.stderr or r.stdout)) from None
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise AudioError(f"fluidsynth wrote {wav_path} but not as WAV (a build without libsndfile "
                         "writes raw audio): install a fluidsynth built with libsndfile")
    return wav_path


def _last_line(text: str) -> str:
    lines = [s.strip() for s in (text or "").splitlines() if s.strip()]
    return lines[-1] if lines else "no message"
