"""The step on a GPU, captured in CUDA graphs (used when ``device`` resolves to CUDA).

The same precomputed arrays as the CPU :class:`~midi_bridge.model.step.Stepper` (the first
layer's input table, the stacked head matrices, the folded ``cond`` tables, the output
layers with the copy gate as one more row), copied to the device.  Static device buffers
hold the event's table-row indices, the sampled prefix's row indices, the recurrent state
and the logits.  One graph replays "input gather + cells of every layer + every field's
head pre-activation + field 0's logits and gate"; one graph per further field replays its
head from the prefix buffer.  The host synchronises only to read a field's logits when it
samples that field's token; sampling, the in-piece statistics and snapshot/restore are
the CPU stepper's.  ``graphs=False`` runs the same kernels eagerly (for the benchmark's
eager-vs-graph comparison, and for the tests on a CPU).
"""

from __future__ import annotations

import numpy as np
import torch

from .step import Stepper


class GraphedStepper(Stepper):
    def __init__(self, model, device="cuda", seed=None, graphs: bool = True, cache_capacity: int = 4096):
        self._use_graphs = graphs
        super().__init__(model, device=device, int8=False, seed=seed, cache_capacity=cache_capacity)

    # -- construction -------------------------------------------------------------------
    def _build(self, model, int8: bool) -> None:
        self._tables(model)
        dev, F, L, H, A = self.device, self.F, self.L, self.H, self.A
        cuda = dev.type == "cuda"
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), device=dev)  # noqa: E731
        rnn = model.rnn
        w = lambda name: t(getattr(rnn, name).detach().float().cpu().numpy())  # noqa: E731
        with torch.inference_mode():
            self.table = t(self.table0)
            self.w_hh_d = [w(f"weight_hh_l{i}") for i in range(L)]
            self.b_hh_d = [w(f"bias_hh_l{i}") for i in range(L)]
            self.w_ih_d = [None] + [w(f"weight_ih_l{i}") for i in range(1, L)]
            self.b_ih_d = [None] + [w(f"bias_ih_l{i}") for i in range(1, L)]
            if self.lstm:  # layer 0's biases are in the table (both, summed)
                self.b_hh_d[0] = torch.zeros_like(self.b_hh_d[0])
            self.w_heads = t(self._w_heads)
            self.b_heads = t(self._b_heads)
            self.w_out = [t(m) for m in self._w_out]
            # field k's prefix rows: [cond_0 W_k^T; ...; cond_{k-1} W_k^T] (from the U tables)
            self.t_prefix, self.off_prefix = [None], [None]
            for k in range(1, F):
                blocks = [u[:, (k - j - 1) * A:(k - j) * A] for j, u in enumerate(self._U_tables[:k])]
                self.t_prefix.append(t(np.concatenate(blocks)))
                self.off_prefix.append(np.cumsum([0] + [b.shape[0] for b in blocks])[:-1].tolist())
            self.idx = torch.zeros(self._n_rows, dtype=torch.long, device=dev)
            self.host_idx = torch.zeros(self._n_rows, dtype=torch.long, pin_memory=cuda)
            self.prefix = [None] + [torch.zeros(k, dtype=torch.long, device=dev) for k in range(1, F)]
            self.host_prefix = [None] + [torch.zeros(k, dtype=torch.long, pin_memory=cuda) for k in range(1, F)]
            self.h = torch.zeros(L, H, device=dev)
            self.c = torch.zeros(L, H, device=dev) if self.lstm else None
            self.pre = torch.zeros(F * A, device=dev)
            self.act = torch.ones(A + 1, device=dev)  # the last: the output layers' bias column
            self.logits = [torch.zeros(m.shape[0], device=dev) for m in self._w_out]
        self._lg_host = [np.zeros(m.shape[0], dtype=np.float32) for m in self._w_out]
        self._host_ok = [False] * F
        # The host buffers are pinned and copied asynchronously: before one is written
        # again, the copy that reads it must have run (two played notes in a row are two
        # feeds with no sampled token, so no read of the logits, in between).
        self._uploaded = torch.cuda.Event() if cuda else None
        self.w_hh = []  # (no int8 on a GPU)
        self.int8 = False
        self.graphs = None
        if self._use_graphs:
            self._capture()

    # -- device kernels (captured) -------------------------------------------------------
    def _cells(self, x: torch.Tensor) -> None:
        h, c, H = self.h, self.c, self.H
        inp = None
        for i in range(self.L):
            gi = x if i == 0 else torch.addmv(self.b_ih_d[i], self.w_ih_d[i], inp)
            gh = torch.addmv(self.b_hh_d[i], self.w_hh_d[i], h[i])
            if self.lstm:
                ig, fg, gg, og = (gi + gh).split(H)
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
            inp = h[i]

    def _core_step(self) -> None:
        self._cells(self.table.index_select(0, self.idx).sum(0))
        torch.addmv(self.b_heads, self.w_heads, self.h[self.L - 1], out=self.pre)
        self._core_head(0)

    def _core_head(self, k: int) -> None:
        A = self.A
        z = self.pre[k * A:(k + 1) * A]
        if k:
            z = z + self.t_prefix[k].index_select(0, self.prefix[k]).sum(0)
        torch.clamp_min(z, 0.0, out=self.act[:A])
        torch.mv(self.w_out[k], self.act, out=self.logits[k])

    def _capture(self) -> None:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        saved = self._save()
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(3):  # warm up on the side stream
                self._core_step()
                for k in range(1, self.F):
                    self._core_head(k)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graphs = []
        with torch.inference_mode():
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                self._core_step()
            graphs.append(g)
            for k in range(1, self.F):
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    self._core_head(k)
                graphs.append(g)
        self.graphs = graphs
        self._load(saved)

    # -- host side ----------------------------------------------------------------------
    def _upload(self, host: torch.Tensor, dev: torch.Tensor) -> None:
        dev.copy_(host, non_blocking=True)
        if self._uploaded is not None:
            self._uploaded.record()

    def _host_free(self) -> None:
        """Wait (if at all) for the last upload to have read its host buffer."""
        if self._uploaded is not None:
            self._uploaded.synchronize()

    def _net(self, rows) -> None:
        rows = list(rows) + [self._row_zero] * (self._n_rows - len(rows))
        with torch.inference_mode():
            self._host_free()
            self.host_idx[:] = torch.as_tensor(rows, dtype=torch.long)
            self._upload(self.host_idx, self.idx)
            if self.graphs:
                self.graphs[0].replay()
            else:
                self._core_step()
        self._host_ok[0] = False

    def _head0(self) -> None:
        pass  # (in the step's graph)

    def _to_host(self, k: int) -> np.ndarray:
        if not self._host_ok[k]:
            self._lg_host[k][:] = self.logits[k].cpu().numpy()
            self._host_ok[k] = True
        return self._lg_host[k]

    def _logits0(self) -> np.ndarray:
        return self._to_host(0)[: self.sizes[0]]

    def _head(self, k: int, prefix) -> np.ndarray:
        if k == 0:
            return self._logits0()
        with torch.inference_mode():
            self._host_free()
            off = self.off_prefix[k]
            self.host_prefix[k][:] = torch.as_tensor([off[j] + int(prefix[j]) for j in range(k)], dtype=torch.long)
            self._upload(self.host_prefix[k], self.prefix[k])
            if self.graphs:
                self.graphs[k].replay()
            else:
                self._core_head(k)
        self._host_ok[k] = False
        return self._to_host(k)[: self.sizes[k]]

    def _next(self, k: int, prefix) -> np.ndarray:
        return self._head(k, prefix)

    def _gate_raw(self) -> float:
        return float(self._to_host(0)[self.sizes[0]])

    def _save(self):
        with torch.inference_mode():
            return (self.h.clone(), None if self.c is None else self.c.clone(), self.logits[0].clone(),
                    self.pre.clone())

    def _load(self, saved) -> None:
        h, c, lg0, pre = saved
        with torch.inference_mode():
            self.h.copy_(h)
            if c is not None:
                self.c.copy_(c)
            self.logits[0].copy_(lg0)
            self.pre.copy_(pre)
        self._host_ok[0] = False

    def _zero(self) -> None:
        with torch.inference_mode():
            self.h.zero_()
            if self.c is not None:
                self.c.zero_()

    @property
    def _l0(self) -> torch.Tensor:
        return self.logits[0][: self.sizes[0]]
