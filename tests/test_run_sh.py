"""``./run.sh`` runs the bridge, or ``doctor`` / ``plugins`` / ``ports``; the no-backend
error names a doctor command that works from where the user is."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from midi_bridge.runtime import backends

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_backend(monkeypatch):
    monkeypatch.setattr(backends, "probe", lambda name: "cannot connect")
    monkeypatch.delenv("MIDI_BRIDGE_LAUNCHER", raising=False)


@pytest.mark.parametrize("launcher, argv0, says", [
    ("./run.sh", "/x/.venv/bin/midi-bridge", "'./run.sh doctor'"),
    ("../bridge/run.sh", ".venv/bin/midi-bridge", "'../bridge/run.sh doctor'"),
    ("run.sh", ".venv/bin/midi-bridge", "'./run.sh doctor'"),         # bash run.sh
    (None, ".venv/bin/midi-bridge", "'.venv/bin/midi-bridge doctor'"),
    (None, "/opt/mb/bin/midi-bridge", "'/opt/mb/bin/midi-bridge doctor'"),
    (None, "midi-bridge", "'midi-bridge doctor'"),
    (None, "/x/midi_bridge/__main__.py", "'python -m midi_bridge doctor'"),
])
def test_the_no_backend_error_names_a_doctor_command_that_works_from_here(
        no_backend, monkeypatch, launcher, argv0, says):
    if launcher is not None:
        monkeypatch.setenv("MIDI_BRIDGE_LAUNCHER", launcher)
    monkeypatch.setattr("sys.argv", [argv0, "run"])
    with pytest.raises(backends.BackendError) as err:
        backends.choose("auto")
    assert f"Run {says} for details." in str(err.value)
    assert "cannot connect" in str(err.value)


@pytest.fixture
def fake_tree(tmp_path):
    """run.sh beside a setup that installs nothing and a midi-bridge that prints its
    arguments (and how run.sh was called): run.sh's dispatch without a reinstall."""
    root = tmp_path / "mb"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "run.sh", root / "run.sh")
    (root / "scripts" / "setup.sh").write_text(
        'MB_VENV="$(pwd)/.venv"\nmb_setup_venv() { :; }\n')
    exe = root / ".venv" / "bin" / "midi-bridge"
    exe.parent.mkdir(parents=True)
    exe.write_text('#!/usr/bin/env bash\necho "args: $* | launcher: $MIDI_BRIDGE_LAUNCHER | cwd: $PWD"\n')
    exe.chmod(0o755)
    return root


@pytest.mark.parametrize("args, runs", [
    ([], "args: run |"),
    (["--mode", "thru"], "args: run --mode thru |"),
    (["--help"], "args: run --help |"),
    (["doctor", "--json"], "args: doctor --json |"),
    (["plugins"], "args: plugins |"),
    (["ports"], "args: ports |"),
])
def test_run_sh_runs_the_bridge_or_the_command_named(fake_tree, args, runs):
    done = subprocess.run(["bash", str(fake_tree / "run.sh"), *args], cwd=fake_tree.parent,
                          capture_output=True, text=True, timeout=30,
                          env={k: v for k, v in os.environ.items() if k != "MIDI_BRIDGE_LAUNCHER"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(runs), done.stdout
    assert f"launcher: {fake_tree / 'run.sh'} |" in done.stdout
    assert done.stdout.strip().endswith(f"cwd: {fake_tree}")     # run.sh runs from its folder


def test_doctor_json_runs_as_run_sh_would(tmp_path):
    """The command run.sh hands ``doctor`` to answers (the real one, no setup)."""
    exe = REPO / ".venv" / "bin" / "midi-bridge"
    if not exe.exists():
        pytest.skip("no .venv/bin/midi-bridge")
    done = subprocess.run([str(exe), "doctor", "--json"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.lstrip().startswith(("{", "[")), done.stdout + done.stderr
