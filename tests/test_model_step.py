"""The fast step (bridge/model/step.py) keeps the model's outputs: the shipped checkpoints'
step equals their forward pass, ``sample`` draws what the reference sampler (the mixture
from ``probs`` + ``sample_index``, one ``rng.random()`` per field) draws, the in-piece
statistics equal a plain dict-based PPM, and a long session's memory stays flat."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from midi_bridge.model import checkpoint
from midi_bridge.model.cache import CONF_EDGES, K_CANDIDATES, MAX_TOKENS, ORDERS, PieceCache, piece_features
from midi_bridge.model.encoding import HARMONY_SPEC, NOTE_SPEC
from midi_bridge.model.rnn import EventRNN, ModelConfig
from midi_bridge.model.sampling import key_mask, pitch_range_mask, sample_index
from midi_bridge.model.step import Stepper

MODELS = Path(__file__).resolve().parents[1] / "models"


def tiny(kind="gru", copy=True, spec=NOTE_SPEC, seed=0, layers=2):
    torch.manual_seed(seed)
    m = EventRNN(spec, 2, ModelConfig(kind=kind, hidden=32, layers=layers, emb=16, head=24, dropout=0.0, copy=copy))
    with torch.no_grad():
        if copy:
            m.gate_bias.weight.normal_(0, 2)
    return m.eval()


def piece(n=40, seed=0, spec=NOTE_SPEC):
    rng = np.random.default_rng(seed)
    cols = [rng.integers(1, 13, 8), rng.integers(55, 80, 8)] + [rng.integers(0, min(s, 32), 8) for s in spec.sizes[2:]]
    motif = np.stack(cols, 1)
    return np.concatenate([motif] * (n // 8)).astype(np.int64)


def forward_logp(m, rows, style=0):
    cand, q, feat = piece_features(rows, m.spec.sizes)
    with torch.no_grad():
        logp, _, _ = m(torch.from_numpy(rows)[None], torch.tensor([style]),
                       torch.from_numpy(cand.astype(np.int64))[None], torch.from_numpy(q)[None],
                       torch.from_numpy(feat.astype(np.int64))[None])
    return logp[0].sum(-1).numpy()


@pytest.mark.parametrize("name", ["melody.pt", "melody-tuned.pt", "chorale-harmonizer.pt"])
def test_shipped_checkpoints_step_equals_forward(name):
    """The shipped checkpoints load unchanged and their step's log-probabilities equal the
    forward pass's (float tolerance), for every event of a repeating piece."""
    path = MODELS / name
    if not path.exists():
        pytest.skip(f"{name} not shipped in this checkout")
    m, _meta, _ = checkpoint.load(path)
    rows = piece(48, spec=m.spec)
    ref = forward_logp(m, rows)
    st = Stepper(m)
    st.reset(0)
    for t, ev in enumerate(rows.tolist()):
        assert st.log_prob(ev) == pytest.approx(float(ref[t]), abs=2e-4), t
        st.feed(ev)


def reference_sample(st, rng, temperature, top_p, masks=None, given=()):
    """The sampler before the fast step: each field from ``probs`` (the in-piece mixture at
    the temperature) through ``sample_index`` (mask, then top-p), one draw per field."""
    event = [int(v) for v in given]
    for k in range(len(st.sizes)):
        if k < len(given):
            continue
        p = st.probs(k, event, temperature)
        mask = None if masks is None else masks.get(st.spec.fields[k].name)
        event.append(sample_index(p, rng, top_p=top_p, mask=mask))
    return tuple(event)


@pytest.mark.parametrize("kind,copy", [("gru", True), ("lstm", True), ("gru", False), ("lstm", False)])
@pytest.mark.parametrize("temperature,top_p,masked", [(1.0, 1.0, False), (0.8, 0.9, True), (1.3, 0.95, False),
                                                      (0.9, 1.0, True)])
def test_sample_draws_what_the_reference_sampler_draws(kind, copy, temperature, top_p, masked):
    """Same state, same random stream: the fast sampler and the reference pick the same
    events (top-p, masks, the in-piece candidates and the copy gate included)."""
    st = Stepper(tiny(kind, copy), seed=0)
    st.reset(1)
    rows = piece(32).tolist()
    masks = {"pitch": key_mask(2) & pitch_range_mask(50, 84)} if masked else None
    n_mixed = 0
    for t in range(24):
        st.feed(rows[t])
        seed = 1000 + t
        for _ in range(3):
            st.rng = np.random.default_rng(seed)
            got = st.sample(temperature, top_p, masks)
            want = reference_sample(st, np.random.default_rng(seed), temperature, top_p, masks)
            assert got == want, (t, seed)
            seed += 7
        n_mixed += bool(st.cands)
    if copy:
        assert n_mixed > 10  # the candidates took part


def test_sample_with_given_fields_matches_the_reference():
    st = Stepper(tiny(spec=HARMONY_SPEC), seed=0)
    st.reset()
    rows = piece(24, spec=HARMONY_SPEC).tolist()
    for t, row in enumerate(rows):
        st.rng = np.random.default_rng(t)
        got = st.sample(0.9, 0.95, given=row[:2])
        want = reference_sample(st, np.random.default_rng(t), 0.9, 0.95, given=row[:2])
        assert got == want and got[:2] == tuple(row[:2])
        st.feed(row)


def test_sampled_frequencies_follow_probs():
    """Many draws from one state: the first field's frequencies are ``probs(0)``."""
    st = Stepper(tiny("gru", True), seed=5)
    st.reset()
    for ev in piece(24).tolist():
        st.feed(ev)
    p = st.probs(0, ())
    n = 4000
    counts = np.bincount([st.sample()[0] for _ in range(n)], minlength=len(p))
    top = np.argsort(-p)[:5]
    for v in top:
        assert abs(counts[v] / n - p[v]) < 4 * np.sqrt(p[v] * (1 - p[v]) / n) + 1e-3


def test_feed_returns_field_zero_logits_of_the_network():
    m = tiny("lstm", True)
    st = Stepper(m)
    st.reset()
    for ev in piece(16).tolist():
        out = st.feed(ev).clone()
        assert torch.allclose(out, st.field_logits(0, ()), atol=1e-5)


def test_snapshot_restore_round_trips_state_logits_and_gate():
    st = Stepper(tiny("gru", True), seed=2)
    st.reset()
    rows = piece(40).tolist()
    for ev in rows[:20]:
        st.feed(ev)
    snap = st.snapshot()
    h, gate, lp = st.h.clone(), st.gate_logit(), st.log_prob(rows[20])
    for _ in range(3):  # three discarded answers from the same point
        for _ in range(10):
            st.feed(st.sample(1.1, 0.9))
        st.restore(snap)
        assert torch.equal(st.h, h) and st.gate_logit() == gate
        assert st.log_prob(rows[20]) == pytest.approx(lp, abs=1e-9)


# -- the in-piece statistics ----------------------------------------------------------------
class DictPPM:
    """The previous PieceCache (an OrderedDict of {event: count} dicts keyed by context
    tuples), without marks: the reference for counts, candidates and evictions."""

    def __init__(self, capacity):
        from collections import OrderedDict

        self.capacity, self.table, self.history, self.ctx = capacity, OrderedDict(), [], []

    def update(self, event):
        for key in self.ctx:
            counts = self.table.pop(key, None) or {}
            counts[event] = counts.get(event, 0) + 1
            if len(counts) > MAX_TOKENS:
                del counts[min(counts, key=counts.get)]
            self.table[key] = counts
        while len(self.table) > self.capacity:
            self.table.popitem(last=False)
        self.history = (self.history + [event])[-ORDERS[-1]:]
        n = len(self.history)
        self.ctx = [(oi + 1, tuple(self.history[n - o:])) for oi, o in enumerate(ORDERS) if o <= n]

    def predict(self):
        probs, remaining, top = {}, 1.0, 0
        for key in reversed(self.ctx):
            counts = self.table.get(key)
            if not counts:
                continue
            top = top or key[0]
            fresh = [(t, c) for t, c in counts.items() if t not in probs]
            if not fresh:
                continue
            denom = sum(c for _, c in fresh) + len(fresh)
            for t, c in fresh:
                probs[t] = remaining * c / denom
            remaining *= len(fresh) / denom
            if len(probs) >= K_CANDIDATES:
                break
        if not probs:
            return [], [], 0
        best = sorted(probs.items(), key=lambda tc: -tc[1])[:K_CANDIDATES]
        mass = sum(p for _, p in best)
        conf = sum(mass >= e for e in CONF_EDGES)
        return [t for t, _ in best], [p / mass for _, p in best], top * (len(CONF_EDGES) + 1) + conf


@pytest.mark.parametrize("capacity,answers", [(40, False), (1 << 20, True), (40, True)])
def test_piece_cache_equals_the_dict_ppm(capacity, answers):
    """Counts, dropped rarest continuations, LRU evictions and the blended candidates are
    those of the plain PPM, also across discarded answers (mark / rollback: right after
    one the contexts are the reference's; later evictions may differ, since the contexts
    the undone answer touched count as recently used)."""
    c, ref = PieceCache(capacity), DictPPM(capacity)
    rng = np.random.default_rng(3)
    evicting = answers and capacity < 1000
    for i in range(3000):
        if answers and i % 97 == 50:  # a discarded answer: fed, then rolled back
            mark = c.mark()
            for _ in range(int(rng.integers(1, 30))):
                c.update((int(rng.integers(0, 7)), int(rng.integers(0, 2))))
                c.predict()
            c.rollback(mark)
            if evicting:
                assert contents(c.contexts()) == contents(ref.table), i
                c, ref = PieceCache(capacity), DictPPM(capacity)  # (start both afresh)
        ev = (int(rng.integers(0, 7)), int(rng.integers(0, 2)))
        c.update(ev), ref.update(ev)
        assert c.predict() == ref.predict(), i
    assert len(c) == len(ref.table) <= capacity
    assert contents(c.contexts()) == contents(ref.table)


def contents(table) -> list:
    return sorted(sorted(d.items()) for d in table.values())


def test_long_session_memory_is_flat():
    """Past the cache's bound, thousands more events (with answers rolled back) allocate
    nothing that stays."""
    st = Stepper(tiny("gru", True), seed=0, cache_capacity=64)
    st.reset()
    rng = np.random.default_rng(0)

    def run(n):
        for i in range(n):
            st.feed((int(rng.integers(1, 13)), int(rng.integers(50, 80)), int(rng.integers(1, 13)), 20))
            st.sample(0.9, 0.95)
            if i % 50 == 0:
                snap = st.snapshot()
                for _ in range(5):
                    st.feed(st.sample())
                st.restore(snap)

    run(600)
    tracemalloc.start()
    try:
        run(200)
        before = tracemalloc.get_traced_memory()[0]
        run(3000)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 64 * 1024, after - before
    assert len(st.cache) <= 64 and len(st.cache.toks) <= 64 + len(ORDERS)
