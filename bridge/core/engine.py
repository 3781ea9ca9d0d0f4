"""The engine: what happens to each played event, in every interaction mode.

The engine is a state machine driven from one thread (see :mod:`midi_bridge.runtime.loop` for the
live thread, :mod:`midi_bridge.commands.render` for simulated time).  ``handle`` takes one input item,
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
  it: everything it sounds is ended at once.  While the player is silent the engine
  pre-samples the answer's first note (``continuation.speculate``) so it goes out at once.

Time: with a MIDI clock arriving (``clock.follow``) beats are the DAW's song position
and tempo (:mod:`midi_bridge.core.sync`); answers start on the next beat or bar
(``continuation.start_on``) and notes can be quantised to a grid with swing.  Without a
clock the internal tempo (``engine.bpm``) converts beats, and answers start at once.
Transport Stop ends every generated note and resets the phrase; Start rewinds.

Live controls (:mod:`midi_bridge.core.control`): mapped CCs and notes, and ``("cmd", ...)`` items
from the terminal, change temperature, answer length, density, mode and generator, end
every note, or rate the last answer.  Faults (:mod:`midi_bridge.core.faults`): a generator that
raises or overruns its time budget too often is replaced by the previous one, or by
thru.  Every input event is counted in exactly one of :data:`ACCOUNTED`.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any, Callable

import random

from . import midi
from . import control as ctl_mod
from .answer import Answer
from .clock import Tempo
from .grid import next_boundary, quantize
from .guard import FeedbackGuard
from .faults import PluginGuard
from midi_bridge.runtime.host import GeneratorHost
from midi_bridge.plugin import Context, Generator, Note, PlayedEvent, PluginError
from .scheduler import Scheduler
from .sync import ClockFollower

log = logging.getLogger(__name__)

CONT = "cont"
THRU = "thru"
#: At most this many accompaniment notes per played note (a plugin's runaway list must not
#: turn one event into thousands of notes).
MAX_ACCOMPANY = 128
CONTROL = ctl_mod.CONTROL
MODES = ctl_mod.MODES

#: Every input event is counted in exactly one of these ``stats`` keys:
#: ``stats["events_in"] == sum(stats[k] for k in ACCOUNTED)``.
ACCOUNTED = ("malformed", "echoes", "system", "control", "filtered", "notes_in", "notes_off", "other")


class Engine(ctl_mod.LiveControls):
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
        self.cmap = ctl_mod.ControlMap(ctl["map"])
        self.echo: bool = ctl["echo"]
        #: The performer's live values: temperature (None: the generator's own), answer
        #: length (x continuation.max_notes/max_beats) and density (share of notes played).
        self.controls: dict[str, Any] = {"temperature": None, "length": 1.0, "density": 1.0}
        self.silence_ms: float = ph["silence_ms"]
        self.silence_beats: float | None = ph["silence_beats"]
        self.min_notes: int = ph["min_notes"]
        self.min_beats: float = ph["min_beats"]
        self.max_notes: int = co["max_notes"]
        self.beats_per_bar: int = eng["beats_per_bar"]
        self.max_beats: float = (co["max_beats"] if co["max_bars"] is None
                                 else co["max_bars"] * self.beats_per_bar)
        self._base_length = (self.max_notes, self.max_beats)
        self.lookahead_ns = int(co["lookahead_ms"] * 1e6)
        self.start_on: str = co["start_on"]
        self.speculate: bool = co["speculate"]
        self.max_note_beats: float = eng["max_note_beats"]
        self.grid: float | None = out["quantize"]
        self.swing: float = out["swing"]
        self.humanize_ns = out["humanize_ms"] * 1e6
        self.offset_ns = 0 if out["offset_ms"] == "auto" else round(out["offset_ms"] * 1e6)  # (live resolves auto)
        self._rng = random.Random()
        clk = config["clock"]
        self.follow_clock: bool = clk["follow"]
        self.sync = ClockFollower(eng["bpm"], window=clk["window"],
                                  timeout_ns=int(clk["timeout_ms"] * 1e6))
        self._synced = False      # what the log last said about the clock source
        self._clock_tempo = False  # self.tempo follows a clock that runs without transport
        self._logged_bpm = 0.0

        self.host = host
        self.gen: Generator | None = None
        self.gen_name: str | None = None
        self.prev_name: str | None = None
        self._wanted: str | None = None  # the generator selected last (swaps load in the background)
        self.guard_calls = PluginGuard(eng["plugin_budget_ms"], eng["max_overruns"])
        self._fallback_thru = False  # a failed generator left nothing to fall back on
        #: Optional hooks set by the live runner: a recorder (inp/out/marker/tempo), the
        #: ratings sink (one dict per rating) and a latency window (add(t, latency_ns)).
        self.recorder: Any = None
        self.on_rating: Callable[[dict], None] | None = None
        self.latency: Any = None
        self.wall_ns: Callable[[], int] | None = None   # real clock for latency samples
        #: The last answer, for ratings: (the phrase it answers, or None for an accompaniment:
        #: the recent phrase then; its notes).
        self._last: tuple[tuple[PlayedEvent, ...] | None, deque] | None = None
        self._acc_notes: deque[Note] = deque(maxlen=64)
        self._now = now_ns
        self._origin = now_ns
        self.held: set[tuple[int, int]] = set()
        self._in_channels: set[int] = set()    # channels the player's notes came on
        self._cont_channels: set[int] = set()  # channels the current answer played on
        self.phrase: deque[PlayedEvent] = deque(maxlen=ph["max_notes"])
        self.phrase_notes = 0
        self.phrase_start_ns = 0
        self.last_input_ns: int | None = None
        self._answer: Answer | None = None   # playing
        self._spec: Answer | None = None     # pre-sampled while the player is silent
        self._cont_until = 0  # when the last note of the answer ends
        self.stats = {"events_in": 0, "notes_in": 0, "notes_off": 0, "other": 0, "control": 0,
                      "malformed": 0, "echoes": 0, "filtered": 0,
                      "plugin_errors": 0, "overruns": 0, "replaced": 0, "bad_notes": 0,
                      "answers": 0, "interrupted": 0, "swaps": 0, "system": 0, "speculated": 0,
                      "speculation_used": 0, "thinned": 0, "ratings": 0, "commands": 0}
        self.guard_calls.on_error = self._plugin_error
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
            if self.gen_name != name:
                self.prev_name = self.gen_name
        if self._fallback_thru:
            self._end_everything(self._now)
            self._fallback_thru = False
            log.info("generator: %s (thru fallback ended)", name)
        self.gen, self.gen_name = gen, name
        self.guard_calls.reset()
        # (pre-sampling is turned off when a generator fails at it: not for the next one)
        self.speculate = self.cfg["continuation"]["speculate"]
        self._marker(f"generator {name}")
        self._call(gen.reset)
        self._echo("generator")

    def _swap_ready(self, name: str, gen: Generator | None, err: str) -> None:
        if gen is None:
            log.error("swap to '%s' failed: %s (keeping '%s')", name, err, self.gen_name)
            return
        if self._wanted is not None and name != self._wanted:
            # loaded in the background, but another generator was selected since (a
            # program change back, a knob turned on): the last selection wins
            log.info("generator '%s' loaded but no longer selected (last selection: '%s')",
                     name, self._wanted)
            return
        try:
            self.set_generator(name, gen)
        except PluginError as e:
            log.warning("swap refused: %s (keeping '%s')", e, self.gen_name)

    def request_swap(self, selector: str | int) -> None:
        name = self.host.resolve(selector, self.gen_name)
        if name is None:
            return
        self._wanted = name  # a load still under way for another name is void now
        if name != self.gen_name:
            self.host.request(name, self._swap_ready)

    # -- input ----------------------------------------------------------------------------

    def handle(self, item: tuple, now: int) -> None:
        """One item from the input queue: ``(t_ns, source, data)`` or a control tuple."""
        self._now = now
        if item[0] == "swap":
            self._swap_ready(item[1], item[2], item[3])
            self._after_calls()
            return
        if item[0] == "cmd":
            self.command(item[1], *item[2:])
            self._after_calls()
            self.sched.pump(now)
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
        if not (self.held and self._releases_held(msg)) and self.guard.is_echo(msg, t):
            self.stats["echoes"] += 1
            self._warn_once("echo", "the bridge's own output is coming back on its input "
                                    "(feedback loop: do not route 'out' back to 'in'); echoes are ignored")
            return
        if self.recorder is not None:
            self.recorder.inp(t, msg)
        status = msg[0]
        if status >= 0xF0:
            self.stats["system"] += 1
            if self.follow_clock:
                self._system(t, now, msg)
            return
        ch, kind = status & 0x0F, status & 0xF0
        if self.cmap and (kind == midi.CONTROL or kind == midi.NOTE_ON or kind == midi.NOTE_OFF
                          or kind == midi.POLY_AT):
            b = self.cmap.match("cc" if kind == midi.CONTROL else "note", msg[1], ch)
            if b is not None and kind == midi.POLY_AT:  # a mapped pad's pressure: consumed
                self.stats["control"] += 1
                return
            if b is not None:
                self.stats["control"] += 1
                self._mapped(b, kind, msg[2], ch)
                self._after_calls()
                self.sched.pump(now)
                return
        if ch == self.control_channel and self._control(kind, msg):
            self.stats["control"] += 1
            return
        if self.channels is not None and ch not in self.channels:
            self.stats["filtered"] += 1
            return
        if kind == midi.NOTE_ON or kind == midi.NOTE_OFF:
            sent0 = self.sched.sent
            self._note(now, kind == midi.NOTE_ON, ch, msg[1], msg[2])
            if self.latency is not None and kind == midi.NOTE_ON and self.sched.sent != sent0:
                # arrival -> first resulting message out (thru, accompaniment)
                self.latency.add(t, (self.wall_ns() if self.wall_ns else now) - t)
        else:
            self.stats["other"] += 1
            if kind == midi.CONTROL and (msg[1] == 123 or msg[1] == 120) and self.held:
                # All Notes Off / All Sound Off from the player: no key is held any more
                # (a lost note-off must not keep the phrase open for ever)
                self.held = {k for k in self.held if k[0] != ch}
            if self._thru_active():
                self.sched.message(now, self._thru_remap(msg), THRU)
        self._after_calls()
        self.sched.pump(now)

    def _releases_held(self, msg: tuple[int, ...]) -> bool:
        """The note-off of a key the player holds, or All Notes / All Sound Off on a channel
        where the player holds keys: never taken for an echo.  Dropping it would leave the
        note (and what the bridge plays with it) hanging, or the phrase open for ever; a
        DAW's panic sends CC123 on every channel at once, just after the bridge has passed
        the first ones through to its own output."""
        kind, ch = msg[0] & 0xF0, msg[0] & 0x0F
        if kind == midi.NOTE_OFF:
            return (ch, msg[1]) in self.held
        return kind == midi.CONTROL and (msg[1] == 123 or msg[1] == 120) and any(k[0] == ch for k in self.held)

    def _system(self, t: int, now: int, msg: tuple[int, ...]) -> None:
        """MIDI clock and transport (timed by arrival, ``t``)."""
        status, sync = msg[0], self.sync
        if status == midi.CLOCK:
            sync.clock(t)
            if not sync.running:
                # Clock without transport: beats count on from the free-running timeline,
                # at the clock's tempo (ns_per_beat is the clock's: both must agree).
                self.tempo.set_bpm(sync.bpm(now), now)
                self._clock_tempo = True
            if not self._synced and sync.synced(now) and len(sync._pts) >= min(sync.window, 48):
                self._synced = True
                self._logged_bpm = sync.bpm(now)
                log.info("clock: following MIDI clock at %.1f bpm", self._logged_bpm)
            elif self._synced and abs(sync.bpm(now) - self._logged_bpm) > 0.02 * self._logged_bpm:
                self._logged_bpm = sync.bpm(now)
                log.info("clock: tempo %.1f bpm", self._logged_bpm)
            if self._synced and self.recorder is not None:
                self.recorder.tempo(t, sync.bpm(now))  # (it keeps changes of 0.1 bpm or more)
        elif status == midi.START:
            self._jump(now, lambda: sync.start(t))
            log.info("transport: start")
        elif status == midi.CONTINUE:
            self._jump(now, lambda: sync.continue_(t))
            log.info("transport: continue at beat %.2f", sync.position_beats(now))
        elif status == midi.STOP:
            sync.stop(t)
            log.info("transport: stop")
            self._end_everything(now)
            self._reset_phrase()
            self.held.clear()
            if self.gen is not None:
                self._call(self.gen.reset)
        elif status == midi.SONG_POSITION:
            self._jump(now, lambda: sync.song_position(msg[1] | (msg[2] << 7)))

    def _jump(self, now: int, move: Callable[[], None]) -> None:
        """Move the song position (Start, Continue, Song Position: a DAW looping sends it
        while it plays).  An answer timed by the clock goes on at its pace from where it
        is: it would otherwise wait for its beat to come round again, or send every note
        up to the new position at once."""
        sync, answer = self.sync, self._answer
        before = sync.next_clock_beats() if sync.running else self.tempo.beat_at(now)
        move()
        if answer is not None and answer.clocked and sync.running:
            answer.b0 += sync.next_clock_beats() - before

    def _reset_phrase(self) -> None:
        self.phrase.clear()
        self.phrase_notes = 0
        self.last_input_ns = None
        self._drop_speculation()

    # -- time in beats ------------------------------------------------------------------------

    def _clocked(self, now: int) -> bool:
        return self.follow_clock and self.sync.synced(now)

    def beat_at(self, now: int) -> float:
        """Beats now: the DAW's song position when a clock runs, else the internal tempo's."""
        if self._clocked(now) and self.sync.running:
            return self.sync.position_beats(now)
        return self.tempo.beat_at(now)

    def ns_per_beat(self, now: int) -> float:
        return self.sync.ns_per_beat(now) if self._clocked(now) else self.tempo.ns_per_beat

    def bpm(self, now: int) -> float:
        return self.sync.bpm(now) if self._clocked(now) else self.tempo.bpm

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
        self.stats["notes_in" if on else "notes_off"] += 1
        self._drop_speculation()  # the generator's state is about to change
        if on and (self._answer is not None or now < self._cont_until):
            self._interrupt(now)
        if self._thru_active():
            tch = ch if self.thru_channel is None else self.thru_channel
            if on:
                self.sched.note(now, None, tch, pitch, velocity, THRU, safety=False)
            else:
                self.sched.release(now, tch, pitch, THRU, velocity)
            self.sched.pump(now)  # the played note goes out before any generator work
        key = (ch, pitch)
        if on:
            self._in_channels.add(ch)
            self.held.add(key)
        else:
            self.held.discard(key)
        if self.mode == "thru" or self.gen is None:
            return
        ev = PlayedEvent(on, pitch, velocity, ch, self.beat_at(now), (now - self._origin) / 1e9)
        if on:
            if not self.phrase_notes:
                self.phrase_start_ns = now
            self.phrase.append(ev)
            self.phrase_notes += 1
        self.last_input_ns = now
        self._call(self.gen.observe, ev)
        if self.mode == "accompany":
            tag = ("acc", ch, pitch)
            self.sched.end_tag(now, tag)  # a re-pressed key ends its old accompaniment
            if on:
                notes = self._call(self._accompany, ev, self._context(now)) or ()
                if notes:  # the last accompaniment, for ratings (one deque, reused)
                    self._acc_notes.clear()
                    self._last = (None, self._acc_notes)
                density = self.controls["density"]
                for i, n in enumerate(notes):
                    if i == MAX_ACCOMPANY:
                        self.stats["bad_notes"] += len(notes) - i
                        self._warn_once("acc_cap", f"generator '{self.gen_name}' returned {len(notes)} "
                                        f"accompaniment notes for one played note; only the first "
                                        f"{MAX_ACCOMPANY} are played")
                        break
                    if density < 1.0 and self._rng.random() >= density:
                        self.stats["thinned"] += 1
                        continue
                    if self._valid(n):
                        self._last[1].append(n)
                        nspb = self.ns_per_beat(now)
                        t_on = now + round(n.start * nspb)
                        t_off = None if n.duration is None else t_on + round(n.duration * nspb)
                        self.sched.note(t_on, t_off, self._channel(n), n.pitch, n.velocity, tag)

    def _accompany(self, ev: PlayedEvent, context: Context) -> list:
        """The generator's accompaniment as a list, made inside the guarded call: a lazy
        iterable (``accompany`` written with ``yield``) runs the plugin's code while it is
        iterated, and that must be under the time budget too.  Not iterable: a plugin error."""
        return list(self.gen.accompany(ev, context) or ())

    _accompany.__name__ = "accompany"  # (what faults and overruns are reported as)

    # -- continuation -----------------------------------------------------------------------

    def _context(self, now: int) -> Context:
        return Context(self.bpm(now), self.beat_at(now), self.max_notes, self.max_beats,
                       tuple(self.phrase), self.controls["temperature"], self.controls["density"])

    def _phrase_end_at(self, now: int) -> int | None:
        if (self.mode != "continue" or self._answer is not None or self.held or self.gen is None
                or self.phrase_notes < self.min_notes or self.last_input_ns is None):
            return None
        nspb = self.ns_per_beat(now)
        if self.min_beats and self.last_input_ns - self.phrase_start_ns < self.min_beats * nspb:
            return None
        silence = self.silence_beats * nspb if self.silence_beats else self.silence_ms * 1e6
        return self.last_input_ns + int(silence)

    def _new_answer(self, now: int) -> Answer | None:
        it = self._call(self.gen.continuation, self._context(now))
        if it is None:
            return None
        try:
            answer = Answer(iter(it), self.guard_calls.next)
        except TypeError as e:
            self._plugin_error("continuation", e)
            return None
        answer.prompt = tuple(self.phrase)
        return answer

    def _speculate(self, now: int) -> None:
        """Pre-sample the answer's first note while the player is silent (between events)."""
        spec = self._spec
        if spec is None:
            spec = self._spec = self._new_answer(now)
            if spec is None:
                self.speculate = False  # the generator fails here: do not retry every tick
                return
            self.stats["speculated"] += 1
        spec.peek(self._valid_cont, self.max_notes, self.max_beats)

    def _drop_speculation(self) -> None:
        if self._spec is not None:
            spec, self._spec = self._spec, None
            spec.close(self._call)

    def _start_answer(self, now: int) -> None:
        if self._spec is not None:
            answer, self._spec = self._spec, None
            self.stats["speculation_used"] += 1
        else:
            answer = self._new_answer(now)
        self.phrase.clear()
        self.phrase_notes = 0
        if answer is None:
            return
        self.stats["answers"] += 1
        self._last = (answer.prompt, deque(maxlen=self.max_notes))
        b = b_now = self.beat_at(now)
        if self._clocked(now) and self.start_on != "now":
            unit = 1.0 if self.start_on == "beat" else float(self.beats_per_bar)
            b = next_boundary(b, unit)
        answer.b0 = b
        answer.t0 = now + round((b - b_now) * self.ns_per_beat(now))
        answer.clocked = self._clocked(now)
        self._answer = answer

    def _note_time(self, answer: Answer, n: Note, now: int) -> int:
        """When note ``n`` of ``answer`` sounds: its beat, quantised (to the song's grid when
        clocked, else to the answer's own), converted at the current tempo."""
        b = answer.b0 + n.start
        clocked = answer.clocked
        if self.grid is not None:
            origin = 0.0 if clocked else answer.b0
            q = quantize(b, self.grid, self.swing, origin=origin)
            if q < answer.b0 - 1e-9:  # (a grid that does not divide the beat: the nearest
                q = quantize(b + self.grid, self.grid, self.swing, origin=origin)  # point may be before the start)
            b = q
        if clocked:  # follow the DAW's position, tempo changes included
            t = now + round((b - self.beat_at(now)) * self.ns_per_beat(now))
        else:
            t = answer.t0 + round((b - answer.b0) * self.ns_per_beat(now))
        if self.humanize_ns:  # one offset per note, however often its time is asked
            if answer.jitter is None:
                answer.jitter = int(max(-2.0, min(2.0, self._rng.gauss(0.0, 1.0))) * self.humanize_ns)
            t += answer.jitter
        return max(t + self.offset_ns, now)

    def _retime(self, answer: Answer, now: int) -> None:
        """The clock went away (no Stop: a DAW crashed, a cable pulled) or began during an
        answer: it goes on at its pace from where it was, on the internal tempo or in the
        song's time (instead of sending the notes that fell due at once, or waiting)."""
        tempo = self.tempo
        if answer.clocked:  # where the song was when its clock stopped
            p = self.sync.position_beats(now) if self.sync.running else tempo.beat_at(now)
            answer.t0 = now - round((p - answer.b0) * tempo.ns_per_beat)
        else:
            p = answer.b0 + (now - answer.t0) / tempo.ns_per_beat
            answer.b0 += self.beat_at(now) - p
        answer.clocked = not answer.clocked

    def _pull(self, now: int) -> None:
        """Schedule the answer's notes that start within the lookahead, pulling lazily."""
        answer = self._answer
        if answer is not None and answer.clocked != self._clocked(now):
            self._retime(answer, now)
        while answer is not None:
            n = answer.peek(self._valid_cont, self.max_notes, self.max_beats)
            if n is None:
                self._end_answer()
                return
            t_on = self._note_time(answer, n, now)
            if t_on > now + self.lookahead_ns:
                return
            answer.take()
            density = self.controls["density"]
            if density < 1.0 and self._rng.random() >= density:
                self.stats["thinned"] += 1
                continue
            beats = min(n.duration, self.max_note_beats, self.max_beats - n.start)
            t_off = t_on + max(1, round(beats * self.ns_per_beat(now)))
            ch = self._channel(n)
            self._cont_channels.add(ch)
            self.sched.note(t_on, t_off, ch, n.pitch, n.velocity, CONT)
            self._cont_until = max(self._cont_until, t_off)
            if self._last is not None:
                self._last[1].append(n)
            self.sched.pump(now)  # a due note leaves before the generator samples the next

    def _valid_cont(self, n: Note) -> bool:
        return self._valid(n, need_duration=True)

    def _end_answer(self) -> None:
        if self._answer is not None:
            answer, self._answer = self._answer, None
            answer.close(self._call)

    def _interrupt(self, now: int) -> None:
        """The player plays again: stop the answer and end the notes it sounds, then CC64=0
        and CC123 on its channels -- except where thru plays the player's own messages: a
        pedal their foot still holds must stay down there."""
        self.stats["interrupted"] += 1
        channels = self._cont_channels.copy()
        self._stop_answer()
        self.sched.end_tag(now, CONT)
        if self._thru_active():
            channels -= {self.thru_channel} if self.thru_channel is not None else self._in_channels
        self.sched.release_channels(now, sorted(channels))
        self.sched.pump(now)

    def _end_everything(self, now: int) -> None:
        self._stop_answer()
        self.sched.panic(now)
        self.sched.pump(now)

    def _stop_answer(self) -> None:
        """Close the answer and any pre-sampled one; nothing of them is sounding any more
        once the caller has ended their notes."""
        self._end_answer()
        self._drop_speculation()
        self._cont_until = 0
        self._cont_channels.clear()

    def _thru_active(self) -> bool:
        """What is played passes to the output (thru on, thru mode, or a failed generator's
        fallback)."""
        return self.thru_on or self.mode == "thru" or self._fallback_thru

    # -- time -------------------------------------------------------------------------------

    def tick(self, now: int) -> None:
        """Do what is due at ``now``: phrase end, pulling the answer, sending, speculating."""
        self._now = now
        self._tick(now)
        self._after_calls()

    def _tick(self, now: int) -> None:
        if self._clock_tempo and not self._clocked(now):
            self._clock_tempo = False  # a clock without transport had set the tempo: back to engine.bpm
            self.tempo.set_bpm(self.cfg["engine"]["bpm"], now)
        if self._synced and not self._clocked(now):
            self._synced = False
            log.info("clock: MIDI clock lost; internal clock at %.1f bpm", self.tempo.bpm)
            if self.recorder is not None:
                self.recorder.tempo(now, self.tempo.bpm)
        end = self._phrase_end_at(now)
        if end is not None and now >= end:
            self._start_answer(now)
        if self._answer is not None:
            self._pull(now)
        self.sched.pump(now)
        if end is not None and now < end and self.speculate and (
                self._spec is None or self._spec.next is None and not self._spec.done):
            self._speculate(now)

    def next_deadline(self, now: int) -> int | None:
        deadlines = [self.sched.next_deadline(now), self._phrase_end_at(now)]
        answer = self._answer
        if answer is not None:
            deadlines.append(now if answer.next is None else
                             self._note_time(answer, answer.next, now) - self.lookahead_ns)
        if self._synced or self._clock_tempo or (answer is not None and answer.clocked):
            deadlines.append(self.sync.last_tick_ns + self.sync.timeout_ns + 1)
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

    def _sent(self, msg: tuple[int, ...], tag: Any) -> None:
        """Scheduler observer (set when recording): who played each message sent."""
        source = "thru" if tag == THRU else CONTROL if tag is None or tag == CONTROL else (self.gen_name or "?")
        self.recorder.out(self._now, msg, source)

    def attach_recorder(self, recorder: Any) -> None:
        self.recorder = recorder
        self.sched.observer = self._sent
        recorder.tempo(self._now, self.bpm(self._now))

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
        """A generator call under its time budget; None if it raised or overran."""
        return self.guard_calls.call(fn, *args)

    def _plugin_error(self, where: str, e: BaseException) -> None:
        self.stats["plugin_errors"] += 1
        if f"err:{where}" not in self._warned:
            self._warned.add(f"err:{where}")
            log.error("generator '%s' raised in %s: %s: %s (the bridge keeps running; "
                      "further errors are counted)", self.gen_name, where, type(e).__name__, e,
                      exc_info=e)
        self.guard_calls.failed = True

    def _after_calls(self) -> None:
        """Between events: replace a generator that raised or kept overrunning its budget."""
        g = self.guard_calls
        self.stats["overruns"] = g.overruns
        if g.failed or g.exhausted:
            why = "raised" if g.failed else f"overran its {g.budget_ms:g} ms budget {g.max_overruns} times in a row"
            self._replace_failed(why)

    def _replace_failed(self, why: str) -> None:
        name = self.gen_name
        self.stats["replaced"] += 1
        self._end_everything(self._now)
        self.guard_calls.reset()
        prev = self.prev_name
        self._marker(f"generator {name} failed")
        if prev is not None and prev != name:
            try:
                gen = self.host.get(prev)
                self.prev_name = None
                self.gen = None  # no second panic, no swap count
                self.set_generator(prev, gen)
                log.error("generator '%s' %s: replaced by the previous generator '%s' "
                          "(select it again to retry)", name, why, prev)
                return
            except PluginError as e:
                log.error("previous generator '%s' is not usable either: %s", prev, e)
        self.gen = self.gen_name = None
        self._fallback_thru = True
        self._reset_phrase()
        log.error("generator '%s' %s: playing thru (what you play passes to the output) until "
                  "another generator is selected", name, why)

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(text)
