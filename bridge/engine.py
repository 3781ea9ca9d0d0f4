"""The engine: what happens to each played event, in every interaction mode.

The engine is a state machine driven from one thread (see :mod:`bridge.loop` for the
live thread, :mod:`bridge.render` for simulated time).  ``handle`` takes one input item,
``tick`` does what is due at ``now`` and ``next_deadline`` says when to wake next; there
is no polling.  Per event the work is bounded: one generator call, a few heap
operations, never anything proportional to the length of the session.

Modes:

* ``thru``: played messages go out unchanged (or remapped), nothing else.
* ``accompany``: for each played note-on the generator's notes start with it and end
  when it is released.
* ``continue``: call and response.  A phrase ends when all keys are up and no note
  came for ``phrase.silence_ms``, once it has ``phrase.min_notes`` notes; the
  generator's continuation is then pulled lazily, ``continuation.lookahead_ms`` ahead of
  each note, up to ``continuation.max_notes``/``max_beats``.  Playing again interrupts
  it: everything it sounds is ended at once.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any, Callable, Iterator

from . import midi
from .clock import Tempo
from .guard import FeedbackGuard
from .host import GeneratorHost
from .plugin import Context, Generator, Note, PlayedEvent, PluginError
from .scheduler import Scheduler

log = logging.getLogger(__name__)

CONT = "cont"
THRU = "thru"


class Engine:
    def __init__(self, config: dict[str, Any], send: Callable[[tuple[int, ...]], None],
                 host: GeneratorHost, now_ns: int = 0) -> None:
        self.cfg = config
        eng, ph, co, out = config["engine"], config["phrase"], config["continuation"], config["output"]
        self.mode: str = eng["mode"]
        self.out_channel: int = eng["output_channel"]
        self.tempo = Tempo(eng["bpm"], now_ns)
        self._send = send
        self.sched = Scheduler(self._emit, burst=out["burst"], rate_per_ms=out["rate_per_ms"],
                               max_note_ns=self.tempo.beats_to_ns(eng["max_note_beats"]))
        self.guard = FeedbackGuard(int(config["input"]["feedback_window_ms"] * 1e6))
        self.channels = config["input"]["channels"]  # None: all
        self.thru_on: bool = config["thru"]["enabled"]
        self.thru_channel = config["thru"]["channel"]  # None: same as played
        ctl = config["control"]
        self.control_channel: int = ctl["channel"]
        self.program_change: bool = ctl["program_change"]
        self.next_cc = ctl["next_cc"]
        self.silence_ns = int(ph["silence_ms"] * 1e6)
        self.min_notes: int = ph["min_notes"]
        self.max_notes: int = co["max_notes"]
        self.max_beats: float = co["max_beats"]
        self.lookahead_ns = int(co["lookahead_ms"] * 1e6)
        self.max_note_beats: float = eng["max_note_beats"]

        self.host = host
        self.gen: Generator | None = None
        self.gen_name: str | None = None
        self._now = now_ns
        self._origin = now_ns
        self.held: set[tuple[int, int]] = set()
        self.phrase: deque[PlayedEvent] = deque(maxlen=ph["max_notes"])
        self.phrase_notes = 0
        self.last_input_ns: int | None = None
        self._cont: Iterator[Note] | None = None
        self._cont_t0 = 0
        self._cont_count = 0
        self._cont_skipped = 0
        self._cont_next: Note | None = None
        self._cont_until = 0  # when the last note of the answer ends
        self.stats = {"events_in": 0, "notes_in": 0, "malformed": 0, "echoes": 0, "filtered": 0,
                      "plugin_errors": 0, "bad_notes": 0, "answers": 0, "interrupted": 0,
                      "swaps": 0, "system": 0}
        self._warned: set[str] = set()

    # -- generator selection ----------------------------------------------------------

    def set_generator(self, name: str, gen: Generator) -> None:
        """Make ``gen`` current; checks the mode (raises PluginError if unsupported)."""
        if self.mode != "thru" and self.mode not in gen.modes:
            raise PluginError(f"generator '{name}' does not support mode '{self.mode}' "
                              f"(it supports: {', '.join(sorted(gen.modes)) or 'none'})")
        if self.gen is not None:
            self._end_everything(self._now)
            self.stats["swaps"] += 1
            log.info("generator: %s -> %s", self.gen_name, name)
        self.gen, self.gen_name = gen, name
        self._call(gen.reset)

    def _swap_ready(self, name: str, gen: Generator | None, err: str) -> None:
        if gen is None:
            log.error("swap to '%s' failed: %s (keeping '%s')", name, err, self.gen_name)
            return
        try:
            self.set_generator(name, gen)
        except PluginError as e:
            log.warning("swap refused: %s (keeping '%s')", e, self.gen_name)

    def request_swap(self, selector: str | int) -> None:
        name = self.host.resolve(selector, self.gen_name)
        if name is not None and name != self.gen_name:
            self.host.request(name, self._swap_ready)

    # -- input ----------------------------------------------------------------------------

    def handle(self, item: tuple, now: int) -> None:
        """One item from the input queue: ``(t_ns, source, data)`` or a control tuple."""
        self._now = now
        if item[0] == "swap":
            self._swap_ready(item[1], item[2], item[3])
            return
        t, _src, data = item
        self.stats["events_in"] += 1
        try:
            msg = midi.parse(data)
        except midi.MalformedMidi as e:
            self.stats["malformed"] += 1
            self._warn_once("malformed", f"ignored malformed MIDI input ({e}); "
                                         "check the device or the routing (counted in stats)")
            return
        if self.guard.is_echo(msg, t):
            self.stats["echoes"] += 1
            self._warn_once("echo", "the bridge's own output is coming back on its input "
                                    "(feedback loop: do not route 'out' back to 'in'); echoes are ignored")
            return
        status = msg[0]
        if status >= 0xF0:
            self.stats["system"] += 1
            return
        ch, kind = status & 0x0F, status & 0xF0
        if ch == self.control_channel and self._control(kind, msg):
            return
        if self.channels is not None and ch not in self.channels:
            self.stats["filtered"] += 1
            return
        if kind == midi.NOTE_ON or kind == midi.NOTE_OFF:
            self._note(now, kind == midi.NOTE_ON, ch, msg[1], msg[2])
        elif self.thru_on or self.mode == "thru":
            self.sched.message(now, self._thru_remap(msg), THRU)
        self.sched.pump(now)

    def _control(self, kind: int, msg: tuple[int, ...]) -> bool:
        if kind == midi.PROGRAM and self.program_change:
            self.request_swap(msg[1])
            return True
        if kind == midi.CONTROL and self.next_cc is not None and msg[1] == self.next_cc:
            if msg[2] >= 64:
                self.request_swap("next")
            return True
        return False

    def _thru_remap(self, msg: tuple[int, ...]) -> tuple[int, ...]:
        if self.thru_channel is None:
            return msg
        return ((msg[0] & 0xF0) | self.thru_channel,) + msg[1:]

    def _note(self, now: int, on: bool, ch: int, pitch: int, velocity: int) -> None:
        self.stats["notes_in"] += on
        if on and (self._cont is not None or now < self._cont_until):
            self._interrupt(now)
        if self.thru_on or self.mode == "thru":
            tch = ch if self.thru_channel is None else self.thru_channel
            if on:
                self.sched.note(now, None, tch, pitch, velocity, THRU, safety=False)
            else:
                self.sched.release(now, tch, pitch, THRU, velocity)
            self.sched.pump(now)  # the played note goes out before any generator work
        if self.mode == "thru" or self.gen is None:
            return
        ev = PlayedEvent(on, pitch, velocity, ch, self.tempo.beat_at(now), (now - self._origin) / 1e9)
        key = (ch, pitch)
        if on:
            self.held.add(key)
            self.phrase.append(ev)
            self.phrase_notes += 1
        else:
            self.held.discard(key)
        self.last_input_ns = now
        self._call(self.gen.observe, ev)
        if self.mode == "accompany":
            tag = ("acc", ch, pitch)
            self.sched.end_tag(now, tag)  # a re-pressed key ends its old accompaniment
            if on:
                notes = self._call(self.gen.accompany, ev, self._context(now))
                try:
                    notes = list(notes or ())
                except Exception as e:  # noqa: BLE001 - not a sequence of notes
                    self._plugin_error("accompany", e)
                    notes = []
                for n in notes:
                    if self._valid(n):
                        t_on = now + self.tempo.beats_to_ns(n.start)
                        t_off = None if n.duration is None else t_on + self.tempo.beats_to_ns(n.duration)
                        self.sched.note(t_on, t_off, self._channel(n), n.pitch, n.velocity, tag)

    # -- continuation -----------------------------------------------------------------------

    def _context(self, now: int) -> Context:
        return Context(self.tempo.bpm, self.tempo.beat_at(now), self.max_notes, self.max_beats,
                       tuple(self.phrase))

    def _phrase_end_at(self) -> int | None:
        if (self.mode != "continue" or self._cont is not None or self.held or self.gen is None
                or self.phrase_notes < self.min_notes or self.last_input_ns is None):
            return None
        return self.last_input_ns + self.silence_ns

    def _start_continuation(self, now: int) -> None:
        ctx = self._context(now)
        self.phrase.clear()
        self.phrase_notes = 0
        it = self._call(self.gen.continuation, ctx)
        if it is None:
            return
        try:
            it = iter(it)
        except TypeError as e:
            self._plugin_error("continuation", e)
            return
        self.stats["answers"] += 1
        self._cont, self._cont_t0, self._cont_count, self._cont_next = it, now, 0, None
        self._cont_skipped = 0

    def _pull(self, now: int) -> None:
        """Schedule the answer's notes that start within the lookahead, pulling lazily."""
        while self._cont is not None:
            n = self._cont_next
            if n is None:
                try:
                    n = next(self._cont)
                except StopIteration:
                    self._end_continuation()
                    return
                except Exception as e:  # noqa: BLE001 - a plugin bug must not stop the bridge
                    self._plugin_error("continuation", e)
                    self._end_continuation()
                    return
                if not self._valid(n, need_duration=True):
                    self._cont_skipped += 1
                    if self._cont_skipped >= self.max_notes:  # only garbage: give up
                        self._end_continuation()
                        return
                    continue
                if self._cont_count >= self.max_notes or n.start >= self.max_beats:
                    self._end_continuation()
                    return
                self._cont_next = n
            t_on = self._cont_t0 + self.tempo.beats_to_ns(n.start)
            if t_on > now + self.lookahead_ns:
                return
            beats = min(n.duration, self.max_note_beats, self.max_beats - n.start)
            t_off = t_on + max(1, self.tempo.beats_to_ns(beats))
            self.sched.note(t_on, t_off, self._channel(n), n.pitch, n.velocity, CONT)
            self._cont_until = max(self._cont_until, t_off)
            self._cont_count += 1
            self._cont_next = None

    def _end_continuation(self) -> None:
        it, self._cont, self._cont_next = self._cont, None, None
        close = getattr(it, "close", None)
        if close is not None:
            self._call(close)

    def _interrupt(self, now: int) -> None:
        """The player plays again: stop the answer and end everything it sounds."""
        self.stats["interrupted"] += 1
        self._end_everything(now)

    def _end_everything(self, now: int) -> None:
        self._end_continuation()
        self._cont_until = 0
        self.sched.panic(now)
        self.sched.pump(now)

    # -- time -------------------------------------------------------------------------------

    def tick(self, now: int) -> None:
        """Do what is due at ``now``: phrase end, pulling the answer, sending."""
        self._now = now
        end = self._phrase_end_at()
        if end is not None and now >= end:
            self._start_continuation(now)
        if self._cont is not None:
            self._pull(now)
        self.sched.pump(now)

    def next_deadline(self, now: int) -> int | None:
        deadlines = [self.sched.next_deadline(now), self._phrase_end_at()]
        if self._cont is not None:
            n = self._cont_next
            deadlines.append(now if n is None else
                             self._cont_t0 + self.tempo.beats_to_ns(n.start) - self.lookahead_ns)
        live = [d for d in deadlines if d is not None]
        return min(live) if live else None

    def stop(self, now: int) -> None:
        """End every note (note-offs, CC64=0, CC123 per channel used); the caller drains."""
        self._now = now
        self._end_everything(now)

    # -- helpers ------------------------------------------------------------------------------

    def _emit(self, msg: tuple[int, ...]) -> None:
        self.guard.sent(msg, self._now)
        self._send(msg)

    def _channel(self, n: Note) -> int:
        return self.out_channel if n.channel is None else n.channel

    def _valid(self, n: Any, need_duration: bool = False) -> bool:
        ok = (isinstance(n, Note) and isinstance(n.pitch, int) and 0 <= n.pitch <= 127
              and isinstance(n.velocity, int) and 1 <= n.velocity <= 127
              and (n.channel is None or (isinstance(n.channel, int) and 0 <= n.channel <= 15))
              and isinstance(n.start, (int, float)) and math.isfinite(n.start) and n.start >= 0
              and (n.duration is None and not need_duration
                   or isinstance(n.duration, (int, float)) and math.isfinite(n.duration) and n.duration > 0))
        if not ok:
            self.stats["bad_notes"] += 1
            self._warn_once("bad_note", f"generator '{self.gen_name}' produced an invalid note {n!r}; "
                                        "skipped (pitch/velocity 0-127, start >= 0, finite duration > 0)")
        return ok

    def _call(self, fn: Callable, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - a plugin bug must not stop the bridge
            self._plugin_error(getattr(fn, "__name__", "call"), e)
            return None

    def _plugin_error(self, where: str, e: BaseException) -> None:
        self.stats["plugin_errors"] += 1
        if f"err:{where}" not in self._warned:
            self._warned.add(f"err:{where}")
            log.error("generator '%s' raised in %s: %s: %s (the bridge keeps running; "
                      "further errors are counted)", self.gen_name, where, type(e).__name__, e,
                      exc_info=e)

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(text)
