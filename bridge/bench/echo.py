"""The floor of the live benchmark: a bare python-rtmidi echo client.

``python -m midi_bridge.bench.echo --client-name NAME`` opens a virtual input ``NAME in`` and a
virtual output ``NAME out`` on JACK (the server named by ``JACK_DEFAULT_SERVER``) and
sends every message it receives straight back out from the input callback: no queue, no
thread hop, nothing else.  It prints ``ready`` on stdout when its ports exist, and on
SIGTERM/SIGINT closes its ports and exits 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

import rtmidi

from midi_bridge.runtime.ports import close_midi


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m midi_bridge.bench.echo", description=__doc__.splitlines()[0])
    parser.add_argument("--client-name", default="mb-bench-echo")
    parser.add_argument("--in-port", default="echo in")
    parser.add_argument("--out-port", default="echo out")
    args = parser.parse_args(argv)

    done = threading.Event()

    def on_signal(_signum, _frame) -> None:
        done.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    api = rtmidi.API_UNIX_JACK
    out = rtmidi.MidiOut(api, name=args.client_name)
    inp = rtmidi.MidiIn(api, name=args.client_name)
    errors = 0
    try:
        out.open_virtual_port(args.out_port)
        inp.open_virtual_port(args.in_port)
        inp.ignore_types(sysex=True, timing=False, active_sense=True)
        send = out.send_message

        def echo(event, _data=None) -> None:
            nonlocal errors
            try:  # an exception here would vanish inside rtmidi
                send(event[0])
            except Exception:  # noqa: BLE001
                errors += 1

        inp.set_callback(echo)
        print("ready", flush=True)
        while not done.wait(0.5):
            pass
    finally:
        for m in (inp, out):
            close_midi(m)  # closes the JACK client itself
    if errors:
        print(f"echo: {errors} send errors", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
