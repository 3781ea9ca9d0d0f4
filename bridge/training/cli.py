"""Sub-commands of the model pipeline; ``midi_bridge.commands.cli`` calls :func:`register`.

    midi-bridge prepare INPUTS... -o DATASET [--mono] [--view notes|harmony] [--transpose K]
    midi-bridge corpus export -o DIR [--jobs N]
    midi-bridge train -d DATASET -o RUNDIR [--kind gru|lstm] [--resume] [--seed S] [--export F]
    midi-bridge evaluate --checkpoint C --dataset D [--json] [--theory [--tuned T] [--gan G]]

Each handler takes the parsed arguments and returns an exit code; heavy modules are
imported only when their command runs.
"""

from __future__ import annotations

import argparse
import sys


def _run(module: str, func: str):
    def handler(args) -> int:
        import importlib

        try:
            return int(getattr(importlib.import_module(module), func)(args) or 0)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:
            from midi_bridge.model.checkpoint import CheckpointError

            if isinstance(exc, CheckpointError):
                print(f"error: {exc}", file=sys.stderr)
                return 2
            raise
    return handler


def register(subparsers) -> None:
    p = subparsers.add_parser("prepare", help="encode MIDI files into a dataset (cached tensors, split by hash)")
    p.add_argument("inputs", nargs="+", help=".mid files or folders (searched recursively)")
    p.add_argument("-o", "--output", required=True, help="dataset directory to write")
    p.add_argument("--view", choices=("notes", "harmony"), default="notes",
                   help="notes: one event per note; harmony: melody notes with the lower voices")
    p.add_argument("--mono", action="store_true", help="keep only the melody (top track, highest note)")
    p.add_argument("--style", help="condition label for every file (default: the first sub-folder's name)")
    p.add_argument("--transpose", type=int, default=0, metavar="K",
                   help="augment the train split with copies transposed by -K..K semitones")
    p.add_argument("--min-notes", type=int, default=8, help="skip pieces with fewer notes")
    p.add_argument("--jobs", type=int, default=1, help="parallel worker processes")
    p.set_defaults(func=_run("midi_bridge.training.dataset", "cmd_prepare"))

    p = subparsers.add_parser("corpus", help="public-domain training corpus (needs the 'corpus' extra)")
    sub = p.add_subparsers(dest="corpus_command", required=True)
    e = sub.add_parser("export", help="write music21's folk collections and Bach chorales as MIDI")
    e.add_argument("-o", "--output", required=True, help="folder to write folk/ and chorale/ into")
    e.add_argument("--jobs", type=int, default=1, help="parallel worker processes")
    e.add_argument("--no-folk", action="store_true")
    e.add_argument("--no-chorales", action="store_true")
    e.add_argument("--limit", type=int, help="only the first N source files of each kind (for trying it out)")
    e.set_defaults(func=_run("midi_bridge.training.corpus", "cmd_export"))

    p = subparsers.add_parser("train", help="train an LSTM/GRU event model on a prepared dataset")
    p.add_argument("-d", "--dataset", required=True)
    p.add_argument("-o", "--out", required=True, help="run directory (last.pt, best.pt)")
    p.add_argument("--kind", choices=("gru", "lstm"), default="gru")
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--emb", type=int, default=128)
    p.add_argument("--head", type=int, default=256, help="width of each field's output MLP")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--no-copy", action="store_true", help="without the in-piece copy mixture")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--schedule", choices=("plateau", "cosine"), default="plateau",
                   help="plateau: halve the LR when validation stalls; cosine: decay over the epochs or --max-minutes")
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clipping")
    p.add_argument("--patience", type=int, default=3, help="early stopping: epochs without improvement")
    p.add_argument("--batch-events", type=int, default=8192, help="events per batch (padded)")
    p.add_argument("--accumulate", type=int, default=1, metavar="N",
                   help="batches per optimizer step and process (the step's batch: N x processes batches)")
    p.add_argument("--max-len", type=int, default=512, help="longest chunk of a piece")
    p.add_argument("--max-minutes", type=float, default=0, help="stop after this much training time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--resume", action="store_true", help="continue from RUNDIR/last.pt")
    p.add_argument("--export", help="also write the best weights as a small float16 checkpoint here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-record-command", dest="record_command", action="store_false")
    p.set_defaults(func=_run("midi_bridge.training.train", "train"))

    p = subparsers.add_parser("evaluate", help="bits per note, accuracy, perplexity vs markov and unigram")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--json", action="store_true", help="print one JSON object keyed by model")
    p.add_argument("--no-markov", action="store_true", help="skip the markov baseline")
    p.add_argument("--markov-order", type=int, default=None, help="PPM maximum order (default: tuned on val)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--theory", action="store_true",
                   help="music-theory metrics (RL Tuner) of corpus and sampled melodies per source")
    p.add_argument("--tuned", help="--theory: the RL-tuned checkpoint (default models/melody-tuned.pt if present)")
    p.add_argument("--gan", help="--theory: the GAN checkpoint (default models/gan.pt if present)")
    p.add_argument("--samples", type=int, default=200, help="--theory: melodies per source")
    p.add_argument("--notes", type=int, default=32, help="--theory: notes per melody")
    p.add_argument("--bars", type=int, default=8, help="--theory: bars per GAN melody (then cut to --notes)")
    p.add_argument("--temperature", type=float, default=1.0, help="--theory: sampling temperature")
    p.add_argument("--seed", type=int, default=0, help="--theory: first sampling seed")
    p.add_argument("--markov-weight", type=float, default=32.0, help="--theory: the PPM's piece weight")
    p.add_argument("--no-bits", action="store_true", help="--theory: skip bits per note")
    plain, theory = _run("midi_bridge.training.evaluate", "cmd_evaluate"), _run("midi_bridge.training.theory_eval", "cmd_theory")
    p.set_defaults(func=lambda a: (theory if a.theory else plain)(a), tuned=None, gan=None)


def main(argv=None) -> int:
    """Stand-alone entry (``python -m midi_bridge.training.cli``) until midi_bridge.commands.cli registers these."""
    parser = argparse.ArgumentParser(prog="midi-bridge")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
