"""A conditional GAN over bars of melody (after MidiNet, Yang et al. 2017; see docs/models.md,
"The conditional GAN").

**Bars.**  A bar is 4 beats cut from the start of the piece (the datasets carry no time
signature), 16 sixteenth-note steps.  Each step holds one token: a pitch onset
``0..N_PITCH-1`` (MIDI ``LOW..LOW+N_PITCH-1``), ``HOLD`` (the sounding note goes on) or
``REST``.  Pitches outside the range are moved by octaves into it; onsets are rounded to
the nearest sixteenth (two onsets on one step: the first wins).  A ``HOLD`` at step 0 ties
the last note of the previous bar over the bar line; a ``HOLD`` after a rest is a rest.

**Networks.**  The generator maps noise ``z``, a style label, a *tonal context* and the
*previous bar* to logits ``[B, N_CLASSES, 16]``; the previous bar enters through a
conditioner CNN whose feature maps (lengths 16, 8, 4, 2) are concatenated into the
generator's transposed convolutions at the same time resolution (MidiNet's conditioner).
The tonal context stands in for MidiNet's chord condition (the data has no chords): the
pitch-class profile of the onsets of the last ``CTX_BARS`` bars (12 numbers summing to 1,
zeros when they are silent).  The discriminator sees the bar together with the previous
bar, the tonal context and the style (projection), and exposes its penultimate features
for feature matching.  Generated bars reach the discriminator as
straight-through Gumbel-softmax samples (one-hot forward, soft gradient backward), so the
discriminator cannot tell real from fake by one-hotness.

**Key normalisation** (``train-gan --key-normalise``; the shipped model): the networks
are trained on bars moved to C by the tonic of their tonal context, and
:class:`KeyNormalised` moves a bar to C and the logits back at sampling time.

**Checkpoints** are plain dicts loaded with ``torch.load(weights_only=True)``:
``{"format": "midi-bridge-gan", "meta": <JSON>, "generator": state, ["discriminator":
state], "primers": uint8 [K, CTX_BARS, 16], "primer_styles": int64 [K], ["train": ...]}``.
``primers`` is a bank of real passages (``CTX_BARS`` bars) from the train split that
:func:`generate_melodies` conditions its first bar on.  An optional ``"pc_bias"`` (float32
``[n_styles, 12]``, written by ``train-gan --calibrate``) is added at sampling time to the
logits of every onset pitch of each pitch class (see :func:`pitch_bias`); the meta's
``pc_bias_frame`` says whether its pitch classes are absolute or relative to the tonic of the
tonal context.  Checkpoints without it sample with no bias.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import checkpoint
from .checkpoint import CheckpointError
from .encoding import STEPS_PER_BEAT, WAIT

FORMAT = "midi-bridge-gan"
GAN_VERSION = 2
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
    from midi_bridge.training.dataset import load_meta, load_split

    meta = load_meta(dataset)
    if meta["spec"]["view"] != "notes":
        raise ValueError(f"{dataset} is a {meta['spec']['view']} dataset; the GAN needs a melody dataset "
                         "(midi-bridge prepare --mono)")
    data = load_split(dataset, split)
    mels = [piece_melody(data.piece(i).numpy()) for i in range(len(data))]
    return mels, [int(s) for s in data.styles.tolist()], list(meta["styles"])


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


def one_hot(tokens: torch.Tensor) -> torch.Tensor:
    """``[B, 16]`` int -> ``[B, N_CLASSES, 16]`` float."""
    return F.one_hot(tokens.long(), N_CLASSES).float().transpose(1, 2)


# -- networks ------------------------------------------------------------------------------
@dataclass
class GanConfig:
    z: int = 32
    ch: int = 96
    cond: int = 48
    style_emb: int = 8
    n_styles: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "GanConfig":
        return GanConfig(**{k: int(v) for k, v in d.items() if k in GanConfig.__dataclass_fields__})


def _lrelu(x):
    return F.leaky_relu(x, 0.2)


class Conditioner(nn.Module):
    """The previous bar -> feature maps of lengths 16, 8, 4, 2 (MidiNet's conditioner CNN)."""

    def __init__(self, c: int):
        super().__init__()
        self.c16 = nn.Conv1d(N_CLASSES, c, 3, padding=1)
        self.c8 = nn.Conv1d(c, c, 4, stride=2, padding=1)
        self.c4 = nn.Conv1d(c, c, 4, stride=2, padding=1)
        self.c2 = nn.Conv1d(c, c, 4, stride=2, padding=1)

    def forward(self, prev):
        h16 = _lrelu(self.c16(prev))
        h8 = _lrelu(self.c8(h16))
        h4 = _lrelu(self.c4(h8))
        h2 = _lrelu(self.c2(h4))
        return h16, h8, h4, h2


class BarGenerator(nn.Module):
    """``(z, style, previous bar one-hot, tonal context [B, 12])`` -> logits ``[B, N_CLASSES, 16]``."""

    def __init__(self, cfg: GanConfig):
        super().__init__()
        self.cfg = cfg
        c, k = cfg.ch, cfg.cond
        self.style = nn.Embedding(max(1, cfg.n_styles), cfg.style_emb)
        self.cond = Conditioner(k)
        self.fc = nn.Linear(cfg.z + cfg.style_emb + 12, c * 2)
        self.up4 = nn.ConvTranspose1d(c + k, c, 4, stride=2, padding=1)
        self.up8 = nn.ConvTranspose1d(c + k, c, 4, stride=2, padding=1)
        self.up16 = nn.ConvTranspose1d(c + k, c, 4, stride=2, padding=1)
        self.out = nn.Conv1d(c + k, N_CLASSES, 3, padding=1)
        self.norms = nn.ModuleList([nn.LayerNorm([c, n]) for n in (2, 4, 8, 16)])

    def forward(self, z, style, prev, ctx):
        h16, h8, h4, h2 = self.cond(prev)
        x = self.fc(torch.cat([z, self.style(style), ctx], -1)).view(z.shape[0], self.cfg.ch, 2)
        x = F.relu(self.norms[0](x))
        x = F.relu(self.norms[1](self.up4(torch.cat([x, h2], 1))))
        x = F.relu(self.norms[2](self.up8(torch.cat([x, h4], 1))))
        x = F.relu(self.norms[3](self.up16(torch.cat([x, h8], 1))))
        return self.out(torch.cat([x, h16], 1))

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def tonic_shift(tonic) -> np.ndarray:
    """Tonics (0..11) -> their signed offset from C (-6..5 semitones): moving a bar by the
    negative of it (-5..+6) takes its tonic to C."""
    t = np.asarray(tonic, dtype=np.int64) % 12
    return np.where(t > 5, t - 12, t)


def transpose_tokens(tokens: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Bars ``[B, 16]`` moved by ``shift`` ``[B]`` semitones (|shift| < 12), pitches folded
    by an octave back into the range; ``HOLD`` and ``REST`` unchanged."""
    onset = tokens < N_PITCH
    p = tokens + shift[:, None]
    p = torch.where(p < 0, p + 12, torch.where(p >= N_PITCH, p - 12, p))
    return torch.where(onset, p, tokens)


class KeyNormalised(nn.Module):
    """A generator trained on bars moved to C (each by the tonic of its tonal context,
    ``train-gan --key-normalise``), used in absolute pitch: the previous bar and the
    context are moved to C, the network runs, and its pitch logits are moved back.  The
    sampling code, the calibration and the plugin see an ordinary generator."""

    def __init__(self, inner: BarGenerator):
        super().__init__()
        self.inner = inner
        self.cfg = inner.cfg
        q = np.arange(N_PITCH)
        #: _pitch_index[s + 6, p]: the normalised pitch whose logit absolute pitch p takes
        #: under shift s (folded by an octave at the edges of the range)
        self._pitch_index = torch.from_numpy(np.stack([(q - s) % 12 + 12 * np.clip((q - s) // 12, 0, N_PITCH // 12 - 1)
                                                       for s in range(-6, 6)]))

    def n_params(self) -> int:
        return self.inner.n_params()

    def forward(self, z, style, prev, ctx):
        shift = torch.from_numpy(tonic_shift(context_tonic(ctx.detach().cpu().numpy())))
        # to C, exactly as the training data was moved (the previous bar is one-hot)
        prev_n = one_hot(transpose_tokens(prev.argmax(1), -shift))
        ctx_n = ctx.gather(1, (torch.arange(12)[None, :] + shift[:, None]) % 12)
        out = self.inner(z, style, prev_n, ctx_n)
        rows = self._pitch_index[shift + 6]  # [B, N_PITCH]: back from C
        pitch = out[:, :N_PITCH].gather(1, rows[:, :, None].expand(-1, -1, out.shape[2]))
        return torch.cat([pitch, out[:, N_PITCH:]], 1)


class BarDiscriminator(nn.Module):
    """``(bar, previous bar, style, tonal context)`` -> ``(score [B], features [B, F])``; a projection
    discriminator for the style, no batch statistics (so WGAN-GP's penalty is per sample)."""

    def __init__(self, cfg: GanConfig):
        super().__init__()
        c = cfg.ch
        self.c16 = nn.Conv1d(2 * N_CLASSES, c, 3, padding=1)
        self.c8 = nn.Conv1d(c, c, 4, stride=2, padding=1)
        self.c4 = nn.Conv1d(c, c, 4, stride=2, padding=1)
        self.fc = nn.Linear(c * 4 + 12, c)
        self.score = nn.Linear(c, 1)
        self.style = nn.Embedding(max(1, cfg.n_styles), c)

    def forward(self, bar, prev, style, ctx):
        x = _lrelu(self.c16(torch.cat([bar, prev], 1)))
        x = _lrelu(self.c8(x))
        x = _lrelu(self.c4(x))
        f = _lrelu(self.fc(torch.cat([x.flatten(1), ctx], 1)))
        return self.score(f).squeeze(-1) + (self.style(style) * f).sum(-1), f


# -- checkpoints ---------------------------------------------------------------------------
def save(path, gen: BarGenerator, meta: dict, primers: np.ndarray, primer_styles: np.ndarray,
         disc: BarDiscriminator | None = None, train_state: dict | None = None, half: bool = False,
         pc_bias: np.ndarray | None = None) -> None:
    def sd(m):
        return {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
                for k, v in m.state_dict().items()}

    gen = getattr(gen, "inner", gen)  # a KeyNormalised generator is stored as its network
    full = dict(meta)
    full.update({"gan_version": GAN_VERSION, "config": gen.cfg.to_dict(), "low": LOW, "n_pitch": N_PITCH,
                 "steps": STEPS, "bar_beats": BAR_BEATS, "ctx_bars": CTX_BARS})
    blob = {"format": FORMAT, "meta": json.dumps(full), "generator": sd(gen),
            "primers": torch.as_tensor(np.asarray(primers), dtype=torch.uint8).reshape(-1, CTX_BARS, STEPS),
            "primer_styles": torch.as_tensor(np.asarray(primer_styles), dtype=torch.int64).reshape(-1)}
    if disc is not None:
        blob["discriminator"] = sd(disc)
    if pc_bias is not None:
        blob["pc_bias"] = torch.as_tensor(np.asarray(pc_bias), dtype=torch.float32).reshape(-1, 12)
    checkpoint.save_blob(path, blob, train_state)


def load_raw(path) -> dict:
    """The checkpoint dict (refused if loading it would import or call Python objects)."""
    return checkpoint.load_raw(path, FORMAT, "GAN", "midi-bridge train-gan")


@dataclass
class LoadedGAN:
    gen: BarGenerator
    meta: dict
    primers: np.ndarray  # [K, CTX_BARS, 16] tokens
    primer_styles: np.ndarray  # [K]
    disc: BarDiscriminator | None = None
    train: dict | None = None
    pc_bias: np.ndarray | None = None  # [n_styles, 12] logit bias of onset pitch classes (None: none)

    @property
    def bias_frame(self) -> str:
        return str(self.meta.get("pc_bias_frame", "absolute"))

    @property
    def styles(self) -> list[str]:
        return list(self.meta.get("styles") or ["default"])


def load(path) -> LoadedGAN:
    blob = load_raw(path)
    meta = json.loads(blob["meta"])
    if (meta.get("gan_version") != GAN_VERSION or meta.get("low") != LOW or meta.get("n_pitch") != N_PITCH
            or meta.get("ctx_bars") != CTX_BARS):
        raise CheckpointError(f"{path}: GAN bar format {meta.get('gan_version')} does not match this midi-bridge "
                              f"({GAN_VERSION}); retrain it")
    cfg = GanConfig.from_dict(meta["config"])

    def state(d):
        return {k: v.float() if v.is_floating_point() else v for k, v in d.items()}

    gen = BarGenerator(cfg)
    gen.load_state_dict(state(blob["generator"]))
    disc = None
    if "discriminator" in blob:
        disc = BarDiscriminator(cfg)
        disc.load_state_dict(state(blob["discriminator"]))
        disc.eval()
    bias = blob.get("pc_bias")
    if bias is not None:
        bias = bias.float().reshape(-1, 12).numpy()
    gen = gen.eval()
    if meta.get("key_normalised"):
        gen = KeyNormalised(gen).eval()
    return LoadedGAN(gen, meta, blob["primers"].long().numpy(), blob["primer_styles"].numpy(),
                     disc, blob.get("train"), bias)


# -- sampling ------------------------------------------------------------------------------
@torch.no_grad()
def sample_bars(gen: BarGenerator, prev: np.ndarray | torch.Tensor, style: int | Sequence[int],
                temperature: float = 1.0, generator: torch.Generator | None = None,
                ctx: np.ndarray | None = None, pc_bias: np.ndarray | None = None,
                bias_frame: str = "absolute") -> np.ndarray:
    """One bar per row of ``prev`` (tokens ``[B, 16]`` or ``[16]``), each conditioned on
    its previous bar and tonal context ``ctx`` (``[B, 12]``; default: the profile of
    ``prev``): tokens ``[B, 16]`` sampled from the per-step softmax at ``temperature``
    (<= 0: the most likely token).  ``pc_bias`` (``[n_styles, 12]``, see
    :func:`pitch_bias`) is added to the onset logits before the temperature."""
    prev = torch.as_tensor(np.asarray(prev), dtype=torch.long)
    if prev.dim() == 1:
        prev = prev[None]
    b = prev.shape[0]
    if ctx is None:
        ctx = pc_profile(prev.numpy()[:, None])
    ctx = torch.as_tensor(np.asarray(ctx, dtype=np.float32)).reshape(b, 12)
    st = torch.as_tensor(style, dtype=torch.long).reshape(-1).expand(b) if np.ndim(style) == 0 \
        else torch.as_tensor(list(style), dtype=torch.long)
    z = torch.randn(b, gen.cfg.z, generator=generator)
    logits = gen(z, st, one_hot(prev), ctx).transpose(1, 2)  # [B, 16, C]
    if pc_bias is not None:
        bias = torch.from_numpy(pitch_bias(pc_bias, st.numpy(), ctx.numpy(), bias_frame))
        logits = torch.cat([logits[..., :N_PITCH] + bias[:, None, :], logits[..., N_PITCH:]], -1)
    if temperature <= 0:
        return logits.argmax(-1).numpy()
    probs = torch.softmax(logits / float(temperature), -1).reshape(-1, N_CLASSES)
    return torch.multinomial(probs, 1, generator=generator).view(b, STEPS).numpy()


def _as_loaded(checkpoint) -> LoadedGAN:
    if isinstance(checkpoint, LoadedGAN):
        return checkpoint
    return load(checkpoint)


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
        out[:, b] = sample_bars(model.gen, hist[:, -1], st, temperature, g, ctxs[:, b], bias, model.bias_frame)
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
    from .theory import histogram_js

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
    from .theory import histogram_js

    model = _as_loaded(checkpoint)
    test, test_styles, _ = split_melodies(dataset, split)
    train, _, _ = split_melodies(dataset, "train")
    mels = generate_melodies(model, count, bars, seed=seed)
    uni = unigram_melodies(train, [len(m) for m in mels], seed=seed)
    return {"gan": histogram_js(mels, test), "unigram": histogram_js(uni, test),
            "train_split": histogram_js(train, test), "melodies": count, "bars": bars,
            "notes": sum(len(m) for m in mels), "seed": seed, "split": split,
            "continuation": continuation_js(model, test, test_styles, 4, seed, train)}


# -- answering a played phrase (the plugin) ------------------------------------------------
def phrase_to_bars(notes: Sequence[tuple[int, float, float | None]], n_bars: int = CTX_BARS) -> np.ndarray:
    """The last ``n_bars`` bars of a played phrase as tokens ``[n_bars, 16]``; the last row
    is the conditioning bar, all of them give the tonal context.

    ``notes`` are ``(pitch, start_beats, duration_beats or None)``; the last bar is the 4
    beats ending on the beat after the last onset (so the phrase's last note lies in it).
    An unknown duration lasts until the next onset (the end of the bar for the last note);
    a chord gives its highest note.  No notes: empty bars.
    """
    notes = sorted(((int(p), float(s), d) for p, s, d in notes), key=lambda n: (n[1], -n[0]))
    if not notes:
        return np.tile(empty_bar(), (n_bars, 1))
    end = float(np.floor(notes[-1][1] + 1e-6)) + 1.0
    origin = end - BAR_BEATS * n_bars
    onsets = sorted({s for _, s, _ in notes})
    out = []
    for p, s, d in notes:
        nxt = next((o for o in onsets if o > s + 1e-9), end)
        d = (nxt - s) if d is None else min(float(d), nxt - s)
        if s + d <= origin + 1e-9:
            continue
        if s < origin:  # sounding into the bar: it starts there
            d, s = s + d - origin, origin
        out.append((p, s, max(STEP_BEATS, d)))
    return melody_to_bars(out, n_bars, origin)


def phrase_to_bar(notes: Sequence[tuple[int, float, float | None]]) -> np.ndarray:
    """The last bar of a played phrase as tokens ``[16]`` (see :func:`phrase_to_bars`)."""
    return phrase_to_bars(notes, 1)[0]


def continue_bars(gen: BarGenerator, history: np.ndarray, style: int, temperature: float = 1.0,
                  generator: torch.Generator | None = None, pc_bias: np.ndarray | None = None,
                  bias_frame: str = "absolute"):
    """An endless iterator of bars (tokens ``[16]``), each sampled only when pulled and
    conditioned on the bar before it and the tonal context of the last ``CTX_BARS`` bars
    (the first on the last row of ``history``, tokens ``[n, 16]`` or ``[16]``);
    ``pc_bias``: a checkpoint's calibration (:attr:`LoadedGAN.pc_bias`)."""
    hist = np.asarray(history, dtype=np.int64).reshape(-1, STEPS)[-CTX_BARS:]
    while True:
        new = sample_bars(gen, hist[-1], style, temperature, generator, pc_profile(hist[None]),
                          pc_bias, bias_frame)[0]
        hist = np.concatenate([hist, new[None]])[-CTX_BARS:]
        yield new
