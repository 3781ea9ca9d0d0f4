"""A native JACK MIDI backend: one client for every port, frame-accurate in and out.

python-rtmidi on JACK makes one client per port and writes every event at frame 0 of
the next period, so timing is never better than a period.  This backend uses
JACK-Client (CFFI over the system libjack) instead:

* **two clients**, one for the inputs (``NAME``) and one for the outputs (``NAME-out``),
  each holding every port of its kind (the bridge's own and the extras): a DAW that
  feeds the bridge and records it would otherwise form a cycle in JACK's graph (see
  :class:`JackMidi`);
* **input** is stamped with its own frame: ``last_frame_time`` + the event's offset,
  turned into time by JACK's own frame <-> time mapping (``jack_frames_to_time``, which
  follows the frames as they really advance, even when the sound card's or the dummy
  driver's clock drifts from the computer's).  jackd2's clock is ``CLOCK_MONOTONIC_RAW``,
  not the ``CLOCK_MONOTONIC`` of ``time.perf_counter_ns`` that the engine's ``now`` comes
  from; every time here is on the engine's clock, through an offset between the two that
  is measured again at most every half second (the two drift by NTP's slew, ppm);
* **output** is written at the frame of its due time inside the process callback, from
  one lock-free ring buffer per output port that the engine thread fills ahead of
  time.  A message whose frame has passed goes out at the start of the next period.
  Per port, due frames never go backwards in the order messages were sent (a later
  message is never written before an earlier one), so a panic sent after a note-on
  that is still waiting in the ring ends that note after it started, never before.

Do not use python-rtmidi's JACK API in the same process while one is active: python-rtmidi
holds the GIL through its calls to the server, and the server can be waiting, at that
moment, for one of our callbacks, which needs the GIL (a deadlock, seen when a test's
rtmidi client connected while an xrun was being reported).  The bridge probes JACK
through rtmidi only before it opens these clients.

The process callback runs in JACK's real-time thread and needs the GIL: it does a fixed
amount of work per event (no allocation beyond what CFFI's buffers cost, no lock, no
logging) and counts xruns.  ``jack_frames_to_time``/``jack_time_to_frames`` and the
port latency ranges are not wrapped by JACK-Client; they are called through ctypes on
the same libjack.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import struct
import threading
import time
from typing import Callable, Sequence

#: One ring record: due frame (-1: as soon as possible), byte count, up to 7 bytes.
_REC = struct.Struct("<qB7s")
RING_BYTES = 1 << 16  # per output port: 4,096 records
CLOSE_TIMEOUT_S = 2.0  # how long close() waits for libjack to deactivate and close
DRAIN_S = 0.5          # how long close() waits for what was sent to be written
_CAPTURE, _PLAYBACK = 0, 1  # JackCaptureLatency, JackPlaybackLatency

log = logging.getLogger(__name__)


class JackMidiError(RuntimeError):
    """JACK-Client or libjack is missing, or the server refused the client."""


class _Range(ctypes.Structure):
    _fields_ = [("min", ctypes.c_uint32), ("max", ctypes.c_uint32)]


def _libjack():
    name = ctypes.util.find_library("jack")
    if name is None:
        raise JackMidiError("libjack not found: install JACK (Debian/Ubuntu: apt-get install jackd2)")
    lib = ctypes.CDLL(name)
    lib.jack_frames_to_time.restype = ctypes.c_uint64
    lib.jack_frames_to_time.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.jack_time_to_frames.restype = ctypes.c_uint32
    lib.jack_time_to_frames.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
    lib.jack_get_time.restype = ctypes.c_uint64
    lib.jack_get_time.argtypes = []
    lib.jack_port_get_latency_range.restype = None
    lib.jack_port_get_latency_range.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(_Range)]
    return lib


def _address(ffi, ptr) -> int:
    return int(ffi.cast("uintptr_t", ptr))


class JackMidi:
    """JACK MIDI ports ``inputs`` and ``outputs``, active: the inputs on one client
    (``name``), the outputs on a second (``out_name``: ``NAME-out`` when there are inputs
    too).  Two clients, because a DAW feeds the bridge and records it: one client holding
    both would make DAW -> bridge -> DAW a cycle in JACK's graph, which jackd2 breaks by
    delivering the connection that closes it a period late (the DAW would record every
    answer one period late).  As two, the output client runs before the DAW and the input
    client after it, in the same cycle.

    ``on_input(t_ns, index, data)`` is called from JACK's process thread for every event
    on input ``index`` (``data`` is a fresh ``bytes``): keep it to a queue put.
    """

    def __init__(self, client_name: str, inputs: Sequence[str], outputs: Sequence[str],
                 on_input: Callable[[int, int, bytes], None], server: str | None = None) -> None:
        try:
            import jack
        except (ImportError, OSError) as e:
            raise JackMidiError(f"the JACK backend needs JACK-Client and libjack ({e}); "
                                "pip install JACK-Client, or use --backend jack-rtmidi") from e
        self._jack = jack
        self._lib = _libjack()
        self.in_client = self.out_client = None
        try:
            if inputs or not outputs:
                self.in_client = jack.Client(client_name, no_start_server=True, servername=server)
            if outputs:
                self.out_client = jack.Client(f"{client_name}-out" if self.in_client else client_name,
                                              no_start_server=True, servername=server)
        except jack.JackError as e:
            self._close_clients()
            raise JackMidiError(f"cannot open JACK client {client_name!r}: {e} "
                                "(is the JACK server running? `jack_lsp` tells)") from e
        self.client = self.in_client or self.out_client   # for time, listing and connecting
        self.name = self.client.name
        self.out_name = self.out_client.name if self.out_client else None
        self._cptr = _address(jack._ffi, self.client._ptr)
        self.inports = [self.in_client.midi_inports.register(n) for n in inputs]
        self.outports = [self.out_client.midi_outports.register(n) for n in outputs]
        self._rings = [jack.RingBuffer(RING_BYTES) for _ in outputs]
        self._last_due = [0] * len(outputs)      # engine side: due frames never go back
        self._rec = bytearray(_REC.size)
        self._send_lock = threading.Lock()       # the engine thread and the watchdog send
        self._on_input = on_input
        self._skew = self._synced = 0
        self._closing = False
        self.resync(force=True)
        self.xruns = 0
        self.dropped = 0                          # ring full, or a message over 7 bytes
        self.period = self.client.blocksize
        self.rate = self.client.samplerate
        self._ns_per_frame = 1e9 / self.rate
        self.client.set_xrun_callback(self._xrun)
        if self.in_client is not None:
            self.in_client.set_process_callback(self._process_in)
        if self.out_client is not None:
            self.out_client.set_process_callback(self._process_out)
        for c in (self.out_client, self.in_client):
            if c is not None:
                c.activate()

    def _close_clients(self) -> None:
        for c in (self.in_client, self.out_client):
            if c is not None:
                try:
                    c.deactivate()  # its process callback no longer runs after this
                finally:
                    c.close()
        self.in_client = self.out_client = None

    # -- time --------------------------------------------------------------------------------

    def frame_ns(self, frame: int) -> int:
        """The time of ``frame`` on the engine's clock (``perf_counter_ns``), in ns."""
        return self._lib.jack_frames_to_time(self._cptr, frame & 0xFFFFFFFF) * 1000 + self._skew

    def ns_frame(self, t_ns: int) -> int:
        """The frame at ``t_ns`` (engine clock)."""
        return self._lib.jack_time_to_frames(self._cptr, max(0, t_ns - self._skew) // 1000)

    def now_ns(self) -> int:
        return time.perf_counter_ns()

    def resync(self, force: bool = False) -> None:
        """Measure the offset of JACK's clock from the engine's again (at most every 0.5 s)."""
        now = time.perf_counter_ns()
        if not force and now - self._synced < 500_000_000:
            return
        best = None
        for _ in range(3):
            a = time.perf_counter_ns()
            j = self._lib.jack_get_time() * 1000
            b = time.perf_counter_ns()
            if best is None or b - a < best[0]:
                best = (b - a, (a + b) // 2 - j)
        self._skew, self._synced = best[1], now

    def latency_frames(self) -> tuple[int, int]:
        """``(capture, playback)``: the graph's worst latency into our inputs and out of
        our outputs, in frames (JACK's port latency ranges; 0 when nothing is connected)."""
        def worst(ports, mode):
            r = _Range()
            best = 0
            for p in ports:
                self._lib.jack_port_get_latency_range(_address(self._jack._ffi, p._ptr), mode, ctypes.byref(r))
                best = max(best, r.max)
            return best
        return worst(self.inports, _CAPTURE), worst(self.outports, _PLAYBACK)

    # -- the engine's side -------------------------------------------------------------------

    def send(self, index: int, msg: Sequence[int] | bytes, due_ns: int | None = None) -> int | None:
        """Queue ``msg`` for output ``index`` at ``due_ns`` (None: the next period's start).

        Never blocks.  Returns the frame it will be written at (-1: the next period's
        start, or later if an earlier message waits), or None (counted in ``dropped``)
        when the ring is full or the message is over 7 bytes.
        """
        data = bytes(msg)
        if len(data) > 7:
            self.dropped += 1
            return None
        with self._send_lock:
            self.resync()
            due = -1 if due_ns is None else self.ns_frame(due_ns)
            if due >= 0:
                last = self._last_due[index]
                # frames are 32-bit and wrap (~25 h at 48 kHz): compare modulo 2**32
                if ((due - last) & 0xFFFFFFFF) >= 0x80000000:
                    due = last
                self._last_due[index] = due
            ring = self._rings[index]
            if ring.write_space < _REC.size:
                self.dropped += 1
                return None
            _REC.pack_into(self._rec, 0, due, len(data), data)
            ring.write(self._rec)
        return due

    def close(self) -> None:
        """Write what was sent (bounded), then deactivate and close the clients.

        The process callbacks are told to stop first, and given three periods to see it:
        deactivating while one is in a call into libjack with MIDI streaming in was seen
        to hang both (the server waiting for the cycle, the cycle for the server)."""
        # What was sent before close (the stop's note-offs, CC64=0, CC123) goes out first:
        # wait, bounded, for the process callback to empty the rings.
        deadline = time.monotonic() + DRAIN_S
        while (self.client is not None and any(r.read_space for r in self._rings)
               and time.monotonic() < deadline):
            time.sleep(self.period / self.rate)
        self._closing = True
        if self.client is not None:
            time.sleep(3 * self.period / self.rate)
        # Bounded: should libjack still not let go, the bridge's exit must not hang on it
        # (its notes were ended before the ports close); the server drops the clients when
        # the process ends.
        done = threading.Event()

        def shut() -> None:
            try:
                self._close_clients()
            finally:
                done.set()

        threading.Thread(target=shut, name="jack-close", daemon=True).start()
        if not done.wait(CLOSE_TIMEOUT_S):
            log.warning("JACK client %s did not close within %.0f s (libjack); the server drops it "
                        "when this process ends", self.name, CLOSE_TIMEOUT_S)
        self.client = None

    # -- JACK's process thread ------------------------------------------------------------------

    def _xrun(self, _delay_usecs: float) -> None:
        self.xruns += 1

    def _process_in(self, frames: int) -> None:
        if self._closing:
            return
        f0 = self.in_client.last_frame_time
        t0 = None  # the cycle's first frame on the engine's clock: one libjack call a cycle
        for index, port in enumerate(self.inports):
            for offset, buf in port.incoming_midi_events():
                if t0 is None:
                    t0 = self.frame_ns(f0)
                self._on_input(t0 + round(offset * self._ns_per_frame), index, bytes(buf))

    def _process_out(self, frames: int) -> None:
        f0 = self.out_client.last_frame_time
        size, unpack = _REC.size, _REC.unpack
        for port, ring in zip(self.outports, self._rings):
            port.clear_buffer()
            if self._closing:
                continue
            floor = 0
            while ring.read_space >= size:
                due, n, data = unpack(ring.peek(size))
                if due >= 0:
                    ahead = (due - f0) & 0xFFFFFFFF
                    if ahead < 0x80000000:          # due now or later
                        if ahead >= frames:
                            break                   # a later period's: it waits (FIFO)
                        floor = max(floor, ahead)
                ring.read_advance(size)
                try:
                    port.write_midi_event(floor, data[:n])
                except self._jack.JackError:  # the period's buffer is full
                    self.dropped += 1
