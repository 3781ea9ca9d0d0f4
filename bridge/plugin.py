"""The generator plugin contract, written once: this module is the reference.

The module docstring says how a plugin is found, built, checked and timed; each method of
:class:`Generator` says when the bridge calls it and what it must return; each data class
says what its fields mean.  ``docs/plugins.md`` is the how-to (a worked example, packaging,
testing, what happens when a plugin misbehaves) and links here.

**Registration.**  A generator is a subclass of :class:`Generator` registered under the
entry-point group :data:`ENTRY_POINT_GROUP` (``midi_bridge.generators``)::

    [project.entry-points."midi_bridge.generators"]
    echo = "my_package.echo:EchoGenerator"

The entry-point name (``echo``) is the generator's name everywhere: ``--generator echo``,
the ``generators.echo`` settings, ``midi-bridge plugins``.  The bridge's own generators
register the same way.  Nothing is imported until the generator is selected (or listed
by ``midi-bridge plugins`` / ``midi-bridge doctor``).

**Checked when it loads.**  Once imported, the class is checked against this module before
the bridge plays it.  It is *refused* -- one line naming the plugin, what is wrong and the
fix; the plugin is never selected, the bridge plays on with its other generators (at
start-up, selecting a refused plugin stops the bridge with exit code 2) -- when:

* it is not a subclass of :class:`Generator`;
* ``api_version`` is not a whole number, or is a major other than this bridge's
  (:data:`API_VERSION`);
* ``modes`` is a string, is empty, or names a mode not in :data:`MODES`;
* a declared mode lacks its method (:data:`MODE_METHODS`: ``continue`` needs
  :meth:`~Generator.continuation`, ``accompany`` needs :meth:`~Generator.accompany`);
* a method of the contract (``__init__`` and every method of :class:`Generator`) is
  defined so that the bridge cannot call it as the signature here shows.  The bridge
  passes the arguments positionally; an implementation may rename them, add parameters
  *with defaults*, or take ``*args``/``**kwargs``; a ``staticmethod`` or ``classmethod``
  is fine too;
* ``default_config`` is not a mapping.

A class that does not declare ``api_version`` is loaded with a one-line *warning* (it is
taken to be this bridge's major, so the version check cannot protect it): declare it.

**Life cycle.**  The bridge constructs the class as ``cls(config)`` when it is first
selected and keeps the instance (swapping back is instant).  One engine thread owns the
instance: no method is ever called from two threads at once, so a plugin needs no locks.
``close()`` ends it.

**The real-time path.**  ``observe``, ``accompany`` and each pull of the next note of a
continuation run between the player's notes: in the live bridge each call has a time
budget (``engine.plugin_budget_ms``, 25 ms by default).  ``__init__`` is not on it.  A
method that raises gets the generator replaced (by the previous one, else by thru):
raising is never a way to say "nothing to play"; return no notes instead.

**Time** is in **beats** (quarter notes), so output follows the tempo; the engine
converts beats to wall-clock time at its clock's tempo.  Which beats:

* with no MIDI clock (or ``clock.follow`` off, or a clock whose transport is not
  running), :attr:`PlayedEvent.beat` and :attr:`Context.beat` count the internal tempo's
  beats since the bridge started: they only grow;
* while a DAW sends MIDI clock with its transport running, they are the DAW's *song
  position*.  They jump back when the DAW loops, restarts (Start: beat 0) or is moved
  (Song Position), and jump between the two time lines when the transport starts or
  stops or the clock is lost.  A phrase can straddle such a jump.

So ``beat`` says where an event falls on the song's grid (which sixteenth, which beat of
the bar); it does not say how far apart two events are.  For that use
:attr:`PlayedEvent.seconds`, which never jumps, converted with :attr:`Context.tempo_bpm`:
``(b.seconds - a.seconds) * context.tempo_bpm / 60`` beats.  ``ev.beat - first.beat`` is
negative across a loop, and a :class:`Note` with a negative ``start`` is not played.

**What the bridge guarantees.**  Every note it starts on a plugin's behalf is ended
(note-off at the note's end, on the played note's release in ``accompany`` mode, on
interruption, swap, stop, crash, and after ``engine.max_note_beats`` at the latest): a
plugin never sends note-offs.  An invalid :class:`Note` never reaches the output.

**Versioning.**  :data:`API_VERSION` is ``(major, minor)``.  A minor bump only adds things
with defaults (1.1: :attr:`Context.temperature`, :attr:`Context.density`,
:meth:`Generator.rating_context`); a major bump may break plugins, which is why a plugin
declares the major it was written for in ``api_version``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Mapping, Sequence

#: Version of this contract, ``(major, minor)`` (see *Versioning* above).
API_VERSION: tuple[int, int] = (1, 1)

#: Entry-point group that first- and third-party generators register under.
ENTRY_POINT_GROUP = "midi_bridge.generators"

#: Interaction modes a generator may declare (``thru`` needs no generator).
MODES = ("continue", "accompany")

#: The method each mode needs: a plugin declaring the mode must define it.
MODE_METHODS: Mapping[str, str] = {"continue": "continuation", "accompany": "accompany"}


@dataclass(frozen=True, slots=True)
class PlayedEvent:
    """A note the player played, as the generator sees it.

    ``on`` is True for a note-on (velocity > 0), False for a note-off (a note-on with
    velocity 0 arrives here as a note-off).  ``pitch`` and ``velocity`` are 0-127,
    ``channel`` 0-15.  ``beat`` is when it was played in beats: the internal tempo's beats
    since the bridge started, or, under a running MIDI clock, the DAW's song position,
    which jumps back on a loop (see *Time* above: use it for the grid position, not for
    distances).  ``seconds`` is when it was played in seconds since the bridge started:
    it never jumps, so differences of ``seconds`` are the rhythm.
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

    ``pitch`` and ``velocity`` are Python ints, 0-127 and 1-127 (convert numpy numbers
    with ``int()``).  ``start`` in beats, finite and ``>= 0``: for a continuation,
    after the answer starts; for accompaniment, after the played note (0 = with it).
    ``duration`` in beats, finite and ``> 0``, or ``None`` (accompaniment only) to end with
    the played note.  ``channel`` 0-15, or ``None`` for the bridge's configured output
    channel (``engine.output_channel``).  A note outside these rules is skipped, counted
    (``bad_notes``) and warned about once; the generator keeps playing.
    """

    pitch: int
    velocity: int = 96
    start: float = 0.0
    duration: float | None = 0.5
    channel: int | None = None


@dataclass(frozen=True, slots=True)
class Context:
    """What the engine tells a generator when it asks for notes.

    ``tempo_bpm`` is the current tempo (the DAW's under MIDI clock); ``beat`` the current
    time in beats, on the same time line as :attr:`PlayedEvent.beat` (so it jumps like it).
    ``max_notes`` and ``max_beats`` bound a continuation (the engine enforces both; a
    generator may use them to shape its answer).  ``phrase`` is the current phrase's
    played note-ons, oldest first, at most ``phrase.max_notes`` of them (in ``continue``
    mode: the phrase being answered).  Contract 1.1, the performer's live controls (a mapped
    knob, the terminal): ``temperature`` is ``None`` until the performer sets one (then
    use your configured value), else 0.1-2.0; ``density`` is 0-1, 1.0 by default -- the
    engine itself drops that share of notes, so a generator may ignore it or use it to
    thin out more musically.  A plugin that also runs on 1.0 bridges reads them with
    ``getattr(context, "temperature", None)`` and ``getattr(context, "density", 1.0)``.
    """

    tempo_bpm: float
    beat: float
    max_notes: int = 0
    max_beats: float = 0.0
    phrase: Sequence[PlayedEvent] = field(default_factory=tuple)
    temperature: float | None = None
    density: float = 1.0


class Generator:
    """Base class of a generator plugin: subclass it, declare the class attributes and
    override the methods your modes need.  The signatures below are the contract the
    bridge checks an implementation against when it loads."""

    #: Short name shown to people (the entry-point name is used when empty).
    name: ClassVar[str] = ""
    #: The contract major this plugin was written for: declare it (``api_version = 1``).
    #: ``None`` here means "not declared": the plugin loads with a warning.
    api_version: ClassVar[int | None] = None
    #: Modes the generator supports: a non-empty subset of :data:`MODES`, e.g.
    #: ``frozenset({"continue"})``.  Selecting it in another mode is refused.
    modes: ClassVar[frozenset[str]] = frozenset()
    #: Its settings with their defaults: the only keys allowed in the bridge config's
    #: ``generators.<name>`` section (any other key is refused before construction).
    default_config: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        """Build the generator from ``config``: its ``generators.<name>`` settings merged
        over ``default_config`` (this base method does the merge into ``self.config``: call
        it).  Called when the generator is first selected, at start-up or on a loader
        thread during a live swap; not on the real-time path, so it may be slow (load a
        model here).  Check the values and raise with a message that says what is allowed:
        the bridge reports ``construction failed: ...`` and keeps its current generator."""
        merged = dict(self.default_config)
        merged.update(config or {})
        self.config: dict[str, Any] = merged

    def reset(self) -> None:
        """Forget the phrase state.  Called when the generator is selected and on the DAW's
        transport Stop."""

    def observe(self, event: PlayedEvent) -> None:
        """Fold one played event into the state.  Called for every note-on and note-off the
        player plays, in order (in ``accompany`` mode before :meth:`accompany` of the same
        note-on), on the real-time path: bounded (O(1)) work, never re-process the
        history, never block."""

    def continuation(self, context: Context) -> Iterator[Note]:
        """``continue`` mode: the answer to the phrase in ``context.phrase``.

        Called at phrase end, or earlier while the player is silent, to pre-sample the
        first note (closed unused if the player plays on).  Return an *iterator* of
        :class:`Note` (a generator function is best) whose ``start`` is in beats after the
        answer begins and never decreases (a note that starts before the one before it
        sounds at once, late).  The engine pulls notes lazily, a little ahead of when they
        must sound, and stops early -- the player plays again, the answer reaches
        ``max_notes``/``max_beats`` -- by calling ``close()`` on the iterator, so a
        ``finally`` runs.  Never compute the whole answer up front; end the iterator to
        end the answer."""
        raise NotImplementedError(f"{type(self).__name__} does not support 'continue' mode")

    def accompany(self, event: PlayedEvent, context: Context) -> Sequence[Note]:
        """``accompany`` mode: the notes that sound with the played note-on ``event``.

        Called after :meth:`observe` of the same note-on.  Return a list or tuple (taken
        all at once: never an endless iterator; at most 128 are played), ``[]`` for none.
        ``start`` is in beats after the played note.  A note whose ``duration`` is
        ``None`` ends when the played note ends (the usual case), otherwise after
        ``duration`` beats or at the release, whichever comes first; a note that has not
        started by the release is dropped, so a long (bounded) pattern is fine."""
        raise NotImplementedError(f"{type(self).__name__} does not support 'accompany' mode")

    def close(self) -> None:
        """Release resources: called when the bridge stops or drops the generator."""

    def rating_context(self) -> Mapping[str, Any]:
        """Optional (contract 1.1): a small JSON-able dict saved with the performer's
        rating of the last answer (for example the checkpoint and the state the answer was
        sampled from), so a trainer can learn from it.  Default: ``{}``."""
        return {}


class PluginError(Exception):
    """A plugin could not be loaded, constructed, or misbehaved."""


__all__ = [
    "API_VERSION",
    "ENTRY_POINT_GROUP",
    "MODES",
    "MODE_METHODS",
    "PlayedEvent",
    "Note",
    "Context",
    "Generator",
    "PluginError",
]
