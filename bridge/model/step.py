"""The one-event step API: :class:`Stepper` folds one event into the state in O(1).

Built from a trained :class:`~bridge.model.rnn.EventRNN`, it does not call ``nn.GRU`` /
``nn.LSTM`` (their batch-1 path through oneDNN is slow on a CPU): the recurrent cells are
written out from the same weights, the first layer's input projection is folded into
per-token tables (so an event's input is a sum of table rows), all under
``torch.inference_mode``.  Optional int8 weight-only quantisation of the matrices.

    st = Stepper(model)            # or Stepper.from_checkpoint(path)
    st.reset(style=0)              # state after the begin-of-piece step
    logits = st.feed((dt, pitch, dur, vel))   # one event in -> first field's logits
    event = st.sample(temperature=0.9, top_p=0.95)  # the next event, field by field
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .cache import PieceCache
from .rnn import EventRNN
from .sampling import sample_index


def _int8(w: torch.Tensor):
    scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
    return q, scale.contiguous()


class _Linear:
    """y = W x + b for one row, optionally with int8 weights."""

    __slots__ = ("w", "b", "scale")

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None, int8: bool):
        self.b = None if b is None else b.detach().float().contiguous()
        w = w.detach().float().contiguous()
        self.scale = None
        if int8 and w.device.type == "cpu" and hasattr(torch, "_weight_int8pack_mm"):
            self.w, self.scale = _int8(w)
        else:
            self.w = w

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale is None:
            return F.linear(x, self.w, self.b)
        y = torch._weight_int8pack_mm(x[None], self.w, self.scale)[0]
        return y if self.b is None else y + self.b


class Stepper:
    """Batch-1 stateful inference for one :class:`EventRNN`."""

    def __init__(self, model: EventRNN, device: str | torch.device = "cpu", int8: bool = False,
                 seed: int | None = None, cache_capacity: int = 1 << 16):
        model = model.eval()
        self.model, self.spec, self.cfg = model, model.spec, model.cfg
        self.device = torch.device(device)
        self.sizes = list(self.spec.sizes)
        self.copy = model.cfg.copy
        self.lstm = model.cfg.kind == "lstm"
        dev = self.device
        with torch.inference_mode():
            rnn = model.rnn
            L, H = model.cfg.layers, model.cfg.hidden
            w_ih0 = rnn.weight_ih_l0.detach().float()

            def proj(table):  # token table [V, E] -> first-layer gate inputs [V, G]
                return (table.detach().float() @ w_ih0.T).to(dev).contiguous()

            self.t_inp = [proj(e.weight) for e in model.inp]
            self.t_style = (proj(model.style.weight) + rnn.bias_ih_l0.detach().float().to(dev)).contiguous()
            self.t_bos = proj(model.bos[None, :])[0]
            if self.copy:
                self.t_feat = proj(model.feat.weight)
                self.t_cand = [proj(e.weight) for e in model.cand]
                self.gate_w = [g.weight.detach().float().to(dev)[0] for g in model.gate]
                self.gate_b = [float(g.bias) for g in model.gate]
                self.gate_bias = model.gate_bias.weight.detach().float().cpu().numpy()
            self.w_hh = [_Linear(getattr(rnn, f"weight_hh_l{i}").to(dev), getattr(rnn, f"bias_hh_l{i}").to(dev), int8)
                         for i in range(L)]
            self.w_ih = [None] + [_Linear(getattr(rnn, f"weight_ih_l{i}").to(dev), getattr(rnn, f"bias_ih_l{i}").to(dev),
                                          int8) for i in range(1, L)]
            self.cond = [c.weight.detach().float().to(dev).contiguous() for c in model.cond]
            self.head_in = [_Linear(m.weight.to(dev), m.bias.to(dev), int8) for m in model.head_in]
            self.head_out = [_Linear(m.weight.to(dev), m.bias.to(dev), False) for m in model.head_out]
            self.h = torch.zeros(L, H, device=dev)
            self.c = torch.zeros(L, H, device=dev) if self.lstm else None
        self.L, self.H = L, H
        self.cache = PieceCache(cache_capacity)
        self.cand: tuple | None = None
        self.feat = 0
        self.style = 0
        self.rng = np.random.default_rng(seed)
        self.events = 0

    # -- state ------------------------------------------------------------------------
    def reset(self, style: int = 0) -> torch.Tensor:
        """Zero state, empty cache, then the begin-of-piece step; returns field 0 logits."""
        self.style = int(style)
        self.cache.reset()
        self.cand, self.feat = None, 0
        with torch.inference_mode():
            self.h.zero_()
            if self.c is not None:
                self.c.zero_()
            x = self.t_bos + self.t_style[self.style]
            if self.copy:
                x = x + self.t_feat[0]
                for k, size in enumerate(self.sizes):
                    x = x + self.t_cand[k][size]
            self._cells(x)
        self.events = 0
        return self.field_logits(0, ())

    def snapshot(self):
        """The recurrent state (the piece cache is not part of it)."""
        with torch.inference_mode():
            return (self.h.clone(), None if self.c is None else self.c.clone(), self.cand, self.feat)

    def restore(self, snap) -> None:
        h, c, self.cand, self.feat = snap
        with torch.inference_mode():
            self.h.copy_(h)
            if c is not None:
                self.c.copy_(c)

    # -- the step ---------------------------------------------------------------------
    def feed(self, event) -> torch.Tensor:
        """Fold one event (a tuple of field values) into the state; returns the logits of
        the next event's first field.  O(1): one cell step per layer, a bounded cache update."""
        event = tuple(int(v) for v in event)
        with torch.inference_mode():
            x = self.t_style[self.style]
            for k, v in enumerate(event):
                x = x + self.t_inp[k][v]
            if self.copy:
                self.cache.update(event)
                self.cand, self.feat = self.cache.predict()
                x = x + self.t_feat[self.feat]
                if self.cand is not None:
                    for k, v in enumerate(self.cand):
                        x = x + self.t_cand[k][v]
                else:
                    for k, size in enumerate(self.sizes):
                        x = x + self.t_cand[k][size]
            self._cells(x)
        self.events += 1
        return self.field_logits(0, ())

    def _cells(self, gi0: torch.Tensor) -> None:
        h, c, H = self.h, self.c, self.H
        x = None
        for i in range(self.L):
            gi = gi0 if i == 0 else self.w_ih[i](x)
            gh = self.w_hh[i](h[i])
            if self.lstm:
                g = gi + gh
                ig, fg, gg, og = g.split(H)
                ci = torch.sigmoid(fg) * c[i] + torch.sigmoid(ig) * torch.tanh(gg)
                c[i].copy_(ci)
                h[i].copy_(torch.sigmoid(og) * torch.tanh(ci))
            else:
                ir, iz, inn = gi.split(H)
                hr, hz, hn = gh.split(H)
                r = torch.sigmoid(ir + hr)
                z = torch.sigmoid(iz + hz)
                n = torch.tanh(inn + r * hn)
                h[i].copy_(n + z * (h[i] - n))
            x = h[i]

    # -- prediction -------------------------------------------------------------------
    def field_logits(self, k: int, prefix) -> torch.Tensor:
        """Logits of field ``k`` given the earlier fields ``prefix`` of the next event."""
        with torch.inference_mode():
            z = self.h[self.L - 1]
            for j, v in enumerate(prefix[:k]):
                z = z + self.cond[j][int(v)]
            a = torch.relu(self.head_in[k](z))
            self._a = a
            return self.head_out[k](a)

    def gate(self, k: int, prefix) -> tuple[float, int | None]:
        """(copy weight g, candidate value) for field ``k``; ``(0, None)`` without one."""
        cand = self.cand
        if not self.copy or cand is None or cand[k] >= self.sizes[k]:
            return 0.0, None
        match = all(int(prefix[j]) == cand[j] for j in range(k))
        with torch.inference_mode():
            s = float(torch.dot(self.gate_w[k], self._a)) + self.gate_b[k]
        s += float(self.gate_bias[self.feat * 2 + int(match), k])
        return 1.0 / (1.0 + np.exp(-s)), cand[k]

    def probs(self, k: int, prefix, temperature: float = 1.0) -> np.ndarray:
        """Probabilities of field ``k`` (the copy mixture included)."""
        logits = self.field_logits(k, prefix).detach().cpu().numpy().astype(np.float64)
        logits = logits / max(temperature, 1e-4)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        g, cand = self.gate(k, prefix)
        if cand is not None:
            p *= 1.0 - g
            p[cand] += g
        return p

    def sample(self, temperature: float = 1.0, top_p: float = 1.0, masks=None, given=()) -> tuple:
        """Sample the next event field by field.  ``masks`` maps a field name to a boolean
        array of allowed values; ``given`` fixes the first fields (e.g. dt and pitch)."""
        event = list(int(v) for v in given)
        for k in range(len(event), len(self.sizes)):
            p = self.probs(k, event, temperature)
            mask = None if masks is None else masks.get(self.spec.fields[k].name)
            event.append(sample_index(p, self.rng, top_p=top_p, mask=mask))
        return tuple(event)

    def log_prob(self, event) -> float:
        """Natural log-probability of a whole event from the current state."""
        total = 0.0
        for k, v in enumerate(event):
            total += float(np.log(max(self.probs(k, event)[int(v)], 1e-300)))
        return total
