"""A conditional GAN over bars of melody (after MidiNet, Yang et al. 2017; see docs/models.md,
"The conditional GAN").

The bar format, its encoding and the tonal context are :mod:`.gan_bars`; this module holds
what runs live: the networks, their checkpoints, sampling, and the answer to a played phrase
(the ``gan`` generator).  Generation and evaluation protocols (``train-gan --evaluate``) are
:mod:`midi_bridge.training.gan_eval`.

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
:func:`midi_bridge.training.gan_eval.generate_melodies` conditions its first bar on.  An
optional ``"pc_bias"`` (float32 ``[n_styles, 12]``, written by ``train-gan --calibrate``) is
added at sampling time to the logits of every onset pitch of each pitch class (see
:func:`.gan_bars.pitch_bias`); the meta's
``pc_bias_frame`` says whether its pitch classes are absolute or relative to the tonic of the
tonal context.  Checkpoints without it sample with no bias.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import checkpoint
from .checkpoint import CheckpointError
from .gan_bars import (BAR_BEATS, CTX_BARS, LOW, N_CLASSES, N_PITCH, STEP_BEATS, STEPS, context_tonic,
                       empty_bar, melody_to_bars, pc_profile, pitch_bias, tonic_shift)

FORMAT = "midi-bridge-gan"
GAN_VERSION = 2


# -- networks ------------------------------------------------------------------------------
def one_hot(tokens: torch.Tensor) -> torch.Tensor:
    """``[B, 16]`` int -> ``[B, N_CLASSES, 16]`` float."""
    return F.one_hot(tokens.long(), N_CLASSES).float().transpose(1, 2)


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
    :func:`.gan_bars.pitch_bias`) is added to the onset logits before the temperature."""
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
