"""Plugin discovery through the ``midi_bridge.generators`` entry-point group.

Entry points are listed without importing anything; a plugin's module is imported only
when it is selected (or when ``midi-bridge plugins`` is asked for its status).  Once
imported, the class is checked against the contract in :mod:`midi_bridge.plugin` (its
module docstring lists what is refused and what is warned): the written spec is the base
class :class:`~midi_bridge.plugin.Generator` itself, and an implementation's methods are
compared with its signatures.  A plugin that fails to import, fails a check, rejects its
configuration or fails to construct is reported -- one line with its distribution, version,
entry point, what is wrong and the fix -- and marked ``error`` so that it is never
selected; the other plugins keep working.
"""

from __future__ import annotations

import inspect
import logging
from collections import abc
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Mapping

from midi_bridge.plugin import (API_VERSION, ENTRY_POINT_GROUP, MODE_METHODS, MODES, Generator,
                                PluginError)

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
    warning: str = ""               # loaded, but something to fix (no api_version)
    modes: tuple[str, ...] = ()
    cls: type | None = field(default=None, repr=False)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "error": self.error or None,
                "warning": self.warning or None,
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
    """Import the plugin's class and check it against the contract (:func:`contract_problem`;
    a missing ``api_version`` is warned, once); on failure record the reason in ``info``
    (status ``error``: never selected) and raise :class:`PluginError`."""
    if info.cls is not None:
        return info.cls
    try:
        cls = info._ep.load()  # type: ignore[attr-defined]
    except _PLUGIN_FAILURES as e:  # any import failure is the plugin's
        return _fail(info, f"import failed: {type(e).__name__}: {e}")
    if not (isinstance(cls, type) and issubclass(cls, Generator)):
        return _fail(info, f"{info.value} is not a subclass of midi_bridge.plugin.Generator")
    problem = contract_problem(cls)
    if problem:
        return _fail(info, problem)
    if getattr(cls, "api_version", None) is None:
        info.warning = (f"api_version is not declared: add 'api_version = {API_VERSION[0]}' "
                        f"to {cls.__name__} (the plugin contract major it was written for; "
                        f"v{API_VERSION[0]} is assumed until then)")
        log.warning("%s: %s", info.where(), info.warning)
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


# -- the contract's checks -----------------------------------------------------------------

#: The methods the bridge calls, each checked against the base class's signature.
CONTRACT_METHODS = ("__init__", "reset", "observe", "continuation", "accompany", "close",
                    "rating_context")


def contract_problem(cls: type) -> str:
    """What in ``cls`` breaks the contract of :mod:`midi_bridge.plugin`, with the fix, as
    one line; ``""`` when nothing (the first problem found: fix it, then the next shows)."""
    declared = getattr(cls, "api_version", None)
    if declared is not None:
        if isinstance(declared, bool) or not isinstance(declared, (int, float)) or declared % 1:
            return (f"api_version must be the major version as an integer "
                    f"(api_version = {API_VERSION[0]} for this bridge), not {declared!r}")
        if declared != API_VERSION[0]:
            return (f"written for plugin API v{declared:g}, "
                    f"this bridge provides v{API_VERSION[0]} (upgrade the plugin or the bridge)")
    modes = cls.modes
    if isinstance(modes, str):
        return (f"modes must be a set of mode names, e.g. frozenset({{{modes!r}}}), "
                f"not the string {modes!r}")
    bad = set(modes) - set(MODES)
    if bad:
        return f"declares unknown modes {sorted(bad)} (allowed: {', '.join(MODES)})"
    if not modes:
        return (f"modes is empty: declare the modes it plays, e.g. "
                f"modes = frozenset({{{MODES[0]!r}}}) (allowed: {', '.join(MODES)})")
    for mode in MODES:
        method = MODE_METHODS[mode]
        if mode in modes and inspect.getattr_static(cls, method) is vars(Generator)[method]:
            return (f"declares mode '{mode}' but does not define {method}(): add "
                    f"'def {method}{_shown(_spec(method))}' to {cls.__name__}, "
                    f"or take '{mode}' out of modes")
    for method in CONTRACT_METHODS:
        problem = _signature_problem(cls, method)
        if problem:
            return problem
    if not isinstance(cls.default_config, abc.Mapping):
        return (f"default_config must be a dict of setting names to their defaults, "
                f"not {type(cls.default_config).__name__}")
    return ""


def _spec(method: str) -> inspect.Signature:
    return inspect.signature(vars(Generator)[method])


def _shown(sig: inspect.Signature) -> str:
    """``(self, event, context)``: the parameters without their annotations."""
    return str(sig.replace(parameters=[p.replace(annotation=p.empty) for p in sig.parameters.values()],
                           return_annotation=inspect.Signature.empty))


def _signature_problem(cls: type, method: str) -> str:
    """Whether the bridge's call of ``method`` -- the arguments of the base class's
    signature, positionally -- binds to what ``cls`` defines; ``""`` when it does, or when
    the definition cannot be inspected (a C function, a property: given the benefit of the
    doubt)."""
    raw = inspect.getattr_static(cls, method)
    if raw is vars(Generator)[method]:
        return ""
    n = len(_spec(method).parameters) - 1              # the arguments, without self
    if isinstance(raw, staticmethod):
        fn, args = raw.__func__, n
    elif isinstance(raw, classmethod):
        fn, args = raw.__func__, n + 1                 # + cls
    elif inspect.isfunction(raw):
        fn, args = raw, n + 1                          # + self
    elif not callable(raw) and not hasattr(type(raw), "__get__"):
        return (f"{method} must be a method (the bridge calls {method}"
                f"{_shown(_spec(method))}), not {type(raw).__name__}")
    elif callable(raw) and not hasattr(type(raw), "__get__"):
        fn, args = raw, n                              # a callable object: called as is
    else:
        return ""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return ""
    try:
        sig.bind(*[None] * args)
    except TypeError:
        return (f"{method}{_shown(sig)} does not fit the contract's {method}"
                f"{_shown(_spec(method))}: take the same parameters (any extra one needs a "
                f"default)")
    return ""


def usable(info: PluginInfo, mode: str) -> bool:
    """Whether selecting ``info`` for ``mode`` can work, as far as is known without
    importing it: False once it was refused, or loaded without that mode ("thru" needs no
    generator: any loaded one is fine)."""
    if info.status == "error":
        return False
    return info.status != "ok" or mode == "thru" or mode in info.modes
