"""The ``bench`` command line: ``register_group(subparsers)`` adds ``bench model``, ``bench
live``, ``bench witness`` and ``bench ardour`` to ``midi-bridge``.

Stand-alone (until ``midi-bridge bench`` dispatches here): ``python -m midi_bridge.bench.cli
live [--json] ...`` or ``python -m midi_bridge.bench.live [--json] ...`` (``live`` optional).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from typing import Any

from .live import ROWS, SERVER_NAME, Options


def _offset(v: str):
    if v == "auto":
        return v
    try:
        return float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'auto' or a number of ms, not {v!r}") from None


def _rows(text: str) -> tuple[str, ...]:
    rows = tuple(r.strip() for r in text.split(",") if r.strip())
    bad = [r for r in rows if r not in ROWS]
    if bad or not rows:
        raise argparse.ArgumentTypeError(f"rows are a comma-separated subset of {','.join(ROWS)}")
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--period", type=int, default=256, metavar="N",
                   help="JACK period in frames of the benchmark's own server (default 256)")
    p.add_argument("--rate", type=int, default=48000, metavar="HZ", help="sample rate (default 48000)")
    p.add_argument("--server", metavar="NAME",
                   help=f"use this running JACK server instead of starting '{SERVER_NAME}'")
    p.add_argument("--notes", type=int, default=200, metavar="N",
                   help="round trips per floor/thru/accompany row (default 200)")
    p.add_argument("--phrases", type=int, default=40, metavar="N",
                   help="phrases for the continue and grid rows (default 40)")
    p.add_argument("--load-seconds", type=float, default=30.0, metavar="S",
                   help="length of the sustained-load row (default 30)")
    p.add_argument("--load-rate", type=float, default=200.0, metavar="N",
                   help="notes per second in the load row, each a note-on and a note-off (default 200)")
    p.add_argument("--generator", default="rnn", metavar="NAME",
                   help="generator for the continue and grid rows (default rnn, the shipped model)")
    p.add_argument("--accompany-generator", default="rnn", metavar="NAME",
                   help="generator for the accompany row (default rnn, the shipped harmonizer)")
    p.add_argument("--silence-ms", type=float, default=200.0, metavar="MS",
                   help="phrase-end silence of the continue and grid rows (default 200)")
    p.add_argument("--bpm", type=float, default=120.0, help="tempo of the driver's clock (grid row)")
    p.add_argument("--offset-ms", type=_offset, default="auto", metavar="MS",
                   help="the bridge's output.offset_ms (latency compensation) in the grid row: "
                        "a number, or auto (default: one JACK period early)")
    p.add_argument("--rows", type=_rows, default=ROWS, metavar="LIST",
                   help=f"only these rows (default all: {','.join(ROWS)})")
    p.add_argument("--stop-trials", type=int, default=5, metavar="N",
                   help="bridges stopped with SIGTERM while notes sound, in the stop row (default 5)")
    p.add_argument("--seed", type=int, default=1, help="seed of the driver's random pauses")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")


def register_group(subparsers) -> None:
    """Add ``bench`` (``model``, ``live``, ``witness``) to the ``midi-bridge`` subparsers."""
    p = subparsers.add_parser("bench", help="benchmarks (not timed tests)")
    sub = p.add_subparsers(dest="bench_command", required=True)
    b = sub.add_parser("model", help="per-event cost of LSTM/GRU steps: p50/p99, event 100 vs 100,000")
    b.add_argument("--json", action="store_true")
    b.add_argument("--checkpoint", help="the shipped model (default: the melody default)")
    b.add_argument("--events", type=int, default=2000, help="events per row for p50/p99")
    b.add_argument("--long", type=int, default=100_000, help="session length for the event-100 vs N figure")
    b.add_argument("--device", default="all", help="cpu, cuda, or all available")
    b.add_argument("--int8", action="store_true", help="also rows with int8 weights")
    b.add_argument("--notochord", action="store_true", help="also time notochord's feed+query if installed")
    b.add_argument("--gan", help="the GAN checkpoint whose answer bar is timed (default: the shipped gan.pt; "
                                 "'none': skip)")
    b.set_defaults(func=cmd_model)
    register(sub)
    from . import ardour
    ardour.register(sub)


def cmd_model(args: argparse.Namespace) -> int:
    """``bench model`` (the model library is imported only when it runs)."""
    from midi_bridge.model.checkpoint import CheckpointError

    from . import model
    try:
        return int(model.cmd_bench(args) or 0)
    except (FileNotFoundError, ValueError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def register(bench_subparsers) -> None:
    """Add ``live`` and ``witness`` to the ``bench`` command's subparsers."""
    p = bench_subparsers.add_parser("live", help="end-to-end latency through JACK: floor, thru, "
                                                 "accompany, continue, grid, load, stop")
    add_arguments(p)
    p.set_defaults(func=cmd_live)
    w = bench_subparsers.add_parser("witness", help="answers against the DAW's grid, recorded by "
                                                    "jack_midi_dump -a (frame-accurate, from outside)")
    w.add_argument("--json", action="store_true", help="print one JSON object")
    w.add_argument("--periods", type=_ints, default=[256, 1024], metavar="LIST",
                   help="JACK periods in frames, one server each (default 256,1024)")
    w.add_argument("--jitter", type=_floats, default=[0.0, 5.0], metavar="LIST",
                   help="clock jitter in %% of a tick, as jack_midi_clock -J (default 0,5)")
    w.add_argument("--phrases", type=int, default=8, metavar="N", help="phrases per case (default 8)")
    w.add_argument("--bpm", type=float, default=100.0, help="the clock's tempo (default 100)")
    w.add_argument("--generator", default="markov", metavar="NAME", help="generator (default markov)")
    w.add_argument("--seed", type=int, default=1, help="seed of the clock's jitter")
    w.add_argument("--backends", type=_names, default=("jack",), metavar="LIST",
                   help="the bridge's JACK backends to measure, e.g. jack,jack-rtmidi (default jack; "
                        "the target applies to jack)")
    w.add_argument("--xruns", type=float, default=0.0, metavar="S",
                   help="also count xruns for S seconds with the server idle, then S seconds with the "
                        "bridge jamming, at the first period (default 0: skip; the target is 600)")
    w.add_argument("--no-realtime", dest="realtime", action="store_false",
                   help="run jackd non-realtime (default: realtime where permitted, as a musician's JACK)")
    w.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    w.set_defaults(func=cmd_witness)
    lt = bench_subparsers.add_parser("latency", help="jackd2's jack_midi_latency_test through the bridge in "
                                                     "thru mode, against a bare echo in the same run")
    lt.add_argument("--json", action="store_true", help="print one JSON object")
    lt.add_argument("--period", type=int, default=256, help="JACK period in frames (default 256)")
    lt.add_argument("--rounds", type=int, default=3, metavar="N",
                    help="rounds; each runs the tester through every subject in turn (default 3)")
    lt.add_argument("--samples", type=int, default=1000, metavar="N",
                    help="messages the tester sends per round and subject (default 1000)")
    lt.add_argument("--backends", type=_names, default=("jack", "jack-rtmidi"), metavar="LIST",
                    help="the bridge's JACK backends to measure (default jack,jack-rtmidi; the target "
                         "applies to jack)")
    lt.add_argument("--no-realtime", dest="realtime", action="store_false",
                    help="run jackd non-realtime (default: realtime where permitted)")
    lt.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    lt.set_defaults(func=cmd_latency)


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of integers, not {text!r}") from None


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of numbers, not {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    if not names or any(n not in ("jack", "jack-rtmidi") for n in names):
        raise argparse.ArgumentTypeError(f"a comma-separated subset of jack,jack-rtmidi, not {text!r}")
    return names


def cmd_witness(args: argparse.Namespace) -> int:
    """Exit 0 when every case met 1 ms, 1 when one missed, 2 when JACK is unusable."""
    from . import jackd, witness

    def progress(text: str) -> None:
        if not args.quiet:
            print(f"bench witness: {text}", file=sys.stderr, flush=True)

    try:
        with sigterm_as_interrupt():
            result = witness.run(args.periods, args.jitter, phrases=args.phrases, bpm=args.bpm,
                                 generator=args.generator, seed=args.seed, progress=progress,
                                 backends=args.backends, xrun_seconds=args.xruns,
                                 realtime=args.realtime)
    except jackd.JackError as e:
        print(f"midi-bridge bench witness: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"answers against the clock's 1/16 grid (jack_midi_dump -a), {result['bpm']:g} bpm, "
              f"{result['generator']}:")
        print(f"{'backend':<12}{'period':>7}{'jitter':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
              f"{'mean ms':>9}{'n':>5}{'xruns':>7}")
        for r in result["rows"]:
            print(f"{r['backend']:<12}{r['period']:>7}{r['jitter_pct']:>7g}%{_ms(r['p50_ms']):>9}"
                  f"{_ms(r['p99_ms']):>9}{_ms(r['max_ms']):>9}{_ms(r['mean_ms']):>9}{r['n']:>5}"
                  f"{r['source_xruns']:>7}")
        x = result["xruns"]
        if x is not None:
            print(f"xruns at {x['period']} frames over {x['seconds']:g} s: idle {x['idle']}, "
                  f"jamming {x['jamming']} ({x['jamming_notes']} answer notes): "
                  f"{'met' if x['met'] else 'MISSED'} (no more than idle)")
        print(f"target: every answer within {result['target_ms']:g} ms: {'met' if result['met'] else 'MISSED'}")
    return 0 if result["met"] else 1


def cmd_latency(args: argparse.Namespace) -> int:
    """Exit 0 when the native backend met 1.05x of the echo with nothing lost, 1 when not,
    2 when JACK or the tester is unusable."""
    from . import jackd, latency

    if args.rounds < 1 or args.samples < 1:
        print("midi-bridge bench latency: --rounds and --samples must be at least 1", file=sys.stderr)
        return 2
    try:
        with sigterm_as_interrupt():
            result = latency.run(period=args.period, rounds=args.rounds, samples=args.samples,
                                 subjects=("echo", *(f"bridge {b}" for b in args.backends)),
                                 realtime=args.realtime,
                                 progress=(lambda t: None) if args.quiet else
                                 (lambda t: print(f"bench latency: {t}", file=sys.stderr, flush=True)))
    except (jackd.JackError, RuntimeError) as e:  # (RuntimeError: a subject never became ready)
        print(f"midi-bridge bench latency: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"jack_midi_latency_test, {result['period']} frames, {result['rounds']} rounds of "
              f"{result['samples']} messages:")
        print(f"{'subject':<20}{'avg ms':>9}{'low ms':>9}{'high ms':>9}{'lost':>6}{'unexp':>7}{'x echo':>8}")
        for name, r in result["subjects"].items():
            ratio = r.get("ratio_to_echo")
            print(f"{name:<20}{_ms(r['average_ms']):>9}{_ms(r['lowest_ms']):>9}{_ms(r['highest_ms']):>9}"
                  f"{r['lost']:>6}{r['unexpected']:>7}{'' if ratio is None else f'{ratio:.3f}':>8}")
        print(f"target: the bridge (jack) within {result['target_ratio']}x of the echo, nothing lost: "
              f"{'met' if result['met'] else 'MISSED'}")
    return 0 if result["met"] else 1


def options(args: argparse.Namespace) -> Options:
    def progress(text: str) -> None:
        if not args.quiet:
            print(f"bench: {text}", file=sys.stderr, flush=True)

    for name in ("notes", "phrases", "period", "rate"):
        if getattr(args, name) < 1:
            raise SystemExit(f"midi-bridge bench live: --{name} must be at least 1")
    return Options(period=args.period, rate=args.rate, notes=args.notes, phrases=args.phrases,
                   load_seconds=args.load_seconds, load_rate=args.load_rate,
                   generator=args.generator, accompany_generator=args.accompany_generator,
                   silence_ms=args.silence_ms, bpm=args.bpm, offset_ms=args.offset_ms, server=args.server,
                   rows=args.rows, seed=args.seed, stop_trials=args.stop_trials, progress=progress)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt in the main thread, so every cleanup runs."""
    def handler(_signum, _frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_live(args: argparse.Namespace) -> int:
    """Run the benchmark; exit 0, 1 when a row failed, 2 when JACK is unusable."""
    from . import jackd
    from .live import LiveBench

    opts = options(args)
    try:
        with sigterm_as_interrupt():
            result = LiveBench(opts).run()
    except jackd.JackError as e:
        print(f"midi-bridge bench live: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("midi-bridge bench live: interrupted (everything was stopped)", file=sys.stderr)
        return 130
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 1 if any("error" in (result.get(r) or {}) for r in ROWS) else 0


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}"


def format_table(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [f"midi-bridge bench live: {m['cpu']}, {m['cores']} cores, Python {m['python']}, "
             f"JACK dummy {m['jack_period']} frames at {m['jack_rate']} Hz "
             f"({_ms(m['jack_period_ms'])} ms period)", "",
             f"{'row':<11}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'n':>6}{'x floor p50':>13}  note"]
    notes = {"floor": "bare python-rtmidi echo, round trip",
             "thru": "midi-bridge run --mode thru, round trip",
             "accompany": "note-on -> first accompaniment note",
             "continue": "phrase end -> first answer note (no clock)",
             "grid": "|answer note - nearest 1/16 of the clock|",
             "stop": "SIGTERM -> last note-off of the sounding accompaniment"}
    for row in ("floor", "thru", "accompany", "continue", "grid", "stop"):
        d = r.get(row)
        if d is None:
            continue
        if "error" in d:
            lines.append(f"{row:<11}ERROR: {d['error'].splitlines()[0]}")
            continue
        ratio = d.get("ratio_p50") if row != "floor" else None
        extra = notes[row]
        if row == "grid":
            extra += (f"; mean {_ms(d['mean_ms'])} ms, {d['within_limit']}/{d['n']} within "
                      f"{_ms(d['limit_ms'])} ms; tempo {d['bpm_estimate']} bpm for {d['bpm']}")
        if d.get("lost"):
            extra += f"; {d['lost']} unanswered"
        if d.get("stuck"):
            extra += f"; {d['stuck']} of {d['trials']} left notes sounding"
        lines.append(f"{row:<11}{_ms(d['p50_ms']):>9}{_ms(d['p99_ms']):>9}{_ms(d['max_ms']):>9}"
                     f"{d['n']:>6}{'' if ratio is None else f'{ratio:.2f}x':>13}  {extra}")
    load = r.get("load")
    if load is not None:
        if "error" in load:
            lines.append(f"load       ERROR: {load['error'].splitlines()[0]}")
        else:
            lines += ["", f"load: {load['notes_per_s']:g} notes/s for {load['seconds']:g} s through thru: "
                          f"sent {load['sent']}, the bridge got {load['bridge_events_in']}, "
                          f"the driver got back {load['received']}: lost_input {load['lost_input']}, "
                          f"dropped_output {load['dropped_output']} (latency p50 {_ms(load['p50_ms'])} "
                          f"p99 {_ms(load['p99_ms'])} max {_ms(load['max_ms'])} ms)"]
    lines += ["", "targets (issues 4 and 5):"]
    for t in r.get("targets", {}).values():
        state = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        lost = f"; {t['lost']} unanswered" if t.get("lost") else ""
        lines.append(f"  [{state:>6}] {t['target']}: {t['value']} (limit {t['limit']}){lost}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="midi-bridge bench")
    sub = parser.add_subparsers(dest="bench_command", required=True)
    register(sub)
    if not argv or argv[0] != "live":
        argv.insert(0, "live")
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
