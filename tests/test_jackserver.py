"""The JACK harness itself: start, reuse, stop, reclaim of a leaked slot, the MIDI driver."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

import conftest
import jackserver
from jackserver import SERVER_NAME, JackError, JackServer, registered_pid, responds

def _need_owned_registry(server: JackServer) -> None:
    if not server.owned:
        pytest.skip("reusing a JACK server someone else started: not killing it")
    if jackserver.registry_servers() is None:
        pytest.skip("no readable /dev/shm/jack-shm-registry on this system")


@pytest.mark.jack
def test_server_accepts_clients(jack_server):
    assert jack_server == SERVER_NAME
    assert responds(jack_server)
    probe = [sys.executable, "-c",
             "import rtmidi; m = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name='mb-probe');"
             " m.open_virtual_port('x'); print('ok')"]
    done = subprocess.run(probe, capture_output=True, text=True, timeout=20)  # inherits env
    assert done.stdout.strip() == "ok", done.stderr


@pytest.mark.jack
def test_client_dying_uncleanly_does_not_leak_the_slot(jack_server_handle):
    """After a client is SIGKILLed, jackd may die of SIGPIPE on SIGTERM: stop() reclaims."""
    server = jack_server_handle
    _need_owned_registry(server)
    code = ("import rtmidi, time; m = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name='mb-doomed');"
            " m.open_virtual_port('x'); print('up', flush=True); time.sleep(60)")
    client = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert client.stdout.readline().strip() == "up"
    client.kill()
    client.wait()
    assert responds(SERVER_NAME), "the server survives a client vanishing"
    try:
        server.stop()
        print("jackd exit status after a client vanished:", server.returncode)
        assert registered_pid() is None, "stop() must leave no leaked slot"
    finally:
        server.start()


@pytest.mark.jack
def test_live_server_of_our_name_is_reused(jack_server_handle):
    other = JackServer(SERVER_NAME).start()
    assert not other.owned and other.proc is None
    other.stop()  # must leave the live server alone
    assert responds(SERVER_NAME)


@pytest.mark.jack
def test_sigkilled_server_slot_is_reclaimed(jack_server_handle):
    server = jack_server_handle
    _need_owned_registry(server)
    assert registered_pid() == server.proc.pid
    try:
        # a server that died uncleanly under us: stop() reclaims its slot
        server.proc.kill()
        server.proc.wait()
        assert jackserver.leaked(), "SIGKILL should leave the slot behind"
        server.stop()
        assert registered_pid() is None, "stop() reclaims by a clean start and stop"
        # a slot leaked by an earlier run: the next start takes it over
        server.start()
        server.kill()
        assert jackserver.leaked()
        server.start()
        assert server.owned and registered_pid() == server.proc.pid
    finally:
        if not server.running:
            server.start()  # the rest of the session needs it
    assert responds(SERVER_NAME)


@pytest.mark.jack
def test_slot_with_recycled_pid_is_cleared(jack_server_handle):
    """jackd refuses ("already active") when a dead server's pid now runs something else."""
    server = jack_server_handle
    _need_owned_registry(server)
    server.kill()
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        offset = jackserver.own_slot(SERVER_NAME)[0]
        with open(jackserver.REGISTRY, "r+b") as f:  # only our own slot is touched
            f.seek(offset)
            f.write(struct.pack("<i", stranger.pid))
        assert registered_pid() == stranger.pid
        server.start()
        assert registered_pid() == server.proc.pid
    finally:
        stranger.kill()
        stranger.wait()
        if not server.running:
            server.start()
    assert responds(SERVER_NAME)


def test_registry_parsing_and_clearing(tmp_path, monkeypatch):
    stride, uid = 264, jackserver.os.getuid()
    data = bytearray(b"KCAJ" + struct.pack("<5I", 0, 1, 0, 24 + 8 * stride, 268))
    data += bytes(8 * stride + 64)
    for i, (pid, name) in enumerate([(1, "other"), (0x3FFFFFFF, SERVER_NAME)]):
        off = 24 + i * stride
        data[off:off + 4] = struct.pack("<i", pid)
        raw = f"jack-{uid}:{name}:".encode()
        data[off + 4:off + 4 + len(raw)] = raw
    fake = tmp_path / "registry"
    fake.write_bytes(bytes(data))
    monkeypatch.setattr(jackserver, "REGISTRY", fake)
    assert jackserver.registry_servers() == [(1, "other"), (0x3FFFFFFF, SERVER_NAME)]
    assert jackserver.leaked(SERVER_NAME)  # that pid does not exist
    # pid 1 is alive and is not jackd: a recycled pid, so the slot is cleared
    off = 24 + stride
    data[off:off + 4] = struct.pack("<i", 1)
    fake.write_bytes(bytes(data))
    assert jackserver._forget_recycled_slot(SERVER_NAME) is True
    assert jackserver.registry_servers() == [(1, "other")]


@pytest.mark.parametrize("ci", [False, True])
def test_missing_jackd_skips_or_fails_in_ci(monkeypatch, ci):
    monkeypatch.setattr(conftest, "jackd_path", lambda: None)
    monkeypatch.setattr(conftest, "IN_CI", ci)
    expected = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(expected, match="install jackd2"):
        conftest.need_jackd()


@pytest.mark.jack
def test_midiclient_round_trip_through_a_fake_bridge(jack_server):
    """The test driver finds renamed ports (midi-bridge-01) and timestamps what it gets."""
    import rtmidi

    from midiclient import MidiClient, unique_client_name, unmatched_note_ons

    name = unique_client_name("mb-fake-bridge")
    fake_out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name=name)
    fake_out.open_virtual_port("midi-bridge out")
    fake_in = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name=name)  # renamed NAME-01 by JACK
    fake_in.open_virtual_port("midi-bridge in")
    fake_in.set_callback(lambda event, _: fake_out.send_message(event[0]))
    try:
        with MidiClient(client=name) as driver:
            assert driver.out_port == f"{name}-01:midi-bridge in"
            assert driver.out_port.endswith(":midi-bridge in")
            assert driver.in_port.endswith(":midi-bridge out")
            sent = driver.note_on(60, 90, channel=2)
            driver.note_off(60, channel=2)
            driver.send([0xB0, 64, 0])
            got = driver.wait_for(lambda ms: len(ms) >= 3, timeout=5, what="3 echoes")
            assert [m.data for m in got] == [b"\x92\x3c\x5a", b"\x82\x3c\x00", b"\xb0\x40\x00"]
            assert got[0].is_note_on and got[1].is_note_off and got[2].is_cc(64, 0)
            assert sent < got[0].t_ns < sent + 1_000_000_000
            assert unmatched_note_ons(got) == []
            assert unmatched_note_ons(got[:1]) == got[:1]
    finally:
        fake_in.cancel_callback()
        fake_in.delete()
        fake_out.delete()


def test_a_server_name_libjack_cannot_serve_is_refused_with_the_reason():
    with pytest.raises(JackError, match="24 characters long: libjack"):
        JackServer("x" * 24)
    JackServer("x" * 25)  # (nothing started)
