"""``chords``: how often a generator answers with chords (simultaneous onsets).

    midi-bridge chords --checkpoint C --dataset D [--split test] [--style S] [--json]

(the command is :mod:`midi_bridge.commands.chords`, which hands :func:`measure` the ``rnn``
generator: this room never imports a generator).  Held-out passages of a prepared note-view dataset are played into the ``rnn`` plugin
exactly as the bridge does (note-ons and note-offs at their beats, so a monophonic
checkpoint hears a chord's top note only and a polyphonic one every note), then its
continuation is pulled, ``--answer`` notes long.  Reported:

* ``answer_chord_share``: the share of the answers' onsets (distinct note starts) where
  two or more notes start together;
* ``corpus_chord_share``: the same share in the true continuations of the same passages
  (the notes that follow each prompt in the piece, ``--answer`` notes of them);
* ``ratio``: answer / corpus share (the issue's target for chorales: 0.8-1.2; for folk
  tunes the answer share should stay under 0.05), and notes per onset of both.

Passages: up to ``--passages`` per piece, evenly spaced, each a prompt of ``--prompt``
notes (extended to the end of its last chord) and the ``--answer`` notes after it.
"""

from __future__ import annotations

PROMPT, ANSWER, PASSAGES = 32, 32, 3


def _onset_stats(starts) -> tuple[int, int, int]:
    """``(onsets, chord onsets, notes)`` of a list of note starts."""
    counts: dict = {}
    for s in starts:
        key = round(float(s), 6)
        counts[key] = counts.get(key, 0) + 1
    return len(counts), sum(1 for c in counts.values() if c >= 2), len(starts)


def passages(notes, prompt: int = PROMPT, answer: int = ANSWER, per_piece: int = PASSAGES):
    """``(prompt_notes, true_continuation)`` pairs of one piece's notes (onset order)."""
    n = len(notes)
    if n < prompt + answer:
        return []
    last = n - prompt - answer
    count = max(1, min(per_piece, last // max(1, prompt) + 1))
    out = []
    for j in range(count):
        s = (last * j) // max(1, count - 1) if count > 1 else 0
        while 0 < s < n and notes[s].start == notes[s - 1].start:  # start at an onset
            s -= 1
        e = s + prompt
        while e < n and notes[e].start == notes[e - 1].start:  # end after a whole chord
            e += 1
        if e + answer <= n:
            out.append((notes[s:e], notes[e:e + answer]))
    return out


def play_prompt(gen, notes) -> float:
    """Feed ``notes`` (GridNotes) into the plugin as played events; returns the beat after
    the last note-off (where the answer starts)."""
    from midi_bridge.model.encoding import STEPS_PER_BEAT
    from midi_bridge.plugin import PlayedEvent

    t0 = notes[0].start
    events = []
    for n in notes:
        events.append((n.start - t0, 1, n.pitch, n.vel))
        events.append((n.start - t0 + n.dur, 0, n.pitch, 0))
    events.sort(key=lambda e: (e[0], e[1], -e[2]))  # offs before ons at one time
    end = 0
    for t, on, pitch, vel in events:
        beat = t / STEPS_PER_BEAT
        gen.observe(PlayedEvent(on=bool(on), pitch=pitch, velocity=max(1, vel) if on else 0,
                                channel=0, beat=beat, seconds=beat / 2))
        end = max(end, t)
    return end / STEPS_PER_BEAT


def measure(make_generator, checkpoint: str, dataset: str, split: str = "test", style: str | None = None,
            prompt: int = PROMPT, answer: int = ANSWER, per_piece: int = PASSAGES,
            temperature: float | None = None, seed: int = 0, max_pieces: int | None = None) -> dict:
    """``make_generator(settings)`` builds the ``rnn`` generator (its class, or the
    runtime's plugin loader)."""
    from midi_bridge.model.encoding import decode_notes
    from midi_bridge.plugin import Context
    from .dataset import load_meta, load_split

    meta = load_meta(dataset)
    if meta["spec"]["view"] != "notes":
        raise ValueError(f"{dataset} is a {meta['spec']['view']} dataset: chords needs a note-view one")
    data = load_split(dataset, split)
    cfg = {"checkpoint": checkpoint, "seed": seed, "device": "cpu", "style": style,
           "accompaniment": "harmonizer", "harmonizer": None}
    if temperature is not None:
        cfg["temperature"] = temperature
    gen = make_generator(cfg)
    ans = [0, 0, 0]
    ref = [0, 0, 0]
    n_passages = 0
    pieces = range(len(data)) if max_pieces is None else range(min(len(data), max_pieces))
    for i in pieces:
        notes = decode_notes(data.piece(i).numpy())
        for prompt_notes, truth in passages(notes, prompt, answer, per_piece):
            gen.reset()
            end = play_prompt(gen, prompt_notes)
            ctx = Context(tempo_bpm=120.0, beat=end, max_notes=answer, max_beats=64.0)
            it = gen.continuation(ctx)
            starts = []
            for note in it:
                starts.append(note.start)
                if len(starts) >= answer:
                    break
            it.close()
            for acc, stats in ((ans, _onset_stats(starts)), (ref, _onset_stats([n.start for n in truth]))):
                for k in range(3):
                    acc[k] += stats[k]
            n_passages += 1
    gen.close()
    if not n_passages:
        raise ValueError(f"no passage of {prompt} + {answer} notes in the {split} split of {dataset}")
    a_share, r_share = ans[1] / max(1, ans[0]), ref[1] / max(1, ref[0])
    return {"checkpoint": checkpoint, "dataset": dataset, "split": split, "style": gen._styles[gen.style],
            "passages": n_passages, "prompt_notes": prompt, "answer_notes": answer,
            "answer_chord_share": round(a_share, 4), "corpus_chord_share": round(r_share, 4),
            "ratio": round(a_share / r_share, 4) if r_share else None,
            "answer_notes_per_onset": round(ans[2] / max(1, ans[0]), 3),
            "corpus_notes_per_onset": round(ref[2] / max(1, ref[0]), 3)}
