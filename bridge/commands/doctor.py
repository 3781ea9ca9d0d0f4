"""``midi-bridge doctor``: which backends work here, what is installed, and what to fix."""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any


def collect() -> dict[str, Any]:
    from midi_bridge.runtime import discovery, ports
    from midi_bridge.plugin import PluginError

    out: dict[str, Any] = {"python": sys.version.split()[0], "platform": sys.platform}
    backends = {}
    for name in ports.APIS:
        why = ports.probe(name)
        backends[name] = {"ok": not why, "error": why or None,
                          "fix": None if not why else ports.FIXES[name]}
    out["backends"] = backends
    out["jack"] = {"jackd": shutil.which("jackd"),
                   "server": os.environ.get("JACK_DEFAULT_SERVER", "default"),
                   "running": backends["jack"]["ok"]}
    out["alsa"] = {"sequencer": os.path.exists("/dev/snd/seq")}
    try:
        import torch
        cuda = torch.cuda.is_available()
        out["torch"] = {"version": torch.__version__, "cuda": cuda,
                        "device": torch.cuda.get_device_name(0) if cuda else None}
    except Exception as e:  # noqa: BLE001 - report, don't fail
        out["torch"] = {"version": None, "error": f"{type(e).__name__}: {e}"}
    plugins = {}
    for name, info in discovery.discover().items():
        try:
            discovery.load_class(info)
        except PluginError:
            pass
        plugins[name] = {"status": info.status, "error": info.error or None}
    out["plugins"] = plugins
    return out


def advice(d: dict[str, Any]) -> list[str]:
    tips = []
    if not any(b["ok"] for b in d["backends"].values()):
        tips.append("no MIDI backend works: " + "; ".join(
            f"{n}: {b['fix']}" for n, b in d["backends"].items() if n in _local_backends()))
    if sys.platform.startswith("linux") and not d["alsa"]["sequencer"]:
        tips.append("no ALSA sequencer (/dev/snd/seq): sudo modprobe snd-seq, or use JACK")
    if sys.platform.startswith("linux") and not d["jack"]["jackd"]:
        tips.append("jackd is not installed: sudo apt-get install --no-install-recommends jackd2")
    if sys.platform.startswith("win"):
        from midi_bridge.runtime.ports import LOOPMIDI
        tips.append(LOOPMIDI)
    if d["torch"].get("version") is None:
        tips.append("torch is missing: pip install 'torch>=2.10' (the RNN generators need it)")
    for name, p in d["plugins"].items():
        if p["status"] == "error":
            tips.append(f"plugin '{name}' is broken: {p['error']}")
    return tips


def _local_backends() -> list[str]:
    from midi_bridge.runtime.ports import platform_order
    return platform_order()


def report(as_json: bool = False) -> int:
    d = collect()
    d["advice"] = advice(d)
    ok = any(b["ok"] for b in d["backends"].values())
    if as_json:
        print(json.dumps(d, indent=2))
        return 0 if ok else 1
    print(f"python {d['python']} on {d['platform']}")
    for name, b in d["backends"].items():
        print(f"  backend {name:<9} {'works' if b['ok'] else 'no: ' + b['error']}")
    print(f"  jackd: {d['jack']['jackd'] or 'not installed'} (server '{d['jack']['server']}' "
          f"{'running' if d['jack']['running'] else 'not running'})")
    print(f"  ALSA sequencer: {'present' if d['alsa']['sequencer'] else 'absent'}")
    t = d["torch"]
    print(f"  torch: {t.get('version') or 'missing'}"
          + (f", CUDA: {t['device'] or 'no'}" if t.get("version") else ""))
    for name, p in d["plugins"].items():
        print(f"  plugin {name:<10} {p['status']}" + (f": {p['error']}" if p["error"] else ""))
    for tip in d["advice"]:
        print(f"fix: {tip}")
    if not d["advice"]:
        print("all good")
    return 0 if ok else 1
