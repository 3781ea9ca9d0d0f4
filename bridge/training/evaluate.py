"""``evaluate``: the RNN beside the baselines on one split (default: test).

* ``rnn``: the checkpoint, teacher forcing over whole pieces (the in-piece copy mixture
  included, exactly as the step API computes it).  A dataset may hold a subset of the
  checkpoint's styles: its style labels are mapped to the checkpoint's by name.
* ``markov``: the strongest baseline, IDyOM-style (:mod:`midi_bridge.training.baseline`):
  a long-term PPM of the train split (escape C with exclusion, plus the piece's counts
  weighted by ``piece_weight``; unseen rows priced by the per-field marginals) and a
  short-term PPM of the current piece alone, mixed by entropy weights (exponent ``b``,
  arithmetic or geometric).  The order is the blend's; piece weight, ``b`` and the mixture
  are tuned on validation.
* ``markov_blend``: the long-term PPM alone with the uniform price of unseen rows (the
  ``markov`` of earlier releases); order and piece weight tuned on about 8,000 events of
  whole validation pieces (drawn with a fixed seed) unless ``--markov-order`` is given (an
  empty validation split: order 8, piece weight 32).
* ``unigram``: the blend at order 0 without in-piece counts.

Metrics: ``bits_per_note`` = total negative log2-likelihood of all events / number of
notes (all fields of a note summed; WAIT events count in the total, not as notes);
``perplexity`` = 2 ** bits_per_note; ``accuracy`` = share of notes predicted exactly
(rnn: every field's most likely value, given the true earlier fields, is the true one;
baselines: the most likely token is the true one).  ``rnn.ratio_to_markov`` is against
the strongest baseline, ``rnn.ratio_to_markov_blend`` against the old one.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from midi_bridge.model import checkpoint
from midi_bridge.model.encoding import EventSpec
from .baseline import (B_GRID, DEFAULT_B, DEFAULT_MIX, DEFAULT_ORDER, DEFAULT_WEIGHT, PPM_ORDERS,  # noqa: F401
                       PPM_WEIGHTS, STM_ORDER, TUNE_EVENTS, field_prior, fit_ppm, idyom_score, metrics,
                       notes_in, ppm_score, take_events, tune_idyom, tune_ppm)
from .dataset import load_meta
from .train import LN2, evaluate_batches, featurize, make_batches

_notes, _metrics, _take_events = notes_in, metrics, take_events  # the names of earlier releases


def rnn_metrics(model, pieces, spec: EventSpec) -> dict:
    batches = make_batches(pieces, max_len=1 << 30, batch_events=16384, rng=None)
    s = evaluate_batches(model, batches, torch.device("cpu"))
    return _metrics(s["nll"] / LN2, _notes(pieces, spec), s["correct"])


def style_map(dataset_styles, checkpoint_styles) -> list[int]:
    """The checkpoint's index of each of the dataset's styles (by name)."""
    missing = [s for s in dataset_styles if s not in checkpoint_styles]
    if missing:
        raise ValueError(f"dataset styles {list(dataset_styles)} are not all among the checkpoint's "
                         f"{list(checkpoint_styles)} (missing: {missing}): evaluate a dataset of the styles the "
                         "model was trained on")
    return [list(checkpoint_styles).index(s) for s in dataset_styles]


def _idyom_weights(w: float) -> list[float]:
    """Piece weights the IDyOM-style baseline tries, around the blend's tuned one (the
    short-term model takes over part of the in-piece counts' work)."""
    return sorted({w, w / 2, w / 4} if w > 0 else {0.0, 4.0})


def evaluate(ckpt_path, dataset, split="test", markov=True, markov_order=None, log=None) -> dict:
    model, meta, _ = checkpoint.load(ckpt_path)
    dmeta = load_meta(dataset)
    spec = EventSpec.from_dict(dmeta["spec"])
    if spec != model.spec:
        raise ValueError(f"the checkpoint's encoding ({model.spec.view}) does not match the dataset's ({spec.view})")
    mapping = style_map(dmeta["styles"], meta.get("styles", dmeta["styles"]))
    test = [(ev, cand, q, feat, mapping[style]) for ev, cand, q, feat, style in featurize(dataset, split, spec.sizes)]
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
        result.update(_markov_baselines(train, dataset, spec, alphabet, test, markov_order, log))
        for name in ("markov", "markov_blend"):
            result["rnn"][f"ratio_to_{name}"] = round(result["rnn"]["bits_per_note"]
                                                     / result[name]["bits_per_note"], 4)
    result["split"] = split
    result["dataset_hash"] = dmeta["dataset_hash"]
    return result


def _markov_baselines(train, dataset, spec, alphabet, test, markov_order, log) -> dict:
    t0 = time.monotonic()
    val = _untransposed(dataset, "val", spec) if markov_order is None else []
    tuned = markov_order is None and _notes(val, spec) > 0
    if tuned:
        order, weight, tuning = tune_ppm(train, val, spec, alphabet, log=log)
    elif markov_order is None:  # nothing to tune on: the orders would all score 0 bits
        order, weight, tuning = DEFAULT_ORDER, DEFAULT_WEIGHT, []
        if log:
            log(f"  the val split is empty: markov order {order}, piece weight {weight:g}, b {DEFAULT_B:g}, "
                f"{DEFAULT_MIX} mixture (not tuned)")
    else:
        order, weight, tuning = markov_order, 4.0, []
    ppm = fit_ppm(train, order, alphabet, weight)
    blend = ppm_score(ppm, test, spec)
    blend.update({"order": order, "piece_weight": weight, "tuning": tuning,
                  "seconds": round(time.monotonic() - t0, 1)})
    t0 = time.monotonic()
    prior = field_prior(train, spec)
    ppm.prior = prior
    if tuned:
        iw, b, kind, itune = tune_idyom(ppm, val, spec, _idyom_weights(weight), prior, log=log)
    else:
        iw, b, kind, itune = weight, DEFAULT_B, DEFAULT_MIX, []
    ppm.piece_weight = iw
    strong = idyom_score(ppm, test, spec, prior, [(b, kind)])[0]
    strong.update({"order": order, "piece_weight": iw, "stm_order": STM_ORDER, "b": b, "mix": kind,
                   "unseen": "per-field marginals", "tuning": itune, "seconds": round(time.monotonic() - t0, 1)})
    return {"markov": strong, "markov_blend": blend}


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
    print(f"{'model':12s} {'bits/note':>10s} {'accuracy':>9s} {'perplexity':>11s}")
    for name in ("rnn", "markov", "markov_blend", "unigram"):
        if name in res:
            r = res[name]
            print(f"{name:12s} {r['bits_per_note']:10.3f} {r['accuracy']:9.3f} {r['perplexity']:11.2f}")
    if "markov" in res:
        m, mb = res["markov"], res["markov_blend"]
        print(f"rnn / markov = {res['rnn']['ratio_to_markov']:.3f} (IDyOM-style: order {m['order']}, piece "
              f"weight {m['piece_weight']:g}, short-term order {m['stm_order']}, b {m['b']:g}, {m['mix']})")
        print(f"rnn / markov_blend = {res['rnn']['ratio_to_markov_blend']:.3f} "
              f"(order {mb['order']}, piece weight {mb['piece_weight']:g})")
    return 0
