"""Key names as the configuration writes them: ``"D minor"``, ``"Dm"``, ``"F# major"``,
``"Bb"`` -> ``(tonic pitch class, mode)``, mode :data:`MAJOR` or :data:`MINOR`.

Shared by the generators that take a ``key`` setting (``harmony``'s fixed key, ``rnn``'s
answer scale, :func:`midi_bridge.model.sampling.key_mask`).
"""

from __future__ import annotations

MAJOR, MINOR = "major", "minor"

_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def parse_key(text: str) -> tuple[int, str]:
    """``"D minor"``, ``"Dm"``, ``"F# major"``, ``"Bb"`` -> ``(tonic pitch class, mode)``;
    a ``ValueError`` for anything else."""
    s = text.strip()
    if not s or s[0].upper() not in _PC:
        raise ValueError(f"not a key: {text!r}")
    pc, rest = _PC[s[0].upper()], s[1:].strip()
    while rest[:1] in ("#", "b", "♯", "♭"):
        pc += 1 if rest[0] in "#♯" else -1
        rest = rest[1:].strip()
    mode = "major" if rest == "M" else rest.lower()
    if mode in ("", "maj", "major"):
        return pc % 12, MAJOR
    if mode in ("m", "min", "minor"):
        return pc % 12, MINOR
    raise ValueError(f"not a key: {text!r}")
