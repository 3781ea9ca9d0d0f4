"""``train``: teacher-forced cross-entropy, Adam, gradient clipping, LR halving on a
validation plateau, early stopping, a checkpoint every epoch, ``--resume``, ``--seed``.

Runs unchanged under ``torchrun --nproc_per_node N`` (DistributedDataParallel, gloo on CPU,
NCCL on GPU).  Every rank builds the same shuffled batches; an optimizer step takes the
next ``N * accumulate`` of them, rank ``r`` the ``r``-th, ``r + N``-th, ...  The loss of a
step is its summed NLL divided by the notes of the *whole* step (all ranks), times ``N``
(DDP averages the gradients), so a step's gradient is that of one process over the same
batches: no batch is dropped, and the last, short step of an epoch weighs its batches
like any other.  A rank whose share of that step is short still runs a pass, on a batch
with weight 0, because every rank must join each gradient all-reduce.  The time budget and
the cosine schedule follow rank 0's clock, shared with one all-reduce per step, so every
rank leaves the loop at the same step.  Rank 0 writes the feature cache (atomically) and
the checkpoints; the others wait for it."""

from __future__ import annotations

import math
import os
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from midi_bridge.model import checkpoint
from midi_bridge.model.cache import K_CANDIDATES, piece_features
from .dataset import load_meta, load_split
from midi_bridge.model.device import resolve_device
from midi_bridge.model.encoding import EventSpec
from midi_bridge.model.rnn import EventRNN, ModelConfig

LN2 = math.log(2.0)
CACHE_VERSION = 2


def _dist() -> tuple[int, int]:
    """(rank, world size) of the process group, (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def featurize(dataset, split: str, sizes) -> list[tuple]:
    """Pieces of a split as ``(events, cand, q, feat, style)`` tensors (the in-piece
    statistics are computed once and cached next to the dataset: by rank 0 alone under
    torchrun, written to a temporary file and renamed, while the other ranks wait and read)."""
    data = load_split(dataset, split)
    path = Path(dataset) / f"{split}.cache-v{CACHE_VERSION}.pt"
    rank, world = _dist()

    def fresh() -> bool:
        return path.exists() and os.path.getmtime(path) >= os.path.getmtime(Path(dataset) / f"{split}.pt")

    if world > 1 and rank != 0:
        torch.distributed.barrier()  # rank 0 writes the cache first
    feats = torch.load(path, weights_only=True) if fresh() else None
    if feats is None:
        feats = _features(data, sizes)
        if rank == 0:
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            try:
                torch.save(feats, tmp)
                os.replace(tmp, path)  # readers see the old file or the whole new one
            except OSError:
                tmp.unlink(missing_ok=True)
    if world > 1 and rank == 0:
        torch.distributed.barrier()
    out = []
    for i in range(len(data)):
        a, b = int(data.offsets[i]), int(data.offsets[i + 1])
        out.append((data.events[a:b].long(), feats["cand"][a:b].long(), feats["q"][a:b].float(),
                    feats["feat"][a:b].long(), int(data.styles[i])))
    return out


def _features(data, sizes) -> dict:
    parts = [piece_features(data.piece(i).numpy(), sizes) for i in range(len(data))]
    F = len(sizes)
    return {"cand": torch.from_numpy(np.concatenate([p[0] for p in parts])) if parts
            else torch.zeros(0, K_CANDIDATES, F, dtype=torch.int16),
            "q": torch.from_numpy(np.concatenate([p[1] for p in parts])) if parts
            else torch.zeros(0, K_CANDIDATES),
            "feat": torch.from_numpy(np.concatenate([p[2] for p in parts])) if parts
            else torch.zeros(0, dtype=torch.int16)}


def make_batches(pieces, max_len: int, batch_events: int, rng: random.Random | None):
    """Chunks of at most ``max_len`` events grouped by length into padded batches of
    about ``batch_events`` events.  Returns a list of (x, cand, q, feat, style, mask)."""
    chunks = []
    for ev, cand, q, feat, style in pieces:
        for s in range(0, len(ev), max_len):
            chunks.append((ev[s:s + max_len], cand[s:s + max_len], q[s:s + max_len], feat[s:s + max_len], style))
    if rng is not None:
        rng.shuffle(chunks)
        chunks.sort(key=lambda c: len(c[0]) // 16)  # stable: shuffled within length bands
    else:
        chunks.sort(key=lambda c: len(c[0]))
    batches, cur = [], []
    for c in chunks:
        if cur and (len(cur) + 1) * len(c[0]) > batch_events:
            batches.append(_collate(cur))
            cur = []
        cur.append(c)
    if cur:
        batches.append(_collate(cur))
    if rng is not None:
        rng.shuffle(batches)
    return batches


def _collate(chunks):
    T = max(len(c[0]) for c in chunks)
    B, F = len(chunks), chunks[0][0].shape[1]
    K = chunks[0][1].shape[1]
    x = torch.zeros(B, T, F, dtype=torch.long)
    cand = torch.zeros(B, T, K, F, dtype=torch.long)
    q = torch.zeros(B, T, K)
    feat = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, (ev, c, qq, f, _) in enumerate(chunks):
        n = len(ev)
        x[i, :n], cand[i, :n], q[i, :n], feat[i, :n], mask[i, :n] = ev, c, qq, f, True
    return x, cand, q, feat, torch.tensor([c[4] for c in chunks]), mask


def evaluate_batches(model, batches, device) -> dict:
    """Summed NLL (nats), notes, fully-correct notes over batches."""
    model.eval()
    nll, notes, correct = 0.0, 0, 0
    with torch.no_grad():
        for x, cand, q, feat, style, mask in batches:
            x, cand, q, feat, style, mask = (t.to(device) for t in (x, cand, q, feat, style, mask))
            logp, ok, _ = model(x, style, cand, q, feat)
            nll -= float(logp.sum(-1)[mask].sum())
            notes += int(mask.sum())
            correct += int(ok.all(-1)[mask].sum())
    return {"nll": nll, "notes": notes, "correct": correct}


class Progress:
    """A one-line progress bar with loss and ETA on stderr."""

    def __init__(self, total: int, label: str, enabled: bool = True):
        self.total, self.label, self.enabled = max(1, total), label, enabled
        self.t0 = time.monotonic()
        self.last = 0.0

    def update(self, done: int, loss: float | str, force: bool = False) -> None:
        """``loss`` in bits per note, or the losses already written out (``"D ... G ..."``)."""
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < 0.5):
            return
        self.last = now
        frac = done / self.total
        eta = (now - self.t0) / frac * (1 - frac) if frac > 0 else 0
        bar = "#" * int(frac * 24)
        shown = loss if isinstance(loss, str) else f"loss {loss:.3f} bits/note"
        sys.stderr.write(f"\r{self.label} [{bar:<24}] {done}/{self.total} {shown} "
                         f"ETA {int(eta) // 60}:{int(eta) % 60:02d} ")
        if force:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _split_files(counts: dict) -> str:
    return ", ".join(f"{s} {counts.get(s, {}).get('files', 0)}" for s in ("train", "val", "test")) + " files"


MODEL_FLAGS = (("kind", "--kind"), ("hidden", "--hidden"), ("layers", "--layers"), ("emb", "--emb"),
               ("head", "--head"), ("dropout", "--dropout"), ("copy", "--no-copy"))  # (config key, flag)


def _check_resume(path, model, ck_meta: dict, cfg: ModelConfig, meta: dict, dataset) -> None:
    """--resume continues the same run: refuse another dataset or other model flags (the
    validation scores would not compare, the shapes may not fit)."""
    if ck_meta.get("dataset_hash") not in (None, meta["dataset_hash"]) or model.spec.to_dict() != meta["spec"]:
        raise ValueError(f"--resume: {path} was trained on another dataset than {dataset} (dataset hash "
                         f"{str(ck_meta.get('dataset_hash'))[:12]}, this one {meta['dataset_hash'][:12]}); resume "
                         "with the -d it was trained on, or train into a new -o directory")
    have, asked = model.cfg.to_dict(), cfg.to_dict()
    diff = [(k, have[k], asked[k]) for k, flag in MODEL_FLAGS if k in have and have[k] != asked[k]]
    if diff:
        given = " ".join(flag if k == "copy" else f"{flag} {have[k]}" for k, flag in MODEL_FLAGS
                         if k in have and (k != "copy" or not have[k]))
        raise ValueError(f"--resume: {path} is a {have['kind']} {have['layers']}x{have['hidden']} model; the flags "
                         "ask for another (" + "; ".join(f"{f} {a}, the run's {h}" for f, h, a in diff)
                         + f"). Resume with the run's flags ({given}), or train into a new -o directory")


def _check_enough_batches(n_batches: int, world: int, args, pieces) -> None:
    """Every rank needs a batch of its own in each step: with fewer batches than ranks the
    run would train on nothing (or on repeats)."""
    if n_batches >= world:
        return
    events = sum(len(p[0]) for p in pieces)
    raise ValueError(f"the train split has {events:,} events, {n_batches} batch(es) of --batch-events "
                     f"{args.batch_events}, for {world} processes: every process needs at least one batch. "
                     f"Lower --batch-events to {max(16, events // (2 * world))} or less, or run fewer processes "
                     "(torchrun --nproc_per_node)")


def train(args) -> int:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device, why = resolve_device(args.device)
    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend)
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    lead = rank == 0
    if why and lead:
        print(f"device: {why}", file=sys.stderr)
    torch.set_num_threads(max(1, args.threads))
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    meta = load_meta(args.dataset)
    spec = EventSpec.from_dict(meta["spec"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = ModelConfig(kind=args.kind, hidden=args.hidden, layers=args.layers, emb=args.emb, head=args.head,
                      dropout=args.dropout, copy=not args.no_copy)
    start_epoch, best, bad_epochs, history, elapsed0 = 0, float("inf"), 0, [], 0.0
    resume_state = None
    if args.resume and (out / "last.pt").exists():
        model, ck_meta, resume_state = checkpoint.load(out / "last.pt")
        _check_resume(out / "last.pt", model, ck_meta, cfg, meta, args.dataset)
        cfg = model.cfg
    else:
        model = EventRNN(spec, len(meta["styles"]), cfg)
    model.to(device)
    train_pieces = featurize(args.dataset, "train", spec.sizes)
    val_pieces = featurize(args.dataset, "val", spec.sizes)
    files = meta.get("counts", {})
    if not train_pieces:
        raise ValueError(f"the train split of {args.dataset} is empty ({_split_files(files)}): prepare "
                         "splits the files about 80/10/10 by content hash; add more MIDI files and prepare again")
    if not val_pieces and lead:
        print(f"warning: the val split of {args.dataset} is empty ({_split_files(files)}): the learning rate, "
              "early stopping and best.pt follow the training loss instead (add more MIDI files and prepare "
              "again for a held-out check)", file=sys.stderr)
    val_batches = make_batches(val_pieces, args.max_len, args.batch_events, None)
    val_batches = val_batches[rank::world]
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    if resume_state is not None:
        opt.load_state_dict(resume_state["optimizer"])
        sched.load_state_dict(resume_state["scheduler"])
        start_epoch = int(resume_state["epoch"]) + 1
        best, bad_epochs = float(resume_state["best"]), int(resume_state["bad_epochs"])
        elapsed0 = float(resume_state.get("minutes", 0.0))
        history = list(ck_meta.get("history", []))
        if lead:
            print(f"resumed from {out / 'last.pt'} at epoch {start_epoch + 1}", file=sys.stderr)
    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
    if lead:
        print(f"model: {cfg.kind} {cfg.layers}x{cfg.hidden} copy={cfg.copy} {model.n_params():,} parameters; "
              f"train {sum(len(p[0]) for p in train_pieces):,} events, val {sum(len(p[0]) for p in val_pieces):,}; "
              f"{world} process(es) on {device}", file=sys.stderr)
    t_start = time.monotonic() - elapsed0 * 60
    accumulate = max(1, int(getattr(args, "accumulate", 1) or 1))
    per_step = world * accumulate  # batches per optimizer step, all ranks together
    n_batches = len(make_batches(train_pieces, args.max_len, args.batch_events, None))
    _check_enough_batches(n_batches, world, args, train_pieces)
    steps_per_epoch = math.ceil(n_batches / per_step)
    total_steps = steps_per_epoch * args.epochs

    def clock() -> float:
        """Minutes of training so far, by rank 0's clock (shared by the per-step all-reduce)."""
        return (time.monotonic() - t_start) / 60

    def cosine_lr(step: int, minutes: float) -> float:
        """Cosine decay to 5% over the epochs or the time budget, whichever ends first."""
        frac = step / total_steps
        if args.max_minutes:
            frac = max(frac, minutes / args.max_minutes)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))
    base_meta = {"dataset_hash": meta["dataset_hash"], "styles": meta["styles"], "mono": meta.get("mono", False),
                 "command": " ".join(sys.argv[1:]) if args.record_command else "", "seed": args.seed,
                 "train_args": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}}
    steps_taken, batches_taken = 0, 0
    for epoch in range(start_epoch, args.epochs):
        rng = random.Random(args.seed * 1000 + epoch)
        batches = make_batches(train_pieces, args.max_len, args.batch_events, rng)
        _check_enough_batches(len(batches), world, args, train_pieces)
        steps = math.ceil(len(batches) / per_step)
        ddp.train()
        bar = Progress(steps, f"epoch {epoch + 1}/{args.epochs}", enabled=lead and not args.quiet)
        run_loss, run_n = 0.0, 0
        for i in range(steps):
            group = batches[i * per_step:(i + 1) * per_step]
            notes = sum(int(b[5].sum()) for b in group)  # of the whole step, every rank's batches
            mine = group[rank::world]  # at most `accumulate` batches; none for some ranks in a short last step
            opt.zero_grad(set_to_none=True)
            nll = 0.0
            passes = mine or [None]  # None: a pass of weight 0 on group[0], to join the gradient all-reduce
            for j, b in enumerate(passes):
                x, cand, q, feat, style, mask = (t.to(device) for t in (b if b is not None else group[0]))
                with ddp.no_sync() if world > 1 and j < len(passes) - 1 else nullcontext():
                    logp, _, _ = ddp(x, style, cand, q, feat, need_correct=False)
                    summed = -(logp.sum(-1) * mask).sum()
                    # DDP averages over the ranks: times world, over the step's notes = one process's gradient
                    (summed * (world / notes) if b is not None else summed * 0.0).backward()
                if b is not None:
                    nll += float(summed.detach())
                    batches_taken += 1
            minutes = clock()
            if world > 1:  # the step's NLL from every rank, rank 0's clock for all
                t = torch.tensor([nll, minutes if lead else 0.0], dtype=torch.float64, device=device)
                torch.distributed.all_reduce(t)
                nll, minutes = float(t[0]), float(t[1])
            if args.schedule == "cosine":
                for g in opt.param_groups:
                    g["lr"] = cosine_lr(epoch * steps_per_epoch + i, minutes)
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            steps_taken += 1
            lv = nll / notes / LN2
            run_loss = 0.98 * run_loss + 0.02 * lv if run_n else lv
            run_n += 1
            bar.update(i + 1, run_loss)
            if args.max_minutes and minutes > args.max_minutes:
                break
        bar.update(steps, run_loss, force=True)
        stats = evaluate_batches(model, val_batches, device)
        if world > 1:
            t = torch.tensor([stats["nll"], stats["notes"], stats["correct"]], dtype=torch.float64, device=device)
            torch.distributed.all_reduce(t)
            stats = {"nll": float(t[0]), "notes": int(t[1]), "correct": int(t[2])}
        val_bits = stats["nll"] / max(1, stats["notes"]) / LN2
        if not stats["notes"]:  # no val split: select on the training loss
            val_bits = run_loss
            if world > 1:
                t = torch.tensor([run_loss], dtype=torch.float64, device=device)
                torch.distributed.all_reduce(t)
                val_bits = float(t[0]) / world
        if args.schedule == "plateau":
            sched.step(val_bits)
        improved = val_bits < best - 1e-4
        best, bad_epochs = (val_bits, 0) if improved else (best, bad_epochs + 1)
        history.append({"epoch": epoch + 1, "train_bits_per_note": round(run_loss, 4),
                        "val_bits_per_note": round(val_bits, 4),
                        "val_accuracy": round(stats["correct"] / max(1, stats["notes"]), 4),
                        "lr": opt.param_groups[0]["lr"], "minutes": round((time.monotonic() - t_start) / 60, 2)})
        if lead:
            print(f"epoch {epoch + 1}: train {run_loss:.3f} val {val_bits:.3f} bits/note "
                  f"acc {history[-1]['val_accuracy']:.3f} lr {opt.param_groups[0]['lr']:.2g}"
                  f"{' (best)' if improved else ''}", file=sys.stderr)
            m = dict(base_meta, history=history, metrics={"val_bits_per_note": round(best, 4), "epochs": epoch + 1})
            state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch,
                     "best": best, "bad_epochs": bad_epochs, "minutes": (time.monotonic() - t_start) / 60}
            checkpoint.save(out / "last.pt", model, m, train_state=state)
            if improved:
                checkpoint.save(out / "best.pt", model, m)
        timed_out = bool(args.max_minutes and clock() > args.max_minutes)
        if world > 1:  # rank 0 decides: every rank must stop at the same epoch (clocks differ a little)
            flag = torch.tensor([float(timed_out)], dtype=torch.float64, device=device)
            torch.distributed.broadcast(flag, src=0)
            timed_out = bool(flag.item())
        if bad_epochs >= args.patience or timed_out:
            if lead:
                print(f"stopping: {'time budget' if timed_out else 'no improvement for %d epochs' % bad_epochs}",
                      file=sys.stderr)
            break
    if lead and args.export and (out / "best.pt").exists():
        model_b, m, _ = checkpoint.load(out / "best.pt")
        checkpoint.save(args.export, model_b, m, half=True)
        print(f"exported {args.export} ({os.path.getsize(args.export) / 1e6:.1f} MB, float16)", file=sys.stderr)
    if world > 1:
        print(f"rank {rank} of {world}: {steps_taken} optimizer steps, {batches_taken} batches", file=sys.stderr)
        # Every rank waits for the lead's checkpoint writing before the group goes away:
        # tearing gloo down while a peer is still busy aborts that peer.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0
