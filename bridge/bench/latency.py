"""``midi-bridge bench latency``: jackd2's own ``jack_midi_latency_test`` through the bridge.

The tester (a program nobody here wrote) sends MIDI messages into a port and times, frame
by frame, how long each takes to come back on another.  Through the bridge in thru mode
(``--mode thru``, every message passed on) it measures what a player hears of the
bridge's own path: input callback, engine thread, output.  The reference is a bare
python-rtmidi echo (:mod:`midi_bridge.bench.echo`: its input callback sends each message
straight back) on the same server in the same run.  Subjects take turns, round after
round, so a noisy machine's drift falls on all of them; a subject's figure is the mean of
its rounds' averages.  Target: the bridge's average within 1.05x of the echo's, nothing
lost.

The tester also counts "unexpected" messages: the bridge never sends a note-on for a key
it is already sounding on that channel without a note-off first (its bookkeeping ends
every note it passed on at stop), and the tester's repeated note-ons get one each.  They
are reported, not lost: every message sent comes back.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from midi_bridge.runtime import jack

from . import jackd
from .driver import Child, bridge_cmd, echo_cmd, unique_name
from .witness import SERVER_NAME, jack_lsp, wait_ports

TARGET_RATIO = 1.05
SUBJECTS = ("echo", "bridge jack", "bridge jack-rtmidi")
_FIELDS = {"average_ms": r"Average latency: ([\d.]+) ms", "lowest_ms": r"Lowest latency: ([\d.]+) ms",
           "highest_ms": r"Highest latency: ([\d.]+) ms", "jitter_ms": r"Average MIDI jitter: ([\d.]+) ms",
           "sent": r"Messages sent: (\d+)", "received": r"Messages received: (\d+)",
           "unexpected": r"Unexpected messages received: (\d+)"}


def parse(output: str) -> dict[str, Any]:
    """The tester's summary lines as numbers (``unexpected`` 0 when it printed none)."""
    row: dict[str, Any] = {}
    for key, pattern in _FIELDS.items():
        m = re.search(pattern, output)
        if m:
            row[key] = float(m.group(1)) if key.endswith("_ms") else int(m.group(1))
    row.setdefault("unexpected", 0)
    row["xruns"] = "Xruns:" in output or "xrun" in output.lower()
    return row


def measure(server: str, subject: str, samples: int, workdir: Path, timeout_s: float = 5.0) -> dict:
    """One round of the tester through ``subject`` (started, measured, stopped)."""
    client = unique_name("mb-lat")
    if subject == "echo":
        child = Child(echo_cmd(client), jack.client_env(server), "ready", "echo")
        wanted = ["echo in", "echo out"]
    else:
        path = workdir / "thru.yaml"
        # the tester answers what it gets with what it sent: a loop by design, so no guard
        path.write_text(yaml.safe_dump({"input": {"feedback_window_ms": 0}}))
        child = Child(bridge_cmd(client, str(path), "--mode", "thru", "--no-tui",
                                 "--backend", subject.rsplit(" ", 1)[1]),
                      jack.client_env(server), "ready:", "bridge")
        wanted = ["midi-bridge in", "midi-bridge out"]
    try:
        child.wait_ready()
        ports = wait_ports(lambda: jack_lsp(server), wanted, client)
        done = subprocess.run(["jack_midi_latency_test", "-s", str(samples), "-t", str(int(timeout_s)),
                               ports[wanted[0]], ports[wanted[1]]],
                              capture_output=True, text=True, env=jack.client_env(server),
                              timeout=60 + samples * 0.1)
        row = parse(done.stdout + done.stderr)
        row["exit"] = done.returncode
    finally:
        child.stop()
    return row


def combine(rounds: list[dict], samples: int) -> dict:
    """A subject's rounds: the mean of the averages, the lowest and highest seen, and the
    messages lost over all rounds (sent minus received; a round that measured nothing
    lost all it should have sent)."""
    averages = [r["average_ms"] for r in rounds if "average_ms" in r]
    sent = sum(r.get("sent", samples) for r in rounds)
    received = sum(r.get("received", 0) for r in rounds)
    return {"average_ms": round(sum(averages) / len(averages), 4) if averages else None,
            "round_averages_ms": averages,
            "lowest_ms": min((r["lowest_ms"] for r in rounds if "lowest_ms" in r), default=None),
            "highest_ms": max((r["highest_ms"] for r in rounds if "highest_ms" in r), default=None),
            "sent": sent, "lost": sent - received, "unexpected": sum(r["unexpected"] for r in rounds),
            "rounds_with_xruns": sum(bool(r.get("xruns")) for r in rounds)}


def run(period: int = 256, rate: int = 48000, rounds: int = 3, samples: int = 1000,
        subjects: tuple[str, ...] = SUBJECTS, realtime: bool = True, progress=lambda s: None) -> dict:
    if shutil.which("jack_midi_latency_test") is None:
        raise jackd.JackError("jack_midi_latency_test (jackd2's example clients) is missing")
    if "echo" not in subjects:
        subjects = ("echo", *subjects)
    workdir = Path(tempfile.mkdtemp(prefix="mb-latency-"))
    per: dict[str, list[dict]] = {s: [] for s in subjects}
    try:
        with jackd.JackServer(SERVER_NAME, rate=rate, period=period, realtime=realtime):
            for k in range(rounds):
                for subject in subjects:
                    row = measure(SERVER_NAME, subject, samples, workdir)
                    per[subject].append(row)
                    progress(f"round {k + 1}/{rounds} {subject}: average {row.get('average_ms')} ms, "
                             f"{row.get('received')}/{row.get('sent')} back")
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir)
    result: dict[str, Any] = {"period": period, "rate": rate, "rounds": rounds, "samples": samples,
                              "realtime": realtime, "target_ratio": TARGET_RATIO, "subjects": {}}
    echo = combine(per["echo"], samples)
    bridges = [s for s in subjects if s != "echo"]
    judged = ["bridge jack"] if "bridge jack" in bridges else bridges  # the target is the native backend's
    met = bool(judged)
    for subject in subjects:
        row = combine(per[subject], samples)
        if subject != "echo":
            ratio = (row["average_ms"] / echo["average_ms"]
                     if row["average_ms"] is not None and echo["average_ms"] else None)
            row["ratio_to_echo"] = round(ratio, 4) if ratio is not None else None
            row["met"] = ratio is not None and ratio <= TARGET_RATIO and row["lost"] == 0
            if subject in judged:
                met = met and row["met"]
        result["subjects"][subject] = row
    result["met"] = met
    return result
