"""Live: eight chords played through JACK into ``midi-bridge run`` with the polyphonic
``rnn`` model in continue mode are answered with chords (simultaneous onsets)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from test_integration_jack import CONFIG, PLAYER_CH, note_ons, start_bridge  # noqa: F401
from midiclient import MidiClient, unmatched_note_ons

REPO = Path(__file__).resolve().parents[1]
# the shipped model, or another polyphonic checkpoint named by MIDI_BRIDGE_POLY_CHECKPOINT
POLY = Path(os.environ.get("MIDI_BRIDGE_POLY_CHECKPOINT") or REPO / "models" / "poly.pt")
CHORDS = [(72, 67, 64, 60), (74, 69, 65, 62), (71, 67, 62, 55), (72, 67, 64, 48),
          (69, 64, 60, 57), (74, 69, 65, 50), (74, 67, 65, 59), (72, 67, 64, 48)]
SIMULTANEOUS_NS = 15_000_000  # note-ons this close together start one onset


def onsets(msgs) -> list[list[int]]:
    groups: list[list] = []
    for m in sorted(msgs, key=lambda m: m.t_ns):
        if groups and m.t_ns - groups[-1][0] <= SIMULTANEOUS_NS:
            groups[-1][1].append(m.data[1])
        else:
            groups.append([m.t_ns, [m.data[1]]])
    return [g[1] for g in groups]


@pytest.fixture
def any_driver(jack_server):
    """A driver wired to the one bridge on the test server, whichever JACK client its
    output port is on (the bridge may give its output a client of its own)."""
    clients = []
    yield lambda: clients.append(MidiClient("midi-bridge in", "midi-bridge out")) or clients[-1]
    for c in clients:
        c.close()


@pytest.mark.jack
@pytest.mark.skipif(not POLY.exists(), reason=f"{POLY} does not exist")
def test_eight_chords_are_answered_with_chords(start_bridge, any_driver):  # noqa: F811
    config = {**CONFIG, "continuation": {"max_notes": 32, "max_beats": 8},
              "generators": {"rnn": {"checkpoint": str(POLY), "seed": 3, "device": "cpu"}}}
    bridge = start_bridge("--mode", "continue", "--generator", "rnn", "--no-tui", config=config)
    midi = any_driver()
    for chord in CHORDS:
        for p in chord:
            midi.note_on(p, 90, PLAYER_CH)
        time.sleep(0.4)
        for p in chord:
            midi.note_off(p, PLAYER_CH)
        time.sleep(0.1)
    midi.wait_for(lambda ms: note_ons(ms), timeout=10, what="an rnn continuation")
    time.sleep(8 * 60 / 120 + 1.0)  # the whole answer (8 beats at 120 bpm)
    got = midi.wait_for(lambda ms: not unmatched_note_ons(ms), timeout=5, what="every note to end")
    groups = onsets(note_ons(got))
    chords = [g for g in groups if len(g) >= 2]
    print(f"answer onsets: {groups}")
    assert len(chords) >= 4, f"answer onsets: {groups}\n{bridge.output}"
    assert "Traceback" not in bridge.output, bridge.output
