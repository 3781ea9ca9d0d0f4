"""Performers' ratings of answers: a JSON-lines file, one object per rating.

Each line: ``{"time": ISO-8601, "rating": 1 | -1, "generator": name, "context": the
generator's rating_context(), "phrase": [[pitch, velocity, beat], ...] (the played
phrase's note-ons), "answer": [[pitch, velocity, start, duration], ...] (the answer, start
and duration in beats from its start), "bpm": float}``.

:class:`RatingsWriter` never blocks its caller (the engine thread): ``add`` puts the
record on a queue and a daemon thread appends it to the file and flushes.
:func:`load_ratings` reads a file back, skipping bad lines with one counted warning.
``midi-bridge tune --ratings FILE`` adds the ratings to the fine-tuning objective.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("midi_bridge.ratings")

_STOP = object()


class RatingsWriter:
    """Appends rating records to ``path`` from a background thread."""

    def __init__(self, path) -> None:
        self.path = Path(path).expanduser()
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self.written = 0
        self.errors = 0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="ratings-writer", daemon=True)
        self._thread.start()

    def add(self, record: dict) -> None:
        """Queue one record (a ``time`` is added when missing); returns at once."""
        if self._closed:
            return
        if "time" not in record:
            record = dict(record, time=datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
        self._q.put(record)

    def _loop(self) -> None:
        f = None
        try:
            while True:
                rec = self._q.get()
                if rec is _STOP:
                    break
                try:
                    line = json.dumps(rec, separators=(",", ":"))
                    if f is None:
                        self.path.parent.mkdir(parents=True, exist_ok=True)
                        f = open(self.path, "a", encoding="utf-8")
                        if not _ends_a_line(self.path):  # a line cut by a crash: start a new one
                            f.write("\n")
                    f.write(line + "\n")
                    f.flush()
                    self.written += 1
                except (OSError, TypeError, ValueError) as exc:
                    self.errors += 1
                    log.warning("ratings: cannot write a rating to %s: %s", self.path, exc)
        finally:
            if f is not None:
                f.close()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._q.put(_STOP)
        self._thread.join(timeout)


def _ends_a_line(path: Path) -> bool:
    """The file is empty or its last byte is a newline."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        if f.tell() == 0:
            return True
        f.seek(-1, 2)
        return f.read(1) == b"\n"


def load_ratings(path) -> list[dict]:
    """The well-formed records of a ratings file (an object with ``rating`` 1 or -1 and an
    ``answer`` list); bad lines are skipped and counted in one warning."""
    out, bad = [], 0
    with open(Path(path).expanduser(), encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if (not isinstance(rec, dict) or rec.get("rating") not in (1, -1)
                    or not isinstance(rec.get("answer"), list)):
                bad += 1
                continue
            out.append(rec)
    if bad:
        log.warning("ratings: skipped %d bad line(s) in %s", bad, path)
    return out
