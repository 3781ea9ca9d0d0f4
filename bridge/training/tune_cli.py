"""The ``tune`` sub-command (RL fine-tuning, :mod:`midi_bridge.training.tune`)."""

from __future__ import annotations

from .cli import _run


def register(subparsers) -> None:
    p = subparsers.add_parser("tune", help="RL fine-tuning of a note RNN with a music-theory reward (+ ratings)")
    p.add_argument("--checkpoint", required=True, help="the trained note-view checkpoint to start from")
    p.add_argument("-o", "--out", required=True, help="where to write the tuned checkpoint")
    p.add_argument("-d", "--dataset", help="prepared dataset: its train split is the maximum-likelihood anchor")
    p.add_argument("--ratings", help="a ratings file (JSON lines) whose ratings join the objective")
    p.add_argument("--rating-weight", type=float, default=1.0)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--batch", type=int, default=16, help="melodies sampled per iteration")
    p.add_argument("--notes", type=int, default=32, help="notes per sampled melody")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--theory-weight", type=float, default=1.0, help="weight of the music-theory reward")
    p.add_argument("--prior-weight", type=float, default=0.2,
                   help="weight of log p_prior - log pi (keeps the pre-trained style)")
    p.add_argument("--novelty-weight", type=float, default=1.0, help="weight of the batch novelty term")
    p.add_argument("--gamma", type=float, default=0.9, help="discount of the per-event rewards")
    p.add_argument("--mle-weight", type=float, default=0.2, help="weight of the maximum-likelihood anchor")
    p.add_argument("--style", help="sample only this style (default: all of the checkpoint's)")
    p.add_argument("--max-minutes", type=float, default=0, help="stop after this much time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--half", action="store_true", help="store the weights as float16 (as shipped)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_run("midi_bridge.training.tune", "cmd_tune"))
