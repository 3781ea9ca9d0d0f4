"""The ``midi-bridge`` command: run, ports, plugins, doctor, render (and the model tools).

Problems people can fix (a bad config, no MIDI backend, a missing port, a broken plugin)
end with exit code 2 and one line that names the problem and the fix, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from midi_bridge import __version__
from midi_bridge.core.modes import MODES

from . import config as config_mod

log = logging.getLogger("midi_bridge")

# Flags of `run`/`render` that override config keys.
OVERRIDES = {
    "backend": "ports.backend",
    "client_name": "ports.client_name",
    "in_port": "ports.in_name",
    "out_port": "ports.out_name",
    "generator": "engine.generator",
    "mode": "engine.mode",
    "quantize": "output.quantize",
    "bpm": "engine.bpm",
    "record": "record.dir",
    "tui": "status.tui",
}


def _setup_logging(args: argparse.Namespace, cfg: dict[str, Any] | None = None) -> None:
    level = cfg["logging"]["level"].upper() if cfg else "INFO"
    if getattr(args, "verbose", 0):
        level = "DEBUG"
    elif getattr(args, "quiet", 0):
        level = "WARNING"
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr, force=True)


def _load_config(args: argparse.Namespace, missing_ok: bool = False) -> dict[str, Any]:
    path = args.config if args.config else config_mod.find_default_file()
    if missing_ok and path is not None and not os.path.exists(path):
        path = None  # (learn creates the file)
    cfg = config_mod.load(path)
    for flag, dotted in OVERRIDES.items():
        value = getattr(args, flag, None)
        if value is not None:
            config_mod.override(cfg, dotted, value, flag="--" + flag.replace("_", "-"))
    return cfg


def _add_common(p: argparse.ArgumentParser, overrides: bool = True) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config (default: ./config.yaml if present)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    p.add_argument("-q", "--quiet", action="count", default=0, help="warnings and errors only")
    if overrides:
        p.add_argument("--generator", help="generator plugin name (see 'midi-bridge plugins')")
        p.add_argument("--mode", choices=MODES, help="interaction mode")


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load_config(args)
    _setup_logging(args, cfg)
    from .live import run
    return run(cfg)


def cmd_render(args: argparse.Namespace) -> int:
    cfg = _load_config(args)
    _setup_logging(args, cfg)
    from .render import render
    soundfont = None
    if args.audio:  # missing fluidsynth or soundfont: say so before doing any work
        from .audio import AudioError, check
        if Path(args.audio).resolve() in {Path(args.output).resolve(), Path(args.input).resolve()}:
            raise AudioError(f"--audio {args.audio} is the MIDI file itself; give a .wav path "
                             f"(e.g. --audio {Path(args.output).with_suffix('.wav')})")
        _, soundfont = check(args.soundfont)
    summary = render(args.input, args.output, cfg)
    if args.audio:
        from .audio import render_audio
        summary["audio"] = str(render_audio(args.output, args.audio, soundfont))
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {args.output}: {summary['output_events']} events from the bridge "
              f"({summary['generator'] or 'thru'}, {summary['mode']}) for {summary['input_events']} in")
        if args.audio:
            print(f"wrote {args.audio} (FluidSynth, {soundfont})")
    return 0


def cmd_ports(args: argparse.Namespace) -> int:
    _setup_logging(args)
    from midi_bridge.runtime import ports
    backends = [args.backend] if args.backend and args.backend != "auto" else list(ports.APIS)
    result = {}
    for b in backends:
        why = ports.probe(b)
        if why:
            result[b] = {"ok": False, "error": why}
            continue
        ins, outs = ports.list_ports(b)
        result[b] = {"ok": True, "inputs": ins, "outputs": outs}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for b, r in result.items():
        if not r["ok"]:
            print(f"{b}: unavailable ({r['error']})")
            continue
        print(f"{b}:")
        print("  inputs (to listen to):  " + ("; ".join(r["inputs"]) or "none"))
        print("  outputs (to play to):   " + ("; ".join(r["outputs"]) or "none"))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    _setup_logging(args)
    from midi_bridge.runtime import discovery
    from midi_bridge.plugin import PluginError
    infos = discovery.discover()
    for info in infos.values():
        try:
            discovery.load_class(info)
        except PluginError:
            pass
    if args.json:
        print(json.dumps([i.as_json() for i in infos.values()], indent=2))
        return 0
    if not infos:
        print("no generators installed (entry-point group midi_bridge.generators)")
    for i in infos.values():
        state = "ok" if i.status == "ok" else f"ERROR: {i.error}"
        modes = ", ".join(i.modes) or "-"
        print(f"{i.name:<12} {state:<6} modes: {modes:<20} {i.distribution} {i.version} ({i.value})")
    return 0


def cmd_learn(args: argparse.Namespace) -> int:
    from midi_bridge.core.control import ACTIONS
    from .learn import LearnError, cmd_learn as learn
    for action in args.actions:
        if action not in ACTIONS:
            raise LearnError(f"unknown action {action!r} (actions: {', '.join(ACTIONS)})")
    cfg = _load_config(args, missing_ok=True)
    _setup_logging(args, cfg)
    return learn(args, cfg)


def cmd_doctor(args: argparse.Namespace) -> int:
    _setup_logging(args)
    from .doctor import report
    return report(as_json=args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="midi-bridge", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"midi-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="open the virtual ports and play live")
    _add_common(p)
    p.add_argument("--backend", choices=config_mod.BACKENDS, help="MIDI backend")
    p.add_argument("--client-name", help="MIDI client name")
    p.add_argument("--in-port", help="name of the virtual input port")
    p.add_argument("--out-port", help="name of the virtual output port")
    p.add_argument("--quantize", metavar="GRID", help="answer grid: off, 1/4, 1/8, 1/16, 1/8t, ...")
    p.add_argument("--bpm", type=float, metavar="N", help="tempo of the internal clock")
    p.add_argument("--record", metavar="DIR",
                   help="record the session (input, output per generator) into DIR as .mid, every second")
    tui = p.add_mutually_exclusive_group()
    tui.add_argument("--tui", dest="tui", action="store_const", const="on",
                     help="live status screen with key controls (default: when in a terminal)")
    tui.add_argument("--no-tui", dest="tui", action="store_const", const="off",
                     help="plain logs, no status screen")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("render", help="run the engine over a MIDI file in simulated time")
    _add_common(p)
    p.add_argument("input", metavar="IN.mid")
    p.add_argument("-o", "--output", required=True, metavar="OUT.mid")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("--quantize", metavar="GRID", help="answer grid: off, 1/4, 1/8, 1/16, 1/8t, ...")
    p.add_argument("--bpm", type=float, metavar="N", help="tempo when the file has none")
    p.add_argument("--audio", metavar="OUT.wav", help="also render OUT.mid to audio with FluidSynth")
    p.add_argument("--soundfont", metavar="FILE",
                   help="General MIDI .sf2 for --audio (default: $MIDI_BRIDGE_SOUNDFONT, then common paths)")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("ports", help="list MIDI ports per backend")
    p.add_argument("--backend", choices=config_mod.BACKENDS)
    p.add_argument("--json", action="store_true")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.set_defaults(func=cmd_ports)

    p = sub.add_parser("plugins", help="list discovered generator plugins")
    p.add_argument("--json", action="store_true")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.set_defaults(func=cmd_plugins)

    from midi_bridge.core.control import ACTIONS
    p = sub.add_parser("learn", help="MIDI learn: move a control, it is written into control.map of the config")
    _add_common(p, overrides=False)
    p.add_argument("actions", nargs="+", metavar="ACTION", help="what to bind: " + ", ".join(ACTIONS))
    p.add_argument("--backend", choices=config_mod.BACKENDS, help="MIDI backend")
    p.add_argument("--client-name", help="MIDI client name")
    p.add_argument("--in-port", help="name of the virtual input port")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="wait this long for each control")
    p.add_argument("--any-channel", action="store_true", help="bind on every channel, not just the one it came on")
    p.set_defaults(func=cmd_learn)

    p = sub.add_parser("doctor", help="check what works on this machine and what to fix")
    p.add_argument("--json", action="store_true")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.set_defaults(func=cmd_doctor)

    # The model and benchmark commands (their heavy modules load only when one runs).
    from midi_bridge.bench.cli import register_group as register_bench
    from midi_bridge.training.cli import register as register_training
    from midi_bridge.training.gan_cli import register as register_gan
    from midi_bridge.training.tune_cli import register as register_tune
    from .chords import register as register_chords
    for register in (register_training, register_bench, register_gan, register_tune, register_chords):
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from midi_bridge.plugin import PluginError
    from midi_bridge.runtime.ports import BackendError
    from .render import RenderError
    from .learn import LearnError
    from .audio import AudioError
    from midi_bridge.stage.record import RecordError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (config_mod.ConfigError, BackendError, PluginError, RenderError, AudioError, RecordError,
            LearnError) as e:
        print(f"midi-bridge: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0
