"""The PPM baselines of ``midi-bridge evaluate`` (:mod:`midi_bridge.training.evaluate`).

* ``markov_blend`` - one PPM (escape C with exclusion, :class:`midi_bridge.model.ppm.PPM`)
  over whole event rows, fitted on the train split, plus the current piece's counts added
  with ``piece_weight``; a row never seen costs ``escape / (|A| - seen)`` (uniform over the
  row alphabet).  The ``markov`` baseline of earlier releases.
* ``markov`` - IDyOM-style (Pearce 2005): that blend, whose unseen rows are priced by the
  product of the train split's per-field marginals (:meth:`~midi_bridge.model.idyom.Prior.fields`)
  instead, and a short-term PPM of the current piece alone (order ``STM_ORDER``), combined
  per event by entropy weights (:mod:`midi_bridge.model.idyom`); the exponent ``b``, the
  mixture (arithmetic or geometric) and the blend's piece weight are chosen on the
  validation split.

Everything is tuned on about ``TUNE_EVENTS`` events of whole validation pieces (drawn
with a fixed seed), never on the split that is reported.
"""

from __future__ import annotations

import math
import random

from midi_bridge.model.encoding import WAIT, EventSpec
from midi_bridge.model.idyom import MIXES, Predictions, Prior
from midi_bridge.model.ppm import PPM

PPM_ORDERS = (2, 4, 6, 8, 10)
PPM_WEIGHTS = (0.0, 1.0, 4.0, 16.0, 32.0, 64.0)
TUNE_EVENTS = 8000
DEFAULT_ORDER, DEFAULT_WEIGHT = 8, 32.0  # without a val split to tune on (the values tuned for
# the shipped melody model, docs/models.md)
STM_ORDER = 4
B_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
DEFAULT_B, DEFAULT_MIX = 0.25, "geometric"  # without a val split (tuned on the melody split, docs/models.md)


def notes_in(pieces, spec: EventSpec) -> int:
    total = 0
    for ev, *_ in pieces:
        total += int((ev[:, 1] != WAIT).sum()) if spec.view == "notes" else len(ev)
    return total


def metrics(bits: float, notes: int, correct: int) -> dict:
    bpn = bits / max(1, notes)
    return {"bits_per_note": round(bpn, 4), "accuracy": round(correct / max(1, notes), 4),
            "perplexity": round(2.0 ** bpn, 3), "notes": notes}


def field_prior(pieces, spec: EventSpec) -> Prior:
    """Product of the per-field marginals of the rows of ``pieces`` (the train split)."""
    return Prior.fields((tuple(r) for ev, *_ in pieces for r in ev.tolist()), spec.sizes)


def fit_ppm(pieces, order: int, alphabet: int, piece_weight: float = 0.0, prior: Prior | None = None):
    model = PPM(max_order=order, alphabet_size=alphabet, piece_weight=0.0, prior=prior)
    for ev, *_ in pieces:
        model.reset_context()
        for row in ev.tolist():
            model.update(tuple(row))
    model.piece_weight = piece_weight
    return model


def _counts_as_note(tok, spec: EventSpec) -> bool:
    return spec.view != "notes" or tok[1] != WAIT


def ppm_score(model, pieces, spec: EventSpec) -> dict:
    """Bits per note of one PPM over whole pieces (its in-piece counts learn as it goes)."""
    bits, correct = 0.0, 0
    for ev, *_ in pieces:
        model.reset_context()
        for row in ev.tolist():
            tok = tuple(row)
            probs, escape = model.distribution()
            p = probs.get(tok)
            if p is None:
                if model.prior is not None:
                    p = escape * model.prior.unseen_price(probs, tok)
                else:
                    unseen = model.alphabet_size - len(probs)
                    p = escape / unseen if unseen > 0 else 0.0
            bits -= math.log2(p) if p > 0 else -1e9
            if probs and _counts_as_note(tok, spec) and max(probs, key=probs.get) == tok:
                correct += 1
            model.update(tok, train=False)
    return metrics(bits, notes_in(pieces, spec), correct)


def idyom_score(ltm: PPM, pieces, spec: EventSpec, prior: Prior, settings, stm_order: int = STM_ORDER) -> list[dict]:
    """Bits per note of the long-term PPM ``ltm`` (with its in-piece counts) and a short-term
    PPM of each piece alone, mixed by entropy weights; one result per ``(b, mix)`` of
    ``settings``, all scored on the same pass."""
    stm = PPM(max_order=stm_order, alphabet_size=ltm.alphabet_size, piece_weight=1.0, prior=prior)
    bits = [0.0] * len(settings)
    correct = [0] * len(settings)
    for ev, *_ in pieces:
        ltm.reset_context()
        stm.reset_context()
        for row in ev.tolist():
            tok = tuple(row)
            pred = Predictions([ltm.distribution(), stm.distribution()], prior)
            note = _counts_as_note(tok, spec)
            for i, (b, kind) in enumerate(settings):
                mx = pred.mix(b, kind)
                p = mx.prob(tok)
                bits[i] -= math.log2(p) if p > 0 else -1e9
                if note and mx.argmax() == tok:
                    correct[i] += 1
            ltm.update(tok, train=False)
            stm.update(tok, train=False)  # the STM's global table stays empty: the piece alone
    n = notes_in(pieces, spec)
    return [metrics(bt, n, c) for bt, c in zip(bits, correct)]


def take_events(pieces, n: int):
    """About ``n`` events of whole pieces drawn evenly (seeded) from the split."""
    order = list(range(len(pieces)))
    random.Random(0).shuffle(order)
    out, total = [], 0
    for p in (pieces[i] for i in order):
        if total >= n:
            break
        out.append(p)
        total += len(p[0])
    return out


def tune_ppm(train, val, spec: EventSpec, alphabet: int, orders=PPM_ORDERS, weights=PPM_WEIGHTS, log=None):
    """Best (order, piece_weight) of the blend by bits per note on about TUNE_EVENTS of val."""
    subset = take_events(val, TUNE_EVENTS)
    best = None
    results = []
    for order in orders:
        model = fit_ppm(train, order, alphabet)
        for w in weights:
            model.piece_weight = w
            m = ppm_score(model, subset, spec)
            results.append({"order": order, "piece_weight": w, "val_bits_per_note": m["bits_per_note"]})
            if log:
                log(f"  ppm order {order} piece weight {w:g}: {m['bits_per_note']:.3f} bits/note on val")
            if best is None or m["bits_per_note"] < best[2]:
                best = (order, w, m["bits_per_note"])
        del model
    return best[0], best[1], results


def tune_idyom(model: PPM, val, spec: EventSpec, weights, prior: Prior, bs=B_GRID, mixes=MIXES, log=None):
    """Best (piece_weight, b, mix) of the IDyOM-style baseline whose long-term PPM is
    ``model`` (fitted on train) by bits per note on the same validation events as
    :func:`tune_ppm`."""
    subset = take_events(val, TUNE_EVENTS)
    settings = [(b, kind) for kind in mixes for b in bs]
    order = model.max_order
    best, results = None, []
    for w in weights:
        model.piece_weight = w
        for (b, kind), m in zip(settings, idyom_score(model, subset, spec, prior, settings)):
            results.append({"order": order, "piece_weight": w, "b": b, "mix": kind,
                            "val_bits_per_note": m["bits_per_note"]})
            if log:
                log(f"  idyom piece weight {w:g} b {b:g} {kind}: {m['bits_per_note']:.3f} bits/note on val")
            if best is None or m["bits_per_note"] < best[3]:
                best = (w, b, kind, m["bits_per_note"])
    return best[0], best[1], best[2], results
