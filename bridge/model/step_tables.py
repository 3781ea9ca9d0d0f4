"""The stepper's weights: float32 snapshots of an :class:`~midi_bridge.model.rnn.EventRNN`'s
parameters folded into the tables :class:`~midi_bridge.model.step.Stepper` (and the CUDA
stepper) step with, the matrix-vector products over preallocated buffers (OpenBLAS
``sgemv`` through numpy, or fbgemm's int8 dynamic-quantised linear), and numpy's BLAS
thread count.  See :mod:`.step` for the layout of the tables.
"""

from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import numpy as np
import torch

from .rnn import EventRNN

_F32 = np.float32

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


class Int8(NamedTuple):
    """An int8 step's policy: matrices with at least ``min_size`` weights are packed by
    ``prepack`` (:func:`_prepack_int8`; None from it: that matrix stays float32)."""

    min_size: int
    prepack: Callable


def _np(t: torch.Tensor) -> np.ndarray:
    """A float32 copy (the stepper never shares memory with the model's parameters: it is a
    snapshot of the weights it was built from)."""
    return np.array(t.detach().float().cpu().numpy(), dtype=_F32, order="C", copy=True)


def _matvec(w: np.ndarray, b: np.ndarray | None, x: np.ndarray, out: np.ndarray, int8: Int8 | None,
            x1: np.ndarray | None = None):
    """A no-argument callable computing ``out = w @ x (+ b)`` into the preallocated ``out``
    (``x`` is read when called); int8 weights through fbgemm where ``int8`` (an
    :class:`Int8` policy; None: float32) asks and the backend is available.
    ``x1``: ``x`` followed by a constant 1 in memory: float32 then folds ``b`` into the
    matrix as its last column (one call, not two).  Returns ``(callable, packed or None)``."""
    packed = None
    if int8 is not None and w.size >= int8.min_size:
        packed = int8.prepack(torch.from_numpy(w), None if b is None else torch.from_numpy(b))
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


def build_tables(st, model: EventRNN) -> None:
    """The step's float32 arrays (numpy, on the CPU; the CUDA stepper copies them to its
    device), set on the stepper ``st``: the first layer's input table (with its row
    offsets) and the heads' matrices and tables."""
    rnn, F = model.rnn, st.F
    G = (4 if st.lstm else 3) * st.H
    w_ih0 = _np(rnn.weight_ih_l0)

    def proj(table):  # token table [V, E] -> first-layer gate inputs [V, G]
        return np.ascontiguousarray(_np(table) @ w_ih0.T, dtype=_F32)

    # one table of first-layer gate inputs; an event's input is the sum of F (+ F) + 1 rows
    parts = [proj(e.weight) for e in model.inp]
    if st.copy:
        parts += [proj(e.weight) for e in model.cand]  # row ``size`` of each: no candidate
    base = _np(rnn.bias_ih_l0)
    if st.lstm:  # the LSTM's two biases only ever appear summed
        base = base + _np(rnn.bias_hh_l0)
    style = proj(model.style.weight) + base  # [styles, G]
    st._n_styles = style.shape[0]
    if st.copy:  # style x feature id in one row
        feat = proj(model.feat.weight)
        parts.append((style[:, None, :] + feat[None, :, :]).reshape(-1, G))
        st._n_feat = feat.shape[0]
    else:
        parts.append(style)
        st._n_feat = 1
    parts.append(proj(model.bos.detach()[None, :]))
    parts.append(np.zeros((1, G), dtype=_F32))  # (padding for a fixed number of rows)
    st.table0 = np.ascontiguousarray(np.concatenate(parts), dtype=_F32)
    offs = np.cumsum([0] + [p.shape[0] for p in parts]).tolist()
    st._off_inp = offs[:F]
    st._off_cand = offs[F:2 * F] if st.copy else None
    st._off_ctx = offs[2 * F] if st.copy else offs[F]  # style * n_feat + feat
    st._row_bos, st._row_zero = offs[-3], offs[-2]
    st._n_rows = (2 * F + 1) if st.copy else F + 1  # rows summed per event
    # heads: the input layers stacked; cond_j folded through every later head:
    # U_j [size_j, (F - 1 - j) * A] = [cond_j W_{j+1}^T, ..., cond_j W_{F-1}^T]
    st._w_heads = np.ascontiguousarray(np.concatenate([_np(m.weight) for m in model.head_in]), dtype=_F32)
    st._b_heads = np.ascontiguousarray(np.concatenate([_np(m.bias) for m in model.head_in]), dtype=_F32)
    w_in = [_np(m.weight) for m in model.head_in]
    st._U_tables = []
    for j, c in enumerate(model.cond):
        cj = _np(c.weight)
        st._U_tables.append(np.ascontiguousarray(
            np.concatenate([cj @ w_in[k].T for k in range(j + 1, F)], axis=1), dtype=_F32))
    # the output layers with their bias as the last column; field 0's with the gate row
    st._w_out = []
    for k, m in enumerate(model.head_out):
        w = np.concatenate([_np(m.weight), _np(m.bias)[:, None]], axis=1)
        if k == 0 and st.copy:  # the copy gate as one more output of field 0
            g = np.concatenate([_np(model.gate.weight), _np(model.gate.bias)[:, None]], axis=1)
            w = np.concatenate([w, g], axis=0)
        st._w_out.append(np.ascontiguousarray(w, dtype=_F32))
