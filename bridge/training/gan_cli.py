"""The ``train-gan`` sub-command (the conditional bar GAN); ``midi_bridge.commands.cli`` calls
:func:`register`.

    midi-bridge train-gan -d DATASET -o RUNDIR [--epochs N] [--max-minutes M] [--seed S]
                          [--objective feature-matching|wgan-gp] [--resume] [--export FILE]
    midi-bridge train-gan -d DATASET --evaluate CHECKPOINT   # JS divergences vs the test split
    midi-bridge train-gan -d DATASET --calibrate CHECKPOINT -o OUT.pt   # fit the pitch-class bias
"""

from __future__ import annotations

from .cli import _run


def register(subparsers) -> None:
    p = subparsers.add_parser("train-gan", help="train the conditional bar GAN (MidiNet-style) on a melody dataset")
    p.add_argument("-d", "--dataset", required=True, help="a prepared melody dataset (midi-bridge prepare --mono)")
    p.add_argument("-o", "--out", help="run directory (last.pt, best.pt); with --calibrate, the output checkpoint")
    p.add_argument("--objective", choices=("feature-matching", "wgan-gp"), default="feature-matching",
                   help="feature-matching: non-saturating GAN + feature matching (MidiNet); wgan-gp: Wasserstein "
                        "critic with gradient penalty")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--steps-per-epoch", type=int, default=0, help="at most this many batches per epoch (0: all bars)")
    p.add_argument("--max-minutes", type=float, default=0, help="stop after this much training time")
    p.add_argument("--batch", type=int, default=128, help="bars per batch")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--fm-weight", type=float, default=1.0, help="feature-matching weight (feature-matching objective)")
    p.add_argument("--gp", type=float, default=10.0, help="gradient-penalty weight (wgan-gp)")
    p.add_argument("--n-critic", type=int, default=3, help="critic steps per generator step (wgan-gp)")
    p.add_argument("--transpose", type=int, default=0, metavar="N",
                   help="augment: move each training bar, its previous bar and tonal context by a random shift "
                        "of -N..N semitones (0: off; at most 11)")
    p.add_argument("--key-normalise", action="store_true",
                   help="train on bars moved to C by the tonic of their tonal context; sampling moves them back")
    p.add_argument("--tonal-weight", type=float, default=0.0,
                   help="weight of the tonal feature-matching term of the generator (absolute and key-relative "
                        "pitch-class profiles of a batch; 0: off)")
    p.add_argument("--init", metavar="CHECKPOINT",
                   help="start from the networks of a run's last.pt (fresh optimisers and epochs)")
    p.add_argument("--select", choices=("free", "continuation"), default="free",
                   help="validation score choosing best.pt: free (melodies from the train primers) or "
                        "continuation (continuing the val pieces' own passages, as the plugin continues a phrase)")
    p.add_argument("--z", type=int, default=32, help="noise dimensions")
    p.add_argument("--channels", type=int, default=96, help="width of the generator and discriminator")
    p.add_argument("--cond", type=int, default=48, help="width of the previous-bar conditioner")
    p.add_argument("--val-count", type=int, default=400, help="melodies generated for the validation score")
    p.add_argument("--eval-count", type=int, default=400,
                   help="melodies for the final test-split JS divergences (0: skip)")
    p.add_argument("--eval-bars", type=int, default=8, help="bars per melody for the final evaluation")
    p.add_argument("--evaluate", metavar="CHECKPOINT", help="only print CHECKPOINT's JS divergences to --eval-split")
    p.add_argument("--eval-split", choices=("test", "val"), default="test", help="the held-out split of --evaluate")
    p.add_argument("--calibrate", metavar="CHECKPOINT",
                   help="only fit CHECKPOINT's pitch-class logit bias to the train split and write it to -o OUT.pt")
    p.add_argument("--calibrate-frame", choices=("absolute", "key"), default="absolute",
                   help="pitch classes of the bias: absolute, or relative to the tonic of the tonal context")
    p.add_argument("--calibrate-iters", type=int, default=4, help="fitting steps of --calibrate")
    p.add_argument("--calibrate-count", type=int, default=2000,
                   help="melodies (of --eval-bars bars) per style sampled in each --calibrate step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue from RUNDIR/last.pt")
    p.add_argument("--export", help="also write the best generator as a small float16 checkpoint here")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--no-record-command", dest="record_command", action="store_false")
    p.set_defaults(func=_run("midi_bridge.training.gan_train", "cmd_train_gan"))
