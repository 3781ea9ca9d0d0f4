"""``evaluate --theory``: RL Tuner's music-theory metrics for the held-out corpus and for
melodies sampled from each model (see docs/models.md, "Music-theory evaluation").

Sources: ``corpus`` (the first ``--notes`` notes of test-split pieces), ``rnn`` (the
checkpoint), ``rnn_tuned`` (``--tuned``), ``gan`` (``--gan``, through
:func:`midi_bridge.training.gan_eval.generate_melodies` when the file exists), ``markov`` (the
PPM of :mod:`midi_bridge.model.ppm` fitted on the train split, sampled), and ``unigram`` (the same
PPM at order 0: the reference row for the histogram divergences).  Every model melody
is sampled with a fixed seed (``--seed`` + its index) from the begin-of-piece state,
conditioned on the style of the corpus melody with the same index, at ``--temperature``.
Each row has the metrics of :func:`midi_bridge.model.theory.metrics`, ``reward`` (the total
music-theory reward per note), ``js`` (Jensen-Shannon divergences of the pitch-class and
interval histograms to the corpus rows') and, for the RNNs and the markov model,
``bits_per_note`` on the whole test split.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from midi_bridge.model import checkpoint, theory
from midi_bridge.model.encoding import WAIT, EventSpec
from midi_bridge.model.step import Stepper
from .dataset import load_meta
from .gan_eval import generate_melodies
from .tune import rows_to_melody, sample_rows

DEFAULT_MARKOV_ORDER = 8
DEFAULT_MARKOV_WEIGHT = 32.0


def corpus_melodies(pieces, count: int, notes: int, seed: int = 0):
    """``(melodies, styles)``: the first ``notes`` notes of ``count`` pieces (shuffled with
    ``seed``; pieces with fewer notes are skipped; cycles when there are too few)."""
    order = list(range(len(pieces)))
    random.Random(seed).shuffle(order)
    mels, styles = [], []
    usable = []
    for i in order:
        ev, *_rest, style = pieces[i]
        mel, _ = rows_to_melody(ev.numpy() if hasattr(ev, "numpy") else ev)
        if len(mel) >= notes:
            usable.append((mel[:notes], int(style)))
    if not usable:
        raise ValueError(f"no test piece has {notes} notes")
    for k in range(count):
        m, s = usable[k % len(usable)]
        mels.append(m)
        styles.append(s)
    return mels, styles


def rnn_melodies(model, styles, notes: int, seed: int, temperature: float = 1.0):
    out = []
    st = Stepper(model, seed=seed)
    for i, s in enumerate(styles):
        st.rng = np.random.default_rng(seed + i)
        rows = sample_rows(st, s, notes, temperature=temperature)
        out.append(rows_to_melody(rows)[0][:notes])
    return out


def ppm_melodies(ppm, styles, notes: int, seed: int, temperature: float = 1.0):
    out = []
    for i, _s in enumerate(styles):
        rng = random.Random(seed + i)
        ppm.reset_context()
        rows = []
        n = 0
        while n < notes and len(rows) < notes * 2 + 8:
            tok = ppm.sample(rng, temperature)
            if tok is None:
                break
            ppm.update(tok, train=False)
            rows.append(tok)
            n += tok[1] != WAIT
        out.append(rows_to_melody(np.asarray(rows, dtype=np.int64).reshape(-1, 4))[0][:notes])
    return out


def gan_melodies(path, styles, style_names, notes_hint: int, bars: int, seed: int):
    """Melodies of ``bars`` bars from the GAN checkpoint at ``path``
    (:func:`.gan_eval.generate_melodies`), grouped by style, cut to ``notes_hint`` notes;
    None + reason when the checkpoint is missing."""
    if not path or not Path(path).exists():
        return None, f"no GAN checkpoint ({path})"
    out: list = [None] * len(styles)
    for s in sorted(set(styles)):
        idx = [i for i, x in enumerate(styles) if x == s]
        mels = generate_melodies(path, len(idx), bars=bars, style=style_names[s] if s < len(style_names) else None, seed=seed + s)
        for i, m in zip(idx, mels):
            out[i] = [(int(p), float(a), float(d)) for p, a, d in m][:notes_hint]
    return [m for m in out if m], None


def row(melodies, corpus) -> dict:
    r = theory.metrics(melodies)
    r["reward"] = round(theory.reward_per_note(melodies), 4)
    r["js"] = {k: round(v, 4) for k, v in theory.histogram_js(melodies, corpus).items()}
    return r


def theory_evaluate(args, log=None) -> dict:
    from .evaluate import _untransposed, fit_ppm, ppm_score, rnn_metrics
    from .train import featurize

    say = log or (lambda m: None)
    models = Path(__file__).resolve().parents[2] / "models"
    if getattr(args, "tuned", None) is None and (models / "melody-tuned.pt").exists():
        args.tuned = str(models / "melody-tuned.pt")
    if getattr(args, "gan", None) is None:
        args.gan = str(models / "gan.pt")
    dmeta = load_meta(args.dataset)
    spec = EventSpec.from_dict(dmeta["spec"])
    if spec.view != "notes":
        raise ValueError("evaluate --theory needs a note-view dataset")
    style_names = list(dmeta["styles"])
    test_all = featurize(args.dataset, args.split, spec.sizes)
    test = _untransposed(args.dataset, args.split, spec)
    n, notes, seed = args.samples, args.notes, args.seed
    corpus, styles = corpus_melodies(test, n, notes, seed)
    res: dict = {"corpus": row(corpus, corpus), "omitted": {}}
    say(f"corpus: {len(corpus)} melodies of {notes} notes from the {args.split} split")
    for name, path in (("rnn", args.checkpoint), ("rnn_tuned", args.tuned)):
        if not path:
            res["omitted"][name] = "no checkpoint given"
            continue
        if not Path(path).exists():
            res["omitted"][name] = f"{path} does not exist"
            continue
        t0 = time.monotonic()
        model, meta, _ = checkpoint.load(path)
        mels = rnn_melodies(model, styles, notes, seed, args.temperature)
        r = row(mels, corpus)
        r["checkpoint"] = str(path)
        if not args.no_bits:
            r["bits_per_note"] = rnn_metrics(model, test_all, spec)["bits_per_note"]
        res[name] = r
        say(f"{name}: {time.monotonic() - t0:.0f} s")
    gm, why = gan_melodies(args.gan, styles, style_names, notes, args.bars, seed)
    if gm is None:
        res["omitted"]["gan"] = why
    else:
        res["gan"] = row(gm, corpus)
        res["gan"]["checkpoint"] = str(args.gan)
    alphabet = int(np.prod(spec.sizes))
    train = _untransposed(args.dataset, "train", spec)
    t0 = time.monotonic()
    uni = fit_ppm(train, 0, alphabet)
    res["unigram"] = row(ppm_melodies(uni, styles, notes, seed, args.temperature), corpus)
    del uni
    if not args.no_markov:
        order = args.markov_order if args.markov_order is not None else DEFAULT_MARKOV_ORDER
        weight = args.markov_weight
        ppm = fit_ppm(train, order, alphabet, weight)
        res["markov"] = row(ppm_melodies(ppm, styles, notes, seed, args.temperature), corpus)
        res["markov"].update({"order": order, "piece_weight": weight})
        if not args.no_bits:
            res["markov"]["bits_per_note"] = ppm_score(ppm, test_all, spec)["bits_per_note"]
        del ppm
        say(f"markov: {time.monotonic() - t0:.0f} s")
    else:
        res["omitted"]["markov"] = "--no-markov"
    res["settings"] = {"split": args.split, "samples": n, "notes": notes, "seed": seed,
                       "temperature": args.temperature, "bars_gan": args.bars,
                       "dataset_hash": dmeta["dataset_hash"]}
    if not res["omitted"]:
        del res["omitted"]
    return res


COLUMNS = (("notes_not_in_key", "not in key %"), ("excessively_repeated", "repeated %"),
           ("leaps_resolved", "leaps resolved %"), ("notes_in_motif", "in motif %"),
           ("notes_in_repeated_motif", "in rep. motif %"), ("starts_with_tonic", "tonic start %"),
           ("unique_highest", "unique high %"), ("unique_lowest", "unique low %"),
           ("autocorr_lag1", "ac 1"), ("autocorr_lag2", "ac 2"), ("autocorr_lag3", "ac 3"),
           ("reward", "reward/note"), ("bits_per_note", "bits/note"))


def cmd_theory(args) -> int:
    torch.set_num_threads(max(1, args.threads))
    log = None if args.json else (lambda m: print(m, file=sys.stderr))
    res = theory_evaluate(args, log)
    if args.json:
        print(json.dumps(res))
        return 0
    names = [k for k in ("corpus", "rnn", "rnn_tuned", "gan", "markov", "unigram") if k in res]
    print("| source | " + " | ".join(h for _k, h in COLUMNS) + " | JS pitch class | JS interval |")
    print("|---" * (len(COLUMNS) + 3) + "|")
    for nm in names:
        r = res[nm]
        cells = []
        for k, _h in COLUMNS:
            v = r.get(k)
            cells.append("-" if v is None else f"{v:g}")
        print(f"| {nm} | " + " | ".join(cells) + f" | {r['js']['pitch_class']:g} | {r['js']['interval']:g} |")
    for nm, why in res.get("omitted", {}).items():
        print(f"({nm} omitted: {why})")
    return 0
