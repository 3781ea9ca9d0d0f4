"""The integration tests' JACK server: :mod:`midi_bridge.runtime.jack` under one fixed name.

Everything lives in :mod:`midi_bridge.runtime.jack` (the benchmark uses it too); this module fixes the
tests' server name, ``midi-bridge-tests``, as the default of the functions that take
one.  Setting a shared module global here (as ``monkeypatch.setattr(jackserver,
"REGISTRY", ...)`` does) sets it in :mod:`midi_bridge.runtime.jack` as well, so the functions see it.
"""

from __future__ import annotations

import os  # noqa: F401 - tests reach os through this module
import sys
import types

import midi_bridge.runtime.jack as _jack
from midi_bridge.runtime.jack import (  # noqa: F401 - re-exported
    MAX_SERVERS,
    REGISTRY,
    JackError,
    _forget_recycled_slot,
    _own_slot,
    _remove_stale_files,
    _slots,
    is_jackd_of,
    jackd_path,
    pid_alive,
    registry_servers,
    settings,
)

# One fixed name; MIDI_BRIDGE_TEST_JACK overrides it only so that several checkouts on one
# developer machine can run the integration tests side by side (CI never sets it).
SERVER_NAME = os.environ.get("MIDI_BRIDGE_TEST_JACK") or "midi-bridge-tests"


def client_env(name: str = SERVER_NAME) -> dict[str, str]:
    return _jack.client_env(name)


def registered_pid(name: str = SERVER_NAME) -> int | None:
    return _jack.registered_pid(name)


def leaked(name: str = SERVER_NAME) -> bool:
    return _jack.leaked(name)


def responds(name: str = SERVER_NAME, timeout: float = 5.0) -> bool:
    return _jack.responds(name, timeout)


class JackServer(_jack.JackServer):
    def __init__(self, name: str = SERVER_NAME, *args, **kwargs) -> None:
        super().__init__(name, *args, **kwargs)


_SHARED = frozenset({"REGISTRY", "MAX_SERVERS"})


class _Module(types.ModuleType):
    def __setattr__(self, attr: str, value) -> None:
        if attr in _SHARED:
            setattr(_jack, attr, value)
        super().__setattr__(attr, value)


sys.modules[__name__].__class__ = _Module
