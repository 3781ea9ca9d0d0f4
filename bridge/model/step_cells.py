"""The stepper's recurrent cells: one GRU or LSTM layer's step written out from its weights,
as a no-argument callable over the stepper's preallocated buffers (see :mod:`.step`).

``hbuf`` is the state ``[layers, hidden + 1]``, each row followed by a constant 1 (the
products' bias column); ``x0`` layer 0's gate input (summed from the tables); ``int8`` an
:class:`~midi_bridge.model.step_tables.Int8` policy or None (float32).  Each builder
returns ``(cell, packed_hh, packs)``: the callable, the recurrent matrix's int8 pack (None:
float32; the benchmark looks at it) and every matrix's pack.
"""

from __future__ import annotations

import numpy as np
import torch

from .step_tables import Int8, _F32, _matvec, _np


def gru_cell(rnn, i: int, H: int, hbuf: np.ndarray, x0: np.ndarray, int8: Int8 | None):
    h = hbuf[i, :H]
    gh = np.zeros(3 * H, dtype=_F32)
    mv_h, ph = _matvec(_np(getattr(rnn, f"weight_hh_l{i}")), _np(getattr(rnn, f"bias_hh_l{i}")), h, gh, int8,
                       hbuf[i])
    if i == 0:
        gi, mv_i, pi = x0, None, None
    else:
        gi = np.zeros(3 * H, dtype=_F32)
        mv_i, pi = _matvec(_np(getattr(rnn, f"weight_ih_l{i}")), _np(getattr(rnn, f"bias_ih_l{i}")),
                           hbuf[i - 1, :H], gi, int8, hbuf[i - 1])
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
    return cell, ph, [ph, pi]


def lstm_cell(rnn, i: int, H: int, hbuf: np.ndarray, x0: np.ndarray, int8: Int8 | None, cbuf: np.ndarray):
    g = np.zeros(4 * H, dtype=_F32)
    w_hh = _np(getattr(rnn, f"weight_hh_l{i}"))
    if i == 0:  # the input part and both biases come from the tables
        mv, p = _matvec(w_hh, None, hbuf[0, :H], g, int8)
        add = np.add

        def gates():
            mv()
            add(g, x0, out=g)
    else:  # [W_ih | b_ih + b_hh | W_hh] [h_{i-1}; 1; h_i] in one product
        w_ih = _np(getattr(rnn, f"weight_ih_l{i}"))
        b = _np(getattr(rnn, f"bias_ih_l{i}")) + _np(getattr(rnn, f"bias_hh_l{i}"))
        if int8 is not None and w_ih.size + w_hh.size >= int8.min_size:  # (fbgemm: the bias apart)
            w = np.concatenate([w_ih, np.zeros((4 * H, 1), dtype=_F32), w_hh], axis=1)
            x1 = hbuf.reshape(-1)[(i - 1) * (H + 1):(i + 1) * (H + 1) - 1]
            gates, p = _matvec(np.ascontiguousarray(w), b, x1, g, int8)
        else:
            w = np.concatenate([w_ih, b[:, None], w_hh], axis=1)
            x1 = hbuf.reshape(-1)[(i - 1) * (H + 1):(i + 1) * (H + 1) - 1]
            gates, p = _matvec(np.ascontiguousarray(w), None, x1, g, None)
    t = torch.from_numpy
    g_t, h_t, c_t = t(g), t(hbuf[i, :H]), t(cbuf[i])
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
    return cell, p, [p]
