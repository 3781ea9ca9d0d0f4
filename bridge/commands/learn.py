"""``midi-bridge learn ACTION...``: MIDI learn, written into the config file.

For each action named (``temperature``, ``density``, ``rate_good`` ... see
:mod:`midi_bridge.core.control`) the bridge's input port opens, the performer moves a knob or hits a
pad, and the first control change or note-on that arrives is bound to the action in
``control.map`` of the config file.  The channel is part of the binding (``"note 36 ch
10"``) unless ``--any-channel`` is given, so a pad's note does not swallow the same key
played on the keyboard.

The file is edited in place, line by line, so its comments survive; the result is
validated before it is written.  Run it while ``midi-bridge run`` is stopped (both use
the same port names).
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import re
import sys
from pathlib import Path
from typing import Any

from . import config as config_mod
from midi_bridge.core import midi
from midi_bridge.runtime import ports as ports_mod
from midi_bridge.core.control import format_spec


class LearnError(ValueError):
    """A one-line problem shown to the user (exit 2)."""


def set_map_entry(text: str, action: str, spec: str) -> str:
    """``text`` (a YAML config) with ``control.map.<action>`` set to ``spec``, comments kept.

    Handles a flow mapping on the ``map:`` line (``map: {}`` as in the shipped file), a
    block mapping below it, a ``control:`` section without ``map``, and no section.  An
    edit that would change anything else (a layout these line edits do not understand,
    such as ``control: {channel: 10}``) raises :class:`LearnError`.
    """
    import yaml
    out = _edit_map_entry(text, action, spec)
    try:
        before, after = yaml.safe_load(text) or {}, yaml.safe_load(out)
    except yaml.YAMLError:
        after = None
    else:
        if isinstance(before, dict):
            before = dict(before)
            ctl = before.get("control")
            ctl = dict(ctl) if isinstance(ctl, dict) else {}
            mapping = ctl.get("map")
            ctl["map"] = dict(mapping, **{action: spec}) if isinstance(mapping, dict) else {action: spec}
            before["control"] = ctl
    if after is None or after != before:
        raise LearnError("cannot edit control.map in this file's layout without changing other "
                         f"settings; set control.map.{action}: \"{spec}\" by hand")
    return out


def _edit_map_entry(text: str, action: str, spec: str) -> str:
    lines = text.splitlines()
    entry = f'{action}: "{spec}"'
    ctl = next((i for i, ln in enumerate(lines) if re.match(r"^control:\s*(#.*)?$", ln)), None)
    if ctl is None:
        return text.rstrip("\n") + ("\n\n" if text.strip() else "") + f"control:\n  map:\n    {entry}\n"
    end = next((i for i in range(ctl + 1, len(lines)) if lines[i] and not lines[i][0].isspace()
                and not lines[i].lstrip().startswith("#")), len(lines))
    m_idx = next((i for i in range(ctl + 1, end) if re.match(r"^\s+map:", lines[i])), None)
    if m_idx is None:
        indent = next((re.match(r"^(\s+)\S", lines[i]).group(1) for i in range(ctl + 1, end)
                       if re.match(r"^\s+\S", lines[i]) and not lines[i].lstrip().startswith("#")), "  ")
        lines[ctl + 1:ctl + 1] = [f"{indent}map:", f"{indent}  {entry}"]
        return "\n".join(lines) + "\n"
    line = lines[m_idx]
    m = re.match(r"^(\s+)map:\s*(\{.*?\})?\s*(#.*)?$", line)
    if m is None:
        raise LearnError(f"cannot edit line {m_idx + 1} ({line.strip()!r}); set control.map by hand")
    indent, flow, comment = m.group(1), m.group(2), m.group(3)
    if flow is not None:
        import yaml
        current = yaml.safe_load(flow) or {}
        current[action] = spec
        body = ", ".join(f'{k}: "{v}"' for k, v in current.items())
        new = f"{indent}map: {{{body}}}"
        lines[m_idx] = new + ("  " + comment if comment else "")
        return "\n".join(lines) + "\n"
    # block mapping: the deeper-indented lines after map:
    j = m_idx + 1
    child = None
    while j < end and (not lines[j].strip() or lines[j].lstrip().startswith("#")
                       or len(lines[j]) - len(lines[j].lstrip()) > len(indent)):
        s = lines[j]
        if s.strip() and not s.lstrip().startswith("#"):
            child = child or s[:len(s) - len(s.lstrip())]
            if re.match(rf"^\s+{re.escape(action)}\s*:", s):
                comment = re.search(r"""^[^#'"]*(?:(?:"[^"]*"|'[^']*')[^#'"]*)*(\s#.*)$""", s)
                lines[j] = f"{child}{entry}" + (comment.group(1) if comment else "")
                return "\n".join(lines) + "\n"
        j += 1
    lines.insert(j, f"{child or indent + '  '}{entry}")
    return "\n".join(lines) + "\n"


def wait_for_control(inbox: "queue.SimpleQueue[tuple]", timeout: float,
                     previous: tuple[str, int, int] | None = None,
                     settle: float = 0.4) -> tuple[str, int, int]:
    """The first CC or note-on that arrives: ``(kind, number, channel)``.

    ``previous`` (the control just learned) is skipped while it keeps arriving less than
    ``settle`` s apart: the rest of its gesture (a knob sends many values) is not the next
    control.  Everything else that is not a control (MIDI clock from the DAW) is ignored."""
    import time
    deadline = time.monotonic() + timeout
    quiet_at = time.monotonic() + settle if previous is not None else 0.0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise LearnError(f"nothing arrived in {timeout:g} s: is the controller routed to the "
                             "bridge's input port? (midi-bridge ports lists them)")
        try:
            _t, _src, data = inbox.get(timeout=left)
        except queue.Empty:
            continue
        try:
            msg = midi.parse(data)
        except midi.MalformedMidi:
            continue
        kind = msg[0] & 0xF0
        if kind == midi.CONTROL:
            found = "cc", msg[1], msg[0] & 0x0F
        elif kind == midi.NOTE_ON:
            found = "note", msg[1], msg[0] & 0x0F
        else:
            continue
        if found == previous and time.monotonic() < quiet_at:
            quiet_at = time.monotonic() + settle
            continue
        return found


def cmd_learn(args: Any, cfg: dict[str, Any]) -> int:
    path = Path(args.config) if args.config else Path("config.yaml")
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    # Before the performer moves anything: can the file be edited and written?
    for action in args.actions:
        set_map_entry(text, action, "cc 0")
    if not path.parent.is_dir():
        raise LearnError(f"cannot write {path}: no such directory (pass a writable file with --config)")
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        raise LearnError(f"cannot write {path}: permission denied (pass a writable file with --config)")
    pc = cfg["ports"]
    backend = ports_mod.choose(pc["backend"])
    inbox: queue.SimpleQueue[tuple] = queue.SimpleQueue()
    p = ports_mod.open_ports(backend, pc["client_name"], pc["in_name"], pc["out_name"],
                             pc["extra_inputs"], pc["extra_outputs"], inbox.put)
    try:
        print(f"learning on {', '.join(p.in_names)} ({backend})", flush=True)
        previous = None
        for action in args.actions:
            print(f"{action}: move the knob or hit the pad now ...", flush=True)
            previous = kind, number, ch = wait_for_control(inbox, args.timeout, previous)
            spec = format_spec(kind, number, None if args.any_channel else ch)
            text = set_map_entry(text, action, spec)
            print(f"{action} = {spec}", flush=True)
    finally:
        p.close()
    try:
        import yaml
        config_mod.validate(yaml.safe_load(text), source=str(path))
    except (config_mod.ConfigError, Exception) as e:  # noqa: BLE001
        raise LearnError(f"not writing {path}: the edited file would not load ({e})") from None
    real = Path(os.path.realpath(path))  # (a symlinked config stays a symlink)
    tmp = real.with_name(f".{real.name}.learn-tmp")
    try:  # atomically: a crash mid-write must not leave the config cut short
        tmp.write_text(text, encoding="utf-8")
        if real.exists():
            shutil.copymode(real, tmp)
        os.replace(tmp, real)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise LearnError(f"cannot write {path}: {e.strerror or e} (set the bindings printed "
                         "above in control.map by hand)") from None
    print(f"wrote control.map to {path}", file=sys.stderr)
    return 0
