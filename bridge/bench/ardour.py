"""``midi-bridge bench ardour``: the bridge's answers recorded in a real DAW, on its grid.

Ardour's headless Lua session tool (``ardour7-lua``, Debian package ``ardour``) runs
``ardour.lua`` (next to this module) on a private JACK server (dummy driver, realtime
where permitted), one server per JACK period, with a ``midi-bridge run`` in continue mode:

1. ``ardour.lua create`` makes a session with two MIDI tracks, ``player`` and ``answers``,
   at the tempo asked for; both are then set to capture-time alignment in the session
   file (``alignment-choice="UseCaptureTime"``: Lua has no binding for it).
2. ``ardour.lua run`` loads it, cuts every connection Ardour made (its audio ports too, so
   latency compensation has nothing to shift), records a scratch note from Ardour's own
   virtual keyboard port to get a MIDI region on ``player`` and rewrites that region into
   the player's phrases (on the beat grid: the "MIDI file" the DAW plays), connects
   ``player`` and Ardour's ``MIDI Clock out`` to the bridge's input and the bridge's output
   to ``answers``, record-arms ``answers``, rolls from 0 with ``send-midi-clock`` on, stops,
   and prints every recorded note's timeline position (beats:ticks, 1920 ticks a beat).

An answer note-on's error is its position in Ardour's take minus the nearest 1/16 of
Ardour's own grid at the session tempo, in ms.  jackd2's ``jack_midi_dump -a`` records
Ardour's clock and the bridge's output meanwhile (as ``bench witness`` does): a take is
faithful when every answer keeps one distance to its frame there (0, or one period when
the JACK graph hands the answers to Ardour a cycle late: see ``agreement``); xruns move
Ardour's timeline against the frames, and a take that is not faithful is taken again.  Ardour 7.3 with
jackd2 sometimes loses its JACK connection while a session loads (a libjack race): each
script runs with ``-X`` (exit when the engine halts) and is retried on a fresh copy.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from midi_bridge.runtime import jack

from . import jackd
from .driver import Child, bridge_cmd, unique_name
from .report import percentile, summary
from .witness import _DUMP, jack_lsp, wait_ports
from .witness import grid_errors as frame_grid_errors

SERVER_NAME = "mb-ardour"
TICKS_PER_BEAT = 1920           # Temporal::ticks_per_beat: Ardour's MIDI resolution
OUT = 1                         # the bridge answers on MIDI channel 2 (index 1)
FAITHFUL_MS = 1.0               # take vs witness, per note: Ardour's resolution is 0.26 ms at 120 bpm
TRIES = 6                       # attempts per Ardour script (the libjack race)
LOCK = Path(tempfile.gettempdir()) / "mb-bench-ardour.lock"
LUA_TOOLS = ("ardour7-lua", "ardour8-lua", "ardour6-lua", "ardour-lua")
SCRIPT = Path(__file__).with_name("ardour.lua")
_NOTE = re.compile(r"^NOTE (\S+) (\d+) (\d+) (\d+) (-?\d+):(\d+)\s*$", re.M)


def lua_tool() -> str | None:
    """Ardour's headless Lua session tool, or None when Ardour is not installed."""
    return next((p for p in map(shutil.which, LUA_TOOLS) if p), None)


def grid_errors(ticks: list[int], bpm: float, ppqn: int = TICKS_PER_BEAT, division: int = 4) -> list[float]:
    """Signed ms from each position (in ticks of ``ppqn`` a beat) to the nearest 1/(4*division)."""
    step = ppqn / division                          # a 1/16 is a quarter of a beat
    ms_per_tick = 60_000.0 / bpm / ppqn
    return [(t - round(t / step) * step) * ms_per_tick for t in ticks]


def parse_notes(output: str) -> dict[str, list[tuple[int, int, int, int]]]:
    """``{track: [(channel, pitch, velocity, ticks), ...]}`` from the script's NOTE lines."""
    out: dict[str, list[tuple[int, int, int, int]]] = {}
    for track, ch, pitch, vel, beats, ticks in _NOTE.findall(output):
        position = int(beats) * TICKS_PER_BEAT + int(ticks)
        out.setdefault(track, []).append((int(ch), int(pitch), int(vel), position))
    for notes in out.values():
        notes.sort(key=lambda n: n[3])
    return out


def phrases_spec(phrases: int, notes: int = 4, step: float = 0.5) -> tuple[str, float]:
    """The player's phrases as ``ardour.lua run``'s spec, and the beat after the last answer's room."""
    parts, beat = [], 4.0                           # a bar of clock first
    for _ in range(phrases):
        for i in range(notes):
            parts.append(f"{beat + i * step:g},{60 + (2 * i) % 12},90,{step * 0.6:g}")
        beat = float(int(beat + notes * step) + 4)  # room for a 2-beat answer
    return ";".join(parts), beat


class ServerLost(RuntimeError):
    """The JACK server died under Ardour: the whole case starts again on a fresh one."""


def _ardour(tool: str, args: list[str], env: dict[str, str], marker: str, timeout: float,
            reset=lambda: None, alive=lambda: True, progress=lambda s: None) -> str:
    """Run ``ardour.lua MODE ...`` until its output has ``marker``; ``reset`` runs before each retry."""
    tail = ""
    for attempt in range(1, TRIES + 1):
        proc = subprocess.Popen([tool, "-X", str(SCRIPT), *args], stdin=subprocess.DEVNULL, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            out = proc.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            proc.terminate()  # SIGTERM first: a SIGKILLed client can take jackd down with it
            try:
                out = proc.communicate(timeout=10)[0]
            except subprocess.TimeoutExpired:
                proc.kill()
                out = proc.communicate()[0]
            out = f"(timeout after {timeout:.0f} s)\n{out}"
        except BaseException:  # Ctrl-C / SIGTERM: Ardour (its own session) goes before jackd
            proc.terminate()
            proc.wait(10)
            raise
        if marker in out:
            return out
        tail = "\n".join(line for line in out.splitlines() if "call-slot" not in line)[-1500:]
        progress(f"  {args[0]}: attempt {attempt} failed ({'halted' if 'HALTED' in out else 'no ' + marker})")
        if not alive():
            raise ServerLost(f"the JACK server died during ardour.lua {args[0]}:\n{tail}")
        reset()
    raise RuntimeError(f"ardour.lua {args[0]} failed {TRIES} times; last output:\n{tail}")


def run_case(tool: str, period: int, rate: int, phrases: int, bpm: float, generator: str, backend: str,
             workdir: Path, alive=lambda: True, progress=lambda s: None) -> dict[str, Any]:
    config = {"engine": {"output_channel": OUT + 1, "bpm": bpm}, "thru": {"enabled": False},
              "clock": {"follow": True}, "logging": {"level": "info"},
              "phrase": {"silence_ms": 250, "min_notes": 2},
              "continuation": {"max_notes": 8, "max_beats": 2.0, "start_on": "beat"}}
    case = workdir / f"p{period}"
    shutil.rmtree(case, ignore_errors=True)
    case.mkdir()
    (case / "bridge.yaml").write_text(yaml.safe_dump(config))
    env = jack.client_env(SERVER_NAME)
    ardour_env = {**env, "XDG_CONFIG_HOME": str(case / "config"), "XDG_CACHE_HOME": str(case / "cache")}
    name = "bench"
    session, pristine = case / "run" / name, case / "create" / name  # same basename: interchange/bench
    spec, end_beat = phrases_spec(phrases)
    seconds = end_beat * 60.0 / bpm + 1.0
    client = unique_name("mb-ard-bridge")
    with contextlib.ExitStack() as stack:
        bridge = Child(bridge_cmd(client, str(case / "bridge.yaml"), "--mode", "continue", "--generator",
                                  generator, "--quantize", "1/16", "--backend", backend),
                       env, "ready:", "bridge")
        stack.callback(bridge.stop)
        bridge.wait_ready()
        ports = wait_ports(lambda: jack_lsp(SERVER_NAME), ["midi-bridge in", "midi-bridge out"], client)
        dump = witness = None
        if shutil.which("jack_midi_dump"):
            witness = unique_name("mb-ard-dump")
            dump = subprocess.Popen(["jack_midi_dump", "-a", witness], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, env=env)
            stack.callback(lambda: dump.poll() is None and (dump.terminate(), dump.wait(10)))
            witness = wait_ports(lambda: jack_lsp(SERVER_NAME), [f"{witness}:input"], client)[f"{witness}:input"]
        _ardour(tool, ["create", str(pristine), name, str(rate), f"{bpm:g}", "mb-daw-create"],
                ardour_env, "CREATED", 120, lambda: shutil.rmtree(pristine, ignore_errors=True), alive,
                progress)
        state = pristine / f"{name}.ardour"
        xml, count = re.subn(r'alignment-choice="\w+"', 'alignment-choice="UseCaptureTime"',
                             state.read_text())
        if count < 2:
            raise RuntimeError(f"no alignment-choice on both tracks in {state}")
        state.write_text(xml)

        def fresh() -> None:
            shutil.rmtree(session, ignore_errors=True)
            shutil.copytree(pristine, session)
        fresh()
        out = _ardour(tool, ["run", str(session), name, "mb-daw", ports["midi-bridge in"],
                             ports["midi-bridge out"], spec, f"{seconds:.3f}", witness or "-"],
                      ardour_env, "DONE", seconds + 120, fresh, alive, progress)
        frames = []
        if dump is not None:
            dump.terminate()
            frames = [(int(f), bytes.fromhex(b)) for f, b in _DUMP.findall(dump.communicate(timeout=10)[0])]
            starts = [i for i, (_, m) in enumerate(frames) if m[:1] == b"\xfa"]
            frames = frames[starts[-1]:] if starts else []   # the last (successful) take only
    notes = parse_notes(out)
    answers = [n for n in notes.get("answers", []) if n[0] == OUT]
    errors = grid_errors([n[3] for n in answers], bpm)
    xruns = re.search(r"^XRUNS (\d+)", out, re.M)
    seen = frame_grid_errors(frames, rate, OUT) if frames else []
    row = {**summary([abs(e) for e in errors]),
           "mean_ms": round(sum(errors) / len(errors), 3) if errors else None,
           "period": period, "period_ms": round(period / rate * 1e3, 3), "phrases": phrases,
           "player_notes": len(notes.get("player", [])), "player_notes_sent": phrases * 4,
           "other_channel_notes": len(notes.get("answers", [])) - len(answers),
           "errors_ms": [round(e, 3) for e in errors],
           "witness": {**summary([abs(e) for e in seen]),  # the same notes, jack_midi_dump -a
                       "mean_ms": round(sum(seen) / len(seen), 3) if seen else None,
                       "errors_ms": [round(e, 3) for e in seen]} if dump is not None else None,
           "ardour_xruns": int(xruns.group(1)) if xruns else None,
           "take_vs_witness": agreement(errors, seen) if dump is not None else None}
    return {**row, "faithful": faithful(row)}


def faithful(row: dict[str, Any]) -> bool:
    """Answers recorded, Ardour's timeline in step with the frames (none to compare: no xruns).

    In step: every answer's take - witness within FAITHFUL_MS of their median.  The median
    itself may be a period (a feedback connection in the JACK graph: see ``agreement``).
    """
    if not row["n"]:
        return False
    if row["witness"] is not None:
        spread = row["take_vs_witness"]["spread_ms"]
        return spread is not None and spread <= FAITHFUL_MS
    return row["ardour_xruns"] == 0


def agreement(take: list[float], seen: list[float]) -> dict[str, float | None]:
    """Take - witness over the notes, paired in order: the median and the spread around it.

    The median is 0 when Ardour hears the bridge in the cycle it wrote; one period when
    the connection into Ardour is a feedback connection (a bridge with one JACK client for
    its input and output closes a loop Ardour -> bridge -> Ardour, and jackd2 hands that
    connection's data over a cycle later).  An xrun during the take moves Ardour's timeline
    against the frames: a spread.  None when the counts differ.
    """
    if not take or len(take) != len(seen):
        return {"median_ms": None, "spread_ms": None}
    diffs = sorted(a - b for a, b in zip(take, seen))
    median = percentile(diffs, 50)
    return {"median_ms": round(median, 3), "spread_ms": round(max(abs(d - median) for d in diffs), 3)}


@contextlib.contextmanager
def _exclusive(progress):
    """One run at a time per machine: they would share the server name (and the 2 cores)."""
    with open(LOCK, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another Ardour benchmark ({LOCK}) ...")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _case_on_fresh_server(tool: str, period: int, rate: int, phrases: int, bpm: float, generator: str,
                          backend: str, workdir: Path, realtime: bool, progress) -> dict[str, Any]:
    for attempt in range(1, 4):
        progress(f"period {period} ..." if attempt == 1 else f"period {period}, fresh server {attempt} ...")
        server = jackd.JackServer(SERVER_NAME, rate=rate, period=period, realtime=realtime)
        with server:
            if not server.owned:
                raise jackd.JackError(f"a JACK server named {SERVER_NAME!r} is already running; "
                                      "stop it first")
            try:
                return run_case(tool, period, rate, phrases, bpm, generator, backend, workdir,
                                lambda: server.running and jackd.responds(SERVER_NAME), progress)
            except ServerLost as e:
                lost = e
                progress(f"  {str(e).splitlines()[0]}")
    raise RuntimeError(f"period {period}: the JACK server died three times: {lost}")


def run(periods: list[int] = (256, 1024), phrases: int = 8, bpm: float = 120.0, generator: str = "markov",
        backend: str = "jack", rate: int = 48000, retakes: int = 2, realtime: bool = True, keep: bool = False,
        progress=lambda s: None) -> dict[str, Any]:
    """One row per period: the best of at most ``1 + retakes`` takes.

    Xruns move Ardour's timeline against the JACK frames (by up to the cycles lost): a take
    whose answers do not all keep one distance to their jack_midi_dump frames (``faithful``)
    is taken again.
    """
    tool = lua_tool()
    if tool is None:
        raise jackd.JackError(f"Ardour's Lua session tool ({'/'.join(LUA_TOOLS)}) is not installed "
                              "(Debian/Ubuntu: apt-get install ardour)")
    if not SCRIPT.is_file():
        raise jackd.JackError(f"{SCRIPT} is missing (package data of midi_bridge.bench)")
    version = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=30).stdout
    workdir = Path(tempfile.mkdtemp(prefix="mb-ardour-"))
    rows = []
    try:
        with _exclusive(progress):
            for period in periods:
                takes = []
                while not takes or (not takes[-1]["faithful"] and len(takes) <= retakes):
                    if takes:
                        progress(f"  take off the witness ({takes[-1]['ardour_xruns']} xruns): again")
                    takes.append(_case_on_fresh_server(tool, period, rate, phrases, bpm, generator,
                                                       backend, workdir, realtime, progress))
                best = min(takes, key=lambda r: (not r["faithful"], r["ardour_xruns"] or 0))
                rows.append({**best, "takes": len(takes)})
                progress(f"  {({k: v for k, v in rows[-1].items() if k not in ('errors_ms', 'witness')})}")
    finally:
        if keep:
            progress(f"sessions kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return {"ardour": version.strip().splitlines()[0] if version.strip() else tool, "bpm": bpm,
            "rate": rate, "generator": generator, "backend": backend, "grid": "1/16", "resolution_ms":
            round(60_000.0 / bpm / TICKS_PER_BEAT, 4), "alignment": "capture time", "realtime": realtime,
            "rows": rows}


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of integers, not {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--periods", type=_ints, default=[256, 1024], metavar="LIST",
                   help="JACK periods in frames, one server each (default 256,1024)")
    p.add_argument("--phrases", type=int, default=8, metavar="N", help="phrases per period (default 8)")
    p.add_argument("--bpm", type=float, default=120.0, help="the session's tempo (default 120)")
    p.add_argument("--generator", default="markov", metavar="NAME", help="generator (default markov)")
    p.add_argument("--backend", default="jack", choices=("jack", "jack-rtmidi"),
                   help="the bridge's MIDI backend (default jack: the native backend, exact frames)")
    p.add_argument("--retakes", type=int, default=2, metavar="N",
                   help="take again after a take off the witness (xruns), at most N times (default 2)")
    p.add_argument("--no-realtime", dest="realtime", action="store_false",
                   help="run jackd non-realtime (default: realtime where permitted, as a DAW user's "
                        "JACK is; on a loaded box a non-realtime take has xruns)")
    p.add_argument("--keep", action="store_true", help="keep the Ardour sessions (path on stderr)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")


def register(bench_subparsers) -> None:
    """Add ``ardour`` to the ``bench`` command's subparsers."""
    p = bench_subparsers.add_parser("ardour", help="answers recorded in Ardour (headless), against "
                                                   "Ardour's own 1/16 grid")
    add_arguments(p)
    p.set_defaults(func=cmd_ardour)


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}"


def cmd_ardour(args: argparse.Namespace) -> int:
    """Exit 0 with figures, 1 when a period got no answer, 2 when Ardour or JACK is unusable."""
    from .cli import sigterm_as_interrupt

    def progress(text: str) -> None:
        if not args.quiet:
            print(f"bench ardour: {text}", file=sys.stderr, flush=True)

    try:
        with sigterm_as_interrupt():
            result = run(args.periods, phrases=args.phrases, bpm=args.bpm, generator=args.generator,
                         backend=args.backend,
                         retakes=args.retakes, realtime=args.realtime, keep=args.keep, progress=progress)
    except (jackd.JackError, RuntimeError) as e:  # RuntimeError: Ardour failed every try
        print(f"midi-bridge bench ardour: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("midi-bridge bench ardour: interrupted (everything was stopped)", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"answers recorded in {result['ardour']} ({result['alignment']} alignment) against its "
              f"1/16 grid at {result['bpm']:g} bpm; bridge {result['generator']}, --backend "
              f"{result['backend']}; resolution {result['resolution_ms']} ms:")
        print(f"{'period':>7}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'mean ms':>9}{'n':>5}{'xruns':>7}"
              f"{'takes':>7}  jack_midi_dump: mean ms; take - dump: median ms (spread)")
        for r in result["rows"]:
            w, d = r["witness"] or {}, r["take_vs_witness"] or {}
            print(f"{r['period']:>7}{_ms(r['p50_ms']):>9}{_ms(r['p99_ms']):>9}{_ms(r['max_ms']):>9}"
                  f"{_ms(r['mean_ms']):>9}{r['n']:>5}{str(r['ardour_xruns']):>7}{r['takes']:>7}  "
                  f"{_ms(w.get('mean_ms'))}; {_ms(d.get('median_ms'))} ({_ms(d.get('spread_ms'))})"
                  f"{'' if r['faithful'] else '  take and dump disagree (xruns)'}")
    return 0 if all(r["n"] for r in result["rows"]) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="midi-bridge bench ardour", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return cmd_ardour(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
