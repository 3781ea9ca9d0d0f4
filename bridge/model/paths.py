"""Where a checkpoint named in the configuration is found.

A name is tried as given (a path, relative to the current folder), then in the
repository's ``models/`` folder (an editable install or a checkout), then among the
trained defaults a non-editable install ships as data files
(``<prefix>/share/midi-bridge/models``, ``pyproject.toml``'s ``data-files``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from midi_bridge.plugin import PluginError

#: the repository's models/ folder (bridge/model/paths.py -> the repository root)
MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


def resolve_model_path(name: str, who: str | None = None) -> Path:
    """The file ``name`` stands for; a :class:`~midi_bridge.plugin.PluginError` when it is
    nowhere, its message starting with ``who`` (the generator that asked), if given."""
    p = Path(name).expanduser()
    shared = Path(sys.prefix) / "share" / "midi-bridge" / "models"  # a non-editable install
    for cand in (p, MODELS_DIR / p, MODELS_DIR / p.name, shared / p.name):
        if cand.is_file():
            return cand
    prefix = f"{who}: " if who else ""
    raise PluginError(f"{prefix}checkpoint {name!r} not found (looked in the current folder and {MODELS_DIR})")
