"""``midi-bridge run``: open the ports, start the engine thread, stop cleanly on a signal.

Start-up order: resolve the backend, construct the first generator (so a broken plugin
or checkpoint fails before any port appears), open the ports, freeze the garbage
collector's view of start-up objects, start the engine thread, and log ``ready:``.  On
SIGINT/SIGTERM the engine ends every sounding note (note-offs, CC64=0, CC123 on each
channel used), drains the output and the ports are closed.
"""

from __future__ import annotations

import gc
import logging
import queue
import signal
import sys
import time
from typing import Any

from . import ports as ports_mod
from .engine import Engine
from .host import GeneratorHost
from .loop import EngineThread
from .plugin import PluginError

log = logging.getLogger(__name__)


def start_engine(cfg: dict[str, Any], inbox: "queue.SimpleQueue[tuple]",
                 host: GeneratorHost) -> Engine:
    """An engine with its first generator (raises PluginError for a bad one)."""
    engine = Engine(cfg, send=lambda msg: None, host=host, now_ns=time.perf_counter_ns())
    if cfg["engine"]["mode"] != "thru":
        name = cfg["engine"]["generator"]
        engine.set_generator(name, host.get(name))
    return engine


def run(cfg: dict[str, Any]) -> int:
    pc = cfg["ports"]
    backend = ports_mod.choose(pc["backend"])
    inbox: queue.SimpleQueue[tuple] = queue.SimpleQueue()
    host = GeneratorHost(cfg["generators"], cfg["control"]["order"], post=inbox.put)
    try:
        engine = start_engine(cfg, inbox, host)
    except PluginError:
        host.close()
        raise
    try:
        p = ports_mod.open_ports(backend, pc["client_name"], pc["in_name"], pc["out_name"],
                                 pc["extra_inputs"], pc["extra_outputs"], inbox.put)
    except ports_mod.BackendError:
        host.close()
        raise
    engine._send = p.send
    thread = EngineThread(engine, inbox, drain_s=cfg["output"]["drain_ms"] / 1000,
                          realtime=cfg["engine"]["realtime"])

    def on_signal(signum, _frame):
        log.info("%s: ending all notes and stopping", signal.Signals(signum).name)
        thread.stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        gc.collect()
        gc.freeze()  # start-up objects leave the collector's generations: shorter pauses
        # The input callbacks need the GIL to stamp arrival times; while the engine thread
        # computes (a model step) they would wait up to the default 5 ms switch interval.
        sys.setswitchinterval(0.0002)
        thread.start()
        log.info("ready: in=%r out=%r backend=%s generator=%s mode=%s", ", ".join(p.in_names),
                 ", ".join(p.out_names), backend, engine.gen_name or "-", engine.mode)
        while thread.is_alive():
            thread.join(0.5)  # wakes for signals; the engine itself never polls
    finally:
        if thread.is_alive():
            thread.stop()
            thread.join(5)
        p.close()
        host.close()
        for s, h in previous.items():
            signal.signal(s, h)
    stats = {k: v for k, v in engine.stats.items() if v}
    stats["sent"] = engine.sched.sent
    log.info("stopped: %s", ", ".join(f"{k} {v}" for k, v in stats.items()))
    if p.callback_errors or thread.crashes:
        log.warning("input callback errors: %d, engine errors: %d", p.callback_errors, thread.crashes)
    return 0
