"""bridge/training/tune.py (RL fine-tuning, ratings) and evaluate --theory (theory_eval)."""

import copy
import json

import pytest
import torch

from midi_bridge.model import checkpoint, theory
from midi_bridge.training.cli import main as model_cli
from midi_bridge.model.encoding import NOTE_SPEC
from midi_bridge.model.rnn import EventRNN, ModelConfig
from midi_bridge.model.step import Stepper
from midi_bridge.training.tune import answer_logp, ratings_batch, rating_rows, rows_to_melody, sample_rows, tune
from midi_bridge.training.tune_cli import register

CFG = ModelConfig(hidden=16, layers=1, emb=8, head=16)


def tiny(seed=0):
    torch.manual_seed(seed)
    return EventRNN(NOTE_SPEC, 2, CFG).eval()


def mean_reward(model, n=24, notes=12, seed=100):
    st = Stepper(model, seed=seed)
    mels = [rows_to_melody(sample_rows(st, i % 2, notes))[0] for i in range(n)]
    return theory.reward_per_note(mels)


def test_sample_rows_and_melody():
    st = Stepper(tiny(), seed=1)
    rows = sample_rows(st, 0, 10)
    mel, idx = rows_to_melody(rows)
    assert rows.shape[1] == 4 and len(mel) <= 10 and len(mel) == len(idx)
    assert all(0 <= p < 128 for p, _s, _d in mel)
    assert [s for _p, s, _d in mel] == sorted(s for _p, s, _d in mel)


def test_tiny_tune_improves_the_reward_and_writes_a_loadable_checkpoint(tmp_path):
    model = tiny()
    before = mean_reward(model)
    prior = copy.deepcopy(model)
    hist = tune(model, prior, iterations=25, batch=8, notes=12, lr=3e-2, prior_weight=0.0, novelty_weight=0.0,
                seed=0)
    assert len(hist) == 25 and "theory_reward_per_note" in hist[0]
    after = mean_reward(model)
    assert after > before + 0.5, (before, after)
    path = tmp_path / "tuned.pt"
    checkpoint.save(path, model, {"styles": ["folk", "chorale"], "mono": True}, half=True)
    from midi_bridge.generators.rnn import RNNGenerator
    from midi_bridge.plugin import Context

    g = RNNGenerator({"checkpoint": str(path), "harmonizer": None, "seed": 1, "device": "cpu"})
    it = g.continuation(Context(tempo_bpm=120, beat=0.0, max_notes=4))
    assert next(it).pitch in range(128)
    it.close()


def test_rating_rows_and_ratings_move_the_answer_probabilities():
    good = {"rating": 1, "context": {"style": "folk"}, "phrase": [[60, 90, 0.0], [62, 90, 0.5], [64, 90, 1.0]],
            "answer": [[65, 90, 0.0, 0.5], [67, 90, 0.5, 0.5], [65, 90, 1.0, 1.0]]}
    bad = {"rating": -1, "context": {"style": "folk"}, "phrase": good["phrase"],
           "answer": [[61, 90, 0.0, 0.25], [73, 90, 0.25, 0.25], [50, 90, 0.5, 2.0]]}
    prow, arow = rating_rows(good)
    assert prow.tolist() == [[0, 60, 6, 22], [6, 62, 6, 22], [6, 64, 12, 22]]
    assert arow.tolist() == [[12, 65, 6, 22], [6, 67, 6, 22], [6, 65, 12, 22]]
    batch = ratings_batch([good, bad, {"rating": 0, "answer": []}], ["folk", "chorale"])
    assert [b[3] for b in batch] == [1, -1] and batch[0][1] == 3 and batch[0][2] == 0
    model = tiny(1)
    with torch.no_grad():
        lp0 = answer_logp(model, batch)
    tune(model, copy.deepcopy(model), iterations=15, batch=2, notes=4, lr=1e-2, theory_weight=0.0,
         prior_weight=0.0, novelty_weight=0.0, ratings=batch, rating_weight=1.0, seed=0)
    with torch.no_grad():
        lp1 = answer_logp(model, batch)
    assert lp1[0] > lp0[0] + 0.5  # the liked answer became more likely
    assert lp1[1] < lp0[1] - 0.5  # the disliked one less


def test_tune_cli_writes_checkpoint_with_history(tmp_path, capsys):
    import argparse

    ck = tmp_path / "m.pt"
    checkpoint.save(ck, tiny(), {"styles": ["folk", "chorale"], "mono": True})
    ratings = tmp_path / "r.jsonl"
    ratings.write_text(json.dumps({"rating": 1, "phrase": [[60, 90, 0.0]], "answer": [[62, 90, 0.0, 0.5]]})
                       + "\nnot json\n")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tune", "--checkpoint", str(ck), "-o", str(tmp_path / "t.pt"), "--iterations", "2",
                              "--batch", "2", "--notes", "4", "--ratings", str(ratings), "--quiet"])
    assert args.func(args) == 0
    model, meta, _ = checkpoint.load(tmp_path / "t.pt")
    assert len(meta["tune"]["history"]) == 2 and meta["styles"] == ["folk", "chorale"]
    assert "rating_term" in meta["tune"]["history"][0]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from test_model_dataset import make_corpus

    d = tmp_path_factory.mktemp("th")
    make_corpus(d / "src", n=12)
    assert model_cli(["prepare", str(d / "src"), "-o", str(d / "ds"), "--mono"]) == 0
    checkpoint.save(d / "m.pt", tiny(), {"styles": ["chorale", "folk"], "mono": True})
    checkpoint.save(d / "t.pt", tiny(3), {"styles": ["chorale", "folk"], "mono": True})
    return d


def test_evaluate_theory_json_has_every_source_and_metric(tiny_data, capsys):
    d = tiny_data
    capsys.readouterr()
    assert model_cli(["evaluate", "--theory", "--json", "--checkpoint", str(d / "m.pt"), "--dataset", str(d / "ds"),
                      "--tuned", str(d / "t.pt"), "--gan", str(d / "none.pt"), "--samples", "4", "--notes", "8",
                      "--markov-order", "2"]) == 0
    res = json.loads(capsys.readouterr().out)
    for src in ("corpus", "rnn", "rnn_tuned", "markov", "unigram"):
        assert set(theory.METRIC_KEYS) <= set(res[src]), src
        assert isinstance(res[src]["reward"], float)
        assert set(res[src]["js"]) == {"pitch_class", "interval"}
    for src in ("rnn", "rnn_tuned", "markov"):
        assert res[src]["bits_per_note"] > 0
    assert "bits_per_note" not in res["corpus"]
    assert res["corpus"]["js"] == {"pitch_class": 0.0, "interval": 0.0}
    assert res["corpus"]["melodies"] == 4 and res["corpus"]["notes"] == 32
    assert "gan" not in res and "none.pt" in res["omitted"]["gan"]


def test_evaluate_without_theory_keeps_its_shape(tiny_data, capsys):
    d = tiny_data
    capsys.readouterr()
    assert model_cli(["evaluate", "--json", "--checkpoint", str(d / "m.pt"), "--dataset", str(d / "ds"),
                      "--no-markov"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) == {"rnn", "unigram", "split", "dataset_hash"}


def test_tune_refuses_a_dataset_that_does_not_fit_the_checkpoint(tiny_data, tmp_path, capsys):
    """-d of another view (a harmony dataset) or with other styles: a message, not a numpy error."""
    from midi_bridge.commands.cli import main
    from test_model_dataset import make_corpus

    d = tiny_data
    make_corpus(tmp_path / "src", n=6, voices=4)
    assert model_cli(["prepare", str(tmp_path / "src"), "-o", str(tmp_path / "harm"), "--view", "harmony"]) == 0
    assert model_cli(["prepare", str(tmp_path / "src"), "-o", str(tmp_path / "one"), "--mono",
                      "--style", "jazz"]) == 0
    capsys.readouterr()
    common = ["tune", "--checkpoint", str(d / "m.pt"), "-o", str(tmp_path / "t.pt"), "--iterations", "1",
              "--batch", "2", "--notes", "4", "--quiet"]
    assert main(common + ["-d", str(tmp_path / "harm")]) == 2
    assert "is a harmony dataset" in capsys.readouterr().err
    assert main(common + ["-d", str(tmp_path / "one")]) == 2
    assert "styles ['jazz']" in capsys.readouterr().err
    assert main(common + ["-d", str(tmp_path / "nope")]) == 2
    assert "not a prepared dataset" in capsys.readouterr().err
    assert not (tmp_path / "t.pt").exists()
    assert main(common + ["-d", str(d / "ds")]) == 0


def test_rating_rows_keep_the_highest_note_of_a_chord_with_its_inter_onset_gap():
    """A rated phrase played with chords is encoded as the rnn plugin hears it live: the
    chord's highest note, lasting until the next onset (the last: one beat), and the
    answer starts one beat after a final chord, not one grid step."""
    record = {"rating": 1, "phrase": [[60, 90, 0.0], [64, 90, 0.0], [67, 90, 1.0], [72, 90, 1.0], [55, 90, 1.0]],
              "answer": [[65, 90, 0.0, 0.5]]}
    prow, arow = rating_rows(record)
    assert prow.tolist() == [[0, 64, 12, 22], [12, 72, 12, 22]]
    assert arow.tolist() == [[12, 65, 6, 22]]
