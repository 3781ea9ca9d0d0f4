"""The conditional GAN's bars as tokens (see :mod:`midi_bridge.model.gan`; docs/models.md,
"The conditional GAN"): the format, its encoding and decoding, and the pitch-class
statistics the networks are conditioned on.  Plain numpy; the live sampler and the offline
training and evaluation share it.

**Bars.**  A bar is 4 beats cut from the start of the piece (the datasets carry no time
signature), 16 sixteenth-note steps.  Each step holds one token: a pitch onset
``0..N_PITCH-1`` (MIDI ``LOW..LOW+N_PITCH-1``), ``HOLD`` (the sounding note goes on) or
``REST``.  Pitches outside the range are moved by octaves into it; onsets are rounded to
the nearest sixteenth (two onsets on one step: the first wins).  A ``HOLD`` at step 0 ties
the last note of the previous bar over the bar line; a ``HOLD`` after a rest is a rest.

**Tonal context.**  The pitch-class profile of the onsets of the last ``CTX_BARS`` bars
(:func:`pc_profile`); its tonic (:func:`context_tonic`) moves a bar to C for the
key-normalised networks (:func:`tonic_shift`) and frames a calibrated pitch-class bias
(:func:`pitch_bias`).
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

BAR_BEATS = 4
CTX_BARS = 4  # bars in the tonal context
STEPS = 16  # sixteenth notes per bar
STEP_BEATS = BAR_BEATS / STEPS  # 0.25 beats
LOW = 48
N_PITCH = 48  # MIDI 48..95
HOLD = N_PITCH
REST = N_PITCH + 1
N_CLASSES = N_PITCH + 2

Melody = list[tuple[int, float, float]]


# -- bar encoding --------------------------------------------------------------------------
def fold_pitch(p: int) -> int:
    """A MIDI pitch moved by octaves into ``LOW..LOW+N_PITCH-1``."""
    p = int(p)
    while p < LOW:
        p += 12
    while p >= LOW + N_PITCH:
        p -= 12
    return p


def empty_bar() -> np.ndarray:
    return np.full(STEPS, REST, dtype=np.int64)


def melody_to_bars(notes: Sequence[tuple[int, float, float]], n_bars: int | None = None,
                   origin: float = 0.0) -> np.ndarray:
    """Monophonic notes ``(pitch, start_beats, dur_beats)`` -> tokens ``[n_bars, 16]``.

    Bar 0 starts at ``origin`` beats; notes before it are dropped.  Polyphony: at a
    shared step the first note given wins (give the highest first for a skyline).
    """
    notes = sorted(((int(p), float(s) - origin, float(d)) for p, s, d in notes if float(s) >= origin - 1e-9),
                   key=lambda n: n[1])
    if n_bars is None:
        end = max((s + d for _, s, d in notes), default=0.0)
        n_bars = max(1, int(np.ceil(end / BAR_BEATS - 1e-9)))
    total = n_bars * STEPS
    flat = np.full(total, REST, dtype=np.int64)
    onset = np.zeros(total, dtype=bool)
    for p, s, d in notes:
        a = int(round(s / STEP_BEATS))
        if a >= total or onset[a]:
            continue
        b = min(total, max(a + 1, int(round((s + d) / STEP_BEATS))))
        flat[a] = fold_pitch(p) - LOW
        onset[a] = True
        for i in range(a + 1, b):
            flat[i] = HOLD
        while b < total and flat[b] == HOLD:  # an earlier note held past this onset ends here
            flat[b] = REST
            b += 1
    return flat.reshape(n_bars, STEPS)


def bars_to_melody(bars: np.ndarray | Sequence[Sequence[int]], origin: float = 0.0) -> Melody:
    """Tokens ``[n_bars, 16]`` -> notes ``(pitch, start_beats, dur_beats)`` (inverse of
    :func:`melody_to_bars` for notes on the sixteenth grid inside the pitch range)."""
    flat = np.asarray(bars, dtype=np.int64).reshape(-1)
    out: Melody = []
    cur = None  # [pitch, start step]
    for i, t in enumerate(flat.tolist()):
        if t < N_PITCH:
            if cur is not None:
                out.append((cur[0], origin + cur[1] * STEP_BEATS, (i - cur[1]) * STEP_BEATS))
            cur = [t + LOW, i]
        elif t == REST and cur is not None:
            out.append((cur[0], origin + cur[1] * STEP_BEATS, (i - cur[1]) * STEP_BEATS))
            cur = None
    if cur is not None:
        out.append((cur[0], origin + cur[1] * STEP_BEATS, (len(flat) - cur[1]) * STEP_BEATS))
    return out


# -- pitch-class statistics --------------------------------------------------------------
def pc_profile(bars) -> np.ndarray:
    """Tokens ``[..., n_bars, 16]`` -> the pitch-class profile of their onsets ``[..., 12]``
    (float32, summing to 1; all zeros without onsets)."""
    t = np.asarray(bars, dtype=np.int64)
    t = t.reshape(t.shape[:-2] + (-1,))
    onset = t < N_PITCH
    pcs = (np.where(onset, t, 0) + LOW) % 12
    prof = (np.eye(12, dtype=np.float32)[pcs] * onset[..., None]).sum(-2)
    total = prof.sum(-1, keepdims=True)
    return np.where(total > 0, prof / np.maximum(total, 1), 0).astype(np.float32)


def context_tonic(ctx) -> np.ndarray:
    """Tonal contexts ``[B, 12]`` -> the tonic ``[B]`` (0..11) of the best-correlated
    Krumhansl-Kessler major or minor key profile (0 for a silent context)."""
    c = np.asarray(ctx, dtype=np.float64).reshape(-1, 12)
    corr = (c - c.mean(1, keepdims=True)) @ _key_profiles()  # [B, 24]
    tonic = corr.argmax(1) % 12
    return np.where(c.sum(1) > 0, tonic, 0).astype(np.int64)


@functools.lru_cache(maxsize=1)
def _key_profiles() -> np.ndarray:
    """``[12, 24]``: the 12 major then the 12 minor Krumhansl-Kessler profiles, centred and
    scaled to unit norm (computed once; the sampler asks per bar)."""
    from .theory import KK_MAJOR, KK_MINOR

    prof = np.stack([np.roll(np.asarray(kk, np.float64), t) for kk in (KK_MAJOR, KK_MINOR) for t in range(12)])
    prof = prof - prof.mean(1, keepdims=True)
    return (prof / np.linalg.norm(prof, axis=1, keepdims=True)).T.copy()


_PITCH_PC = (np.arange(N_PITCH) + LOW) % 12


def pitch_bias(pc_bias, style, ctx, frame: str = "absolute") -> np.ndarray:
    """The logit bias ``[B, N_PITCH]`` of the onset pitches: ``pc_bias[style, pc]``
    (``pc_bias``: ``[n_styles, 12]`` or ``[12]``; ``style``: ``[B]`` ids) where ``pc`` is
    the pitch class, absolute or (``frame="key"``) counted from the tonic of the tonal
    context ``ctx`` ``[B, 12]`` (:func:`context_tonic`)."""
    ctx = np.asarray(ctx, dtype=np.float32).reshape(-1, 12)
    b = np.asarray(pc_bias, dtype=np.float32)
    st = np.broadcast_to(np.asarray(style, dtype=np.int64).reshape(-1), (len(ctx),))
    rows = np.broadcast_to(b, (len(ctx), 12)) if b.ndim == 1 else b[np.clip(st, 0, len(b) - 1)]
    pcs = np.broadcast_to(_PITCH_PC, (len(ctx), N_PITCH))
    if frame == "key":
        pcs = (pcs - context_tonic(ctx)[:, None]) % 12
    elif frame != "absolute":
        raise ValueError(f"unknown pitch-class bias frame {frame!r}")
    return np.take_along_axis(rows, pcs, 1)


def tonic_shift(tonic) -> np.ndarray:
    """Tonics (0..11) -> their signed offset from C (-6..5 semitones): moving a bar by the
    negative of it (-5..+6) takes its tonic to C."""
    t = np.asarray(tonic, dtype=np.int64) % 12
    return np.where(t > 5, t - 12, t)
