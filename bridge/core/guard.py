"""Feedback guard: the bridge's own output coming back on its input is ignored.

A routing mistake (a DAW track monitoring "All Ins", the output port wired to the input)
sends every generated note straight back in, where it would be answered again: a
runaway loop.  The guard remembers what was sent in the last ``window_ns`` and drops an
identical message arriving within that window, once per copy sent (as Notochord does
with a 30 ms window).  The engine never drops the note-off of a key the player holds, nor
All Notes / All Sound Off on a channel where the player holds keys, even when it equals
what the bridge just sent: losing it would leave a note hanging or the phrase open.  Work per
message is amortised O(1); memory is bounded by what was sent within one window (older
entries are forgotten as new messages go out), not by the length of the session.
"""

from __future__ import annotations

from collections import deque


class FeedbackGuard:
    def __init__(self, window_ns: int) -> None:
        self.window_ns = window_ns
        self._sent: dict[tuple[int, ...], list[int]] = {}  # msg -> [last sent ns, copies]
        self._order: deque[tuple[int, tuple[int, ...]]] = deque()  # (sent ns, msg), oldest first
        self.dropped = 0

    def sent(self, msg: tuple[int, ...], t_ns: int) -> None:
        if not self.window_ns:
            return
        order, window = self._order, self.window_ns
        while order and t_ns - order[0][0] > window:
            t_old, old = order.popleft()
            rec = self._sent.get(old)
            if rec is not None and rec[0] == t_old:  # not sent again since
                del self._sent[old]
        order.append((t_ns, msg))
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
