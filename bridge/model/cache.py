"""In-piece copy statistics: the continuation of the longest repeated context.

Folk tunes and chorales repeat themselves (repeats are written out).  :class:`PieceCache`
remembers, for contexts of the last k events (k in :data:`ORDERS`), what followed them
most recently in the current piece or session.  Its prediction for the next event is that
continuation for the longest context seen before, with a *feature id* telling the model
how far to trust it (the order matched, and whether the context's last two continuations
agreed).  The network mixes the candidate with its own distribution through a learned
gate (see :mod:`bridge.model.rnn`).

Work per event is O(len(ORDERS)) dictionary operations; memory is bounded by
``capacity`` contexts (least recently used ones are forgotten), so a session of any
length stays flat.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

ORDERS = (1, 2, 3, 4, 6, 8, 12, 16)
N_FEATURES = (len(ORDERS) + 1) * 3  # order index 0..len(ORDERS) x confidence 0..2


class PieceCache:
    __slots__ = ("orders", "capacity", "table", "history", "_ctx")

    def __init__(self, capacity: int = 1 << 16):
        self.orders = ORDERS
        self.capacity = capacity
        self.table: OrderedDict = OrderedDict()
        self.history: list = []  # the last max(ORDERS) events, most recent last
        self._ctx: list[tuple[int, int]] = []  # (order index, context hash) for the next event

    def reset(self) -> None:
        self.table.clear()
        self.history.clear()
        self._ctx = []

    def update(self, event: tuple) -> None:
        """Record that ``event`` followed the current context, then extend the context."""
        table = self.table
        for key in self._ctx:
            entry = table.pop(key, None)
            if entry is None:
                table[key] = (event, 1, False)
            else:
                table[key] = (event, entry[1] + 1, entry[0] == event)
        while len(table) > self.capacity:
            table.popitem(last=False)
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

    def predict(self) -> tuple[tuple | None, int]:
        """(candidate next event or None, feature id)."""
        table = self.table
        for key in reversed(self._ctx):
            entry = table.get(key)
            if entry is not None:
                conf = 0 if entry[1] == 1 else (2 if entry[2] else 1)
                return entry[0], key[0] * 3 + conf
        return None, 0


def piece_features(rows: np.ndarray, sizes) -> tuple[np.ndarray, np.ndarray]:
    """Teacher-forcing features for one piece: ``cand [n, F]`` (``size`` = no candidate)
    and ``feat [n]``, position t computed from events before t."""
    n, f = rows.shape
    cand = np.empty((n, f), dtype=np.int16)
    cand[:] = np.asarray(sizes, dtype=np.int16)
    feat = np.zeros(n, dtype=np.int16)
    cache = PieceCache(capacity=1 << 30)
    events = [tuple(r) for r in rows.tolist()]
    for t, ev in enumerate(events):
        c, fid = cache.predict()
        if c is not None:
            cand[t] = c
            feat[t] = fid
        cache.update(ev)
    return cand, feat
