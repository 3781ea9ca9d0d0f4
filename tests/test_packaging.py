"""The distribution as a user installs it: a wheel built from the repository, installed into
a fresh virtual environment, run from outside the source tree.

The fresh environment gets its dependencies (torch, mido, ...) from this test run's own
environment through a folder of links, so nothing is downloaded, and neither the
editable install of this checkout nor its distribution metadata is visible there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GENERATORS = {"markov", "harmony", "rnn", "gan"}


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(wheel, venv folder)``: the repository's wheel installed into a new venv."""
    if subprocess.run([sys.executable, "-c", "import setuptools"]).returncode != 0:
        pytest.fail("building the wheel needs setuptools in the test environment (the dev extra has it)")
    root = tmp_path_factory.mktemp("packaging")
    # A clean copy: setuptools packs whatever an earlier build left in build/lib.
    src = root / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "tests"))
    dist = root / "dist"
    done = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                 "-q", "-w", str(dist), str(src)], cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = dist.glob("midi_bridge-*.whl")

    env_dir = root / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=root).stdout.strip())
    # The dependencies, without this checkout's own (editable) midi_bridge.
    deps = root / "deps"
    deps.mkdir()
    ours = sysconfig.get_paths()["purelib"]
    for entry in Path(ours).iterdir():
        name = entry.name.lower()
        if name.startswith(("midi_bridge", "midi-bridge", "__editable__")) or name.endswith(".pth"):
            continue
        (deps / entry.name).symlink_to(entry)
    (purelib / "zz-test-deps.pth").write_text(f"{deps}\n")

    done = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                 "--no-index", "-q", str(wheel)], cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    return wheel, env_dir, purelib


def test_the_wheel_holds_one_import_package(installed):
    wheel, _, _ = installed
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/", 1)[0] for name in zf.namelist()}
    packages = {t for t in tops if not t.endswith((".dist-info", ".data"))}
    assert packages == {"midi_bridge"}, sorted(tops)


def test_site_packages_gets_exactly_midi_bridge(installed):
    _, _, purelib = installed
    entries = {p.name for p in purelib.iterdir()} - {"zz-test-deps.pth", "_virtualenv.py", "_virtualenv.pth"}
    packages = {e for e in entries if not e.endswith(".dist-info") and e != "__pycache__"}
    assert packages == {"midi_bridge"}, sorted(entries)
    assert (purelib / "midi_bridge" / "generators" / "rnn.py").is_file()
    assert not (purelib / "bridge").exists() and not (purelib / "plugins").exists()


def test_the_installed_commands_work_outside_the_source_tree(installed, tmp_path):
    _, env_dir, purelib = installed
    bin_dir = env_dir / "bin"
    done = _run([str(bin_dir / "midi-bridge"), "--help"], cwd=tmp_path)
    assert done.returncode == 0 and "usage: midi-bridge" in done.stdout, done.stdout + done.stderr
    done = _run([str(bin_dir / "python"), "-m", "midi_bridge", "--help"], cwd=tmp_path)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stdout + done.stderr

    done = _run([str(bin_dir / "midi-bridge"), "plugins", "--json"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    by_name = {row["name"]: row for row in json.loads(done.stdout)}
    assert set(by_name) == GENERATORS, sorted(by_name)
    for name in GENERATORS:
        row = by_name[name]
        assert row["status"] == "ok" and row["distribution"] == "midi-bridge", row
        assert row["entry_point"].startswith(f"midi_bridge.generators.{name}:"), row
    # The code that ran is the installed copy, not this checkout.
    done = _run([str(bin_dir / "python"), "-c", "import midi_bridge, midi_bridge.generators.rnn as r;"
                 "print(midi_bridge.__file__); print(r.__file__)"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for line in done.stdout.split():
        assert Path(line).is_relative_to(purelib), done.stdout


def test_the_installed_default_model_answers(installed, tmp_path):
    """The shipped checkpoints travel with the wheel (share/midi-bridge/models) and are found."""
    import mido

    _, env_dir, _ = installed
    mid = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    for pitch in (60, 62, 64, 65, 67, 65, 64, 62):
        track.append(mido.Message("note_on", note=pitch, velocity=80, time=0))
        track.append(mido.Message("note_off", note=pitch, velocity=0, time=240))
    track.append(mido.MetaMessage("end_of_track", time=480 * 8))
    mid.save(tmp_path / "in.mid")
    done = _run([str(env_dir / "bin" / "midi-bridge"), "render", "in.mid", "-o", "out.mid",
                 "--generator", "rnn", "--mode", "continue", "--json"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    notes = [m for m in mido.MidiFile(tmp_path / "out.mid") if m.type == "note_on" and m.velocity]
    assert len(notes) > 8, f"the rnn answered nothing from the installed copy: {done.stdout}"
