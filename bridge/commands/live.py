"""``midi-bridge run``: open the ports, start the engine thread, stop cleanly on a signal.

Start-up order: resolve the backend, construct the first generator (so a broken plugin
or checkpoint fails before any port appears), open the ports, freeze the garbage
collector's view of start-up objects, start the engine thread, and log ``ready:``.  On
SIGINT/SIGTERM/SIGHUP the engine ends every sounding note (note-offs, CC64=0, CC123 on each
channel used), drains the output and the ports are closed.
"""

from __future__ import annotations

import faulthandler
import gc
import logging
import queue
import signal
import sys
import time
from typing import Any, Callable

from midi_bridge.runtime import ports as ports_mod
from midi_bridge.stage import tui
from midi_bridge.core.engine import Engine
from midi_bridge.runtime.host import GeneratorHost
from midi_bridge.runtime.loop import EngineThread
from midi_bridge.plugin import PluginError
from midi_bridge.stage.ratings import RatingsWriter
from midi_bridge.stage.record import Recorder
from midi_bridge.runtime.watchdog import Watchdog
from midi_bridge.runtime.supervise import PortSupervisor
from midi_bridge.stage.stats import LatencyWindow

log = logging.getLogger(__name__)


def start_engine(cfg: dict[str, Any], inbox: queue.SimpleQueue,
                 host: GeneratorHost) -> Engine:
    """An engine with its first generator (raises PluginError for a bad one)."""
    engine = Engine(cfg, send=lambda msg: None, host=host, now_ns=time.perf_counter_ns())
    if cfg["engine"]["mode"] != "thru":
        name = cfg["engine"]["generator"]
        engine.set_generator(name, host.get(name))
    return engine


def latency_offset_ms(cfg: dict[str, Any], backend: str) -> float:
    """``output.offset_ms``, with ``auto`` resolved.

    On the native JACK backend input is stamped with its frame and output written at its
    due frame, so the graph itself says what to compensate (:func:`graph_offset_ms`, after
    the ports are open): this returns 0 for it.  On python-rtmidi's JACK (``jack-rtmidi``)
    incoming clock is stamped a period late and every note leaves at the next period's
    start: answer notes go one period early.  0 on the other backends."""
    value = cfg["output"]["offset_ms"]
    if value != "auto":
        return float(value)
    if backend != "jack-rtmidi":
        return 0.0
    from midi_bridge.runtime.jack import period_ms
    period = period_ms()
    if period is None:
        log.info("latency compensation: off (the JACK period is unknown; set output.offset_ms)")
        return 0.0
    log.info("latency compensation: answer notes %.2f ms early (one JACK period; output.offset_ms)", period)
    return -period


#: How far ahead of its due time the native JACK backend is handed a message: one period
#: (the process cycle that writes it starts up to a period before its frame) plus this.
LEAD_MARGIN_NS = 2_000_000


def graph_offset_ms(cfg: dict[str, Any], ports: Any) -> float:
    """``auto`` on the native JACK backend: answer notes early by the graph's latency around
    our ports (JACK's capture latency into our inputs, playback latency out of our outputs;
    0 between programs on one JACK server), so they sound on the beat the clock marked."""
    if cfg["output"]["offset_ms"] != "auto":
        return float(cfg["output"]["offset_ms"])
    capture, playback = ports.latency_ns()
    total = (capture + playback) / 1e6
    log.info("latency compensation: answer notes %.2f ms early (JACK graph: capture %.2f ms, "
             "playback %.2f ms; output.offset_ms)", total, capture / 1e6, playback / 1e6)
    return -total


#: Seconds past its budget a generator call may stay blocked (in C code: time.sleep, I/O,
#: a lock; the watchdog cannot cut those) before the watchdog ends every sounding note.
STALL_S = 1.0
#: On stop, how long beyond that (and the drain) the engine thread may take to end.
STOP_GRACE_S = 3.0


def end_stalled_notes(engine: Engine, send: Callable[[tuple[int, ...]], None]) -> None:
    """Called on the watchdog thread while the engine thread is stuck in a plugin call:
    note-offs for everything sounding, CC64=0 and CC123 per channel, paced."""
    msgs = engine.sched.emergency()
    log.error("generator '%s' has been stuck for over %.1f s past its budget (blocked in native "
              "code: a sleep, I/O or a lock?): ending all %d sounding notes; fix the plugin",
              engine.gen_name, STALL_S, len(msgs))
    for i, msg in enumerate(msgs):
        if i and i % 32 == 0:
            time.sleep(0.005)  # (JACK drops bursts larger than a period's buffer)
        try:
            send(msg)
        except Exception as e:  # noqa: BLE001 - a port gone: nothing more to do
            log.error("could not send %s: %s", bytes(msg).hex(), e)
            return


def run(cfg: dict[str, Any]) -> int:
    try:
        faulthandler.enable()  # a crash in native code prints every thread's stack
    except (ValueError, OSError, AttributeError):  # stderr is not a real file (embedded, tests)
        pass
    pc = cfg["ports"]
    backend = ports_mod.choose(pc["backend"])
    inbox: queue.SimpleQueue = queue.SimpleQueue()  # of midi_bridge.core.messages items
    host = GeneratorHost(cfg["generators"], cfg["control"]["order"], post=inbox.put)
    try:
        engine = start_engine(cfg, inbox, host)
    except PluginError:
        host.close()
        raise
    recorder = None
    if cfg["record"]["dir"]:
        try:
            recorder = Recorder(cfg["record"]["dir"], bpm=cfg["engine"]["bpm"])  # RecordError: exit 2
        except Exception:
            host.close()
            raise
        engine.attach_recorder(recorder)
    ratings = RatingsWriter(cfg["record"]["ratings"])
    engine.on_rating = ratings.add
    # (asked before our ports open: no other JACK client may open in this process later)
    engine.player.offset_ns = round(latency_offset_ms(cfg, backend) * 1e6)
    try:
        p = ports_mod.open_ports(backend, pc["client_name"], pc["in_name"], pc["out_name"],
                                 pc["extra_inputs"], pc["extra_outputs"], inbox.put,
                                 wait_for_missing=True)
    except ports_mod.BackendError:
        if recorder is not None:
            recorder.close()
        ratings.close()
        host.close()
        raise
    engine.out = p.send
    if hasattr(p, "send_at"):  # native JACK: messages placed at their frame, handed over early
        engine.out_at = p.send_at
        engine.sched.lead_ns = p.period_ns() + LEAD_MARGIN_NS
        engine.player.offset_ns = round(graph_offset_ms(cfg, p) * 1e6)
    # Re-opens extra ports that come back and survives a JACK restart (bridge/runtime/supervise.py).
    supervisor = PortSupervisor(p, post=inbox.put)
    # Generator calls past engine.plugin_budget_ms are cut short (bridge/core/faults.py).
    # A call blocked in native code cannot be cut: after STALL_S the watchdog ends every
    # sounding note itself (the engine thread, stuck, would send no note-off).
    watchdog = Watchdog(stall_after_s=STALL_S, on_stall=lambda: end_stalled_notes(engine, p.send))
    engine.guard_calls.watchdog = watchdog
    # A stop waits for the engine thread at most this long: past a plugin call's budget and
    # the watchdog's stall (after which every note is ended), the flush and the drain.
    stop_timeout_s = (cfg["engine"]["plugin_budget_ms"] / 1000 + STALL_S
                      + cfg["output"]["drain_ms"] / 1000 + STOP_GRACE_S)
    thread = EngineThread(engine, inbox, drain_s=cfg["output"]["drain_ms"] / 1000,
                          realtime=cfg["engine"]["realtime"], stop_timeout_s=stop_timeout_s)
    window_s = cfg["status"]["window_s"]
    # The engine samples played note-on -> output latency into it, for the status screen.
    engine.latency, engine.wall_ns = LatencyWindow(window_s), time.perf_counter_ns

    def on_signal(signum, _frame):
        log.info("%s: ending all notes and stopping", signal.Signals(signum).name)
        thread.stop()

    # SIGHUP: the terminal the bridge runs in was closed (the default would end the process
    # with notes still sounding).
    stops = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {s: signal.signal(s, on_signal) for s in stops}
    try:
        gc.collect()
        gc.freeze()  # start-up objects leave the collector's generations: shorter pauses
        # The input callbacks need the GIL to stamp arrival times; while the engine thread
        # computes (a model step) they would wait up to the default 5 ms switch interval.
        sys.setswitchinterval(0.0002)
        thread.start()
        supervisor.start()
        log.info("ready: in=%r out=%r backend=%s generator=%s mode=%s", ", ".join(p.in_names),
                 ", ".join(p.out_names), backend, engine.gen_name or "-", engine.mode)
        # The status screen (status.tui) runs here until the engine thread ends or 'q'.
        if not tui.run_if_wanted(cfg["status"]["tui"], engine, p, thread, engine.latency, window_s):
            while thread.is_alive():
                thread.join(0.5)  # wakes for signals; the engine itself never polls
    finally:
        if thread.is_alive():
            thread.stop()
            thread.join(5)
        stuck = thread.abandoned or thread.is_alive()
        if stuck:
            log.error("the engine thread did not stop within %.1f s: generator '%s' is stuck in "
                      "a call (blocked in native code: a sleep, I/O or a lock?); the watchdog "
                      "ended its notes; exiting without it (fix the plugin)",
                      stop_timeout_s, engine.gen_name)
        if recorder is not None:
            recorder.close()  # (after the engine's last note-offs)
        ratings.close()
        supervisor.stop()
        p.close()
        watchdog.close()
        if not stuck:  # (a generator is only ever called from one thread: not its close())
            host.close()
        for s, h in previous.items():
            signal.signal(s, h)
    stats = {k: v for k, v in engine.stats.items() if v}
    stats["sent"] = engine.sched.sent
    if p.dropped:
        stats["dropped_while_disconnected"] = p.dropped
    log.info("stopped: %s", ", ".join(f"{k} {v}" for k, v in stats.items()))
    if p.callback_errors or thread.crashes:
        log.warning("input callback errors: %d, engine errors: %d", p.callback_errors, thread.crashes)
    return 1 if stuck else 0
