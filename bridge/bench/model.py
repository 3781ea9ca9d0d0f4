"""``bench model``: the cost of one *event* -- fold one played note into the state and
sample one note of answer (Notochord's ``feed`` + ``query``) -- for LSTM and GRU at the
shipped size and two larger ones, on the CPU (one thread) and on CUDA when present.

Rows: ``kind hidden layers device event_p50_us event_p99_us params`` (+ ``default: true``
on the shipped model's row, which uses its real weights; the others use random weights),
and where the event's time goes, from a separate profiling pass that times the parts one
by one (:data:`PARTS`): ``net_us`` (input rows + recurrent cells), ``heads_us`` (the field
heads and the copy gate), ``sample_us`` (softmax, in-piece mixture, top-p, the draw and
the Python around them) and ``cache_us`` (the in-piece statistics), medians per event.
The shipped row also runs one session of ``--long`` events and reports the median cost of
the 500 events from event 100 on and of the last 500 (``event_100_us``,
``event_100000_us``), and the process's resident memory at event 100 and at the end; then
the session's stepper and a new one at event 100 take turns, an event each
(``interleaved_event_100_us``, ``interleaved_event_100000_us``, ``growth``: their ratio,
the session's growth without the machine's drift over the minute the session took).
``gan`` (when a GAN checkpoint is found, ``--gan``, default the shipped ``gan.pt``): the
cost of one answer *bar* of the conditional GAN on one CPU thread, sampled as the ``gan``
plugin does when the engine pulls past the previous bar (``bar_p50_us``, ``bar_p99_us``).
A benchmark, not a timed test.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from midi_bridge.model.encoding import NOTE_SPEC
from midi_bridge.model.rnn import EventRNN, ModelConfig

from .events import PLAYED, long_session, profile_parts, time_events

LARGER = ((768, 2), (1024, 2))
def _stepper(model, device: str, int8: bool = False, graphs: bool = True):
    if device == "cuda":
        from midi_bridge.model.cuda_graph import GraphedStepper

        return GraphedStepper(model.to("cuda"), "cuda", seed=0, graphs=graphs)
    from midi_bridge.model.step import Stepper

    return Stepper(model, "cpu", int8=int8, seed=0)


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
        from midi_bridge.model.paths import resolve_model_path

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


def harmonizer_row(path, n: int, warm: int = 50) -> dict | None:
    """The chorale harmonizer's event as the ``rnn`` plugin's accompaniment runs it: sample
    the voices under a played melody note (``given`` = its dt and pitch), then feed the row."""
    from pathlib import Path

    from midi_bridge.model import checkpoint
    from midi_bridge.model.step import Stepper

    path = Path(path)
    if not path.exists():
        return None
    model, _meta, _ = checkpoint.load(path)
    st = Stepper(model, "cpu", seed=0)
    st.reset(0)
    out = np.empty(n)
    clock = time.perf_counter
    for i in range(-warm, n):
        dt, pitch = PLAYED[i % len(PLAYED)][:2]
        t0 = clock()
        st.feed(st.sample(0.9, 0.95, given=(dt, pitch)))
        if i >= 0:
            out[i] = clock() - t0
    us = out * 1e6
    row = {"checkpoint": str(path), "kind": model.cfg.kind, "hidden": model.cfg.hidden, "layers": model.cfg.layers,
           "device": "cpu", "params": model.n_params(),
           "event_p50_us": round(float(np.percentile(us, 50)), 1),
           "event_p99_us": round(float(np.percentile(us, 99)), 1)}
    return row


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
    # As the daemon does at start-up (commands/live.py): the start-up objects (torch's, the
    # modules') leave the cyclic collector's generations, so a full collection in a long
    # session does not walk them (measured: one such pause of ~130 ms in 20,000 events).
    gc.collect()
    gc.freeze()
    try:
        return _run(checkpoint_path, events, long, devices, int8, notochord, log, gan_path)
    finally:
        gc.unfreeze()


def _run(checkpoint_path, events, long, devices, int8, notochord, log, gan_path) -> dict:
    from midi_bridge.model import checkpoint

    torch.set_num_threads(1)
    if checkpoint_path is None:
        from midi_bridge.model.paths import resolve_model_path

        checkpoint_path = resolve_model_path("melody.pt")
    default_model, meta, _ = checkpoint.load(checkpoint_path)
    dcfg = default_model.cfg
    sizes = [(dcfg.hidden, dcfg.layers)] + [s for s in LARGER if s != (dcfg.hidden, dcfg.layers)]
    from midi_bridge.model import step

    rows = []
    int8_skipped = None
    int8_float = []
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
                    if q and not getattr(st, "int8", True):
                        if "fbgemm" not in torch.backends.quantized.supported_engines or \
                                step._prepack_int8(torch.ones(1, 1), None) is None:
                            # no fbgemm (Apple Silicon, Linux on ARM): the step stayed float32
                            int8_skipped = "no fbgemm engine in this torch: the step stays float32, no int8 rows"
                        else:  # no matrix big enough for int8 to pay: the same step as float32
                            int8_float.append(f"{kind} {layers}x{hidden}")
                        continue
                    extra = {"default": True} if default and not label else {}
                    if label:
                        extra["variant"] = label
                    if device == "cuda":
                        extra["variant"] = label or "cuda-graph"
                    row = _row(kind, hidden, layers, device, time_events(st, events), **extra)
                    row["params"] = model.n_params()
                    row.update(profile_parts(st, min(events, 1000)))
                    if default and not label and long:
                        row.update(long_session(st, long, make=lambda: _stepper(
                            model, device, int8=q, graphs=graphs)))
                    rows.append(row)
                    if log:
                        log(json.dumps(row))
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                          "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
              "checkpoint": str(checkpoint_path), "rows": rows}
    if int8_float:
        result["int8_float32_sizes"] = int8_float
        if log:
            log(f"int8: no int8 row for {', '.join(int8_float)}: no matrix there has "
                f"{step.INT8_MIN_SIZE:,} weights, below which float32 is faster (the int8 step is float32)")
    if int8_skipped:
        result["int8_skipped"] = int8_skipped
        if log:
            log(int8_skipped)
    if "cpu" in devices:
        from pathlib import Path

        harm = harmonizer_row(Path(checkpoint_path).with_name("chorale-harmonizer.pt"), events)
        if harm:
            result["harmonizer"] = harm
            if log:
                log(json.dumps({"harmonizer": harm}))
    if notochord:
        result["notochord"] = notochord_row(min(events, 500))
        dflt = [r for r in rows if r.get("default") and r["device"] == "cpu"]
        if result["notochord"] and dflt:  # the shipped model's event / Notochord's, this run
            result["default_vs_notochord_p50"] = round(dflt[0]["event_p50_us"] / result["notochord"]["event_p50_us"], 4)
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
        if "net_us" in r:
            print(f"      parts (p50 us): net {r['net_us']}, heads {r['heads_us']}, sample {r['sample_us']}, "
                  f"in-piece statistics {r['cache_us']}")
        if "event_100_us" in r:
            last = [k for k in r if k.startswith("event_") and k.endswith("_us") and k[6:-3].isdigit() and k != "event_100_us"]
            print(f"      session: event 100 {r['event_100_us']} us, event {last[0][6:-3]} {r[last[0]]} us")
            if r.get("growth") is not None:
                print(f"      interleaved (drift out): event 100 {r['interleaved_event_100_us']} us, "
                      f"event {last[0][6:-3]} {r[f'interleaved_event_{last[0][6:-3]}_us']} us: "
                      f"{r['growth']}x")
    if res.get("harmonizer"):
        h = res["harmonizer"]
        print(f"harmonizer ({h['kind']} {h['layers']}x{h['hidden']}), sample voices + feed: "
              f"p50 {h['event_p50_us']} us, p99 {h['event_p99_us']} us")
    if res.get("notochord"):
        n = res["notochord"]
        print(f"notochord feed+query: p50 {n['event_p50_us']} us, p99 {n['event_p99_us']} us")
    if res.get("gan"):
        g = res["gan"]
        print(f"gan, one answer bar: p50 {g['bar_p50_us']} us, p99 {g['bar_p99_us']} us")
    return 0
