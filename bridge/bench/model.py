"""``bench model``: the cost of one *event* -- fold one played note into the state and
sample one note of answer (Notochord's ``feed`` + ``query``) -- for LSTM and GRU at the
shipped size and two larger ones, on the CPU (one thread) and on CUDA when present.

Rows: ``kind hidden layers device event_p50_us event_p99_us`` (+ ``default: true`` on
the shipped model's row, which uses its real weights; the others use random weights).
The shipped row also runs one session of ``--long`` events and reports the median cost of
the 500 events from event 100 on and of the last 500 (``event_100_us``,
``event_100000_us``), and the process's resident memory at event 100 and at the end.
``gan`` (when a GAN checkpoint is found, ``--gan``, default the shipped ``gan.pt``): the
cost of one answer *bar* of the conditional GAN on one CPU thread, sampled as the ``gan``
plugin does when the engine pulls past the previous bar (``bar_p50_us``, ``bar_p99_us``).
A benchmark, not a timed test.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time

import numpy as np
import torch

from midi_bridge.model.encoding import NOTE_SPEC
from midi_bridge.model.rnn import EventRNN, ModelConfig

LARGER = ((768, 2), (1024, 2))
_rng = np.random.default_rng(7)
#: Played notes of a session: a random walk, so contexts keep changing and the in-piece
#: cache fills up to its bound (the memory-flatness check needs that).
PLAYED = [(int(d), int(p), int(d), 22) for d, p in zip(_rng.choice([3, 6, 12], 4099),
                                                      60 + np.cumsum(_rng.integers(-4, 5, 4099)) % 24)]


def _rss_kb() -> int:
    """Resident memory in kB (without /proc: the peak so far, ru_maxrss, which macOS gives
    in bytes and Linux in kB)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak


def _stepper(model, device: str, int8: bool = False, graphs: bool = True):
    if device == "cuda":
        from midi_bridge.model.cuda_graph import GraphedStepper

        return GraphedStepper(model.to("cuda"), "cuda", seed=0, graphs=graphs)
    from midi_bridge.model.step import Stepper

    return Stepper(model, "cpu", int8=int8, seed=0)


def time_events(st, n: int, warm: int = 50) -> np.ndarray:
    """Per-event seconds of n events: feed a played note, then sample one note of answer
    (Notochord's feed + query; an answer note costs the same: sample, then feed it back)."""
    st.reset()
    out = np.empty(n)
    clock = time.perf_counter
    for i in range(-warm, n):
        t0 = clock()
        st.feed(PLAYED[i % len(PLAYED)])
        st.sample(0.9, 0.95)
        if i >= 0:
            out[i] = clock() - t0
    return out


def long_session(st, n: int, window: int = 500) -> dict:
    """Medians of the ``window`` events from event 100 on and of the last ``window``
    (never before event 100: a short session's windows overlap instead); memory at event
    100 and at the end."""
    if n < 100:
        raise ValueError(f"a session of {n} events has no event 100: --long must be at least 100 (or 0: none)")
    st.reset()
    early, late = [], []
    rss_early = 0
    clock = time.perf_counter
    for i in range(1, n + 1):
        t0 = clock()
        st.feed(PLAYED[i % len(PLAYED)])
        st.sample(0.9, 0.95)
        dt = clock() - t0
        if 100 <= i < 100 + window:
            early.append(dt)
            if i == 100:
                rss_early = _rss_kb()
        if i > n - window and i >= 100:
            late.append(dt)
    return {"event_100_us": round(float(np.median(early)) * 1e6, 1),
            f"event_{n}_us": round(float(np.median(late)) * 1e6, 1),
            "rss_kb_event_100": rss_early, f"rss_kb_event_{n}": _rss_kb()}


def _row(kind, hidden, layers, device, times, **extra) -> dict:
    us = times * 1e6
    row = {"kind": kind, "hidden": hidden, "layers": layers, "device": device,
           "event_p50_us": round(float(np.percentile(us, 50)), 1),
           "event_p99_us": round(float(np.percentile(us, 99)), 1)}
    row.update(extra)
    return row


def gan_row(path, n: int = 300, warm: int = 20) -> dict | None:
    """Per-bar cost of the GAN's continuation (``continue_bars``, the plugin's sampler)."""
    from midi_bridge.model import gan

    if path is None:
        from midi_bridge.plugin import PluginError
        from midi_bridge.generators.rnn import resolve_model_path

        try:
            path = resolve_model_path("gan.pt")
        except PluginError:  # not shipped with this install
            return None
    model = gan.load(path)
    history = gan.melody_to_bars([(60 + (2 * i) % 12, i * 0.5, 0.5) for i in range(32)], gan.CTX_BARS)
    bars = gan.continue_bars(model.gen, history, 0, 1.0, torch.Generator().manual_seed(0), model.pc_bias,
                             model.bias_frame)
    out = np.empty(n)
    clock = time.perf_counter
    for i in range(-warm, n):
        t0 = clock()
        next(bars)
        if i >= 0:
            out[i] = clock() - t0
    us = out * 1e6
    return {"checkpoint": str(path), "device": "cpu", "bars": n,
            "bar_p50_us": round(float(np.percentile(us, 50)), 1),
            "bar_p99_us": round(float(np.percentile(us, 99)), 1)}


def notochord_row(n: int) -> dict | None:
    """Notochord's default model (random weights) feed + query, if the package is installed."""
    try:
        from notochord import Notochord
    except Exception:
        return None
    model = Notochord().eval()
    model.reset()
    out = []
    with torch.inference_mode():
        for i in range(-20, n):
            t0 = time.perf_counter()
            model.feed(1, 60 + i % 12, 0.25, 80)
            model.query()
            if i >= 0:
                out.append(time.perf_counter() - t0)
    us = np.array(out) * 1e6
    return {"model": "notochord (default size, random weights)", "device": "cpu",
            "params": sum(p.numel() for p in model.parameters()),
            "event_p50_us": round(float(np.percentile(us, 50)), 1),
            "event_p99_us": round(float(np.percentile(us, 99)), 1)}


def run(checkpoint_path=None, events=2000, long=100_000, devices=("cpu",), int8=False, notochord=False,
        log=None, gan_path=None) -> dict:
    from midi_bridge.model import checkpoint

    torch.set_num_threads(1)
    if checkpoint_path is None:
        from midi_bridge.generators.rnn import resolve_model_path

        checkpoint_path = resolve_model_path("melody.pt")
    default_model, meta, _ = checkpoint.load(checkpoint_path)
    dcfg = default_model.cfg
    sizes = [(dcfg.hidden, dcfg.layers)] + [s for s in LARGER if s != (dcfg.hidden, dcfg.layers)]
    rows = []
    int8_skipped = None
    for device in devices:
        for kind in ("lstm", "gru"):
            for hidden, layers in sizes:
                default = kind == dcfg.kind and (hidden, layers) == (dcfg.hidden, dcfg.layers)
                if default:
                    model = default_model
                else:
                    torch.manual_seed(0)
                    cfg = ModelConfig(**{**dcfg.to_dict(), "kind": kind, "hidden": hidden, "layers": layers})
                    model = EventRNN(NOTE_SPEC, default_model.n_styles, cfg).eval()
                variants = [("", False, True)]
                if device == "cpu" and int8:
                    variants.append(("int8", True, True))
                if device == "cuda":
                    variants.append(("eager", False, False))
                for label, q, graphs in variants:
                    st = _stepper(model, device, int8=q, graphs=graphs)
                    if q and all(lin.packed is None for lin in st.w_hh):
                        # no fbgemm (Apple Silicon, Linux on ARM): the step stayed float32
                        int8_skipped = "no fbgemm engine in this torch: the step stays float32, no int8 rows"
                        continue
                    extra = {"default": True} if default and not label else {}
                    if label:
                        extra["variant"] = label
                    if device == "cuda":
                        extra["variant"] = label or "cuda-graph"
                    row = _row(kind, hidden, layers, device, time_events(st, events), **extra)
                    if default and not label and long:
                        row.update(long_session(st, long))
                    rows.append(row)
                    if log:
                        log(json.dumps(row))
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                          "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
              "checkpoint": str(checkpoint_path), "rows": rows}
    if int8_skipped:
        result["int8_skipped"] = int8_skipped
        if log:
            log(int8_skipped)
    if notochord:
        result["notochord"] = notochord_row(min(events, 500))
    if gan_path != "none":
        result["gan"] = gan_row(gan_path)
    return result


def cmd_bench(args) -> int:
    if args.device == "all":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        print("error: no CUDA device", file=sys.stderr)
        return 2
    if args.long and args.long < 100:
        print(f"error: --long {args.long}: the session must reach event 100 (--long 100 or more, or 0: none)",
              file=sys.stderr)
        return 2
    res = run(args.checkpoint, args.events, args.long, devices, args.int8, args.notochord,
              log=None if args.json else (lambda m: print(m, file=sys.stderr)), gan_path=args.gan)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{'kind':5s} {'size':>7s} {'device':6s} {'variant':10s} {'p50 us':>8s} {'p99 us':>8s}")
    for r in res["rows"]:
        print(f"{r['kind']:5s} {r['layers']}x{r['hidden']:<5d} {r['device']:6s} {r.get('variant', ''):10s} "
              f"{r['event_p50_us']:8.1f} {r['event_p99_us']:8.1f}{'  (default)' if r.get('default') else ''}")
        if "event_100_us" in r:
            last = [k for k in r if k.startswith("event_") and k.endswith("_us") and k[6:-3].isdigit() and k != "event_100_us"]
            print(f"      session: event 100 {r['event_100_us']} us, event {last[0][6:-3]} {r[last[0]]} us")
    if res.get("notochord"):
        n = res["notochord"]
        print(f"notochord feed+query: p50 {n['event_p50_us']} us, p99 {n['event_p99_us']} us")
    if res.get("gan"):
        g = res["gan"]
        print(f"gan, one answer bar: p50 {g['bar_p50_us']} us, p99 {g['bar_p99_us']} us")
    return 0
