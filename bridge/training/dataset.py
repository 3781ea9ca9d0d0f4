"""``prepare``: MIDI files -> a dataset directory of cached, encoded tensors.

Layout of ``DATASET/``: ``meta.json`` (encoding version, view, fields, styles, counts, the
files of each split with their content hashes, the skipped files with reasons) and
``train.pt`` / ``val.pt`` / ``test.pt``, each a plain dict of tensors (loaded with
``torch.load(weights_only=True)``): ``events`` int16 ``[N, F]``, ``offsets`` int64
``[P + 1]`` (piece i is ``events[offsets[i]:offsets[i+1]]``), ``styles`` int64 ``[P]`` and
``transpose`` int8 ``[P]`` (0 for an original piece, the shift for an augmented copy).

The split is a pure function of each file's bytes (sha256 -> bucket 0..99: test < 10,
val < 20, train otherwise), so adding files never moves existing ones; a file whose bytes
equal an earlier one's is skipped as a duplicate.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from midi_bridge.model.encoding import ENCODING_VERSION, HARMONY_SPEC, NOTE_SPEC, WAIT, encode_notes, harmony_rows, to_monophonic
from .midifile import MidiFileError, read_midi

SPLITS = ("train", "val", "test")
MIDI_SUFFIXES = (".mid", ".midi", ".smf", ".kar")


def split_of(digest: str) -> str:
    bucket = int(digest[:8], 16) % 100
    return "test" if bucket < 10 else "val" if bucket < 20 else "train"


def find_midi(inputs) -> list[tuple[Path, str | None]]:
    """Files under the inputs, each with its style from the first sub-folder (or None)."""
    found = []
    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in MIDI_SUFFIXES:
                    rel = f.relative_to(p).parts
                    found.append((f, rel[0] if len(rel) > 1 else None))
        else:
            found.append((p, None))
    return found


#: Larger files are skipped (a score of a few hours is well under 1 MB; "black MIDI" with
#: millions of notes is not material for these models).
MAX_FILE_BYTES = 32 * 2**20


def encode_file(path: Path, view: str, mono: bool, min_notes: int = 8):
    """(rows, None) or (None, reason) for one file; never raises for a bad file."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:  # (read whole: a huge file would take the memory first)
            return None, (f"{size / 2**20:.0f} MB, over the {MAX_FILE_BYTES // 2**20} MB limit for one "
                          "MIDI file (not music to learn from, or not a MIDI file)"), None
        data = path.read_bytes()
    except OSError as exc:
        return None, f"cannot read ({exc.strerror or exc})", None
    digest = hashlib.sha256(data).hexdigest()
    try:
        piece = read_midi(path, data=data)
        tracks = sorted(piece.tracks, key=lambda t: -np.mean([n.pitch for n in t]))
        if view == "harmony":
            if len(tracks) < 2:
                return None, "harmony view needs a melody track and at least one voice", digest
            rows = harmony_rows(to_monophonic(tracks[0]), tracks[1:])
        elif mono:
            rows = encode_notes(to_monophonic(tracks[0]))
        else:
            rows = encode_notes(piece.all_notes())
        notes = int((rows[:, 1] != WAIT).sum()) if view == "notes" else len(rows)
        if notes < min_notes:
            return None, f"too short ({notes} notes < {min_notes})", digest
        return rows, dict(piece.stats.counts), digest
    except MidiFileError as exc:
        return None, str(exc), digest
    except Exception as exc:  # one bad file never aborts the run
        return None, f"{type(exc).__name__}: {exc}", digest


def _encode_task(args):
    return encode_file(*args)


def transpose_rows(rows: np.ndarray, shift: int, view: str) -> np.ndarray | None:
    out = rows.copy()
    pitch = out[:, 1]
    real = pitch != WAIT if view == "notes" else np.ones(len(out), bool)
    moved = pitch[real].astype(np.int64) + shift
    if moved.size and (moved.min() < 0 or moved.max() > 127):
        return None
    pitch[real] = moved
    return out


def prepare(inputs, out, *, view="notes", mono=False, style=None, transpose=0, jobs=1,
            min_notes=8, log=print) -> dict:
    out = Path(out)
    spec = NOTE_SPEC if view == "notes" else HARMONY_SPEC
    files = find_midi(inputs)
    if not files:
        raise ValueError(f"no MIDI files ({', '.join(MIDI_SUFFIXES)}) found in {', '.join(map(str, inputs))}; "
                         "give .mid files or folders that contain them")
    tasks = [(f, view, mono, min_notes) for f, _ in files]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as ex:
            results = list(ex.map(_encode_task, tasks, chunksize=16))
    else:
        results = [_encode_task(t) for t in tasks]
    seen: dict[str, str] = {}
    styles: list[str] = []
    pieces = {s: [] for s in SPLITS}
    listing = {s: [] for s in SPLITS}
    skipped = []
    cleaning: dict[str, int] = {}
    for (path, sub), (rows, info, digest) in zip(files, results):
        if rows is None:
            skipped.append({"file": str(path), "reason": info})
            continue
        if digest in seen:
            skipped.append({"file": str(path), "reason": f"duplicate of {seen[digest]}"})
            continue
        seen[digest] = str(path)
        for k, v in info.items():
            cleaning[k] = cleaning.get(k, 0) + v
        label = style or sub or "default"
        if label not in styles:
            styles.append(label)
        split = split_of(digest)
        sid = styles.index(label)
        pieces[split].append((rows, sid, 0))
        listing[split].append({"file": str(path), "sha256": digest, "style": label, "events": len(rows)})
        if split == "train" and transpose:
            for shift in range(-transpose, transpose + 1):
                moved = transpose_rows(rows, shift, view) if shift else None
                if moved is not None:
                    pieces[split].append((moved, sid, shift))
    for s in skipped:
        log(f"skipped {s['file']}: {s['reason']}", file=sys.stderr)
    if not seen:  # nothing usable: say so instead of writing an empty dataset
        raise ValueError(f"none of the {len(files)} MIDI file(s) is usable (each skipped file is listed above "
                         f"with its reason); nothing written to {out}")
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    digest_all = hashlib.sha256()
    for split in SPLITS:
        tensors = pack(pieces[split], len(spec.fields))
        path = out / f"{split}.pt"
        torch.save(tensors, path)
        digest_all.update(path.read_bytes())
        counts[split] = {"files": len(listing[split]), "pieces": len(pieces[split]),
                         "events": int(tensors["events"].shape[0])}
    meta = {"format": "midi-bridge-dataset", "encoding_version": ENCODING_VERSION, "spec": spec.to_dict(),
            "mono": bool(mono), "styles": styles, "transpose": int(transpose), "counts": counts,
            "cleaning": cleaning, "skipped": skipped, "files": listing, "dataset_hash": digest_all.hexdigest()}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    for split in SPLITS:
        c = counts[split]
        log(f"{split:5s}: {c['files']:5d} files {c['pieces']:6d} pieces {c['events']:8d} events")
    log(f"skipped: {len(skipped)} files; styles: {', '.join(styles) or '-'}; "
        f"cleaning: {', '.join(f'{k} {v}' for k, v in sorted(cleaning.items())) or 'nothing'}")
    return meta


def pack(pieces, n_fields: int) -> dict:
    lengths = [len(p[0]) for p in pieces]
    events = np.concatenate([p[0] for p in pieces]) if pieces else np.zeros((0, n_fields), np.int16)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return {"events": torch.from_numpy(events.astype(np.int16)), "offsets": torch.from_numpy(offsets),
            "styles": torch.tensor([p[1] for p in pieces], dtype=torch.int64),
            "transpose": torch.tensor([p[2] for p in pieces], dtype=torch.int8)}


@dataclass
class Split:
    events: torch.Tensor
    offsets: torch.Tensor
    styles: torch.Tensor

    def __len__(self) -> int:
        return len(self.styles)

    def piece(self, i: int) -> torch.Tensor:
        return self.events[self.offsets[i]:self.offsets[i + 1]]


def load_meta(dataset: str | os.PathLike) -> dict:
    path = Path(dataset) / "meta.json"
    if not path.exists():
        raise FileNotFoundError(f"{dataset} is not a prepared dataset (no meta.json): run 'midi-bridge prepare'")
    meta = json.loads(path.read_text())
    if meta.get("encoding_version") != ENCODING_VERSION:
        raise ValueError(f"{dataset}: encoding version {meta.get('encoding_version')} != {ENCODING_VERSION}; "
                         "prepare it again")
    return meta


def load_split(dataset: str | os.PathLike, split: str) -> Split:
    d = torch.load(Path(dataset) / f"{split}.pt", weights_only=True)
    return Split(d["events"], d["offsets"], d["styles"])


def cmd_prepare(args) -> int:
    prepare(args.inputs, args.output, view=args.view, mono=args.mono, style=args.style,
            transpose=args.transpose, jobs=args.jobs, min_notes=args.min_notes)
    return 0
