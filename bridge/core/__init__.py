"""The live core: what runs for every MIDI event, on the engine thread.

The engine (:mod:`.engine`) and what it calls per event: the queue's item types
(:mod:`.messages`), parsing and normalising MIDI (:mod:`.midi`), the feedback guard
(:mod:`.guard`), the live controls (:mod:`.control`), the interaction modes
(:mod:`.modes`), the timeline (:mod:`.timeline`: tempo, the clock follower of
:mod:`.sync`, :mod:`.clock`, :mod:`.grid`), the phrase (:mod:`.phrase`), the answer
player (:mod:`.player`, :mod:`.answer`), the active generator and its fault policy
(:mod:`.slot`, :mod:`.faults`), timed output with note bookkeeping (:mod:`.scheduler`),
and the status screen's read-only snapshot (:mod:`.view`).  Nothing here blocks on I/O or reads a clock:
time is passed in.

May import: :mod:`midi_bridge.plugin` and the standard library.  Nothing above it
(runtime, stage, commands), no model library, no generator.
"""
