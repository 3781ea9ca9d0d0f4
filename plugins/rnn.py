"""The stateful recurrent generator (``rnn``): a trained LSTM/GRU that folds each played
note into its state in one step and answers by sampling from that state.

* ``observe`` - a played note becomes one event ``(dt, pitch, dur, vel)`` once its
  duration is known (at its note-off, or when the next note starts for a monophonic
  model); then one O(1) step.  A polyphonic model (checkpoint meta ``mono: false``)
  folds every note of a chord: notes are queued in onset order, a chord's notes from the
  highest down as in training, and a note starting within ``CHORD_STEPS`` of the one
  before counts as starting with it (a played chord is never exactly simultaneous);
  bounded: a note held longer than 8 beats is folded as 8 beats long.  A monophonic
  model folds a chord's highest note only.
* ``continuation`` - a generator: sample an event, feed it back, yield the note, repeat;
  the engine pulls lazily and may stop it at any note.  The model keeps its own answer
  in its state (it hears itself, as in a duet).
* ``accompany`` - ``accompaniment: model`` (the default for a polyphonic checkpoint): the
  played note is folded at once (with the duration the model expects) and ``voices``
  notes below it are sampled from the same model as events at the played note's onset
  (``dt = 0``, each below the one before, within the pitch range/key mask) and folded too;
  ``accompaniment: harmonizer`` (the default for a monophonic checkpoint): the chorale
  harmonizer, for each played melody note bass, tenor and alto sampled given the note and
  the history.  Either way they end with the played note.

Config: ``checkpoint`` / ``harmonizer`` (paths; relative ones are looked up in the
current folder, then in the project's ``models/``), ``style`` (a label the checkpoint
knows, e.g. ``folk`` or ``chorale``; default ``folk`` if it knows it, else its first), ``temperature``
(>= 0; the performer's live temperature overrides it), ``top_p`` (0-1), ``low``/``high``
(answer pitch range),
``key`` (e.g. ``"D minor"``: answer notes restricted to that scale; the range must hold
one of its pitches), ``device``
(``auto | cpu | cuda``; a missing GPU falls back to the CPU with a logged reason),
``int8`` (int8 weights on the CPU), ``copy`` (added to the logit of the in-piece copy
gate: negative values make answers quote the phrase less, positive more; 0 = as trained),
``seed``, ``accompaniment`` (``auto | model | harmonizer``), ``voices`` (0-8, notes per
played note from the model).
"""

from __future__ import annotations

import logging
import re
from collections import deque
from pathlib import Path
from typing import Iterator, Sequence

from midi_bridge.model.keys import parse_key
from midi_bridge.model.paths import resolve_model_path
from midi_bridge.plugin import Context, Generator, Note, PlayedEvent, PluginError
from midi_bridge.generators import checked_number

log = logging.getLogger("midi_bridge.plugins.rnn")

MAX_GAP_WAITS = 2  # a silence longer than 3 x 8 beats is folded as 24 beats; an answer
                   # that would wait longer than that (the model has nothing to say in the
                   # allowed range) ends, so one pull costs at most MAX_GAP_WAITS + 1 steps
CHORD_STEPS = 1  # polyphonic model: a note-on this close (1/12 beat) after the last one joins its chord
ACCOMPANIMENTS = ("auto", "model", "harmonizer")


def load_stepper(path: str, device: str = "auto", int8: bool = False, seed=None):
    """``(stepper, meta)`` for a checkpoint on the requested device (CPU fallback logged)."""
    import torch

    from midi_bridge.model import checkpoint
    from midi_bridge.model.device import resolve_device
    from midi_bridge.model.step import Stepper

    try:
        model, meta, _ = checkpoint.load(resolve_model_path(path, "rnn"))
    except checkpoint.CheckpointError as exc:
        raise PluginError(f"rnn: {exc}") from None
    dev, why = resolve_device(device)
    if why:
        log.warning("rnn: %s", why)
    if dev.type == "cuda":
        try:
            from midi_bridge.model.cuda_graph import GraphedStepper

            return GraphedStepper(model, dev, seed=seed), meta
        except Exception as exc:  # a broken GPU setup must not take the bridge down
            log.warning("rnn: CUDA step unavailable (%s); using the CPU", exc)
    torch.set_num_threads(1)
    return Stepper(model, "cpu", int8=int8, seed=seed), meta


def _pitch_mask(sampling, cfg):
    """The answer's pitch mask from ``low``/``high``/``key``; refuses one with no pitch in it
    (the model could only wait: an answer would never come)."""
    low = max(0, checked_number("rnn", cfg, "low", integer=True))
    high = min(127, checked_number("rnn", cfg, "high", integer=True))
    if low > high:
        raise ValueError(f"rnn: generators.rnn.low ({cfg['low']}) is above generators.rnn.high "
                         f"({cfg['high']}): no pitch to play (low <= high, MIDI pitches 0-127)")
    mask = sampling.pitch_range_mask(low, high)
    if cfg["key"]:
        try:
            tonic, mode = parse_key(str(cfg["key"]))
        except ValueError as exc:
            raise ValueError(f"rnn: generators.rnn.key: {exc} (e.g. 'D minor', 'F# major', 'Bb', "
                             "or null for any key)") from None
        mask &= sampling.key_mask(tonic, mode)
        if not mask[:128].any():
            raise ValueError(f"rnn: no pitch of the key {cfg['key']!r} lies between generators.rnn.low "
                             f"and high ({low}..{high}): widen the range or change the key")
    return mask


class RNNGenerator(Generator):
    name = "rnn"
    api_version = 1
    modes = frozenset({"continue", "accompany"})
    default_config = {
        "checkpoint": "melody.pt",
        "harmonizer": "chorale-harmonizer.pt",
        "style": None,
        "temperature": 0.9,
        "top_p": 0.95,
        "low": 36,
        "high": 96,
        "key": None,
        "device": "auto",
        "int8": False,
        "copy": 0.0,
        "seed": None,
        "accompaniment": "auto",
        "voices": 3,
    }

    def __init__(self, config=None) -> None:
        super().__init__(config)
        from midi_bridge.model import encoding, sampling

        self.enc = encoding
        cfg = self.config
        # Settings are checked before anything is loaded: a bad value is refused when the
        # generator is selected, not found at the first answer in the middle of playing.
        checked_number("rnn", cfg, "temperature", low=0)
        checked_number("rnn", cfg, "top_p", low=0, high=1)
        checked_number("rnn", cfg, "copy")
        checked_number("rnn", cfg, "seed", low=0, integer=True, optional=True)
        self.voices = int(checked_number("rnn", cfg, "voices", low=0, high=8, integer=True))
        acc = str(cfg["accompaniment"]).lower()
        if acc not in ACCOMPANIMENTS:
            raise ValueError(f"rnn: generators.rnn.accompaniment must be one of {', '.join(ACCOMPANIMENTS)}, "
                             f"not {cfg['accompaniment']!r}")
        device = str(cfg["device"]).lower()
        if device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", device):
            raise ValueError(f"rnn: generators.rnn.device must be auto, cpu, cuda or cuda:N, not {cfg['device']!r}")
        mask = _pitch_mask(sampling, cfg)
        self.st, meta = load_stepper(cfg["checkpoint"], cfg["device"], bool(cfg["int8"]), cfg["seed"])
        if self.st.spec.view != "notes":
            raise PluginError(f"rnn: {cfg['checkpoint']} is a {self.st.spec.view} model, not a note model")
        self.st.gate_offset = float(cfg["copy"])
        self.mono = bool(meta.get("mono", False))
        if acc == "model" and self.mono:
            raise PluginError(f"rnn: accompaniment 'model' needs a polyphonic checkpoint; {cfg['checkpoint']} was "
                              "trained on melodies (prepare --mono): use accompaniment 'harmonizer' or 'auto'")
        self.acc_model = acc == "model" or (acc == "auto" and not self.mono)
        styles = meta.get("styles") or ["default"]
        style = cfg["style"] or ("folk" if "folk" in styles else styles[0])
        if style not in styles:
            raise PluginError(f"rnn: style {style!r} unknown to {cfg['checkpoint']} (it knows {', '.join(styles)})")
        self.style = styles.index(style)
        self._styles = list(styles)
        self.masks = {"pitch": mask}
        self.harm = None
        if cfg["harmonizer"] and not self.acc_model:
            try:
                self.harm, hmeta = load_stepper(cfg["harmonizer"], cfg["device"], bool(cfg["int8"]), cfg["seed"])
                self.harm_style = 0
            except PluginError as exc:
                log.warning("%s; accompaniment is off", exc)
        self._warm_up()
        self.reset()

    def _warm_up(self) -> None:
        """A few steps so the first played note does not pay for lazy initialisation."""
        self.st.reset(self.style)
        for _ in range(3):
            self.st.feed(self.st.sample(masks=self.masks))
        if self.harm is not None:
            self.harm.reset(0)
            self.harm.feed(self.harm.sample(given=(12, 72)))

    # -- state ------------------------------------------------------------------------
    def reset(self) -> None:
        self.st.reset(self.style)
        self.last_onset: int | None = None  # grid step of the last folded event
        self.pending: deque[list] = deque()  # [start, pitch, vel, dur or None]
        if self.harm is not None:
            self.harm.reset(0)
        self.harm_last: int | None = None
        self._voices: list[int] = []  # the last voicing sounded (absolute pitches)

    def observe(self, event: PlayedEvent) -> None:
        now = self.enc.beats_to_steps(event.beat)
        if event.on:
            if self.mono and self.pending:
                head = self.pending[-1]
                if head[0] == now:  # a chord: the melody is its highest note
                    if event.pitch > head[1]:
                        head[1], head[2] = event.pitch, event.velocity
                    return
                if head[3] is None:
                    head[3] = now - head[0]
            if not self.mono:
                self._queue_chord_note(now, event)
                return self._fold_ready(now)
            self.pending.append([now, event.pitch, event.velocity, None])
        else:
            for note in self.pending:
                if note[1] == event.pitch and note[3] is None:
                    note[3] = now - note[0]
                    break
        self._fold_ready(now)

    def _queue_chord_note(self, now: int, event: PlayedEvent) -> None:
        """Polyphonic model: queue a note-on; one starting within CHORD_STEPS of the last
        onset joins that chord, in its place from the highest pitch down."""
        pending = self.pending
        last = pending[-1][0] if pending else self.last_onset
        if last is not None and 0 < now - last <= CHORD_STEPS:
            now = last
        i = len(pending)  # (a chord has a few notes: at most that many looked at)
        while i and pending[i - 1][0] == now and pending[i - 1][1] < event.pitch:
            i -= 1
        pending.insert(i, [now, event.pitch, event.velocity, None])

    def _fold_ready(self, now: int, flush: bool = False) -> None:
        max_dur = self.enc.MAX_DUR
        while self.pending:
            head = self.pending[0]
            if head[3] is None:
                if flush or now - head[0] >= max_dur:
                    head[3] = now - head[0]
                else:
                    break
            self.pending.popleft()
            self._fold(head[0], head[1], head[2], head[3])

    def _fold(self, start: int, pitch: int, vel: int, dur: int | None) -> None:
        """One played note into the state (after WAIT rows for a long gap); ``dur`` None:
        the duration the model expects for it (accompaniment, at the note-on)."""
        enc = self.enc
        dt = 0 if self.last_onset is None else max(0, start - self.last_onset)
        waits = 0
        while dt > enc.MAX_DT and waits < MAX_GAP_WAITS:
            self.st.feed((enc.MAX_DT, enc.WAIT, 0, 0))
            dt -= enc.MAX_DT
            waits += 1
        dt = min(dt, enc.MAX_DT)
        if dur is None:
            dur = self.st.sample(self._temperature(None), float(self.config["top_p"]), given=(dt, pitch))[2]
        self.st.feed((dt, pitch, max(1, min(enc.MAX_DUR, dur)), enc.vel_to_bin(vel)))
        self.last_onset = start

    # -- continue ---------------------------------------------------------------------
    def continuation(self, context: Context) -> Iterator[Note]:
        self._fold_ready(self.enc.beats_to_steps(context.beat), flush=True)
        return self._answer(context)

    def _answer(self, context: Context) -> Iterator[Note]:
        # The answer feeds its own notes back into the recurrent state; when it ends (played
        # out, interrupted, or a speculative answer discarded unplayed) the state returns to
        # what the player played (the recurrent state and the in-piece statistics), so the
        # model goes on from the player's notes alone, and a discarded speculation leaves
        # no trace.
        snap, last_onset = self.st.snapshot(), self.last_onset
        self._answer_state = snap  # for rating_context(): the state this answer came from
        try:
            yield from self._sample_answer(context)
        finally:
            self.st.restore(snap)
            self.last_onset = last_onset

    def _sample_answer(self, context: Context) -> Iterator[Note]:
        enc, st, cfg = self.enc, self.st, self.config
        base = enc.beats_to_steps(context.beat)
        t = base if self.last_onset is None else self.last_onset
        shift = None
        last_start = 0.0
        temperature = float(cfg["temperature"] if context.temperature is None else context.temperature)
        self._answer_temperature = temperature
        waits = 0
        while True:
            ev = st.sample(temperature, float(cfg["top_p"]), self.masks)
            st.feed(ev)
            t += ev[0]
            self.last_onset = t
            if ev[1] == enc.WAIT:
                waits += 1
                if waits > MAX_GAP_WAITS:
                    return
                continue
            waits = 0
            if shift is None:
                shift = base - t  # the answer's first note sounds as the answer starts
            start = max(last_start, (t + shift - base) / enc.STEPS_PER_BEAT)
            last_start = start
            yield Note(pitch=ev[1], velocity=enc.bin_to_vel(ev[3]), start=start,
                       duration=ev[2] / enc.STEPS_PER_BEAT)

    # -- accompany --------------------------------------------------------------------
    def _temperature(self, context: Context | None) -> float:
        t = None if context is None else context.temperature
        return float(self.config["temperature"] if t is None else t)

    def accompany(self, event: PlayedEvent, context: Context) -> Sequence[Note]:
        if self.acc_model:
            return self._accompany_model(event, context)
        if self.harm is None:
            return ()
        enc = self.enc
        now = enc.beats_to_steps(event.beat)
        dt = 0 if self.harm_last is None else min(enc.MAX_DT, max(0, now - self.harm_last))
        self.harm_last = now
        temperature = self.config["temperature"] if context.temperature is None else context.temperature
        ev = self.harm.sample(float(temperature), float(self.config["top_p"]), given=(dt, event.pitch))
        self.harm.feed(ev)
        vel = max(1, int(event.velocity * 0.8))
        notes, seen = [], {event.pitch}
        for iv in ev[2:]:
            p = event.pitch - iv
            if iv != enc.NONE and 0 <= p <= 127 and p not in seen:  # doubled voices sound once
                seen.add(p)
                notes.append(Note(pitch=p, velocity=vel, start=0.0, duration=None))
        if notes:
            self._voices = [n.pitch for n in notes]
        else:
            # The chorale model holds its voices under a passing note (no new attack).  In
            # accompany mode the old voices ended with the old note, so the held chord is
            # sounded again under this one (an octave lower where it would not fit below).
            for p in self._voices:
                while p >= event.pitch:
                    p -= 12
                if p >= 0 and p not in seen:
                    seen.add(p)
                    notes.append(Note(pitch=p, velocity=vel, start=0.0, duration=None))
        return notes

    def _accompany_model(self, event: PlayedEvent, context: Context) -> list[Note]:
        """The played note folded now, then ``voices`` events sampled at its onset
        (``dt = 0``), each below the last, folded as they are chosen (the model hears its
        own accompaniment, as in a chorale).  O(voices) steps per played note."""
        enc, st = self.enc, self.st
        now = enc.beats_to_steps(event.beat)
        played = None
        for note in self.pending:  # the note observe() just queued (its onset maybe snapped)
            if note[1] == event.pitch and note[3] is None:
                played = note
        if played is None:
            return []
        while self.pending:  # everything before it, with the length it has sounded so far
            head = self.pending.popleft()
            if head is played:
                break
            self._fold(head[0], head[1], head[2], head[3] if head[3] is not None else max(1, now - head[0]))
        chord = played[0] == self.last_onset  # another note of an onset already accompanied
        self._fold(played[0], event.pitch, event.velocity, None)
        if chord:
            return []
        temperature, top_p = self._temperature(context), float(self.config["top_p"])
        vel = max(1, int(event.velocity * 0.8))
        lowest, notes = event.pitch, []
        for _ in range(self.voices):
            mask = self.masks["pitch"].copy()
            mask[lowest:] = False  # below the last voice (WAIT included: no gap at dt = 0)
            if not mask.any():
                break
            ev = st.sample(temperature, top_p, {"pitch": mask}, given=(0,))
            st.feed(ev)
            lowest = ev[1]
            notes.append(Note(pitch=int(ev[1]), velocity=vel, start=0.0, duration=None))
        return notes

    def rating_context(self) -> dict:
        """Saved with a rating: the checkpoint, style, sampling settings and the recurrent
        state the last answer was sampled from (``h``, and ``c`` for an LSTM, flattened,
        rounded to 4 decimals; the current state when no answer was sampled yet)."""
        # (the current state read directly: a snapshot would also mark the piece cache,
        # which then journals every later event until the mark is dropped)
        snap = getattr(self, "_answer_state", None) or (self.st.h, self.st.c)
        styles = self._styles
        ctx = {"checkpoint": Path(str(self.config["checkpoint"])).name,
               "style": styles[self.style] if self.style < len(styles) else None,
               "temperature": getattr(self, "_answer_temperature", float(self.config["temperature"])),
               "top_p": float(self.config["top_p"]),
               "kind": "lstm" if self.st.lstm else "gru", "state_shape": [int(d) for d in snap[0].shape],
               "state": [round(float(v), 4) for v in snap[0].flatten().tolist()]}
        if snap[1] is not None:
            ctx["cell"] = [round(float(v), 4) for v in snap[1].flatten().tolist()]
        return ctx

    def close(self) -> None:
        self.pending.clear()
