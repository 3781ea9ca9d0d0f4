"""``midi-bridge chords``: the chord-onset shares of :mod:`midi_bridge.training.chords`, with
the ``rnn`` generator loaded as the bridge loads it (plugin discovery).

Registered by :func:`register` (``midi_bridge.commands.cli`` adds it to the sub-commands).
"""

from __future__ import annotations

import json

from midi_bridge.training.chords import ANSWER, PASSAGES, PROMPT


def make_rnn(settings):
    from midi_bridge.plugin import PluginError
    from midi_bridge.runtime import discovery

    info = discovery.discover().get("rnn")
    if info is None:
        raise PluginError("the rnn generator is not installed")
    return discovery.create(info, settings)


def cmd_chords(args) -> int:
    import torch

    from midi_bridge.training.chords import measure

    torch.set_num_threads(1)
    res = measure(make_rnn, args.checkpoint, args.dataset, args.split, args.style, args.prompt, args.answer,
                  args.passages, args.temperature, args.seed, args.max_pieces)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{res['passages']} passages of the {res['split']} split of {res['dataset']} (style {res['style']}): "
          f"{res['prompt_notes']}-note prompts, {res['answer_notes']}-note answers")
    print(f"chord onsets: answers {res['answer_chord_share']:.3f}, corpus {res['corpus_chord_share']:.3f}"
          + (f", ratio {res['ratio']:.3f}" if res["ratio"] is not None else ""))
    print(f"notes per onset: answers {res['answer_notes_per_onset']:.2f}, corpus {res['corpus_notes_per_onset']:.2f}")
    return 0


def register(subparsers) -> None:
    from midi_bridge.training.cli import _run

    p = subparsers.add_parser("chords", help="share of chord onsets in continuations of held-out passages")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", required=True, help="a note-view dataset (prepare without --mono)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--style", help="the style label to answer in (default: the plugin's)")
    p.add_argument("--prompt", type=int, default=PROMPT, help="notes played before each answer")
    p.add_argument("--answer", type=int, default=ANSWER, help="notes of each answer (and of the truth)")
    p.add_argument("--passages", type=int, default=PASSAGES, help="passages per piece")
    p.add_argument("--max-pieces", type=int, help="only the first N pieces of the split")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: the plugin's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run("midi_bridge.commands.chords", "cmd_chords"))
