"""LSTM/GRU event model: teacher-forced training forward (the step is in :mod:`step`).

One step consumes one event row (all its fields) and leaves a state from which the next
event is predicted field by field: ``p_rnn(x) = prod_k p(x_k | h, x_<k)``.  Each field's head
is a small MLP over ``h + sum_j<k cond_j[x_j]``.

With ``copy=True`` the model's distribution over whole events is a learned mixture with
the in-piece statistics of :class:`~midi_bridge.model.cache.PieceCache` (a distribution ``q``
over up to four candidate events)::

    p(x) = g q(x) + (1 - g) p_rnn(x),   g = sigmoid(w . a_0 + b[feature id])

``a_0`` is the first head's activation.  Field by field this is exactly
``p(x_k | x_<k) = M_{k+1} / M_k`` with ``M_k = g Q_k + (1 - g) R_k``, ``Q_k`` the cache mass
of candidates agreeing with ``x_<k`` and ``R_k = p_rnn(x_<k)``, so sampling and scoring can
go one field at a time.  The top candidate and the feature id are also part of the
step's input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .cache import N_FEATURES
from .encoding import EventSpec

TINY = 1e-12


@dataclass
class ModelConfig:
    kind: str = "gru"  # gru | lstm
    hidden: int = 384
    layers: int = 2
    emb: int = 128
    head: int = 256
    dropout: float = 0.1
    copy: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "ModelConfig":
        return ModelConfig(**{k: d[k] for k in ModelConfig.__dataclass_fields__ if k in d})


class EventRNN(nn.Module):
    def __init__(self, spec: EventSpec, n_styles: int, cfg: ModelConfig | None = None):
        super().__init__()
        cfg = cfg or ModelConfig()
        if cfg.kind not in ("gru", "lstm"):
            raise ValueError(f"unknown model kind {cfg.kind!r} (gru or lstm)")
        self.spec, self.cfg, self.n_styles = spec, cfg, max(1, n_styles)
        sizes = spec.sizes
        E, H, A = cfg.emb, cfg.hidden, cfg.head
        self.inp = nn.ModuleList(nn.Embedding(s, E) for s in sizes)
        self.bos = nn.Parameter(torch.zeros(E))
        self.style = nn.Embedding(self.n_styles, E)
        rnn = nn.GRU if cfg.kind == "gru" else nn.LSTM
        self.rnn = rnn(E, H, cfg.layers, batch_first=True, dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.drop = nn.Dropout(cfg.dropout)
        self.cond = nn.ModuleList(nn.Embedding(s, H) for s in sizes[:-1])
        self.head_in = nn.ModuleList(nn.Linear(H, A) for _ in sizes)
        self.head_out = nn.ModuleList(nn.Linear(A, s) for s in sizes)
        if cfg.copy:
            self.feat = nn.Embedding(N_FEATURES, E)
            self.cand = nn.ModuleList(nn.Embedding(s + 1, E) for s in sizes)  # index s: none
            self.gate = nn.Linear(A, 1)
            self.gate_bias = nn.Embedding(N_FEATURES, 1)
            nn.init.zeros_(self.gate_bias.weight)
        nn.init.normal_(self.bos, std=0.02)

    def inputs(self, x, styles, cand=None, feat=None):
        """Input embeddings ``[B, T, E]``: previous event (BOS first) + style + top candidate."""
        B = x.shape[0]
        prev = sum(emb(x[:, :-1, k]) for k, emb in enumerate(self.inp))
        inp = torch.cat([self.bos.expand(B, 1, -1), prev], dim=1)
        inp = inp + self.style(styles)[:, None, :]
        if self.cfg.copy:
            inp = inp + self.feat(feat) + sum(emb(cand[..., 0, k]) for k, emb in enumerate(self.cand))
        return inp

    def forward(self, x, styles, cand=None, q=None, feat=None, state=None, need_correct: bool = True):
        """Teacher forcing.  ``x [B, T, F]``; with copy also ``cand [B, T, K, F]``,
        ``q [B, T, K]``, ``feat [B, T]``.  Returns ``(logp [B, T, F]``: log p(x_k | x_<k) of
        the true values under the mixture, ``correct [B, T, F]``: the most likely value of
        each field given the true earlier ones is the true one (None unless
        ``need_correct``), ``state)``."""
        out, state = self.rnn(self.drop(self.inputs(x, styles, cand, feat)), state)
        h = self.drop(out)
        z = h
        lps, acts = [], []
        for k in range(len(self.spec.sizes)):
            if k:
                z = z + self.cond[k - 1](x[..., k - 1])
            a = F.relu(self.head_in[k](z))
            logits = self.head_out[k](a)
            lp = F.log_softmax(logits, dim=-1)
            lps.append(lp)
            acts.append(a)
        rnn_lp = torch.stack([lp.gather(-1, x[..., k, None]).squeeze(-1) for k, lp in enumerate(lps)], -1)
        if not self.cfg.copy:
            correct = torch.stack([lp.argmax(-1) == x[..., k] for k, lp in enumerate(lps)], -1) if need_correct else None
            return rnn_lp, correct, state
        has = (q[..., 0] > 0)
        s = self.gate(acts[0]).squeeze(-1) + self.gate_bias(feat).squeeze(-1)
        lg, l1g = F.logsigmoid(s), F.logsigmoid(-s)
        eq = (cand == x[..., None, :])  # [B, T, K, F]
        match = torch.cumprod(eq.to(q.dtype), dim=-1)  # candidate agrees on fields 0..k
        prefix = torch.cat([torch.ones_like(match[..., :1]), match], -1)  # [B, T, K, F + 1]
        logQ = torch.log((q[..., None] * prefix).sum(-2).clamp_min(TINY))  # [B, T, F + 1]
        logR = torch.cat([torch.zeros_like(rnn_lp[..., :1]), rnn_lp.cumsum(-1)], -1)
        M = torch.logaddexp(lg[..., None] + logQ, l1g[..., None] + logR)
        mixed = M[..., 1:] - M[..., :-1]
        logp = torch.where(has[..., None], mixed, rnn_lp)
        correct = None
        if need_correct:
            correct = self._mixture_correct(x, lps, cand, q, prefix, lg, l1g, logR, M, has)
        return logp, correct, state

    @torch.no_grad()
    def _mixture_correct(self, x, lps, cand, q, prefix, lg, l1g, logR, M, has):
        out = []
        for k, lp in enumerate(lps):
            w_cache = torch.where(has, (lg - M[..., k]).exp(), torch.zeros_like(lg))
            w_rnn = torch.where(has, (l1g + logR[..., k] - M[..., k]).exp(), torch.ones_like(lg))
            p = lp.exp() * w_rnn[..., None]
            idx = cand[..., k].clamp(max=lp.shape[-1] - 1)
            mass = q * prefix[..., k] * (cand[..., k] < lp.shape[-1])
            p = p.scatter_add(-1, idx, mass * w_cache[..., None])
            out.append(p.argmax(-1) == x[..., k])
        return torch.stack(out, -1)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
