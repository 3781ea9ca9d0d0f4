"""What goes on the engine's queue: one small type per kind of item, defined here once.

Producers: the ports' input callbacks (:class:`Input`, one per MIDI message, on the
backend's thread), the generator host's loader thread (:class:`Swap`), the status screen's
keys and the port supervisor (:class:`Command`), and whoever stops the engine thread
(:data:`STOP`).  The engine dispatches on the type (``type(item) is Swap``), never on a
string inside a tuple.  They are :class:`typing.NamedTuple` s: as cheap to build as the
tuples they replace (the input callback builds one per message), read by name.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence


class Input(NamedTuple):
    """A MIDI message as it arrived: stamped ``t_ns`` on the input port numbered ``port``."""

    t_ns: int
    port: int
    data: Sequence[int]


class Swap(NamedTuple):
    """A generator constructed off the engine thread (``gen`` None: it failed, ``err`` says why)."""

    name: str
    gen: Any
    err: str


class Command(NamedTuple):
    """A performer's command: ``panic``, ``next``, ``mode`` [name, None: cycle],
    ``temperature`` factor, ``set`` action value, ``rate`` +1/-1."""

    name: str
    args: tuple = ()


class Stop(NamedTuple):
    """End the engine thread (its notes are ended and the output drained first)."""


STOP = Stop()
#: End every note (the port supervisor posts it after a JACK server restart).
PANIC = Command("panic")
