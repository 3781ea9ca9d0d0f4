"""Timed output with note bookkeeping and pacing.

Every outgoing message goes through :class:`Scheduler`: a priority queue ordered by
deadline (then by insertion), a token bucket that paces output so the transport never
gets a burst it would drop (JACK writes a period's events at once and silently drops
what does not fit), and the bookkeeping that guarantees every note the bridge starts is
ended:

* each sounding note is tracked per ``(channel, pitch)`` with the serial of the
  note-on that started it and the *tag* of its owner (``"thru"``, ``"cont"``, or an
  accompaniment parent); a scheduled note-off only ends the note it belongs to, so a
  retriggered pitch is not cut by an older note's end;
* a generated note gets a safety note-off after ``max_note_ns`` whatever happens;
* :meth:`end_tag` ends everything an owner started (a released parent, an
  interrupted continuation) and drops what it still had pending;
* :meth:`panic` ends everything: note-offs, then CC64=0, then CC123 on every channel
  used, in that order.

The scheduler never sleeps and never does I/O itself: ``send`` is the output sink.  All
methods are called from the engine thread only.
"""

from __future__ import annotations

import heapq
from typing import Callable, Hashable

from . import midi

Tag = Hashable
Key = tuple[int, int]  # (channel, pitch)

# Heap entries: [t_ns, seq, msg, tag, epoch, serial, safety_ns]
#   msg      the message tuple
#   tag      owner; entries whose epoch is older than the tag's current epoch are dropped
#   serial   for a note-off: the seq of the note-on it ends (-1: end whatever sounds)
#   safety_ns for a note-on: schedule a safety note-off this long after it (0: none)


#: A message sent this long after its deadline counts as late (status screen).
LATE_NS = 2_000_000

class Scheduler:
    def __init__(self, send: Callable[[tuple[int, ...]], None], *, burst: int = 64,
                 rate_per_ms: float = 8.0, max_note_ns: int = 4_000_000_000) -> None:
        self._send = send
        self._heap: list[list] = []
        self._seq = 0
        self._epochs: dict[Tag, int] = {}
        self._sounding: dict[Key, tuple[int, Tag]] = {}  # key -> (serial, tag)
        #: Keys whose note was ended (end_tag, panic) but whose note-off still waits in the
        #: heap (pacing): key -> seq of that note-off.  Until it leaves, the note sounds.
        self._ending: dict[Key, int] = {}
        self._compact_at = 1024  # heap size that triggers dropping dead entries
        self._by_tag: dict[Tag, set[Key]] = {}
        self.channels_used: set[int] = set()
        self._burst = float(burst)
        self._tokens = float(burst)
        self._rate = rate_per_ms / 1e6  # tokens per ns
        self._last_refill: int | None = None
        self.max_note_ns = max_note_ns
        self.sent = 0
        self.late = 0        # messages sent more than LATE_NS after they were due
        self.notes_out = 0   # note-ons sent
        #: Optional ``observer(msg, tag)`` told of every message sent (recording).
        self.observer: Callable[[tuple[int, ...], Tag], None] | None = None
        self.late_ns_max = 0
        #: The tag of what is passed through as played (the engine's thru): its release
        #: (:meth:`release`) of a note nobody sounds -- one the bridge did not see start,
        #: or one it already ended -- goes out as is; it still never ends another's note.
        self.passthrough: Tag = None
        #: Messages leave this long before their deadline, each with it (``due``): for an
        #: output that writes at the due time itself (the native JACK backend).  0: at it.
        self.lead_ns = 0
        #: The deadline of the message being sent (read by ``send``).
        self.due = 0

    # -- scheduling -------------------------------------------------------------------

    def _push(self, t: int, msg: tuple[int, ...], tag: Tag, serial: int = -1,
              safety_ns: int = 0) -> int:
        self._seq += 1
        heapq.heappush(self._heap, [t, self._seq, msg, tag, self._epochs.get(tag, 0),
                                    serial, safety_ns])
        if len(self._heap) > self._compact_at:
            self._compact()
        return self._seq

    def _compact(self) -> None:
        """Drop the entries :meth:`pump` would skip anyway: those of an ended owner, and
        note-offs of notes that neither sound nor wait to start.  Without this, a note
        ended early (released, retriggered, cut by its safety) leaves its far-away
        note-off in the heap until its time, and a generator asking for very long or very
        late notes grows the heap with the session.  Amortised O(1) per push: the heap
        is rebuilt only when it has doubled since the last time."""
        epochs, heap = self._epochs, self._heap

        def stale(e: list) -> bool:
            return e[3] is not None and e[4] != epochs.get(e[3], 0)

        live = {serial for serial, _ in self._sounding.values()}
        live.update(e[1] for e in heap if e[2][0] & 0xF0 == midi.NOTE_ON and not stale(e))
        heap[:] = [e for e in heap if not stale(e) and not (
            e[2][0] & 0xF0 == midi.NOTE_OFF and e[5] >= 0 and e[5] not in live)]
        heapq.heapify(heap)  # (in place: pump holds a reference to this list)
        self._compact_at = max(1024, 2 * len(heap))

    def note(self, t_on: int, t_off: int | None, channel: int, pitch: int, velocity: int,
             tag: Tag, safety: bool = True) -> None:
        """Schedule a note; ``t_off`` None leaves its end to :meth:`end_tag`/:meth:`release`."""
        serial = self._push(t_on, midi.note_on(channel, pitch, velocity), tag,
                            safety_ns=self.max_note_ns if safety else 0)
        if t_off is not None:
            self._push(max(t_off, t_on), midi.note_off(channel, pitch), tag, serial)

    def message(self, t: int, msg: tuple[int, ...], tag: Tag = None) -> None:
        """Schedule any other message (control change, program change, ...)."""
        self._push(t, msg, tag)

    def release(self, t: int, channel: int, pitch: int, tag: Tag, velocity: int = 0) -> None:
        """End ``(channel, pitch)`` at ``t`` if it is sounding for ``tag`` then."""
        self._push(t, midi.note_off(channel, pitch, velocity), tag, -1)

    # -- ending -------------------------------------------------------------------------

    def end_tag(self, t: int, tag: Tag) -> None:
        """End every note ``tag`` started and drop what it still had pending."""
        self._epochs[tag] = self._epochs.get(tag, 0) + 1
        for key in sorted(self._by_tag.pop(tag, ())):  # (in key order: reproducible output)
            self._sounding.pop(key, None)
            self._force_off(t, key)

    def _force_off(self, t: int, key: Key) -> None:
        self._ending[key] = self._push(t, midi.note_off(*key), None, -2)

    def panic(self, t: int) -> None:
        """Drop everything pending; note-offs for all that sounds, CC64=0, CC123 per channel.

        Endings already decided but still waiting for pacing tokens (the note-offs of
        :meth:`end_tag`, an earlier panic's note-offs and CCs) are not dropped: their notes
        are no longer in the book, so this panic takes them over instead."""
        keys_set = set(self._sounding) | set(self._ending)
        pending_channels: set[int] = set()
        for entry in self._heap:
            if entry[5] == -2 and entry[2][0] & 0xF0 == midi.CONTROL:  # an earlier panic's CCs
                pending_channels.add(entry[2][0] & 0x0F)
        self._heap.clear()
        self._ending = {}
        for tag in list(self._epochs):
            self._epochs[tag] += 1
        keys = sorted(keys_set)
        self._sounding.clear()
        self._by_tag.clear()
        channels = sorted(self.channels_used | pending_channels | {ch for ch, _ in keys})
        self.channels_used = set()
        for key in keys:
            self._force_off(t, key)
        self.release_channels(t, channels)

    def release_channels(self, t: int, channels) -> None:
        """CC64=0 on each of ``channels``, then CC123 on each (the CC part of a panic)."""
        for msg in _release_messages(channels):
            self._push(t, msg, None, -2)

    def emergency(self) -> list[tuple[int, ...]]:
        """What ends every note at once, for another thread while the engine thread is
        stuck (a plugin blocked in native code, see :mod:`midi_bridge.runtime.watchdog`): note-offs for
        all that sounds or is ending, then CC64=0 and CC123 per channel used.  Only reads:
        the book stays as it is (its own note-offs, later, are harmless repeats)."""
        keys = sorted(set(self._sounding) | set(self._ending))
        channels = sorted(set(self.channels_used) | {ch for ch, _ in keys})
        return [midi.note_off(ch, pitch) for ch, pitch in keys] + _release_messages(channels)

    @property
    def sounding(self) -> dict[Key, tuple[int, Tag]]:
        return self._sounding

    def pending(self) -> int:
        return len(self._heap)

    # -- sending --------------------------------------------------------------------------

    def next_deadline(self, now: int) -> int | None:
        """When :meth:`pump` next has work: the head's deadline, or when a token is back."""
        if not self._heap:
            return None
        t = self._heap[0][0] - self.lead_ns
        if self._tokens < 1.0 and t <= now:
            return now + int((1.0 - self._tokens) / self._rate) + 1
        return t

    def pump(self, now: int) -> None:
        """Send everything due at ``now``, as far as the pacing allows."""
        if self._last_refill is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._last_refill) * self._rate)
        self._last_refill = now
        heap, lead = self._heap, self.lead_ns
        while heap and heap[0][0] - lead <= now and self._tokens >= 1.0:
            t, seq, msg, tag, epoch, serial, safety_ns = heapq.heappop(heap)
            if tag is not None and epoch != self._epochs.get(tag, 0):
                continue  # its owner was ended
            kind = msg[0] & 0xF0
            if kind == midi.NOTE_ON:
                key = (msg[0] & 0x0F, msg[1])
                if key in self._sounding or key in self._ending:
                    # Retrigger: end the old note first.  An old note whose (forced) end
                    # still waits for pacing ends here instead; its waiting note-off is
                    # void (it would cut this new note short).
                    if key in self._sounding:
                        self._unmark(key)
                    self._ending.pop(key, None)
                    self._emit(midi.note_off(*key), now, t, True, tag)
                    if self._tokens < 1.0:  # the note-on waits for its own token
                        heapq.heappush(heap, [t, seq, msg, tag, epoch, serial, safety_ns])
                        continue
                self._sounding[key] = (seq, tag)
                keys = self._by_tag.get(tag)
                if keys is None:  # (setdefault would build a set for every note)
                    keys = self._by_tag[tag] = set()
                keys.add(key)
                if safety_ns:
                    self._push(t + safety_ns, midi.note_off(*key), None, seq)
            elif kind == midi.NOTE_OFF and serial == -2:
                key = (msg[0] & 0x0F, msg[1])
                if self._ending.get(key) != seq:
                    continue  # that note was already ended by a retrigger
                del self._ending[key]
            elif kind == midi.NOTE_OFF:
                key = (msg[0] & 0x0F, msg[1])
                cur = self._sounding.get(key)
                if cur is None:
                    if serial != -1 or tag is None or tag != self.passthrough:
                        continue  # that note already ended
                    # (passed through: a note-off for a note the bridge did not start)
                elif (serial >= 0 and cur[0] != serial) or (
                        serial == -1 and tag is not None and cur[1] != tag):
                    continue  # that note already ended (or was retriggered)
                else:
                    self._unmark(key)
            self._emit(msg, now, t, serial != -2, tag)

    def _unmark(self, key: Key) -> None:
        serial, tag = self._sounding.pop(key)
        keys = self._by_tag.get(tag)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_tag[tag]

    def _emit(self, msg: tuple[int, ...], now: int, due: int, mark: bool = True, tag: Tag = None) -> None:
        self._tokens -= 1.0
        if mark and msg[0] < 0xF0:
            self.channels_used.add(msg[0] & 0x0F)
        late = now - due if now > due else 0
        if late > self.late_ns_max:
            self.late_ns_max = late
        if late > LATE_NS:
            self.late += 1
        if msg[0] & 0xF0 == midi.NOTE_ON:
            self.notes_out += 1
        self.sent += 1
        self.due = due
        self._send(msg)
        if self.observer is not None:
            self.observer(msg, tag)

    def flush(self, now_fn: Callable[[], int], sleep: Callable[[float], None]) -> None:
        """Send everything pending now (used at shutdown), honouring the pacing."""
        while self._heap:
            now = now_fn()
            # Nothing waits for the future any more: bring everything due now.
            for entry in self._heap:
                entry[0] = min(entry[0], now)
            heapq.heapify(self._heap)
            self.pump(now)
            if self._heap:
                nxt = self.next_deadline(now_fn()) or now
                sleep(max(0.0, (nxt - now_fn()) / 1e9))


def _release_messages(channels) -> list[tuple[int, int, int]]:
    """CC64=0 on each channel, then CC123 on each: what follows a panic's note-offs."""
    return ([midi.control(ch, midi.CC_SUSTAIN, 0) for ch in channels]
            + [midi.control(ch, midi.CC_ALL_NOTES_OFF, 0) for ch in channels])
