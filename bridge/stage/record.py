"""Session recording (``midi-bridge run --record DIR``): every input and output event, with
its time and who played it, in a multi-track Standard MIDI File written every second.

The file
--------
``DIR/session-YYYYmmdd-HHMMSS.mid``, type 1, 960 ticks per beat:

* track 0 ``midi-bridge session``: the tempo map (``set_tempo``) and markers (generator
  swaps, mode changes, ratings: whatever the engine reports through :meth:`Recorder.marker`);
* track 1 ``input``: every message the bridge received (after the feedback guard) —
  channel messages as they are, transport Start/Stop/Continue and Song Position Pointer
  as marker events (``transport: start`` ..., ``transport: song position 16ths N``:
  a Standard MIDI File cannot hold real-time messages).  MIDI clock (0xF8) and active
  sensing (0xFE) are not recorded; the tempo they carry is in the tempo map;
* one track per output source, in the order they first play: ``out: <generator>``,
  ``out: thru``, ``out: control`` (what the bridge itself sends: the CC64/CC123 of a panic).
  A note-off goes to the track whose note it ends, whatever the source it is sent under,
  so every track's notes are matched.

Timing (why the file plays at the right wall-clock times in any DAW)
--------------------------------------------------------------------
A tick's length is set by the tempo in force, so the recorder converts nanoseconds to
ticks *through the very tempo map it writes*.  The first ``set_tempo`` is the engine's
tempo at the start (``bpm``); each :meth:`Recorder.tempo` change of at least
``tempo_step`` bpm adds a ``set_tempo`` at the tick where it happens, and a new segment
``(anchor_ns, anchor_tick, ns_per_tick)`` whose anchor is the exact time of that tick
under the previous segment — so rounding never accumulates, and a player integrating
the file's tempo map lands every event within half a tick (0.26 ms at 120 bpm, 0.5 ms at
60) of when it happened.  The tempos written are the quantised ones (whole microseconds
per beat) and the conversion uses those same quantised values.  Bars and beats in the
DAW therefore follow the tempo the bridge followed (the DAW's MIDI clock, or
``engine.bpm``).  A tempo change is placed no earlier than the last event already
written (that event's tick was computed at the old tempo), so it can land a few
milliseconds late, never inconsistently.  An event stamped before an already-written
tempo change (input is stamped on arrival, output when sent) is converted with the
segment of its own time; events within one track never go backwards (a late one is
written at the track's last tick).  Tempo estimates that move less than ``tempo_step``
(0.1 bpm) from the last one written are ignored: MIDI clock jitter would otherwise fill
the tempo map with noise.

Cost and crash safety
---------------------
The engine thread only calls :meth:`Recorder.inp`, :meth:`out`, :meth:`marker` and
:meth:`tempo`: each appends one tuple to a :class:`collections.deque` (O(1), no lock, no
I/O).  A daemon writer thread wakes every ``interval`` seconds (1 s), encodes what came
(delta times at append time, into one ``bytearray`` per track — earlier events are never
re-encoded) and rewrites the file atomically (temporary file + :func:`os.replace`): the
header and the concatenation of the tracks, each followed by a small tail of note-offs
for what is still sounding and End of Track.  Whenever the process is killed, the file on
disk is the last complete one — it parses, its notes all end, and it lacks at most the
last ``interval`` of the session.  A failed write (disk full) is logged once and
retried at the next wake-up; a removed directory is created again.  :meth:`Recorder.close`
writes the final file (held notes ended at the close time), joins the writer and says so
if that final write failed; it is idempotent.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import struct
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

TICKS_PER_BEAT = 960

_IN, _OUT, _MARKER, _TEMPO = 0, 1, 2, 3
_SKIP_IN = frozenset((0xF8, 0xFE))  # clock ticks and active sensing: not recorded
_TRANSPORT = {0xFA: "transport: start", 0xFB: "transport: continue", 0xFC: "transport: stop"}
_END_OF_TRACK = b"\x00\xff\x2f\x00"


class RecordError(ValueError):
    """The recording directory cannot be created or written; ``str()`` is one line."""


def _vlq(n: int) -> bytes:
    """A MIDI variable-length quantity."""
    if n < 0x80:
        return bytes((n,))
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def _meta(kind: int, payload: bytes) -> bytes:
    return bytes((0xFF, kind)) + _vlq(len(payload)) + payload


class _Track:
    __slots__ = ("data", "last", "sounding")

    def __init__(self, name: str) -> None:
        self.data = bytearray(b"\x00" + _meta(0x03, name.encode("utf-8")))
        self.last = 0                               # tick of the last event written
        self.sounding: set[tuple[int, int]] = set()  # (channel, pitch) of notes not yet ended

    def add(self, tick: int, event: bytes) -> None:
        if tick < self.last:
            tick = self.last
        self.data += _vlq(tick - self.last)
        self.data += event
        self.last = tick

    def tail(self, tick: int) -> bytes:
        """Note-offs for what still sounds (at ``tick``), then End of Track."""
        out = bytearray()
        last = self.last
        for ch, pitch in sorted(self.sounding):
            out += _vlq(max(0, tick - last))
            out += bytes((0x80 | ch, pitch, 0))
            last = max(last, tick)
        out += _END_OF_TRACK
        return bytes(out)


def _session_path(directory: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime())
    path = directory / f"session-{stamp}.mid"
    n = 1
    while path.exists():
        n += 1
        path = directory / f"session-{stamp}-{n}.mid"
    return path


class Recorder:
    """Record a session into ``directory`` (see the module docstring for the file)."""

    def __init__(self, directory: str | os.PathLike, bpm: float = 120.0,
                 clock: Callable[[], int] = time.perf_counter_ns, *, interval: float = 1.0,
                 tempo_step: float = 0.1) -> None:
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise RecordError(f"cannot record into {self.directory}: it is not a directory")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RecordError(f"cannot create the recording directory {self.directory}: "
                              f"{e.strerror or e}") from None
        self.path = _session_path(self.directory)
        self._tmp = self.path.with_name("." + self.path.name + ".tmp")
        self._clock = clock
        self.t0 = clock()
        self.interval = interval
        self.tempo_step = tempo_step
        self._bpm = float(bpm)  # last tempo pushed (engine thread only)
        self._q: deque[tuple] = deque()
        self._open = True
        self.error: str | None = None  # the last write error, if any
        self.flushes = 0
        self.events = 0

        # Writer-thread state.
        self._meta = _Track("midi-bridge session")
        self._input = _Track("input")
        self._outs: dict[str, _Track] = {}
        self._owner: dict[tuple[int, int], _Track] = {}  # sounding output note -> its track
        us = self._us_per_beat(bpm)
        self._meta.add(0, _meta(0x51, us.to_bytes(3, "big")))
        self._seg_t = [0.0]           # segment anchors, ns since t0
        self._seg_tick = [0]
        self._seg_nspt = [us * 1000 / TICKS_PER_BEAT]  # ns per tick
        self._dirty = True
        self._stop = False

        try:
            self._write(self._now_tick())
        except OSError as e:
            raise RecordError(f"cannot write recordings into {self.directory}: "
                              f"{e.strerror or e}") from None
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()
        log.info("recording to %s", self.path)

    # -- hot path (engine thread): one deque append each ----------------------------------

    def inp(self, t_ns: int, msg: tuple[int, ...]) -> None:
        """A received message (clock ticks and active sensing are skipped)."""
        if self._open and msg[0] not in _SKIP_IN:
            self._q.append((_IN, t_ns, msg, None))

    def out(self, t_ns: int, msg: tuple[int, ...], source: str) -> None:
        """A sent message; ``source`` is the generator's name, ``thru`` or ``control``."""
        if self._open:
            self._q.append((_OUT, t_ns, msg, source))

    def marker(self, t_ns: int, text: str) -> None:
        """A marker in track 0 (generator swap, mode change, rating, ...)."""
        if self._open:
            self._q.append((_MARKER, t_ns, None, text))

    def tempo(self, t_ns: int, bpm: float) -> None:
        """The tempo the engine follows; written when it moves by ``tempo_step`` bpm or more."""
        if self._open and abs(bpm - self._bpm) >= self.tempo_step and 10.0 <= bpm <= 1000.0:
            self._bpm = bpm
            self._q.append((_TEMPO, t_ns, None, bpm))

    # -- closing --------------------------------------------------------------------------

    def close(self) -> Path:
        """Write the final file (held notes ended now) and stop the writer; idempotent."""
        if self._open:
            self._open = False
            self._stop = True
            self._wake.set()
            if self._thread is not threading.current_thread():
                self._thread.join(30)
            if self._thread.is_alive():
                log.error("recording: the writer did not finish; %s may lack the last second", self.path)
            elif self.error is not None:
                # (logged once when it began, maybe long ago behind the status screen)
                log.error("recording: the final file could not be written (%s); %s lacks the "
                          "session since the last successful write (free space, check the "
                          "directory)", self.error, self.path)
            else:
                log.info("recorded %d events to %s", self.events, self.path)
        return self.path

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            stop = self._stop
            try:
                self._drain()
                if stop or self._dirty or self._any_sounding():
                    self._write(self._now_tick())
            except OSError as e:
                msg = f"cannot write {self.path}: {e.strerror or e}"
                if msg != self.error:
                    log.error("recording: %s (retrying every %g s)", msg, self.interval)
                self.error = msg
            except Exception:  # noqa: BLE001 - a recorder bug must not take the bridge down
                log.exception("recording: writer error")
            if stop:
                return

    @staticmethod
    def _us_per_beat(bpm: float) -> int:
        return max(1, min(0xFFFFFF, round(60e6 / bpm)))

    def _tick(self, t_ns: int) -> int:
        rel = t_ns - self.t0
        if rel <= 0:
            return 0
        seg_t = self._seg_t
        i = len(seg_t) - 1
        if rel < seg_t[i]:
            i = bisect.bisect_right(seg_t, rel) - 1
        return self._seg_tick[i] + round((rel - seg_t[i]) / self._seg_nspt[i])

    def _now_tick(self) -> int:
        return self._tick(self._clock())

    def _any_sounding(self) -> bool:
        return bool(self._owner or self._input.sounding)

    def _out_track(self, source: str) -> _Track:
        tr = self._outs.get(source)
        if tr is None:
            tr = self._outs[source] = _Track(f"out: {source}")
        return tr

    def _drain(self) -> None:
        q = self._q
        n = 0
        while True:
            try:
                kind, t, msg, extra = q.popleft()
            except IndexError:
                break
            n += 1
            if kind == _IN:
                self._in_event(self._tick(t), msg)
            elif kind == _OUT:
                self._out_event(self._tick(t), msg, extra)
            elif kind == _MARKER:
                self._meta.add(self._tick(t), _meta(0x06, str(extra).encode("utf-8")))
            else:
                self._tempo_event(t, extra)
        if n:
            self.events += n
            self._dirty = True

    def _in_event(self, tick: int, msg: tuple[int, ...]) -> None:
        status = msg[0]
        tr = self._input
        if status < 0xF0:
            kind = status & 0xF0
            if kind == 0x90 and msg[2]:
                tr.sounding.add((status & 0x0F, msg[1]))
            elif kind == 0x80 or kind == 0x90:
                tr.sounding.discard((status & 0x0F, msg[1]))
            tr.add(tick, bytes(msg))
        elif status in _TRANSPORT:
            tr.add(tick, _meta(0x06, _TRANSPORT[status].encode()))
        elif status == 0xF2 and len(msg) == 3:
            tr.add(tick, _meta(0x06, f"transport: song position 16ths {msg[1] | msg[2] << 7}".encode()))

    def _out_event(self, tick: int, msg: tuple[int, ...], source: str) -> None:
        status = msg[0]
        if status >= 0xF0:
            return
        kind = status & 0xF0
        if kind == 0x90 and msg[2]:
            key = (status & 0x0F, msg[1])
            old = self._owner.get(key)
            if old is not None:  # retrigger without a note-off: end the older note where it is
                old.sounding.discard(key)
                old.add(tick, bytes((0x80 | key[0], key[1], 0)))
            tr = self._out_track(source)
            tr.sounding.add(key)
            self._owner[key] = tr
        elif kind == 0x80 or kind == 0x90:
            key = (status & 0x0F, msg[1])
            tr = self._owner.pop(key, None)
            if tr is None:
                tr = self._out_track(source)
            tr.sounding.discard(key)
        else:
            tr = self._out_track(source)
        tr.add(tick, bytes(msg))

    def _tempo_event(self, t_ns: int, bpm: float) -> None:
        us = self._us_per_beat(bpm)
        nspt = us * 1000 / TICKS_PER_BEAT
        # Never before an event already written (its time was converted at the old tempo).
        tick = max(self._tick(t_ns), self._seg_tick[-1], self._meta.last, self._input.last,
                   *(tr.last for tr in self._outs.values()))
        if tick == self._seg_tick[-1]:  # same tick as the last change: it replaces it
            self._seg_nspt[-1] = nspt
        else:
            anchor = self._seg_t[-1] + (tick - self._seg_tick[-1]) * self._seg_nspt[-1]
            self._seg_t.append(anchor)
            self._seg_tick.append(tick)
            self._seg_nspt.append(nspt)
        self._meta.add(tick, _meta(0x51, us.to_bytes(3, "big")))

    def _write(self, end_tick: int) -> None:
        tracks = [self._meta, self._input, *self._outs.values()]
        parts: list[bytes | bytearray] = [b"MThd", struct.pack(">IHHH", 6, 1, len(tracks), TICKS_PER_BEAT)]
        for tr in tracks:
            tail = tr.tail(max(end_tick, tr.last))
            parts += (b"MTrk", struct.pack(">I", len(tr.data) + len(tail)), tr.data, tail)
        try:
            f = open(self._tmp, "wb")
        except FileNotFoundError:
            # The directory was removed mid-session (the whole session is still in memory):
            # make it again rather than lose the recording.
            self.directory.mkdir(parents=True, exist_ok=True)
            f = open(self._tmp, "wb")
        try:
            with f:
                f.writelines(parts)
                if self._stop:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(self._tmp, self.path)
        except OSError:  # (disk full: a partial temporary file would hold space)
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            raise
        self._dirty = False
        self.flushes += 1
        self.error = None
