"""register(): the model sub-commands; corpus export (with music21); bench model (registered
by the command line beside the other benchmarks)."""

import argparse
import json

import pytest
import torch

from midi_bridge.commands.cli import main as bridge_cli
from midi_bridge.model import checkpoint
from midi_bridge.training.cli import main as model_cli, register
from midi_bridge.model.encoding import NOTE_SPEC
from midi_bridge.model.rnn import EventRNN, ModelConfig


def test_register_adds_subcommands():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    for argv in (["prepare", "a.mid", "-o", "ds"], ["corpus", "export", "-o", "out"],
                 ["train", "-d", "ds", "-o", "run"], ["evaluate", "--checkpoint", "c", "--dataset", "d"]):
        args = parser.parse_args(argv)
        assert callable(args.func)


def test_prepare_cli_counts(tmp_path, capsys):
    from test_model_dataset import make_corpus

    make_corpus(tmp_path / "src", n=5)
    assert model_cli(["prepare", str(tmp_path / "src"), "-o", str(tmp_path / "ds"), "--mono"]) == 0
    out = capsys.readouterr()
    assert "train:" in out.out and "skipped: 2 files" in out.out and "junk.mid" in out.err
    assert model_cli(["train", "-d", str(tmp_path / "nope"), "-o", str(tmp_path / "r")]) == 2


def test_corpus_export_small(tmp_path):
    pytest.importorskip("music21")
    assert model_cli(["corpus", "export", "-o", str(tmp_path), "--limit", "1", "--no-folk"]) == 0
    assert len(list((tmp_path / "chorale" / "bach").glob("*.mid"))) == 1
    assert "essenFolksong" in (tmp_path / "LICENCES.txt").read_text()


def test_bench_model_json(tmp_path, capsys):
    torch.manual_seed(0)
    model = EventRNN(NOTE_SPEC, 1, ModelConfig(hidden=24, layers=1, emb=8, head=16))
    checkpoint.save(tmp_path / "m.pt", model, {"styles": ["folk"]})
    from midi_bridge.bench import model as bench

    bench.LARGER = ((32, 1), (40, 2))  # keep the test fast
    assert bridge_cli(["bench", "model", "--json", "--checkpoint", str(tmp_path / "m.pt"), "--events", "30",
                       "--long", "400", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    rows = res["rows"]
    assert {(r["kind"], r["hidden"]) for r in rows} == {(k, h) for k in ("lstm", "gru") for h in (24, 32, 40)}
    default = [r for r in rows if r.get("default")]
    assert len(default) == 1 and default[0]["kind"] == "gru" and default[0]["hidden"] == 24
    assert default[0]["event_100_us"] > 0 and default[0]["event_400_us"] > 0
    for r in rows:
        assert r["event_p99_us"] >= r["event_p50_us"] > 0 and r["device"] == "cpu"
    g = res["gan"]  # the shipped GAN's answer bar
    assert g["checkpoint"].endswith("gan.pt") and g["bar_p99_us"] >= g["bar_p50_us"] > 0 and g["bars"] == 300
    assert bridge_cli(["bench", "model", "--json", "--checkpoint", str(tmp_path / "m.pt"), "--events", "5",
                      "--long", "0", "--device", "cpu", "--gan", "none"]) == 0
    assert "gan" not in json.loads(capsys.readouterr().out)
