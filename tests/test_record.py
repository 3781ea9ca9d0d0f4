"""Session recording (bridge/stage/record.py): the file parses, plays at the recorded times, keeps
who played what apart, ends every note, and survives a kill."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mido
import pytest

from midi_bridge.commands import cli
from midi_bridge.commands.config import validate
from midi_bridge.stage.record import TICKS_PER_BEAT, Recorder, RecordError

from helpers import Melody, Rig

ROOT = Path(__file__).resolve().parents[1]
MS = 1_000_000
T0 = 10**12  # the fake clock's start (any perf_counter_ns-like value)


class FakeClock:
    def __init__(self, t: int = T0) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def make(tmp_path, **kw) -> tuple[Recorder, FakeClock]:
    clock = FakeClock()
    kw.setdefault("interval", 3600.0)  # only close() writes, unless a test wants the writer
    return Recorder(tmp_path / "rec", clock=clock, **kw), clock


def played(path) -> list[tuple[float, str, object]]:
    """What a player hears: (seconds, track name, message) for every event, the tempo map
    applied by mido across all tracks (as a DAW or `mido-play` would)."""
    mf = mido.MidiFile(str(path))
    tagged = []
    for i, tr in enumerate(mf.tracks):
        name = next((m.name for m in tr if m.type == "track_name"), "")
        t = 0
        for m in tr:
            t += m.time
            tagged.append((t, i, name, m))
    tagged.sort(key=lambda e: (e[0], e[1]))
    # seconds from ticks with the tempo map of track 0 (a type-1 file's conductor track)
    tempos = [(t, m.tempo) for t, i, _, m in tagged if m.type == "set_tempo"]
    out = []
    for tick, _, name, m in tagged:
        sec, last_tick, tempo = 0.0, 0, 500000
        for tt, tp in tempos:
            if tt > tick:
                break
            sec += mido.tick2second(tt - last_tick, mf.ticks_per_beat, tempo)
            last_tick, tempo = tt, tp
        sec += mido.tick2second(tick - last_tick, mf.ticks_per_beat, tempo)
        out.append((sec, name, m))
    return out


def channel_events(path) -> list[tuple[float, str, tuple[int, ...]]]:
    return [(s, name, tuple(m.bytes())) for s, name, m in played(path) if not m.is_meta]


def track_names(path) -> list[str]:
    return [next((m.name for m in tr if m.type == "track_name"), "") for tr in mido.MidiFile(str(path)).tracks]


def matched(events) -> bool:
    """Every note-on in each track is ended (no note left sounding at the end)."""
    sounding = set()
    for _, name, b in events:
        if b[0] & 0xF0 == 0x90 and b[2]:
            sounding.add((name, b[0] & 0x0F, b[1]))
        elif b[0] & 0xF0 in (0x80, 0x90):
            sounding.discard((name, b[0] & 0x0F, b[1]))
    return not sounding


def test_the_file_has_a_track_per_source_and_plays_at_the_recorded_times(tmp_path):
    rec, clock = make(tmp_path)
    sent = [  # (ms, kind, msg, source)
        (100, "in", (0x90, 60, 100), None), (100.4, "out", (0x90, 60, 100), "thru"),
        (350, "in", (0x80, 60, 0), None), (351, "out", (0x80, 60, 0), "thru"),
        (400, "in", (0xB1, 64, 127), None), (401, "out", (0xB1, 64, 127), "thru"),
        (1250.7, "out", (0x90, 72, 80), "markov"), (1500, "out", (0x80, 72, 0), "markov"),
        (1510, "out", (0x92, 48, 70), "markov"), (2000, "out", (0x82, 48, 0), "markov"),
        (2222, "in", (0xE0, 0, 80), None), (3001.3, "out", (0x90, 55, 90), "harmony"),
        (3500, "out", (0x80, 55, 0), "harmony"),
    ]
    for ms, kind, msg, src in sent:
        t = T0 + round(ms * MS)
        rec.inp(t, msg) if kind == "in" else rec.out(t, msg, src)
    rec.marker(T0 + 1200 * MS, "generator markov")
    rec.marker(T0 + 3000 * MS, "generator harmony")
    clock.t = T0 + 4000 * MS
    path = rec.close()
    assert path.parent == tmp_path / "rec" and path.name.startswith("session-") and path.suffix == ".mid"
    mf = mido.MidiFile(str(path))
    assert mf.type == 1 and mf.ticks_per_beat == TICKS_PER_BEAT
    assert track_names(path) == ["midi-bridge session", "input", "out: thru", "out: markov", "out: harmony"]
    got = channel_events(path)
    want = [(ms / 1000, "input" if kind == "in" else f"out: {src}", msg) for ms, kind, msg, src in sent]
    assert [(n, b) for _, n, b in got] == [(n, b) for _, n, b in sorted(want, key=lambda e: e[0])]
    for (s, _, _), (w, _, _) in zip(got, sorted(want, key=lambda e: e[0])):
        assert abs(s - w) < 0.001
    markers = [(s, m.text) for s, n, m in played(path) if m.type == "marker"]
    assert [t for _, t in markers] == ["generator markov", "generator harmony"]
    assert abs(markers[0][0] - 1.2) < 0.001 and abs(markers[1][0] - 3.0) < 0.001
    # mido's own player (merged tracks, tempo map) agrees
    acc, player = 0.0, []
    for m in mf:
        acc += m.time
        if not m.is_meta:
            player.append(acc)
    assert len(player) == len(want)
    assert all(abs(a - w) < 0.001 for a, w in zip(player, sorted(ms / 1000 for ms, *_ in sent)))


def test_tempo_changes_are_in_the_tempo_map_and_times_still_round_trip(tmp_path):
    rec, clock = make(tmp_path, bpm=120)
    times = []
    t_ms = 0.0
    tempo_at = {700: 90.0, 1900: 151.3, 2600: 151.35, 3300: 60.0}  # 151.35: below tempo_step
    for i in range(80):
        t_ms = 50 * i + (i * 7 % 13) * 0.37
        for at, bpm in tempo_at.items():
            if 50 * (i - 1) < at <= 50 * i:
                rec.tempo(T0 + at * MS, bpm)
        rec.inp(T0 + round(t_ms * MS), (0x90 if i % 2 == 0 else 0x80, 60 + i // 2 % 12, 90 if i % 2 == 0 else 0))
        times.append(t_ms / 1000)
    # an event stamped well before the last tempo change, handed over after it
    rec.out(T0 + 2800 * MS, (0xB0, 1, 5), "rnn")
    clock.t = T0 + 4500 * MS
    path = rec.close()
    tempos = [(s, m.tempo) for s, _, m in played(path) if m.type == "set_tempo"]
    assert [mido.tempo2bpm(tp) for _, tp in tempos] == pytest.approx([120, 90, 151.3, 60], abs=0.01)
    assert [s for s, _ in tempos] == pytest.approx([0, 0.7, 1.9, 3.3], abs=0.001)
    ins = [s for s, n, _ in channel_events(path) if n == "input"]
    assert len(ins) == len(times)
    assert max(abs(a - b) for a, b in zip(ins, times)) < 0.001
    cc = [s for s, n, _ in channel_events(path) if n == "out: rnn"]
    assert cc == [pytest.approx(2.8, abs=0.001)]
    acc, player = 0.0, []
    for m in mido.MidiFile(str(path)):
        acc += m.time
        if m.type in ("note_on", "note_off"):
            player.append(acc)
    assert max(abs(a - b) for a, b in zip(player, times)) < 0.001


def test_clock_ticks_are_skipped_and_transport_becomes_markers(tmp_path):
    rec, clock = make(tmp_path)
    for i in range(48):
        rec.inp(T0 + i * 20 * MS, (0xF8,))
    rec.inp(T0 + 5 * MS, (0xFE,))
    rec.inp(T0 + 10 * MS, (0xFA,))
    rec.inp(T0 + 500 * MS, (0xF2, 0x10, 0x01))   # song position 144 sixteenths
    rec.inp(T0 + 510 * MS, (0xFB,))
    rec.inp(T0 + 900 * MS, (0xFC,))
    rec.inp(T0 + 600 * MS, (0x90, 64, 100))
    clock.t = T0 + 1000 * MS
    path = rec.close()
    ev = played(path)
    inp = [(round(s, 3), m) for s, n, m in ev if n == "input" and m.type not in ("track_name", "end_of_track")]
    assert [m.text for _, m in inp if m.type == "marker"] == [
        "transport: start", "transport: song position 16ths 144", "transport: continue", "transport: stop"]
    assert [s for s, m in inp if m.type == "marker"] == [0.01, 0.5, 0.51, 0.9]
    assert [m.type for _, m in inp if not m.is_meta] == ["note_on", "note_off"]  # held note ended at close
    assert not [m for _, _, m in ev if m.type in ("clock", "active_sensing")]


def test_a_note_off_sent_as_control_ends_the_note_in_its_own_track(tmp_path):
    """The panic's note-offs have no owner (tag None -> 'control'): they still land in the
    track whose note they end; its CC64/CC123 go to 'out: control'."""
    rec, clock = make(tmp_path)
    rec.out(T0 + 10 * MS, (0x90, 60, 90), "markov")
    rec.out(T0 + 10 * MS, (0x90, 64, 90), "thru")
    rec.out(T0 + 200 * MS, (0x80, 60, 0), "control")
    rec.out(T0 + 200 * MS, (0x80, 64, 0), "control")
    rec.out(T0 + 201 * MS, (0xB0, 64, 0), "control")
    rec.out(T0 + 201 * MS, (0xB0, 123, 0), "control")
    clock.t = T0 + 300 * MS
    path = rec.close()
    ev = channel_events(path)
    assert [(n, b) for _, n, b in ev] == [
        ("out: markov", (0x90, 60, 90)), ("out: thru", (0x90, 64, 90)),
        ("out: markov", (0x80, 60, 0)), ("out: thru", (0x80, 64, 0)),
        ("out: control", (0xB0, 64, 0)), ("out: control", (0xB0, 123, 0))]


def test_close_ends_held_notes_at_the_close_time_and_is_idempotent(tmp_path):
    rec, clock = make(tmp_path)
    rec.inp(T0 + 100 * MS, (0x90, 60, 100))
    rec.out(T0 + 100 * MS, (0x93, 67, 100), "rnn")
    rec.out(T0 + 150 * MS, (0x93, 67, 100), "thru")  # retrigger by another owner: the first ends
    clock.t = T0 + 2500 * MS
    path = rec.close()
    ev = channel_events(path)
    assert matched(ev)
    assert [(round(s, 3), n, b) for s, n, b in ev] == [
        (0.1, "input", (0x90, 60, 100)), (0.1, "out: rnn", (0x93, 67, 100)),
        (0.15, "out: rnn", (0x83, 67, 0)), (0.15, "out: thru", (0x93, 67, 100)),
        (2.5, "input", (0x80, 60, 0)), (2.5, "out: thru", (0x83, 67, 0))]
    before = path.read_bytes()
    assert rec.close() == path
    rec.inp(T0 + 2600 * MS, (0x90, 61, 1))  # after close: ignored
    rec.close()
    assert path.read_bytes() == before


def test_the_writer_flushes_every_interval_and_only_appends(tmp_path):
    """Mid-session the file on disk is complete and its notes end; later flushes extend
    each track's bytes (the earlier events are not re-encoded)."""
    rec = Recorder(tmp_path, interval=0.05)
    try:
        now = time.perf_counter_ns()
        rec.inp(now, (0x90, 60, 100))
        rec.out(now, (0x90, 72, 100), "markov")
        first = _wait_for(rec.path, lambda ev: len(ev) >= 4)  # two note-ons, two tail note-offs
        assert matched(first) and [b for _, _, b in first][:2] == [(0x90, 60, 100), (0x90, 72, 100)]
        tracks1 = [bytes(tr.data) for tr in (rec._meta, rec._input, *rec._outs.values())]
        rec.inp(time.perf_counter_ns(), (0x80, 60, 0))
        rec.out(time.perf_counter_ns(), (0x90, 74, 100), "markov")
        second = _wait_for(rec.path, lambda ev: (0x90, 74, 100) in [b for _, _, b in ev])
        assert matched(second)
        tracks2 = [bytes(tr.data) for tr in (rec._meta, rec._input, *rec._outs.values())]
        assert all(b.startswith(a) and len(b) >= len(a) for a, b in zip(tracks1, tracks2))
        assert rec.flushes >= 2
    finally:
        rec.close()
    assert not list(tmp_path.glob(".*.tmp")), "the temporary file was left behind"


def _wait_for(path: Path, cond, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            ev = channel_events(path)
            if cond(ev):
                return ev
        except (OSError, EOFError, ValueError, KeyError, IndexError):
            pass  # never expected (the file is replaced atomically), but then the assert below says so
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not get the expected events within {timeout} s")
        time.sleep(0.02)


def test_session_file_names_do_not_collide(tmp_path):
    a = Recorder(tmp_path)
    b = Recorder(tmp_path)
    try:
        assert a.path != b.path
        assert a.path.name.startswith("session-") and b.path.name.startswith("session-")
        assert a.path.exists() and b.path.exists()  # written (empty) at once: a bad dir fails now
        assert track_names(a.path) == ["midi-bridge session", "input"]
    finally:
        a.close()
        b.close()


def test_a_directory_that_cannot_be_created_is_a_one_line_record_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(RecordError) as e:
        Recorder(blocker / "sub")
    msg = str(e.value)
    assert "\n" not in msg and str(blocker / "sub") in msg
    with pytest.raises(RecordError) as e:
        Recorder(blocker)
    assert str(blocker) in str(e.value) and "not a directory" in str(e.value).lower()


def test_a_recording_directory_removed_mid_session_is_made_again_and_nothing_is_lost(tmp_path):
    """rm -r of the sessions folder while playing: the whole session is still in memory,
    so the next write re-creates the directory instead of losing the recording."""
    import shutil
    rec, clock = make(tmp_path)
    rec.inp(T0 + 100 * MS, (0x90, 60, 100))
    shutil.rmtree(tmp_path / "rec")
    rec.inp(T0 + 300 * MS, (0x80, 60, 0))
    clock.t = T0 + 500 * MS
    path = rec.close()
    assert rec.error is None and path.exists()
    assert [(round(s, 3), b) for s, n, b in channel_events(path) if n == "input"] == [
        (0.1, (0x90, 60, 100)), (0.3, (0x80, 60, 0))]


def test_a_final_write_that_fails_is_reported_at_close_and_leaves_no_temporary_file(tmp_path, caplog):
    """Disk full (here: the file's name taken by a directory): the error was logged once
    when it began, maybe long ago behind the status screen; close() says it again."""
    rec, clock = make(tmp_path)
    rec.inp(T0 + 100 * MS, (0x90, 60, 100))
    rec.path.unlink()
    rec.path.mkdir()                      # os.replace onto it fails
    clock.t = T0 + 500 * MS
    with caplog.at_level(logging.INFO, logger="midi_bridge.stage.record"):
        rec.close()
    assert rec.error is not None and str(rec.path) in rec.error
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("final file could not be written" in m for m in errors), errors
    assert not any("recorded" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    assert not list((tmp_path / "rec").glob(".*.tmp")), "a partial temporary file was left behind"


def test_run_record_flag_overrides_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = cli.build_parser().parse_args(["run", "--record", str(tmp_path / "sessions")])
    cfg = cli._load_config(args)
    assert cfg["record"]["dir"] == str(tmp_path / "sessions")
    args = cli.build_parser().parse_args(["run"])
    assert cli._load_config(args)["record"]["dir"] is None
    assert validate({})["record"]["dir"] is None


CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from midi_bridge.stage.record import Recorder
    rec = Recorder({dir!r})
    print(rec.path, flush=True)
    i = 0
    while True:
        t = time.perf_counter_ns()
        rec.inp(t, (0x90, i % 128, 100))
        rec.out(t, (0x90, i % 128, 100), "markov")
        rec.inp(t + 1, (0x80, i % 128, 0))
        rec.out(t + 1, (0x80, i % 128, 0), "markov")
        print(i, (t - rec.t0) / 1e6, flush=True)
        i += 1
        time.sleep(0.01)
""")


def test_a_killed_session_leaves_a_valid_file_missing_at_most_about_a_second(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=str(ROOT), dir=str(tmp_path / "rec")))
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        path = Path(p.stdout.readline().strip())
        last_ms = 0.0
        for line in p.stdout:  # let it record for 3.5 s of its own time, then kill it
            last_ms = float(line.split()[1])
            if last_ms >= 3500:
                break
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.kill()
        p.wait(30)
        p.stdout.close()
    assert p.returncode == -signal.SIGKILL
    ev = channel_events(path)  # parses: the file on disk is always a complete one
    assert matched(ev)
    ins = [(s, b) for s, n, b in ev if n == "input"]
    outs = [(s, b) for s, n, b in ev if n == "out: markov"]
    assert ins and [b for _, b in ins] == [b for _, b in outs]
    # nothing lost in the middle: notes 0, 1, 2, ... each on then off
    pitches = [b[1] for _, b in ins if b[0] == 0x90]
    assert pitches == [i % 128 for i in range(len(pitches))]
    # the writer flushes every second; allow the kill a little scheduling slack on a busy box
    print("last in file", ins[-1][0] * 1000, "last sent", last_ms)
    assert ins[-1][0] * 1000 >= last_ms - 1000 - 500, (ins[-1][0], last_ms)


def test_the_engine_records_what_it_received_and_sent_with_who_played_it(tmp_path):
    """Through Engine.attach_recorder: the input track holds what was played (clock ticks
    not), and the output tracks together hold exactly what went out, at the same times."""
    rig = Rig({"m": Melody}, engine={"mode": "continue"}, thru={"enabled": True})
    rec = Recorder(tmp_path, bpm=120, clock=lambda: rig.clock.t)
    rig.engine.attach_recorder(rec)
    rig.send(5, 0xF8)
    rig.tap(10, 60)
    rig.tap(210, 62)
    rig.advance(3000)   # the answer (4 notes) plays
    rig.tap(3100, 64)
    rig.stop()          # panic: CC64/CC123 from nobody in particular
    path = rec.close()
    assert track_names(path) == ["midi-bridge session", "input", "out: thru", "out: m", "out: control"]
    ev = channel_events(path)
    assert [(round(s * 1000), b) for s, n, b in ev if n == "input"] == [
        (10, (0x90, 60, 100)), (110, (0x80, 60, 0)), (210, (0x90, 62, 100)), (310, (0x80, 62, 0)),
        (3100, (0x90, 64, 100)), (3200, (0x80, 64, 0))]
    outs = [(s, n, b) for s, n, b in ev if n != "input"]
    assert [b for _, _, b in outs] == [tuple(m) for _, m in rig.out]
    assert all(abs(s - t / 1e9) < 0.001 for (s, _, _), (t, _) in zip(outs, rig.out))
    assert {b[1] for _, n, b in outs if n == "out: m"} == {72, 74, 76, 77}
    assert {b[1] for _, n, b in outs if n == "out: thru"} == {60, 62, 64}
    assert matched(ev)
