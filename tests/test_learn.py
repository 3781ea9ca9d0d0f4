"""midi-bridge learn: the config edit (comments kept) and MIDI learn through JACK."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from midi_bridge.commands import config as config_mod
from midi_bridge.commands.learn import LearnError, set_map_entry
from midiclient import MidiClient, unique_client_name

REPO = Path(__file__).resolve().parents[1]


def learned_map(text: str) -> dict:
    return config_mod.validate(yaml.safe_load(text))["control"]["map"]


def test_the_shipped_flow_map_is_edited_in_place_keeping_comments():
    text = (REPO / "config.yaml").read_text()
    out = set_map_entry(text, "temperature", "cc 21 ch 1")
    out = set_map_entry(out, "rate_good", "note 36 ch 10")
    out = set_map_entry(out, "temperature", "cc 22")
    assert learned_map(out) == {"temperature": ("cc", 22, None), "rate_good": ("note", 36, 9)}
    assert len(out.splitlines()) == len(text.splitlines())
    assert [ln for ln in out.splitlines() if "#" in ln and "map:" not in ln] == \
        [ln for ln in text.splitlines() if "#" in ln and "map:" not in ln]
    assert "midi-bridge learn writes it" in out


def test_a_block_map_gets_the_entry_replaced_or_added():
    text = "control:\n  channel: 16\n  map:\n    # knobs\n    density: \"cc 5\"\nlogging:\n  level: info\n"
    out = set_map_entry(set_map_entry(text, "density", "cc 6"), "panic", "note 1")
    assert learned_map(out) == {"density": ("cc", 6, None), "panic": ("note", 1, None)}
    assert "# knobs" in out and "level: info" in out


@pytest.mark.parametrize("text", ["", "logging:\n  level: info\n", "control:\n  channel: 16\n"])
def test_missing_sections_are_added(text):
    out = set_map_entry(text, "next", "cc 7")
    assert learned_map(out) == {"next": ("cc", 7, None)}


def test_an_unknown_action_is_refused(tmp_path):
    done = subprocess.run([sys.executable, "-m", "midi_bridge", "learn", "volume", "--config", str(tmp_path / "c.yaml")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown action 'volume'" in done.stderr
    assert not (tmp_path / "c.yaml").exists()


@pytest.mark.jack
def test_learn_binds_the_knob_that_moves(jack_server, tmp_path):
    cfg = tmp_path / "live.yaml"
    cfg.write_text((REPO / "config.yaml").read_text())
    client = unique_client_name("mb-learn")
    proc = subprocess.Popen([sys.executable, "-m", "midi_bridge", "learn", "temperature", "rate_bad",
                             "--backend", "jack", "--client-name", client, "--config", str(cfg),
                             "--timeout", "60"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    midi = None
    try:
        deadline = time.monotonic() + 60
        while not any("temperature: move" in ln for ln in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        midi = MidiClient("midi-bridge in", "midi-bridge out", client=client)
        for v in (10, 20, 30):                  # one knob gesture: many values, one binding
            midi.send([0xB2, 21, v])
            time.sleep(0.02)
        while not any("rate_bad: move" in ln for ln in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        midi.send([0xF8])                       # clock is not a control
        midi.send([0x99, 37, 100])
        assert proc.wait(30) == 0, "".join(lines)
    finally:
        if midi is not None:
            midi.close()
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
    assert config_mod.load(cfg)["control"]["map"] == {"temperature": ("cc", 21, 2), "rate_bad": ("note", 37, 9)}


# -- cmd_learn without a MIDI system: a fake port that plays a scripted controller ----------------

class _FakePorts:
    in_names = ["midi-bridge in"]

    def close(self) -> None:
        pass


def _learn(monkeypatch, tmp_path, text, actions, script, *, timeout=2.0):
    """Run cmd_learn on ``text`` with ``script(put)`` playing the controller in a thread."""
    import argparse
    from midi_bridge.commands import learn as learn_mod

    path = tmp_path / "c.yaml"
    if text is not None:
        path.write_text(text)
    stop = threading.Event()

    def open_ports(*a, **kw):
        put = a[6]
        threading.Thread(target=script, args=(put, stop), daemon=True).start()
        return _FakePorts()

    monkeypatch.setattr(learn_mod.ports_mod, "choose", lambda backend: "fake")
    monkeypatch.setattr(learn_mod.ports_mod, "open_ports", open_ports)
    args = argparse.Namespace(config=str(path), actions=actions, timeout=timeout, any_channel=False)
    cfg = config_mod.load(None)
    try:
        return learn_mod.cmd_learn(args, cfg), path
    finally:
        stop.set()


def test_a_running_midi_clock_does_not_hang_learn_after_the_first_control(monkeypatch, tmp_path):
    """The DAW sends clock to 'midi-bridge in' (the documented setup): the wait for the end
    of the first gesture must not last as long as the clock runs, nor eat the next control."""
    def controller(put, stop):
        t = time.perf_counter_ns
        for v in (10, 20, 30):               # the knob for 'temperature'
            put((t(), 0, [0xB0, 21, v]))
            time.sleep(0.01)
        time.sleep(0.6)
        put((t(), 0, [0x99, 37, 100]))       # the pad for 'rate_bad', clock running all along
        while not stop.is_set():
            put((t(), 0, [0xF8]))
            time.sleep(0.01)

    def clock_too(put, stop):
        threading.Thread(target=controller, args=(put, stop), daemon=True).start()
        while not stop.is_set():
            put((time.perf_counter_ns(), 0, [0xF8]))
            time.sleep(0.01)

    done: list = []
    th = threading.Thread(target=lambda: done.append(_learn(
        monkeypatch, tmp_path, "control:\n  map: {}\n", ["temperature", "rate_bad"], clock_too)), daemon=True)
    th.start()
    th.join(20)
    assert done, "learn never finished while MIDI clock was arriving"
    rc, path = done[0]
    assert rc == 0
    assert config_mod.load(path)["control"]["map"] == {"temperature": ("cc", 21, 0), "rate_bad": ("note", 37, 9)}


@pytest.mark.parametrize("text", [
    "control: {channel: 10, echo: false}\n",          # a flow mapping for the section
    '"control":\n  channel: 10\n',                     # a quoted key
])
def test_an_edit_that_would_drop_other_settings_is_refused(text):
    """Appending a second 'control:' section would silently replace the first one (YAML:
    the last duplicate key wins): the user's control channel would be gone."""
    with pytest.raises(LearnError) as e:
        set_map_entry(text, "temperature", "cc 21")
    assert "by hand" in str(e.value)


def test_a_replaced_block_entry_keeps_its_comment():
    text = 'control:\n  map:\n    temperature: "cc 1"   # the big knob\n    density: "cc 2"\n'
    out = set_map_entry(text, "temperature", "cc 21")
    assert learned_map(out) == {"temperature": ("cc", 21, None), "density": ("cc", 2, None)}
    assert "# the big knob" in out


def test_a_config_that_cannot_be_written_is_a_one_line_error_before_any_control_is_learned(
        monkeypatch, tmp_path):
    """--config in a directory that does not exist (or a read-only file): said at once,
    before the performer moves anything, not as a traceback after the last control."""
    def nothing(put, stop):
        pass

    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    import argparse
    from midi_bridge.commands import learn as learn_mod
    opened = []
    monkeypatch.setattr(learn_mod.ports_mod, "choose", lambda backend: "fake")
    monkeypatch.setattr(learn_mod.ports_mod, "open_ports", lambda *a, **kw: opened.append(1) or _FakePorts())
    args = argparse.Namespace(config=str(blocker / "c.yaml"), actions=["temperature"], timeout=0.2,
                              any_channel=False)
    with pytest.raises(LearnError) as e:
        learn_mod.cmd_learn(args, config_mod.load(None))
    assert str(blocker / "c.yaml") in str(e.value) and "\n" not in str(e.value)
    assert not opened, "the ports were opened (and the performer asked to move) before the check"


def test_a_failed_write_is_a_learn_error_not_a_traceback(monkeypatch, tmp_path):
    def knob(put, stop):
        put((time.perf_counter_ns(), 0, [0xB0, 21, 5]))

    def refuse(self, *a, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "write_text", refuse)
    with pytest.raises(LearnError) as e:
        _learn(monkeypatch, tmp_path, None, ["temperature"], knob)
    assert "Permission denied" in str(e.value) and "c.yaml" in str(e.value)


def test_the_config_is_replaced_atomically_keeping_its_mode(monkeypatch, tmp_path):
    """Written to a temporary file and renamed over the config: a crash mid-write leaves
    the old file whole (it was rewritten in place), with its permissions."""
    import os
    import stat

    def knob(put, stop):
        put((time.perf_counter_ns(), 0, [0xB0, 21, 5]))

    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (replaced.append((Path(a).name, Path(b).name)),
                                                     real_replace(a, b))[1])
    cfg = tmp_path / "c.yaml"
    cfg.write_text("engine:\n  bpm: 100   # mine\n")
    cfg.chmod(0o640)
    _learn(monkeypatch, tmp_path, cfg.read_text(), ["temperature"], knob)
    assert replaced == [(".c.yaml.learn-tmp", "c.yaml")]
    assert not (tmp_path / ".c.yaml.learn-tmp").exists()
    assert "temperature" in cfg.read_text() and "bpm: 100   # mine" in cfg.read_text()
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o640
