"""Rule-based accompaniment: a triad of the estimated key under each played note.

Key finding follows Krumhansl & Schmuckler (C. L. Krumhansl, "Cognitive Foundations of
Musical Pitch", 1990, ch. 4): the pitch-class distribution of what was played is
correlated with the 24 rotations of the Krumhansl-Kessler probe-tone profiles
(Krumhansl & Kessler 1982) and the best-correlated key wins.  Here the distribution is a
histogram that decays with every note-on, so the estimate follows modulations.
"""

from __future__ import annotations

import math
from typing import Sequence

from midi_bridge.model.keys import MAJOR, MINOR, parse_key
from midi_bridge.plugin import Context, Generator, Note, PlayedEvent
from midi_bridge.generators import checked_number

#: Krumhansl-Kessler probe-tone ratings, tonic first.
MAJOR_PROFILE = (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88)
MINOR_PROFILE = (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)

NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")

MAJ, MIN, DIM = (0, 4, 7), (0, 3, 7), (0, 3, 6)
#: Diatonic triads (root offset from the tonic, intervals), in order of preference:
#: tonic, subdominant, dominant, then the others.  Minor uses the harmonic-minor V.
TRIADS = {
    MAJOR: ((0, MAJ), (5, MAJ), (7, MAJ), (9, MIN), (2, MIN), (4, MIN), (11, DIM)),
    MINOR: ((0, MIN), (5, MIN), (7, MAJ), (8, MAJ), (3, MAJ), (10, MAJ), (2, DIM)),
}
#: Scale degrees considered "in key" (minor: natural minor plus the leading tone).
SCALES = {MAJOR: frozenset({0, 2, 4, 5, 7, 9, 11}), MINOR: frozenset({0, 2, 3, 5, 7, 8, 10, 11})}
#: Chromatic fallback: (interval of the played note above the root, triad), in order of
#: preference - third of a major triad (secondary dominant), root of a major triad, root
#: of a minor one, fifth of a major one, third of a minor one, fifth of a minor one.
FALLBACKS = ((4, MAJ), (0, MAJ), (0, MIN), (7, MAJ), (3, MIN), (7, MIN))


def _centred(profile: Sequence[float]) -> tuple[float, ...]:
    """Profile minus its mean, divided by its norm (so a dot product is a correlation)."""
    mean = sum(profile) / 12
    dev = [x - mean for x in profile]
    norm = math.sqrt(sum(d * d for d in dev))
    return tuple(d / norm for d in dev)


#: ``_KEY_WEIGHTS[pc]`` = for each of the 24 keys (12 major tonics, then 12 minor), the
#: centred, normalised profile weight of pitch class ``pc`` in that key.
_MAJ_C, _MIN_C = _centred(MAJOR_PROFILE), _centred(MINOR_PROFILE)
_KEY_WEIGHTS = tuple(
    tuple(_MAJ_C[(pc - t) % 12] for t in range(12)) + tuple(_MIN_C[(pc - t) % 12] for t in range(12))
    for pc in range(12)
)


def key_name(key: tuple[int, str]) -> str:
    return f"{NAMES[key[0]]} {key[1]}"


def choose_triad(pc: int, key: tuple[int, str]) -> tuple[int, tuple[int, ...]]:
    """The triad ``(root pc, pitch classes)`` to harmonise pitch class ``pc`` in ``key``.

    In key: the first diatonic triad containing ``pc`` in :data:`TRIADS` order.  Out of
    key: among the major/minor triads containing ``pc``, the one with the most tones in
    the key, ties broken by :data:`FALLBACKS` order (e.g. F# in C major -> D major,
    V/V; Eb in C major -> C minor, borrowed from the parallel minor).
    """
    tonic, mode = key
    for offset, shape in TRIADS[mode]:
        root = (tonic + offset) % 12
        tones = tuple((root + i) % 12 for i in shape)
        if pc in tones:
            return root, tones
    scale = {(tonic + d) % 12 for d in SCALES[mode]}
    best = None
    for rank, (above_root, shape) in enumerate(FALLBACKS):
        root = (pc - above_root) % 12
        tones = tuple((root + i) % 12 for i in shape)
        score = (sum(t in scale for t in tones), -rank)
        if best is None or score > best[0]:
            best = (score, root, tones)
    return best[1], best[2]


class HarmonyGenerator(Generator):
    """Accompany each played note with a triad of the estimated key, voiced below it.

    ``observe`` folds each note-on into a decaying pitch-class histogram and keeps the 24
    key scores (correlations with the Krumhansl-Kessler profiles, up to a positive
    factor) up to date incrementally: O(24) per note, whatever the history.

    ``accompany`` picks the triad with :func:`choose_triad` and voices it: up to
    ``voices - 1`` chord tones in close position directly below the played note, then
    the root below them as a bass (``spread`` extra octaves lower).  Notes that fall
    under ``low`` are moved up by octaves; any that would then reach the played note
    are dropped.  They last as long as the played note (``duration=None``), at
    ``velocity_scale`` times its velocity.  Before any note has been observed (and after
    ``reset()``: the DAW's Stop, or the generator selected again), the played note is
    taken as the tonic of a major key.

    Config: ``voices`` (1-4), ``spread`` (extra octaves under the bass, 0-2),
    ``velocity_scale``, ``low`` (lowest pitch), ``key`` (None: estimate; or a fixed key
    such as ``"D minor"``), ``decay`` (histogram decay per note-on, 0 < decay <= 1).
    """

    name = "harmony"
    api_version = 1
    modes = frozenset({"accompany"})
    default_config = {"voices": 3, "spread": 0, "velocity_scale": 0.7, "low": 28, "key": None, "decay": 0.95}

    def __init__(self, config=None) -> None:
        super().__init__(config)
        c = self.config
        self.voices = checked_number("harmony", c, "voices", low=1, high=4, integer=True)
        self.spread = checked_number("harmony", c, "spread", low=0, high=2, integer=True)
        self.velocity_scale = float(checked_number("harmony", c, "velocity_scale", low=0))
        self.low = checked_number("harmony", c, "low", low=0, high=127, integer=True)
        self.decay = float(checked_number("harmony", c, "decay", low=0, high=1))
        if self.decay <= 0:
            raise ValueError(f"harmony: generators.harmony.decay must be above 0 (and at most 1), not {self.decay!r}")
        self.fixed_key = parse_key(c["key"]) if c["key"] else None
        self.reset_key()

    def reset(self) -> None:
        """Transport Stop or selected again: a new song may be in another key."""
        self.reset_key()

    def reset_key(self) -> None:
        """Forget the key estimate (the histogram)."""
        self._hist = [0.0] * 12
        self._scores = [0.0] * 24
        self._observed = False

    def observe(self, event: PlayedEvent) -> None:
        if not event.on:
            return
        pc = event.pitch % 12
        d = self.decay
        hist, scores = self._hist, self._scores
        for i in range(12):
            hist[i] *= d
        hist[pc] += 1.0
        w = _KEY_WEIGHTS[pc]
        for k in range(24):
            scores[k] = scores[k] * d + w[k]
        self._observed = True

    def key(self) -> tuple[int, str] | None:
        """The fixed or estimated key ``(tonic pc, "major"|"minor")``; None before any note."""
        if self.fixed_key is not None:
            return self.fixed_key
        if not self._observed:
            return None
        best = max(range(24), key=self._scores.__getitem__)
        return best % 12, (MAJOR if best < 12 else MINOR)

    def histogram(self) -> tuple[float, ...]:
        return tuple(self._hist)

    def accompany(self, event: PlayedEvent, context: Context) -> Sequence[Note]:
        top = event.pitch
        key = self.key() or (top % 12, MAJOR)
        root, tones = choose_triad(top % 12, key)
        upper = []  # chord tones in close position under the played note
        p = top - 1
        while len(upper) < self.voices - 1 and p >= 0:
            if p % 12 in tones:
                upper.append(p)
            p -= 1
        floor = upper[-1] if upper else top
        bass = floor - 1 - (floor - 1 - root) % 12 - 12 * self.spread  # root under the rest
        velocity = max(1, min(127, round(event.velocity * self.velocity_scale)))
        notes, used = [], set()
        for pitch in [bass] + upper:
            while pitch < self.low:
                pitch += 12
            if pitch >= top or pitch in used:
                continue
            used.add(pitch)
            notes.append(Note(pitch=pitch, velocity=velocity, start=0.0, duration=None))
        return notes
