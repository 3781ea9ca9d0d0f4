"""Configuration: the schema with defaults, loading with ``yaml.safe_load``, validation.

Every key the bridge understands is declared in :data:`SCHEMA` with its default and what
is allowed.  ``config.yaml`` at the repository root documents the same keys inline (a
test keeps the two in step).  A bad file stops the bridge with exit code 2 and one line
naming the key and what is allowed (:class:`ConfigError`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from midi_bridge.core.modes import MODES  # (the interaction modes, defined once)

BACKENDS = ("auto", "alsa", "jack", "jack-rtmidi", "coremidi", "winmm")


class ConfigError(ValueError):
    """A configuration problem; ``str()`` is the one-line message shown to people."""


@dataclass(frozen=True)
class Key:
    default: Any
    check: Callable[[Any], Any]  # returns the normalised value or raises ValueError(allowed)


def _choice(*allowed: str) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if isinstance(v, bool) and ("on" if v else "off") in allowed:
            return "on" if v else "off"  # YAML 1.1 reads a bare on/off as true/false
        if v not in allowed:
            raise ValueError("one of " + ", ".join(allowed))
        return v
    return check


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError("a non-empty string")
    return v


def _opt_str(v: Any) -> str | None:
    return None if v is None else _str(v)


def _num(lo: float, hi: float, integer: bool = False) -> Callable[[Any], Any]:
    kind = "an integer" if integer else "a number"

    def check(v: Any) -> Any:
        ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok_type or not lo <= v <= hi:
            raise ValueError(f"{kind} from {lo:g} to {hi:g}")
        return v
    return check


def _opt(check: Callable[[Any], Any], what: str, special: Any = None,
         written: str = "null") -> Callable[[Any], Any]:
    """``check``, or the ``special`` value (null, or e.g. "auto") meaning ``what``."""
    def wrapped(v: Any) -> Any:
        if v == special if special is not None else v is None:
            return v
        try:
            return check(v)
        except ValueError as e:
            raise ValueError(f"{written} ({what}) or {e}") from None
    return wrapped


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("true or false")
    return v


def _str_list(v: Any) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
        raise ValueError("a list of non-empty strings")
    return list(v)


def _channels(v: Any) -> Any:
    """'all' or a list of channels 1-16 (as people count them); stored as a frozenset 0-15."""
    if v == "all":
        return None
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if (not isinstance(v, list) or not v
            or not all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= 16 for c in v)):
        raise ValueError("'all' or a list of channels 1-16")
    return frozenset(c - 1 for c in v)


def _channel(v: Any) -> int:
    _num(1, 16, integer=True)(v)
    return v - 1


def _thru_channel(v: Any) -> int | None:
    if v == "same":
        return None
    try:
        return _channel(v)
    except ValueError:
        raise ValueError("'same' or a channel 1-16") from None


def _grid(v: Any) -> Any:
    from midi_bridge.core.grid import parse_grid
    if v is False:
        return None  # a bare 'off' (YAML 1.1 reads it as false)
    return parse_grid(v if v is None or isinstance(v, str) else str(v))


def _control_map(v: Any) -> dict[str, tuple[str, int, int | None]]:
    """``action: "cc N" | "note N"`` (optionally ``" ch C"``), parsed by :mod:`midi_bridge.core.control`."""
    from midi_bridge.core.control import ACTIONS, parse_spec
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ValueError("a mapping of action to 'cc N' or 'note N' (actions: " + ", ".join(ACTIONS) + ")")
    out = {}
    for action, spec in v.items():
        if action not in ACTIONS:
            raise ValueError(f"actions from: {', '.join(ACTIONS)} (not {action!r})")
        if spec is None:
            continue
        out[action] = parse_spec(spec)
    return out


def _opt_path(v: Any) -> str | None:
    return None if v is None else _str(v)


def _generators(v: Any) -> dict[str, dict]:
    if not isinstance(v, dict) or not all(isinstance(k, str) and (s is None or isinstance(s, dict))
                                          for k, s in v.items()):
        raise ValueError("a mapping of generator name to its settings")
    return {k: dict(s or {}) for k, s in v.items()}


SCHEMA: dict[str, dict[str, Key]] = {
    "ports": {
        "backend": Key("auto", _choice(*BACKENDS)),
        "client_name": Key("midi-bridge", _str),
        "in_name": Key("midi-bridge in", _str),
        "out_name": Key("midi-bridge out", _str),
        "extra_inputs": Key([], _str_list),
        "extra_outputs": Key([], _str_list),
    },
    "input": {
        "channels": Key("all", _channels),
        "feedback_window_ms": Key(30, _num(0, 1000)),
    },
    "thru": {
        "enabled": Key(False, _bool),
        "channel": Key("same", _thru_channel),
    },
    "engine": {
        "mode": Key("continue", _choice(*MODES)),
        "generator": Key("rnn", _str),
        "output_channel": Key(1, _channel),
        "bpm": Key(120, _num(20, 400)),
        "max_note_beats": Key(8, _num(0.05, 64)),
        "beats_per_bar": Key(4, _num(1, 32, integer=True)),
        "realtime": Key(True, _bool),
        "plugin_budget_ms": Key(25, _num(0.1, 10000)),
        "max_overruns": Key(3, _num(1, 1000, integer=True)),
    },
    "clock": {
        "follow": Key(True, _bool),
        "timeout_ms": Key(500, _num(50, 10000)),
        "window": Key(48, _num(4, 960, integer=True)),
    },
    "phrase": {
        "silence_ms": Key(600, _num(50, 10000)),
        "min_notes": Key(2, _num(1, 1000, integer=True)),
        "max_notes": Key(64, _num(1, 4096, integer=True)),
        "silence_beats": Key(None, _opt(_num(0.125, 64), "use silence_ms")),
        "min_beats": Key(0, _num(0, 256)),
    },
    "continuation": {
        "max_notes": Key(16, _num(1, 1024, integer=True)),
        "max_beats": Key(8, _num(0.25, 256)),
        "lookahead_ms": Key(30, _num(0, 1000)),
        "max_bars": Key(None, _opt(_num(0.25, 64), "use max_beats")),
        "start_on": Key("beat", _choice("now", "beat", "bar")),
        "speculate": Key(True, _bool),
    },
    "output": {
        "burst": Key(64, _num(1, 4096, integer=True)),
        "rate_per_ms": Key(8, _num(0.1, 1000)),
        "drain_ms": Key(60, _num(0, 5000)),
        "quantize": Key("off", _grid),
        "swing": Key(0, _num(0, 0.75)),
        "humanize_ms": Key(0, _num(0, 100)),
        "offset_ms": Key("auto", _opt(_num(-100, 100), "one JACK period early on JACK", "auto", "'auto'")),
    },
    "control": {
        "channel": Key(16, _channel),
        "program_change": Key(True, _bool),
        "next_cc": Key(None, _opt(_num(0, 127, integer=True), "off")),
        "order": Key([], _str_list),
        "map": Key({}, _control_map),
        "echo": Key(True, _bool),
    },
    "record": {
        "dir": Key(None, _opt_path),
        "ratings": Key("ratings.jsonl", _str),
    },
    "status": {
        "tui": Key("auto", _choice("auto", "on", "off")),
        "window_s": Key(60, _num(1, 3600)),
    },
    "generators": {
        # Per-plugin settings, checked against each plugin's default_config when loaded.
        "*": Key({}, _generators),
    },
    "logging": {
        "level": Key("info", _choice("debug", "info", "warning", "error")),
    },
}


def _section_defaults(section: str) -> Any:
    keys = SCHEMA[section]
    if "*" in keys:
        return copy.deepcopy(keys["*"].default)
    return {k: copy.deepcopy(spec.default) for k, spec in keys.items()}


def defaults_raw() -> dict[str, Any]:
    """The defaults as they are written in a config file (before normalisation)."""
    return {section: _section_defaults(section) for section in SCHEMA}


def validate(raw: Any, source: str = "config") -> dict[str, Any]:
    """Check ``raw`` against :data:`SCHEMA`; return a full, normalised config.

    Normalised values: channels are 0-15 (``input.channels`` a frozenset or None for all,
    ``thru.channel`` None for "same"), everything else as written.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping of sections "
                          f"({', '.join(SCHEMA)})")
    out: dict[str, Any] = {}
    for section in raw:
        if section not in SCHEMA:
            raise ConfigError(f"{source}: unknown section '{section}' (allowed: {', '.join(SCHEMA)})")
    for section, keys in SCHEMA.items():
        given = raw.get(section)
        if "*" in keys:
            value = given if given is not None else keys["*"].default
            try:
                out[section] = keys["*"].check(value)
            except ValueError as e:
                raise ConfigError(f"{source}: {section}: must be {e}") from None
            continue
        if given is None:
            given = {}
        if not isinstance(given, Mapping):
            raise ConfigError(f"{source}: {section}: must be a mapping with keys {', '.join(keys)}")
        sec: dict[str, Any] = {}
        for key in given:
            if key not in keys:
                raise ConfigError(f"{source}: unknown key '{section}.{key}' "
                                  f"(allowed: {', '.join(keys)})")
        for key, spec in keys.items():
            value = given.get(key, copy.deepcopy(spec.default))
            try:
                sec[key] = spec.check(value)
            except ValueError as e:
                raise ConfigError(f"{source}: {section}.{key}: {value!r} is not allowed "
                                  f"(must be {e})") from None
        out[section] = sec
    return out


def load(path: str | Path | None) -> dict[str, Any]:
    """Load and validate a YAML file (``None``: the defaults)."""
    if path is None:
        return validate({})
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"config: cannot read {p}: {e.strerror or e} "
                          f"(pass an existing file to --config)") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}:{where} is not valid YAML "
                          f"({getattr(e, 'problem', None) or e})") from None
    return validate(raw, source=str(p))


def override(config: dict[str, Any], dotted: str, value: Any, flag: str | None = None) -> dict[str, Any]:
    """Set ``section.key`` to a raw value (as from a command-line flag) and revalidate it.

    ``flag`` is the option that gave it, for the error (default: ``--key``)."""
    section, key = dotted.split(".", 1)
    spec = SCHEMA[section][key]
    try:
        config[section][key] = spec.check(value)
    except ValueError as e:
        flag = flag or f"--{key.replace('_', '-')}"
        raise ConfigError(f"{flag}: {value!r} is not allowed (must be {e})") from None
    return config


def find_default_file() -> Path | None:
    """``./config.yaml`` when run from a checkout, else None (built-in defaults)."""
    p = Path.cwd() / "config.yaml"
    return p if p.is_file() else None
