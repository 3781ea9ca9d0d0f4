"""``next`` (the status screen's ``n``, a next pad or CC) skips generators that cannot play
the current mode: one loaded without it, one refused at load; one not loaded yet is tried once."""

from __future__ import annotations

import logging

from midi_bridge.runtime import discovery
from midi_bridge.runtime.host import GeneratorHost

from helpers import Intervals, Melody, Rig


class Other(Melody):
    pass


class _EntryPoint:
    def __init__(self, cls) -> None:
        self.cls, self.loads = cls, 0

    def load(self):
        self.loads += 1
        return self.cls


def test_next_twice_cycles_over_the_generators_that_can_play_the_mode(caplog):
    rig = Rig({"a": Melody, "b": Intervals, "c": Other}, start="a")  # b: accompany only
    assert rig.engine.mode == "continue"
    with caplog.at_level(logging.WARNING):
        rig.engine.command("next")
        assert rig.engine.gen_name == "c"
        rig.engine.command("next")
        assert rig.engine.gen_name == "a"
        rig.engine.command("next")
        assert rig.engine.gen_name == "c"
    assert "refused" not in caplog.text
    assert rig.engine.stats["swaps"] == 3


def test_a_generator_not_loaded_yet_is_tried_once_then_skipped(caplog):
    rig = Rig({"a": Melody, "b": Intervals, "c": Other}, start="a")
    b = rig.host.plugins["b"]
    b.status, b.modes, b.cls = "not loaded", (), None   # as discovered: not imported yet
    b._ep = _EntryPoint(Intervals)
    with caplog.at_level(logging.WARNING):
        rig.engine.command("next")             # b is tried: it loads, cannot play 'continue'
    assert rig.engine.gen_name == "a"
    assert "does not support mode 'continue'" in caplog.text
    assert b.status == "ok" and "continue" not in b.modes
    rig.engine.command("next")                 # now known: skipped
    assert rig.engine.gen_name == "c"
    rig.engine.command("next")
    assert rig.engine.gen_name == "a"
    assert b._ep.loads == 1


def test_resolve_next_skips_refused_and_unknown_and_stays_when_nothing_else_fits():
    infos = {n: discovery.PluginInfo(n, f"m:{n}", "d", "1") for n in "abc"}
    for info in infos.values():
        info.status, info.modes = "ok", ("continue",)
    infos["b"].status = "error"                # refused at load
    host = GeneratorHost({}, order=["a", "b", "x", "c"], plugins=infos, post=None)
    assert host.resolve("next", "a", "continue") == "c"   # b refused, x not installed
    assert host.resolve("next", "c", "continue") == "a"
    assert host.resolve("next", "a", "thru") == "c"      # thru: any loaded one is fine
    assert host.resolve("next", "a") == "b"              # no mode: the order as it is
    infos["c"].modes = ("accompany",)
    assert host.resolve("next", "a", "continue") == "a"   # nothing else can: stays
    assert host.resolve("next", None, "continue") == "a"
