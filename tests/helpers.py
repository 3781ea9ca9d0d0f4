"""Shared fakes for the engine tests: a manual clock, an in-memory output sink, fake plugins.

Nothing here sleeps: time is a :class:`midi_bridge.core.clock.SimClock` moved by hand, and the
engine's deadlines are visited in order with :func:`midi_bridge.commands.render.run_until`, exactly as
``midi-bridge render`` drives it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

from midi_bridge.commands import config as config_mod
from midi_bridge.core import midi
from midi_bridge.core.clock import SimClock
from midi_bridge.runtime.discovery import PluginInfo
from midi_bridge.core.engine import Engine
from midi_bridge.core.messages import Input
from midi_bridge.runtime.host import GeneratorHost
from midi_bridge.plugin import MODES, Context, Generator, Note, PlayedEvent
from midi_bridge.commands.render import run_until

MS = 1_000_000
BEAT_MS = 500  # at the default 120 bpm


def make_config(**sections: dict[str, Any]) -> dict[str, Any]:
    """The built-in defaults with some keys replaced (raw values, as written in YAML)."""
    raw = config_mod.defaults_raw()
    for section, values in sections.items():
        if isinstance(raw[section], dict) and section != "generators":
            raw[section].update(values)
        else:
            raw[section] = values
    return config_mod.validate(raw)


def plugin_info(name: str, cls: type) -> PluginInfo:
    """A discovery record for an already imported class (status ok, nothing to import)."""
    info = PluginInfo(name, f"tests:{cls.__name__}", "fake-dist", "9.9")
    info.cls = cls
    info.status = "ok"
    info.modes = tuple(m for m in MODES if m in cls.modes)
    return info


#: The clock of the rig built last: fake generators stamp what they do with it.
CLOCK = SimClock(0)


class Melody(Generator):
    """``continue``: answers every phrase with ``NOTES`` = (pitch, start, duration[, channel]).

    Records the clock time of every note pulled, every context and every close."""

    modes = frozenset({"continue"})
    NOTES: list[tuple] = [(72, 0.0, 0.5), (74, 0.5, 0.5), (76, 1.0, 0.5), (77, 1.5, 0.5)]

    def __init__(self, config=None) -> None:
        super().__init__(config)
        self.pulls: list[int] = []      # clock ns of each note handed out
        self.closed = 0                  # how many continuations ran their finally
        self.contexts: list[Context] = []
        self.observed: list[PlayedEvent] = []
        self.resets = 0
        self.iterators: list = []

    def reset(self) -> None:
        self.resets += 1

    def observe(self, event: PlayedEvent) -> None:
        self.observed.append(event)

    def continuation(self, context: Context):
        self.contexts.append(context)
        return self._answer(self.NOTES)

    def _answer(self, notes):
        # Keep a reference so that only the engine's close() runs the finally (not the
        # garbage collector freeing a dropped generator).
        it = self._notes(notes)
        self.iterators.append(it)
        return it

    def _notes(self, notes):
        try:
            for spec in notes:
                pitch, start, duration, *ch = spec
                self.pulls.append(CLOCK.t)
                yield Note(pitch, 90, start, duration, ch[0] if ch else None)
        finally:
            self.closed += 1


class Endless(Melody):
    """``continue``: an endless answer, one note every ``STEP`` beats lasting ``LENGTH``."""

    STEP = 0.25
    LENGTH = 0.5

    def continuation(self, context: Context):
        self.contexts.append(context)

        def notes():
            i = 0
            while True:
                yield (60 + i % 12, i * self.STEP, self.LENGTH)
                i += 1
        return self._answer(notes())


class Intervals(Generator):
    """``accompany``: the played pitch plus ``INTERVALS``, ending with the played note."""

    modes = frozenset({"accompany"})
    INTERVALS = (4, 7)
    START = 0.0
    DURATION: float | None = None
    CHANNEL: int | None = None

    def __init__(self, config=None) -> None:
        super().__init__(config)
        self.observed: list[PlayedEvent] = []
        self.asked: list[PlayedEvent] = []

    def observe(self, event: PlayedEvent) -> None:
        self.observed.append(event)

    def accompany(self, event: PlayedEvent, context: Context):
        self.asked.append(event)
        return [Note(event.pitch + i, event.velocity, self.START, self.DURATION, self.CHANNEL)
                for i in self.INTERVALS]


class Both(Melody, Intervals):
    """Supports both modes."""

    modes = frozenset({"continue", "accompany"})

    def __init__(self, config=None) -> None:
        Melody.__init__(self, config)
        self.asked = []


class Rig:
    """An engine with in-memory ports: ``out`` records ``(clock ns, message)`` sent."""

    def __init__(self, plugins: dict[str, type] | None = None, start: str | None = None,
                 **sections: dict[str, Any]) -> None:
        # Speculation adds continuation calls that are then discarded; the tests that count
        # contexts and pulls turn it off, the speculation tests turn it on.
        cont = dict(sections.get("continuation", {}))
        cont.setdefault("speculate", False)
        sections["continuation"] = cont
        self.cfg = make_config(**sections)
        self.clock = SimClock(0)
        global CLOCK
        CLOCK = self.clock
        self.out: list[tuple[int, tuple[int, ...]]] = []
        infos = {n: plugin_info(n, c) for n, c in (plugins or {}).items()}
        self.host = GeneratorHost(self.cfg["generators"], self.cfg["control"]["order"],
                                  plugins=infos, post=None)
        self.engine = Engine(self.cfg, send=self._sink, host=self.host, now_ns=0)
        if start is None and plugins and self.cfg["engine"]["mode"] != "thru":
            start = next(iter(plugins))
        if start is not None:
            self.engine.set_generator(start, self.host.get(start))

    @property
    def gen(self):
        return self.engine.gen

    def _sink(self, msg) -> None:
        self.out.append((self.clock.t, tuple(msg)))

    # -- driving --------------------------------------------------------------------------

    def advance(self, t_ms: float) -> None:
        """Visit every deadline up to ``t_ms`` and stop there."""
        t = int(t_ms * MS)
        assert t >= self.clock.t, f"test error: time goes back to {t_ms} ms"
        run_until(self.engine, self.clock, t)
        self.clock.advance_to(t)
        self.engine.tick(self.clock.t)

    def send(self, t_ms: float, *data: int) -> None:
        """A raw message arrives at ``t_ms`` (stamped with that time)."""
        self.advance(t_ms)
        self.engine.handle(Input(self.clock.t, 0, list(data)), self.clock.t)
        self.engine.tick(self.clock.t)

    def on(self, t_ms: float, pitch: int, velocity: int = 100, ch: int = 0) -> None:
        self.send(t_ms, 0x90 | ch, pitch, velocity)

    def off(self, t_ms: float, pitch: int, ch: int = 0) -> None:
        self.send(t_ms, 0x80 | ch, pitch, 0)

    def tap(self, t_ms: float, pitch: int, length_ms: float = 100, ch: int = 0) -> None:
        self.on(t_ms, pitch, ch=ch)
        self.off(t_ms + length_ms, pitch, ch=ch)

    def stop(self) -> None:
        """Engine.stop, then let every paced message leave."""
        self.engine.stop(self.clock.t)
        run_until(self.engine, self.clock, self.clock.t + 60_000 * MS)

    def mark(self) -> int:
        """Index into ``out`` to look at what is sent from now on."""
        return len(self.out)

    # -- looking at the output ------------------------------------------------------------

    def msgs(self, since: int = 0) -> list[tuple[int, ...]]:
        return [m for _, m in self.out[since:]]

    def timed(self, since: int = 0) -> list[tuple[float, tuple[int, ...]]]:
        return [(t / MS, m) for t, m in self.out[since:]]

    def note_ons(self, since: int = 0) -> list[tuple[float, int, int]]:
        """(time ms, channel, pitch) of every note-on sent."""
        return [(t / MS, m[0] & 0x0F, m[1]) for t, m in self.out[since:] if is_on(m)]

    def note_offs(self, since: int = 0) -> list[tuple[float, int, int]]:
        return [(t / MS, m[0] & 0x0F, m[1]) for t, m in self.out[since:] if is_off(m)]


def is_on(m: tuple[int, ...]) -> bool:
    return len(m) == 3 and m[0] & 0xF0 == midi.NOTE_ON and m[2] > 0


def is_off(m: tuple[int, ...]) -> bool:
    return len(m) == 3 and (m[0] & 0xF0 == midi.NOTE_OFF or (m[0] & 0xF0 == midi.NOTE_ON and m[2] == 0))


def is_cc(m: tuple[int, ...], number: int | None = None) -> bool:
    return len(m) == 3 and m[0] & 0xF0 == midi.CONTROL and (number is None or m[1] == number)


def unmatched(msgs: Iterable[tuple[int, ...]]) -> dict[tuple[int, int], int]:
    """Notes left sounding: every note-on must be ended by a note-off (CC123 does not count).

    A second note-on of a sounding (channel, pitch) is itself a fault: the scheduler must
    end the old note first, so it is reported as a count above 1.
    """
    sounding: Counter = Counter()
    doubled: Counter = Counter()
    for m in msgs:
        key = (m[0] & 0x0F, m[1]) if len(m) == 3 else None
        if is_on(m):
            if sounding[key]:
                doubled[key] += 1
            sounding[key] += 1
        elif is_off(m) and sounding[key]:
            sounding[key] -= 1
    left = {k: v for k, v in sounding.items() if v}
    for k, v in doubled.items():
        left[k] = left.get(k, 0) + v
    return left
