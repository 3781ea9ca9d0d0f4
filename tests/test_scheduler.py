"""midi_bridge.core.scheduler: ordering, note bookkeeping, panic and pacing, on a manual clock."""

from __future__ import annotations

import pytest

from midi_bridge.core.scheduler import Scheduler

from helpers import MS, unmatched

SEC = 1000 * MS


class Sink:
    """Records (clock ns, message) for every message the scheduler sends."""

    def __init__(self) -> None:
        self.t = 0
        self.out: list[tuple[int, tuple[int, ...]]] = []

    def __call__(self, msg) -> None:
        self.out.append((self.t, msg))

    def msgs(self):
        return [m for _, m in self.out]


def make(**kw) -> tuple[Scheduler, Sink]:
    sink = Sink()
    kw.setdefault("max_note_ns", 100 * SEC)
    return Scheduler(sink, **kw), sink


def drain(s: Scheduler, sink: Sink, until: int = 10**15) -> None:
    """Visit the scheduler's deadlines in order (as the engine loop does), up to ``until``."""
    for _ in range(1_000_000):
        d = s.next_deadline(sink.t)
        if d is None or d > until:
            return
        sink.t = max(sink.t, d)
        s.pump(sink.t)
    raise AssertionError("the scheduler never ran out of deadlines")


def test_messages_go_out_at_their_time_in_insertion_order_for_equal_times():
    s, sink = make()
    s.message(30 * MS, (0xB0, 1, 3))
    s.message(10 * MS, (0xB0, 1, 1))
    s.message(10 * MS, (0xB0, 1, 2))
    s.pump(0)
    assert sink.out == []
    assert s.next_deadline(0) == 10 * MS
    drain(s, sink)
    assert sink.out == [(10 * MS, (0xB0, 1, 1)), (10 * MS, (0xB0, 1, 2)), (30 * MS, (0xB0, 1, 3))]
    assert s.next_deadline(sink.t) is None


def test_a_note_is_tracked_while_it_sounds():
    s, sink = make()
    s.note(0, 100 * MS, 2, 60, 90, "cont")
    s.pump(0)
    assert s.sounding == {(2, 60): (1, "cont")}
    drain(s, sink)
    assert s.sounding == {}
    assert sink.out == [(0, (0x92, 60, 90)), (100 * MS, (0x82, 60, 0))]


def test_a_retriggered_pitch_is_not_cut_by_the_older_notes_end():
    s, sink = make()
    s.note(0, 1000 * MS, 0, 60, 90, "a")
    s.note(500 * MS, 2000 * MS, 0, 60, 80, "b")
    drain(s, sink)
    assert sink.out == [
        (0, (0x90, 60, 90)),
        (500 * MS, (0x80, 60, 0)),      # the old note ends before the new one starts
        (500 * MS, (0x90, 60, 80)),
        (2000 * MS, (0x80, 60, 0)),     # and the old note's end at 1000 ms cut nothing
    ]
    assert unmatched(sink.msgs()) == {}


def test_a_retriggered_pitch_with_the_same_owner_is_not_cut_either():
    s, sink = make()
    s.note(0, 1000 * MS, 0, 60, 90, "cont")
    s.note(500 * MS, 2000 * MS, 0, 60, 90, "cont")
    drain(s, sink)
    assert [t // MS for t, m in sink.out if m[0] == 0x80] == [500, 2000]


def test_safety_note_off_after_max_note_ns_for_a_note_without_an_end():
    s, sink = make(max_note_ns=3 * SEC)
    s.note(SEC, None, 0, 60, 90, ("acc", 0, 48))
    drain(s, sink)
    assert sink.out == [(SEC, (0x90, 60, 90)), (4 * SEC, (0x80, 60, 0))]
    assert s.sounding == {}


def test_safety_note_off_does_not_cut_a_retriggered_note():
    s, sink = make(max_note_ns=3 * SEC)
    s.note(0, None, 0, 60, 90, "x")
    s.note(2 * SEC, 10 * SEC, 0, 60, 90, "y")
    drain(s, sink)
    assert [(t // SEC, m) for t, m in sink.out] == [
        (0, (0x90, 60, 90)), (2, (0x80, 60, 0)), (2, (0x90, 60, 90)),
        (5, (0x80, 60, 0)),  # the second note's own safety (3 s after it started), not the first's at 3 s
    ]


def test_no_safety_note_off_when_asked_for_none():
    s, sink = make(max_note_ns=SEC)
    s.note(0, None, 0, 60, 90, "thru", safety=False)
    drain(s, sink)
    assert sink.msgs() == [(0x90, 60, 90)]
    s.release(5 * SEC, 0, 60, "thru")
    drain(s, sink)
    assert sink.msgs() == [(0x90, 60, 90), (0x80, 60, 0)]


def test_release_only_ends_the_note_of_that_owner():
    s, sink = make()
    s.note(0, None, 0, 60, 90, "thru", safety=False)
    s.note(10 * MS, None, 0, 60, 90, "cont")   # the generator took the pitch over
    s.release(20 * MS, 0, 60, "thru")
    drain(s, sink, until=SEC)
    assert sink.msgs() == [(0x90, 60, 90), (0x80, 60, 0), (0x90, 60, 90)]
    assert (0, 60) in s.sounding


def test_end_tag_ends_what_the_owner_sounds_and_drops_what_it_had_pending():
    s, sink = make()
    tag = ("acc", 0, 60)
    s.note(0, None, 0, 64, 90, tag)
    s.note(0, None, 1, 67, 90, tag)
    s.note(200 * MS, None, 0, 72, 90, tag)   # not started yet
    s.note(0, None, 0, 50, 90, "other")
    s.pump(0)
    s.end_tag(100 * MS, tag)
    drain(s, sink, until=SEC)
    assert sorted(sink.out[3:]) == [(100 * MS, (0x80, 64, 0)), (100 * MS, (0x81, 67, 0))]
    assert all(m[1] != 72 for m in sink.msgs())
    assert set(s.sounding) == {(0, 50)}
    # the owner can start again afterwards
    s.note(sink.t, None, 0, 72, 90, tag)
    s.pump(sink.t)
    assert sink.msgs()[-1] == (0x90, 72, 90)


def test_emergency_lists_what_ends_every_note_and_changes_nothing():
    """For the watchdog thread while the engine thread is stuck: the panic's messages for
    what sounds now, computed without touching the book."""
    s, sink = make()
    s.note(0, None, 3, 70, 90, "a")
    s.note(0, None, 0, 61, 90, "b")
    s.message(0, (0xB9, 7, 100))          # channel 10 used, nothing sounding there
    s.note(50 * MS, 60 * MS, 5, 40, 90, "c")  # not sounding yet
    s.pump(0)
    before = (dict(s.sounding), s.pending(), set(s.channels_used))
    assert s.emergency() == [(0x80, 61, 0), (0x83, 70, 0),
                             (0xB0, 64, 0), (0xB3, 64, 0), (0xB9, 64, 0),
                             (0xB0, 123, 0), (0xB3, 123, 0), (0xB9, 123, 0)]
    assert (dict(s.sounding), s.pending(), set(s.channels_used)) == before


def test_panic_note_offs_then_sustain_off_then_all_notes_off_per_channel_used():
    s, sink = make()
    s.note(0, None, 3, 70, 90, "a")
    s.note(0, None, 0, 61, 90, "b")
    s.note(0, None, 0, 60, 90, "b")
    s.message(0, (0xB9, 7, 100))          # channel 10 used, nothing sounding there
    s.note(50 * MS, 60 * MS, 5, 40, 90, "c")  # pending: dropped by the panic
    s.pump(0)
    n = len(sink.out)
    s.panic(10 * MS)
    drain(s, sink)
    assert sink.out[n:] == [(10 * MS, m) for m in [
        (0x80, 60, 0), (0x80, 61, 0), (0x83, 70, 0),
        (0xB0, 64, 0), (0xB3, 64, 0), (0xB9, 64, 0),
        (0xB0, 123, 0), (0xB3, 123, 0), (0xB9, 123, 0),
    ]]
    assert s.sounding == {} and s.pending() == 0
    assert unmatched(sink.msgs()) == {}
    # a second panic with nothing sounding: no note-offs (CCs again at most)
    s.panic(20 * MS)
    drain(s, sink)
    assert not any(m[0] & 0xF0 in (0x80, 0x90) for m in sink.msgs()[n + 9:])


# -- pacing ------------------------------------------------------------------------------


def rate_ok(times: list[int], burst: int, rate_per_ms: float) -> None:
    """No window [a, b] holds more than burst + rate * (b - a) messages."""
    rate = rate_per_ms / MS
    for i in range(len(times)):
        for j in range(i, len(times)):
            allowed = burst + rate * (times[j] - times[i])
            assert j - i + 1 <= allowed + 1e-9, (
                f"{j - i + 1} messages between {times[i]} and {times[j]} ns; at most {allowed:.1f}")


@pytest.mark.parametrize("burst, rate_per_ms", [(64, 8.0), (16, 0.5), (1, 1.0)])
def test_a_burst_of_500_messages_is_paced_and_all_sent_in_order(burst, rate_per_ms):
    s, sink = make(burst=burst, rate_per_ms=rate_per_ms)
    msgs = [(0xB0 | (i % 16), i % 120, i % 128) for i in range(500)]
    for m in msgs:
        s.message(0, m)
    drain(s, sink)
    assert sink.msgs() == msgs
    times = [t for t, _ in sink.out]
    per_instant: dict[int, int] = {}
    for t in times:
        per_instant[t] = per_instant.get(t, 0) + 1
    assert max(per_instant.values()) <= burst
    assert per_instant[0] == burst           # a burst goes out at once ...
    rate_ok(times, burst, rate_per_ms)        # ... then the sustained rate holds
    # and pacing does not dawdle: the last leaves about when the token bucket allows
    ideal = (500 - burst) / (rate_per_ms / MS)
    assert times[-1] <= ideal * 1.01 + 2 * MS


def test_pacing_notes_keeps_every_note_matched():
    s, sink = make(burst=8, rate_per_ms=1.0)
    for i in range(250):
        s.note(0, 5 * MS, i % 16, 20 + i // 16, 90, "cont")
    drain(s, sink)
    assert len(sink.out) == 500
    assert unmatched(sink.msgs()) == {}
    rate_ok([t for t, _ in sink.out], 8, 1.0)


def test_tokens_come_back_after_a_pause():
    s, sink = make(burst=10, rate_per_ms=1.0)
    for i in range(10):
        s.message(0, (0xB0, 1, i))
    drain(s, sink)
    assert {t for t, _ in sink.out} == {0}
    for i in range(10):
        s.message(SEC, (0xB0, 2, i))
    drain(s, sink)
    assert {t for t, _ in sink.out[10:]} == {SEC}  # a second later the bucket is full again


def test_a_retrigger_inside_a_burst_does_not_exceed_the_burst():
    """BUG candidate: a retrigger sends two messages (note-off, note-on) for one token."""
    s, sink = make(burst=2, rate_per_ms=1.0)
    s.note(0, None, 0, 60, 90, "a", safety=False)
    s.note(0, None, 0, 60, 90, "b", safety=False)
    drain(s, sink)
    assert sink.msgs() == [(0x90, 60, 90), (0x80, 60, 0), (0x90, 60, 90)]
    at_zero = sum(1 for t, _ in sink.out if t == 0)
    assert at_zero <= 2


def test_flush_sends_everything_pending_now_paced():
    s, sink = make(burst=4, rate_per_ms=1.0)
    for i in range(12):
        s.message(SEC * (i + 1), (0xB0, 1, i))
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        sink.t += int(seconds * 1e9) + 1

    s.flush(lambda: sink.t, sleep)
    assert [m[2] for m in sink.msgs()] == list(range(12))
    assert s.pending() == 0
    assert sink.out[-1][0] < 20 * MS, "flush waited for future deadlines instead of sending now"
    rate_ok([t for t, _ in sink.out], 4, 1.0)


def test_lateness_is_recorded():
    s, sink = make()
    s.message(10 * MS, (0xB0, 1, 1))
    s.pump(15 * MS)
    assert s.late_ns_max == 5 * MS
    assert s.sent == 1


def test_a_panic_only_covers_channels_used_since_the_last_panic():
    """BUG candidate (minor): the panic's own CC64/CC123 mark their channels as used, so every
    later panic repeats them on every channel ever touched."""
    s, sink = make()
    s.note(0, None, 3, 70, 90, "a")
    s.pump(0)
    s.panic(10 * MS)
    drain(s, sink, until=SEC)
    n = len(sink.out)
    s.message(20 * MS, (0xB5, 1, 0))
    drain(s, sink, until=25 * MS)
    s.panic(30 * MS)
    drain(s, sink, until=SEC)
    assert sink.msgs()[n:] == [(0xB5, 1, 0), (0xB5, 64, 0), (0xB5, 123, 0)]
