"""Device choice: ``auto | cpu | cuda`` with a logged reason when falling back to CPU."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("midi_bridge.model")


def resolve_device(requested: str | None) -> tuple[torch.device, str]:
    """``(device, reason)``; ``reason`` is empty unless the request could not be met."""
    req = (requested or "auto").lower()
    if req not in ("auto", "cpu", "cuda") and not req.startswith("cuda:"):
        return torch.device("cpu"), f"unknown device {requested!r}, using the CPU"
    if req == "cpu":
        return torch.device("cpu"), ""
    if torch.cuda.is_available():
        return torch.device(req if req.startswith("cuda") else "cuda"), ""
    if req == "auto":
        return torch.device("cpu"), ""
    why = "CUDA requested but torch reports no usable GPU (CPU-only build or no driver); using the CPU"
    if torch.version.cuda is None:
        why = "CUDA requested but this torch build has no CUDA support; using the CPU"
    log.warning(why)
    return torch.device("cpu"), why
