"""The Continuator-style Markov generator (``markov``, ``continue`` mode).

:class:`MarkovGenerator` follows Pachet's Continuator (F. Pachet, "The Continuator:
Musical Interaction with Style", ICMC 2002 / JNMR 2003): a variable-order Markov model
learned live from what the player plays, whose continuations replay the player's own
events (timing, duration, dynamics).  Which token comes next is predicted IDyOM-style
(Pearce 2005; :mod:`midi_bridge.model.idyom`, as ``midi-bridge evaluate``'s ``markov``
baseline): a long-term PPM of everything played and a short-term PPM of the current phrase,
mixed by entropy weights; ``predictor: backoff`` restores the Continuator's own choice
(longest matching context first, backing off to shorter ones).  Tokens are drawn with
:func:`midi_bridge.model.ppm.choose`.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Iterator

import numpy as np

from midi_bridge.model.idyom import MIXES, Predictions, Prior, escape_c_dense
from midi_bridge.model.ppm import choose, choose_index
from midi_bridge.plugin import Context, Generator, Note, PlayedEvent
from midi_bridge.generators import checked_number

GRID = 12  # inter-onset intervals are quantised to 1/12 beat (16ths and triplets)
MAX_IOI_BEATS = 4.0  # longer gaps are treated as this long
START = (0, -1)  # token of the first note after reset() (no previous note to relate to)
DEFAULT_DURATION = 0.5  # beats, for a note whose note-off never came
MAX_SAME_START = 32  # stop an answer that piles this many notes on one onset
PREDICTORS = ("idyom", "backoff")
# tokens: intervals -127..127 x inter-onset 0..48 steps, plus START (the entropies' alphabet)
TOKEN_ALPHABET = 255 * (round(MAX_IOI_BEATS * GRID) + 1) + 1


class _Event:
    """One played note-on as the model stores it."""

    __slots__ = ("token", "pitch", "interval", "ioi", "velocity", "onset", "duration", "keys")

    def __init__(self, token, pitch, interval, ioi, velocity, onset, keys) -> None:
        self.token, self.pitch, self.interval, self.ioi = token, pitch, interval, ioi
        self.velocity, self.onset, self.keys = velocity, onset, keys
        self.duration: float | None = None  # filled in at the note-off


class MarkovGenerator(Generator):
    """Continuator: answers a phrase by continuing it with the player's own material.

    **Tokens.**  Each note-on becomes the token ``(interval, ioi)``: the pitch interval
    from the previous played note and the inter-onset interval in 1/12 beats (capped at
    4 beats; the first note after ``reset()`` gets the phrase-start token ``START``).
    Tokens are relative, so the model is transposition-aware: an answer starts
    from the last played pitch and replays learned intervals.  The duration is not in
    the token because it is only known at the note-off, after later notes (legato,
    chords) may already have needed this note as context; it travels with the stored
    event instead, filled in at the note-off, so answers still reuse it in context.

    **Index.**  For every order ``k = 0..order`` the tuple of the ``k`` tokens before a
    note is a key; ``index[key][token]`` is a deque of the stored events that followed
    that context with that token; a second, smaller index counts the tokens of the current
    phrase (since ``reset()``) after contexts of up to ``stm_order`` tokens.

    **Prediction** (``predictor: idyom``, the default).  The index read as a PPM (escape
    method C with exclusion, contexts of ``order`` down to 0: the long-term model) and the
    phrase's counts read the same way (the short-term model) each give a distribution of
    the next token; they are mixed by entropy weights, ``(H / log2 |A|) ** -b`` each
    (``H`` the model's entropy for this step, ``|A|`` the token alphabet), arithmetically
    or geometrically (``mix``), exactly as the offline ``markov`` baseline does.  A token
    is drawn from the mixture over the tokens played (sharpened by ``temperature``; 0: the
    most probable) and one of its events is replayed, from the longest context that was
    followed by it: its interval, inter-onset time, duration and velocity.  The generated
    token joins the context, so the answer keeps following the model.  ``predictor:
    backoff`` is Pachet's rule instead: the longest context with continuations, a token in
    proportion to its count there.

    **Bounded work.**  ``observe`` inserts a note under ``order + 1`` keys (and counts it
    under ``stm_order + 1`` phrase keys); when more than ``max_history`` notes are stored,
    the oldest is dropped from the same number of deques (it is always at their front), and
    likewise from the phrase's counts, so each note-on costs O(order) whatever the history
    (``ops`` counts these index operations).  A prediction reads the contexts of orders
    ``order .. 1`` of both models (dictionaries) and their order 0 as arrays of counts by
    token id (at most ``TOKEN_ALPHABET`` entries), a fixed number of array operations.  ``reset()`` forgets the phrase
    position (context, previous note) but keeps everything learned; ``forget()`` also
    erases what was learned.

    Config: ``order`` (max context length), ``temperature`` (the performer's live
    temperature, ``Context.temperature``, overrides it while set), ``max_history`` (notes
    kept), ``low``/``high`` (answer pitch range: pitches are folded by octaves into it),
    ``seed`` (None: random), ``predictor`` (``idyom`` or ``backoff``), ``stm_order``
    (the short-term model's order, at most ``order``), ``b`` and ``mix`` (``arithmetic``
    or ``geometric``): the entropy weighting.  Arithmetic by default: live, the phrase
    is short, and a geometric mixture vetoes whatever the phrase itself has not played.
    """

    name = "markov"
    api_version = 1
    modes = frozenset({"continue"})
    default_config = {"order": 4, "temperature": 1.0, "max_history": 2000, "low": 24, "high": 108, "seed": None,
                      "predictor": "idyom", "stm_order": 4, "b": 2.0, "mix": "arithmetic"}

    def __init__(self, config=None) -> None:
        super().__init__(config)
        c = self.config
        self.order = checked_number("markov", c, "order", low=0, integer=True)
        self.temperature = float(checked_number("markov", c, "temperature", low=0))
        self.max_history = checked_number("markov", c, "max_history", low=1, integer=True)
        self.low = checked_number("markov", c, "low", low=0, high=127, integer=True)
        self.high = checked_number("markov", c, "high", low=0, high=127, integer=True)
        checked_number("markov", c, "seed", integer=True, optional=True)
        self.stm_order = min(checked_number("markov", c, "stm_order", low=0, integer=True), self.order)
        self.b = float(checked_number("markov", c, "b", low=0))
        for key, allowed in (("predictor", PREDICTORS), ("mix", MIXES)):
            if c[key] not in allowed:
                raise ValueError(f"markov: generators.markov.{key} is {c[key]!r}; use one of {', '.join(allowed)}")
        self.predictor, self.mix = c["predictor"], c["mix"]
        self._prior = Prior.uniform(TOKEN_ALPHABET)
        if self.low > self.high:
            raise ValueError(f"markov: generators.markov.low ({self.low}) is above generators.markov.high "
                             f"({self.high}): no pitch to play (low <= high)")
        if self.order < 0 or self.max_history < 1:
            raise ValueError("order must be >= 0 and max_history >= 1")
        self.rng = random.Random(c["seed"])
        self.ops = 0  # index insertions + removals: instrumentation for tests
        self.forget()

    def forget(self) -> None:
        """Erase everything learned (and the phrase state)."""
        self._history: deque[_Event] = deque()
        self._index: dict[tuple, dict[tuple, deque[_Event]]] = {}
        self._sounding: dict[tuple[int, int], _Event] = {}
        self._ids: dict[tuple, int] = {}  # token -> id, in order of first appearance
        self._tokens: list[tuple] = []
        self._count0 = np.zeros(TOKEN_ALPHABET)  # order-0 counts of the history, by id
        self._phrase0 = np.zeros(TOKEN_ALPHABET)  # ... of the phrase (the short-term model)
        self.reset()

    def reset(self) -> None:
        """Forget the phrase position (context and previous note), keep what was learned;
        the short-term model starts a new phrase."""
        self._context: deque[tuple] = deque(maxlen=self.order)
        self._prev: tuple[int, float] | None = None  # (pitch, beat) of the last note-on
        self._phrase: deque[tuple[tuple, tuple]] = deque()  # (keys, token) of the phrase's notes
        self._phrase_index: dict[tuple, dict[tuple, int]] = {}  # orders 1..stm_order
        if hasattr(self, "_phrase0"):
            self._phrase0[:] = 0.0

    @property
    def history_size(self) -> int:
        return len(self._history)

    def observe(self, event: PlayedEvent) -> None:
        key = (event.channel, event.pitch)
        if not event.on:
            ev = self._sounding.pop(key, None)
            if ev is not None:
                ev.duration = max(event.beat - ev.onset, 1.0 / GRID)
            return
        if self._prev is None:
            token, interval, ioi = START, 0, 1.0
        else:
            interval = event.pitch - self._prev[0]
            ioi = min(max(event.beat - self._prev[1], 0.0), MAX_IOI_BEATS)
            token = (interval, round(ioi * GRID))
        ctx = tuple(self._context)
        keys = tuple(ctx[len(ctx) - k:] if k else () for k in range(len(ctx) + 1))
        ev = _Event(token, event.pitch, interval, ioi, event.velocity, event.beat, keys)
        for k in keys:
            self._index.setdefault(k, {}).setdefault(token, deque()).append(ev)
            self.ops += 1
        i = self._ids.get(token)
        if i is None:
            i = self._ids[token] = len(self._tokens)
            self._tokens.append(token)
        self._count0[i] += 1
        self._history.append(ev)
        self._count_in_phrase(keys[: self.stm_order + 1], token)
        held = self._sounding.get(key)
        if held is not None and held.duration is None:  # re-struck before its note-off
            held.duration = max(event.beat - held.onset, 1.0 / GRID)
        self._sounding[key] = ev
        self._context.append(token)
        self._prev = (event.pitch, event.beat)
        if len(self._history) > self.max_history:
            self._drop_oldest()

    def _count_in_phrase(self, keys: tuple, token: tuple) -> None:
        self._phrase0[self._ids[token]] += 1  # keys[0] is the order-0 context ()
        for k in keys[1:]:
            by_token = self._phrase_index.setdefault(k, {})
            by_token[token] = by_token.get(token, 0) + 1
        self.ops += len(keys)
        self._phrase.append((keys, token))
        if len(self._phrase) > self.max_history:  # the phrase's oldest note leaves with the history's
            old_keys, old = self._phrase.popleft()
            self._phrase0[self._ids[old]] -= 1
            self.ops += 1
            for k in old_keys[1:]:
                by_token = self._phrase_index[k]
                by_token[old] -= 1
                self.ops += 1
                if not by_token[old]:
                    del by_token[old]
                    if not by_token:
                        del self._phrase_index[k]

    def _drop_oldest(self) -> None:
        old = self._history.popleft()
        self._count0[self._ids[old.token]] -= 1
        for k in old.keys:
            by_token = self._index[k]
            events = by_token[old.token]
            events.popleft()  # events are appended in time order: the oldest is first
            self.ops += 1
            if not events:
                del by_token[old.token]
                if not by_token:
                    del self._index[k]

    def predict(self, context: deque | tuple):
        """The IDyOM-style mixture for the next token after ``context``
        (:class:`midi_bridge.model.idyom.Mixture` over the tokens in order of first appearance)."""
        ctx = tuple(context)
        n = len(self._tokens)
        longer = [ctx[len(ctx) - k:] for k in range(len(ctx), 0, -1)]  # orders len(ctx)..1
        ltm = escape_c_dense((self._index[s] for s in longer if s in self._index), self._ids, self._count0[:n],
                             count=len)
        stm = escape_c_dense((self._phrase_index[s] for s in longer[len(ctx) - min(len(ctx), self.stm_order):]
                              if s in self._phrase_index), self._ids, self._phrase0[:n])
        pred = Predictions.from_arrays(self._tokens, self._prior, [ltm, stm], m=np.full(n, 1.0 / TOKEN_ALPHABET))
        return pred.mix(self.b, self.mix)

    def _next_event(self, context: deque, temperature: float | None = None) -> _Event:
        """Draw the next token and replay one of its events (see the class docstring)."""
        ctx = tuple(context)
        if temperature is None:
            temperature = self.temperature
        if self.predictor == "idyom":
            n = len(self._tokens)
            p = np.where(self._count0[:n] > 0, self.predict(ctx).p, 0.0)  # only tokens still stored
            token = self._tokens[choose_index(self.rng, p, temperature)]
            for k in range(len(ctx), -1, -1):  # the longest context that was followed by it
                events = self._index.get(ctx[len(ctx) - k:] if k else (), {}).get(token)
                if events:
                    return events[self.rng.randrange(len(events))]
        for k in range(len(ctx), -1, -1):
            by_token = self._index.get(ctx[len(ctx) - k:] if k else ())
            if by_token:
                token = choose(self.rng, [(t, len(evs)) for t, evs in by_token.items()], temperature)
                events = by_token[token]
                return events[self.rng.randrange(len(events))]
        raise LookupError("empty model")  # unreachable while the history is non-empty

    def _fold(self, pitch: int) -> int:
        while pitch > self.high and pitch - 12 >= self.low:
            pitch -= 12
        while pitch < self.low and pitch + 12 <= self.high:
            pitch += 12
        return max(self.low, min(self.high, pitch))

    def continuation(self, context: Context) -> Iterator[Note]:
        """Yield the answer lazily: one model step per note pulled."""
        if not self._history:
            return
        ctx = deque(self._context, maxlen=self._context.maxlen)
        pitch = self._prev[0] if self._prev is not None else None
        start, count, same_start = 0.0, 0, 0
        live = getattr(context, "temperature", None)  # the performer's, when set (contract 1.1)
        while True:
            if context.max_notes > 0 and count >= context.max_notes:
                return
            ev = self._next_event(ctx) if live is None else self._next_event(ctx, live)
            if count:
                same_start = same_start + 1 if ev.ioi == 0 else 0
                start += ev.ioi
            if same_start >= MAX_SAME_START:
                return
            if context.max_beats > 0 and start >= context.max_beats:
                return
            pitch = self._fold(ev.pitch if pitch is None else pitch + ev.interval)
            duration = ev.duration if ev.duration is not None else DEFAULT_DURATION
            if context.max_beats > 0:
                duration = min(duration, context.max_beats - start)
            ctx.append(ev.token)
            count += 1
            yield Note(pitch=pitch, velocity=max(1, min(127, ev.velocity)), start=start, duration=duration)
