"""The integration tests' JACK server: :mod:`midi_bridge.bench.jackd` under one fixed name.

The server lives in :mod:`midi_bridge.bench.jackd` (the benchmark uses it too), the
registry it reads in :mod:`midi_bridge.runtime.jack`; this module fixes the tests' server
name, ``midi-bridge-tests``, as the default of the functions that take one.  Setting a
shared module global here (as ``monkeypatch.setattr(jackserver, "REGISTRY", ...)`` does)
sets it in :mod:`midi_bridge.runtime.jack` as well, so the functions see it.
"""

from __future__ import annotations

import os  # noqa: F401 - tests reach os through this module
import sys
import types

import midi_bridge.bench.jackd as _jackd
import midi_bridge.runtime.jack as _registry
from midi_bridge.bench.jackd import (  # noqa: F401 - re-exported
    JackError,
    _forget_recycled_slot,
    _remove_stale_files,
    jackd_path,
)
from midi_bridge.runtime.jack import (  # noqa: F401 - re-exported
    MAX_SERVERS,
    REGISTRY,
    _slots,
    is_jackd_of,
    own_slot,
    pid_alive,
    registry_servers,
    settings,
)

# One fixed name; MIDI_BRIDGE_TEST_JACK overrides it only so that several checkouts on one
# developer machine can run the integration tests side by side (CI never sets it).
SERVER_NAME = os.environ.get("MIDI_BRIDGE_TEST_JACK") or "midi-bridge-tests"


def client_env(name: str = SERVER_NAME) -> dict[str, str]:
    return _registry.client_env(name)


def registered_pid(name: str = SERVER_NAME) -> int | None:
    return _registry.registered_pid(name)


def leaked(name: str = SERVER_NAME) -> bool:
    return _jackd.leaked(name)


def responds(name: str = SERVER_NAME, timeout: float = 5.0) -> bool:
    return _jackd.responds(name, timeout)


class JackServer(_jackd.JackServer):
    def __init__(self, name: str = SERVER_NAME, *args, **kwargs) -> None:
        super().__init__(name, *args, **kwargs)


_SHARED = frozenset({"REGISTRY", "MAX_SERVERS"})


class _Module(types.ModuleType):
    def __setattr__(self, attr: str, value) -> None:
        if attr in _SHARED:
            setattr(_registry, attr, value)
        super().__setattr__(attr, value)


sys.modules[__name__].__class__ = _Module
