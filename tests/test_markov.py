"""Tests of the PPM model (bridge/model/ppm.py) and the Continuator-style MarkovGenerator
(plugins/markov.py)."""

from __future__ import annotations

import inspect
import itertools
import math
import random

import pytest

from midi_bridge.plugin import Context, Generator, Note, PlayedEvent
from midi_bridge.generators.markov import MarkovGenerator
from midi_bridge.model.ppm import PPM

# --------------------------------------------------------------------------------------
# PPM
# --------------------------------------------------------------------------------------


def total_over_alphabet(model: PPM) -> float:
    return sum(model.prob(t) for t in range(model.alphabet_size))


def check_normalised(model: PPM) -> None:
    probs, escape = model.distribution()
    assert sum(probs.values()) + escape == pytest.approx(1.0, abs=1e-9)
    assert total_over_alphabet(model) == pytest.approx(1.0, abs=1e-9)
    assert all(p > 0 for p in probs.values())


@pytest.mark.parametrize("piece_weight", [0.0, 0.5, 3.0])
@pytest.mark.parametrize("max_order", [0, 1, 3, 8, 10])
def test_ppm_normalises_in_every_state(max_order, piece_weight):
    rng = random.Random(7)
    model = PPM(max_order=max_order, alphabet_size=12, piece_weight=piece_weight)
    check_normalised(model)  # nothing learned: uniform order -1
    assert model.prob(3) == pytest.approx(1 / 12)
    for step in range(200):
        model.update(rng.choice([0, 1, 2, 3, 4, 5, 5, 5]), train=step % 7 != 0)
        if step % 23 == 0:
            check_normalised(model)
        if step == 100:
            model.reset_context()
            check_normalised(model)
    check_normalised(model)
    assert model.prob(11) > 0  # an unseen token gets its share of the escape


def test_ppm_exclusion_by_hand():
    # a b a b a: order 1 after "a" has seen only b (2x); order 0 has a:3, b:2.
    model = PPM(max_order=1, alphabet_size=4)
    for t in "ababa":
        model.update(t)
    probs, escape = model.distribution()
    assert probs["b"] == pytest.approx(2 / 3)  # 2 / (2 + 1)
    # Exclusion: b is left out at order 0, so a gets 1/3 * 3 / (3 + 1), not 1/3 * 3/7.
    assert probs["a"] == pytest.approx(1 / 4)
    assert escape == pytest.approx(1 / 12)
    assert model.prob("c") == model.prob("d") == pytest.approx(1 / 24)
    assert model.log2prob("b") == pytest.approx(math.log2(2 / 3))


def test_ppm_exhausted_alphabet_renormalises():
    model = PPM(max_order=2, alphabet_size=3)
    for t in [0, 1, 2, 0, 1]:
        model.update(t)
    probs, escape = model.distribution()
    assert escape == 0.0
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-12)
    assert model.prob(99) == 0.0 and model.log2prob(99) == -math.inf


def test_ppm_higher_order_learns_repeated_pattern():
    # After a 0 the next token is ambiguous at order 1 but determined at order 2.
    pattern = [0, 1, 0, 2, 0, 3]
    model = PPM(max_order=4, alphabet_size=8)
    for t in pattern * 20:
        model.update(t)
    for nxt in pattern * 2:
        assert model.prob(nxt) > 0.9
        model.update(nxt)
    low = PPM(max_order=1, alphabet_size=8)
    for t in pattern * 20 + [0]:
        low.update(t)
    assert low.prob(1) < 0.5


def bits_per_token(model: PPM, seq) -> float:
    bits = 0.0
    for t in seq:
        bits -= model.log2prob(t)
        model.update(t)
    return bits / len(seq)


def test_ppm_bits_lower_than_unigram_on_repetitive_sequence():
    seq = [0, 4, 7, 4, 0, 4, 7, 12, 7, 4] * 30
    high = bits_per_token(PPM(max_order=6, alphabet_size=128), seq)
    unigram = bits_per_token(PPM(max_order=0, alphabet_size=128), seq)
    assert high < 0.5 * unigram
    assert high < 0.5


def test_ppm_update_work_independent_of_history():
    model = PPM(max_order=5, alphabet_size=64)
    rng = random.Random(1)
    costs = []
    for _ in range(3000):
        before = model.ops
        model.update(rng.randrange(64))
        costs.append(model.ops - before)
    assert max(costs) == 6 and costs[-1000:] == [6] * 1000
    piece = PPM(max_order=5, piece_weight=1.0)
    before = piece.ops
    for t in range(10):
        piece.update(t)
    assert piece.ops - before <= 2 * 6 * 10  # global + in-piece tables


def test_ppm_piece_table_learns_the_piece_and_is_cleared():
    train = [0, 1, 2, 3] * 30
    piece = [0, 1, 5, 3] * 3 + [0, 1]  # a variant the global model has rarely seen

    def run(weight):
        model = PPM(max_order=3, alphabet_size=8, piece_weight=weight)
        for t in train:
            model.update(t)
        model.reset_context()
        for t in piece:
            model.update(t, train=False)
        return model

    plain, adaptive = run(0.0), run(4.0)
    assert adaptive.prob(5) > plain.prob(5) + 0.2
    check_normalised(adaptive)
    adaptive.reset_context()  # clears the in-piece table, keeps the global counts
    plain.reset_context()
    assert adaptive.prob(0) == pytest.approx(plain.prob(0))
    assert adaptive.distribution()[0] == pytest.approx(plain.distribution()[0])


def test_ppm_sample():
    model = PPM(max_order=2, alphabet_size=16)
    assert model.sample(random.Random(0)) is None
    for t in [1, 2, 3] * 10 + [1, 2]:
        model.update(t)
    assert model.sample(random.Random(0), temperature=0) == 3
    draws = [model.sample(random.Random(s)) for s in range(50)]
    assert set(draws) <= {1, 2, 3} and draws.count(3) > 40
    assert draws == [model.sample(random.Random(s)) for s in range(50)]


# --------------------------------------------------------------------------------------
# MarkovGenerator
# --------------------------------------------------------------------------------------


class Player:
    """Feeds note-on/note-off pairs to a generator, advancing a beat clock."""

    def __init__(self, gen: MarkovGenerator) -> None:
        self.gen, self.beat = gen, 0.0

    def note(self, pitch, ioi=0.5, dur=0.4, velocity=90):
        self.gen.observe(PlayedEvent(True, pitch, velocity, 0, self.beat, self.beat / 2))
        self.gen.observe(PlayedEvent(False, pitch, 0, 0, self.beat + dur, (self.beat + dur) / 2))
        self.beat += ioi

    def phrase(self, pitches, iois=None, durs=None, vels=None, gap=1.0):
        n = len(pitches)
        for p, i, d, v in zip(pitches, iois or [0.5] * n, durs or [0.4] * n, vels or [90] * n):
            self.note(p, i, d, v)
        self.beat += gap


MOTIF = [60, 62, 64, 67, 65, 64, 62, 60]
IOIS = [0.5, 0.25, 0.25, 1.0, 0.5, 0.5, 0.5, 1.0]
DURS = [0.45, 0.2, 0.2, 0.9, 0.45, 0.45, 0.45, 0.9]
VELS = [100, 70, 80, 110, 90, 85, 80, 75]


def trained(**config) -> tuple[MarkovGenerator, Player]:
    gen = MarkovGenerator({"seed": 3, **config})
    player = Player(gen)
    for _ in range(3):
        player.phrase(MOTIF, IOIS, DURS, VELS)
    return gen, player


def ctx(**kw) -> Context:
    return Context(tempo_bpm=120.0, beat=0.0, **kw)


def test_plugin_declaration():
    assert issubclass(MarkovGenerator, Generator)
    assert MarkovGenerator.modes == frozenset({"continue"})
    assert set(MarkovGenerator.default_config) == {"order", "temperature", "max_history", "low", "high", "seed",
                                                   "predictor", "stm_order", "b", "mix"}


def test_empty_before_any_input():
    gen = MarkovGenerator({"seed": 0})
    assert list(gen.continuation(ctx(max_notes=8))) == []
    gen.observe(PlayedEvent(False, 60, 0, 0, 0.0, 0.0))  # a stray note-off teaches nothing
    assert list(gen.continuation(ctx(max_notes=8))) == []


def test_continuation_is_lazy_and_closable():
    gen, _ = trained()
    calls = []
    original = gen._next_event
    gen._next_event = lambda c: calls.append(1) or original(c)
    it = gen.continuation(ctx())  # no limits: an endless stream, only lazy code survives
    assert inspect.isgenerator(it) and calls == []
    first = next(it)
    assert isinstance(first, Note) and len(calls) == 1
    assert len(list(itertools.islice(it, 5))) == 5 and len(calls) == 6
    it.close()
    with pytest.raises(StopIteration):
        next(it)
    assert len(calls) == 6


def test_respects_max_notes_and_max_beats():
    gen, _ = trained()
    assert len(list(gen.continuation(ctx(max_notes=5)))) == 5
    notes = list(gen.continuation(ctx(max_beats=6.0)))
    assert notes and all(n.start < 6.0 and n.start + n.duration <= 6.0 + 1e-9 for n in notes)
    assert len(list(gen.continuation(ctx(max_notes=3, max_beats=100.0)))) == 3


def test_notes_are_well_formed():
    gen, _ = trained(temperature=1.5)
    notes = list(gen.continuation(ctx(max_notes=60)))
    assert len(notes) == 60
    starts = [n.start for n in notes]
    assert starts[0] == 0.0 and starts == sorted(starts)
    assert all(n.duration is not None and n.duration > 0 for n in notes)
    assert all(0 <= n.pitch <= 127 and 1 <= n.velocity <= 127 for n in notes)


def test_pitch_range():
    gen, player = trained(low=58, high=63)
    player.phrase([62, 64, 65])
    notes = list(gen.continuation(ctx(max_notes=40)))
    assert notes and all(58 <= n.pitch <= 63 for n in notes)


@pytest.mark.parametrize("settings", [{"predictor": "backoff"}, {"predictor": "idyom", "temperature": 0.0}])
def test_reproduces_motif_transposed_with_player_timing_and_dynamics(settings):
    gen, player = trained(order=4, **settings)
    gen.reset()  # a new phrase: the motif's first four notes, a fourth higher
    player.phrase([p + 5 for p in MOTIF[:4]], IOIS[:4], DURS[:4], VELS[:4])
    notes = list(gen.continuation(ctx(max_notes=4)))
    assert [n.pitch for n in notes] == [p + 5 for p in MOTIF[4:8]]
    assert [n.velocity for n in notes] == VELS[4:8]
    assert [n.duration for n in notes] == pytest.approx(DURS[4:8])
    assert [n.start for n in notes] == pytest.approx([0.0, 0.5, 1.0, 1.5])  # IOIS[4:7]


def test_same_seed_same_answer():
    a, _ = trained(temperature=2.0)
    b, _ = trained(temperature=2.0)
    assert list(a.continuation(ctx(max_notes=30))) == list(b.continuation(ctx(max_notes=30)))


def test_reset_keeps_learning_forget_erases():
    gen, _ = trained()
    size = gen.history_size
    gen.reset()
    assert gen.history_size == size == 3 * len(MOTIF)
    assert len(list(gen.continuation(ctx(max_notes=4)))) == 4
    gen.forget()
    assert gen.history_size == 0
    assert list(gen.continuation(ctx(max_notes=4))) == []


def test_observe_work_does_not_grow_with_history():
    order, max_history = 4, 200
    gen = MarkovGenerator({"seed": 1, "order": order, "max_history": max_history})
    player = Player(gen)
    rng = random.Random(5)
    costs = []
    for _ in range(5000):
        before = gen.ops
        player.note(rng.randrange(55, 80), ioi=rng.choice([0.25, 0.5, 1.0]))
        costs.append(gen.ops - before)
    assert gen.history_size == max_history
    per_note = 2 * (order + 1) + 2 * (gen.stm_order + 1)  # insertions and removals, both models
    assert max(costs) <= per_note
    assert costs[300:1000] == costs[-700:] == [per_note] * 700
    assert len(gen._index) <= max_history * (order + 1)
    notes = list(gen.continuation(ctx(max_notes=10)))
    assert len(notes) == 10



@pytest.mark.parametrize("predictor, draw", [("idyom", "choose_index"), ("backoff", "choose")])
def test_the_performers_live_temperature_overrides_the_configured_one(monkeypatch, predictor, draw):
    """The temperature knob / the status screen's +/- (Context.temperature, contract 1.1) is
    'the generator's sampling temperature' (docs/controllers.md); before, markov ignored it
    and always sampled at its configured temperature."""
    import midi_bridge.generators.markov as markov

    gen, _ = trained(temperature=1.0, predictor=predictor)
    seen = []
    real = getattr(markov, draw)
    monkeypatch.setattr(markov, draw, lambda rng, w, t: seen.append(t) or real(rng, w, t))
    list(gen.continuation(ctx(max_notes=4, temperature=0.3)))
    assert seen and set(seen) == {0.3}
    seen.clear()
    list(gen.continuation(ctx(max_notes=4)))  # not set by the performer: the configured one
    assert seen and set(seen) == {1.0}


@pytest.mark.parametrize("settings, key", [
    ({"order": "four"}, "order"), ({"order": -1}, "order"), ({"temperature": "hot"}, "temperature"),
    ({"max_history": 0}, "max_history"), ({"low": 200}, "low"), ({"high": "C5"}, "high"),
    ({"low": 80, "high": 60}, "low"), ({"seed": 1.5}, "seed"), ({"predictor": "lstm"}, "predictor"),
    ({"mix": "harmonic"}, "mix"), ({"b": -1}, "b"), ({"stm_order": "x"}, "stm_order"),
])
def test_bad_settings_are_refused_naming_the_key(settings, key):
    """Before: 'invalid literal for int()' with no setting named, or low > high silently
    folded every answer onto one pitch."""
    with pytest.raises(ValueError) as e:
        MarkovGenerator(settings)
    assert f"generators.markov.{key}" in str(e.value)


def test_generator_predicts_with_the_offline_idyom_mixture():
    """The live predictor is the evaluator's: a long-term PPM of everything played, a
    short-term PPM of the phrase (order stm_order), entropy-weighted (same b, same mix)."""
    from midi_bridge.generators.markov import TOKEN_ALPHABET
    from midi_bridge.model.idyom import Prior, mix

    for kind in ("arithmetic", "geometric"):
        gen = MarkovGenerator({"seed": 2, "order": 3, "stm_order": 2, "b": 1.5, "mix": kind})
        player = Player(gen)
        rng = random.Random(4)
        ltm = PPM(max_order=3, alphabet_size=TOKEN_ALPHABET)
        for phrase in range(3):
            gen.reset()
            ltm.reset_context()
            stm = PPM(max_order=2, alphabet_size=TOKEN_ALPHABET, piece_weight=1.0)
            for _ in range(25):
                player.note(rng.choice([60, 62, 64, 65, 67]), ioi=rng.choice([0.25, 0.5, 1.0]))
                token = gen._context[-1]
                ltm.update(token)
                stm.update(token, train=False)
            live = gen.predict(gen._context)
            offline = mix([ltm.distribution(), stm.distribution()], Prior.uniform(TOKEN_ALPHABET), 1.5, kind)
            assert live.weights == pytest.approx(offline.weights, rel=1e-9)
            for t in gen._tokens:
                assert live.prob(t) == pytest.approx(offline.prob(t), rel=1e-9, abs=1e-15)
