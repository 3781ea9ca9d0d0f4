"""The one-event step API: :class:`Stepper` folds one event into the state in O(1).

Built from a trained :class:`~midi_bridge.model.rnn.EventRNN`, it does not call ``nn.GRU`` /
``nn.LSTM`` (their batch-1 path through oneDNN is slow on a CPU) nor any module: everything
is precomputed into float32 arrays at construction, and one event is a fixed sequence of
operations on preallocated buffers (``out=``; no tensor or array allocated for the state,
the gates, the heads or the probabilities):

* the first layer's input projection is folded into one table (an event's input is a sum
  of its rows: the event's fields, the top in-piece candidate's fields and one row for
  style x feature id with the biases);
* the cells are written out from the same weights: OpenBLAS ``sgemv`` through numpy (on
  one thread 2-3x faster here than torch's MKL ``mv`` for these shapes), the bias as the
  matrix's last column against a constant 1 after each layer's state, then five fused
  element-wise ops per GRU layer on tensor views of the same buffers (``sigmoid_``,
  ``addcmul``, ``tanh_``, ``lerp``); the LSTM's upper layers take ``[h_below; 1; h]`` in
  one product;
* the factorised field heads: ``a_k = relu(W_k (h + sum_{j<k} cond_j[x_j]) + b_k)`` is
  ``relu(W_k h + b_k + sum_{j<k} (cond_j W_k^T)[x_j])``: the heads' input matrices are
  stacked (field 0's product at each step, the others' at the first sampled field) and a
  sampled field adds one precomputed row for every later field at once, no product; the
  output layers carry their bias as a column and field 0's has the copy gate as one more
  row;
* sampling is a few numpy ops per field on a float64 buffer: ``exp(logits / T)`` (the max
  subtracted only where the sum would leave a safe range), the in-piece candidates' mass
  added as scalars (at most four), then one sort and cumulative sum for top-p and one
  ``rng.random()`` per sampled field, as before (same draws as :func:`sample_index` on
  :meth:`Stepper.probs`).

Optional int8 weight-only quantisation (fbgemm's dynamic-quantised linear) of the matrices
with at least :data:`INT8_MIN_SIZE` weights.  The CUDA-graph variant is
:class:`midi_bridge.model.cuda_graph.GraphedStepper`.

    st = Stepper(model)            # model from checkpoint.load(path)
    st.reset(style=0)              # state after the begin-of-piece step
    logits = st.feed((dt, pitch, dur, vel))   # one event in -> first field's logits
    event = st.sample(temperature=0.9, top_p=0.95)  # the next event, field by field

The logits tensor returned by :meth:`feed` / :meth:`reset` is a view of the stepper's
buffer: valid until the next step (clone it to keep it).  ``st.h`` (and ``st.c``) are
tensor views of the state, ``[layers, hidden]``.

The pieces: :mod:`.step_tables` (the weights folded into float32 tables, the products,
int8), :mod:`.step_cells` (the GRU/LSTM cells) and :mod:`.step_sample` (the
field-by-field sampling); every name they export is importable from here.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .cache import PieceCache
from .rnn import EventRNN
from .step_cells import gru_cell, lstm_cell
from .step_sample import FieldSampler
from .step_tables import (_BLAS_THREADS, _F32, INT8_MIN_SIZE, Int8, _matvec, _PackedInfo, _prepack_int8, blas_threads,
                          build_tables)

__all__ = ["INT8_MIN_SIZE", "Int8", "Stepper", "blas_threads", "build_tables"]

_ZERO = np.float32(0.0)


class Stepper(FieldSampler):
    """Batch-1 stateful inference for one :class:`EventRNN` on the CPU."""

    def __init__(self, model: EventRNN, device: str | torch.device = "cpu", int8: bool = False,
                 seed: int | None = None, cache_capacity: int = 4096):
        model = model.eval()
        self.model, self.spec, self.cfg = model, model.spec, model.cfg
        self.device = torch.device(device)
        self.sizes = list(self.spec.sizes)
        self.F = len(self.sizes)
        self.copy = model.cfg.copy
        self.lstm = model.cfg.kind == "lstm"
        self.L, self.H = model.cfg.layers, model.cfg.hidden
        self.A = model.cfg.head
        # 4096 contexts: the last ~500 events at every order (what recurs stays longer: the
        # least recently updated goes).  At 8192 the table's working set at its bound pushed
        # the network's weights out of the CPU's cache: event 100,000 cost 1.05-1.06x event
        # 100 (``bench model``'s interleaved growth), 1.01-1.05x at 4096.  Training and
        # ``evaluate`` see whole pieces (no bound).
        self.cache = PieceCache(cache_capacity)
        self.cands: list[tuple] = []  # in-piece candidates for the next event
        self.q: list[float] = []
        self.feat = 0
        self.gate_offset = 0.0  # added to the copy gate's logit (< 0: copy the piece less)
        self.style = 0
        self.rng = np.random.default_rng(seed)
        self.events = 0
        with torch.no_grad():
            if self.copy:
                self.gate_b = float(model.gate.bias)
                self.gate_bias = model.gate_bias.weight.detach().float().cpu().numpy()[:, 0].astype(np.float64)
            self._build(model, int8)
        self._sample_buffers()

    # -- construction ---------------------------------------------------------------------
    def _tables(self, model: EventRNN) -> None:
        """The step's float32 arrays (:func:`~midi_bridge.model.step_tables.build_tables`)."""
        build_tables(self, model)

    def _build(self, model: EventRNN, int8: bool) -> None:
        if self.device.type != "cpu":
            raise ValueError(f"Stepper runs on the CPU (got device {self.device}); the CUDA step is "
                             "midi_bridge.model.cuda_graph.GraphedStepper")
        threads = torch.get_num_threads()
        if _BLAS_THREADS[0] != threads:
            blas_threads(threads)
            _BLAS_THREADS[0] = threads
        self._tables(model)
        rnn, L, H, A, F = model.rnn, self.L, self.H, self.A, self.F
        G = (4 if self.lstm else 3) * H
        self._rows0 = list(self.table0)  # row views (no allocation per event)

        # state: h [L, H] (and c), one buffer, each row followed by a constant 1 (the
        # products' bias column); tensor views of it for the element-wise ops
        self._hbuf = np.zeros((L, H + 1), dtype=_F32)
        self._hbuf[:, H] = 1.0
        self._h = self._hbuf[:, :H]
        self.h = torch.from_numpy(self._hbuf)[:, :H]
        self._cbuf = np.zeros((L, H), dtype=_F32) if self.lstm else None
        self.c = torch.from_numpy(self._cbuf) if self.lstm else None
        self._x0 = np.zeros(G, dtype=_F32)  # layer 0's gate input (from the tables)
        self._cell_fns = []
        self._packs = []  # every int8-packed matrix (None: float32)
        hh = []
        # (INT8_MIN_SIZE and _prepack_int8 read from this module: the tests patch them here)
        q = Int8(INT8_MIN_SIZE, _prepack_int8) if int8 else None
        for i in range(L):
            if self.lstm:
                cell, packed_hh, packs = lstm_cell(rnn, i, H, self._hbuf, self._x0, q, self._cbuf)
            else:
                cell, packed_hh, packs = gru_cell(rnn, i, H, self._hbuf, self._x0, q)
            self._cell_fns.append(cell)
            self._packs += packs
            hh.append(packed_hh)

        # heads
        self._pre = np.zeros(F * A, dtype=_F32)  # W_k h + b_k for every field k
        self._work = np.zeros(F * A, dtype=_F32)  # ... + the prefix's rows
        hL, hL1 = self._hbuf[L - 1, :H], self._hbuf[L - 1]
        self._head0_mv, p0 = _matvec(self._w_heads[:A], self._b_heads[:A], hL, self._pre[:A], q, hL1)
        self._rest_mv, p1 = _matvec(self._w_heads[A:], self._b_heads[A:], hL, self._pre[A:], q, hL1) \
            if F > 1 else (None, None)
        self._packs += [p0, p1]
        self._U = [list(u) for u in self._U_tables]  # row views
        self._work_tail = [self._work[(j + 1) * A:] for j in range(F - 1)]
        self._pre_tail = [self._pre[(j + 1) * A:] for j in range(F - 1)]
        self._pre_k = [self._pre[k * A:(k + 1) * A] for k in range(F)]
        self._work_k = [self._work[k * A:(k + 1) * A] for k in range(F)]
        self._act = np.zeros(A + 1, dtype=_F32)
        self._act[A] = 1.0  # the output layers' bias column
        self._act_a = self._act[:A]
        self._lg = [np.zeros(w.shape[0], dtype=_F32) for w in self._w_out]
        self._lg_view = [lg[:s] for lg, s in zip(self._lg, self.sizes)]
        self._l0 = torch.from_numpy(self._lg_view[0])
        self._rest_ok = False  # ``_pre`` of the fields after the first is computed lazily
        self._applied: list = []  # the prefix folded into ``_work``
        self.w_hh = [_PackedInfo(p) for p in hh]  # (int8 or not, for the benchmark)
        self.int8 = any(p is not None for p in self._packs)

    # -- backend (overridden by the CUDA-graph stepper) -------------------------------------
    def _net(self, rows) -> None:
        """Layer 0's input = sum of ``rows`` of the tables; one step of every layer."""
        r = self._rows0
        x = self._x0
        np.add(r[rows[0]], r[rows[1]], out=x)
        for i in rows[2:]:
            np.add(x, r[i], out=x)
        for cell in self._cell_fns:
            cell()

    def _head0(self) -> None:
        """Field 0's logits (and the copy gate) from the new state."""
        self._rest_ok = False
        self._head0_mv()
        np.maximum(self._pre_k[0], _ZERO, out=self._act_a)
        np.dot(self._w_out[0], self._act, out=self._lg[0])

    def _head(self, k: int, prefix) -> np.ndarray:
        """Field ``k``'s logits (float32 array) given the earlier fields ``prefix[:k]``;
        incremental (one row added per field) when ``prefix`` extends the previous call's."""
        if k == 0:
            return self._logits0()
        if not self._rest_ok:
            self._rest_mv()
            self._rest_ok = True
            self._applied = []
        applied = self._applied
        if applied is None:
            applied = self._applied = []
        j = len(applied)
        if j > k or (j and applied != list(prefix[:j])):
            applied.clear()
            j = 0
        while j < k:
            v = int(prefix[j])
            if j == 0:  # the later fields' pre-activations: W_k h + b_k + (cond_0 W_k^T)[x_0]
                np.add(self._pre_tail[0], self._U[0][v], out=self._work_tail[0])
            else:
                np.add(self._work_tail[j], self._U[j][v], out=self._work_tail[j])
            applied.append(v)
            j += 1
        np.maximum(self._work_k[k], _ZERO, out=self._act_a)
        np.dot(self._w_out[k], self._act, out=self._lg[k])
        return self._lg_view[k]

    def _logits0(self) -> np.ndarray:
        """Field 0's logits after the last step (float32 array)."""
        return self._lg_view[0]

    def _next(self, k: int, prefix) -> np.ndarray:
        """Field ``k``'s logits (k >= 1) during one field-by-field pass: fold ``prefix[k - 1]``
        (the fields before it were folded by the calls for ``k - 1``, ..., 1)."""
        if k == 1:
            if not self._rest_ok:
                self._rest_mv()
                self._rest_ok = True
            np.add(self._pre_tail[0], self._U[0][prefix[0]], out=self._work_tail[0])
        else:
            np.add(self._work_tail[k - 1], self._U[k - 1][prefix[k - 1]], out=self._work_tail[k - 1])
        self._applied = None  # (the general path rebuilds)
        np.maximum(self._work_k[k], _ZERO, out=self._act_a)
        np.dot(self._w_out[k], self._act, out=self._lg[k])
        return self._lg_view[k]

    def _gate_raw(self) -> float:
        return float(self._lg[0][self.sizes[0]])

    def _save(self):
        return (self._hbuf.copy(), None if self._cbuf is None else self._cbuf.copy(), self._lg[0].copy())

    def _load(self, saved) -> None:
        h, c, lg0 = saved
        np.copyto(self._hbuf, h)
        if c is not None:
            np.copyto(self._cbuf, c)
        np.copyto(self._lg[0], lg0)
        self._rest_ok = False

    def _zero(self) -> None:
        self._h.fill(0.0)
        if self._cbuf is not None:
            self._cbuf.fill(0.0)

    # -- state ------------------------------------------------------------------------
    @property
    def _s(self) -> float:
        """The copy gate's logit from field 0's activation (without the feature's bias)."""
        return self._gate_raw()

    def _rows(self, event, bos: bool = False) -> list:
        if bos:
            rows = [self._row_bos]
        else:
            rows = [o + v for o, v in zip(self._off_inp, event)]
        if self.copy:
            cand = self.cands[0] if self.cands else self.sizes
            rows += [o + v for o, v in zip(self._off_cand, cand)]
            rows.append(self._off_ctx + self.style * self._n_feat + self.feat)
        else:
            rows.append(self._off_ctx + self.style)
        return rows

    def reset(self, style: int = 0) -> torch.Tensor:
        """Zero state, empty cache, then the begin-of-piece step; returns field 0 logits."""
        self._clear(style)
        self._net(self._rows(None, bos=True))
        self._head0()
        self.events = 0
        return self._l0

    def _clear(self, style: int) -> None:
        """Zero recurrent state and forget the piece."""
        style = int(style)
        if not 0 <= style < self._n_styles:
            raise IndexError(f"style {style} out of range (the model has {self._n_styles})")
        self.style = style
        self.cache.reset()
        self.cands, self.q, self.feat = [], [], 0
        self._zero()

    def snapshot(self):
        """The recurrent state and a mark of the piece cache: :meth:`restore` undoes the
        events fed since (a discarded answer leaves no trace in the in-piece statistics).
        ``snapshot()[0]`` is ``h`` ``[layers, hidden]`` and ``[1]`` the LSTM's ``c`` (None
        for a GRU), as tensors."""
        saved = self._save()
        h = torch.from_numpy(saved[0][:, :self.H]) if isinstance(saved[0], np.ndarray) else saved[0]
        c = saved[1]
        if isinstance(c, np.ndarray):
            c = torch.from_numpy(c)
        return (h, c, self.cands, self.q, self.feat, saved, self.events, self.cache.mark())

    def restore(self, snap) -> None:
        _h, _c, self.cands, self.q, self.feat, saved, _events, mark = snap
        self.cache.rollback(mark)
        self._load(saved)

    # -- the step ---------------------------------------------------------------------
    def _cache_step(self, event: tuple) -> None:
        """The in-piece statistics: count ``event``, predict the next one's candidates."""
        if self.copy:
            self.cache.update(event)
            self.cands, self.q, self.feat = self.cache.predict()

    def feed(self, event) -> torch.Tensor:
        """Fold one event (a tuple of field values) into the state; returns the logits of
        the next event's first field.  O(1): one cell step per layer, a bounded cache update."""
        event = tuple([int(v) for v in event])
        for v, size in zip(event, self.sizes):
            if not 0 <= v < size:  # (a row of another field's table otherwise)
                raise IndexError(f"event {event}: a field value outside 0..size-1 ({self.spec.to_dict()['fields']})")
        self._cache_step(event)
        self._net(self._rows(event))
        self._head0()
        self.events += 1
        return self._l0

    # -- prediction -------------------------------------------------------------------
    def field_logits(self, k: int, prefix) -> torch.Tensor:
        """Logits of field ``k`` of the network (without the in-piece mixture) given the
        earlier fields ``prefix`` of the next event (a new tensor)."""
        return torch.from_numpy(np.array(self._head(k, prefix), dtype=_F32))

    def gate_logit(self) -> float:
        """The copy gate's logit for the next event."""
        return self._gate_raw() + float(self.gate_bias[self.feat]) + self.gate_offset

    def _gate(self) -> float:
        """sigmoid(gate logit): the in-piece candidates' weight (0 without copy)."""
        if not self.copy:
            return 0.0
        s = self.gate_logit()
        if s >= 0.0:
            return 1.0 / (1.0 + math.exp(-s))
        e = math.exp(s)
        return e / (1.0 + e)

    def _rnn_logits(self, k: int, prefix, temperature: float) -> np.ndarray:
        logits = self._head(k, prefix).astype(np.float64)
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
        n = len(self.cands)
        if not n:
            return p_rnn
        cand = self._cand_arr[:n]
        cand[:] = self.cands
        alive = np.all(cand[:, :k] == np.asarray([int(v) for v in prefix[:k]], dtype=np.intp), axis=1)
        mass = np.asarray(self.q, dtype=np.float64) * alive
        qk = mass.sum()
        if qk <= 0:
            return p_rnn
        cache = np.zeros_like(p_rnn)
        np.add.at(cache, cand[:, k], mass)
        return (g * cache + (1 - g) * r_k * p_rnn) / (g * qk + (1 - g) * r_k)

    def probs(self, k: int, prefix, temperature: float = 1.0) -> np.ndarray:
        """Field ``k``'s distribution (the in-piece mixture included) given ``prefix``."""
        r = 1.0
        for j in range(k):
            r *= self._rnn_probs(j, prefix, temperature)[int(prefix[j])]
        p = self._rnn_probs(k, prefix, temperature)
        return self._mix(k, prefix, p, r, self._gate())

    def log_prob(self, event) -> float:
        """Natural log-probability of a whole event from the current state."""
        event = [int(v) for v in event]
        total, r, g = 0.0, 1.0, self._gate()
        for k, v in enumerate(event):
            p_rnn = self._rnn_probs(k, event, 1.0)
            total += float(np.log(max(self._mix(k, event, p_rnn, r, g)[v], 1e-300)))
            r *= p_rnn[v]
        return total
