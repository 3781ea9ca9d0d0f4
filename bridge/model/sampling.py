"""Sampling one field value: temperature (applied to logits by the caller), top-p
(nucleus) and boolean logit masks for constraints (pitch range, key)."""

from __future__ import annotations

import numpy as np

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)


class NonFiniteLogits(ValueError):
    """Every probability of a field was NaN or inf."""


def sample_index(p: np.ndarray, rng: np.random.Generator, top_p: float = 1.0, mask=None) -> int:
    """Draw an index from probabilities ``p``.  Masked-out values get probability 0 (if the
    mask leaves nothing, it is ignored); then the smallest set of most likely values whose
    mass reaches ``top_p`` is kept."""
    p = np.asarray(p, dtype=np.float64)
    bad = ~np.isfinite(p) | (p < 0)
    if bad.any():  # NaN/inf from the network never become a note
        p = np.where(bad, 0.0, p)
        if not p.sum() > 0:
            raise NonFiniteLogits("the model produced no finite probabilities (NaN or inf logits); "
                                  "the checkpoint is damaged or was trained unstably: retrain or "
                                  "pick another checkpoint")
    if mask is not None:
        q = np.where(mask, p, 0.0)
        if q.sum() > 0:
            p = q
    total = p.sum()
    if top_p < 1.0:
        order = np.argsort(-p)
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, top_p * total)) + 1]
        u = rng.random() * p[keep].sum()
        return int(keep[min(np.searchsorted(np.cumsum(p[keep]), u, side="right"), len(keep) - 1)])
    u = rng.random() * total
    return int(min(np.searchsorted(np.cumsum(p), u, side="right"), len(p) - 1))


def pitch_range_mask(low: int, high: int, size: int = 129, allow_wait: bool = True) -> np.ndarray:
    m = np.zeros(size, dtype=bool)
    m[max(0, low):min(127, high) + 1] = True
    if size > 128:
        m[128:] = allow_wait
    return m


def key_mask(tonic: int, mode: str = "major", size: int = 129, allow_wait: bool = True) -> np.ndarray:
    """Pitches of a major or (natural) minor scale on ``tonic`` (0 = C)."""
    scale = MAJOR if mode == "major" else MINOR
    m = np.zeros(size, dtype=bool)
    for p in range(128):
        m[p] = (p - tonic) % 12 in scale
    if size > 128:
        m[128:] = allow_wait
    return m
