"""The conditional bar GAN (``gan``): answers a played phrase bar by bar (``continue`` mode).

The last bar of the phrase (the 4 beats ending on the beat after its last note, as
sixteenth-note tokens; see :func:`midi_bridge.model.gan.phrase_to_bars`) and the pitch-class
profile of the phrase's last 4 bars condition the first answer bar; each later bar is
conditioned on the answer bar before it and the profile of the last 4 bars.  A bar is sampled
only when the engine pulls past the previous one, so an interrupted answer costs nothing
more.  A note held over a bar line is yielded when the next bar shows where it ends.  A
checkpoint calibrated by ``train-gan --calibrate`` (the shipped ``gan.pt`` is) carries a pitch-class logit bias, used here
as in :func:`midi_bridge.model.gan.sample_bars`.

Config: ``checkpoint`` (relative paths are looked up in the current folder, then in the
project's ``models/``), ``style`` (a label the checkpoint knows; default ``folk`` if it
knows it, else its first), ``temperature`` (of the per-step softmax; the performer's live
temperature overrides it), ``bars`` (answer length when the engine sets no ``max_beats``),
``seed`` (``null``: a different answer every time).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Iterator

from midi_bridge.model.paths import resolve_model_path
from midi_bridge.plugin import Context, Generator, Note, PlayedEvent, PluginError
from midi_bridge.generators import checked_number

MAX_TRACKED = 64  # note-offs remembered for the durations of the phrase's notes


class GANGenerator(Generator):
    name = "gan"
    api_version = 1
    modes = frozenset({"continue"})
    default_config = {
        "checkpoint": "gan.pt",
        "style": None,
        "temperature": 1.0,
        "bars": 4,
        "seed": None,
    }

    def __init__(self, config=None) -> None:
        super().__init__(config)
        import torch

        from midi_bridge.model import checkpoint, gan, gan_bars

        self.gan, self.gan_bars = gan, gan_bars
        cfg = self.config
        # Checked here, not at the first answer: a bad value is refused when selected.
        checked_number("gan", cfg, "temperature", low=0)
        checked_number("gan", cfg, "bars", low=1, integer=True)
        checked_number("gan", cfg, "seed", integer=True, optional=True)
        path = resolve_model_path(str(cfg["checkpoint"]), "gan")
        try:
            self.model = gan.load(path)
        except checkpoint.CheckpointError as exc:
            raise PluginError(f"gan: {exc}") from None
        styles = self.model.styles
        style = cfg["style"] or ("folk" if "folk" in styles else styles[0])
        if style not in styles:
            raise PluginError(f"gan: style {style!r} unknown to {cfg['checkpoint']} (it knows {', '.join(styles)})")
        self.style = styles.index(style)
        torch.set_num_threads(1)
        self.rng = torch.Generator()
        if cfg["seed"] is not None:
            self.rng.manual_seed(int(cfg["seed"]))
        else:
            self.rng.seed()
        self.bars_sampled = 0  # bars generated so far (for tests and rating_context)
        self.reset()

    # -- state ------------------------------------------------------------------------
    def reset(self) -> None:
        self._open: dict[int, float] = {}  # pitch -> onset beat of a sounding played note
        self._done: deque[tuple[int, float, float]] = deque(maxlen=MAX_TRACKED)  # (pitch, on, off)

    def observe(self, event: PlayedEvent) -> None:
        if event.on:
            self._open[event.pitch] = event.beat
        else:
            on = self._open.pop(event.pitch, None)
            if on is not None:
                self._done.append((event.pitch, on, event.beat))

    def _phrase_notes(self, context: Context) -> list[tuple[int, float, float | None]]:
        offs = {(p, round(on, 4)): off - on for p, on, off in self._done}
        return [(e.pitch, e.beat, offs.get((e.pitch, round(e.beat, 4))))
                for e in context.phrase if e.on]

    # -- continue ---------------------------------------------------------------------
    def continuation(self, context: Context) -> Iterator[Note]:
        notes = self._phrase_notes(context)
        history = self.gan.phrase_to_bars(notes)
        vels = [e.velocity for e in context.phrase if e.on]
        vel = int(round(sum(vels) / len(vels))) if vels else 90
        temp = context.temperature if context.temperature is not None else float(self.config["temperature"])
        if context.max_beats and context.max_beats > 0:
            limit = float(context.max_beats)
        else:
            limit = float(self.config["bars"]) * self.gan_bars.BAR_BEATS
        return self._answer(history, max(0.0, float(temp)), limit, vel)

    def _answer(self, history, temperature: float, limit: float, vel: int) -> Iterator[Note]:
        gan, fmt = self.gan, self.gan_bars  # fmt: the bar format
        n_bars = max(1, math.ceil(limit / fmt.BAR_BEATS - 1e-9))
        bars = gan.continue_bars(self.model.gen, history, self.style, temperature, self.rng,
                                 pc_bias=self.model.pc_bias, bias_frame=self.model.bias_frame)
        step = fmt.STEP_BEATS
        cur = None  # [pitch, start step] of the note sounding at the end of what was decoded

        def note(pitch: int, a: int, b: int) -> Note | None:
            start = a * step
            if start >= limit:
                return None
            return Note(pitch=pitch, velocity=vel, start=start, duration=min(b * step, limit) - start)

        for b in range(n_bars):
            toks = next(bars)
            self.bars_sampled += 1
            for i, t in enumerate(toks.tolist()):
                s = b * fmt.STEPS + i
                if t < fmt.N_PITCH or t == fmt.REST:
                    if cur is not None:
                        n = note(cur[0], cur[1], s)
                        if n is not None:
                            yield n
                    cur = [t + fmt.LOW, s] if t < fmt.N_PITCH else None
        if cur is not None:
            n = note(cur[0], cur[1], n_bars * fmt.STEPS)
            if n is not None:
                yield n

    def close(self) -> None:
        self.reset()

    def rating_context(self):
        return {"checkpoint": str(self.config["checkpoint"]), "style": self.model.styles[self.style],
                "bars_sampled": self.bars_sampled}
