"""Plugin discovery through the ``midi_bridge.generators`` entry-point group.

Entry points are listed without importing anything; a plugin's module is imported only
when it is selected (or when ``midi-bridge plugins`` is asked for its status).  A plugin
that fails to import, declares an incompatible API version, rejects its configuration or
fails to construct is reported with its distribution, version and the reason, and the
other plugins keep working.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Mapping

from midi_bridge.plugin import API_VERSION, ENTRY_POINT_GROUP, MODES, Generator, PluginError

log = logging.getLogger(__name__)

#: What a plugin's import or constructor may raise that is reported as its failure.
#: ``SystemExit`` included: a plugin calling ``sys.exit()`` must not end the bridge at
#: start-up without naming itself, nor silently kill the loader thread of a live swap.
_PLUGIN_FAILURES = (Exception, SystemExit)


@dataclass
class PluginInfo:
    name: str
    value: str                      # "module:Class"
    distribution: str
    version: str
    status: str = "not loaded"      # "not loaded" | "ok" | "error"
    error: str = ""
    modes: tuple[str, ...] = ()
    cls: type | None = field(default=None, repr=False)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "error": self.error or None,
                "distribution": self.distribution, "version": self.version,
                "entry_point": self.value, "modes": list(self.modes)}

    def where(self) -> str:
        return f"plugin '{self.name}' ({self.distribution} {self.version}, {self.value})"


#: The distribution of the first-party plugins: its registration of a name always wins.
OWN_DISTRIBUTION = "midi-bridge"


def _dist_name(ep) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "?"


def _precedence(ep) -> tuple:
    """Which registration of a name wins, the same on every machine (the order in which
    entry points are found follows sys.path and the file system's listing order): the
    bridge's own, then by distribution name."""
    dist = _dist_name(ep)
    return ep.name, dist != OWN_DISTRIBUTION, dist.lower()


def discover() -> dict[str, PluginInfo]:
    """All registered generators by name (not imported).  Two registrations of a name: the
    bridge's own wins, else the first by distribution name; a warning names the other."""
    found: dict[str, PluginInfo] = {}
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=_precedence):
        dist = getattr(ep, "dist", None)
        info = PluginInfo(ep.name, ep.value, _dist_name(ep), dist.version if dist is not None else "?")
        if ep.name in found:
            log.warning("%s is shadowed by %s with the same name (uninstall one of them to choose)",
                        info.where(), found[ep.name].where())
            continue
        info._ep = ep  # type: ignore[attr-defined]
        found[ep.name] = info
    return found


def _broken(fn):
    """Anything else a plugin's class or constructor makes discovery's own code raise (a
    ``modes`` that is not iterable, a read-only ``name``, ...) is reported as the plugin's
    failure too: it must not kill a live swap's loader thread or print a traceback."""
    def wrapper(info: PluginInfo, *args):
        try:
            return fn(info, *args)
        except PluginError:
            raise
        except _PLUGIN_FAILURES as e:
            return _fail(info, f"broken plugin class: {type(e).__name__}: {e}")
    wrapper.__doc__, wrapper.__name__ = fn.__doc__, fn.__name__
    return wrapper


@_broken
def load_class(info: PluginInfo) -> type:
    """Import the plugin's class; on failure record the reason and raise :class:`PluginError`."""
    if info.cls is not None:
        return info.cls
    try:
        cls = info._ep.load()  # type: ignore[attr-defined]
    except _PLUGIN_FAILURES as e:  # any import failure is the plugin's
        return _fail(info, f"import failed: {type(e).__name__}: {e}")
    if not (isinstance(cls, type) and issubclass(cls, Generator)):
        return _fail(info, f"{info.value} is not a subclass of midi_bridge.plugin.Generator")
    declared = getattr(cls, "api_version", None)
    if isinstance(declared, bool) or not isinstance(declared, (int, float)) or declared % 1:
        return _fail(info, f"api_version must be the major version as an integer "
                           f"(api_version = {API_VERSION[0]} for this bridge), not {declared!r}")
    if declared != API_VERSION[0]:
        return _fail(info, f"written for plugin API v{declared:g}, "
                           f"this bridge provides v{API_VERSION[0]} (upgrade the plugin or the bridge)")
    if isinstance(cls.modes, str):
        return _fail(info, f"modes must be a set of mode names, e.g. frozenset({{{cls.modes!r}}}), "
                           f"not the string {cls.modes!r}")
    bad = set(cls.modes) - set(MODES)
    if bad:
        return _fail(info, f"declares unknown modes {sorted(bad)} (allowed: {', '.join(MODES)})")
    info.cls = cls
    info.modes = tuple(m for m in MODES if m in cls.modes)
    info.status = "ok"
    return cls


@_broken
def create(info: PluginInfo, settings: Mapping[str, Any] | None) -> Generator:
    """Construct the plugin with its settings, checked against its ``default_config``."""
    cls = load_class(info)
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(cls.default_config))
    if unknown:
        allowed = ", ".join(cls.default_config) or "none"
        raise PluginError(f"{info.where()}: config: unknown key 'generators.{info.name}.{unknown[0]}' "
                          f"(allowed: {allowed})")
    try:
        gen = cls(settings)
    except _PLUGIN_FAILURES as e:
        return _fail(info, f"construction failed: {type(e).__name__}: {e}")
    if not gen.name:
        gen.name = info.name  # type: ignore[misc]
    return gen


def _fail(info: PluginInfo, reason: str):
    info.status = "error"
    info.error = reason
    raise PluginError(f"{info.where()}: {reason}")
