"""The generator plugin contract: everything a plugin author needs is in this module.

A generator is a class registered under the entry-point group ``midi_bridge.generators``::

    [project.entry-points."midi_bridge.generators"]
    echo = "my_package.echo:EchoGenerator"

The bridge constructs it lazily, only when it is selected, as ``cls(config)`` where
``config`` is the plugin's section of the bridge configuration merged over
``cls.default_config``.  One engine thread owns the instance: no method is ever called
from two threads at once, so a plugin needs no locks.

Time is measured in **beats** (quarter notes) so that output follows the tempo.  The
engine converts beats to wall-clock time with the tempo of its clock.

Methods (all but ``observe`` optional, depending on the modes declared):

* ``reset()`` - forget the current phrase state (called when the generator is selected and
  on the DAW's transport Stop).
* ``observe(event)`` - fold one played :class:`PlayedEvent` into the generator's state.
  Called for every note-on and note-off the player plays, in order, on the real-time
  path: it must do bounded (O(1)) work, never re-process the history, never block.
* ``continuation(context)`` - ``continue`` mode.  Returns an *iterator* of :class:`Note`
  whose ``start`` is in beats after the answer begins (non-decreasing).  The engine pulls
  notes lazily, a little ahead of when they must sound, and may stop early (the player
  played again, the answer reached its length): it then calls ``close()`` on the
  iterator, so a generator function's ``finally`` runs.  Never compute the whole answer
  up front.
* ``accompany(event, context)`` - ``accompany`` mode.  Returns the notes that sound with
  the played note-on ``event``; a note whose ``duration`` is ``None`` ends when the
  played note ends (the usual case), otherwise after ``duration`` beats or when the
  played note ends, whichever comes first.  ``accompany`` is called after ``observe``
  of the same event.
* ``close()`` - release resources when the bridge stops or drops the generator.
* ``rating_context()`` - optional (contract 1.1): a small JSON-able dict saved with a
  performer's rating of the last answer (for example the checkpoint and the state the
  answer was sampled from), so a trainer can learn from it.  Default: ``{}``.

Live controls (contract 1.1): the performer can turn ``temperature`` and ``density``
while playing (a MIDI CC, the terminal).  The engine hands them to the generator in the
:class:`Context`; ``temperature`` is ``None`` until the performer sets it (use your
configured value), ``density`` is 1.0 by default and the engine itself thins answers and
accompaniment below 1.0, so a generator may ignore both.

The bridge guarantees that every note it starts on a plugin's behalf is ended (note-off
on the note's end, on the parent's release, on interruption, swap, stop, crash, and after
a maximum duration), so a plugin never has to send note-offs itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Mapping, Sequence

#: Version of this contract.  The major number changes when an existing plugin could
#: break; a plugin declares the major it was written for in ``api_version``.
API_VERSION: tuple[int, int] = (1, 1)

#: Entry-point group that first- and third-party generators register under.
ENTRY_POINT_GROUP = "midi_bridge.generators"

#: Interaction modes a generator may declare (``thru`` needs no generator).
MODES = ("continue", "accompany")


@dataclass(frozen=True, slots=True)
class PlayedEvent:
    """A note the player played, as the generator sees it.

    ``on`` is True for a note-on (velocity > 0), False for a note-off (a note-on with
    velocity 0 arrives here as a note-off).  ``beat`` is the time in beats since the
    session started; ``seconds`` the same moment in seconds.  ``channel`` is 0-15.
    """

    on: bool
    pitch: int
    velocity: int
    channel: int
    beat: float
    seconds: float


@dataclass(frozen=True, slots=True)
class Note:
    """A note the generator wants played.

    ``start`` in beats: for a continuation, after the answer starts; for accompaniment,
    after the played note (0 = with it).  ``duration`` in beats, or ``None`` (accompaniment
    only) to end with the played note.  ``channel`` ``None`` means the bridge's configured
    output channel.
    """

    pitch: int
    velocity: int = 96
    start: float = 0.0
    duration: float | None = 0.5
    channel: int | None = None


@dataclass(frozen=True, slots=True)
class Context:
    """What the engine tells a generator when it asks for output.

    ``tempo_bpm`` is the current tempo; ``beat`` the current time in beats;
    ``max_notes`` and ``max_beats`` bound a continuation (the engine enforces both, a
    generator may use them to shape its answer); ``phrase`` is the last phrase's played
    note-ons (a tuple, bounded in length by the engine) for generators that want them.
    ``temperature`` is the performer's live sampling temperature (``None``: not set, use
    your own); ``density`` the performer's live density, 0 to 1 (the engine already
    drops notes below 1; a generator may also use it to shape what it plays).
    """

    tempo_bpm: float
    beat: float
    max_notes: int = 0
    max_beats: float = 0.0
    phrase: Sequence[PlayedEvent] = field(default_factory=tuple)
    temperature: float | None = None
    density: float = 1.0


class Generator:
    """Base class of a generator plugin.  Subclass it and override what you support."""

    #: Short name shown to people (the entry-point name is used when empty).
    name: ClassVar[str] = ""
    #: The contract major version this plugin was written for.
    api_version: ClassVar[int] = API_VERSION[0]
    #: Modes the generator supports; a subset of :data:`MODES`.
    modes: ClassVar[frozenset[str]] = frozenset()
    #: Per-plugin configuration keys with their defaults.  Keys in the bridge config's
    #: ``generators.<name>`` section that are not listed here are rejected.
    default_config: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        merged = dict(self.default_config)
        merged.update(config or {})
        self.config: dict[str, Any] = merged

    def reset(self) -> None:
        """Forget phrase state."""

    def observe(self, event: PlayedEvent) -> None:
        """Fold one played event into the state (bounded work, never blocks)."""

    def continuation(self, context: Context) -> Iterator[Note]:
        """Yield the answer to the phrase just played, lazily, in start order."""
        raise NotImplementedError(f"{type(self).__name__} does not support 'continue' mode")

    def accompany(self, event: PlayedEvent, context: Context) -> Sequence[Note]:
        """Return the notes that sound with the played note-on ``event``."""
        raise NotImplementedError(f"{type(self).__name__} does not support 'accompany' mode")

    def close(self) -> None:
        """Release resources."""

    def rating_context(self) -> Mapping[str, Any]:
        """JSON-able facts saved with a rating of the last answer (checkpoint, state...)."""
        return {}


class PluginError(Exception):
    """A plugin could not be loaded, constructed, or misbehaved."""


__all__ = [
    "API_VERSION",
    "ENTRY_POINT_GROUP",
    "MODES",
    "PlayedEvent",
    "Note",
    "Context",
    "Generator",
    "PluginError",
]
