"""The one-event step API: :class:`Stepper` folds one event into the state in O(1).

Built from a trained :class:`~midi_bridge.model.rnn.EventRNN`, it does not call ``nn.GRU`` /
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

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from .cache import PieceCache
from .rnn import EventRNN
from .sampling import sample_index


def _prepack_int8(w: torch.Tensor, b: torch.Tensor | None):
    """Per-row symmetric int8 weights packed for fbgemm's dynamic-quantised linear (the
    activations are quantised on the fly); None where the backend is missing."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return None
    scale = (w.abs().amax(dim=1).clamp(min=1e-8) / 127.0).double()
    try:
        with warnings.catch_warnings():  # torch marks quantized tensors deprecated (2.13)
            warnings.simplefilter("ignore")
            q = torch.quantize_per_channel(w, scale, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
            return torch.ops.quantized.linear_prepack(q, b)
    except (RuntimeError, AttributeError):  # gone from this torch: stay in float32
        return None


class _Linear:
    """y = W x + b for one row, optionally with int8 weights (CPU only)."""

    __slots__ = ("w", "b", "packed")

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None, int8: bool):
        self.b = None if b is None else b.detach().float().contiguous()
        self.w = w.detach().float().contiguous()
        self.packed = _prepack_int8(self.w, self.b) if int8 and self.w.device.type == "cpu" else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return F.linear(x, self.w, self.b)
        return torch.ops.quantized.linear_dynamic(x[None], self.packed, True)[0]


class Stepper:
    """Batch-1 stateful inference for one :class:`EventRNN`."""

    def __init__(self, model: EventRNN, device: str | torch.device = "cpu", int8: bool = False,
                 seed: int | None = None, cache_capacity: int = 8192):
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
                self.gate_w = model.gate.weight.detach().float().to(dev)[0].contiguous()
                self.gate_b = float(model.gate.bias)
                self.gate_bias = model.gate_bias.weight.detach().float().cpu().numpy()[:, 0]
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
        self.cands: list[tuple] = []  # in-piece candidates for the next event
        self.q: list[float] = []
        self.feat = 0
        self._s = 0.0  # copy gate logit (set with field 0's logits)
        self._l0 = None  # field 0's logits after the last step
        self.gate_offset = 0.0  # added to the copy gate's logit (< 0: copy the piece less)
        self.style = 0
        self.rng = np.random.default_rng(seed)
        self.events = 0

    # -- state ------------------------------------------------------------------------
    def reset(self, style: int = 0) -> torch.Tensor:
        """Zero state, empty cache, then the begin-of-piece step; returns field 0 logits."""
        self._clear(style)
        with torch.inference_mode():
            x = self.t_bos + self.t_style[self.style]
            if self.copy:
                x = x + self.t_feat[0]
                for k, size in enumerate(self.sizes):
                    x = x + self.t_cand[k][size]
            self._cells(x)
        self.events = 0
        self._l0 = self.field_logits(0, ())
        return self._l0

    def _clear(self, style: int) -> None:
        """Zero recurrent state and forget the piece (shared with the graphed stepper)."""
        self.style = int(style)
        self.cache.reset()
        self.cands, self.q, self.feat = [], [], 0
        with torch.inference_mode():
            self.h.zero_()
            if self.c is not None:
                self.c.zero_()

    def snapshot(self):
        """The recurrent state and a mark of the piece cache: :meth:`restore` undoes the
        events fed since (a discarded answer leaves no trace in the in-piece statistics)."""
        with torch.inference_mode():
            return (self.h.clone(), None if self.c is None else self.c.clone(), self.cands, self.q, self.feat,
                    None if self._l0 is None else self._l0.clone(), self._s, self.cache.mark())

    def restore(self, snap) -> None:
        h, c, self.cands, self.q, self.feat, self._l0, self._s, mark = snap
        self.cache.rollback(mark)
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
                self.cands, self.q, self.feat = self.cache.predict()
                x = x + self.t_feat[self.feat]
                if self.cands:
                    for k, v in enumerate(self.cands[0]):
                        x = x + self.t_cand[k][v]
                else:
                    for k, size in enumerate(self.sizes):
                        x = x + self.t_cand[k][size]
            self._cells(x)
        self.events += 1
        self._l0 = self.field_logits(0, ())
        return self._l0

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
        """Logits of field ``k`` of the network (without the in-piece mixture) given the
        earlier fields ``prefix`` of the next event."""
        with torch.inference_mode():
            z = self.h[self.L - 1]
            for j, v in enumerate(prefix[:k]):
                z = z + self.cond[j][int(v)]
            a = torch.relu(self.head_in[k](z))
            if k == 0 and self.copy:
                self._s = float(torch.dot(self.gate_w, a)) + self.gate_b
            return self.head_out[k](a)

    def gate_logit(self) -> float:
        """The copy gate's logit for the next event (valid after field 0's logits)."""
        return self._s + float(self.gate_bias[self.feat]) + self.gate_offset

    def _rnn_logits(self, k: int, prefix, temperature: float) -> np.ndarray:
        if k == 0 and self._l0 is not None:
            logits = self._l0
        else:
            logits = self.field_logits(k, prefix)
        logits = logits.detach().cpu().numpy().astype(np.float64)
        if temperature != 1.0:
            logits = logits / max(temperature, 1e-4)
        return logits

    def _rnn_probs(self, k: int, prefix, temperature: float) -> np.ndarray:
        logits = self._rnn_logits(k, prefix, temperature)
        p = np.exp(logits - logits.max())
        return p / p.sum()

    def _mix(self, k: int, prefix, p_rnn: np.ndarray, r_k: float, g: float) -> np.ndarray:
        """Field ``k``'s distribution under ``g q + (1 - g) p_rnn`` given ``prefix``
        (``r_k`` = p_rnn(prefix))."""
        if not self.cands:
            return p_rnn
        cache = np.zeros_like(p_rnn)
        for c, qi in zip(self.cands, self.q):
            if all(c[j] == int(prefix[j]) for j in range(k)):
                cache[c[k]] += qi
        qk = cache.sum()
        if qk <= 0:
            return p_rnn
        denom = g * qk + (1 - g) * r_k
        return (g * cache + (1 - g) * r_k * p_rnn) / denom

    def probs(self, k: int, prefix, temperature: float = 1.0) -> np.ndarray:
        """Field ``k``'s distribution (the in-piece mixture included) given ``prefix``."""
        r = 1.0
        for j in range(k):
            r *= self._rnn_probs(j, prefix, temperature)[int(prefix[j])]
        p = self._rnn_probs(k, prefix, temperature)
        g = 1.0 / (1.0 + np.exp(-self.gate_logit())) if self.copy else 0.0
        return self._mix(k, prefix, p, r, g)

    def sample(self, temperature: float = 1.0, top_p: float = 1.0, masks=None, given=()) -> tuple:
        """Sample the next event field by field (the network's fields at ``temperature``,
        mixed with the in-piece candidates).  ``masks`` maps a field name to a boolean
        array of allowed values; ``given`` fixes the first fields (e.g. dt and pitch)."""
        event = [int(v) for v in given]
        r = 1.0
        g = None
        for k in range(len(self.sizes)):
            p_rnn = self._rnn_probs(k, event, temperature)
            if g is None:
                g = 1.0 / (1.0 + np.exp(-self.gate_logit())) if self.copy else 0.0
            if k < len(given):
                r *= p_rnn[event[k]]
                continue
            p = self._mix(k, event, p_rnn, r, g)
            mask = None if masks is None else masks.get(self.spec.fields[k].name)
            if mask is not None and np.any(mask) and not np.any(np.where(mask, p, 0.0) > 0):
                # every allowed value underflowed (a low temperature): the network's
                # distribution over the allowed values only, so the mask still holds
                logits = np.where(mask, self._rnn_logits(k, event, temperature), -np.inf)
                if np.isfinite(logits.max()):
                    p = np.exp(logits - logits.max())
            v = sample_index(p, self.rng, top_p=top_p, mask=mask)
            event.append(v)
            r *= p_rnn[v]
        return tuple(event)

    def log_prob(self, event) -> float:
        """Natural log-probability of a whole event from the current state."""
        event = [int(v) for v in event]
        total, r, g = 0.0, 1.0, None
        for k, v in enumerate(event):
            p_rnn = self._rnn_probs(k, event, 1.0)
            if g is None:
                g = 1.0 / (1.0 + np.exp(-self.gate_logit())) if self.copy else 0.0
            total += float(np.log(max(self._mix(k, event, p_rnn, r, g)[v], 1e-300)))
            r *= p_rnn[v]
        return total
