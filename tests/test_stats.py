"""The status numbers: latency percentiles over a sliding window, and the engine snapshot."""

from __future__ import annotations

import pytest

from midi_bridge.stage.stats import LatencyWindow, Snapshot, phrase_state, snapshot
from helpers import MS, Both, Intervals, Melody, Rig

S = 1_000_000_000


# -- LatencyWindow -----------------------------------------------------------------------------

def test_percentiles_of_known_data():
    w = LatencyWindow(window_s=60)
    for i in range(1, 101):  # 1 .. 100 ms, one sample per 10 ms
        w.add(i * 10 * MS, i * MS)
    p50, p99, n = w.percentiles(2 * S)
    assert (p50, p99, n) == (50.0, 99.0, 100)


def test_percentiles_are_nearest_rank_and_order_independent():
    w = LatencyWindow(window_s=60)
    for lat_ms in (9, 1, 5, 3, 7):
        w.add(S, lat_ms * MS)
    assert w.percentiles(2 * S) == (5.0, 9.0, 5)  # median of 5; p99 of few is the maximum


def test_no_samples():
    w = LatencyWindow(window_s=60)
    assert w.percentiles(10 * S) == (None, None, 0)


def test_old_samples_leave_the_window():
    w = LatencyWindow(window_s=60)
    w.add(0, 100 * MS)            # at t = 0 s: slow
    w.add(30 * S, 100 * MS)       # at t = 30 s: slow
    for i in range(10):           # at t = 70 s: fast
        w.add(70 * S + i, 1 * MS)
    assert w.percentiles(70 * S) == (1.0, 100.0, 11)  # t = 0 s is more than 60 s ago
    assert w.percentiles(95 * S) == (1.0, 1.0, 10)    # and now t = 30 s too
    assert w.percentiles(200 * S) == (None, None, 0)
    assert w.total == 12


def test_ring_wraps_around_keeping_the_newest():
    w = LatencyWindow(window_s=60, capacity=8)
    for i in range(20):
        w.add(S + i, i * MS)  # latencies 0 .. 19 ms; only 12 .. 19 fit
    assert sorted(v // MS for v in w.samples(2 * S)) == list(range(12, 20))
    p50, p99, n = w.percentiles(2 * S)
    assert (p50, p99, n) == (15.0, 19.0, 8)


def test_partially_filled_ring_ignores_unused_slots():
    w = LatencyWindow(window_s=60, capacity=8)
    w.add(0, 5 * MS)  # stamped at t = 0 like the unused slots
    assert w.percentiles(0) == (5.0, 5.0, 1)


def test_capacity_must_be_positive():
    with pytest.raises(ValueError):
        LatencyWindow(capacity=0)


# -- snapshot ---------------------------------------------------------------------------------

class FakePorts:
    backend = "jack"
    in_names = ["mb:midi-bridge in"]
    out_names = ["mb:midi-bridge out"]
    callback_errors = 0


def test_snapshot_of_a_continue_rig_follows_the_phrase():
    rig = Rig({"melody": Melody}, engine={"mode": "continue", "bpm": 100},
              phrase={"silence_ms": 400, "min_notes": 2})
    snap = snapshot(rig.engine, FakePorts(), LatencyWindow(), now_ns=rig.clock.t)
    assert isinstance(snap, Snapshot)
    assert (snap.generator, snap.mode, snap.clock, snap.transport) == ("melody", "continue", "internal", None)
    assert snap.bpm == pytest.approx(100.0)
    assert snap.phrase == "idle"
    assert (snap.backend, snap.in_ports, snap.out_ports) == ("jack", ["mb:midi-bridge in"],
                                                             ["mb:midi-bridge out"])
    assert (snap.p50_ms, snap.p99_ms, snap.latency_count) == (None, None, 0)

    rig.on(0, 60)
    snap = snapshot(rig.engine, now_ns=rig.clock.t)
    assert (snap.phrase, snap.held, snap.phrase_notes, snap.notes_in) == ("playing", 1, 1, 1)
    rig.off(100, 60)
    rig.tap(150, 62)
    snap = snapshot(rig.engine, now_ns=rig.clock.t)
    assert (snap.phrase, snap.held, snap.phrase_notes) == ("waiting for silence", 0, 2)
    assert snap.events_in == 4 and snap.answers == 0

    rig.advance(250 + 400 + 10)  # the silence has passed: the answer plays
    snap = snapshot(rig.engine, now_ns=rig.clock.t)
    assert snap.phrase == "answering"
    assert snap.answers == 1 and snap.sent >= 1 and snap.sounding >= 1
    rig.advance(10_000)
    snap = snapshot(rig.engine, now_ns=rig.clock.t)
    assert snap.phrase == "idle" and snap.sounding == 0
    assert snap.errors == {}


def test_snapshot_in_accompany_mode():
    rig = Rig({"chords": Intervals}, engine={"mode": "accompany"})
    rig.on(0, 60)
    snap = snapshot(rig.engine, now_ns=rig.clock.t)
    assert (snap.generator, snap.mode, snap.phrase) == ("chords", "accompany", "playing")
    assert snap.sounding == 2  # the two accompanying notes (thru is off)
    rig.off(50, 60)
    snap = snapshot(rig.engine, now_ns=rig.clock.t)
    assert (snap.phrase, snap.sounding) == ("idle", 0)


def test_snapshot_follows_the_midi_clock():
    rig = Rig({"melody": Melody}, engine={"mode": "continue", "bpm": 90})
    rig.send(0, 0xFA)  # Start
    period_ms = 60_000 / (140 * 24)
    for i in range(60):
        rig.send(i * period_ms, 0xF8)
    now = rig.clock.t
    snap = snapshot(rig.engine, now_ns=now)
    assert (snap.clock, snap.transport) == ("midi", "running")
    assert snap.bpm == pytest.approx(140.0, rel=0.01)
    rig.send(60 * period_ms, 0xFC)  # Stop
    assert snapshot(rig.engine, now_ns=rig.clock.t).transport == "stopped"
    rig.advance(60 * period_ms + 2000)  # the clock is gone: internal again
    snap = snapshot(rig.engine, now_ns=rig.clock.t)
    assert (snap.clock, snap.transport, snap.bpm) == ("internal", None, 90.0)


def test_snapshot_reads_controls_and_problem_counters():
    rig = Rig({"both": Both}, engine={"mode": "continue"})
    rig.engine.controls.update({"temperature": 0.8, "density": 0.5, "length": 1.0})
    rig.send(0, 0xF5)  # not a MIDI status byte: malformed
    ports = FakePorts()
    ports.callback_errors = 2

    class Thread:
        crashes = 1

    snap = snapshot(rig.engine, ports, now_ns=rig.clock.t, thread=Thread())
    assert (snap.temperature, snap.density, snap.length) == (0.8, 0.5, 1.0)
    assert snap.errors == {"malformed": 1, "callback_errors": 2, "engine_errors": 1}


def test_snapshot_reads_only_the_engine_view():
    """The status screen reads the engine's public snapshot, nothing else of it (before:
    its privates ``_answer``, ``_cont_until``, ``_clocked``)."""
    rig = Rig({"melody": Melody}, phrase={"silence_ms": 100, "min_notes": 1})
    rig.tap(0, 60)
    rig.advance(300)
    view = rig.engine.snapshot(rig.clock.t)

    class OnlyAView:  # an engine that has nothing but its snapshot
        def snapshot(self, now):
            return view

    snap = snapshot(OnlyAView(), now_ns=rig.clock.t)
    assert (snap.generator, snap.mode, snap.phrase, snap.answers) == ("melody", "continue", "answering", 1)
    assert snap.sounding == view.sounding >= 1 and (snap.temperature, snap.density, snap.length) == (None, 1.0, 1.0)
    with pytest.raises(Exception):
        view.mode = "thru"  # read-only


def test_dropped_messages_are_the_ports_count():
    """Messages sent while no output is connected are counted by the real Ports and shown
    (before: the screen read ``Scheduler.dropped``, which does not exist: always None)."""
    from midi_bridge.runtime.ports import Ports
    rig = Rig({"melody": Melody}, engine={"mode": "thru"})
    ports = Ports("jack")            # nothing opened: no output connected
    rig.engine.out = ports.send      # the engine's output, as `midi-bridge run` wires it
    assert snapshot(rig.engine, ports, now_ns=rig.clock.t).dropped == 0
    rig.tap(0, 60)                   # thru: a note-on and a note-off, both dropped
    assert ports.dropped == 2
    snap = snapshot(rig.engine, ports, now_ns=rig.clock.t)
    assert snap.dropped == 2
    from midi_bridge.stage import tui
    from test_tui import text_of
    assert "dropped 2" in text_of(tui.render(snap, [], window_s=60))


def test_snapshot_latency_from_the_window():
    rig = Rig({"melody": Melody})
    w = LatencyWindow(window_s=60)
    for lat in (1, 2, 3, 4):
        w.add(S, lat * MS)
    snap = snapshot(rig.engine, None, w, now_ns=2 * S)
    assert (snap.p50_ms, snap.p99_ms, snap.latency_count) == (2.0, 4.0, 4)
    rig.engine.latency = w  # the engine's own window when none is given
    assert snapshot(rig.engine, now_ns=2 * S).latency_count == 4


def test_phrase_state_while_an_answer_still_sounds():
    rig = Rig({"melody": Melody}, phrase={"silence_ms": 100, "min_notes": 1})
    rig.tap(0, 60)
    rig.advance(300)
    assert phrase_state(rig.engine, rig.clock.t) == "answering"


@pytest.mark.parametrize("mode, thru, samples", [
    ("thru", False, 2), ("accompany", False, 2), ("accompany", True, 2), ("continue", True, 2),
    ("continue", False, 0),  # nothing goes out with a played note: nothing to time
])
def test_the_engine_times_each_played_note_to_its_first_message_out(mode, thru, samples):
    """Arrival -> the first message the note caused left (thru or accompaniment; before, an
    accompaniment without thru was never timed: it left after the sample was taken)."""
    rig = Rig({"both": Both}, engine={"mode": mode}, thru={"enabled": thru})
    w = rig.engine.latency = LatencyWindow(60)
    rig.engine.wall_ns = lambda: rig.clock.t + 3 * MS  # what it sent left 3 ms after arrival
    rig.on(0, 60)
    rig.off(100, 60)
    rig.on(200, 62)
    assert w.total == samples
    if samples:
        assert w.percentiles(rig.clock.t) == (3.0, 3.0, samples)
