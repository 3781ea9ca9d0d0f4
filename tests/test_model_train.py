"""train (resume, early stopping, DDP under torchrun), checkpoints, evaluate."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from midi_bridge.model import checkpoint
from midi_bridge.training.cli import main as model_cli
from midi_bridge.training.dataset import prepare
from test_model_dataset import make_corpus

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--hidden", "16", "--emb", "8", "--head", "16", "--layers", "1", "--batch-events", "512", "--quiet"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_corpus(root / "src", n=20)
    prepare([root / "src"], root / "ds", mono=True, log=lambda *a, **k: None)
    return root / "ds"


def test_train_checkpoint_resume(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert model_cli(["train", "-d", str(dataset), "-o", str(run), "--epochs", "2", "--seed", "3",
                      "--export", str(tmp_path / "small.pt"), *TINY]) == 0
    err = capsys.readouterr().err
    assert "epoch 2:" in err and "exported" in err
    model, meta, state = checkpoint.load(run / "last.pt")
    assert state["epoch"] == 1 and len(meta["history"]) == 2
    assert meta["dataset_hash"] and meta["encoding_version"] == 1 and meta["model"]["hidden"] == 16
    small = checkpoint.load_raw(tmp_path / "small.pt")
    assert "train" not in small and all(v.dtype == torch.float16 for v in small["model"].values()
                                        if v.is_floating_point())
    assert model_cli(["train", "-d", str(dataset), "-o", str(run), "--epochs", "3", "--resume", "--seed", "3",
                      *TINY]) == 0
    assert "resumed" in capsys.readouterr().err
    _, meta, state = checkpoint.load(run / "last.pt")
    assert state["epoch"] == 2 and [h["epoch"] for h in meta["history"]] == [1, 2, 3]


def test_seed_reproducible(dataset, tmp_path):
    for name in ("a", "b"):
        model_cli(["train", "-d", str(dataset), "-o", str(tmp_path / name), "--epochs", "1", "--seed", "5", *TINY])
    a = checkpoint.load_raw(tmp_path / "a" / "last.pt")["model"]
    b = checkpoint.load_raw(tmp_path / "b" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_refuses_code_in_checkpoint(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "midi-bridge-rnn", "meta": "{}", "model": {}, "x": Evil()}, path)
    with pytest.raises(checkpoint.CheckpointError, match="refusing to load"):
        checkpoint.load(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(checkpoint.CheckpointError, match="refusing to load"):
        checkpoint.load(path)
    assert not marker.exists()
    assert model_cli(["evaluate", "--checkpoint", str(path), "--dataset", str(tmp_path)]) == 2


def _torchrun(dataset, run, *extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "midi_bridge.training.cli", "train", "-d", str(dataset), "-o", str(run), "--device", "cpu", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


DDP = ["--hidden", "16", "--emb", "8", "--head", "16", "--layers", "1", "--quiet", "--dropout", "0",
       "--epochs", "2", "--seed", "4", "--batch-events", "192"]


def test_ddp_two_processes_gloo(dataset, tmp_path):
    """Two ranks both step, drop no batch, and learn what one process learns from the same
    steps (--accumulate 2: the same two batches per optimizer step)."""
    import random
    import re

    from midi_bridge.training.train import featurize, make_batches

    (dataset / "train.cache-v2.pt").unlink(missing_ok=True)  # rank 0 writes it, rank 1 waits and reads
    proc = _torchrun(dataset, tmp_path / "ddp", *DDP)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr
    assert (dataset / "train.cache-v2.pt").exists() and not list(dataset.glob("*.tmp"))
    _, meta, state = checkpoint.load(tmp_path / "ddp" / "last.pt")
    assert state["epoch"] == 1 and len(meta["history"]) == 2
    # every batch of every epoch is trained on, and both ranks take the same number of steps
    pieces = featurize(dataset, "train", checkpoint.load(tmp_path / "ddp" / "last.pt")[0].spec.sizes)
    per_epoch = [len(make_batches(pieces, 512, 192, random.Random(4 * 1000 + e))) for e in range(2)]
    assert any(n % 2 for n in per_epoch)  # a leftover batch that the old loop dropped
    ranks = {int(r): (int(st), int(b)) for r, st, b in
             re.findall(r"rank (\d) of 2: (\d+) optimizer steps, (\d+) batches", proc.stderr)}
    assert set(ranks) == {0, 1}
    assert ranks[0][0] == ranks[1][0] == sum((n + 1) // 2 for n in per_epoch) > 0
    assert ranks[0][1] + ranks[1][1] == sum(per_epoch) and ranks[1][1] > 0
    # one process, two batches per step: the same optimizer steps
    assert model_cli(["train", "-d", str(dataset), "-o", str(tmp_path / "one"), "--device", "cpu", "--accumulate",
                      "2", *DDP]) == 0
    _, meta1, _ = checkpoint.load(tmp_path / "one" / "last.pt")
    for h2, h1 in zip(meta["history"], meta1["history"]):
        assert h2["train_bits_per_note"] == pytest.approx(h1["train_bits_per_note"], abs=1e-4)
        assert h2["val_bits_per_note"] == pytest.approx(h1["val_bits_per_note"], abs=1e-4)
    a = checkpoint.load_raw(tmp_path / "ddp" / "last.pt")["model"]
    b = checkpoint.load_raw(tmp_path / "one" / "last.pt")["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)  # equal here, in fact


def test_ddp_with_fewer_batches_than_ranks_is_an_error(dataset, tmp_path):
    """Before: 0 steps, exit 0, best.pt = the initial weights."""
    proc = _torchrun(dataset, tmp_path / "ddp", *TINY[:-3], "--batch-events", "8192", "--epochs", "1", "--quiet")
    assert proc.returncode != 0
    assert "for 2 processes" in proc.stderr and "Lower --batch-events" in proc.stderr
    assert not (tmp_path / "ddp" / "best.pt").exists()


def test_evaluate_json(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    model_cli(["train", "-d", str(dataset), "-o", str(run), "--epochs", "1", *TINY])
    capsys.readouterr()
    assert model_cli(["evaluate", "--checkpoint", str(run / "best.pt"), "--dataset", str(dataset),
                      "--split", "val", "--markov-order", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    for name in ("rnn", "markov", "unigram"):
        assert set(res[name]) >= {"bits_per_note", "accuracy", "perplexity"}
        assert res[name]["bits_per_note"] > 0 and 0 <= res[name]["accuracy"] <= 1
        assert res[name]["perplexity"] == pytest.approx(2 ** res[name]["bits_per_note"], rel=1e-2)


def _small_dataset(root, files, style="folk"):
    """A prepared dataset of the given corpus files (sha256-split: choose them to leave a split empty)."""
    import shutil

    src = root / "src" / style
    src.mkdir(parents=True)
    for f in files:
        shutil.copy(f, src / f.name)
    prepare([root / "src"], root / "ds", mono=True, log=lambda *a, **k: None)
    return root / "ds"


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory):
    from midi_bridge.training.dataset import split_of

    root = tmp_path_factory.mktemp("corpus")
    make_corpus(root / "src", n=20)
    import hashlib

    by_split = {"train": [], "val": [], "test": []}
    for f in sorted((root / "src").rglob("[0-9]*.mid")):
        by_split[split_of(hashlib.sha256(f.read_bytes()).hexdigest())].append(f)
    return by_split


def test_train_without_train_or_val_split(corpus_files, tmp_path, capsys):
    """An empty train split is an error; an empty val split (a small collection) trains on,
    selecting on the training loss, instead of stopping after the first epochs at 0 bits."""
    ds = _small_dataset(tmp_path / "a", corpus_files["test"][:2] + corpus_files["val"][:1])
    assert model_cli(["train", "-d", str(ds), "-o", str(tmp_path / "ra"), "--epochs", "1", *TINY]) == 2
    assert "the train split of" in capsys.readouterr().err
    assert not (tmp_path / "ra" / "best.pt").exists()
    ds = _small_dataset(tmp_path / "b", corpus_files["train"][:3])
    assert model_cli(["train", "-d", str(ds), "-o", str(tmp_path / "rb"), "--epochs", "4", "--patience", "1",
                      "--lr", "0.01", *TINY]) == 0
    err = capsys.readouterr().err
    assert "val split of" in err and "follow the training loss" in err
    _, meta, _ = checkpoint.load(tmp_path / "rb" / "last.pt")
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3, 4]
    assert all(h["val_bits_per_note"] > 0 for h in meta["history"])


def test_evaluate_empty_split_is_a_clear_error(corpus_files, tmp_path, capsys):
    ds = _small_dataset(tmp_path / "a", corpus_files["train"][:3] + corpus_files["test"][:1])
    run = tmp_path / "run"
    assert model_cli(["train", "-d", str(ds), "-o", str(run), "--epochs", "1", *TINY]) == 0
    capsys.readouterr()
    for extra in ([], ["--no-markov"]):
        assert model_cli(["evaluate", "--checkpoint", str(run / "best.pt"), "--dataset", str(ds), "--split", "val",
                          "--json", *extra]) == 2
        out = capsys.readouterr()
        assert out.out == "" and "the val split of" in out.err and "--split" in out.err
    # the test split has notes; the markov order is not tuned on the empty val split
    assert model_cli(["evaluate", "--checkpoint", str(run / "best.pt"), "--dataset", str(ds), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["markov"]["order"] == 8 and res["markov"]["tuning"] == []
    assert all(res[k]["bits_per_note"] > 0 for k in ("rnn", "markov", "unigram"))


def test_resume_refuses_another_dataset_or_model(dataset, corpus_files, tmp_path, capsys):
    run = tmp_path / "run"
    assert model_cli(["train", "-d", str(dataset), "-o", str(run), "--epochs", "1", *TINY]) == 0
    other = _small_dataset(tmp_path / "o", corpus_files["train"][:3] + corpus_files["val"][:1])
    capsys.readouterr()
    assert model_cli(["train", "-d", str(other), "-o", str(run), "--epochs", "2", "--resume", *TINY]) == 2
    assert "another dataset" in capsys.readouterr().err
    big = TINY[2:] + ["--hidden", "24", "--kind", "lstm"]
    assert model_cli(["train", "-d", str(dataset), "-o", str(run), "--epochs", "2", "--resume", *big]) == 2
    err = capsys.readouterr().err
    assert "kind lstm, the run's gru" in err and "--hidden 16" in err and "Traceback" not in err
    _, meta, _ = checkpoint.load(run / "last.pt")
    assert len(meta["history"]) == 1  # untouched
    assert model_cli(["train", "-d", str(dataset), "-o", str(run), "--epochs", "2", "--resume", *TINY]) == 0


def test_wrong_kind_or_truncated_checkpoint_messages(dataset, tmp_path, capsys):
    from midi_bridge.model import gan

    run = tmp_path / "run"
    assert model_cli(["train", "-d", str(dataset), "-o", str(run), "--epochs", "1", *TINY]) == 0
    with pytest.raises(checkpoint.CheckpointError, match="is a midi-bridge GAN checkpoint .*midi-bridge train"):
        checkpoint.load(ROOT / "models" / "gan.pt")
    with pytest.raises(checkpoint.CheckpointError, match="is a midi-bridge RNN checkpoint .*midi-bridge train-gan"):
        gan.load(run / "best.pt")
    (tmp_path / "cut.pt").write_bytes((run / "best.pt").read_bytes()[:3000])
    with pytest.raises(checkpoint.CheckpointError, match="truncated or not a PyTorch checkpoint"):
        checkpoint.load(tmp_path / "cut.pt")
    with pytest.raises(checkpoint.CheckpointError, match="not a midi-bridge RNN checkpoint: give one"):
        checkpoint.load(dataset / "train.pt")
    with pytest.raises(checkpoint.CheckpointError, match="folder"):
        checkpoint.load(run)


def test_evaluate_a_dataset_with_a_subset_of_the_checkpoints_styles(dataset, tmp_path, capsys):
    """Before: "dataset styles ['folk'] do not match the checkpoint's ['chorale', 'folk']"."""
    from midi_bridge.model.encoding import EventSpec
    from midi_bridge.training.dataset import load_meta
    from midi_bridge.training.evaluate import evaluate, rnn_metrics
    from midi_bridge.training.train import featurize

    run = tmp_path / "run"
    assert model_cli(["train", "-d", str(dataset), "-o", str(run), "--epochs", "1", *TINY]) == 0
    model, meta, _ = checkpoint.load(run / "best.pt")
    assert meta["styles"] == ["chorale", "folk"]
    folk = tmp_path / "folk"
    prepare([dataset.parent / "src" / "folk"], folk, mono=True, style="folk", log=lambda *a, **k: None)
    assert load_meta(folk)["styles"] == ["folk"]
    alone = evaluate(run / "best.pt", folk, split="train", markov=False)["rnn"]
    spec = EventSpec.from_dict(load_meta(dataset)["spec"])
    inside = [p for p in featurize(dataset, "train", spec.sizes) if p[4] == 1]  # folk = 1 in the checkpoint
    both = rnn_metrics(model, inside, spec)
    assert alone["notes"] == both["notes"] > 0
    assert alone["bits_per_note"] == pytest.approx(both["bits_per_note"], abs=2e-4)
    wrong = rnn_metrics(model, [p[:4] + (0,) for p in inside], spec)  # read as chorale: another figure
    assert wrong["bits_per_note"] != pytest.approx(both["bits_per_note"], abs=2e-4)
    other = tmp_path / "other"
    prepare([dataset.parent / "src" / "folk"], other, mono=True, style="ballads", log=lambda *a, **k: None)
    capsys.readouterr()
    assert model_cli(["evaluate", "--checkpoint", str(run / "best.pt"), "--dataset", str(other), "--split", "train",
                      "--no-markov"]) == 2
    assert "missing: ['ballads']" in capsys.readouterr().err
