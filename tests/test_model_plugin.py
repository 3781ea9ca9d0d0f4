"""plugins/rnn.py: observe one step per note, lazy interruptible continuation, accompaniment."""

import itertools
import logging

import pytest
import torch

from midi_bridge.model import checkpoint
from midi_bridge.model.encoding import HARMONY_SPEC, NOTE_SPEC
from midi_bridge.model.rnn import EventRNN, ModelConfig
from midi_bridge.plugin import Context, PlayedEvent, PluginError
from midi_bridge.generators.rnn import RNNGenerator


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=16, layers=1, emb=8, head=16)
    checkpoint.save(d / "mel.pt", EventRNN(NOTE_SPEC, 2, cfg), {"styles": ["folk", "chorale"], "mono": True})
    checkpoint.save(d / "harm.pt", EventRNN(HARMONY_SPEC, 1, cfg), {"styles": ["chorale"], "mono": False})
    return d


def ev(on, pitch, beat, vel=90):
    return PlayedEvent(on=on, pitch=pitch, velocity=vel, channel=0, beat=beat, seconds=beat / 2)


def make(ckpts, **kw):
    cfg = {"checkpoint": str(ckpts / "mel.pt"), "harmonizer": str(ckpts / "harm.pt"), "seed": 1, "device": "cpu"}
    cfg.update(kw)
    return RNNGenerator(cfg)


def test_observe_is_one_step_per_note(ckpts):
    g = make(ckpts)
    before = g.st.events
    for i in range(8):
        g.observe(ev(True, 60 + i, i * 0.5))
        g.observe(ev(False, 60 + i, i * 0.5 + 0.25))
    assert g.st.events - before == 8
    # a chord into a monophonic model: only its top note is folded
    g.observe(ev(True, 60, 10.0)), g.observe(ev(True, 67, 10.0)), g.observe(ev(False, 60, 10.5))
    g.observe(ev(False, 67, 11.0))
    assert g.st.events - before == 9


def test_continuation_lazy_and_interruptible(ckpts):
    g = make(ckpts, low=60, high=72, key="C major")
    for i in range(4):
        g.observe(ev(True, 62 + i, i))
        g.observe(ev(False, 62 + i, i + 0.5))
    steps = g.st.events
    it = g.continuation(Context(tempo_bpm=120, beat=5.0, max_notes=8, max_beats=8))
    assert g.st.events == steps  # nothing computed before the first pull
    notes = [next(it) for _ in range(6)]
    assert g.st.events - steps >= 6
    it.close()
    starts = [n.start for n in notes]
    assert starts == sorted(starts) and starts[0] >= 0
    assert all(60 <= n.pitch <= 72 and n.pitch % 12 in (0, 2, 4, 5, 7, 9, 11) for n in notes)
    assert all(n.duration > 0 and 1 <= n.velocity <= 127 for n in notes)
    g.observe(ev(True, 64, 20.0))  # playing on after an interrupted answer works


def test_accompany_voices_below_melody(ckpts):
    g = make(ckpts)
    e = ev(True, 72, 0.0)
    g.observe(e)
    notes = g.accompany(e, Context(tempo_bpm=100, beat=0.0))
    assert all(n.pitch < 72 and n.duration is None for n in notes)
    assert len({n.pitch for n in notes}) == len(notes)


def test_styles_and_missing_files(ckpts, caplog):
    with pytest.raises(PluginError, match="style"):
        make(ckpts, style="jazz")
    with pytest.raises(PluginError, match="^rnn: checkpoint 'nope.pt' not found"):
        make(ckpts, checkpoint="nope.pt")
    with caplog.at_level(logging.WARNING):
        g = make(ckpts, harmonizer="missing.pt")
    assert g.accompany(ev(True, 60, 0), Context(tempo_bpm=100, beat=0)) == ()
    assert "accompaniment is off" in caplog.text


def test_cuda_request_falls_back_with_reason(ckpts, caplog):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with caplog.at_level(logging.WARNING):
        g = make(ckpts, device="cuda")
    assert "using the CPU" in caplog.text
    assert g.st.device.type == "cpu"


def test_int8_option(ckpts):
    g = make(ckpts, int8=True)
    g.observe(ev(True, 60, 0)), g.observe(ev(False, 60, 1))
    assert next(g.continuation(Context(tempo_bpm=120, beat=2.0))).pitch >= 0


def test_copy_knob_moves_the_gate(ckpts):
    g = make(ckpts, copy=-2.0)
    assert g.st.gate_offset == -2.0
    g.st.reset()
    base = g.st._s + float(g.st.gate_bias[g.st.feat])
    assert g.st.gate_logit() == pytest.approx(base - 2.0)


def test_a_closed_answer_leaves_the_state_as_the_player_left_it(ckpts):
    """The engine may pre-sample an answer and discard it unplayed (speculation): closing
    the continuation must restore the recurrent state the played notes built."""
    g = make(ckpts)
    for i in range(4):
        g.observe(ev(True, 60 + 2 * i, i * 0.5))
        g.observe(ev(False, 60 + 2 * i, i * 0.5 + 0.25))
    it = g.continuation(Context(120.0, 2.5, 8, 8.0))
    first = next(it)
    assert first.duration > 0
    h_during = g.st.h.clone()
    it.close()
    g2 = make(ckpts)
    for i in range(4):
        g2.observe(ev(True, 60 + 2 * i, i * 0.5))
        g2.observe(ev(False, 60 + 2 * i, i * 0.5 + 0.25))
    g2.continuation(Context(120.0, 2.5, 8, 8.0))  # folds the pending note, samples nothing
    assert torch.equal(g.st.h, g2.st.h), "the discarded answer left its notes in the state"
    assert not torch.equal(h_during, g.st.h)


def test_a_held_chord_sounds_again_under_a_passing_note(ckpts):
    """The chorale harmonizer may hold its voices (no new attack) under a passing note; in
    accompany mode the old voices ended with the old note, so they must sound again."""
    from midi_bridge.model import encoding as enc

    g = make(ckpts)
    first = ev(True, 67, 0.0)
    g.observe(first)
    g.harm.sample = lambda *a, **k: (0, 67, 7, 12, 19)  # voices a 5th, an octave, a 12th below
    voices = [n.pitch for n in g.accompany(first, Context(120.0, 0.0))]
    assert voices == [60, 55, 48]
    g.harm.sample = lambda *a, **k: (1, 59, enc.NONE, enc.NONE, enc.NONE)  # hold
    passing = ev(True, 59, 0.1)
    g.observe(passing)
    held = sorted(n.pitch for n in g.accompany(passing, Context(120.0, 0.1)))
    assert held == [48, 55]  # 60 does not fit under 59: an octave lower, 48, already sounds
    assert all(n.duration is None for n in g.accompany(passing, Context(120.0, 0.1)))


def test_nan_weights_never_reach_the_output(tmp_path):
    import numpy as np

    from midi_bridge.model.sampling import NonFiniteLogits, sample_index

    rng = np.random.default_rng(0)
    p = np.array([np.nan, 0.2, np.inf, 0.8])
    assert {sample_index(p, rng) for _ in range(50)} <= {1, 3}
    with pytest.raises(NonFiniteLogits, match="NaN or inf"):
        sample_index(np.array([np.nan, np.inf]), rng)
    torch.manual_seed(0)
    model = EventRNN(NOTE_SPEC, 2, ModelConfig(hidden=16, layers=1, emb=8, head=16))
    with torch.no_grad():
        for prm in model.parameters():
            prm.fill_(float("nan"))
    checkpoint.save(tmp_path / "nan.pt", model, {"styles": ["folk", "chorale"], "mono": True})
    with pytest.raises(NonFiniteLogits):  # found at load (the warm-up samples), before any port opens
        RNNGenerator({"checkpoint": str(tmp_path / "nan.pt"), "harmonizer": None, "seed": 1, "device": "cpu"})


def test_live_temperature_reaches_the_sampler(ckpts, monkeypatch):
    gen = make(ckpts)
    seen = []
    real = gen.st.sample
    monkeypatch.setattr(gen.st, "sample", lambda t, *a, **k: seen.append(t) or real(t, *a, **k))
    gen.observe(ev(True, 60, 0.0))
    next(iter(gen.continuation(Context(120.0, 1.0, 8, 8.0, temperature=0.3))))
    next(iter(gen.continuation(Context(120.0, 1.0, 8, 8.0))))
    assert seen[0] == 0.3 and seen[-1] == gen.config["temperature"]


def test_a_model_that_only_waits_ends_its_answer_instead_of_hanging(ckpts, monkeypatch):
    """A pull is O(1): when the sampler keeps choosing WAIT (a pitch range or key the model
    barely covers), next() must not loop for ever inside one call (before: it only came
    back after the sampler chose a pitch, i.e. never for a range the model cannot sample;
    'midi-bridge render' hung and the live bridge only said the budget was overrun)."""
    from midi_bridge.model import encoding as enc

    g = make(ckpts)
    g.observe(ev(True, 60, 0.0)), g.observe(ev(False, 60, 0.5))
    calls = []

    def waits_a_lot(*a, **k):
        calls.append(1)
        return (enc.MAX_DT, enc.WAIT, 0, 0) if len(calls) <= 1000 else (6, 60, 6, 16)

    monkeypatch.setattr(g.st, "sample", waits_a_lot)
    notes = list(itertools.islice(g.continuation(Context(120.0, 1.0, 8, 8.0)), 8))
    assert len(calls) <= 8, f"{len(calls)} samples in one pull"
    assert notes == []


@pytest.mark.parametrize("settings, words", [
    ({"low": 100, "high": 50}, ["low", "high"]),
    ({"low": 61, "high": 61, "key": "C major"}, ["key", "C major", "61"]),
    ({"high": "top"}, ["high"]),
])
def test_a_pitch_range_with_nothing_to_play_is_refused_at_construction(ckpts, settings, words):
    with pytest.raises(ValueError) as e:
        make(ckpts, **settings)
    for w in words:
        assert w in str(e.value), f"{w!r} missing from: {e.value}"


@pytest.mark.parametrize("settings, key", [
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": -1}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": "most"}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"copy": "more"}, "copy"),
    ({"seed": "abc"}, "seed"),
    ({"device": "gpu"}, "device"),
])
def test_bad_sampling_settings_are_refused_at_construction_naming_the_key(ckpts, settings, key):
    """Before: 'temperature: hot' or 'top_p: most' started the bridge and then raised at the
    first answer (the generator was swapped out for thru in the middle of playing)."""
    with pytest.raises(ValueError) as e:
        make(ckpts, **settings)
    assert f"generators.rnn.{key}" in str(e.value)


def test_live_temperature_reaches_the_harmonizer(ckpts, monkeypatch):
    """The performer's temperature knob (Context.temperature) applies in accompany mode too."""
    gen = make(ckpts)
    seen = []
    real = gen.harm.sample
    monkeypatch.setattr(gen.harm, "sample", lambda t, *a, **k: seen.append(t) or real(t, *a, **k))
    e = ev(True, 72, 0.0)
    gen.observe(e)
    gen.accompany(e, Context(120.0, 0.0, temperature=0.3))
    gen.accompany(e, Context(120.0, 0.0))
    assert seen == [0.3, gen.config["temperature"]]


@pytest.fixture(scope="module")
def gan_plugin():
    from midi_bridge.generators.gan import GANGenerator

    return GANGenerator


@pytest.mark.parametrize("settings, key", [
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": -0.5}, "temperature"),
    ({"bars": "four"}, "bars"),
    ({"bars": 0}, "bars"),
    ({"seed": "abc"}, "seed"),
])
def test_gan_bad_settings_are_refused_at_construction_naming_the_key(gan_plugin, settings, key):
    with pytest.raises(ValueError) as e:
        gan_plugin(settings)
    assert f"generators.gan.{key}" in str(e.value)
