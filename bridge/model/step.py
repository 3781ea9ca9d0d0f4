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
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from .cache import PieceCache
from .rnn import EventRNN
from .sampling import sample_index

_F32 = np.float32
_ZERO = np.float32(0.0)
_INF = float("inf")
_LO, _HI = 1e-280, 1e280  # where a softmax's sum is taken without its max subtracted


#: Matrices with fewer elements stay float32 in an int8 step: fbgemm's dynamic-quantised
#: linear (quantise the input, the product, a new output) costs 12-20 us a call whatever the
#: size, more than float32 saves below about a million weights (measured with ``bench
#: model --int8``: at hidden 384 an all-int8 step is slower than float32).
INT8_MIN_SIZE = 1_000_000


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


def _np(t: torch.Tensor) -> np.ndarray:
    """A float32 copy (the stepper never shares memory with the model's parameters: it is a
    snapshot of the weights it was built from)."""
    return np.array(t.detach().float().cpu().numpy(), dtype=_F32, order="C", copy=True)


def _matvec(w: np.ndarray, b: np.ndarray | None, x: np.ndarray, out: np.ndarray, int8: bool,
            x1: np.ndarray | None = None):
    """A no-argument callable computing ``out = w @ x (+ b)`` into the preallocated ``out``
    (``x`` is read when called); int8 weights through fbgemm where asked and available.
    ``x1``: ``x`` followed by a constant 1 in memory: float32 then folds ``b`` into the
    matrix as its last column (one call, not two).  Returns ``(callable, packed or None)``."""
    packed = None
    if int8 and w.size >= INT8_MIN_SIZE:
        packed = _prepack_int8(torch.from_numpy(w), None if b is None else torch.from_numpy(b))
    if packed is not None:
        xt, ot = torch.from_numpy(x)[None], torch.from_numpy(out)[None]
        lin = torch.ops.quantized.linear_dynamic

        def mv():
            ot.copy_(lin(xt, packed, True))
        return mv, packed
    dot, add = np.dot, np.add
    if b is not None and x1 is not None:
        w = np.ascontiguousarray(np.concatenate([w, b[:, None]], axis=1), dtype=_F32)
        x, b = x1, None
    if b is None:
        def mv():
            dot(w, x, out=out)
    else:
        def mv():
            dot(w, x, out=out)
            add(out, b, out=out)
    return mv, None


def blas_threads(n: int) -> bool:
    """Set numpy's BLAS (OpenBLAS: the step's products go through it) to ``n`` threads;
    False where that is not possible (another BLAS).  The stepper follows torch's thread
    count (the daemon and the benchmark run one thread): OpenBLAS would otherwise split the
    larger products over every core."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        pass
    else:
        threadpool_limits(int(n), user_api="blas")
        return True
    import ctypes
    import glob
    import os

    paths = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*"))
    try:
        with open("/proc/self/maps") as f:
            paths += [ln.split()[-1] for ln in f if "openblas" in ln]
    except OSError:
        pass
    for path in dict.fromkeys(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                     "openblas_set_num_threads64_", "openblas_set_num_threads"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn(ctypes.c_int(int(n)))
                return True
    return False


_BLAS_THREADS = [None]


class _PackedInfo:
    """``packed`` is what the benchmark looks at to tell an int8 step from a float32 one."""

    __slots__ = ("packed",)

    def __init__(self, packed):
        self.packed = packed


class Stepper:
    """Batch-1 stateful inference for one :class:`EventRNN` on the CPU."""

    def __init__(self, model: EventRNN, device: str | torch.device = "cpu", int8: bool = False,
                 seed: int | None = None, cache_capacity: int = 8192):
        model = model.eval()
        self.model, self.spec, self.cfg = model, model.spec, model.cfg
        self.device = torch.device(device)
        self.sizes = list(self.spec.sizes)
        self.F = len(self.sizes)
        self.copy = model.cfg.copy
        self.lstm = model.cfg.kind == "lstm"
        self.L, self.H = model.cfg.layers, model.cfg.hidden
        self.A = model.cfg.head
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
        """The step's float32 arrays (numpy, on the CPU; the CUDA stepper copies them to
        its device): the first layer's input table and the heads' matrices and tables."""
        rnn, F = model.rnn, self.F
        G = (4 if self.lstm else 3) * self.H
        w_ih0 = _np(rnn.weight_ih_l0)

        def proj(table):  # token table [V, E] -> first-layer gate inputs [V, G]
            return np.ascontiguousarray(_np(table) @ w_ih0.T, dtype=_F32)

        # one table of first-layer gate inputs; an event's input is the sum of F (+ F) + 1 rows
        parts = [proj(e.weight) for e in model.inp]
        if self.copy:
            parts += [proj(e.weight) for e in model.cand]  # row ``size`` of each: no candidate
        base = _np(rnn.bias_ih_l0)
        if self.lstm:  # the LSTM's two biases only ever appear summed
            base = base + _np(rnn.bias_hh_l0)
        style = proj(model.style.weight) + base  # [styles, G]
        self._n_styles = style.shape[0]
        if self.copy:  # style x feature id in one row
            feat = proj(model.feat.weight)
            parts.append((style[:, None, :] + feat[None, :, :]).reshape(-1, G))
            self._n_feat = feat.shape[0]
        else:
            parts.append(style)
            self._n_feat = 1
        parts.append(proj(model.bos.detach()[None, :]))
        parts.append(np.zeros((1, G), dtype=_F32))  # (padding for a fixed number of rows)
        self.table0 = np.ascontiguousarray(np.concatenate(parts), dtype=_F32)
        offs = np.cumsum([0] + [p.shape[0] for p in parts]).tolist()
        self._off_inp = offs[:F]
        self._off_cand = offs[F:2 * F] if self.copy else None
        self._off_ctx = offs[2 * F] if self.copy else offs[F]  # style * n_feat + feat
        self._row_bos, self._row_zero = offs[-3], offs[-2]
        self._n_rows = (2 * F + 1) if self.copy else F + 1  # rows summed per event
        # heads: the input layers stacked; cond_j folded through every later head:
        # U_j [size_j, (F - 1 - j) * A] = [cond_j W_{j+1}^T, ..., cond_j W_{F-1}^T]
        self._w_heads = np.ascontiguousarray(np.concatenate([_np(m.weight) for m in model.head_in]), dtype=_F32)
        self._b_heads = np.ascontiguousarray(np.concatenate([_np(m.bias) for m in model.head_in]), dtype=_F32)
        w_in = [_np(m.weight) for m in model.head_in]
        self._U_tables = []
        for j, c in enumerate(model.cond):
            cj = _np(c.weight)
            self._U_tables.append(np.ascontiguousarray(
                np.concatenate([cj @ w_in[k].T for k in range(j + 1, F)], axis=1), dtype=_F32))
        # the output layers with their bias as the last column; field 0's with the gate row
        self._w_out = []
        for k, m in enumerate(model.head_out):
            w = np.concatenate([_np(m.weight), _np(m.bias)[:, None]], axis=1)
            if k == 0 and self.copy:  # the copy gate as one more output of field 0
                g = np.concatenate([_np(model.gate.weight), _np(model.gate.bias)[:, None]], axis=1)
                w = np.concatenate([w, g], axis=0)
            self._w_out.append(np.ascontiguousarray(w, dtype=_F32))

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
        for i in range(L):
            cell, packed_hh = (self._cell_lstm if self.lstm else self._cell_gru)(rnn, i, int8)
            self._cell_fns.append(cell)
            hh.append(packed_hh)

        # heads
        self._pre = np.zeros(F * A, dtype=_F32)  # W_k h + b_k for every field k
        self._work = np.zeros(F * A, dtype=_F32)  # ... + the prefix's rows
        hL, hL1 = self._hbuf[L - 1, :H], self._hbuf[L - 1]
        self._head0_mv, p0 = _matvec(self._w_heads[:A], self._b_heads[:A], hL, self._pre[:A], int8, hL1)
        self._rest_mv, p1 = _matvec(self._w_heads[A:], self._b_heads[A:], hL, self._pre[A:], int8, hL1) \
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

    def _cell_gru(self, rnn, i: int, int8: bool):
        H = self.H
        h = self._hbuf[i, :H]
        gh = np.zeros(3 * H, dtype=_F32)
        mv_h, ph = _matvec(_np(getattr(rnn, f"weight_hh_l{i}")), _np(getattr(rnn, f"bias_hh_l{i}")), h, gh, int8,
                           self._hbuf[i])
        if i == 0:
            gi, mv_i, pi = self._x0, None, None
        else:
            gi = np.zeros(3 * H, dtype=_F32)
            mv_i, pi = _matvec(_np(getattr(rnn, f"weight_ih_l{i}")), _np(getattr(rnn, f"bias_ih_l{i}")),
                               self._hbuf[i - 1, :H], gi, int8, self._hbuf[i - 1])
        self._packs += [ph, pi]
        rz = np.zeros(2 * H, dtype=_F32)
        n = np.zeros(H, dtype=_F32)
        gi_rz, gh_rz = gi[:2 * H], gh[:2 * H]
        t = torch.from_numpy
        rz_t, n_t, h_t = t(rz), t(n), t(h)
        r_t, z_t = rz_t[:H], rz_t[H:]
        gi_n_t, gh_n_t = t(gi)[2 * H:], t(gh)[2 * H:]
        add, addcmul, lerp = np.add, torch.addcmul, torch.lerp

        def cell():
            if mv_i is not None:
                mv_i()
            mv_h()
            add(gi_rz, gh_rz, out=rz)
            rz_t.sigmoid_()
            addcmul(gi_n_t, r_t, gh_n_t, out=n_t)  # n = tanh(W_in x + b_in + r (W_hn h + b_hn))
            n_t.tanh_()
            lerp(n_t, h_t, z_t, out=h_t)  # h' = n + z (h - n)
        return cell, ph

    def _cell_lstm(self, rnn, i: int, int8: bool):
        H = self.H
        g = np.zeros(4 * H, dtype=_F32)
        w_hh = _np(getattr(rnn, f"weight_hh_l{i}"))
        if i == 0:  # the input part and both biases come from the tables
            mv, p = _matvec(w_hh, None, self._hbuf[0, :H], g, int8)
            x0, add = self._x0, np.add

            def gates():
                mv()
                add(g, x0, out=g)
        else:  # [W_ih | b_ih + b_hh | W_hh] [h_{i-1}; 1; h_i] in one product
            w_ih = _np(getattr(rnn, f"weight_ih_l{i}"))
            b = _np(getattr(rnn, f"bias_ih_l{i}")) + _np(getattr(rnn, f"bias_hh_l{i}"))
            if int8 and w_ih.size + w_hh.size >= INT8_MIN_SIZE:  # (fbgemm: the bias apart)
                w = np.concatenate([w_ih, np.zeros((4 * H, 1), dtype=_F32), w_hh], axis=1)
                x1 = self._hbuf.reshape(-1)[(i - 1) * (H + 1):(i + 1) * (H + 1) - 1]
                gates, p = _matvec(np.ascontiguousarray(w), b, x1, g, int8)
            else:
                w = np.concatenate([w_ih, b[:, None], w_hh], axis=1)
                x1 = self._hbuf.reshape(-1)[(i - 1) * (H + 1):(i + 1) * (H + 1) - 1]
                gates, p = _matvec(np.ascontiguousarray(w), None, x1, g, False)
        self._packs.append(p)
        t = torch.from_numpy
        g_t, h_t, c_t = t(g), t(self._hbuf[i, :H]), t(self._cbuf[i])
        tmp_t = torch.zeros(H)
        if_t, gg_t, o_t = g_t[:2 * H], g_t[2 * H:3 * H], g_t[3 * H:]
        i_t, f_t = g_t[:H], g_t[H:2 * H]
        mul, addcmul = torch.mul, torch.addcmul

        def cell():
            gates()
            if_t.sigmoid_()
            gg_t.tanh_()
            o_t.sigmoid_()
            mul(f_t, c_t, out=c_t)
            addcmul(c_t, i_t, gg_t, out=c_t)  # c' = f c + i g
            torch.tanh(c_t, out=tmp_t)
            mul(o_t, tmp_t, out=h_t)  # h' = o tanh(c')
        return cell, p

    def _sample_buffers(self) -> None:
        n = max(self.sizes)
        self._p = np.zeros(n, dtype=np.float64)
        self._pm = np.zeros(n, dtype=np.float64)
        self._ps = np.zeros(n, dtype=np.float64)
        self._cum = np.zeros(n, dtype=np.float64)
        self._pk = [self._p[:s] for s in self.sizes]
        self._pmk = [self._pm[:s] for s in self.sizes]
        self._psk = [self._ps[:s] for s in self.sizes]
        self._cumk = [self._cum[:s] for s in self.sizes]
        self._srt = np.zeros(n, dtype=np.float64)
        self._srtk = [self._srt[:s] for s in self.sizes]
        self._alive = np.zeros(4, dtype=np.float64)
        self._cand_arr = np.zeros((4, self.F), dtype=np.intp)
        self._cand_q = np.zeros(4, dtype=np.float64)

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

    def sample(self, temperature: float = 1.0, top_p: float = 1.0, masks=None, given=()) -> tuple:
        """Sample the next event field by field (the network's fields at ``temperature``,
        mixed with the in-piece candidates).  ``masks`` maps a field name to a boolean
        array of allowed values; ``given`` fixes the first fields (e.g. dt and pitch)."""
        event = [int(v) for v in given]
        n_given = len(event)
        inv_t = 1.0 / max(temperature, 1e-4) if temperature != 1.0 else 1.0
        g = self._gate()
        # the candidates still agreeing with the sampled prefix, and their mass (at most
        # K_CANDIDATES = 4 of them: scalar work, cheaper than any array op here)
        alive = list(zip(self.cands, self.q)) if g > 0.0 else ()
        fields = self.spec.fields
        mul, exp = np.multiply, np.exp
        r = 1.0
        with np.errstate(over="ignore"):  # (an overflow is caught by the range check)
            for k in range(self.F):
                logits = self._logits0() if k == 0 else self._next(k, event)
                e = self._pk[k]
                # exp(logits / T) without the max subtracted (one op less); where its sum
                # leaves a safe range (extreme logits or temperatures) it is done again with it
                if inv_t == 1.0:
                    exp(logits, out=e)
                else:
                    mul(logits, inv_t, out=e)
                    exp(e, out=e)
                if k < n_given:
                    v = event[k]
                    Z = float(e.sum())
                    if not _LO < Z < _HI:
                        Z = self._softmax_safe(k, logits, inv_t)
                    r *= e[v] / Z
                else:
                    mask = None if masks is None else masks.get(fields[k].name)
                    if mask is None and not alive:
                        v, Z = self._pick_rnn(k, e, top_p, logits, inv_t, event, temperature)
                        r *= e[v] / Z
                    else:
                        Z = float(e.sum())
                        if not _LO < Z < _HI:
                            Z = self._softmax_safe(k, logits, inv_t)
                        p, total = e, Z
                        if alive:  # g q + (1 - g) p_rnn, in the units of e: e + q g Z / ((1 - g) r)
                            p = self._pmk[k]
                            p[:] = e
                            w = (1.0 - g) * r
                            if w > 0.0:
                                scale = g * Z / w
                                for c, qc in alive:
                                    p[c[k]] += qc * scale
                                    total += qc * scale
                            else:  # (the network's part underflowed: the candidates alone)
                                p.fill(0.0)
                                total = 0.0
                                for c, qc in alive:
                                    p[c[k]] += qc
                                    total += qc
                        if mask is not None:
                            pm = self._psk[k]
                            mul(p, mask, out=pm)
                            total = float(pm.sum())
                            p = pm
                        if 0.0 < total < _INF:
                            v = self._pick(k, p, total, top_p)
                        else:  # NaN/inf, or the mask's values all underflowed
                            v = self._draw_slow(k, self._mix(k, event, e / Z, r, g), mask, top_p, event, temperature)
                        r *= e[v] / Z
                    event.append(v)
                if alive:
                    alive = [cq for cq in alive if cq[0][k] == v]
        return tuple(event)

    def _softmax_safe(self, k: int, logits, inv_t: float) -> float:
        """``_p[:size_k] = exp(logits / T - max)``; returns their sum."""
        e = self._pk[k]
        np.multiply(logits, inv_t, out=e)
        np.subtract(e, e.max(), out=e)
        np.exp(e, out=e)
        return float(e.sum())

    def _pick(self, k: int, p: np.ndarray, total: float, top_p: float) -> int:
        """Draw from the unnormalised ``p`` (sum ``total`` > 0): one ``rng.random()``; with
        ``top_p`` < 1 from the smallest set of most likely values holding that mass."""
        cum = self._cumk[k]
        if top_p < 1.0:
            order = p.argsort()[::-1]
            np.take(p, order, out=self._srtk[k])
            np.cumsum(self._srtk[k], out=cum)
            keep = min(int(cum.searchsorted(top_p * total)) + 1, self.sizes[k])
            u = self.rng.random() * cum[keep - 1]
            return int(order[min(int(cum.searchsorted(u, side="right")), keep - 1)])
        np.cumsum(p, out=cum)
        u = self.rng.random() * total
        return min(int(cum.searchsorted(u, side="right")), self.sizes[k] - 1)

    def _pick_rnn(self, k, e, top_p, logits, inv_t, event, temperature) -> tuple[int, float]:
        """:meth:`_pick` from the network's ``e`` alone, its sum taken from the cumulative
        sum the draw needs anyway; returns ``(value, sum)``."""
        cum = self._cumk[k]
        if top_p < 1.0:
            order = e.argsort()[::-1]
            np.take(e, order, out=self._srtk[k])
            np.cumsum(self._srtk[k], out=cum)
        else:
            np.cumsum(e, out=cum)
        Z = float(cum[-1])
        if not _LO < Z < _HI:
            Z = self._softmax_safe(k, logits, inv_t)
            if not 0.0 < Z < _INF:
                return self._draw_slow(k, e, None, top_p, event, temperature), Z
            return self._pick(k, e, Z, top_p), Z
        if top_p < 1.0:
            keep = min(int(cum.searchsorted(top_p * Z)) + 1, self.sizes[k])
            u = self.rng.random() * cum[keep - 1]
            return int(order[min(int(cum.searchsorted(u, side="right")), keep - 1)]), Z
        u = self.rng.random() * Z
        return min(int(cum.searchsorted(u, side="right")), self.sizes[k] - 1), Z

    def _draw_slow(self, k, p, mask, top_p, event, temperature) -> int:
        """NaN/inf, or a mask whose every allowed value underflowed (a low temperature):
        the general path (the network's distribution over the allowed values only, so the
        mask still holds; non-finite logits refused by :func:`sample_index`)."""
        p = np.array(p, dtype=np.float64)
        if mask is not None and np.any(mask) and not np.any(np.where(mask, p, 0.0) > 0):
            logits = np.where(mask, self._rnn_logits(k, event, temperature), -np.inf)
            if np.isfinite(logits.max()):
                p = np.exp(logits - logits.max())
        return sample_index(p, self.rng, top_p=top_p, mask=mask)

    def log_prob(self, event) -> float:
        """Natural log-probability of a whole event from the current state."""
        event = [int(v) for v in event]
        total, r, g = 0.0, 1.0, self._gate()
        for k, v in enumerate(event):
            p_rnn = self._rnn_probs(k, event, 1.0)
            total += float(np.log(max(self._mix(k, event, p_rnn, r, g)[v], 1e-300)))
            r *= p_rnn[v]
        return total
