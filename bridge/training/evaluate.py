"""``evaluate``: the RNN beside two baselines on one split (default: test).

* ``rnn``: the checkpoint, teacher forcing over whole pieces (the in-piece copy mixture
  included, exactly as the step API computes it).
* ``markov``: the PPM of :mod:`midi_bridge.model.ppm` (escape C with exclusion, in-piece counts
  weighted by ``piece_weight``) over one token per event (the event row as a tuple),
  fitted on the train split's untransposed pieces; its order and piece weight are tuned
  on about 8,000 events of whole validation pieces (drawn with a fixed seed) unless
  ``--markov-order`` is given (an empty validation split: order 8, piece weight 32).
* ``unigram``: the same PPM at order 0 without in-piece counts.

Metrics: ``bits_per_note`` = total negative log2-likelihood of all events / number of
notes (all fields of a note summed; WAIT events count in the total, not as notes);
``perplexity`` = 2 ** bits_per_note; ``accuracy`` = share of notes predicted exactly
(rnn: every field's most likely value, given the true earlier fields, is the true one;
baselines: the most likely token is the true one).
"""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np
import torch

from midi_bridge.model import checkpoint
from midi_bridge.model.encoding import WAIT, EventSpec
from midi_bridge.model.ppm import PPM
from .dataset import load_meta
from .train import LN2, evaluate_batches, featurize, make_batches

PPM_ORDERS = (2, 4, 6, 8, 10)
PPM_WEIGHTS = (0.0, 1.0, 4.0, 16.0, 32.0, 64.0)
TUNE_EVENTS = 8000
DEFAULT_ORDER, DEFAULT_WEIGHT = 8, 32.0  # the markov baseline without a val split to tune on (the
# values tuned for the shipped melody model, docs/models.md)


def _notes(pieces, spec: EventSpec) -> int:
    total = 0
    for ev, *_ in pieces:
        total += int((ev[:, 1] != WAIT).sum()) if spec.view == "notes" else len(ev)
    return total


def rnn_metrics(model, pieces, spec: EventSpec) -> dict:
    batches = make_batches(pieces, max_len=1 << 30, batch_events=16384, rng=None)
    s = evaluate_batches(model, batches, torch.device("cpu"))
    return _metrics(s["nll"] / LN2, _notes(pieces, spec), s["correct"])


def _metrics(bits: float, notes: int, correct: int) -> dict:
    bpn = bits / max(1, notes)
    return {"bits_per_note": round(bpn, 4), "accuracy": round(correct / max(1, notes), 4),
            "perplexity": round(2.0 ** bpn, 3), "notes": notes}


def fit_ppm(pieces, order: int, alphabet: int, piece_weight: float = 0.0):
    model = PPM(max_order=order, alphabet_size=alphabet, piece_weight=0.0)
    for ev, *_ in pieces:
        model.reset_context()
        for row in ev.tolist():
            model.update(tuple(row))
    model.piece_weight = piece_weight
    return model


def ppm_score(model, pieces, spec: EventSpec) -> dict:
    bits, correct = 0.0, 0
    for ev, *_ in pieces:
        model.reset_context()
        for row in ev.tolist():
            tok = tuple(row)
            probs, escape = model.distribution()
            p = probs.get(tok)
            if p is None:
                unseen = model.alphabet_size - len(probs)
                p = escape / unseen if unseen > 0 else 0.0
            bits -= math.log2(p) if p > 0 else -1e9
            if probs and (spec.view != "notes" or tok[1] != WAIT) and max(probs, key=probs.get) == tok:
                correct += 1
            model.update(tok, train=False)
    return _metrics(bits, _notes(pieces, spec), correct)


def _take_events(pieces, n: int):
    """About ``n`` events of whole pieces drawn evenly (seeded) from the split."""
    import random

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
    """Best (order, piece_weight) by bits per note on the first TUNE_EVENTS of val."""
    subset = _take_events(val, TUNE_EVENTS)
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


def evaluate(ckpt_path, dataset, split="test", markov=True, markov_order=None, log=None) -> dict:
    model, meta, _ = checkpoint.load(ckpt_path)
    dmeta = load_meta(dataset)
    spec = EventSpec.from_dict(dmeta["spec"])
    if spec != model.spec:
        raise ValueError(f"the checkpoint's encoding ({model.spec.view}) does not match the dataset's ({spec.view})")
    if dmeta["styles"] != meta.get("styles", dmeta["styles"])[: len(dmeta["styles"])]:
        raise ValueError(f"dataset styles {dmeta['styles']} do not match the checkpoint's {meta.get('styles')}")
    test = featurize(dataset, split, spec.sizes)
    if not _notes(test, spec):
        files = {s: dmeta.get("counts", {}).get(s, {}).get("files", 0) for s in ("train", "val", "test")}
        raise ValueError(f"the {split} split of {dataset} is empty (files: train {files['train']}, val "
                         f"{files['val']}, test {files['test']}; prepare splits them about 80/10/10 by content "
                         "hash): nothing to evaluate. Choose another split with --split, or add MIDI files "
                         "and prepare again")
    t0 = time.monotonic()
    result = {"rnn": rnn_metrics(model, test, spec)}
    result["rnn"]["seconds"] = round(time.monotonic() - t0, 1)
    alphabet = int(np.prod(spec.sizes))
    train = _untransposed(dataset, "train", spec)
    uni = fit_ppm(train, 0, alphabet)
    result["unigram"] = ppm_score(uni, test, spec)
    del uni
    if markov:
        t0 = time.monotonic()
        val = _untransposed(dataset, "val", spec) if markov_order is None else []
        if markov_order is None and _notes(val, spec):
            order, weight, tuning = tune_ppm(train, val, spec, alphabet, log=log)
        elif markov_order is None:  # nothing to tune on: the orders would all score 0 bits
            order, weight, tuning = DEFAULT_ORDER, DEFAULT_WEIGHT, []
            if log:
                log(f"  the val split is empty: markov order {order}, piece weight {weight:g} (not tuned)")
        else:
            order, weight, tuning = markov_order, 4.0, []
        ppm = fit_ppm(train, order, alphabet, weight)
        result["markov"] = ppm_score(ppm, test, spec)
        result["markov"].update({"order": order, "piece_weight": weight, "tuning": tuning,
                                 "seconds": round(time.monotonic() - t0, 1)})
        result["rnn"]["ratio_to_markov"] = round(result["rnn"]["bits_per_note"] / result["markov"]["bits_per_note"], 4)
    result["split"] = split
    result["dataset_hash"] = dmeta["dataset_hash"]
    return result


def _untransposed(dataset, split, spec):
    """Pieces of a split without prepare's transposed copies (the PPM's memory grows with
    every distinct context, and the copies would multiply it)."""
    import torch as _t

    pieces = featurize(dataset, split, spec.sizes)
    d = _t.load(f"{dataset}/{split}.pt", weights_only=True)
    shifts = d.get("transpose")
    if shifts is None:
        return pieces
    return [p for p, s in zip(pieces, shifts.tolist()) if s == 0]


def cmd_evaluate(args) -> int:
    torch.set_num_threads(max(1, args.threads))
    log = None if args.json else (lambda m: print(m, file=sys.stderr))
    res = evaluate(args.checkpoint, args.dataset, args.split, markov=not args.no_markov,
                   markov_order=args.markov_order, log=log)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{args.split} split of {args.dataset}: {res['rnn']['notes']} notes")
    print(f"{'model':8s} {'bits/note':>10s} {'accuracy':>9s} {'perplexity':>11s}")
    for name in ("rnn", "markov", "unigram"):
        if name in res:
            r = res[name]
            print(f"{name:8s} {r['bits_per_note']:10.3f} {r['accuracy']:9.3f} {r['perplexity']:11.2f}")
    if "markov" in res:
        print(f"rnn / markov = {res['rnn']['ratio_to_markov']:.3f} "
              f"(markov: order {res['markov']['order']}, piece weight {res['markov']['piece_weight']:g})")
    return 0
