"""End to end with a DAW-like MIDI clock: a real ``midi-bridge run`` on the session's JACK server.

The driver (tests/midiclient.py) plays the DAW: Start, 0xF8 at 24 ppqn at a known tempo
from a thread on an absolute schedule, Stop, Song Position Pointer + Continue, and a
player's phrases on channel 1 (mido 0); the bridge answers on channel 2 (mido 1).
Answers must start on the DAW's beats: the beat grid is counted from the send time of
the first clock after Start (or after Continue, at the song position).  An answer note
may arrive late by one JACK period + 1 ms (the target) plus the driver's own arrival
quantisation (one more period): the bridge sees the clock a period late at most, and the
driver sees the note at a period boundary.  The bridge compensates by sending answer
notes one period early (``output.offset_ms: auto``), so a note may also come up to a
period + 1 ms before its beat.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time

import pytest
import yaml

from midi_bridge.runtime import jack
from midiclient import MidiClient, Received, unmatched_note_ons
from test_integration_jack import Bridge

PLAYER, OUT = 0, 1
BPM = 120.0
BEAT_NS = 60e9 / BPM
CLOCK, START, CONTINUE, STOP, SPP = 0xF8, 0xFA, 0xFB, 0xFC, 0xF2
FOLLOWING = re.compile(r"clock: following MIDI clock at ([\d.]+) bpm")


def period_ns(server: str) -> float:
    period, rate = jack.settings(server)
    return (period or 256) / (rate or 48000) * 1e9


class ClockSource:
    """0xF8 at 24 ppqn from its own thread; :meth:`transport` sends Start/Stop/SPP/Continue.

    The MidiClient's sends are serialised with a lock from here on (rtmidi's JACK output
    is not safe for two writers).
    """

    def __init__(self, midi: MidiClient, bpm: float = BPM) -> None:
        self.midi, self.tick_ns = midi, 60e9 / (bpm * 24)
        self._cv = threading.Condition()
        send = midi.send

        def locked(data):
            with self._cv:
                return send(data)
        midi.send = locked
        self._boxes: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="daw-clock", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        t0, k = time.perf_counter_ns() + 5_000_000, 0
        while not self._stop.is_set():
            left = t0 + round(k * self.tick_ns) - time.perf_counter_ns()
            if left > 0:
                time.sleep(left / 1e9)
            with self._cv:
                t = self.midi.send([CLOCK])
                for box in self._boxes:
                    box["t"] = t
                self._boxes.clear()
                self._cv.notify_all()
            k += 1

    def transport(self, *messages: list[int]) -> int:
        """Send ``messages`` now; returns the send time of the first clock after them."""
        box: dict = {}
        with self._cv:
            for m in messages:
                self.midi.send(m)
            self._boxes.append(box)
            assert self._cv.wait_for(lambda: "t" in box, timeout=2.0), "the clock thread stalled"
        return box["t"]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)


@pytest.fixture
def daw(jack_server, tmp_path):
    """``daw(config) -> (bridge, midi, clock)``: a ready bridge, a driver and a running clock."""
    made: list = []

    def start(config: dict, *args: str):
        path = tmp_path / f"config{len(made)}.yaml"
        path.write_text(yaml.safe_dump(config))
        bridge = Bridge(["--mode", "continue", "--generator", "markov", *args], path)
        made.append(bridge)
        bridge.wait_ready()
        midi = MidiClient("midi-bridge in", "midi-bridge out", client=bridge.client)
        made.append(midi)
        clock = ClockSource(midi)
        made.append(clock)
        return bridge, midi, clock

    yield start
    for thing in reversed(made):
        if isinstance(thing, Bridge):
            thing.stop()
            print(f"--- {' '.join(thing.cmd)} (exit {thing.proc.returncode}) ---\n{thing.output}")
        else:
            thing.close()


def config(**continuation) -> dict:
    return {"engine": {"output_channel": OUT + 1, "bpm": 90},  # internal tempo != the DAW's
            "thru": {"enabled": False}, "clock": {"follow": True},
            "phrase": {"silence_ms": 300, "min_notes": 2},
            "continuation": {"max_notes": 3, "max_beats": 1, "start_on": "beat", **continuation}}


def wait_following(bridge: Bridge, timeout: float = 5.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = FOLLOWING.search(bridge.output)
        if m:
            return float(m.group(1))
        time.sleep(0.02)
    pytest.fail(f"the bridge never logged that it follows the clock:\n{bridge.output}", pytrace=False)


def play(midi: MidiClient, pitches: list[int], on_s: float = 0.08, gap_s: float = 0.04) -> int:
    """Play a phrase; returns the send time of its last note-off."""
    return midi.play_phrase(pitches, PLAYER, on_s, gap_s)


def out_ons(messages: list[Received], after_ns: int = 0) -> list[Received]:
    return [m for m in messages if m.is_note_on and m.channel == OUT and m.t_ns > after_ns]


def answer_over(quiet_ns: int = 300_000_000):
    def pred(ms: list[Received]) -> bool:
        mine = [m for m in ms if m.channel == OUT]
        return (bool(out_ons(mine)) and not unmatched_note_ons(mine)
                and time.perf_counter_ns() - mine[-1].t_ns > quiet_ns)
    return pred


def first_note_error_ms(midi: MidiClient, grid_origin: int, pitches: list[int]) -> float:
    """Play a phrase, wait for the whole answer; its first note's lateness after the nearest
    beat of the DAW's grid (``grid_origin`` is a beat), in ms."""
    start = len(midi.messages())
    end = play(midi, pitches)
    got = midi.wait_for(lambda ms: answer_over()(ms[start:]), timeout=5, what="a whole answer")
    first = out_ons(got[start:], end)[0]
    e = first.t_ns - grid_origin
    return (e - round(e / BEAT_NS) * BEAT_NS) / 1e6


@pytest.mark.jack
def test_logged_tempo_is_within_half_a_percent_of_the_clock(daw):
    bridge, midi, clock = daw(config())
    clock.transport([START])
    time.sleep(2 * BEAT_NS / 1e9 + 0.1)  # two beats
    bpm = wait_following(bridge)
    assert abs(bpm / BPM - 1) <= 0.005, f"logged {bpm} bpm for a {BPM} bpm clock"


@pytest.mark.jack
def test_answers_start_on_the_daws_beats_through_stop_spp_continue_and_start(daw, jack_server):
    bridge, midi, clock = daw(config())
    tolerance_ms = 2 * period_ns(jack_server) / 1e6 + 1.0
    origin = clock.transport([START])
    wait_following(bridge)
    time.sleep(2 * BEAT_NS / 1e9)
    errors = {"start": [first_note_error_ms(midi, origin, [60 + i, 64, 67]) for i in range(3)]}

    # Stop, then Song Position Pointer to 16th 10 (beat 2.5) and Continue: the first clock
    # after Continue is at beat 2.5, so the beats fall half a beat after it.
    clock.transport([STOP])
    time.sleep(0.3)
    resumed = clock.transport([SPP, 10, 0], [CONTINUE])
    errors["spp"] = [first_note_error_ms(midi, resumed - round(2.5 * BEAT_NS), [62 + i, 65, 69])
                     for i in range(2)]
    assert re.search(r"transport: continue at beat 2\.5\d", bridge.output), bridge.output

    # Stop and Start: from the top again.
    clock.transport([STOP])
    time.sleep(0.3)
    restarted = clock.transport([START])
    errors["restart"] = [first_note_error_ms(midi, restarted, [59, 62, 67])]

    # output.offset_ms is auto: notes are sent one period early, so they may also land up
    # to a period (+ 1 ms) before the beat.
    early_ms = -(period_ns(jack_server) / 1e6 + 1.0)
    print(f"answer first-note lateness after the beat (ms): {errors}; tolerance {early_ms:.2f}..{tolerance_ms:.2f}")
    for what, errs in errors.items():
        for err in errs:
            assert early_ms <= err <= tolerance_ms, (what, errors)


@pytest.mark.jack
def test_stop_silences_everything(daw):
    bridge, midi, clock = daw(config(max_notes=16, max_beats=8))
    clock.transport([START])
    wait_following(bridge)
    start = len(midi.messages())
    end = play(midi, [60, 62, 64, 65, 67], on_s=0.3, gap_s=0.02)  # long notes: long answers
    midi.wait_for(lambda ms: len(out_ons(ms[start:], end)) >= 2 and unmatched_note_ons(
        [m for m in ms[start:] if m.t_ns > end], OUT), timeout=6, what="a second answer note sounding")
    stopped = midi.send([STOP])
    sounding = unmatched_note_ons([m for m in midi.messages()[start:] if m.t_ns > end], OUT)
    got = midi.wait_for(lambda ms: any(m.is_cc(123) and m.channel == OUT and m.t_ns > stopped
                                       for m in ms[start:]), timeout=3, what="CC123 after Stop")
    time.sleep(1.5)  # the answer (8 beats) would have gone on playing
    got = midi.messages()[start:]
    mine = [m for m in got if m.channel == OUT and m.t_ns > end]
    print("around Stop (ms after it, message):",
          [(round((m.t_ns - stopped) / 1e6, 2), m.data.hex()) for m in mine if m.t_ns > stopped - 50e6],
          "sounding at Stop:", [m.data.hex() for m in sounding])
    assert not unmatched_note_ons(mine), "every note-on must get its note-off"
    if sounding:
        ends = [m for m in mine if m.is_note_off and m.t_ns > stopped
                and m.data[1] in {s.data[1] for s in sounding}]
        assert ends and ends[0].t_ns - stopped < 100e6, "Stop ends the sounding notes at once"
    last_off = max(i for i, m in enumerate(mine) if m.is_note_off)
    sustain = next(i for i, m in enumerate(mine) if m.is_cc(64, 0) and m.t_ns > stopped)
    all_off = next(i for i, m in enumerate(mine) if m.is_cc(123) and m.t_ns > stopped)
    assert last_off < sustain < all_off, [m.data.hex() for m in mine]
    assert not [m for m in mine[all_off:] if m.is_note_on], "nothing plays after Stop"
    assert "transport: stop" in bridge.output


def test_logged_tempo_is_the_settled_estimate(caplog):
    """Simulated time, no JACK: a 120 bpm clock arriving on JACK period boundaries.

    The engine logs the tempo once the estimate has two beats of clocks behind it (it
    once logged after 12 clocks, up to 1.4 % off).
    """
    from helpers import Melody, Rig

    period_ms = 256 / 48000 * 1e3
    tick_ms = 60e3 / (BPM * 24)
    worst = 0.0
    for phase in (0.0, 1.0, 2.5, 4.0):  # where the first clock falls in a period, ms
        rig = Rig(plugins={"m": Melody})
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="midi_bridge"):
            rig.send(0.0, START)
            for k in range(3 * 24):  # three beats
                rig.send(math.ceil((phase + k * tick_ms) / period_ms) * period_ms + 1.0, CLOCK)
        logged = [float(m.group(1)) for m in map(FOLLOWING.search, caplog.messages) if m]
        assert logged, caplog.messages
        assert abs(rig.engine.bpm(rig.clock.t) / BPM - 1) <= 0.005  # the follower itself is fine
        worst = max(worst, abs(logged[0] / BPM - 1))
    assert worst <= 0.005, f"the logged tempo is {worst:.2%} off a steady {BPM} bpm clock"
