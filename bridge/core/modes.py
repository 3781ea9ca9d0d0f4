"""The interaction modes, defined once: the generator modes of the plugin contract
(:data:`midi_bridge.plugin.MODES`: a generator answers or accompanies) plus ``thru``,
where no generator plays.  The config, the CLI and the live controls use :data:`MODES`."""

from __future__ import annotations

from midi_bridge.plugin import MODES as GENERATOR_MODES

THRU = "thru"
#: Every interaction mode, in the order the mode knob and the ``m`` key cycle through.
MODES: tuple[str, ...] = (*GENERATOR_MODES, THRU)
