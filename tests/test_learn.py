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

from bridge import config as config_mod
from bridge.learn import LearnError, set_map_entry
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
    done = subprocess.run([sys.executable, "-m", "bridge", "learn", "volume", "--config", str(tmp_path / "c.yaml")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown action 'volume'" in done.stderr
    assert not (tmp_path / "c.yaml").exists()


@pytest.mark.jack
def test_learn_binds_the_knob_that_moves(jack_server, tmp_path):
    cfg = tmp_path / "live.yaml"
    cfg.write_text((REPO / "config.yaml").read_text())
    client = unique_client_name("mb-learn")
    proc = subprocess.Popen([sys.executable, "-m", "bridge", "learn", "temperature", "rate_bad",
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
