"""The stepper's field-by-field sampling (a base class of
:class:`~midi_bridge.model.step.Stepper`): a few numpy ops per field on preallocated
float64 buffers, ``exp(logits / T)`` (the max subtracted only where the sum would leave a
safe range), the in-piece candidates' mass added as scalars, one sort and cumulative sum
for top-p and one ``rng.random()`` per sampled field (the same draws as
:func:`~midi_bridge.model.sampling.sample_index` on ``Stepper.probs``).

It reads the stepper's ``sizes``, ``F``, ``spec``, ``rng``, ``cands``/``q`` and calls its
``_gate``, ``_logits0``, ``_next``, ``_mix`` and ``_rnn_logits``.
"""

from __future__ import annotations

import numpy as np

from .sampling import sample_index

_INF = float("inf")
_LO, _HI = 1e-280, 1e280  # where a softmax's sum is taken without its max subtracted


class FieldSampler:
    """Sampling the next event field by field from a stepper's logits."""

    def _sample_buffers(self) -> None:
        n = max(self.sizes)
        self._p = np.zeros(n, dtype=np.float64)
        self._pm = np.zeros(n, dtype=np.float64)
        self._ps = np.zeros(n, dtype=np.float64)
        self._cum = np.zeros(n, dtype=np.float64)
        self._pk = [self._p[:s] for s in self.sizes]
        self._pmk = [self._pm[:s] for s in self.sizes]
        self._psk = [self._ps[:s] for s in self.sizes]
        self._cumk = [self._cum[:s] for s in self.sizes]
        self._srt = np.zeros(n, dtype=np.float64)
        self._srtk = [self._srt[:s] for s in self.sizes]
        self._alive = np.zeros(4, dtype=np.float64)
        self._cand_arr = np.zeros((4, self.F), dtype=np.intp)
        self._cand_q = np.zeros(4, dtype=np.float64)

    def sample(self, temperature: float = 1.0, top_p: float = 1.0, masks=None, given=()) -> tuple:
        """Sample the next event field by field (the network's fields at ``temperature``,
        mixed with the in-piece candidates).  ``masks`` maps a field name to a boolean
        array of allowed values; ``given`` fixes the first fields (e.g. dt and pitch)."""
        event = [int(v) for v in given]
        n_given = len(event)
        inv_t = 1.0 / max(temperature, 1e-4) if temperature != 1.0 else 1.0
        g = self._gate()
        # the candidates still agreeing with the sampled prefix, and their mass (at most
        # K_CANDIDATES = 4 of them: scalar work, cheaper than any array op here)
        alive = list(zip(self.cands, self.q)) if g > 0.0 else ()
        fields = self.spec.fields
        mul, exp = np.multiply, np.exp
        r = 1.0
        with np.errstate(over="ignore"):  # (an overflow is caught by the range check)
            for k in range(self.F):
                logits = self._logits0() if k == 0 else self._next(k, event)
                e = self._pk[k]
                # exp(logits / T) without the max subtracted (one op less); where its sum
                # leaves a safe range (extreme logits or temperatures) it is done again with it
                if inv_t == 1.0:
                    exp(logits, out=e)
                else:
                    mul(logits, inv_t, out=e)
                    exp(e, out=e)
                if k < n_given:
                    v = event[k]
                    Z = float(e.sum())
                    if not _LO < Z < _HI:
                        Z = self._softmax_safe(k, logits, inv_t)
                    r *= e[v] / Z
                else:
                    mask = None if masks is None else masks.get(fields[k].name)
                    if mask is None and not alive:
                        v, Z = self._pick_rnn(k, e, top_p, logits, inv_t, event, temperature)
                        r *= e[v] / Z
                    else:
                        Z = float(e.sum())
                        if not _LO < Z < _HI:
                            Z = self._softmax_safe(k, logits, inv_t)
                        p, total = e, Z
                        if alive:  # g q + (1 - g) p_rnn, in the units of e: e + q g Z / ((1 - g) r)
                            p = self._pmk[k]
                            p[:] = e
                            w = (1.0 - g) * r
                            if w > 0.0:
                                scale = g * Z / w
                                for c, qc in alive:
                                    p[c[k]] += qc * scale
                                    total += qc * scale
                            else:  # (the network's part underflowed: the candidates alone)
                                p.fill(0.0)
                                total = 0.0
                                for c, qc in alive:
                                    p[c[k]] += qc
                                    total += qc
                        if mask is not None:
                            pm = self._psk[k]
                            mul(p, mask, out=pm)
                            total = float(pm.sum())
                            p = pm
                        if 0.0 < total < _INF:
                            v = self._pick(k, p, total, top_p)
                        else:  # NaN/inf, or the mask's values all underflowed
                            v = self._draw_slow(k, self._mix(k, event, e / Z, r, g), mask, top_p, event, temperature)
                        r *= e[v] / Z
                    event.append(v)
                if alive:
                    alive = [cq for cq in alive if cq[0][k] == v]
        return tuple(event)

    def _softmax_safe(self, k: int, logits, inv_t: float) -> float:
        """``_p[:size_k] = exp(logits / T - max)``; returns their sum."""
        e = self._pk[k]
        np.multiply(logits, inv_t, out=e)
        np.subtract(e, e.max(), out=e)
        np.exp(e, out=e)
        return float(e.sum())

    def _pick(self, k: int, p: np.ndarray, total: float, top_p: float) -> int:
        """Draw from the unnormalised ``p`` (sum ``total`` > 0): one ``rng.random()``; with
        ``top_p`` < 1 from the smallest set of most likely values holding that mass."""
        cum = self._cumk[k]
        if top_p < 1.0:
            order = p.argsort()[::-1]
            np.take(p, order, out=self._srtk[k])
            np.cumsum(self._srtk[k], out=cum)
            keep = min(int(cum.searchsorted(top_p * total)) + 1, self.sizes[k])
            u = self.rng.random() * cum[keep - 1]
            return int(order[min(int(cum.searchsorted(u, side="right")), keep - 1)])
        np.cumsum(p, out=cum)
        u = self.rng.random() * total
        return min(int(cum.searchsorted(u, side="right")), self.sizes[k] - 1)

    def _pick_rnn(self, k, e, top_p, logits, inv_t, event, temperature) -> tuple[int, float]:
        """:meth:`_pick` from the network's ``e`` alone, its sum taken from the cumulative
        sum the draw needs anyway; returns ``(value, sum)``."""
        cum = self._cumk[k]
        if top_p < 1.0:
            order = e.argsort()[::-1]
            np.take(e, order, out=self._srtk[k])
            np.cumsum(self._srtk[k], out=cum)
        else:
            np.cumsum(e, out=cum)
        Z = float(cum[-1])
        if not _LO < Z < _HI:
            Z = self._softmax_safe(k, logits, inv_t)
            if not 0.0 < Z < _INF:
                return self._draw_slow(k, e, None, top_p, event, temperature), Z
            return self._pick(k, e, Z, top_p), Z
        if top_p < 1.0:
            keep = min(int(cum.searchsorted(top_p * Z)) + 1, self.sizes[k])
            u = self.rng.random() * cum[keep - 1]
            return int(order[min(int(cum.searchsorted(u, side="right")), keep - 1)]), Z
        u = self.rng.random() * Z
        return min(int(cum.searchsorted(u, side="right")), self.sizes[k] - 1), Z

    def _draw_slow(self, k, p, mask, top_p, event, temperature) -> int:
        """NaN/inf, or a mask whose every allowed value underflowed (a low temperature):
        the general path (the network's distribution over the allowed values only, so the
        mask still holds; non-finite logits refused by :func:`sample_index`)."""
        p = np.array(p, dtype=np.float64)
        if mask is not None and np.any(mask) and not np.any(np.where(mask, p, 0.0) > 0):
            logits = np.where(mask, self._rnn_logits(k, event, temperature), -np.inf)
            if np.isfinite(logits.max()):
                p = np.exp(logits - logits.max())
        return sample_index(p, self.rng, top_p=top_p, mask=mask)
