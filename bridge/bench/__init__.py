"""Benchmarks (figures, not timed tests).

``midi-bridge bench live`` (:mod:`midi_bridge.bench.live`): end-to-end latency of a real
``midi-bridge run`` process through a private JACK server, against a bare python-rtmidi
echo client (:mod:`midi_bridge.bench.echo`) on the same server as the floor.  The MIDI
driver, the DAW-like clock and the process handling are in :mod:`midi_bridge.bench.driver`,
percentiles, the machine and the targets in :mod:`midi_bridge.bench.report`, the command line
in :mod:`midi_bridge.bench.cli`.
"""
