"""``tune``: RL fine-tuning of a trained note-view RNN with a music-theory reward
(after RL Tuner, Jaques et al. 2017), optionally with performers' ratings.

Algorithm (policy gradient, REINFORCE with a per-position baseline; see docs/models.md,
"RL fine-tuning"):

* The **policy** starts as a copy of the checkpoint; a frozen copy is the **prior**.
* Each iteration samples ``--batch`` melodies of ``--notes`` notes from the policy with
  the step API (:class:`~midi_bridge.model.step.Stepper`, the in-piece copy mixture
  included), from the begin-of-piece state, each with a style drawn from the checkpoint's
  styles, at temperature 1 (on-policy).
* Each sampled event ``t`` gets the reward
  ``r_t = theory_weight * r_MT(t) + prior_weight * (log p_prior(x_t) - log pi(x_t))``
  and the last event also ``novelty_weight * novelty`` (:mod:`midi_bridge.model.theory`).  The
  second term is RL Tuner's "log p of the pre-trained model" reward plus the policy's own
  entropy (the KL-regularised form of the paper's G-learning / psi-learning variants): it
  keeps the style.  Returns are discounted (``--gamma``); the advantage is the return minus
  the batch mean at the same position, divided by the batch's standard deviation.
* Loss = ``-mean(A_t log pi(x_t))`` (teacher-forced log-probs of the sampled events)
  + ``mle_weight`` x the cross-entropy of a batch of training chunks (a maximum-likelihood
  anchor that keeps bits per note near the pretrained model's)
  - ``rating_weight`` x ``mean(rating * mean_t log pi(answer_t | phrase))`` over the rated
  answers of ``--ratings``.
"""

from __future__ import annotations

import copy
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from midi_bridge.model import checkpoint, theory
from midi_bridge.model.cache import piece_features
from midi_bridge.model.encoding import MAX_DT, MAX_DUR, STEPS_PER_BEAT, WAIT, beats_to_steps, vel_to_bin
from midi_bridge.model.step import Stepper


# -- sampling ------------------------------------------------------------------------
def sample_rows(stepper: Stepper, style: int, notes: int, prime=None, temperature: float = 1.0,
                top_p: float = 1.0, max_events: int | None = None) -> np.ndarray:
    """Events sampled after the begin-of-piece step (and the ``prime`` rows, which are not
    returned) until ``notes`` notes; int64 ``[n, 4]``."""
    stepper.reset(style)
    for row in prime if prime is not None else ():
        stepper.feed(tuple(int(v) for v in row))
    out, n = [], 0
    limit = max_events or notes * 2 + 8
    while n < notes and len(out) < limit:
        ev = stepper.sample(temperature, top_p)
        stepper.feed(ev)
        out.append(ev)
        n += ev[1] != WAIT
    return np.asarray(out, dtype=np.int64).reshape(-1, 4)


def rows_to_melody(rows) -> tuple[list, list[int]]:
    """``(melody, event index of each note)``; WAIT rows and the lower notes of a chord
    (dt = 0) are not notes of the melody."""
    mel, idx, t, last = [], [], 0, None
    for i, (dt, pitch, dur, _vel) in enumerate(np.asarray(rows).reshape(-1, 4).tolist()):
        t += dt
        if pitch == WAIT or t == last:
            continue
        mel.append((int(pitch), t / STEPS_PER_BEAT, dur / STEPS_PER_BEAT))
        idx.append(i)
        last = t
    return mel, idx


# -- teacher-forced log-probs ----------------------------------------------------------
def _batch(seqs, styles, sizes):
    """Pad ``seqs`` (int arrays [n_i, F]) with their in-piece features."""
    B, T, F = len(seqs), max(len(s) for s in seqs), len(sizes)
    x = torch.zeros(B, T, F, dtype=torch.long)
    cand = torch.zeros(B, T, 4, F, dtype=torch.long)
    cand[:] = torch.tensor(sizes)
    q = torch.zeros(B, T, 4)
    feat = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        s = np.asarray(s, dtype=np.int64).reshape(-1, F)
        n = len(s)
        c, qq, f = piece_features(s, sizes)
        x[i, :n] = torch.from_numpy(s)
        cand[i, :n] = torch.from_numpy(c.astype(np.int64))
        q[i, :n] = torch.from_numpy(qq)
        feat[i, :n] = torch.from_numpy(f.astype(np.int64))
        mask[i, :n] = True
    return x, cand, q, feat, torch.tensor(styles, dtype=torch.long), mask


def event_logp(model, seqs, styles) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities ``[B, T]`` (nats, all fields of each event) of padded ``seqs``."""
    x, cand, q, feat, style, mask = _batch(seqs, styles, list(model.spec.sizes))
    logp, _, _ = model(x, style, cand, q, feat, need_correct=False)
    return logp.sum(-1) * mask, mask


# -- ratings ----------------------------------------------------------------------------
def rating_rows(record: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(phrase rows, answer rows)`` of a rating record (see bridge/stage/ratings.py).  The
    phrase's durations are its inter-onset gaps (the last: 1 beat); the answer's first
    note follows the phrase's last by that note's duration."""
    # a chord is its highest note (first at its onset), as the rnn plugin hears it live
    phrase = sorted(record.get("phrase") or [], key=lambda r: (beats_to_steps(float(r[2])), -int(r[0])))
    answer = sorted(record.get("answer") or [], key=lambda r: float(r[2]))
    onsets = [beats_to_steps(float(r[2])) for r in phrase]
    prow, t_prev = [], None
    for i, (pitch, vel, beat) in enumerate(phrase):
        s = onsets[i]
        nxt = next((o for o in onsets[i + 1:] if o > s), s + STEPS_PER_BEAT)  # the next onset, not a chord note
        dt = 0 if t_prev is None else min(MAX_DT, max(0, s - t_prev))
        if t_prev is not None and s == t_prev:
            continue
        prow.append((dt, int(pitch), max(1, min(MAX_DUR, nxt - s)), vel_to_bin(int(vel))))
        t_prev = s
    arow, prev_start = [], None
    for pitch, vel, start, dur in answer:
        s = beats_to_steps(float(start))
        if prev_start is None:
            dt = prow[-1][2] if prow else STEPS_PER_BEAT
        else:
            dt = s - prev_start
        arow.append((min(MAX_DT, max(1, dt)), int(pitch), max(1, min(MAX_DUR, beats_to_steps(float(dur)))),
                     vel_to_bin(int(vel))))
        prev_start = s
    return (np.asarray(prow, dtype=np.int64).reshape(-1, 4), np.asarray(arow, dtype=np.int64).reshape(-1, 4))


def ratings_batch(records, styles_known) -> list[tuple]:
    """``(rows, n_phrase, style, rating)`` for each usable rating record."""
    out = []
    for r in records:
        rating = r.get("rating")
        if rating not in (1, -1):
            continue
        prow, arow = rating_rows(r)
        if not len(arow):
            continue
        style = (r.get("context") or {}).get("style")
        s = styles_known.index(style) if style in styles_known else (
            styles_known.index("folk") if "folk" in styles_known else 0)
        out.append((np.concatenate([prow, arow]) if len(prow) else arow, len(prow), s, int(rating)))
    return out


def answer_logp(model, batch) -> torch.Tensor:
    """Mean log-prob per answer event of each rated answer, ``[R]``."""
    lp, _ = event_logp(model, [b[0] for b in batch], [b[2] for b in batch])
    out = []
    for i, (rows, n_phrase, _s, _r) in enumerate(batch):
        out.append(lp[i, n_phrase:len(rows)].mean())
    return torch.stack(out)


# -- the tuner -------------------------------------------------------------------------
def _returns(rewards: list[list[float]], gamma: float) -> list[list[float]]:
    out = []
    for r in rewards:
        g, acc = [0.0] * len(r), 0.0
        for t in range(len(r) - 1, -1, -1):
            acc = r[t] + gamma * acc
            g[t] = acc
        out.append(g)
    return out


def tune(model, prior, *, iterations=200, batch=16, notes=32, lr=5e-4, theory_weight=1.0, prior_weight=0.2,
         novelty_weight=1.0, gamma=0.9, mle_pieces=None, mle_weight=0.2, mle_events=2048,
         ratings=None, rating_weight=1.0, seed=0, log=None, max_minutes=0.0, styles=None) -> list[dict]:
    """Fine-tune ``model`` in place; returns the per-iteration history."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    n_styles = model.n_styles
    prior.eval()
    for p in prior.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    history = []
    t0 = time.monotonic()
    mle_chunks = []
    if mle_pieces:
        for ev, cand, q, feat, style in mle_pieces:
            for s in range(0, len(ev), 128):
                mle_chunks.append((ev[s:s + 128], cand[s:s + 128], q[s:s + 128], feat[s:s + 128], style))
    for it in range(iterations):
        model.eval()  # no dropout: the sampled and the scored distributions are the same
        st = Stepper(model, seed=rng.randrange(1 << 30))
        seqs, sts = [], []
        for _ in range(batch):
            s = rng.randrange(n_styles) if styles is None else rng.choice(styles)
            seqs.append(sample_rows(st, s, notes))
            sts.append(s)
        mels = [rows_to_melody(r) for r in seqs]
        lp, mask = event_logp(model, seqs, sts)
        with torch.no_grad():
            lp_prior, _ = event_logp(prior, seqs, sts)
        kl = (lp_prior - lp.detach())
        nov = theory.novelty([m for m, _ in mels])
        rewards, mt_total, mt_notes = [], 0.0, 0
        for b, (rows, (mel, idx)) in enumerate(zip(seqs, mels)):
            r = [prior_weight * float(kl[b, t]) for t in range(len(rows))]
            nr = theory.note_rewards(mel)
            for i, v in zip(idx, nr):
                r[i] += theory_weight * v
            mt_total += sum(nr)
            mt_notes += len(mel)
            r[-1] += novelty_weight * nov[b]
            rewards.append(r)
        G = _returns(rewards, gamma)
        T = mask.shape[1]
        Gt = torch.zeros(batch, T)
        for b, g in enumerate(G):
            Gt[b, :len(g)] = torch.tensor(g)
        m = mask.float()
        base = (Gt * m).sum(0) / m.sum(0).clamp_min(1)
        adv = (Gt - base) * m
        adv = adv / (adv[mask].std().clamp_min(1e-6) if mask.sum() > 1 else 1.0)
        loss = -(adv * lp).sum() / m.sum()
        mle_bits = None
        if mle_chunks and mle_weight > 0:
            from .train import _collate

            pick, total = [], 0
            while total < mle_events:
                c = mle_chunks[rng.randrange(len(mle_chunks))]
                pick.append(c)
                total += len(c[0])
            x, cand, q, feat, style, mk = _collate(pick)
            lpm, _, _ = model(x, style, cand, q, feat, need_correct=False)
            nll = -(lpm.sum(-1) * mk).sum() / mk.sum()
            loss = loss + mle_weight * nll
            mle_bits = float(nll.detach()) / math.log(2)
        rating_term = None
        if ratings:
            alp = answer_logp(model, ratings)
            rt = torch.tensor([float(b[3]) for b in ratings])
            rating_term = (rt * alp).mean()
            loss = loss - rating_weight * rating_term
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        rec = {"iteration": it + 1, "theory_reward_per_note": round(mt_total / max(1, mt_notes), 4),
               "kl_per_event": round(float(-(kl * m).sum() / m.sum()), 4),
               "novelty": round(sum(nov) / len(nov), 4)}
        if mle_bits is not None:
            rec["mle_bits_per_event"] = round(mle_bits, 4)
        if rating_term is not None:
            rec["rating_term"] = round(float(rating_term.detach()), 4)
        history.append(rec)
        if log:
            log(" ".join(f"{k} {v}" for k, v in rec.items()))
        if max_minutes and (time.monotonic() - t0) / 60 > max_minutes:
            if log:
                log("stopping: time budget")
            break
    model.eval()
    return history


def cmd_tune(args) -> int:
    torch.set_num_threads(max(1, args.threads))
    model, meta, _ = checkpoint.load(args.checkpoint)
    if model.spec.view != "notes":
        raise ValueError(f"{args.checkpoint} is a {model.spec.view} model; tune needs a note model")
    prior = copy.deepcopy(model)
    log = None if args.quiet else (lambda m: print(m, file=sys.stderr))
    styles_known = list(meta.get("styles") or ["default"])
    styles = None
    if args.style:
        if args.style not in styles_known:
            raise ValueError(f"style {args.style!r} unknown to {args.checkpoint} ({', '.join(styles_known)})")
        styles = [styles_known.index(args.style)]
    mle_pieces = None
    if args.dataset and args.mle_weight > 0:
        from .dataset import load_meta
        from midi_bridge.model.encoding import EventSpec
        from .train import featurize

        dmeta = load_meta(args.dataset)
        if EventSpec.from_dict(dmeta["spec"]) != model.spec:
            raise ValueError(f"{args.dataset} is a {dmeta['spec']['view']} dataset; {args.checkpoint} is a "
                             f"{model.spec.view} model: give the dataset it was trained on with -d")
        if list(dmeta["styles"]) != styles_known[:len(dmeta["styles"])]:
            raise ValueError(f"{args.dataset}'s styles {dmeta['styles']} are not {args.checkpoint}'s "
                             f"({', '.join(styles_known)}): give the dataset it was trained on with -d")
        mle_pieces = featurize(args.dataset, "train", model.spec.sizes)
    ratings = None
    if args.ratings:
        from midi_bridge.stage.ratings import load_ratings

        ratings = ratings_batch(load_ratings(args.ratings), styles_known)
        if log:
            log(f"{len(ratings)} usable ratings from {args.ratings}")
    history = tune(model, prior, iterations=args.iterations, batch=args.batch, notes=args.notes, lr=args.lr,
                   theory_weight=args.theory_weight, prior_weight=args.prior_weight,
                   novelty_weight=args.novelty_weight, gamma=args.gamma, mle_pieces=mle_pieces,
                   mle_weight=args.mle_weight, ratings=ratings, rating_weight=args.rating_weight,
                   seed=args.seed, log=log, max_minutes=args.max_minutes, styles=styles)
    out_meta = {k: v for k, v in meta.items() if k not in ("encoding_version", "spec", "model", "n_styles")}
    out_meta["tune"] = {"from": str(args.checkpoint), "command": " ".join(sys.argv[1:]),
                        "args": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))},
                        "history": history}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save(args.out, model, out_meta, half=args.half)
    if history and not args.quiet:
        print(json.dumps({"first": history[0], "last": history[-1]}), file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
