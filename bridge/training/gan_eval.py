"""The conditional GAN's offline side: the train and held-out melodies of a prepared
dataset, the generation protocols (melodies from the checkpoint's primer bank, continuations
of held-out passages) and the evaluations ``train-gan --evaluate`` and ``evaluate --theory``
run on them (Jensen-Shannon divergences of pitch-class and interval histograms, key
profiles, unigram baselines).  The networks and the live sampler are
:mod:`midi_bridge.model.gan`; the bar format is :mod:`midi_bridge.model.gan_bars`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from midi_bridge.model.encoding import STEPS_PER_BEAT, WAIT
from midi_bridge.model import gan
from midi_bridge.model.gan import LoadedGAN
from midi_bridge.model.gan_bars import (CTX_BARS, LOW, N_PITCH, REST, STEP_BEATS, STEPS, Melody, bars_to_melody,
                                        context_tonic, melody_to_bars, pc_profile)
from midi_bridge.model.theory import histogram_js
from .dataset import load_meta, load_split


def piece_melody(rows) -> Melody:
    """A dataset piece (note-view event rows) -> ``(pitch, start_beats, dur_beats)`` notes."""
    out, t = [], 0
    for dt, pitch, dur, _vel in np.asarray(rows, dtype=np.int64).reshape(-1, 4).tolist():
        t += dt
        if pitch != WAIT:
            out.append((int(pitch), t / STEPS_PER_BEAT, dur / STEPS_PER_BEAT))
    return out


def split_melodies(dataset, split: str) -> tuple[list[Melody], list[int], list[str]]:
    """``(melodies, style ids, style names)`` of a prepared dataset split."""
    meta = load_meta(dataset)
    if meta["spec"]["view"] != "notes":
        raise ValueError(f"{dataset} is a {meta['spec']['view']} dataset; the GAN needs a melody dataset "
                         "(midi-bridge prepare --mono)")
    data = load_split(dataset, split)
    mels = [piece_melody(data.piece(i).numpy()) for i in range(len(data))]
    return mels, [int(s) for s in data.styles.tolist()], list(meta["styles"])


def _as_loaded(checkpoint) -> LoadedGAN:
    if isinstance(checkpoint, LoadedGAN):
        return checkpoint
    return gan.load(checkpoint)


def generate_bars(model: LoadedGAN, count: int, bars: int, style: str | None = None, seed: int = 0,
                  temperature: float = 1.0, contexts: bool = False, pc_bias="model"):
    """``(tokens [count, bars, 16], style ids [count])`` (and with ``contexts`` the tonal
    context each bar was sampled with, ``[count, bars, 12]``; ``pc_bias``: the
    checkpoint's unless given).  Bar 0 of each melody is
    conditioned on a primer: a real passage of ``CTX_BARS`` bars drawn from the
    checkpoint's bank of train-split passages (of the requested style; silence when the
    bank has none); every later bar on the bar generated before it and the tonal context
    of the last ``CTX_BARS`` bars (primer bars included until they scroll out)."""
    g = torch.Generator().manual_seed(int(seed))
    rng = np.random.default_rng(int(seed))
    styles = model.styles
    if style is not None and style not in styles:
        raise ValueError(f"style {style!r} unknown to the checkpoint (it knows {', '.join(styles)})")
    bank, bank_styles = model.primers, model.primer_styles
    silence = np.full((count, CTX_BARS, STEPS), REST, np.int64)
    if style is not None:
        sid = styles.index(style)
        pool = np.flatnonzero(bank_styles == sid)
        hist = bank[rng.choice(pool, count)] if len(pool) else silence
        st = np.full(count, sid)
    elif len(bank):
        idx = rng.integers(0, len(bank), count)
        hist, st = bank[idx], bank_styles[idx]
    else:
        hist, st = silence, np.zeros(count, np.int64)
    out, ctxs = continue_passages(model, hist, st, bars, temperature=temperature, pc_bias=pc_bias, generator=g)
    return (out, st, ctxs) if contexts else (out, st)


def generate_melodies(checkpoint, count: int, bars: int = 4, style: str | None = None,
                      seed: int = 0) -> list[list[tuple[int, float, float]]]:
    """``count`` melodies of ``bars`` bars, each a list of ``(midi_pitch, start_beats,
    duration_beats)`` sorted by start, generated bar by bar, each bar conditioned on the
    previous generated bar (the first on a real train-split passage from the checkpoint's
    primer bank; see :func:`generate_bars`).  ``checkpoint``: a path or a :class:`LoadedGAN`."""
    model = _as_loaded(checkpoint)
    toks, _ = generate_bars(model, count, bars, style, seed)
    return [bars_to_melody(t) for t in toks]


def unigram_melodies(train: Sequence[Melody], lengths: Sequence[int], seed: int = 0) -> list[Melody]:
    """The baseline: melodies of the given lengths (in notes) whose pitches are drawn
    independently from the pitch distribution of ``train`` (sixteenth notes, back to back)."""
    counts = np.zeros(128)
    for mel in train:
        for p, _s, _d in mel:
            counts[int(p)] += 1
    probs = counts / counts.sum()
    rng = np.random.default_rng(int(seed))
    return [[(int(p), i * STEP_BEATS, STEP_BEATS) for i, p in enumerate(rng.choice(128, n, p=probs))]
            for n in lengths]


def heldout_windows(melodies: Sequence[Melody], styles: Sequence[int], every: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Primers from held-out pieces: ``(passages [N, CTX_BARS, 16], style ids [N])``, the
    ``CTX_BARS`` bars before bar ``CTX_BARS``, ``CTX_BARS + every``, ... of each piece (so
    a piece gives windows in proportion to its length)."""
    pas, sty = [], []
    for mel, s in zip(melodies, styles):
        if not mel:
            continue
        bars = melody_to_bars(mel)
        for k in range(CTX_BARS, len(bars), every):
            pas.append(bars[k - CTX_BARS:k])
            sty.append(int(s))
    if not pas:
        return np.zeros((0, CTX_BARS, STEPS), np.int64), np.zeros(0, np.int64)
    return np.stack(pas).astype(np.int64), np.asarray(sty, np.int64)


def continue_passages(model: LoadedGAN, passages: np.ndarray, styles: np.ndarray, bars: int, seed: int = 0,
                      temperature: float = 1.0, pc_bias="model", generator: torch.Generator | None = None):
    """``(tokens [N, bars, 16], tonal contexts [N, bars, 12])``: ``bars`` generated bars
    after each passage (``[N, k, 16]``), as the plugin continues a played phrase (each bar
    on the one before it and the tonal context of the last ``CTX_BARS`` bars, the
    passage's own until they scroll out); ``pc_bias``: the checkpoint's unless given."""
    g = generator if generator is not None else torch.Generator().manual_seed(int(seed))
    bias = model.pc_bias if isinstance(pc_bias, str) else pc_bias
    hist = np.asarray(passages, np.int64)
    st = np.asarray(styles, np.int64).tolist()
    out = np.zeros((len(hist), bars, STEPS), np.int64)
    ctxs = np.zeros((len(hist), bars, 12), np.float32)
    for b in range(bars):
        ctxs[:, b] = pc_profile(hist[:, -CTX_BARS:])
        out[:, b] = gan.sample_bars(model.gen, hist[:, -1], st, temperature, g, ctxs[:, b], bias, model.bias_frame)
        hist = np.concatenate([hist[:, 1:], out[:, b, None]], 1)
    return out, ctxs


def continuation_js(model: LoadedGAN, reference: Sequence[Melody], styles: Sequence[int], bars: int = 4,
                    seed: int = 0, train: Sequence[Melody] | None = None) -> dict:
    """The JS divergences (bits) to ``reference`` of the GAN's continuations of
    ``reference``'s own passages (:func:`heldout_windows`, every ``bars`` bars, so the
    continuations stand in for the rest of each piece): ``{"gan": {...}, ["unigram": {...}],
    "passage_unigram": {...}, "key_profile": {"gan": [12], "passages": [12]}, "windows": n,
    "notes": n}``; with ``train``, a unigram sampler of
    the same note counts; ``passage_unigram`` draws each continuation's notes from the pitches
    of the passage it continues (:func:`passage_unigram_melodies`)."""
    pas, sty = heldout_windows(reference, styles, bars)
    if not len(pas):
        return {"windows": 0, "bars": bars, "notes": 0}
    toks = continue_passages(model, pas, sty, bars, seed)[0]
    mels = [bars_to_melody(t) for t in toks]
    tonic = context_tonic(pc_profile(pas))
    res = {"gan": histogram_js(mels, reference), "windows": int(len(pas)), "bars": bars,
           "notes": sum(len(m) for m in mels),
           "key_profile": {"gan": key_profile(toks, tonic), "passages": key_profile(pas, tonic)}}
    if train is not None:
        res["unigram"] = histogram_js(unigram_melodies(train, [len(m) for m in mels], seed=seed), reference)
    res["passage_unigram"] = histogram_js(passage_unigram_melodies(pas, [len(m) for m in mels], seed), reference)
    return res


def key_profile(tokens, tonic) -> list[float]:
    """The share of the onsets of each passage's tokens (``[N, ..., 16]``) on each degree
    counted from that passage's ``tonic`` (``[N]``): 12 fractions, degree 0 the tonic."""
    t = np.asarray(tokens, np.int64).reshape(len(tonic), -1)
    onset = t < N_PITCH
    degree = ((np.where(onset, t, 0) + LOW) % 12 - np.asarray(tonic)[:, None]) % 12
    counts = np.bincount(degree[onset], minlength=12).astype(np.float64)
    return [round(float(x), 4) for x in counts / max(1.0, counts.sum())]


def passage_unigram_melodies(passages: np.ndarray, lengths: Sequence[int], seed: int = 0) -> list[Melody]:
    """A context-aware baseline for continuations: for each passage (tokens ``[k, 16]``),
    a melody of the given length whose pitches are drawn independently from that passage's
    own onsets (sixteenth notes, back to back; nothing for a silent passage)."""
    rng = np.random.default_rng(int(seed))
    out = []
    for pas, n in zip(passages, lengths):
        pitches = [p for p, _s, _d in bars_to_melody(pas)]
        out.append([(int(p), i * STEP_BEATS, STEP_BEATS) for i, p in enumerate(rng.choice(pitches, n))]
                   if pitches and n else [])
    return out


def evaluate_js(checkpoint, dataset, count: int = 400, bars: int = 8, seed: int = 0, split: str = "test") -> dict:
    """Jensen-Shannon divergences (bits) of pitch-class and interval histograms to the
    held-out ``split`` (default ``test``): ``{"gan": {...}, "unigram": {...},
    "train_split": {...}, "notes": n, ...}``.  The unigram sampler draws the same number of notes per melody as
    the GAN produced, from the train split's pitch distribution; ``train_split`` is the
    train split itself against the test split (what a perfect model of the train split
    would score, up to sampling noise) against the same split."""
    model = _as_loaded(checkpoint)
    test, test_styles, _ = split_melodies(dataset, split)
    train, _, _ = split_melodies(dataset, "train")
    mels = generate_melodies(model, count, bars, seed=seed)
    uni = unigram_melodies(train, [len(m) for m in mels], seed=seed)
    return {"gan": histogram_js(mels, test), "unigram": histogram_js(uni, test),
            "train_split": histogram_js(train, test), "melodies": count, "bars": bars,
            "notes": sum(len(m) for m in mels), "seed": seed, "split": split,
            "continuation": continuation_js(model, test, test_styles, 4, seed, train)}
