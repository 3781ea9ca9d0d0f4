"""One continuation (an answer to a phrase), pulled lazily from a generator's iterator.

An :class:`Answer` is created either at phrase end or *speculatively* while the player is
silent (the engine pre-samples the first note between events so that, at phrase end, it
can go out at once); a speculative answer is simply discarded when new input arrives.
The engine decides when notes are due; this class only holds the iterator, the one note
pulled ahead, and the counts that bound an answer.
"""

from __future__ import annotations

from typing import Callable, Iterator

from .faults import DONE, FAILED
from midi_bridge.plugin import Note


def _next(it: Iterator[Note]):
    try:
        return next(it)
    except StopIteration:
        return DONE


class Answer:
    __slots__ = ("it", "pull", "prompt", "b0", "t0", "clocked", "count", "skipped", "next", "jitter",
                 "done")

    def __init__(self, it: Iterator[Note], pull: Callable = _next) -> None:
        self.it = it
        self.pull = pull               # guarded next(): a note, DONE or FAILED
        self.prompt: tuple = ()        # the phrase it answers
        self.b0: float | None = None   # beat the answer starts on (None until it plays)
        self.t0 = 0                    # and when that is, in ns
        self.clocked = False           # timed by the MIDI clock (b0 in song beats), or by t0
        self.count = 0                 # notes scheduled
        self.skipped = 0               # invalid notes skipped
        self.next: Note | None = None  # pulled, not yet scheduled
        self.jitter: int | None = None  # its humanise offset (ns), drawn once
        self.done = False

    def peek(self, valid: Callable[[Note], bool], max_notes: int, max_beats: float) -> Note | None:
        """The next note to schedule (pulling one from the generator if needed), or None
        when the answer is over (exhausted, bounded, failing, or only invalid notes)."""
        while self.next is None and not self.done:
            n = self.pull(self.it)
            if n is DONE or n is FAILED:  # (a failure is already reported by the guard)
                self.done = True
                break
            if not valid(n):
                self.skipped += 1
                if self.skipped >= max_notes:  # only garbage: give up
                    self.done = True
                continue
            if self.count >= max_notes or n.start >= max_beats:
                self.done = True
                break
            self.next = n
        return None if self.done else self.next

    def take(self) -> None:
        """The note from :meth:`peek` has been scheduled."""
        self.next = None
        self.jitter = None
        self.count += 1

    def close(self, call: Callable) -> None:
        """Close the generator's iterator (its ``finally`` runs), through ``call``'s guard."""
        self.done = True
        close = getattr(self.it, "close", None)
        if close is not None:
            call(close)
