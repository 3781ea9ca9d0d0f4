"""EventRNN and the step API: the hand-written step equals the trained network."""

import numpy as np
import pytest
import torch

from midi_bridge.model.cache import JOURNAL_LIMIT, PieceCache, piece_features
from midi_bridge.model.encoding import HARMONY_SPEC, NOTE_SPEC
from midi_bridge.model.rnn import EventRNN, ModelConfig
from midi_bridge.model.sampling import key_mask, pitch_range_mask, sample_index
from midi_bridge.model.step import Stepper


def tiny(kind="gru", copy=True, spec=NOTE_SPEC, seed=0):
    torch.manual_seed(seed)
    m = EventRNN(spec, 2, ModelConfig(kind=kind, hidden=32, layers=2, emb=16, head=24, dropout=0.0, copy=copy))
    with torch.no_grad():  # make the copy gates matter
        if copy:
            m.gate_bias.weight.normal_(0, 2)
    return m.eval()


def piece(n=40, seed=0):
    rng = np.random.default_rng(seed)
    motif = np.stack([rng.integers(1, 13, 8), rng.integers(55, 80, 8), rng.integers(1, 13, 8),
                      rng.integers(0, 32, 8)], 1)
    return np.concatenate([motif] * (n // 8)).astype(np.int64)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
@pytest.mark.parametrize("copy", [False, True])
def test_step_matches_forward(kind, copy):
    m = tiny(kind, copy)
    rows = piece()
    cand, q, feat = piece_features(rows, NOTE_SPEC.sizes)
    x = torch.from_numpy(rows)[None]
    with torch.no_grad():
        logp, correct, _ = m(x, torch.tensor([1]), torch.from_numpy(cand.astype(np.int64))[None],
                             torch.from_numpy(q)[None], torch.from_numpy(feat.astype(np.int64))[None])
    st = Stepper(m)
    st.reset(style=1)
    for t, ev in enumerate(rows.tolist()):
        assert st.log_prob(ev) == pytest.approx(float(logp[0, t].sum()), abs=1e-4)
        st.feed(ev)
    if copy:
        assert (feat[9:] > 0).all() and np.allclose(q[9:].sum(-1), 1.0)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_int8_close_to_float(monkeypatch, kind):
    from midi_bridge.model import step

    monkeypatch.setattr(step, "INT8_MIN_SIZE", 0)  # (the tiny model's matrices: all int8)
    m = tiny(kind, True)
    rows = piece()
    a, b = Stepper(m), Stepper(m, int8=True)
    if "fbgemm" in torch.backends.quantized.supported_engines:
        assert b.int8 and not a.int8
    a.reset(), b.reset()
    for ev in rows.tolist():
        assert abs(a.log_prob(ev) - b.log_prob(ev)) < 0.2
        a.feed(ev), b.feed(ev)


def test_snapshot_restore_and_sampling_masks():
    st = Stepper(tiny("lstm", True), seed=3)
    st.reset()
    for ev in piece(16).tolist():
        st.feed(ev)
    snap = st.snapshot()
    before = st.probs(0, ())
    mask = key_mask(0) & pitch_range_mask(60, 72)
    evs = []
    for _ in range(20):
        ev = st.sample(temperature=1.2, top_p=0.9, masks={"pitch": mask})
        assert ev[1] == 128 or (60 <= ev[1] <= 72 and ev[1] % 12 in (0, 2, 4, 5, 7, 9, 11))
        evs.append(ev)
        st.feed(ev)
    st.restore(snap)
    assert np.allclose(st.probs(0, ()), before)


def test_harmony_given_fields():
    st = Stepper(tiny(spec=HARMONY_SPEC), seed=0)
    st.reset()
    ev = st.sample(given=(12, 72))
    assert ev[:2] == (12, 72) and len(ev) == 5


def test_sample_index_top_p():
    rng = np.random.default_rng(0)
    p = np.array([0.5, 0.3, 0.15, 0.05])
    draws = {sample_index(p, rng, top_p=0.7) for _ in range(200)}
    assert draws == {0, 1}
    assert {sample_index(p, rng, mask=np.array([0, 0, 1, 1], bool)) for _ in range(100)} <= {2, 3}


def test_cache_is_bounded():
    c = PieceCache(capacity=100)
    rng = np.random.default_rng(0)
    for _ in range(5000):
        c.update((int(rng.integers(0, 50)),))
    assert len(c) <= 100 and len(c.history) <= 16
    assert all(len(v) <= 6 for v in c.contexts().values())
    assert len(c.toks) <= 100 + 8  # slots: the bound plus one event's new contexts


def test_cache_blends_continuations():
    c = PieceCache()
    for ev in [(1,), (2,), (3,), (1,), (2,), (4,), (1,), (2,)]:
        c.update(ev)
    cands, q, feat = c.predict()
    assert set(cands[:2]) == {(3,), (4,)} and abs(sum(q) - 1) < 1e-9 and feat > 0


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_graph_stepper_kernels_match_on_cpu(kind):
    """The CUDA-graph stepper's kernels, run eagerly on the CPU, equal the CPU stepper."""
    from midi_bridge.model.cuda_graph import GraphedStepper

    m = tiny(kind, True)
    a, b = Stepper(m), GraphedStepper(m, device="cpu", graphs=False)
    a.reset(style=1), b.reset(style=1)
    for ev in piece(24).tolist():
        assert b.log_prob(ev) == pytest.approx(a.log_prob(ev), abs=1e-4)
        a.feed(ev), b.feed(ev)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_graph_stepper_restore_matches_cpu(kind):
    """An answer sampled ahead and then discarded (snapshot, feeds, restore) leaves the
    graphed stepper where the CPU stepper is: the copy gate and the logits included."""
    from midi_bridge.model.cuda_graph import GraphedStepper

    m = tiny(kind, True)
    a, b = Stepper(m), GraphedStepper(m, device="cpu", graphs=False)
    a.reset(style=1), b.reset(style=1)
    evs = piece(30).tolist()
    for ev in evs[:10]:
        a.feed(ev), b.feed(ev)
    sa, sb = a.snapshot(), b.snapshot()
    for ev in evs[10:20]:
        a.feed(ev), b.feed(ev)
    a.restore(sa), b.restore(sb)
    assert b.gate_logit() == pytest.approx(a.gate_logit(), abs=1e-4)
    for ev in evs[20:]:
        assert b.log_prob(ev) == pytest.approx(a.log_prob(ev), abs=1e-4)
        a.feed(ev), b.feed(ev)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_graph_stepper_on_cuda():
    from midi_bridge.model.cuda_graph import GraphedStepper

    m = tiny("gru", True)
    a, b = Stepper(m), GraphedStepper(m.cuda(), device="cuda")
    a.reset(), b.reset()
    for ev in piece(24).tolist():
        assert b.log_prob(ev) == pytest.approx(a.log_prob(ev), abs=1e-3)
        a.feed(ev), b.feed(ev)
    # played notes in a row: feeds with no read of the logits in between (the pinned host
    # buffer must not be rewritten before its asynchronous upload has run)
    evs = piece(40).tolist()
    for ev in evs[:-1]:
        a.feed(ev), b.feed(ev)
    assert b.log_prob(evs[-1]) == pytest.approx(a.log_prob(evs[-1]), abs=1e-3)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_discarded_answer_leaves_no_trace_in_the_piece_cache(kind):
    """An answer sampled between snapshot() and restore() (the rnn plugin's continuation)
    must not change what the model predicts for what the player plays next: the step
    after restore equals the forward pass over the played events only."""
    m = tiny(kind, True)
    rows = piece(64).tolist()
    cand, q, feat = piece_features(np.asarray(rows), NOTE_SPEC.sizes)
    with torch.no_grad():
        logp, _, _ = m(torch.tensor(rows)[None], torch.tensor([0]), torch.from_numpy(cand.astype(np.int64))[None],
                       torch.from_numpy(q)[None], torch.from_numpy(feat.astype(np.int64))[None])
    st = Stepper(m, seed=1)
    st.reset()
    for t, ev in enumerate(rows):
        if t in (20, 33):  # two answers, discarded
            snap = st.snapshot()
            for _ in range(12):
                st.feed(st.sample())
            st.restore(snap)
        assert st.log_prob(ev) == pytest.approx(float(logp[0, t].sum()), abs=1e-4), t
        st.feed(ev)


def test_cache_rollback_after_evictions_and_nested_marks():
    c = PieceCache(capacity=30)
    ref = PieceCache(capacity=30)
    rng = np.random.default_rng(0)
    for _ in range(200):
        ev = (int(rng.integers(0, 6)),)
        c.update(ev), ref.update(ev)
    outer = c.mark()
    for _ in range(50):
        c.update((int(rng.integers(0, 6)),))
    inner = c.mark()
    for _ in range(50):
        c.update((int(rng.integers(0, 6)),))
    c.rollback(inner)
    c.rollback(outer)
    assert c.predict() == ref.predict() and c.history == ref.history
    assert c.contexts() == ref.contexts()
    c.mark()  # a mark never rolled back (a snapshot only read) keeps the journal bounded
    for _ in range(5000):
        c.update((int(rng.integers(0, 6)),))
    assert c._journal is None or len(c._journal) <= JOURNAL_LIMIT


def test_mask_holds_at_temperature_zero():
    """Greedy sampling (temperature 0) with a pitch range far from the network's favourite
    pitch: every allowed pitch's probability underflows to 0, and the mask must still hold."""
    st = Stepper(tiny("gru", False), seed=0)
    st.reset()
    for ev in piece(16).tolist():
        st.feed(ev)
    dt = st.sample(temperature=0.0)[0]
    p = st.probs(1, (dt,), temperature=0.0)
    allowed = np.flatnonzero(p[:128] == 0)[:3]
    assert len(allowed) == 3
    mask = np.zeros(129, bool)
    mask[allowed] = True
    for t in (0.0, 1e-3):
        ev = st.sample(temperature=t, masks={"pitch": mask}, given=(dt,))
        assert ev[1] in allowed.tolist()
