"""The IDyOM-style markov baseline (bridge/model/idyom.py, bridge/training/baseline.py) and
`evaluate`'s report of it."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from midi_bridge.model.idyom import Predictions, Prior, escape_c, mix
from midi_bridge.model.ppm import PPM
from midi_bridge.training import baseline
from midi_bridge.training.cli import main as model_cli
from midi_bridge.training.dataset import prepare
from test_model_dataset import make_corpus

TINY = ["--hidden", "16", "--emb", "8", "--head", "16", "--layers", "1", "--batch-events", "512", "--quiet"]


# -- entropy weights, by hand ---------------------------------------------------------------

def two_models():
    # alphabet {0, 1, 2, 3}, uniform prior.  Model 1: 0 -> 1/2, 1 -> 1/4, escape 1/4 shared by 2 and 3
    # (1/8 each): H1 = 1/2 * 1 + 1/4 * 2 + 2 * 1/8 * 3 = 1.75 bits.  Model 2 has seen nothing: uniform,
    # H2 = 2 bits = log2 |A|.
    return [({0: 0.5, 1: 0.25}, 0.25), ({}, 1.0)], Prior.uniform(4)


def test_entropies_and_weights_by_hand():
    dists, prior = two_models()
    pred = Predictions(dists, prior)
    assert pred.entropies == pytest.approx([1.75, 2.0])
    # w_m = (H_m / log2 |A|) ** -b: (7/8) ** -2 = 64/49 and 1 ** -2 = 1, normalised: 64/113, 49/113
    assert pred.weights(2.0) == pytest.approx([64 / 113, 49 / 113])
    assert pred.weights(0.0) == pytest.approx([0.5, 0.5])


def test_arithmetic_mixture_by_hand():
    dists, prior = two_models()
    mx = mix(dists, prior, 2.0, "arithmetic")
    w1, w2 = 64 / 113, 49 / 113
    assert mx.prob(0) == pytest.approx(w1 * 0.5 + w2 * 0.25)
    assert mx.prob(1) == pytest.approx(w1 * 0.25 + w2 * 0.25)
    assert mx.prob(2) == mx.prob(3) == pytest.approx(w1 * 0.125 + w2 * 0.25)
    assert mx.argmax() == 0


def test_geometric_mixture_by_hand():
    dists, prior = two_models()
    mx = mix(dists, prior, 2.0, "geometric")
    w1, w2 = 64 / 113, 49 / 113
    raw = [p1 ** w1 * 0.25 ** w2 for p1 in (0.5, 0.25, 0.125, 0.125)]
    z = sum(raw)
    assert [mx.prob(t) for t in range(4)] == pytest.approx([r / z for r in raw])
    assert sum(mx.prob(t) for t in range(4)) == pytest.approx(1.0)


def test_a_confident_model_outweighs_a_vague_one_more_as_b_grows():
    dists = [({0: 0.9}, 0.1), ({1: 0.3, 2: 0.3}, 0.4)]
    prior = Prior.uniform(16)
    w = [Predictions(dists, prior).weights(b)[0] for b in (0.0, 1.0, 4.0)]
    assert w[0] == pytest.approx(0.5) and w[0] < w[1] < w[2] < 1


# -- the price of rows never seen ---------------------------------------------------------

ROWS = [(0, 0), (0, 1), (1, 0)]  # two fields of 2 and 3 values: alphabet of 6 rows


def test_field_prior_by_hand():
    prior = Prior.fields(ROWS, [2, 3], alpha=0.5)
    # field 0: counts {0: 2, 1: 1}, denominator 3 + 0.5 * 2 = 4; field 1: {0: 2, 1: 1}, 3 + 0.5 * 3 = 4.5
    assert prior.price((1, 1)) == pytest.approx(1.5 / 4 * 1.5 / 4.5)
    assert prior.price((0, 2)) == pytest.approx(2.5 / 4 * 0.5 / 4.5)
    assert sum(prior.price(r) for r in itertools.product(range(2), range(3))) == pytest.approx(1.0)
    h = -sum(p * math.log2(p) for p in (2.5 / 4, 1.5 / 4)) - sum(p * math.log2(p) for p in (2.5 / 4.5, 1.5 / 4.5,
                                                                                             0.5 / 4.5))
    assert prior.entropy == pytest.approx(h)


def test_unseen_rows_are_priced_by_the_field_marginals_not_uniformly():
    prior = Prior.fields(ROWS, [2, 3], alpha=0.5)
    model = PPM(max_order=0, alphabet_size=6, prior=prior)
    for r in ROWS:
        model.update(r)
    # order 0: three rows once each -> 1/6 each, escape 3/6.  The unseen rows (1, 1), (0, 2), (1, 2)
    # share the escape in proportion to their marginal price (uniformly they would get 1/6 each).
    unseen = {r: prior.price(r) for r in [(1, 1), (0, 2), (1, 2)]}
    z = sum(unseen.values())
    assert model.prob((1, 1)) == pytest.approx(0.5 * (1.5 / 4 * 1.5 / 4.5) / z)  # 0.2647, not 1/6
    assert model.prob((1, 2)) == pytest.approx(0.5 * (1.5 / 4 * 0.5 / 4.5) / z)
    assert model.prob((0, 0)) == pytest.approx(1 / 6)
    assert sum(model.prob(r) for r in itertools.product(range(2), range(3))) == pytest.approx(1.0)
    uniform = PPM(max_order=0, alphabet_size=6)
    for r in ROWS:
        uniform.update(r)
    assert uniform.prob((1, 1)) == pytest.approx(1 / 6)


def test_mixture_normalises_over_the_whole_alphabet_with_field_prior():
    prior = Prior.fields(ROWS, [2, 3])
    long_term = PPM(max_order=2, alphabet_size=6, piece_weight=2.0, prior=prior)
    for r in ROWS * 3:
        long_term.update(r)
    short = PPM(max_order=2, alphabet_size=6, piece_weight=1.0, prior=prior)
    long_term.reset_context()
    for r in [(1, 2), (1, 2), (0, 1)]:
        long_term.update(r, train=False)
        short.update(r, train=False)
    dists = [long_term.distribution(), short.distribution()]
    rows = list(itertools.product(range(2), range(3)))
    pred = Predictions(dists, prior)
    for j, (probs, escape) in enumerate(dists):  # entropies over the whole alphabet, brute force
        z = 1 - sum(prior.price(t) for t in probs)
        ps = [probs.get(r, escape * prior.price(r) / z) for r in rows]
        assert sum(ps) == pytest.approx(1.0)
        assert pred.entropies[j] == pytest.approx(-sum(p * math.log2(p) for p in ps))
    for kind in ("arithmetic", "geometric"):
        for b in (0.0, 1.0, 3.0):
            mx = pred.mix(b, kind)
            assert sum(mx.prob(r) for r in rows) == pytest.approx(1.0)


def test_escape_c_is_the_ppm_blend():
    model = PPM(max_order=1, alphabet_size=4)
    for t in "ababa":
        model.update(t)
    probs, escape = escape_c([[(model._root.children["a"].counts, 1.0)], [(model._root.counts, 1.0)]])
    assert probs == pytest.approx({"b": 2 / 3, "a": 1 / 4}) and escape == pytest.approx(1 / 12)


# -- evaluate ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    make_corpus(root / "src", n=20)
    prepare([root / "src"], root / "ds", mono=True, log=lambda *a, **k: None)
    assert model_cli(["train", "-d", str(root / "ds"), "-o", str(root / "run"), "--epochs", "1", *TINY]) == 0
    return root / "ds", root / "run" / "best.pt"


def test_evaluate_reports_both_markov_baselines(trained, capsys):
    ds, ck = trained
    capsys.readouterr()
    assert model_cli(["evaluate", "--checkpoint", str(ck), "--dataset", str(ds), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    for name in ("rnn", "markov", "markov_blend", "unigram"):
        assert res[name]["bits_per_note"] > 0 and 0 <= res[name]["accuracy"] <= 1
        assert res[name]["perplexity"] == pytest.approx(2 ** res[name]["bits_per_note"], rel=1e-2)
    m, mb = res["markov"], res["markov_blend"]
    assert {"order", "piece_weight", "b", "mix", "stm_order", "tuning"} <= set(m)
    assert m["order"] == mb["order"] and m["stm_order"] == 4 and m["mix"] in ("arithmetic", "geometric")
    # unseen rows are common in a tiny dataset: 25 bits each uniformly over 38.8 M rows
    assert m["bits_per_note"] < mb["bits_per_note"]
    assert res["rnn"]["ratio_to_markov"] == pytest.approx(res["rnn"]["bits_per_note"] / m["bits_per_note"], abs=1e-3)
    assert res["rnn"]["ratio_to_markov_blend"] == pytest.approx(res["rnn"]["bits_per_note"] / mb["bits_per_note"],
                                                                abs=1e-3)
    assert model_cli(["evaluate", "--checkpoint", str(ck), "--dataset", str(ds)]) == 0
    out = capsys.readouterr().out
    assert "markov_blend" in out and "rnn / markov =" in out and "rnn / markov_blend =" in out


def test_b_and_mix_are_chosen_on_validation_not_test(trained):
    from midi_bridge.model.encoding import EventSpec
    from midi_bridge.training.dataset import load_meta
    from midi_bridge.training.evaluate import _untransposed, evaluate

    ds, ck = trained
    res = evaluate(ck, ds)["markov"]
    tuning = res["tuning"]
    assert len(tuning) == len(set((t["piece_weight"], t["b"], t["mix"]) for t in tuning)) > 10
    best = min(tuning, key=lambda t: t["val_bits_per_note"])
    assert (best["piece_weight"], best["b"], best["mix"]) == (res["piece_weight"], res["b"], res["mix"])
    # the tuning figures are those of the validation events, recomputed here
    spec = EventSpec.from_dict(load_meta(ds)["spec"])
    train, val, test = (_untransposed(ds, s, spec) for s in ("train", "val", "test"))
    prior = baseline.field_prior(train, spec)
    model = baseline.fit_ppm(train, res["order"], math.prod(spec.sizes), best["piece_weight"], prior=prior)
    mine = [t for t in tuning if t["piece_weight"] == best["piece_weight"]]
    settings = [(t["b"], t["mix"]) for t in mine]
    on_val = baseline.idyom_score(model, baseline.take_events(val, baseline.TUNE_EVENTS), spec, prior, settings)
    assert [m["bits_per_note"] for m in on_val] == [t["val_bits_per_note"] for t in mine]
    on_test = baseline.idyom_score(model, test, spec, prior, settings)
    assert [m["bits_per_note"] for m in on_test] != [t["val_bits_per_note"] for t in mine]
    chosen = settings.index((res["b"], res["mix"]))
    assert on_test[chosen]["bits_per_note"] == res["bits_per_note"]
