"""``train-gan``: the conditional bar GAN of :mod:`midi_bridge.model.gan` on a prepared melody
dataset -- feature matching (MidiNet) or WGAN-GP, Adam, a progress line with both losses
and an ETA, a checkpoint every epoch (``RUNDIR/last.pt`` with the optimiser state for
``--resume``; ``RUNDIR/best.pt`` by the validation score), ``--seed``, ``--export``.

The validation score after each epoch is the sum of the Jensen-Shannon divergences of the
pitch-class and interval histograms of generated melodies to the ``val`` split (a GAN has
no likelihood to select on): of melodies generated from the train primers, or with
``--select continuation`` of continuations of the val pieces' own passages.
``--evaluate CHECKPOINT`` only prints the divergences of a checkpoint to the ``test``
split under both protocols, with a unigram sampler's for comparison (see docs/models.md,
"Evaluation: two protocols").  ``--init`` warm-starts from a run's networks;
``--transpose`` and ``--tonal-weight`` are the augmentation and the tonal feature-matching
term measured there.

``--calibrate CHECKPOINT -o OUT.pt`` fits a per-style pitch-class logit bias to the
**train** split without touching the networks (iterative proportional fitting: sample
melodies from the train-split primers, add ``log(p_train / p_gan)`` of each pitch class
to the bias of that class's onset pitches, repeat) and writes the generator with the bias
(float16, as ``--export``).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from midi_bridge.model import gan, gan_bars
from . import gan_eval
from .dataset import load_meta
from .train import Progress

PRIMERS = 512


def bar_pairs(melodies, styles):
    """``(prev [N, 16], bar [N, 16], style [N], ctx [N, 12], passages [N, CTX_BARS, 16])``:
    every bar of every piece with the bar before it (an empty bar before the first), the
    tonal context of the ``CTX_BARS`` bars before it and those bars; bars that are all
    rest are left out."""
    k = gan_bars.CTX_BARS
    prev, cur, sty, ctx, pas = [], [], [], [], []
    for mel, s in zip(melodies, styles):
        if not mel:
            continue
        bars = gan_bars.melody_to_bars(mel)
        padded = np.concatenate([np.tile(gan_bars.empty_bar(), (k, 1)), bars])
        windows = np.stack([padded[i:i + k] for i in range(len(bars))])  # the k bars before bar i
        keep = (bars != gan_bars.REST).any(1)
        prev.append(windows[keep, -1])
        cur.append(bars[keep])
        sty.append(np.full(int(keep.sum()), s, np.int64))
        ctx.append(gan_bars.pc_profile(windows[keep]))
        pas.append(windows[keep])
    if not cur:
        raise ValueError("the dataset has no bars with notes")
    return tuple(np.concatenate(a) for a in (prev, cur, sty, ctx, pas))


def primer_bank(passages: np.ndarray, styles: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` real passages of ``CTX_BARS`` bars whose last bar has at least two onsets
    (a melodic context to start from)."""
    onsets = (passages[:, -1] < gan_bars.N_PITCH).sum(1)
    pool = np.flatnonzero(onsets >= 2)
    if not len(pool):
        pool = np.arange(len(passages))
    idx = np.random.default_rng(seed).choice(pool, min(k, len(pool)), replace=False)
    return passages[idx].astype(np.uint8), styles[idx]


def gumbel_st(logits: torch.Tensor) -> torch.Tensor:
    """Straight-through Gumbel-softmax over the class axis (1): one-hot sample forward,
    the soft sample's gradient backward."""
    return F.gumbel_softmax(logits, tau=1.0, hard=True, dim=1)


_PITCH_PC = torch.from_numpy(np.eye(12, dtype=np.float32)[(np.arange(gan_bars.N_PITCH) + gan_bars.LOW) % 12])  # [48, 12]


def tonal_profiles(bars: torch.Tensor, tonic: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bars as class weights ``[B, N_CLASSES, 16]`` (one-hot or softmax) -> the pitch-class
    profile of their onset mass over the whole batch, absolute and counted from each bar's
    context tonic (``[12]`` each, summing to 1)."""
    pcs = bars[:, :gan_bars.N_PITCH, :].sum(-1) @ _PITCH_PC  # [B, 12]
    idx = (torch.arange(12)[None, :] + tonic[:, None]) % 12
    rel = pcs.gather(1, idx)
    total = pcs.sum().clamp_min(1e-6)
    return pcs.sum(0) / total, rel.sum(0) / total


def tonal_loss(fake_logits: torch.Tensor, real: torch.Tensor, tonic: torch.Tensor) -> torch.Tensor:
    """Feature matching on a musical statistic: the squared distance between the batch's
    pitch-class profiles (absolute and key-relative, :func:`tonal_profiles`) of the
    generator's expected onsets (softmax) and of the real bars under the same conditions."""
    fa, fr = tonal_profiles(torch.softmax(fake_logits, 1), tonic)
    with torch.no_grad():
        ra, rr = tonal_profiles(real, tonic)
    return ((fa - ra) ** 2).sum() + ((fr - rr) ** 2).sum()


def gradient_penalty(disc, real, fake, prev, style, ctx) -> torch.Tensor:
    a = torch.rand(real.shape[0], 1, 1)
    x = (a * real + (1 - a) * fake).requires_grad_(True)
    score, _ = disc(x, prev, style, ctx)
    (g,) = torch.autograd.grad(score.sum(), x, create_graph=True)
    return ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()


def js_score(model: gan.LoadedGAN, reference, count: int, bars: int, seed: int) -> dict:
    from midi_bridge.model.theory import histogram_js

    mels = gan_eval.generate_melodies(model, count, bars, seed=seed)
    return histogram_js(mels, reference)


def cmd_evaluate(args) -> int:
    torch.set_num_threads(max(1, args.threads))
    res = gan_eval.evaluate_js(args.evaluate, args.dataset, count=args.eval_count, bars=args.eval_bars, seed=args.seed,
                          split=args.eval_split)
    print(json.dumps(res, indent=1))
    return 0


def onset_pc_counts(tokens, ctxs=None, frame: str = "absolute") -> np.ndarray:
    """Counts ``[12]`` of the pitch classes of the onsets in tokens ``[..., 16]`` (one bar a
    row), absolute or (``frame="key"``) from the tonic of each bar's tonal context
    ``ctxs`` ``[..., 12]``."""
    t = np.asarray(tokens, np.int64).reshape(-1, gan_bars.STEPS)
    onset = t < gan_bars.N_PITCH
    pcs = (np.where(onset, t, 0) + gan_bars.LOW) % 12
    if frame == "key":
        pcs = (pcs - gan_bars.context_tonic(np.asarray(ctxs).reshape(-1, 12))[:, None]) % 12
    return np.bincount(pcs[onset], minlength=12).astype(np.float64)


def calibration_targets(melodies, styles, n_styles: int, frame: str) -> np.ndarray:
    """Pitch-class counts ``[n_styles, 12]`` of the train melodies of each style: of all
    their notes (absolute), or of the onsets of every bar relative to the tonic of the
    bar's tonal context (key)."""
    out = np.zeros((n_styles, 12))
    if frame == "key":
        _prev, cur, sty, ctx, _ = bar_pairs(melodies, styles)
        for s in range(n_styles):
            out[s] = onset_pc_counts(cur[sty == s], ctx[sty == s], "key")
        return out
    for mel, s in zip(melodies, styles):
        for p, _s, _d in mel:
            out[s, int(p) % 12] += 1
    return out


def calibrate(model: gan.LoadedGAN, targets: np.ndarray, frame: str = "absolute", iterations: int = 4,
              count: int = 2000, bars: int = 8, seed: int = 1000, log=None) -> tuple[np.ndarray, list]:
    """Fit ``model``'s pitch-class bias ``[n_styles, 12]`` to ``targets`` (counts, see
    :func:`calibration_targets`) by iterative proportional fitting; returns ``(bias,
    history)`` (the JS divergence of each style's sampled histogram before each step and
    after the last).  Styles without target counts keep a zero bias."""
    from midi_bridge.model.theory import js_divergence

    model.meta["pc_bias_frame"] = frame
    n = len(model.styles)
    bias = np.zeros((n, 12), np.float32) if model.pc_bias is None else np.array(model.pc_bias, np.float32)
    history = []
    for it in range(iterations + 1):
        row = {}
        for s, name in enumerate(model.styles):
            if targets[s].sum() <= 0:
                continue
            toks, _, ctxs = gan_eval.generate_bars(model, count, bars, name, seed=seed + 10 * it + s, contexts=True,
                                              pc_bias=bias)
            got = onset_pc_counts(toks, ctxs, frame)
            row[name] = round(float(js_divergence(got, targets[s])), 5)
            if it < iterations:
                p_t = (targets[s] + 0.5) / (targets[s] + 0.5).sum()
                p_g = (got + 0.5) / (got + 0.5).sum()
                bias[s] += np.log(p_t / p_g).astype(np.float32)
        history.append(row)
        if log:
            log(f"calibration {'step ' + str(it + 1) if it < iterations else 'result'}: train JS {row}")
    return bias, history


def cmd_calibrate(args) -> int:
    torch.set_num_threads(max(1, args.threads))
    if not args.out:
        raise ValueError("train-gan --calibrate needs -o OUT.pt")
    model = gan.load(args.calibrate)
    mels, styles, _ = gan_eval.split_melodies(args.dataset, "train")
    frame = args.calibrate_frame
    targets = calibration_targets(mels, styles, len(model.styles), frame)
    bias, history = calibrate(model, targets, frame, args.calibrate_iters, args.calibrate_count, args.eval_bars,
                              seed=args.seed + 1000, log=lambda m: print(m, file=sys.stderr))
    meta = dict(model.meta, pc_bias_frame=frame,
                calibration={"source": str(args.calibrate), "frame": frame, "iterations": args.calibrate_iters,
                             "melodies_per_style": args.calibrate_count, "bars": args.eval_bars,
                             "split": "train", "train_js": history,
                             "command": " ".join(sys.argv[1:]) if args.record_command else ""})
    gan.save(args.out, model.gen, meta, model.primers, model.primer_styles, half=True, pc_bias=bias)
    print(json.dumps({"out": str(args.out), "frame": frame, "pc_bias": np.round(bias, 4).tolist(),
                      "train_js": history}, indent=1))
    return 0


def cmd_train_gan(args) -> int:
    if getattr(args, "evaluate", None):
        return cmd_evaluate(args)
    if getattr(args, "calibrate", None):
        return cmd_calibrate(args)
    if not args.out:
        raise ValueError("train-gan needs -o RUNDIR (or --evaluate CHECKPOINT)")
    if not 0 <= args.transpose <= 11:
        raise ValueError(f"--transpose {args.transpose}: give 0 (off) to 11 semitones")
    if args.transpose and args.key_normalise:
        raise ValueError("--transpose and --key-normalise exclude each other: a key-normalised bar is always in C")
    torch.set_num_threads(max(1, args.threads))
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    meta = load_meta(args.dataset)
    styles = list(meta["styles"]) or ["default"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_mels, train_styles, _ = gan_eval.split_melodies(args.dataset, "train")
    val_mels, val_styles, _ = gan_eval.split_melodies(args.dataset, "val")
    if not val_mels:
        val_mels, val_styles = train_mels, train_styles
    prev_np, cur_np, sty_np, ctx_np, pas_np = bar_pairs(train_mels, train_styles)
    primers, primer_styles = primer_bank(pas_np, sty_np, PRIMERS, args.seed)
    prev_all, cur_all, sty_all, ctx_all = (torch.from_numpy(a) for a in (prev_np, cur_np, sty_np, ctx_np))
    tonic_all = torch.from_numpy(gan_bars.context_tonic(ctx_np))

    cfg = gan.GanConfig(z=args.z, ch=args.channels, cond=args.cond, n_styles=len(styles))
    start_epoch, best, history, elapsed0, train_state = 0, float("inf"), [], 0.0, None
    if args.resume and (out / "last.pt").exists():
        loaded = gan.load(out / "last.pt")
        if loaded.disc is None or loaded.train is None:
            raise ValueError(f"{out / 'last.pt'} has no training state to resume from")
        if loaded.meta.get("dataset_hash") not in (None, meta["dataset_hash"]):
            raise ValueError(f"--resume: {out / 'last.pt'} was trained on another dataset than {args.dataset}; "
                             "resume with the -d it was trained on, or start from its networks with --init "
                             "(and a new -o directory)")
        gen, disc, cfg = getattr(loaded.gen, "inner", loaded.gen), loaded.disc, loaded.gen.cfg
        args.key_normalise = bool(loaded.meta.get("key_normalised", False))  # the run's, as its objective
        primers, primer_styles = loaded.primers.astype(np.uint8), loaded.primer_styles
        train_state = loaded.train
        objective = loaded.meta.get("objective", args.objective)
        if objective != args.objective:
            print(f"resuming with the run's objective {objective} (not {args.objective})", file=sys.stderr)
        args.objective = objective
    elif args.init:
        init = gan.load(args.init)
        if init.disc is None:
            raise ValueError(f"{args.init} has no discriminator to start from (use a run's last.pt)")
        gen, disc, cfg = getattr(init.gen, "inner", init.gen).float(), init.disc.float(), init.gen.cfg
        primers, primer_styles = init.primers.astype(np.uint8), init.primer_styles
        print(f"starting from the networks of {args.init}", file=sys.stderr)
    else:
        gen, disc = gan.BarGenerator(cfg), gan.BarDiscriminator(cfg)
    betas = (0.5, 0.999) if args.objective == "feature-matching" else (0.5, 0.9)
    opt_g = torch.optim.Adam(gen.parameters(), lr=args.lr, betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=args.lr, betas=betas)
    if train_state is not None:
        opt_g.load_state_dict(train_state["opt_g"])
        opt_d.load_state_dict(train_state["opt_d"])
        start_epoch = int(train_state["epoch"]) + 1
        best = float(train_state["best"])
        elapsed0 = float(train_state["minutes"])
        history = list(gan.load(out / "last.pt").meta.get("history", []))
        torch.set_rng_state(train_state["rng"])
        print(f"resumed from {out / 'last.pt'} at epoch {start_epoch + 1}", file=sys.stderr)
    n = len(cur_all)
    print(f"gan ({args.objective}): generator {gen.n_params():,} parameters, discriminator "
          f"{sum(p.numel() for p in disc.parameters()):,}; {n:,} train bars, {len(val_mels)} val pieces; "
          f"styles {', '.join(styles)}", file=sys.stderr)
    if args.key_normalise:
        print("key-normalised: each bar is moved to C by the tonic of its tonal context", file=sys.stderr)
    base_meta = {"dataset_hash": meta["dataset_hash"], "styles": styles, "objective": args.objective,
                 "key_normalised": bool(args.key_normalise),
                 "command": " ".join(sys.argv[1:]) if args.record_command else "", "seed": args.seed,
                 "train_args": {k: v for k, v in vars(args).items()
                                if isinstance(v, (int, float, str, bool)) and k != "func"}}
    t_start = time.monotonic() - elapsed0 * 60
    bs = args.batch
    steps = max(1, n // bs)
    if args.steps_per_epoch:
        steps = min(steps, args.steps_per_epoch)
    for epoch in range(start_epoch, args.epochs):
        gen.train(), disc.train()
        perm = torch.from_numpy(np.random.default_rng(args.seed * 1000 + epoch).permutation(n))
        bar = Progress(steps, f"epoch {epoch + 1}/{args.epochs}", enabled=not args.quiet)
        d_run = g_run = 0.0
        for i in range(steps):
            idx = perm[i * bs:(i + 1) * bs] if (i + 1) * bs <= n else perm[-bs:]
            cur, prv, ctx, tonic = cur_all[idx], prev_all[idx], ctx_all[idx], tonic_all[idx]
            shift = None
            if args.key_normalise:  # every bar moved to C by the tonic of its tonal context
                shift = -torch.from_numpy(gan_bars.tonic_shift(tonic.numpy()))
            elif args.transpose:
                shift = torch.randint(-args.transpose, args.transpose + 1, (len(idx),))
            if shift is not None:  # the same shift for the bar, its previous bar and its tonal context
                cur, prv = gan.transpose_tokens(cur, shift), gan.transpose_tokens(prv, shift)
                ctx = ctx.gather(1, (torch.arange(12)[None, :] - shift[:, None]) % 12)
                tonic = (tonic + shift) % 12
            real, prev, sty = gan.one_hot(cur), gan.one_hot(prv), sty_all[idx]
            # -- discriminator / critic
            for _ in range(args.n_critic if args.objective == "wgan-gp" else 1):
                z = torch.randn(len(idx), cfg.z)
                with torch.no_grad():
                    fake = gumbel_st(gen(z, sty, prev, ctx))
                s_real, _ = disc(real, prev, sty, ctx)
                s_fake, _ = disc(fake, prev, sty, ctx)
                if args.objective == "wgan-gp":
                    gp = gradient_penalty(disc, real, fake, prev, sty, ctx)
                    d_loss = s_fake.mean() - s_real.mean() + args.gp * gp
                else:  # non-saturating GAN with one-sided label smoothing (0.9), as MidiNet
                    d_loss = (F.binary_cross_entropy_with_logits(s_real, torch.full_like(s_real, 0.9))
                              + F.binary_cross_entropy_with_logits(s_fake, torch.zeros_like(s_fake)))
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            # -- generator
            z = torch.randn(len(idx), cfg.z)
            logits = gen(z, sty, prev, ctx)
            fake = gumbel_st(logits)
            s_fake, f_fake = disc(fake, prev, sty, ctx)
            if args.objective == "wgan-gp":
                g_loss = -s_fake.mean()
            else:
                with torch.no_grad():
                    _, f_real = disc(real, prev, sty, ctx)
                fm = ((f_real.mean(0) - f_fake.mean(0)) ** 2).sum()
                g_loss = F.binary_cross_entropy_with_logits(s_fake, torch.ones_like(s_fake)) + args.fm_weight * fm
            if args.tonal_weight:
                g_loss = g_loss + args.tonal_weight * tonal_loss(logits, real, tonic)
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            d_run = 0.95 * d_run + 0.05 * float(d_loss.detach()) if i else float(d_loss.detach())
            g_run = 0.95 * g_run + 0.05 * float(g_loss.detach()) if i else float(g_loss.detach())
            bar.update(i + 1, f"D {d_run:+.3f} G {g_run:+.3f}")
            if args.max_minutes and (time.monotonic() - t_start) / 60 > args.max_minutes:
                break
        bar.update(steps, f"D {d_run:+.3f} G {g_run:+.3f}", force=True)
        gen.eval(), disc.eval()
        model = gan.LoadedGAN(gan.KeyNormalised(gen) if args.key_normalise else gen, dict(base_meta, styles=styles),
                              primers.astype(np.int64), primer_styles)
        js = gan_eval.continuation_js(model, val_mels, val_styles, 4, seed=epoch).get("gan") \
            if args.select == "continuation" else None
        if js is None:  # free generation (or val pieces too short to continue)
            js = js_score(model, val_mels, args.val_count, 4, seed=epoch)
        score = js["pitch_class"] + js["interval"]
        improved = score < best
        best = min(best, score)
        history.append({"epoch": epoch + 1, "d_loss": round(d_run, 4), "g_loss": round(g_run, 4),
                        "val_js_pitch_class": round(js["pitch_class"], 4), "val_js_interval": round(js["interval"], 4),
                        "minutes": round((time.monotonic() - t_start) / 60, 2)})
        print(f"epoch {epoch + 1}: D {d_run:+.3f} G {g_run:+.3f} val JS pitch-class {js['pitch_class']:.4f} "
              f"interval {js['interval']:.4f}{' (best)' if improved else ''}", file=sys.stderr)
        m = dict(base_meta, history=history, metrics={"val_js_sum": round(best, 4), "epochs": epoch + 1})
        state = {"opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "epoch": epoch, "best": best,
                 "minutes": (time.monotonic() - t_start) / 60, "rng": torch.get_rng_state()}
        gan.save(out / "last.pt", gen, m, primers, primer_styles, disc=disc, train_state=state)
        if improved:
            gan.save(out / "best.pt", gen, m, primers, primer_styles)
        if args.max_minutes and (time.monotonic() - t_start) / 60 > args.max_minutes:
            print("stopping: time budget", file=sys.stderr)
            break
    if args.export and (out / "best.pt").exists():
        best_model = gan.load(out / "best.pt")
        gan.save(args.export, best_model.gen, best_model.meta, best_model.primers, best_model.primer_styles, half=True)
        print(f"exported {args.export} ({os.path.getsize(args.export) / 1e6:.2f} MB, float16)", file=sys.stderr)
    if args.eval_count and (out / "best.pt").exists() and (Path(args.dataset) / "test.pt").exists():
        res = gan_eval.evaluate_js(out / "best.pt", args.dataset, count=args.eval_count, bars=args.eval_bars, seed=args.seed)
        print(json.dumps(res, indent=1))
    return 0


__all__ = ["cmd_train_gan", "bar_pairs", "primer_bank", "calibrate", "calibration_targets", "onset_pc_counts"]
