"""In-piece statistics: a small PPM over the events of the current piece or session.

Folk tunes and chorales repeat themselves (repeats are written out).  :class:`PieceCache`
counts, for contexts of the last k events (k in :data:`ORDERS`), which events followed
them in the current piece.  Its prediction is a distribution over at most
:data:`K_CANDIDATES` whole events, blended from the longest matching context down with
PPM's escape method C and exclusion, renormalised over the candidates it kept, with a
*feature id* (longest order matched x how much mass the candidates took before the
renormalisation) that tells the network how far to trust it.  The network mixes it with
its own distribution through a learned gate (see :mod:`midi_bridge.model.rnn`).

Work per event is O(len(ORDERS) x MAX_TOKENS) and does not grow with the session: a
context is an integer key (a hash chain over its events' hashes) in one
:class:`~collections.OrderedDict` (key -> slot, least recently updated first: C-level O(1)
``move_to_end`` / ``popitem``); a slot's continuations are one small ``{event: count}``
dict, reused in place when the slot is; at most ``capacity`` contexts are kept (the least
recently updated is forgotten), so memory is bounded and, once the slots exist, an event
allocates no lasting objects (nothing new for Python's cyclic collector to walk as the
session goes on).  Measured (``bench model``'s played notes, the stepper's 4096): ~15 us
an event while the table fills, ~17 us once it is at its bound (a larger working set),
flat from there.

:meth:`PieceCache.mark` / :meth:`PieceCache.rollback` undo the events folded in between
(a discarded answer): while a mark is outstanding each update journals the few changes it
makes (bounded: past :data:`JOURNAL_LIMIT` entries the journal is dropped and a rollback
only restores the context).  The counts come back exactly; contexts the undone events
touched count as recently used.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

ORDERS = (1, 2, 3, 4, 6, 8, 12, 16)
K_CANDIDATES = 4
MAX_TOKENS = 6  # continuations kept per context (the rarest is dropped)
CONF_EDGES = (0.5, 0.85)
N_FEATURES = (len(ORDERS) + 1) * (len(CONF_EDGES) + 1)
JOURNAL_LIMIT = 16384  # journal entries kept for outstanding marks (about 2,000 events)
# journal entry kinds
_SET, _NEW, _EVICT = range(3)


class PieceCache:
    __slots__ = ("capacity", "index", "counts", "free", "history", "_hh", "_ctx", "_slots", "_journal", "_jid")

    def __init__(self, capacity: int = 8192):
        self.capacity = max(1, int(capacity))
        self.index: OrderedDict = OrderedDict()  # context key -> slot, least recently updated first
        self.counts: list[dict] = []  # slot -> {event: count}, first seen first (reused)
        self.free: list[int] = []  # slots no context uses
        self.history: list = []  # the last max(ORDERS) events, most recent last
        self._hh: list[int] = []  # their hashes
        self._ctx: list[int] = []  # keys of the contexts for the next event, shortest first
        self._slots: list | None = None  # their slots as predict() found them (None: look up)
        self._journal: list | None = None  # undo entries while a mark is outstanding
        self._jid = 0  # which journal the marks refer to

    def __len__(self) -> int:
        """Contexts kept."""
        return len(self.index)

    @property
    def toks(self) -> list[dict]:
        """The slots (at most ``capacity`` + one event's new contexts)."""
        return self.counts

    def contexts(self) -> dict:
        """``{context key: {event: count}}`` (for tests and inspection; not per event)."""
        return {key: dict(self.counts[s]) for key, s in self.index.items()}

    def reset(self) -> None:
        self.index.clear()
        for d in self.counts:
            d.clear()
        self.free = list(range(len(self.counts) - 1, -1, -1))
        self.history.clear()
        self._hh.clear()
        self._ctx = []
        self._slots = None
        self._drop_journal()

    def _drop_journal(self) -> None:
        self._journal = None
        self._jid += 1

    def mark(self) -> tuple:
        """A point to :meth:`rollback` to (O(1): later updates journal what they change)."""
        if self._journal is None:
            self._journal = []
        return (self._jid, len(self._journal), tuple(self.history), self._ctx)

    def rollback(self, mark: tuple) -> None:
        """Forget the events folded since ``mark`` (O(events since the mark))."""
        jid, pos, history, ctx = mark
        journal, index, counts, free = self._journal, self.index, self.counts, self.free
        if jid == self._jid and journal is not None and pos <= len(journal):
            while len(journal) > pos:
                e = journal.pop()
                kind, slot = e[0], e[1]
                if kind == _SET:
                    counts[slot] = e[2]
                elif kind == _NEW:  # a context created: its slot back to where it came from
                    del index[e[2]]
                    if e[3]:  # a slot made for it (the last one)
                        counts.pop()
                    else:
                        counts[slot].clear()
                        free.append(slot)
                else:  # _EVICT: the context back, as the least recently used
                    free.pop()  # (this slot: undone in reverse order, the free list is a stack)
                    counts[slot] = e[3]
                    index[e[2]] = slot
                    index.move_to_end(e[2], last=False)
            if pos == 0:
                self._drop_journal()
        self.history[:] = history
        self._hh[:] = [hash(e) for e in history]
        self._ctx = ctx
        self._slots = None

    def update(self, event: tuple) -> None:
        """Count ``event`` after the current contexts, then extend the context."""
        index, counts, journal = self.index, self.counts, self._journal
        slots = self._slots
        for i, key in enumerate(self._ctx):
            slot = index.get(key) if slots is None or slots[i] is None else slots[i]
            if slot is None:
                if self.free:
                    slot = self.free.pop()
                    made = False
                else:
                    slot = len(counts)
                    counts.append({})
                    made = True
                index[key] = slot  # most recently used last
                if journal is not None:
                    journal.append((_NEW, slot, key, made))
            else:
                index.move_to_end(key)
                if journal is not None:  # keep the old counts, change a copy
                    d = counts[slot]
                    journal.append((_SET, slot, d))
                    counts[slot] = dict(d)
            d = counts[slot]
            d[event] = d.get(event, 0) + 1
            if len(d) > MAX_TOKENS:  # the rarest goes (the first seen of equal ones)
                del d[min(d, key=d.get)]
        while len(index) > self.capacity:
            key, slot = index.popitem(last=False)
            if journal is not None:  # keep its counts for the undo; the slot gets a new dict
                journal.append((_EVICT, slot, key, counts[slot]))
                counts[slot] = {}
            else:
                counts[slot].clear()
            self.free.append(slot)
        if journal is not None and len(journal) > JOURNAL_LIMIT:
            self._drop_journal()
        hist, hh = self.history, self._hh
        hist.append(event)
        hh.append(hash(event))
        if len(hist) > ORDERS[-1]:
            del hist[0], hh[0]
        # the contexts' keys: a hash chain over the last k events, k in ORDERS
        ctx = []
        h = 0
        n = len(hh)
        oi = 0
        want = ORDERS[0]
        for k in range(1, n + 1):
            h = hash((h, hh[n - k]))
            if k == want:
                ctx.append(h + oi)
                oi += 1
                if oi == len(ORDERS):
                    break
                want = ORDERS[oi]
        self._ctx = ctx
        self._slots = None

    def predict(self) -> tuple[list[tuple], list[float], int]:
        """``(candidate events, their probabilities (summing to 1), feature id)``; no
        candidates and feature 0 when no context of this piece has been seen."""
        index, counts = self.index, self.counts
        probs: dict = {}
        remaining = 1.0
        top_order = 0
        ctx = self._ctx
        slots = self._slots = [index.get(key) for key in ctx]  # (for the next update)
        for i in range(len(ctx) - 1, -1, -1):
            slot = slots[i]
            if slot is None:
                continue
            d = counts[slot]
            if not d:
                continue
            if not top_order:
                top_order = i + 1
            fresh = [(t, c) for t, c in d.items() if t not in probs]
            if not fresh:
                continue
            denom = sum(c for _, c in fresh) + len(fresh)
            for t, c in fresh:
                probs[t] = remaining * c / denom
            remaining *= len(fresh) / denom
            if len(probs) >= K_CANDIDATES:
                break
        if not probs:
            return [], [], 0
        best = sorted(probs.items(), key=lambda tc: -tc[1])[:K_CANDIDATES]
        mass = sum(p for _, p in best)
        conf = sum(mass >= e for e in CONF_EDGES)
        return [t for t, _ in best], [p / mass for _, p in best], top_order * (len(CONF_EDGES) + 1) + conf


def piece_features(rows: np.ndarray, sizes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Teacher-forcing features of one piece, position t from the events before t:
    ``cand [n, K, F]`` (value ``size`` = no candidate), ``q [n, K]`` and ``feat [n]``."""
    n, f = rows.shape
    cand = np.empty((n, K_CANDIDATES, f), dtype=np.int16)
    cand[:] = np.asarray(sizes, dtype=np.int16)
    q = np.zeros((n, K_CANDIDATES), dtype=np.float32)
    feat = np.zeros(n, dtype=np.int16)
    cache = PieceCache(capacity=1 << 30)
    for t, ev in enumerate(tuple(r) for r in rows.tolist()):
        cands, probs, fid = cache.predict()
        for i, (c, p) in enumerate(zip(cands, probs)):
            cand[t, i] = c
            q[t, i] = p
        feat[t] = fid
        cache.update(ev)
    return cand, q, feat
