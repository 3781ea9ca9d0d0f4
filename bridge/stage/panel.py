"""The status screen's panel (:mod:`.tui`): one :class:`~.stats.Snapshot` drawn with rich.

Log lines at the bottom wrap at the panel's width (the useful end of a line - a fix, a
name - is often last) and the last :data:`LOG_LINES` screen lines of them are shown.
"""

from __future__ import annotations

from typing import Any, Iterable

from .stats import Snapshot

try:
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text
except ImportError:  # pragma: no cover - rich is a dependency; plain logs without it
    Panel = None  # type: ignore[assignment,misc]

HELP = "p panic  n next generator  m mode  +/- temperature  q quit"
#: Screen lines of log at the bottom of the panel (the last ones, wrapped).
LOG_LINES = 5


class LogTail:
    """The last ``rows`` screen lines of ``lines`` once wrapped at the width drawn at."""

    def __init__(self, lines: list[str], rows: int = LOG_LINES) -> None:
        self.text = Text("\n".join(lines), style="dim", overflow="fold")
        self.rows = rows

    def __rich_console__(self, console: Any, options: Any):
        wrapped = self.text.wrap(console, options.max_width, overflow="fold")
        yield Text("\n").join(wrapped[-self.rows:])


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} ms" if v >= 10 else f"{v:.2f} ms"


def _num(v: float | None, unset: str = "default") -> str:
    return unset if v is None else f"{v:.2f}"


def latency_note(snap: Snapshot, window_s: float) -> str:
    """What the latency row says when it has no sample: why, truthfully."""
    if snap.mode == "continue" and not snap.thru:
        return ("continue mode: a played note sends nothing at once; the answer starts "
                "after the phrase (see 'phrase')")
    return f"no played note sent anything in the last {window_s:g} s"


def render(snap: Snapshot, log_lines: Iterable[str] = (), window_s: float = 60.0) -> "Panel":
    """The status panel for one snapshot (a rich renderable)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan", no_wrap=True)
    grid.add_column(overflow="fold")

    def row(label: str, *parts: str | tuple[str, str]) -> None:
        grid.add_row(label, Text.assemble(*parts))

    ins = ", ".join(snap.in_ports) or "-"
    outs = ", ".join(snap.out_ports) or "-"
    row("ports", f"in: {ins}   out: {outs}", (f"   ({snap.backend})" if snap.backend else "", "dim"))
    row("generator", (snap.generator or "-", "bold"), "   mode ", (snap.mode, "bold"))
    clock = "MIDI clock" if snap.clock == "midi" else "internal clock"
    row("clock", f"{clock}  ", (f"{snap.bpm:.1f} bpm", "bold"),
        f"  (transport {snap.transport})" if snap.transport else "")
    phrase = snap.phrase
    if snap.phrase_notes and phrase in ("playing", "waiting for silence"):
        phrase += f" ({snap.phrase_notes} notes)"
    row("phrase", (phrase, "bold"), f"   answers {snap.answers}")
    out = f"{snap.notes_out} notes, " if snap.notes_out is not None else ""
    row("notes", f"in {snap.notes_in} ({snap.events_in} events)   out {out}{snap.sent} msgs"
                 f"   sounding {snap.sounding}   held {snap.held}")
    if snap.latency_count:
        row("latency", f"p50 {_ms(snap.p50_ms)}   p99 {_ms(snap.p99_ms)}",
            (f"   ({snap.latency_count} over {window_s:g} s)", "dim"))
    else:
        row("latency", ("p50 -   p99 -", ""), (f"   ({latency_note(snap, window_s)})", "dim"))
    late = "" if snap.late is None else f"late {snap.late}   "
    dropped = "" if snap.dropped is None else f"   dropped {snap.dropped}"
    problems = "   ".join(f"{k} {v}" for k, v in snap.errors.items())
    row("late/drop", f"{late}worst lateness {_ms(snap.late_max_ms)}{dropped}",
        ("   " + problems, "bold red") if problems else "")
    row("controls", f"temperature {_num(snap.temperature)}   density {_num(snap.density)}"
                    f"   length {_num(snap.length)}")
    if snap.recording_error:  # (logged once, long gone from the log lines below)
        row("recording", (f"NOT SAVING: {snap.recording_error}", "bold red"))
    elif snap.recording:
        row("recording", snap.recording)
    lines = list(log_lines)
    body: Any = grid
    if lines:
        body = Group(grid, Text(""), LogTail(lines))
    return Panel(body, title="midi-bridge", title_align="left", subtitle=HELP,
                 subtitle_align="left", border_style="blue")
