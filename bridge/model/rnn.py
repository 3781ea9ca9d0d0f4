"""LSTM/GRU event model: teacher-forced training forward and the one-event step API.

One step consumes one event row (all its fields) and leaves a state from which the next
event is predicted field by field: ``p(x) = prod_k p(x_k | h, x_<k)``.  Each field's head
is a small MLP over ``h + sum_j<k cond_j[x_j]``.  With ``copy=True`` each head is a
mixture ``g * onehot(c_k) + (1 - g) * softmax(logits)`` of the model's distribution and the
in-piece candidate ``c`` of :class:`~bridge.model.cache.PieceCache`, the gate ``g`` learned
from the head's activations, the cache's feature id and whether the earlier fields agreed
with the candidate.  The step itself lives in :mod:`bridge.model.step`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .cache import N_FEATURES
from .encoding import EventSpec


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
            self.gate = nn.ModuleList(nn.Linear(A, 1) for _ in sizes)
            self.gate_bias = nn.Embedding(N_FEATURES * 2, len(sizes))
            nn.init.zeros_(self.gate_bias.weight)
        nn.init.normal_(self.bos, std=0.02)

    # -- training ---------------------------------------------------------------------
    def inputs(self, x, styles, cand=None, feat=None):
        """Input embeddings ``[B, T, E]``: previous event (BOS first) + style + copy info."""
        B, T, _ = x.shape
        prev = sum(emb(x[:, :-1, k]) for k, emb in enumerate(self.inp))
        inp = torch.cat([self.bos.expand(B, 1, -1), prev], dim=1)
        inp = inp + self.style(styles)[:, None, :]
        if self.cfg.copy:
            inp = inp + self.feat(feat) + sum(emb(cand[..., k]) for k, emb in enumerate(self.cand))
        return inp

    def forward(self, x, styles, cand=None, feat=None, state=None):
        """Teacher forcing.  ``x`` ``[B, T, F]`` long.  Returns ``(logp [B, T, F] of the true
        values, correct [B, T, F] bool: the field's most likely value is the true one, state)``."""
        out, state = self.rnn(self.drop(self.inputs(x, styles, cand, feat)), state)
        h = self.drop(out)
        logps, correct = [], []
        z = h
        has = None
        match = torch.ones_like(x[..., 0], dtype=torch.bool)
        if self.cfg.copy:
            has = feat >= 3  # order index >= 1
        for k, size in enumerate(self.spec.sizes):
            if k:
                z = z + self.cond[k - 1](x[..., k - 1])
            a = F.relu(self.head_in[k](z))
            logits = self.head_out[k](a)
            logp = F.log_softmax(logits, dim=-1)
            target = x[..., k]
            lp = logp.gather(-1, target[..., None]).squeeze(-1)
            if self.cfg.copy:
                c = cand[..., k].clamp(max=size - 1)
                use = has & match & (cand[..., k] < size)
                s = self.gate[k](a).squeeze(-1) + self.gate_bias(feat * 2 + match.long())[..., k]
                log_g, log_1g = F.logsigmoid(s), F.logsigmoid(-s)
                hit = use & (target == c)
                copy_term = torch.where(hit, log_g, torch.full_like(log_g, -float("inf")))
                mixed = torch.logaddexp(copy_term, log_1g + lp)
                lp = torch.where(use, mixed, lp)
                with torch.no_grad():
                    p = logp.exp() * torch.where(use, log_1g.exp(), torch.ones_like(s))[..., None]
                    p = p.scatter_add(-1, c[..., None], torch.where(use, log_g.exp(), torch.zeros_like(s))[..., None])
                    correct.append(p.argmax(-1) == target)
                match = match & (target == c)
            else:
                correct.append(logits.argmax(-1) == target)
            logps.append(lp)
        return torch.stack(logps, -1), torch.stack(correct, -1), state

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
