"""The step on a GPU, captured in CUDA graphs (used when ``device`` resolves to CUDA).

Static device buffers hold the event's table-row indices, the sampled prefix, the
recurrent state, the logits and the copy gates.  One graph replays "input gather + cells
of every layer + first field's head"; one graph per further field replays its head from
the prefix buffer.  The host synchronises only to read a field's logits when it samples
that field's token.  ``graphs=False`` runs the same kernels eagerly (for the benchmark's
eager-vs-graph comparison).  Nothing here runs without a GPU; the CPU path is
:class:`midi_bridge.model.step.Stepper`.
"""

from __future__ import annotations

import numpy as np
import torch

from .step import Stepper


class GraphedStepper(Stepper):
    def __init__(self, model, device="cuda", seed=None, graphs: bool = True, cache_capacity: int = 8192):
        super().__init__(model, device=device, int8=False, seed=seed, cache_capacity=cache_capacity)
        dev, F = self.device, len(self.sizes)
        with torch.inference_mode():
            cand = self.t_cand if self.copy else []
            parts = list(self.t_inp) + list(cand)
            if self.copy:
                parts.append(self.t_feat)
            parts += [self.t_style, self.t_bos[None, :], torch.zeros_like(self.t_bos)[None, :]]
            self.table = torch.cat(parts).contiguous()
            offs = np.cumsum([0] + [p.shape[0] for p in parts])
            self.off_inp = offs[:F]
            self.off_cand = offs[F:2 * F] if self.copy else None
            self.off_feat = offs[2 * F] if self.copy else None
            self.off_style = offs[len(parts) - 3]
            self.row_bos, self.row_zero = offs[-3], offs[-2]
            self.cond_table = torch.cat(self.cond).contiguous() if self.cond else torch.zeros(1, self.H, device=dev)
            self.off_cond = np.cumsum([0] + [c.shape[0] for c in self.cond])[:-1]
            n_idx = 2 * F + 2 if self.copy else F + 1
            self.idx = torch.zeros(n_idx, dtype=torch.long, device=dev)
            self.host_idx = torch.zeros(n_idx, dtype=torch.long, pin_memory=self.device.type == "cuda")
            self.prefix = torch.zeros(max(1, F - 1), dtype=torch.long, device=dev)
            self.host_prefix = torch.zeros(max(1, F - 1), dtype=torch.long, pin_memory=self.device.type == "cuda")
            self.logits = [torch.zeros(s, device=dev) for s in self.sizes]
            self.gate_s = torch.zeros((), device=dev)
        # The host buffers are pinned and copied asynchronously: before one is written
        # again, the copy that reads it must have run (two played notes in a row are two
        # feeds with no sampled token, so no read of the logits, in between).
        self._uploaded = torch.cuda.Event() if self.device.type == "cuda" else None
        self.graphs = None
        if graphs:
            self._capture()

    # -- device kernels (captured) ---------------------------------------------------------
    def _core_step(self) -> None:
        x = self.table.index_select(0, self.idx).sum(0)
        self._cells(x)
        self._core_head(0)

    def _core_head(self, k: int) -> None:
        z = self.h[self.L - 1]
        if k:
            z = z + self.cond_table.index_select(0, self.prefix[:k]).sum(0)
        a = torch.relu(self.head_in[k](z))
        self.logits[k].copy_(self.head_out[k](a))
        if self.copy and k == 0:
            self.gate_s.copy_(torch.dot(self.gate_w, a))

    def _capture(self) -> None:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        snap = self.snapshot()
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(3):  # warm up on the side stream
                self._core_step()
                for k in range(1, len(self.sizes)):
                    self._core_head(k)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graphs = []
        with torch.inference_mode():
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                self._core_step()
            graphs.append(g)
            for k in range(1, len(self.sizes)):
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    self._core_head(k)
                graphs.append(g)
        self.graphs = graphs
        self.restore(snap)

    # -- state ----------------------------------------------------------------------------
    def snapshot(self):
        """The CPU stepper's snapshot plus the copy gate's device buffer (the graphed step
        keeps the gate there, not in ``_s``)."""
        with torch.inference_mode():
            return super().snapshot() + (self.gate_s.clone(),)

    def restore(self, snap) -> None:
        super().restore(snap[:-1])
        with torch.inference_mode():
            self.gate_s.copy_(snap[-1])
            if self._l0 is not None:  # field 0's logits back in the static buffer
                self.logits[0].copy_(self._l0)
                self._l0 = self.logits[0]

    # -- host side ----------------------------------------------------------------------
    def _upload(self, host: torch.Tensor, dev: torch.Tensor) -> None:
        dev.copy_(host, non_blocking=True)
        if self._uploaded is not None:
            self._uploaded.record()

    def _host_free(self) -> None:
        """Wait (if at all) for the last upload to have read its host buffer."""
        if self._uploaded is not None:
            self._uploaded.synchronize()

    def _run_step(self, rows) -> torch.Tensor:
        with torch.inference_mode():
            self._host_free()
            self.host_idx[: len(rows)] = torch.as_tensor([int(r) for r in rows], dtype=torch.long)
            self._upload(self.host_idx, self.idx)
            if self.graphs:
                self.graphs[0].replay()
            else:
                self._core_step()
        self._l0 = self.logits[0]
        return self._l0

    def _rows(self, event, bos: bool = False):
        F = len(self.sizes)
        if bos:
            rows = [self.row_bos] + [self.row_zero] * (F - 1)
        else:
            rows = [int(self.off_inp[k]) + int(v) for k, v in enumerate(event)]
        if self.copy:
            cand = self.cands[0] if self.cands else self.sizes
            rows += [int(self.off_cand[k]) + int(v) for k, v in enumerate(cand)]
            rows.append(int(self.off_feat) + self.feat)
        rows.append(int(self.off_style) + self.style)
        return rows

    def reset(self, style: int = 0) -> torch.Tensor:
        self._clear(style)
        self.events = 0
        return self._run_step(self._rows(None, bos=True))

    def feed(self, event) -> torch.Tensor:
        event = tuple(int(v) for v in event)
        if self.copy:
            self.cache.update(event)
            self.cands, self.q, self.feat = self.cache.predict()
        self.events += 1
        return self._run_step(self._rows(event))

    def field_logits(self, k: int, prefix) -> torch.Tensor:
        if k:
            with torch.inference_mode():
                self._host_free()
                for j in range(k):
                    self.host_prefix[j] = int(self.off_cond[j]) + int(prefix[j])
                self._upload(self.host_prefix, self.prefix)
                if self.graphs:
                    self.graphs[k].replay()
                else:
                    self._core_head(k)
        return self.logits[k]

    def gate_logit(self) -> float:
        return float(self.gate_s) + self.gate_b + float(self.gate_bias[self.feat]) + self.gate_offset
