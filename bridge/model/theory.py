"""Music-theory metrics and reward for monophonic melodies (RL Tuner, Jaques et al. 2017).

A melody is a list of ``(midi_pitch, start_beats, duration_beats)`` tuples in onset order.
Everything here is a pure function of such lists (see docs/models.md, "Music-theory
evaluation" and "RL fine-tuning").
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

Note = tuple[int, float, float]
Melody = Sequence[Note]

INTERVAL_CLIP = 12  # melodic intervals are histogrammed in -12..+12 semitones (clipped)


def _normalise(counts: Sequence[float]) -> list[float]:
    total = float(sum(counts))
    if total <= 0:
        return [1.0 / len(counts)] * len(counts)
    return [c / total for c in counts]


def js_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon divergence in bits (0 = identical, 1 = disjoint) of two histograms."""
    if len(p) != len(q):
        raise ValueError("histograms must have the same length")
    p, q = _normalise(p), _normalise(q)
    js = 0.0
    for a, b in zip(p, q):
        m = 0.5 * (a + b)
        if a > 0:
            js += 0.5 * a * math.log2(a / m)
        if b > 0:
            js += 0.5 * b * math.log2(b / m)
    return max(0.0, js)


def pitch_class_histogram(melodies: Iterable[Melody]) -> list[int]:
    counts = [0] * 12
    for mel in melodies:
        for p, _s, _d in mel:
            counts[int(p) % 12] += 1
    return counts


def interval_histogram(melodies: Iterable[Melody], clip: int = INTERVAL_CLIP) -> list[int]:
    """Counts of melodic intervals (next pitch - pitch), clipped to ``-clip..+clip``."""
    counts = [0] * (2 * clip + 1)
    for mel in melodies:
        for (a, _s, _d), (b, _s2, _d2) in zip(mel, mel[1:]):
            iv = max(-clip, min(clip, int(b) - int(a)))
            counts[iv + clip] += 1
    return counts


def histogram_js(melodies: Iterable[Melody], reference: Iterable[Melody]) -> dict:
    """Jensen-Shannon divergences (bits) of the pitch-class and interval histograms of
    ``melodies`` to those of ``reference``: ``{"pitch_class": float, "interval": float}``."""
    melodies, reference = list(melodies), list(reference)
    return {
        "pitch_class": js_divergence(pitch_class_histogram(melodies),
                                     pitch_class_histogram(reference)),
        "interval": js_divergence(interval_histogram(melodies), interval_histogram(reference)),
    }


# -- melodies -------------------------------------------------------------------------
def melody_from_events(rows, start_beats: float = 0.0) -> list[Note]:
    """Note-view event rows ``(dt, pitch, dur, vel)`` -> a melody (WAIT rows skipped; in a
    chord only the first, i.e. highest, note is kept)."""
    from .encoding import STEPS_PER_BEAT, WAIT

    out: list[Note] = []
    t = 0
    last = None
    for dt, pitch, dur, _vel in (tuple(int(v) for v in r[:4]) for r in rows):
        t += dt
        if pitch == WAIT or t == last:
            continue
        out.append((pitch, start_beats + t / STEPS_PER_BEAT, dur / STEPS_PER_BEAT))
        last = t
    return out


# -- key ------------------------------------------------------------------------------
# Krumhansl-Kessler key profiles (Krumhansl 1990), index 0 = the tonic.
KK_MAJOR = (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88)
KK_MINOR = (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)
MAJOR_SCALE = frozenset((0, 2, 4, 5, 7, 9, 11))
#: natural minor plus the raised 6th and 7th (harmonic / melodic minor), as tunes use them
MINOR_SCALE = frozenset((0, 2, 3, 5, 7, 8, 10, 9, 11))


def _corr(a: Sequence[float], b: Sequence[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    da = math.sqrt(sum((x - ma) ** 2 for x in a))
    db = math.sqrt(sum((y - mb) ** 2 for y in b))
    return num / (da * db) if da > 0 and db > 0 else 0.0


def estimate_key(melody: Melody) -> tuple[int, str]:
    """``(tonic pitch class, "major" | "minor")`` by the Krumhansl-Schmuckler method: the
    duration-weighted pitch-class histogram correlated with the 24 rotated key profiles
    (ties: the lower tonic, major first).  An empty melody is C major."""
    hist = [0.0] * 12
    for p, _s, d in melody:
        hist[int(p) % 12] += max(float(d), 1e-3)
    if sum(hist) <= 0:
        return 0, "major"
    best = (-2.0, 0, "major")
    for mode, prof in (("major", KK_MAJOR), ("minor", KK_MINOR)):
        for t in range(12):
            rot = [prof[(pc - t) % 12] for pc in range(12)]
            c = _corr(hist, rot)
            if c > best[0] + 1e-12:
                best = (c, t, mode)
    return best[1], best[2]


def in_key(pitch: int, key: tuple[int, str]) -> bool:
    scale = MAJOR_SCALE if key[1] == "major" else MINOR_SCALE
    return (int(pitch) - key[0]) % 12 in scale


# -- per-note facts -------------------------------------------------------------------
REPEAT_LIMIT = 4  # a pitch played more than 4 times in a row is excessive repetition
LEAP = 7  # a leap is an interval of a fifth (7 semitones) or more
RESOLVE_MAX = 4  # ... resolved by a step or a third back
AUTOCORR_THRESHOLD = 0.15  # RL Tuner penalises |autocorrelation| above 0.15 at lags 1-3
BAR_BEATS = 4.0  # motifs are looked for in bars of 4 beats (16 sixteenths)
MOTIF_MIN_PITCHES = 3
AUTOCORR_LAGS = (1, 2, 3)


def excessive_repeats(melody: Melody) -> list[bool]:
    """Per note: it is the 5th (or later) consecutive note of the same pitch."""
    out, run = [], 0
    for i, (p, _s, _d) in enumerate(melody):
        run = run + 1 if i and int(p) == int(melody[i - 1][0]) else 1
        out.append(run > REPEAT_LIMIT)
    return out


def leaps(melody: Melody) -> list[tuple[int, bool | None]]:
    """``(index of the note that leapt, resolved)`` for each leap (|interval| >= a fifth):
    resolved when the next interval moves back in the opposite direction by a step or a
    third (1-4 semitones); leaping straight back (or on) does not resolve it (RL Tuner
    also refuses an immediate leap back); ``None`` when the melody ends right after the
    leap (not counted)."""
    out = []
    pitches = [int(p) for p, _s, _d in melody]
    for i in range(1, len(pitches)):
        iv = pitches[i] - pitches[i - 1]
        if abs(iv) < LEAP:
            continue
        if i + 1 >= len(pitches):
            out.append((i, None))
            continue
        nxt = pitches[i + 1] - pitches[i]
        out.append((i, nxt != 0 and (nxt > 0) != (iv > 0) and abs(nxt) <= RESOLVE_MAX))
    return out


def _to_16th(beats: float) -> int:
    return int(math.floor(beats * 4 + 1e-6))


def motifs(melody: Melody) -> tuple[list[bool], list[bool]]:
    """Per note: (in a motif, in a repeated motif).  The melody is cut into bars of 4 beats
    from its first onset; a bar is a *motif* when its notes have at least 3 distinct
    pitches.  Its pattern is its notes' onsets on the 16th-note grid (relative to the bar)
    and pitches relative to its first note; a motif is *repeated* when another bar of the
    melody has the same pattern (so a transposed repeat counts)."""
    n = len(melody)
    if not n:
        return [], []
    t0 = float(melody[0][1])
    bars: dict[int, list[int]] = {}
    for i, (_p, s, _d) in enumerate(melody):
        bars.setdefault(int(math.floor((float(s) - t0) / BAR_BEATS + 1e-9)), []).append(i)
    in_motif, in_rep = [False] * n, [False] * n
    patterns: dict[tuple, list[int]] = {}
    for b, idx in bars.items():
        if len({int(melody[i][0]) for i in idx}) < MOTIF_MIN_PITCHES:
            continue
        p0 = int(melody[idx[0]][0])
        pat = tuple((int(melody[i][0]) - p0, _to_16th(float(melody[i][1]) - t0 - b * BAR_BEATS)) for i in idx)
        patterns.setdefault(pat, []).append(b)
        for i in idx:
            in_motif[i] = True
    for pat, bs in patterns.items():
        if len(bs) > 1:
            for b in bs:
                for i in bars[b]:
                    in_rep[i] = True
    return in_motif, in_rep


def autocorrelation(values: Sequence[float], lag: int) -> float:
    """Pearson autocorrelation of a sequence at ``lag`` (0.0 when undefined)."""
    if len(values) <= lag + 1:
        return 0.0
    return _corr(values[:-lag], values[lag:])


def pitch_autocorrelation(melody: Melody, lags=AUTOCORR_LAGS) -> list[float]:
    """Autocorrelation of the pitch sequence sampled on the 16th-note grid (the pitch
    sounding at each 16th from the first onset to the last note's end; a rest holds the
    previous pitch), at each lag in 16ths."""
    grid = sixteenth_grid(melody)
    return [autocorrelation(grid, k) for k in lags]


def sixteenth_grid(melody: Melody) -> list[int]:
    if not melody:
        return []
    t0 = float(melody[0][1])
    out: list[int] = []
    for i, (p, s, d) in enumerate(melody):
        a = _to_16th(float(s) - t0)
        nxt = _to_16th(float(melody[i + 1][1]) - t0) if i + 1 < len(melody) else a + max(1, round(float(d) * 4))
        if nxt > len(out):  # a note shorter than a 16th that shares a 16th is dropped
            out.extend([int(p)] * (nxt - len(out)))
    return out


# -- the metrics (RL Tuner's table) ----------------------------------------------------
METRIC_KEYS = ("notes_not_in_key", "excessively_repeated", "leaps_resolved", "notes_in_motif",
               "notes_in_repeated_motif", "starts_with_tonic", "unique_highest", "unique_lowest",
               "autocorr_lag1", "autocorr_lag2", "autocorr_lag3")


def melody_facts(melody: Melody, key=None) -> dict:
    """Counts for one melody (summed over melodies by :func:`metrics`)."""
    key = key or estimate_key(melody)
    pitches = [int(p) for p, _s, _d in melody]
    lp = leaps(melody)
    mot, rep = motifs(melody)
    ac = pitch_autocorrelation(melody)
    return {
        "notes": len(pitches),
        "out_of_key": sum(not in_key(p, key) for p in pitches),
        "repeated": sum(excessive_repeats(melody)),
        "leaps": sum(r is not None for _i, r in lp),
        "resolved": sum(bool(r) for _i, r in lp),
        "motif": sum(mot), "repeated_motif": sum(rep),
        "tonic": bool(pitches) and pitches[0] % 12 == key[0],
        "unique_high": bool(pitches) and pitches.count(max(pitches)) == 1,
        "unique_low": bool(pitches) and pitches.count(min(pitches)) == 1,
        "autocorr": ac,
    }


def metrics(melodies: Iterable[Melody]) -> dict:
    """RL Tuner's metrics over a set of melodies, in percent (autocorrelations as values):
    of all notes, not in the melody's key / excessively repeated / in a motif / in a
    repeated motif; of all leaps, resolved; of all melodies, starting with the tonic /
    with a unique highest / lowest note; mean autocorrelation at lags 1-3 (16ths)."""
    facts = [melody_facts(m) for m in melodies if len(m)]
    notes = sum(f["notes"] for f in facts) or 1
    mels = len(facts) or 1
    leaps_n = sum(f["leaps"] for f in facts)

    def pct(x, n):
        return round(100.0 * x / n, 2)
    out = {
        "notes_not_in_key": pct(sum(f["out_of_key"] for f in facts), notes),
        "excessively_repeated": pct(sum(f["repeated"] for f in facts), notes),
        "leaps_resolved": pct(sum(f["resolved"] for f in facts), leaps_n) if leaps_n else None,
        "notes_in_motif": pct(sum(f["motif"] for f in facts), notes),
        "notes_in_repeated_motif": pct(sum(f["repeated_motif"] for f in facts), notes),
        "starts_with_tonic": pct(sum(f["tonic"] for f in facts), mels),
        "unique_highest": pct(sum(f["unique_high"] for f in facts), mels),
        "unique_lowest": pct(sum(f["unique_low"] for f in facts), mels),
    }
    for j, lag in enumerate(AUTOCORR_LAGS):
        out[f"autocorr_lag{lag}"] = round(sum(f["autocorr"][j] for f in facts) / mels, 4)
    out["melodies"] = len(facts)
    out["notes"] = sum(f["notes"] for f in facts)
    return out


# -- the reward ------------------------------------------------------------------------
#: Weights of the music-theory terms (after RL Tuner's reward, scaled per note).
WEIGHTS = {
    "out_of_key": -1.0,       # each note not in the key
    "tonic": 1.0,             # the first note is the tonic (once per melody)
    "repeated": -1.0,         # each excessively repeated note
    "leap_resolved": 0.5,     # on the note that resolves a leap
    "leap_unresolved": -0.5,  # on the note after a leap that does not resolve it
    "motif": 0.1,             # each note in a motif
    "repeated_motif": 0.2,    # each note in a repeated motif (in addition)
    "preferred_interval": 0.1,  # into the note: a step, third, fourth, fifth or octave
    "bad_interval": -0.5,     # into the note: tritone, seventh, or more than an octave
    "unique_extreme": 0.5,    # highest / lowest note unique (each, once per melody)
    "autocorr": -0.2,         # each note: times the mean over lags 1-3 of the intervals'
                              # |autocorrelation| where it exceeds 0.15
}
PREFERRED = frozenset((1, 2, 3, 4, 5, 7, 12))
BAD = frozenset((6, 10, 11))


def note_rewards(melody: Melody, key=None, weights: dict | None = None) -> list[float]:
    """The music-theory reward of each note (the tonic on the first note, the unique
    extremes on the last, the autocorrelation penalty on every note)."""
    w = dict(WEIGHTS, **(weights or {}))
    n = len(melody)
    if not n:
        return []
    key = key or estimate_key(melody)
    pitches = [int(p) for p, _s, _d in melody]
    r = [0.0] * n
    for i, p in enumerate(pitches):
        if not in_key(p, key):
            r[i] += w["out_of_key"]
        if i:
            iv = abs(p - pitches[i - 1])
            if iv in PREFERRED:
                r[i] += w["preferred_interval"]
            elif iv in BAD or iv > 12:
                r[i] += w["bad_interval"]
    if pitches[0] % 12 == key[0]:
        r[0] += w["tonic"]
    for i, rep in enumerate(excessive_repeats(melody)):
        if rep:
            r[i] += w["repeated"]
    for i, res in leaps(melody):
        if res is not None:
            r[i + 1] += w["leap_resolved"] if res else w["leap_unresolved"]
    mot, rep = motifs(melody)
    for i in range(n):
        r[i] += w["motif"] * mot[i] + w["repeated_motif"] * rep[i]
    if pitches.count(max(pitches)) == 1:
        r[-1] += w["unique_extreme"]
    if pitches.count(min(pitches)) == 1:
        r[-1] += w["unique_extreme"]
    ivs = [b - a for a, b in zip(pitches, pitches[1:])]
    acs = [abs(autocorrelation(ivs, k)) for k in AUTOCORR_LAGS]
    ac = sum(a for a in acs if a > AUTOCORR_THRESHOLD) / len(AUTOCORR_LAGS)
    for i in range(n):
        r[i] += w["autocorr"] * ac
    return r


def reward(melody: Melody, key=None, weights: dict | None = None) -> float:
    """Total music-theory reward of a melody."""
    return float(sum(note_rewards(melody, key, weights)))


def reward_per_note(melodies: Iterable[Melody], weights: dict | None = None) -> float:
    """Summed reward over summed notes of a set of melodies."""
    total, notes = 0.0, 0
    for m in melodies:
        total += reward(m, weights=weights)
        notes += len(m)
    return total / max(1, notes)


# -- diversity ---------------------------------------------------------------------------
def interval_ngrams(melody: Melody, n: int = 4) -> set:
    p = [int(x) for x, _s, _d in melody]
    ivs = tuple(b - a for a, b in zip(p, p[1:]))
    return {ivs[i:i + n] for i in range(len(ivs) - n + 1)}


def novelty(melodies: Sequence[Melody], n: int = 4) -> list[float]:
    """Per melody: 1 - the largest Jaccard overlap of its interval n-grams with any other
    melody of the set (1 = shares nothing with the others, 0 = a copy of one of them)."""
    sets = [interval_ngrams(m, n) for m in melodies]
    out = []
    for i, a in enumerate(sets):
        best = 0.0
        for j, b in enumerate(sets):
            if i != j and (a or b):
                best = max(best, len(a & b) / max(1, len(a | b)))
        out.append(1.0 - best)
    return out
