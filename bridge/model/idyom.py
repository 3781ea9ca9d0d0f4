"""IDyOM-style combination of PPM predictors (Pearce 2005, "The construction and evaluation
of statistical models of melodic structure in music perception and composition", ch. 6).

Three pieces, shared by ``midi-bridge evaluate``'s ``markov`` baseline
(:mod:`midi_bridge.training.evaluate`) and the ``markov`` generator (``plugins/markov.py``):

* :class:`Prior` - the price of a token no model has seen.  :meth:`Prior.fields` is the
  product of per-field marginals (``p(row) = prod_f p_f(row[f])``, each ``p_f`` the
  training counts of field ``f`` with ``alpha`` added to every value), which is what a row
  never seen in training gets instead of ``1 / |A|`` over a 38.8 M row alphabet;
  :meth:`Prior.uniform` is that uniform price.
* :func:`escape_c` - PPM escape method C with exclusion over a list of contexts (longest
  first), each the weighted sum of some count tables.  :class:`~midi_bridge.model.ppm.PPM`
  predicts with it.
* :func:`mix` - models combined by entropy weights: model ``m`` weighs
  ``w_m = (H_m / log2 |A|) ** -b``, ``H_m`` the entropy (bits) of its predictive
  distribution for this event over the whole alphabet (its escape mass spread by the prior),
  and the mixture is arithmetic (``sum_m w_m p_m / sum_m w_m``) or geometric
  (``prod_m p_m ** (w_m / sum w) / Z``, normalised over the whole alphabet).  ``b = 0``
  weighs the models equally; the larger ``b``, the more the surer model dominates.

Each model's distribution is ``(probs, escape)``: explicit probabilities of the tokens it
has seen and the mass ``escape`` of all the others, which it shares in proportion to the
prior: ``p_m(x) = escape * prior(x) / (1 - sum_{seen by m} prior)``.  All models of one
mixture share one prior, so a token no model has seen has ``p(x) = c * prior(x)`` under the
mixture too, and every sum over the alphabet is a sum over the union of the seen tokens
plus a closed form for the rest (``Prior.entropy`` is the prior's own entropy).
"""

from __future__ import annotations

import math
from typing import Any, Hashable, Iterable, Mapping, Sequence

import numpy as np

MIXES = ("arithmetic", "geometric")
_TINY = 1e-300


class Prior:
    """Price of tokens nobody has seen: per-field marginals, or uniform over ``size`` tokens."""

    def __init__(self, size: float, marginals: Sequence[tuple[dict, float, float, int]] | None = None) -> None:
        # marginals, per field: (value counts, total + alpha * number of values, alpha, number of values)
        self.size = float(size)
        self.log2_size = math.log2(size)
        self._fields = [m[:3] for m in marginals] if marginals is not None else None
        self._memo: dict[Hashable, float] = {}
        self.entropy = self.log2_size  # bits, of the prior over the whole alphabet
        if marginals is not None:
            self.entropy = 0.0
            for counts, denom, alpha, n_values in marginals:
                for c in counts.values():
                    p = (c + alpha) / denom
                    self.entropy -= p * math.log2(p)
                rest = n_values - len(counts)
                if rest > 0 and alpha > 0:
                    p = alpha / denom
                    self.entropy -= rest * p * math.log2(p)

    @classmethod
    def uniform(cls, size: float) -> "Prior":
        return cls(size)

    @classmethod
    def fields(cls, rows: Iterable[Sequence[Hashable]], sizes: Sequence[int], alpha: float = 0.5) -> "Prior":
        """Marginals of each field over ``rows`` (field ``f`` takes ``sizes[f]`` values), plus
        ``alpha`` for every value so that nothing costs infinitely many bits."""
        if alpha <= 0:
            raise ValueError("alpha must be > 0")
        counts: list[dict] = [dict() for _ in sizes]
        n = 0
        for row in rows:
            n += 1
            for f, v in enumerate(row):
                counts[f][v] = counts[f].get(v, 0) + 1
        return cls(math.prod(sizes), [(c, n + alpha * s, alpha, s) for c, s in zip(counts, sizes)])

    def price(self, token) -> float:
        if self._fields is None:
            return 1.0 / self.size
        p = self._memo.get(token)
        if p is None:
            p = 1.0
            for v, (counts, denom, alpha) in zip(token, self._fields):
                p *= (counts.get(v, 0) + alpha) / denom
            if len(self._memo) < 1 << 20:
                self._memo[token] = p
        return p

    def unseen_price(self, probs: Mapping, token) -> float:
        """Probability share of an unseen ``token`` per unit of escape mass."""
        z = 1.0 - sum(self.price(t) for t in probs)
        return self.price(token) / z if z > 1e-12 else 0.0


def escape_c(levels: Iterable[Sequence[tuple[Mapping[Hashable, float], float]]]) -> tuple[dict, float]:
    """PPM-C with exclusion: ``levels`` are the contexts from the longest to order 0, each a
    list of ``(counts, weight)`` tables whose weighted sum are its counts.  In a context with
    (non-excluded) counts ``c(s)``, total ``n`` and ``q`` distinct tokens, ``P(s) = c(s) /
    (n + q)`` and ``q / (n + q)`` escapes to the next; tokens given a probability by a longer
    context are excluded from the shorter ones.  Returns ``(probs, escape)``."""
    probs: dict[Hashable, float] = {}
    remaining = 1.0
    for tables in levels:
        counts: dict[Hashable, float] = {}
        for table, w in tables:
            if w <= 0:
                continue
            for t, c in table.items():
                if t not in probs:
                    counts[t] = counts.get(t, 0.0) + w * c
        q = len(counts)
        if q == 0:
            continue  # nothing left here: all the mass escapes
        denom = sum(counts.values()) + q
        for t, c in counts.items():
            probs[t] = remaining * c / denom
        remaining *= q / denom
    return probs, remaining


class Predictions:
    """Some models' ``(probs, escape)`` for one event, over the union of their seen tokens:
    each model's probability of every union token, its entropy over the whole alphabet, and
    the coefficient ``c`` of ``p(x) = c * prior(x)`` for the tokens it has not seen.
    :meth:`mix` combines them (cheaply, so that many settings can be scored on one pass).
    :meth:`from_arrays` takes the models' probabilities as arrays over a token list."""

    def __init__(self, dists: Sequence[tuple[Mapping, float]], prior: Prior) -> None:
        index: dict[Hashable, int] = dict.fromkeys(dists[0][0]) if dists else {}
        for i, t in enumerate(index):
            index[t] = i
        for probs, _ in dists[1:]:
            for t in probs:
                if t not in index:
                    index[t] = len(index)
        tokens = list(index)
        n = len(tokens)
        models = []
        for j, (probs, escape) in enumerate(dists):
            k = len(probs)
            pe, explicit = np.zeros(n), np.zeros(n, dtype=bool)
            idx = slice(0, k) if j == 0 else np.fromiter((index[t] for t in probs), dtype=np.int64, count=k)
            pe[idx] = np.fromiter(probs.values(), dtype=np.float64, count=k)  # the first model's tokens
            explicit[idx] = True  # open the union, in order
            models.append((pe, explicit, escape))
        m = np.fromiter((prior.price(t) for t in tokens), dtype=np.float64, count=n)
        self._setup(tokens, index, prior, m, models)

    @classmethod
    def from_arrays(cls, tokens: Sequence[Hashable], prior: Prior, models, m: np.ndarray | None = None,
                    index: dict | None = None) -> "Predictions":
        """``models``: per model ``(probs, escape)`` with ``probs`` an array over ``tokens``
        (0 where the model gives the token no probability of its own)."""
        self = cls.__new__(cls)
        if m is None:
            m = np.fromiter((prior.price(t) for t in tokens), dtype=np.float64, count=len(tokens))
        self._setup(tokens, index, prior, m, [(p, p > 0, e) for p, e in models])
        return self

    def _setup(self, tokens, index, prior: Prior, m: np.ndarray, models) -> None:
        self.tokens, self.prior = tokens, prior
        self._index = index
        self.rest = max(0.0, 1.0 - float(m.sum()))  # prior mass off the union
        mlogm = float(np.dot(m, np.log2(np.maximum(m, _TINY))))
        self.ps, self.tails, self.entropies = [], [], []
        self._logps = None
        for pe, explicit, escape in models:
            z = 1.0 - float(m[explicit].sum())
            c = escape / z if escape > 0 and z > 1e-12 else 0.0  # p(x) = c * prior(x) off its seen set
            p = np.where(explicit, pe, c * m)
            h = -float(np.dot(p, np.log2(np.maximum(p, _TINY))))
            if c > 0:  # the tokens outside the union: c * prior(x) each
                h += -c * self.rest * math.log2(c) + c * (prior.entropy + mlogm)
            self.ps.append(p)
            self.tails.append(c)
            self.entropies.append(max(h, 0.0))

    @property
    def index(self) -> dict:
        if self._index is None:
            self._index = {t: i for i, t in enumerate(self.tokens)}
        return self._index

    def weights(self, b: float) -> list[float]:
        """Entropy weights ``(H_m / log2 |A|) ** -b``, normalised to sum 1."""
        raw = [max(h / self.prior.log2_size, 1e-12) ** -b for h in self.entropies]
        total = sum(raw)
        return [r / total for r in raw]

    def mix(self, b: float, kind: str = "arithmetic") -> "Mixture":
        if kind not in MIXES:
            raise ValueError(f"mix must be one of {MIXES}, not {kind!r}")
        w = self.weights(b)
        if kind == "arithmetic":
            p = sum((wi * pi for wi, pi in zip(w, self.ps)), np.zeros(len(self.tokens)))
            tail = float(sum(wi * c for wi, c in zip(w, self.tails)))
        else:
            if self._logps is None:
                with np.errstate(divide="ignore"):
                    self._logps = [np.log(pi) for pi in self.ps]
            logp = sum((wi * lp for wi, lp in zip(w, self._logps)), np.zeros(len(self.tokens)))
            logc = sum(wi * math.log(c) if c > 0 else -math.inf for wi, c in zip(w, self.tails))
            g = np.exp(logp)
            gt = math.exp(logc) if logc > -math.inf else 0.0
            z = float(g.sum()) + gt * self.rest
            p, tail = g / z, gt / z
        return Mixture(self, w, p, tail, kind)


class Mixture:
    """The entropy-weighted mixture for one event: ``p`` over ``tokens`` (the union of the
    models' seen tokens), ``tail * prior.price(x)`` for any other token."""

    def __init__(self, pred: Predictions, weights, p, tail: float, kind: str) -> None:
        self.tokens, self._pred, self.prior = pred.tokens, pred, pred.prior
        self.entropies, self.weights, self.p, self.tail, self.kind = pred.entropies, weights, p, tail, kind

    def prob(self, token) -> float:
        i = self._pred.index.get(token)
        if i is not None:
            return float(self.p[i])
        return self.tail * self.prior.price(token)

    def argmax(self):
        """The most probable seen token (``None`` when no model has seen any)."""
        return self.tokens[int(np.argmax(self.p))] if self.tokens else None

    def seen(self) -> list[tuple[Hashable, float]]:
        """``(token, probability)`` of the tokens some model has seen."""
        return list(zip(self.tokens, self.p.tolist()))


def mix(dists, prior: Prior, b: float, kind: str = "arithmetic") -> Mixture:
    """The entropy-weighted mixture of ``dists`` (each ``(probs, escape)``) for one event."""
    return Predictions(dists, prior).mix(b, kind)


def escape_c_dense(levels: Iterable[Mapping[Hashable, Any]], ids: Mapping[Hashable, int], order0: np.ndarray,
                   count=None) -> tuple[np.ndarray, float]:
    """:func:`escape_c` (one table per context, weight 1) with the order-0 context held as
    an array of counts by token id (``order0[ids[t]]``), for a live model whose order 0
    holds every token it knows: the longer ``levels`` (longest first, order 1 last) are
    small dictionaries, and order 0 costs a few array operations instead of a Python loop.
    ``count`` turns a table's values into counts (default: they are counts).  Returns
    ``(probs by id, escape)``; ``probs`` has ``len(order0)`` entries."""
    probs = np.zeros(len(order0))
    remaining = 1.0
    done: list[int] = []
    excluded: set = set()
    for table in levels:
        counts = {}
        for t, v in table.items():
            if t not in excluded:
                counts[t] = count(v) if count is not None else v
        q = len(counts)
        if q == 0:
            continue
        denom = sum(counts.values()) + q
        for t, c in counts.items():
            i = ids[t]
            probs[i] = remaining * c / denom
            done.append(i)
            excluded.add(t)
        remaining *= q / denom
    c0 = order0.astype(np.float64)
    if done:
        c0[done] = 0.0
    q = int(np.count_nonzero(c0))
    if q:
        denom = float(c0.sum()) + q
        probs += remaining * c0 / denom
        remaining *= q / denom
    return probs, remaining
