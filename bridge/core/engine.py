"""The engine: what happens to each played event, in every interaction mode.

The engine is a state machine driven from one thread (see :mod:`midi_bridge.runtime.loop` for the
live thread, :mod:`midi_bridge.commands.render` for simulated time).  ``handle`` takes one input item,
``tick`` does what is due at ``now`` and ``next_deadline`` says when to wake next; there
is no polling.  Per event the work is bounded: one generator call, a few heap
operations, never anything proportional to the length of the session.

Modes (:mod:`.modes`): ``thru`` (every played channel message goes out as played, or
remapped; a note-off for a note the bridge did not see start too), ``accompany`` (the
generator's notes start with each played note-on and end when it is released) and
``continue`` (when the phrase ends (:mod:`.phrase`) the generator's answer plays
(:mod:`.player`) until it is over or the player plays again).  Transport Stop ends every
note the bridge started and resets the phrase; Start rewinds.

Its parts: the timeline (:mod:`.timeline`: tempo, MIDI clock, beats), the phrase
(:mod:`.phrase`), the generator slot (:mod:`.slot`: the active generator, swaps, faults:
a generator that raises or overruns its budget too often is replaced by the previous
one, or by thru), the answer player (:mod:`.player`) and the live controls
(:mod:`.control`: mapped CCs and notes, and :class:`~.messages.Command` items from the
terminal).  Every input event is counted in exactly one of :data:`ACCOUNTED`.

One send path, :meth:`Engine._send_due`: the slot's guard calls it before every generator
call (what is played leaves before any generator work) and every entry point ends with it.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from midi_bridge.plugin import Context, Generator, PlayedEvent

from . import midi
from .control import CONTROL, LiveControls
from .guard import FeedbackGuard
from .messages import Command, Swap
from .modes import MODES, THRU
from .phrase import Phrase
from .player import CONT, MAX_ACCOMPANY, AnswerPlayer
from .scheduler import Scheduler
from .slot import GeneratorSlot, Host
from .timeline import Timeline
from .view import EngineView, view

log = logging.getLogger(__name__)

__all__ = ["ACCOUNTED", "CONT", "CONTROL", "MAX_ACCOMPANY", "MODES", "THRU", "Engine"]


#: Every input event is counted in exactly one of these ``stats`` keys:
#: ``stats["events_in"] == sum(stats[k] for k in ACCOUNTED)``.
ACCOUNTED = ("malformed", "echoes", "system", "control", "filtered", "notes_in", "notes_off", "other")


class Engine:
    def __init__(self, config: dict[str, Any], send: Callable[[tuple[int, ...]], None],
                 host: Host, now_ns: int = 0) -> None:
        self.cfg = config
        eng, out = config["engine"], config["output"]
        self.mode: str = eng["mode"]
        self.out = send  # the output sink (live: Ports.send)
        self._now = now_ns
        self._origin = now_ns
        self.timeline = Timeline(eng["bpm"], now_ns, config["clock"])
        self.sched = Scheduler(self._emit, burst=out["burst"], rate_per_ms=out["rate_per_ms"],
                               max_note_ns=self.timeline.tempo.beats_to_ns(eng["max_note_beats"]))
        self.sched.passthrough = THRU  # thru: a note-off for a note nobody sounds passes
        self.guard = FeedbackGuard(int(config["input"]["feedback_window_ms"] * 1e6))
        self.channels = config["input"]["channels"]  # None: all
        self.thru_on: bool = config["thru"]["enabled"]
        self.thru_channel = config["thru"]["channel"]  # None: same as played
        self.stats = {"events_in": 0, "notes_in": 0, "notes_off": 0, "other": 0, "control": 0,
                      "malformed": 0, "echoes": 0, "filtered": 0,
                      "plugin_errors": 0, "overruns": 0, "replaced": 0, "bad_notes": 0,
                      "answers": 0, "interrupted": 0, "swaps": 0, "system": 0, "speculated": 0,
                      "speculation_used": 0, "thinned": 0, "ratings": 0, "commands": 0}
        self._warned: set[str] = set()
        #: Optional hooks set by the live runner: a recorder (inp/out/marker/tempo), the
        #: ratings sink (one dict per rating) and a latency window (add(t, latency_ns)).
        self.recorder = None
        self.on_rating: Callable[[dict], None] | None = None
        self.latency: Any = None
        self.wall_ns: Callable[[], int] | None = None   # real clock for latency samples
        self.phrase = Phrase(config["phrase"])
        self.slot = GeneratorSlot(host, eng["plugin_budget_ms"], eng["max_overruns"], self.stats,
                                  mode=lambda: self.mode, end_all=lambda: self._end_everything(self._now),
                                  marker=self._marker, selected=self._selected,
                                  fell_back=self._reset_phrase)
        self.slot.guard.before = self._send_due  # what is due leaves before any generator call
        self.player = AnswerPlayer(config, self.timeline, self.slot, self.sched, self.stats, self._context)
        self.live = LiveControls(config["control"], self)

    # -- the parts' state, read by name ---------------------------------------------------------

    gen = property(lambda self: self.slot.gen, doc="The current generator (None: none).")
    gen_name = property(lambda self: self.slot.name)
    guard_calls = property(lambda self: self.slot.guard, doc="The generator calls' guard.")
    tempo = property(lambda self: self.timeline.tempo)
    sync = property(lambda self: self.timeline.sync)
    controls = property(lambda self: self.live.values, doc="The performer's live values.")
    held = property(lambda self: self.phrase.held, doc="(channel, pitch) of the keys held.")
    phrase_notes = property(lambda self: self.phrase.notes)
    host = property(lambda self: self.slot.host, lambda self, host: setattr(self.slot, "host", host))
    recorder = property(lambda self: self.timeline.recorder,  # (the timeline records tempo changes)
                        lambda self, rec: setattr(self.timeline, "recorder", rec))
    #: The random source of density thinning and humanising (tests seed it).
    _rng = property(lambda self: self.player.rng, lambda self, rng: setattr(self.player, "rng", rng))

    def bpm(self, now: int) -> float:
        return self.timeline.bpm(now)

    # -- what the live controls and the runners call --------------------------------------------

    def set_generator(self, name: str, gen: Generator) -> None:
        """Make ``gen`` current; checks the mode (raises PluginError if unsupported)."""
        self.slot.set(name, gen)

    def request_swap(self, selector: str | int) -> None:
        self.slot.request(selector)

    def _selected(self, name: str) -> None:
        self.player.generator_changed()
        self._marker(f"generator {name}")
        self.live.echo("generator")

    def command(self, name: str, *args: Any) -> None:
        """A performer's command (see :meth:`midi_bridge.core.control.LiveControls.command`)."""
        self.live.command(name, *args)
        self.slot.check()
        self._send_due()

    def panic(self) -> None:
        """End every note and the phrase (a note-off lost on the way must not keep it open)."""
        self._end_everything(self._now)
        self._reset_phrase()
        self.phrase.held.clear()

    def set_mode(self, mode: str) -> None:
        if mode == self.mode:
            return
        gen = self.slot.gen
        if mode != THRU and gen is not None and mode not in gen.modes:
            log.warning("mode '%s' refused: generator '%s' supports %s (keeping '%s')", mode,
                        self.gen_name, ", ".join(sorted(gen.modes)), self.mode)
            self.live.echo("mode")
            return
        self._end_everything(self._now)
        self._reset_phrase()
        log.info("mode: %s -> %s", self.mode, mode)
        self.mode = mode
        self._marker(f"mode {mode}")
        self.live.echo("mode")
        if mode != THRU and gen is None and not self.slot.fallback_thru:
            # Started in thru: no generator was loaded.  Load the configured one; until it
            # is ready (or if it cannot play this mode) what is played passes through.
            name = self.cfg["engine"]["generator"]
            log.info("mode %s: loading generator '%s' (playing thru until it is ready)", mode, name)
            self.slot.fallback_thru = True
            self.slot.request(name)

    def set_length(self, factor: float) -> None:
        self.player.set_length(factor)

    def send_control(self, msg: tuple[int, ...]) -> None:
        """A message to the controllers (echo), sent now."""
        self.sched.message(self._now, msg, CONTROL)

    def rate(self, rating: int) -> None:
        """The performer marks the last answer good (+1) or bad (-1)."""
        record = self.player.rating(rating, self.phrase.events, self.mode, self.bpm(self._now))
        if record is None:
            return self._warn_once("rate_nothing", "rating ignored: no answer has been played yet")
        self._marker("rating " + ("good" if rating > 0 else "bad"))
        if self.on_rating is not None:
            self.on_rating(record)

    # -- input ----------------------------------------------------------------------------

    def handle(self, item: tuple, now: int) -> None:
        """One item from the input queue: an :class:`~midi_bridge.core.messages.Input`
        (or any ``(t_ns, port, data)`` tuple), a :class:`Swap` or a :class:`Command`."""
        self._now = now
        cls = type(item)
        if cls is Swap:
            self.slot.ready(item.name, item.gen, item.err)
        elif cls is Command:
            self.live.command(item.name, *item.args)
        else:
            self._input(item[0], item[2], now)
        self.slot.check()
        self._send_due()

    def _input(self, t: int, data: Any, now: int) -> None:
        self.stats["events_in"] += 1
        try:
            msg = midi.parse(data)
        except midi.MalformedMidi as e:
            self.stats["malformed"] += 1
            self._warn_once("malformed", f"ignored malformed MIDI input ({e}); "
                                         "check the device or the routing (counted in stats)")
            return
        if not (self.phrase.held and self.phrase.releases_held(msg)) and self.guard.is_echo(msg, t):
            self.stats["echoes"] += 1
            self._warn_once("echo", "the bridge's own output is coming back on its input "
                                    "(feedback loop: do not route 'out' back to 'in'); echoes are ignored")
            return
        if self.recorder is not None:
            self.recorder.inp(t, msg)
        status = msg[0]
        if status >= 0xF0:
            self.stats["system"] += 1
            if self.timeline.follow:
                self._system(t, now, msg)
            return
        ch, kind = status & 0x0F, status & 0xF0
        live = self.live
        if live.cmap and (kind == midi.CONTROL or kind == midi.NOTE_ON or kind == midi.NOTE_OFF
                          or kind == midi.POLY_AT):
            b = live.match(kind, msg[1], ch)
            if b is not None:
                self.stats["control"] += 1
                if kind != midi.POLY_AT:  # (a mapped pad's pressure: consumed)
                    live.mapped(b, kind, msg[2])
                return
        if ch == live.channel and live.channel_message(kind, msg):
            self.stats["control"] += 1
            return
        if self.channels is not None and ch not in self.channels:
            self.stats["filtered"] += 1
            return
        if kind == midi.NOTE_ON or kind == midi.NOTE_OFF:
            sent0 = self.sched.sent
            self._note(now, kind == midi.NOTE_ON, ch, msg[1], msg[2])
            if self.latency is not None and kind == midi.NOTE_ON:
                self._send_due()
                if self.sched.sent != sent0:  # arrival -> first resulting message out
                    self.latency.add(t, (self.wall_ns() if self.wall_ns else now) - t)
        else:
            self.stats["other"] += 1
            if kind == midi.CONTROL and (msg[1] == 123 or msg[1] == 120):
                self.phrase.all_off(ch)
            if self._thru_active():
                self.sched.message(now, self._thru_remap(msg), THRU)

    def _system(self, t: int, now: int, msg: tuple[int, ...]) -> None:
        """MIDI clock and transport (timed by arrival, ``t``)."""
        status = msg[0]
        if status == midi.CLOCK:
            self.timeline.clock(t, now)
        elif status == midi.STOP:
            self.timeline.stop(t)
            self.panic()
            if self.slot.gen is not None:
                self.slot.call(self.slot.gen.reset)
        else:
            shift = self.timeline.transport(t, now, msg)
            if shift is not None:
                self.player.shift(shift)

    def _reset_phrase(self) -> None:
        self.phrase.reset()
        self.player.drop_speculation()

    def _thru_remap(self, msg: tuple[int, ...]) -> tuple[int, ...]:
        ch = self.thru_channel
        return msg if ch is None else ((msg[0] & 0xF0) | ch,) + msg[1:]

    def _note(self, now: int, on: bool, ch: int, pitch: int, velocity: int) -> None:
        self.stats["notes_in" if on else "notes_off"] += 1
        player = self.player
        player.drop_speculation()  # the generator's state is about to change
        if on and player.answering(now):
            self._interrupt(now)
        if self._thru_active():  # (sent before the generator's observe, by the send path)
            tch = ch if self.thru_channel is None else self.thru_channel
            if on:
                self.sched.note(now, None, tch, pitch, velocity, THRU, safety=False)
            else:
                self.sched.release(now, tch, pitch, THRU, velocity)
        self.phrase.key(on, ch, pitch)
        gen = self.slot.gen
        if self.mode == THRU or gen is None:
            return
        ev = PlayedEvent(on, pitch, velocity, ch, self.timeline.beat_at(now), (now - self._origin) / 1e9)
        self.phrase.add(ev, now)
        self.slot.call(gen.observe, ev)
        if self.mode == "accompany":
            tag = ("acc", ch, pitch)
            self.sched.end_tag(now, tag)  # a re-pressed key ends its old accompaniment
            if on:
                self.player.accompany(now, ev, self._context(now), tag, self.live.values["density"])

    # -- continuation -----------------------------------------------------------------------

    def _context(self, now: int) -> Context:
        values, player = self.live.values, self.player
        return Context(self.bpm(now), self.timeline.beat_at(now), player.max_notes, player.max_beats,
                       tuple(self.phrase.events), values["temperature"], values["density"])

    def _phrase_end_at(self, now: int) -> int | None:
        if self.mode != "continue" or self.player.answer is not None or self.slot.gen is None:
            return None
        return self.phrase.end_at(self.timeline.ns_per_beat(now))

    def _interrupt(self, now: int) -> None:
        """The player plays again: stop the answer and end the notes it sounds, then CC64=0
        and CC123 on its channels -- except where thru plays the player's own messages: a
        pedal their foot still holds must stay down there."""
        self.stats["interrupted"] += 1
        channels = self.player.channels.copy()
        self.player.stop()
        self.sched.end_tag(now, CONT)
        if self._thru_active():
            channels -= {self.thru_channel} if self.thru_channel is not None else self.phrase.channels
        self.sched.release_channels(now, sorted(channels))

    def _end_everything(self, now: int) -> None:
        self.player.stop()
        self.sched.panic(now)

    def _thru_active(self) -> bool:
        """What is played passes to the output (thru on, thru mode, or a failed generator's
        fallback)."""
        return self.thru_on or self.mode == THRU or self.slot.fallback_thru

    # -- time -------------------------------------------------------------------------------

    def tick(self, now: int) -> None:
        """Do what is due at ``now``: phrase end, pulling the answer, sending, speculating."""
        self._now = now
        self.timeline.check(now)
        end = self._phrase_end_at(now)
        if end is not None and now >= end:
            self.player.start(now)
            self.phrase.answered()
        self.player.pull(now, self.live.values["density"])
        if end is not None and now < end:
            self.player.presample(now)
        self.slot.check()
        self._send_due()

    def next_deadline(self, now: int) -> int | None:
        player = self.player
        deadlines = (self.sched.next_deadline(now), self._phrase_end_at(now), player.deadline(now),
                     self.timeline.deadline(player.answer is not None and player.answer.clocked))
        live = [d for d in deadlines if d is not None]
        return min(live) if live else None

    def stop(self, now: int) -> None:
        """End every note (note-offs, CC64=0, CC123 per channel used); the caller drains."""
        self._now = now
        self._end_everything(now)
        self._send_due()

    # -- output -------------------------------------------------------------------------------

    #: An output that places each message at its due time itself (``out_at(msg, due_ns)``,
    #: the native JACK backend's); the scheduler then hands messages over ``sched.lead_ns``
    #: ahead.  None: ``out(msg)`` when due.
    out_at: Callable[[tuple[int, ...], int], None] | None = None

    def _send_due(self) -> None:
        """The one send path: everything due now leaves (as far as the pacing allows)."""
        self.sched.pump(self._now)

    def _emit(self, msg: tuple[int, ...]) -> None:
        # (an early hand-over still leaves at its due time: the echo comes back after that)
        self.guard.sent(msg, max(self._now, self.sched.due))
        if self.out_at is not None:
            self.out_at(msg, self.sched.due)
        else:
            self.out(msg)

    def _sent(self, msg: tuple[int, ...], tag: Any) -> None:
        """Scheduler observer (set when recording): who played each message sent."""
        source = "thru" if tag == THRU else CONTROL if tag is None or tag == CONTROL else (self.gen_name or "?")
        self.recorder.out(self._now, msg, source)

    def attach_recorder(self, recorder: Any) -> None:
        self.recorder = recorder
        self.sched.observer = self._sent
        recorder.tempo(self._now, self.bpm(self._now))

    def _marker(self, text: str) -> None:
        if self.recorder is not None:
            self.recorder.marker(self._now, text)

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(text)

    # -- for the status screen ------------------------------------------------------------------

    def snapshot(self, now: int) -> EngineView:
        """What the status screen shows, read from any thread (see :mod:`.view`)."""
        return view(self, now)
