"""midi_bridge.runtime.watchdog: an overrunning plugin call is really cut short, and nothing leaks.

Times are generous: the machine running the tests may be loaded, and the watchdog thread
needs the GIL (one switch interval, 5 ms) to fire.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from midi_bridge.runtime.watchdog import Overrun, Watchdog

MS = 1_000_000


@pytest.fixture
def wd():
    w = Watchdog()
    yield w
    w.close()


def spin(seconds: float) -> str:
    """Pure-Python busy work (bytecode all along: the exception is seen at once)."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return "finished"


def after_call_code(n: int = 2000) -> int:
    """Some bytecode run right after ``call`` returned: a stray Overrun would land here."""
    total = 0
    for i in range(n):
        total += i
    return total


def test_overrun_is_a_base_exception_not_an_exception():
    assert issubclass(Overrun, BaseException) and not issubclass(Overrun, Exception)


def test_a_10_second_busy_loop_is_cut_short_near_its_budget(wd):
    t0 = time.perf_counter()
    result, overran = wd.call(spin, 10.0, budget_ns=50 * MS)
    elapsed = time.perf_counter() - t0
    assert overran is True and result is None
    assert 0.05 <= elapsed < 2.0, f"cut after {elapsed:.3f} s (budget 0.05 s)"
    assert wd.fired == 1
    after_call_code()


def test_a_fast_call_returns_its_result(wd):
    assert wd.call(lambda a, b: a + b, 2, 3, budget_ns=1000 * MS) == (5, False)
    assert wd.call(spin, 0.01, budget_ns=2000 * MS) == ("finished", False)
    assert wd.fired == 0


def test_the_calls_exceptions_propagate_unchanged_and_leave_it_disarmed(wd):
    def boom():
        raise ValueError("plugin bug")

    with pytest.raises(ValueError, match="plugin bug"):
        wd.call(boom, budget_ns=1000 * MS)
    with pytest.raises(StopIteration):  # (the engine pulls iterators through call)
        wd.call(next, iter(()), budget_ns=1000 * MS)
    assert wd.call(int, "7", budget_ns=1000 * MS) == (7, False)  # re-armable: was disarmed


def test_except_exception_in_the_plugin_does_not_swallow_the_cut(wd):
    swallowed = []

    def careful_plugin():
        end = time.perf_counter() + 3.0  # (bounded, so that a swallowed cut fails, not hangs)
        while time.perf_counter() < end:
            try:
                spin(0.01)
            except Exception as e:  # noqa: BLE001 - what plugins do
                swallowed.append(e)

    t0 = time.perf_counter()
    assert wd.call(careful_plugin, budget_ns=50 * MS) == (None, True)
    assert time.perf_counter() - t0 < 2.0
    assert swallowed == []


def test_10000_quick_calls_never_raise_a_stray_overrun(wd):
    results = []
    try:
        for i in range(10_000):
            results.append(wd.call(abs, -i, budget_ns=2000 * MS))
            after_call_code(20)
    except Overrun:  # pragma: no cover - the failure being tested for
        pytest.fail("an Overrun escaped outside Watchdog.call")
    assert results == [(i, False) for i in range(10_000)]
    assert wd.fired == 0


def test_calls_ending_right_at_their_deadline_never_leak_the_exception(wd):
    """Budgets around the call's own duration: sometimes it finishes, sometimes it is cut,
    sometimes the watchdog fires as it returns.  The exception must never come out
    after call() returned, and a call reported as finished really finished."""
    rng = random.Random(5)
    outcomes = {True: 0, False: 0}
    try:
        for _ in range(300):
            d = rng.choice((0.5, 1.0, 2.0)) * 1e-3
            budget = int(d * 1e9 * rng.uniform(0.5, 1.5))
            result, overran = wd.call(spin, d, budget_ns=budget)
            assert overran or result == "finished"
            assert result is None or not overran
            outcomes[overran] += 1
            after_call_code()
    except Overrun:  # pragma: no cover - the failure being tested for
        pytest.fail("an Overrun escaped after Watchdog.call returned")
    assert outcomes[True] and outcomes[False], outcomes  # both sides of the race were hit


def test_a_call_blocked_in_c_code_is_only_cut_when_it_returns_and_nothing_leaks(wd):
    """time.sleep holds no bytecode: the exception is set while it sleeps and is either
    delivered on return (inside call) or cleared by disarm; never after call returned."""
    try:
        for _ in range(5):
            t0 = time.perf_counter()
            result, overran = wd.call(time.sleep, 0.1, budget_ns=10 * MS)
            assert overran is True and result is None
            assert time.perf_counter() - t0 >= 0.1  # documented: C code is not interrupted
            after_call_code(200_000)
    except Overrun:  # pragma: no cover
        pytest.fail("an Overrun escaped after Watchdog.call returned")


def test_arm_after_the_watchdog_went_idle_still_cuts(wd):
    w = Watchdog(idle_after_s=0.02)
    try:
        time.sleep(0.2)  # the watchdog thread sleeps with no deadline now
        t0 = time.perf_counter()
        assert w.call(spin, 10.0, budget_ns=30 * MS) == (None, True)
        assert time.perf_counter() - t0 < 2.0
        time.sleep(0.2)  # idle again, then a shorter budget than the last one
        assert w.call(spin, 10.0, budget_ns=5 * MS) == (None, True)
    finally:
        w.close()


def test_a_shorter_budget_than_the_last_one_is_honoured(wd):
    assert wd.call(spin, 0.001, budget_ns=5000 * MS)[1] is False  # the watchdog naps 5 s
    t0 = time.perf_counter()
    assert wd.call(spin, 10.0, budget_ns=20 * MS) == (None, True)
    assert time.perf_counter() - t0 < 2.0


def test_calls_do_not_nest(wd):
    def nested():
        return wd.call(abs, -1, budget_ns=1000 * MS)

    with pytest.raises(RuntimeError, match="nest"):
        wd.call(nested, budget_ns=1000 * MS)
    assert wd.call(abs, -2, budget_ns=1000 * MS) == (2, False)


def test_only_the_armed_thread_is_interrupted(wd):
    """Another thread busy at the same time is never hit."""
    hit = []

    def other():
        try:
            spin(0.5)
        except Overrun:  # pragma: no cover
            hit.append(True)

    t = threading.Thread(target=other)
    t.start()
    assert wd.call(spin, 10.0, budget_ns=50 * MS) == (None, True)
    t.join()
    assert hit == []


def test_arm_and_disarm_are_cheap(wd):
    n = 20_000
    t0 = time.perf_counter()
    for _ in range(n):
        wd.call(abs, 1, budget_ns=2000 * MS)
    per_call_us = (time.perf_counter() - t0) / n * 1e6
    assert per_call_us < 50, f"{per_call_us:.1f} us per guarded call"


def test_close_stops_the_thread():
    w = Watchdog()
    w.close()
    assert not w._thread.is_alive()


def test_the_engines_plugin_guard_uses_it_to_cut_calls_and_iterators(wd):
    """midi_bridge.core.faults.PluginGuard calls ``watchdog.call(fn, *args, budget_ns=...)``, also
    with ``next`` on a continuation's iterator (StopIteration passes through)."""
    from midi_bridge.core.faults import DONE, FAILED, PluginGuard

    guard = PluginGuard(budget_ms=20, max_overruns=2, watchdog=wd)
    t0 = time.perf_counter()
    assert guard.call(spin, 10.0) is None
    assert guard.overruns == 1 and time.perf_counter() - t0 < 2.0
    assert guard.call(abs, -3) == 3

    def notes():
        yield "first"
        spin(10.0)
        yield "second"

    it = notes()
    assert guard.next(it) == "first"
    assert guard.next(it) is FAILED
    assert guard.overruns == 2
    assert guard.next(iter(())) is DONE


def test_an_accompany_written_as_a_generator_function_is_cut_too(wd):
    """``accompany`` returning a lazy iterable (a generator function with ``yield``): the
    plugin's work runs while the engine iterates it, and that must be under the budget too,
    not outside the watchdog."""
    from helpers import Intervals, Rig, unmatched
    from midi_bridge.plugin import Note

    class LazySlow(Intervals):
        def accompany(self, event, context):
            yield Note(event.pitch + 4)
            spin(0.5)                       # far over the 25 ms budget
            yield Note(event.pitch + 7)

    rig = Rig({"i": LazySlow}, engine={"mode": "accompany", "max_overruns": 3})
    rig.engine.guard_calls.watchdog = wd
    rig.tap(0, 60)
    assert rig.engine.stats["overruns"] == 1, "the lazy accompaniment ran outside the budget"
    assert rig.note_ons() == [], "an overrun call's output is skipped"
    assert unmatched(rig.msgs()) == {}


def test_a_call_stuck_in_c_code_calls_on_stall_once_while_it_is_stuck():
    """A call blocked in C (here time.sleep) cannot be cut; on_stall runs once, while the
    call is still stuck, holding the lock that disarm needs (so the engine thread cannot
    leave the call and send meanwhile)."""
    seen = []
    box = {}

    def on_stall():
        seen.append(("stall", box.get("returned", False)))
        time.sleep(0.2)  # the stuck call returns meanwhile: call() must wait for this

    w = Watchdog(stall_after_s=0.1, on_stall=on_stall)
    try:
        def stuck():
            time.sleep(0.5)
            box["returned"] = True

        result, overran = w.call(stuck, budget_ns=10 * MS)
        seen.append("call returned")
        assert overran and result is None
        assert seen == [("stall", False), "call returned"]
        assert w.stalls == 1
        # a call that is cut (Python code) or returns in time never stalls
        assert w.call(spin, 2.0, budget_ns=20 * MS) == (None, True)
        assert w.call(lambda: 7, budget_ns=50 * MS) == (7, False)
        time.sleep(0.3)
        assert w.stalls == 1
    finally:
        w.close()
