"""``bench model``'s computations (a benchmark, not a timed test: the clock is faked)."""

from __future__ import annotations

import statistics
import sys
import types

import pytest

from midi_bridge.bench import events
from midi_bridge.bench import model as bench


class _Stepper:
    """Event i of a session costs i us on the fake clock."""

    def __init__(self) -> None:
        self.now, self.i = 0.0, 0

    def reset(self) -> None:
        self.i = 0

    def feed(self, _event) -> None:
        self.i += 1
        self.now += self.i * 1e-6

    def sample(self, *_a) -> tuple:
        return (0, 0, 0, 0)


def _session(monkeypatch, n: int) -> dict:
    st = _Stepper()
    monkeypatch.setattr(bench.time, "perf_counter", lambda: st.now)
    return bench.long_session(st, n)


@pytest.mark.parametrize("n", [2000, 500])
def test_session_windows_are_from_event_100_and_the_last_500(monkeypatch, n):
    """event_100_us: median of the 500 events from event 100 on; event_<n>_us: of the last
    500 -- never of the session's first 99 events, however short the session."""
    r = _session(monkeypatch, n)
    assert r["event_100_us"] == pytest.approx(statistics.median(range(100, min(600, n + 1))), abs=0.11)
    assert r[f"event_{n}_us"] == pytest.approx(statistics.median(range(max(100, n - 499), n + 1)), abs=0.11)


def test_a_session_too_short_for_event_100_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="at least 100"):
        _session(monkeypatch, 50)


def test_resident_memory_is_in_kilobytes_on_macos(monkeypatch):
    """Without /proc (macOS), ru_maxrss is in bytes there (kilobytes on Linux)."""
    def no_proc(*_a, **_k):
        raise OSError("no /proc")

    monkeypatch.setattr("builtins.open", no_proc)
    monkeypatch.setattr(events.resource, "getrusage", lambda _who: types.SimpleNamespace(ru_maxrss=300 * 1024 * 1024))
    monkeypatch.setattr(sys, "platform", "darwin")
    assert events._rss_kb() == 300 * 1024
    monkeypatch.setattr(sys, "platform", "linux")
    assert events._rss_kb() == 300 * 1024 * 1024  # (there ru_maxrss is already kB)


def test_cli_refuses_a_session_too_short_for_event_100(capsys):
    args = types.SimpleNamespace(device="cpu", long=50, checkpoint=None, events=10, int8=False, notochord=False,
                                 json=True, gan="none")
    assert bench.cmd_bench(args) == 2
    assert "--long 50" in capsys.readouterr().err


def test_int8_rows_are_not_float32_under_another_name(monkeypatch):
    """Where this torch has no fbgemm (Apple Silicon, Linux on ARM) the step stays float32:
    no row may then be labelled int8."""
    from midi_bridge.model import step

    monkeypatch.setattr(step, "_prepack_int8", lambda w, b: None)
    res = bench.run(events=3, long=0, int8=True, gan_path="none")
    assert [r for r in res["rows"] if r.get("variant") == "int8"] == []
    assert "fbgemm" in res["int8_skipped"]
    assert sum(bool(r.get("default")) for r in res["rows"]) == 1


class _PartsStepper(_Stepper):
    """A fake step with the parts the profiling pass times: on the fake clock the cache
    costs 2 us, the cells 5, the heads 1 + 3 x 1 and the rest of the event 7."""

    def feed(self, _event) -> None:
        self._cache_step()
        self._net()
        self._head0()
        self.now += 3e-6

    def sample(self, *_a) -> tuple:
        for k in (1, 2, 3):
            self._next(k)
        self.now += 4e-6
        return (0, 0, 0, 0)

    def _cache_step(self):
        self.now += 2e-6

    def _net(self):
        self.now += 5e-6

    def _head0(self):
        self.now += 1e-6

    def _next(self, k):
        self.now += 1e-6


def test_profile_parts_splits_the_event(monkeypatch):
    st = _PartsStepper()
    monkeypatch.setattr(bench.time, "perf_counter", lambda: st.now)
    parts = bench.profile_parts(st, 50, warm=5)
    assert parts == pytest.approx({"cache_us": 2.0, "net_us": 5.0, "heads_us": 4.0, "sample_us": 7.0}, abs=0.11)
    assert "_net" not in vars(st)  # the wrappers are gone afterwards
    assert bench.profile_parts(_Stepper(), 5) == {}  # (a stepper without those parts)


def test_rows_say_where_the_event_goes(monkeypatch):
    """Every row reports the network / heads / sampling / in-piece statistics split."""
    monkeypatch.setattr(bench, "LARGER", ())
    res = bench.run(events=20, long=0, gan_path="none")
    assert {r["kind"] for r in res["rows"]} == {"lstm", "gru"}
    for r in res["rows"]:
        for key in ("net_us", "heads_us", "sample_us", "cache_us", "params"):
            assert r[key] >= 0, key


def test_interleaved_compares_a_session_at_event_n_with_a_fresh_one_at_event_100(monkeypatch):
    """The two steppers take turns (blocks of 25 events) on one clock: the drift of the
    machine falls on both, and what is left is the growth of the session's own state."""
    clock = [0.0]

    class Shared(_Stepper):
        def feed(self, _event) -> None:
            self.i += 1
            clock[0] += self.i * 1e-6

    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    late = Shared()
    r = bench.long_session(late, 2000, make=Shared)
    assert r["interleaved_event_100_us"] == pytest.approx(statistics.median(range(100, 600)), abs=0.11)
    assert r["interleaved_event_2000_us"] == pytest.approx(statistics.median(range(2001, 2501)), abs=0.11)
    assert r["growth"] == pytest.approx(2250.5 / 349.5, abs=1e-3)
