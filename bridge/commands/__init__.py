"""The command line: one module per ``midi-bridge`` command, and what they share.

:mod:`.cli` (argument parsing and dispatch), :mod:`.config` (``config.yaml``: defaults,
checking, flags), :mod:`.live` (``run``: wires ports, engine, stage and supervision),
:mod:`.render` (``render``: a MIDI file through the engine offline), :mod:`.audio`
(``render --audio``), :mod:`.learn` (``learn``) and :mod:`.doctor` (``doctor``).  The
model commands register from :mod:`midi_bridge.training.cli`, the benchmarks from
:mod:`midi_bridge.bench`.

May import anything below it: stage, runtime, core, the plugin contract, and (lazily,
only in the command that needs it) the training library.  Never a generator directly.
"""
