"""In-piece statistics: a small PPM over the events of the current piece or session.

Folk tunes and chorales repeat themselves (repeats are written out).  :class:`PieceCache`
counts, for contexts of the last k events (k in :data:`ORDERS`), which events followed
them in the current piece.  Its prediction is a distribution over at most
:data:`K_CANDIDATES` whole events, blended from the longest matching context down with
PPM's escape method C and exclusion, renormalised over the candidates it kept, with a
*feature id* (longest order matched x how much mass the candidates took before the
renormalisation) that tells the network how far to trust it.  The network mixes it with
its own distribution through a learned gate (see :mod:`midi_bridge.model.rnn`).

Work per event is O(len(ORDERS) x MAX_TOKENS) dictionary operations; memory is bounded by
``capacity`` contexts (least recently used ones are forgotten), so a session of any length
stays flat.

:meth:`PieceCache.mark` / :meth:`PieceCache.rollback` undo the events folded in between
(a discarded answer): while a mark is outstanding each update journals the few entries it
changes (bounded: past :data:`JOURNAL_LIMIT` entries the journal is dropped and a rollback
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
_EVICT = object()


class PieceCache:
    __slots__ = ("capacity", "table", "history", "_ctx", "_journal", "_jid")

    def __init__(self, capacity: int = 8192):
        self.capacity = capacity
        self.table: OrderedDict = OrderedDict()  # (order index, hash) -> {event: count}
        self.history: list = []  # the last max(ORDERS) events, most recent last
        self._ctx: list[tuple[int, int]] = []  # context keys for the next event, shortest first
        self._journal: list | None = None  # undo entries while a mark is outstanding
        self._jid = 0  # which journal the marks refer to

    def reset(self) -> None:
        self.table.clear()
        self.history.clear()
        self._ctx = []
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
        journal, table = self._journal, self.table
        if jid == self._jid and journal is not None and pos <= len(journal):
            while len(journal) > pos:
                entry = journal.pop()
                if entry[0] is _EVICT:
                    table[entry[1]] = entry[2]
                    table.move_to_end(entry[1], last=False)
                elif entry[1] is None:
                    del table[entry[0]]
                else:
                    table[entry[0]] = entry[1]
            if pos == 0:
                self._drop_journal()
        self.history[:] = history
        self._ctx = ctx

    def update(self, event: tuple) -> None:
        """Count ``event`` after the current contexts, then extend the context."""
        table, journal = self.table, self._journal
        for key in self._ctx:
            counts = table.pop(key, None)
            if journal is not None:  # keep the old counts, change a copy
                journal.append((key, counts))
                counts = {} if counts is None else dict(counts)
            elif counts is None:
                counts = {}
            counts[event] = counts.get(event, 0) + 1
            if len(counts) > MAX_TOKENS:
                del counts[min(counts, key=counts.get)]
            table[key] = counts  # most recently used last
        while len(table) > self.capacity:
            old = table.popitem(last=False)
            if journal is not None:
                journal.append((_EVICT, *old))
        if journal is not None and len(journal) > JOURNAL_LIMIT:
            self._drop_journal()
        hist = self.history
        hist.append(event)
        if len(hist) > ORDERS[-1]:
            del hist[0]
        ctx = []
        h = 0
        n = len(hist)
        oi = 0
        for k in range(1, n + 1):
            h = hash((h, hist[n - k]))
            if k == ORDERS[oi]:
                ctx.append((oi + 1, h))
                oi += 1
                if oi == len(ORDERS):
                    break
        self._ctx = ctx

    def predict(self) -> tuple[list[tuple], list[float], int]:
        """``(candidate events, their probabilities (summing to 1), feature id)``; no
        candidates and feature 0 when no context of this piece has been seen."""
        table = self.table
        probs: dict = {}
        remaining = 1.0
        top_order = 0
        for key in reversed(self._ctx):
            counts = table.get(key)
            if not counts:
                continue
            if not top_order:
                top_order = key[0]
            fresh = [(t, c) for t, c in counts.items() if t not in probs]
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
