"""Feedback guard: the bridge's own output coming back on its input is ignored.

A routing mistake (a DAW track monitoring "All Ins", the output port wired to the input)
sends every generated note straight back in, where it would be answered again: a
runaway loop.  The guard remembers what was sent in the last ``window_ns`` and drops an
identical message arriving within that window, once per copy sent (as Notochord does
with a 30 ms window).  The engine never drops the note-off of a key the player holds, even
when it equals one the bridge just sent: losing it would leave a note hanging.  Work per message is O(1); memory is bounded by the number of
distinct messages (at most 3 x 16 x 128 x 128).
"""

from __future__ import annotations


class FeedbackGuard:
    def __init__(self, window_ns: int) -> None:
        self.window_ns = window_ns
        self._sent: dict[tuple[int, ...], list[int]] = {}  # msg -> [last sent ns, copies]
        self.dropped = 0

    def sent(self, msg: tuple[int, ...], t_ns: int) -> None:
        if not self.window_ns:
            return
        rec = self._sent.get(msg)
        if rec is None:
            self._sent[msg] = [t_ns, 1]
        elif t_ns - rec[0] <= self.window_ns:
            rec[0] = t_ns
            rec[1] += 1
        else:
            rec[0] = t_ns
            rec[1] = 1

    def is_echo(self, msg: tuple[int, ...], t_ns: int) -> bool:
        """True (and the copy consumed) when ``msg`` is our own output coming back."""
        rec = self._sent.get(msg)
        if rec is None or rec[1] <= 0 or t_ns - rec[0] > self.window_ns:
            return False
        rec[1] -= 1
        self.dropped += 1
        return True
