"""bridge/model/theory.py: RL Tuner's metrics and reward on hand-made melodies."""

import pytest

from midi_bridge.model import theory as T


def mel(pitches, step=0.5):
    return [(p, i * step, step) for i, p in enumerate(pitches)]


C_SCALE = mel([60, 62, 64, 65, 67, 69, 71, 72])


def test_c_major_scale_is_in_key_and_starts_on_the_tonic():
    assert T.estimate_key(C_SCALE) == (0, "major")
    m = T.metrics([C_SCALE])
    assert m["notes_not_in_key"] == 0.0
    assert m["starts_with_tonic"] == 100.0
    assert m["excessively_repeated"] == 0.0
    assert m["unique_highest"] == 100.0 and m["unique_lowest"] == 100.0
    assert m["melodies"] == 1 and m["notes"] == 8


def test_key_estimation_minor_and_out_of_key_notes():
    a_minor = mel([69, 71, 72, 74, 76, 72, 71, 69, 68, 69, 64, 69])
    assert T.estimate_key(a_minor) == (9, "minor")
    chromatic = C_SCALE + mel([61, 66], 0.5)  # two chromatic notes appended
    m = T.metrics([chromatic])
    assert m["notes_not_in_key"] == pytest.approx(100 * 2 / 10)


def test_five_repeated_notes_count_as_excessive_repetition():
    m = mel([60, 60, 60, 60, 60, 62])
    assert T.excessive_repeats(m) == [False, False, False, False, True, False]
    assert T.metrics([m])["excessively_repeated"] == pytest.approx(100 / 6, abs=0.01)
    assert T.excessive_repeats(mel([60, 60, 60, 60, 62])) == [False] * 5


def test_leaps_resolved_and_unresolved():
    resolved = mel([60, 67, 65])      # up a fifth, step back down
    unresolved = mel([60, 67, 72])    # up a fifth, then further up
    assert T.leaps(resolved) == [(1, True)]
    assert T.leaps(unresolved) == [(1, False)]
    assert T.leaps(mel([60, 62, 64])) == []
    assert T.leaps(mel([60, 67, 60])) == [(1, False), (2, None)]  # leaping straight back does not resolve
    assert T.metrics([resolved, unresolved])["leaps_resolved"] == 50.0
    assert T.metrics([mel([60, 62])])["leaps_resolved"] is None


def test_motif_and_repeated_motif():
    bar = [60, 62, 64, 60]  # four quarter notes, 3 distinct pitches: a motif
    m = mel(bar + [p + 7 for p in bar] + [65, 65, 65, 65], step=1.0)  # repeated a fifth up, then a bar without one
    mot, rep = T.motifs(m)
    assert mot == [True] * 8 + [False] * 4
    assert rep == [True] * 8 + [False] * 4
    other = mel(bar + [67, 65, 64, 62], step=1.0)
    mot, rep = T.motifs(other)
    assert all(mot) and not any(rep)


def test_autocorrelation_known_values():
    assert T.autocorrelation([1, -1, 1, -1, 1, -1], 1) == pytest.approx(-1.0)
    assert T.autocorrelation([1, -1, 1, -1, 1, -1], 2) == pytest.approx(1.0)
    assert T.sixteenth_grid(mel([60, 62], step=0.5)) == [60, 60, 62, 62]


def test_reward_prefers_in_key_and_penalises_repetition():
    out_of_key = mel([60, 61, 63, 66, 68, 70, 71, 72])
    assert T.reward(C_SCALE, key=(0, "major")) > T.reward(out_of_key, key=(0, "major"))
    assert T.reward(mel([60, 62, 64, 65, 67]), key=(0, "major")) > T.reward(mel([60, 60, 60, 60, 60]), key=(0, "major"))
    assert len(T.note_rewards(C_SCALE)) == len(C_SCALE)
    assert T.reward_per_note([C_SCALE]) == pytest.approx(T.reward(C_SCALE) / 8)


def test_histogram_js_zero_for_identical_and_positive_for_different():
    a = [C_SCALE, mel([67, 65, 64, 62, 60])]
    js = T.histogram_js(a, a)
    assert js == {"pitch_class": 0.0, "interval": 0.0}
    b = [mel([61, 66, 61, 66, 61])]
    js = T.histogram_js(a, b)
    assert js["pitch_class"] > 0.5 and js["interval"] > 0.5
    assert 0 < T.histogram_js([C_SCALE], [mel([60, 62, 64, 65, 67, 69, 71])])["pitch_class"] < 0.2


def test_novelty():
    a, b = mel([60, 62, 64, 65, 67, 69]), mel([60, 64, 59, 67, 61, 70])
    assert T.novelty([a, a]) == [0.0, 0.0]
    assert T.novelty([a, b]) == [1.0, 1.0]


def test_alternating_leaps_are_not_rewarded():
    """The reward hack an early tuning run found: tonic and fifth alternating (every leap
    'resolved' by the leap back) must score below an ordinary stepwise tune."""
    alternating = mel([69, 76] * 16)
    tune = mel([69, 71, 72, 74, 76, 74, 72, 71, 69, 72, 71, 69, 68, 69, 71, 72] * 2)
    assert T.reward(alternating) < 0 < T.reward(tune)
    assert T.metrics([alternating])["leaps_resolved"] == 0.0
