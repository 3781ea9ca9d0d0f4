"""The native JACK backend (bridge/runtime/jackmidi.py) on the session's JACK server, with
jackd2's own ``jack_midi_dump -a`` (frame-accurate) as the witness of where output lands."""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import pytest

from midiclient import unique_client_name
from midi_bridge.runtime.jackmidi import JackMidi

pytestmark = pytest.mark.jack

DUMP_LINE = re.compile(r"^\s*(\d+):\s+((?:[0-9a-f]{2} ?)+)", re.M)


def _connect(a: str, b: str) -> None:
    subprocess.run(["jack_connect", a, b], check=True, timeout=10)


class Dump:
    """``jack_midi_dump -a``: every event it receives, with its frame."""

    def __init__(self, name: str) -> None:
        if shutil.which("jack_midi_dump") is None:
            pytest.fail("jack_midi_dump (jackd2's example clients) is missing")
        self.name = name
        self.proc = subprocess.Popen(["jack_midi_dump", "-a", name], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            lsp = subprocess.run(["jack_lsp"], capture_output=True, text=True, timeout=10).stdout
            if f"{name}:input" in lsp:
                return
            time.sleep(0.05)
        self.proc.kill()
        pytest.fail("jack_midi_dump did not register its port")

    def events(self) -> list[tuple[int, bytes]]:
        self.proc.terminate()
        out = self.proc.communicate(timeout=10)[0]
        return [(int(f), bytes.fromhex(b)) for f, b in DUMP_LINE.findall(out)]


@pytest.fixture
def backend(jack_server):
    opened: list[JackMidi] = []

    def make(inputs=("in",), outputs=("out",), on_input=None):
        jm = JackMidi(unique_client_name("mb-jm"), list(inputs), list(outputs),
                      on_input or (lambda *a: None), server=jack_server)
        opened.append(jm)
        return jm

    yield make
    for jm in opened:
        jm.close()


def test_one_client_holds_the_inputs_and_one_the_outputs(backend):
    jm = backend(inputs=("in", "ctl in"), outputs=("out", "drums out"))
    lsp = subprocess.run(["jack_lsp"], capture_output=True, text=True, timeout=10).stdout.splitlines()
    assert jm.out_name == jm.name + "-out"
    mine = sorted(p for p in lsp if p.startswith((jm.name + ":", jm.out_name + ":")))
    assert mine == sorted([f"{jm.name}:in", f"{jm.name}:ctl in",
                           f"{jm.out_name}:out", f"{jm.out_name}:drums out"]), lsp


def test_a_daw_that_feeds_the_bridge_and_records_it_gets_the_answer_on_its_frame(backend, jack_server):
    """One DAW client, its output into the bridge and the bridge's output into it: were the
    bridge's ports on one client, that would be a cycle in JACK's graph, which jackd2 breaks
    by delivering the closing connection a period late (Ardour recorded every answer one
    period late).  The DAW here is a plain JACK client stamping what it records by frame."""
    import jack

    seen: list[int] = []
    daw = jack.Client(unique_client_name("mb-daw"), no_start_server=True, servername=jack_server)
    rec, play = daw.midi_inports.register("rec"), daw.midi_outports.register("play")

    def process(frames):
        play.clear_buffer()
        for offset, _ in rec.incoming_midi_events():
            seen.append(daw.last_frame_time + offset)

    daw.set_process_callback(process)
    daw.activate()
    try:
        jm = backend()
        daw.connect(play, f"{jm.name}:in")
        daw.connect(f"{jm.out_name}:out", rec)
        time.sleep(0.2)
        frames = [jm.send(0, (0x90, 60 + k, 100), jm.now_ns() + 60_000_000 + k * 5_000_000)
                  for k in range(5)]
        time.sleep(0.3)
        assert seen == frames, (seen, frames)
    finally:
        daw.deactivate()
        daw.close()


def test_output_lands_on_the_frame_of_its_due_time(backend):
    jm = backend()
    dump = Dump(unique_client_name("mb-dump"))
    _connect(f"{jm.out_name}:out", f"{dump.name}:input")
    gaps_ms = [3.1, 7.77, 0.4, 12.5, 5.0, 1.3, 9.9, 2.2, 6.6, 4.4]
    t = jm.now_ns() + 60_000_000  # well ahead of the process cycle that plays it
    want = []
    for k, gap in enumerate(gaps_ms):
        t += round(gap * 1e6)
        want.append(jm.send(0, (0x90, 60 + k, 100), t))
    assert None not in want and -1 not in want
    time.sleep(0.06 + sum(gaps_ms) / 1e3 + 0.1)
    got = [(f, m) for f, m in dump.events() if m[0] & 0xF0 == 0x90]
    assert [m[1] for _, m in got] == [60 + k for k in range(len(gaps_ms))]
    # The dump counts frames from its own start: the spacing is the due frames', exactly.
    spacing = [b - a for (a, _), (b, _) in zip(got, got[1:])]
    assert spacing == [b - a for a, b in zip(want, want[1:])], (spacing, want)
    assert jm.dropped == 0


def test_input_is_stamped_with_its_frame(backend):
    got: list[tuple[int, int, bytes]] = []
    sink = backend(inputs=("in", "other in"), outputs=(), on_input=lambda t, i, d: got.append((t, i, d)))
    source = backend(inputs=(), outputs=("out",))
    _connect(f"{source.out_name}:out", f"{sink.name}:other in")
    t = source.now_ns() + 50_000_000
    sent = [source.send(0, (0x90, 40 + k, 90), t + k * 3_333_333) for k in range(8)]
    time.sleep(0.05 + 8 * 0.0034 + 0.1)
    assert [(i, d) for _, i, d in got] == [(1, bytes((0x90, 40 + k, 90))) for k in range(8)]
    # Downstream in the same cycle, the sink sees each event at the frame the source wrote
    # it at; its stamp maps back to that frame within 1/32 of a period (8 frames at 256:
    # JACK re-estimates its frame <-> time mapping every period, more so on a loaded
    # machine).  Stamped on arrival instead, the stamps would be a period's grain apart.
    stamped = [sink.ns_frame(t) for t, _, _ in got]
    slack = max(2, sink.period // 32)
    assert all(abs(a - b) <= slack for a, b in zip(stamped, sent)), (stamped, sent)


def test_a_message_is_never_written_before_one_sent_earlier(backend):
    """A panic's note-off sent after a note-on still waiting in the ring ends it after it
    started: per port, due frames never go backwards in send order."""
    jm = backend()
    dump = Dump(unique_client_name("mb-dump"))
    _connect(f"{jm.out_name}:out", f"{dump.name}:input")
    due = jm.now_ns() + 40_000_000
    jm.send(0, (0x90, 64, 100), due)
    jm.send(0, (0x80, 64, 0))          # "as soon as possible", sent after the note-on
    jm.send(0, (0xB0, 123, 0), due - 10_000_000)
    time.sleep(0.2)
    got = dump.events()
    assert [m for _, m in got] == [bytes((0x90, 64, 100)), bytes((0x80, 64, 0)), bytes((0xB0, 123, 0))]
    assert got[0][0] == got[1][0] == got[2][0]  # all at the note-on's frame, in order


def test_a_past_due_message_goes_out_at_once_and_long_ones_are_counted(backend):
    jm = backend()
    dump = Dump(unique_client_name("mb-dump"))
    _connect(f"{jm.out_name}:out", f"{dump.name}:input")
    assert jm.send(0, (0x90, 70, 1), jm.now_ns() - 50_000_000) is not None
    assert jm.send(0, bytes(8)) is None
    time.sleep(0.1)
    assert [m for _, m in dump.events()] == [bytes((0x90, 70, 1))]
    assert jm.dropped == 1


def test_times_are_on_the_engines_clock(backend):
    """Stamps and due times are perf_counter_ns, whatever clock JACK keeps."""
    jm = backend()
    before = time.perf_counter_ns()
    at = jm.frame_ns(jm.client.frame_time)  # the frame JACK says is now
    after = time.perf_counter_ns()
    period_ns = jm.period * 1e9 / jm.rate
    assert before - 2 * period_ns - 2e6 < at < after + 2 * period_ns + 2e6
    assert abs(jm.ns_frame(at) - jm.client.frame_time) <= jm.period


def test_what_was_sent_before_close_is_written(backend):
    """A stop's note-offs and CCs sent just before the ports close still go out."""
    jm = backend()
    dump = Dump(unique_client_name("mb-dump"))
    _connect(f"{jm.out_name}:out", f"{dump.name}:input")
    time.sleep(0.1)
    sent = [(0x80, 60 + k, 0) for k in range(20)] + [(0xB0, 64, 0), (0xB0, 123, 0)]
    for msg in sent:
        jm.send(0, msg)
    jm.close()
    assert [m for _, m in dump.events()] == [bytes(m) for m in sent]
