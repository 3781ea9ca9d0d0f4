"""Prediction by Partial Matching (PPM) over arbitrary hashable tokens.

Escape method C with exclusion (Cleary & Witten 1984; method C: Moffat 1990,
"Implementing the PPM data compression scheme"), with an optional in-piece count table.
It gives properly normalised probabilities, so an offline evaluator can report bits per
token with it (``midi-bridge evaluate``'s ``markov`` and ``unigram`` baselines,
:mod:`midi_bridge.training.evaluate`); :func:`choose` is the temperature-sharpened draw
it samples with, which the ``markov`` generator's Continuator shares.
"""

from __future__ import annotations

import math
import random
from collections import deque
from typing import Any, Hashable

from .idyom import Prior, escape_c


class _Node:
    """A context of the PPM suffix trie: counts of the tokens that followed it."""

    __slots__ = ("counts", "children")

    def __init__(self) -> None:
        self.counts: dict[Hashable, int] = {}
        self.children: dict[Hashable, _Node] = {}


class PPM:
    """Variable-order PPM model (escape method C, with exclusion) over hashable tokens.

    The model reads one running sequence: :meth:`update` learns that ``token`` followed the
    current context and then appends it to the context; :meth:`reset_context` starts a new
    sequence (a new piece) without forgetting any counts.

    **Prediction.**  Contexts of order ``k`` (the last ``k`` tokens, ``k = max_order .. 0``)
    are visited longest first.  In a context with (non-excluded) counts ``c(s)``, total
    ``n`` and ``q`` distinct tokens, method C gives ``P(s) = c(s) / (n + q)`` and escapes
    to order ``k - 1`` with ``q / (n + q)``.  Exclusion: tokens already given a probability
    by a longer context are left out of the shorter ones (their counts are not in ``n``
    or ``q``); a context left with no tokens passes all its mass down.

    **Unseen tokens.**  Below order 0 sits an order -1 model that is uniform over an
    alphabet of ``alphabet_size`` tokens: each token never seen gets
    ``escape / (alphabet_size - seen)``, where ``escape`` is the mass that reached order -1
    and ``seen`` the number of distinct tokens learned so far.  ``alphabet_size`` must
    therefore be the size of the token vocabulary (e.g. 128 for MIDI pitches).  If every
    token of the alphabet has been seen, the escape mass is renormalised over them.  With a
    ``prior`` (:class:`midi_bridge.model.idyom.Prior`, e.g. the product of per-field
    marginals of rows) the escape mass is shared in proportion to the prior instead:
    ``escape * prior(x) / (1 - sum of the prior over the seen tokens)``.

    **In-piece table.**  With ``piece_weight = w > 0`` a second count table holds only the
    current piece (it is cleared by :meth:`reset_context`); prediction uses the blended
    counts ``c_global(s) + w * c_piece(s)`` in every context (``q`` is the number of
    distinct tokens in the blend), so the model "learns from the piece as it goes" and
    recent material weighs more.  Still plain PPM-C on (weighted) counts: it normalises.
    ``update(token, train=False)`` advances the context and the in-piece table but leaves
    the global counts alone - what an evaluator wants while scoring held-out pieces.

    Counts are updated at every order (no update exclusion).  :meth:`update` touches
    ``max_order + 1`` trie nodes per table whatever the length of the history
    (``ops`` counts them); :meth:`distribution` costs the sizes of the contexts visited.
    """

    def __init__(self, max_order: int = 8, alphabet_size: int = 128, piece_weight: float = 0.0,
                 prior: Prior | None = None) -> None:
        if not 0 <= max_order <= 32:
            raise ValueError("max_order must be in 0..32")
        if alphabet_size < 1:
            raise ValueError("alphabet_size must be >= 1")
        if piece_weight < 0:
            raise ValueError("piece_weight must be >= 0")
        self.max_order = max_order
        self.alphabet_size = alphabet_size
        self.piece_weight = float(piece_weight)
        self.prior = prior
        self.ops = 0  # trie nodes touched by update(): instrumentation for tests
        self._root = _Node()
        self._piece = _Node()
        self._context: deque[Hashable] = deque(maxlen=max_order)

    # -- learning ---------------------------------------------------------------------
    def update(self, token: Hashable, train: bool = True) -> None:
        """Learn that ``token`` follows the current context, then append it to the context."""
        if train:
            self._learn(self._root, token)
        if self.piece_weight > 0:
            self._learn(self._piece, token)
        self._context.append(token)

    def _learn(self, node: _Node, token: Hashable) -> None:
        node.counts[token] = node.counts.get(token, 0) + 1
        self.ops += 1
        for prev in reversed(self._context):
            child = node.children.get(prev)
            if child is None:
                child = node.children[prev] = _Node()
            node = child
            node.counts[token] = node.counts.get(token, 0) + 1
            self.ops += 1

    def reset_context(self) -> None:
        """Start a new sequence: empty context and in-piece table; global counts are kept."""
        self._context.clear()
        self._piece = _Node()

    # -- prediction -------------------------------------------------------------------
    def _path(self, root: _Node) -> list[_Node]:
        """Nodes of the current context in ``root``'s trie, order 0 first."""
        path = [root]
        node = root
        for prev in reversed(self._context):
            node = node.children.get(prev)  # type: ignore[assignment]
            if node is None:
                break
            path.append(node)
        return path

    def distribution(self) -> tuple[dict[Hashable, float], float]:
        """Predict the next token: ``(probs, escape)``.

        ``probs`` maps every token seen so far to its probability; ``escape`` is the total
        probability left for the ``alphabet_size - len(probs)`` unseen tokens (shared
        equally among them, or by the ``prior``).  ``sum(probs.values()) + escape == 1``.
        """
        gpath = self._path(self._root)
        ppath = self._path(self._piece) if self.piece_weight > 0 else []
        w = self.piece_weight
        levels = [[(path[k].counts, weight) for path, weight in ((gpath, 1.0), (ppath, w)) if k < len(path)]
                  for k in range(max(len(gpath), len(ppath)) - 1, -1, -1)]
        probs, remaining = escape_c(levels)
        if self.alphabet_size - len(probs) > 0:
            return probs, remaining
        total = 1.0 - remaining  # alphabet exhausted: nothing to escape to
        return {t: p / total for t, p in probs.items()}, 0.0

    def prob(self, token: Hashable) -> float:
        """Probability of ``token`` next (0 only if the alphabet is exhausted without it)."""
        probs, escape = self.distribution()
        if token in probs:
            return probs[token]
        if self.prior is not None:
            return escape * self.prior.unseen_price(probs, token)
        unseen = self.alphabet_size - len(probs)
        return escape / unseen if unseen > 0 else 0.0

    def log2prob(self, token: Hashable) -> float:
        """``log2(prob(token))`` (``-inf`` for probability 0)."""
        p = self.prob(token)
        return math.log2(p) if p > 0 else -math.inf

    def sample(self, rng: random.Random, temperature: float = 1.0) -> Hashable | None:
        """Draw a seen token (the escape mass is dropped and the rest renormalised).

        Probabilities are raised to ``1 / temperature``; ``temperature <= 0`` takes the
        most probable token.  Returns ``None`` before anything has been learned.
        """
        probs, _ = self.distribution()
        if not probs:
            return None
        return choose(rng, list(probs.items()), temperature)


def choose(rng: random.Random, weighted: list[tuple[Any, float]], temperature: float) -> Any:
    """Pick an item from ``(item, weight)`` pairs, weights sharpened by ``temperature``."""
    if temperature <= 0:
        return max(weighted, key=lambda iw: iw[1])[0]
    top = max(w for _, w in weighted)
    scaled = [(item, (w / top) ** (1.0 / temperature)) for item, w in weighted]
    r = rng.random() * sum(w for _, w in scaled)
    for item, w in scaled:
        r -= w
        if r < 0:
            return item
    return scaled[-1][0]


def choose_index(rng: random.Random, weights, temperature: float) -> int:
    """:func:`choose` over a numpy array of weights: the index drawn (``temperature <= 0``:
    the largest).  The same draw as ``choose(rng, list(enumerate(weights)), temperature)``."""
    import numpy as np

    w = np.asarray(weights, dtype=np.float64)
    if temperature <= 0:
        return int(np.argmax(w))
    scaled = (w / w.max()) ** (1.0 / temperature)
    cum = np.cumsum(scaled)
    r = rng.random() * float(cum[-1])
    return min(int(np.searchsorted(cum, r, side="right")), len(w) - 1)
