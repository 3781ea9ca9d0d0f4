"""Checkpoints: a plain dict of tensors, strings and numbers, loaded with
``torch.load(weights_only=True)`` -- a file that would run code on load is refused.

Layout: ``{"format": "midi-bridge-rnn", "meta": <JSON string>, "model": state_dict,
["train": optimizer/scheduler state for --resume]}``.  ``meta`` holds the encoding version
and spec, the hyperparameters, the style labels, the dataset hash, metrics and the
training command.  Weights may be stored in float16 (shipped defaults) and are loaded as
float32.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch

from .encoding import ENCODING_VERSION, EventSpec
from .rnn import EventRNN, ModelConfig

FORMAT = "midi-bridge-rnn"
KNOWN_FORMATS = {FORMAT: ("RNN", "midi-bridge train or tune"), "midi-bridge-gan": ("GAN", "midi-bridge train-gan")}


class CheckpointError(Exception):
    """A checkpoint that cannot or must not be loaded; the message says why."""


def save(path: str | os.PathLike, model: EventRNN, meta: dict, train_state: dict | None = None,
         half: bool = False) -> None:
    model = getattr(model, "module", model)
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
             for k, v in model.state_dict().items()}
    full = dict(meta)
    full.update({"encoding_version": ENCODING_VERSION, "spec": model.spec.to_dict(),
                 "model": model.cfg.to_dict(), "n_styles": model.n_styles})
    blob = {"format": FORMAT, "meta": json.dumps(full), "model": state}
    save_blob(path, blob, train_state)


def save_blob(path: str | os.PathLike, blob: dict, train_state: dict | None = None) -> None:
    """Write a checkpoint dict atomically (a half-written file never replaces a good one)."""
    if train_state is not None:
        blob["train"] = train_state
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)


def load_raw(path: str | os.PathLike, fmt: str = FORMAT, what: str = "RNN",
             writer: str = "midi-bridge train") -> dict:
    """The checkpoint dict of format ``fmt``; refuses anything ``torch.load(weights_only=True)``
    refuses (a file that would import or call Python objects on load)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain tensor checkpoint -- loading it would "
            f"import or call Python objects (possibly running code). Only checkpoints written by "
            f"{writer} are accepted. ({str(exc).splitlines()[0]})") from None
    except Exception as exc:
        why = ("it is a folder, not a checkpoint file (give e.g. RUNDIR/best.pt)" if path.is_dir() else
               f"the file is truncated or not a PyTorch checkpoint; copy it again, or give one written by {writer}")
        raise CheckpointError(f"cannot read checkpoint {path}: {why} ({type(exc).__name__}: {exc})") from None
    if not isinstance(blob, dict) or blob.get("format") != fmt:
        other = KNOWN_FORMATS.get(blob.get("format")) if isinstance(blob, dict) else None
        if other:
            raise CheckpointError(f"{path} is a midi-bridge {other[0]} checkpoint (written by {other[1]}), not the "
                                  f"{what} checkpoint needed here: give one written by {writer}")
        raise CheckpointError(f"{path} is not a midi-bridge {what} checkpoint: give one written by {writer}")
    return blob


def load(path: str | os.PathLike) -> tuple[EventRNN, dict, dict | None]:
    """``(model in eval mode on the CPU, meta, train_state or None)``."""
    blob = load_raw(path)
    meta = json.loads(blob["meta"])
    if meta.get("encoding_version") != ENCODING_VERSION:
        raise CheckpointError(f"{path}: encoding version {meta.get('encoding_version')} is not "
                              f"{ENCODING_VERSION}; retrain or use a matching midi-bridge")
    model = EventRNN(EventSpec.from_dict(meta["spec"]), meta["n_styles"], ModelConfig.from_dict(meta["model"]))
    state = {k: v.float() if v.is_floating_point() else v for k, v in blob["model"].items()}
    model.load_state_dict(state)
    return model.eval(), meta, blob.get("train")
