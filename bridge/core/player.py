"""The answer player: what the generator plays, continuation answers (from phrase end to
their last note) and accompaniments (with each played note).

:class:`AnswerPlayer` starts an answer (on the next beat or bar when clocked,
``continuation.start_on``), pulls its notes lazily ``continuation.lookahead_ms`` ahead of
each one, up to ``continuation.max_notes``/``max_beats`` (x the ``length`` control),
times them (quantised to ``output.quantize`` with swing, humanised, offset by
``output.offset_ms``), retimes an answer whose clock came or went, and pre-samples the
next answer's first note while the player is silent (``continuation.speculate``).  The
engine decides when an answer starts and when it is interrupted; all generator calls go
through the :class:`midi_bridge.core.slot.GeneratorSlot`.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from typing import Any, Callable

from midi_bridge.plugin import Context, Note, PlayedEvent

from .answer import Answer
from .grid import next_boundary, quantize
from .scheduler import Scheduler
from .slot import GeneratorSlot
from .timeline import Timeline

log = logging.getLogger(__name__)

CONT = "cont"  # scheduler tag of the answer's notes
#: At most this many accompaniment notes per played note (a plugin's runaway list must not
#: turn one event into thousands of notes).
MAX_ACCOMPANY = 128


class AnswerPlayer:
    def __init__(self, config: dict[str, Any], timeline: Timeline, slot: GeneratorSlot,
                 sched: Scheduler, stats: dict[str, int], context: Callable[[int], Context]) -> None:
        eng, co, out = config["engine"], config["continuation"], config["output"]
        self.beats_per_bar: int = eng["beats_per_bar"]
        self.max_notes: int = co["max_notes"]
        self.max_beats: float = (co["max_beats"] if co["max_bars"] is None
                                 else co["max_bars"] * self.beats_per_bar)
        self._base_length = (self.max_notes, self.max_beats)
        self.lookahead_ns = int(co["lookahead_ms"] * 1e6)
        self.start_on: str = co["start_on"]
        self._speculate_cfg: bool = co["speculate"]
        self.speculate = self._speculate_cfg
        self.max_note_beats: float = eng["max_note_beats"]
        self.out_channel: int = eng["output_channel"]
        self.grid: float | None = out["quantize"]
        self.swing: float = out["swing"]
        self.humanize_ns = out["humanize_ms"] * 1e6
        self.offset_ns = 0 if out["offset_ms"] == "auto" else round(out["offset_ms"] * 1e6)  # (live resolves auto)
        self.rng = random.Random()
        self.timeline, self.slot, self.sched, self.stats = timeline, slot, sched, stats
        self._context = context
        self.answer: Answer | None = None   # playing
        self.spec: Answer | None = None     # pre-sampled while the player is silent
        self.until = 0                      # when the last note of the answer ends
        self.channels: set[int] = set()     # channels the current answer played on
        #: The last answer, for ratings: (the phrase it answers, or None for an accompaniment:
        #: the recent phrase then; its notes).
        self.last: tuple[tuple | None, deque] | None = None
        self._acc_notes: deque[Note] = deque(maxlen=64)

    def answering(self, now: int) -> bool:
        """An answer plays, or its last notes still sound."""
        return self.answer is not None or now < self.until

    def channel(self, n: Note) -> int:
        return self.out_channel if n.channel is None else n.channel

    def set_length(self, factor: float) -> None:
        """The ``length`` control: x ``continuation.max_notes``/``max_beats``."""
        n, b = self._base_length
        self.max_notes = max(1, round(n * factor))
        self.max_beats = max(0.25, b * factor)

    def generator_changed(self) -> None:
        # (pre-sampling is turned off when a generator fails at it: not for the next one)
        self.speculate = self._speculate_cfg

    # -- accompaniment -----------------------------------------------------------------------

    def accompany(self, now: int, ev: PlayedEvent, context: Context, tag: Any, density: float) -> None:
        """The generator's notes for played note-on ``ev``, owned by ``tag`` (the played key)."""
        slot = self.slot
        notes = slot.call(self._accompany, ev, context) or ()
        if notes:  # the last accompaniment, for ratings (one deque, reused)
            self._acc_notes.clear()
            self.last = (None, self._acc_notes)
        for i, n in enumerate(notes):
            if i == MAX_ACCOMPANY:
                self.stats["bad_notes"] += len(notes) - i
                slot.warn_once("acc_cap", f"generator '{slot.name}' returned {len(notes)} "
                               f"accompaniment notes for one played note; only the first "
                               f"{MAX_ACCOMPANY} are played")
                break
            if density < 1.0 and self.rng.random() >= density:
                self.stats["thinned"] += 1
                continue
            if slot.valid(n):
                self._acc_notes.append(n)
                nspb = self.timeline.ns_per_beat(now)
                t_on = now + round(n.start * nspb)
                t_off = None if n.duration is None else t_on + round(n.duration * nspb)
                self.sched.note(t_on, t_off, self.channel(n), n.pitch, n.velocity, tag)

    def _accompany(self, ev: PlayedEvent, context: Context) -> list:
        """The generator's accompaniment as a list, made inside the guarded call: a lazy
        iterable (``accompany`` written with ``yield``) runs the plugin's code while it is
        iterated, and that must be under the time budget too.  Not iterable: a plugin error."""
        return list(self.slot.gen.accompany(ev, context) or ())

    _accompany.__name__ = "accompany"  # (what faults and overruns are reported as)

    def rating(self, rating: int, phrase: Any, mode: str, bpm: float) -> dict | None:
        """The record of a rating of the last answer (None: nothing played yet; counted and
        logged); an accompaniment is rated with the last notes of ``phrase``."""
        if self.last is None or not self.last[1]:
            return None
        prompt, notes = self.last
        if prompt is None:  # accompaniment: the notes played most recently
            prompt = tuple(phrase)[-8:]
        gen = self.slot.gen
        ctx = self.slot.call(gen.rating_context) if gen is not None else None
        self.stats["ratings"] += 1
        log.info("rated the last answer %s (%d notes)", "good" if rating > 0 else "bad", len(notes))
        return {
            "rating": rating, "generator": self.slot.name, "mode": mode,
            "bpm": round(bpm, 3), "context": dict(ctx or {}),
            "phrase": [[e.pitch, e.velocity, round(e.beat, 4)] for e in prompt],
            "answer": [[n.pitch, n.velocity, round(n.start, 4),
                        None if n.duration is None else round(n.duration, 4)] for n in notes],
        }

    # -- starting ---------------------------------------------------------------------------

    def _new(self, now: int) -> Answer | None:
        gen = self.slot.gen
        context = self._context(now)
        it = self.slot.call(gen.continuation, context)
        if it is None:
            return None
        try:
            answer = Answer(iter(it), self.slot.guard.next)
        except TypeError as e:
            self.slot.guard.on_error("continuation", e)
            return None
        answer.prompt = context.phrase
        return answer

    def presample(self, now: int) -> None:
        """Pre-sample the answer's first note while the player is silent (between events)."""
        if not self.speculate or (self.spec is not None and (self.spec.next is not None or self.spec.done)):
            return
        spec = self.spec
        if spec is None:
            spec = self.spec = self._new(now)
            if spec is None:
                self.speculate = False  # the generator fails here: do not retry every tick
                return
            self.stats["speculated"] += 1
        spec.peek(self._valid, self.max_notes, self.max_beats)

    def drop_speculation(self) -> None:
        if self.spec is not None:
            spec, self.spec = self.spec, None
            spec.close(self.slot.call)

    def start(self, now: int) -> None:
        """The phrase ended: start its answer (the pre-sampled one if there is one)."""
        if self.spec is not None:
            answer, self.spec = self.spec, None
            self.stats["speculation_used"] += 1
        else:
            answer = self._new(now)
        if answer is None:
            return
        tl = self.timeline
        self.stats["answers"] += 1
        self.last = (answer.prompt, deque(maxlen=self.max_notes))
        b = b_now = tl.beat_at(now)
        clocked = tl.clocked(now)
        if clocked and self.start_on != "now":
            b = next_boundary(b, 1.0 if self.start_on == "beat" else float(self.beats_per_bar))
        answer.b0 = b
        answer.t0 = now + round((b - b_now) * tl.ns_per_beat(now))
        answer.clocked = clocked
        self.answer = answer

    # -- playing ------------------------------------------------------------------------------

    def note_time(self, answer: Answer, n: Note, now: int) -> int:
        """When note ``n`` of ``answer`` sounds: its beat, quantised (to the song's grid when
        clocked, else to the answer's own), converted at the current tempo."""
        tl = self.timeline
        b = answer.b0 + n.start
        clocked = answer.clocked
        if self.grid is not None:
            origin = 0.0 if clocked else answer.b0
            q = quantize(b, self.grid, self.swing, origin=origin)
            if q < answer.b0 - 1e-9:  # (a grid that does not divide the beat: the nearest
                q = quantize(b + self.grid, self.grid, self.swing, origin=origin)  # point may be before the start)
            b = q
        if clocked:  # follow the DAW's position, tempo changes included
            t = now + round((b - tl.beat_at(now)) * tl.ns_per_beat(now))
        else:
            t = answer.t0 + round((b - answer.b0) * tl.ns_per_beat(now))
        if self.humanize_ns:  # one offset per note, however often its time is asked
            if answer.jitter is None:
                answer.jitter = int(max(-2.0, min(2.0, self.rng.gauss(0.0, 1.0))) * self.humanize_ns)
            t += answer.jitter
        return max(t + self.offset_ns, now)

    def _retime(self, answer: Answer, now: int) -> None:
        """The clock went away (no Stop: a DAW crashed, a cable pulled) or began during an
        answer: it goes on at its pace from where it was, on the internal tempo or in the
        song's time (instead of sending the notes that fell due at once, or waiting)."""
        tl = self.timeline
        nspb = tl.tempo.ns_per_beat
        if answer.clocked:  # where the song was when its clock stopped
            answer.t0 = now - round((tl.song_beat(now) - answer.b0) * nspb)
        else:
            p = answer.b0 + (now - answer.t0) / nspb
            answer.b0 += tl.beat_at(now) - p
        answer.clocked = not answer.clocked

    def shift(self, beats: float) -> None:
        """The song position moved by ``beats`` (Start, Continue, Song Position): an answer
        timed by the clock goes on at its pace from where it is (it would otherwise wait
        for its beat to come round again, or send every note up to the new position)."""
        if self.answer is not None and self.answer.clocked:
            self.answer.b0 += beats

    def pull(self, now: int, density: float) -> None:
        """Schedule the answer's notes that start within the lookahead, pulling lazily
        (a due note leaves before the generator samples the next: the slot's guard sends
        what is due before every generator call)."""
        answer = self.answer
        if answer is None:
            return
        if answer.clocked != self.timeline.clocked(now):
            self._retime(answer, now)
        while True:
            n = answer.peek(self._valid, self.max_notes, self.max_beats)
            if n is None:
                self._end()
                return
            t_on = self.note_time(answer, n, now)
            if t_on > now + self.lookahead_ns:
                return
            answer.take()
            if density < 1.0 and self.rng.random() >= density:
                self.stats["thinned"] += 1
                continue
            beats = min(n.duration, self.max_note_beats, self.max_beats - n.start)
            t_off = t_on + max(1, round(beats * self.timeline.ns_per_beat(now)))
            ch = self.channel(n)
            self.channels.add(ch)
            self.sched.note(t_on, t_off, ch, n.pitch, n.velocity, CONT)
            self.until = max(self.until, t_off)
            if self.last is not None:
                self.last[1].append(n)

    def deadline(self, now: int) -> int | None:
        """When the next note must be pulled (now: one is to be asked for)."""
        answer = self.answer
        if answer is None:
            return None
        return now if answer.next is None else self.note_time(answer, answer.next, now) - self.lookahead_ns

    def _valid(self, n: Note) -> bool:
        return self.slot.valid(n, need_duration=True)

    def _end(self) -> None:
        if self.answer is not None:
            answer, self.answer = self.answer, None
            answer.close(self.slot.call)

    def stop(self) -> None:
        """Close the answer and any pre-sampled one; nothing of them is sounding any more
        once the caller has ended their notes (``end_tag(CONT)`` or a panic)."""
        self._end()
        self.drop_speculation()
        self.until = 0
        self.channels.clear()
