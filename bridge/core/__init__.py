"""The live core: what runs for every MIDI event, on the engine thread.

The engine (:mod:`.engine`) and what it calls per event: parsing and normalising MIDI
(:mod:`.midi`), the feedback guard (:mod:`.guard`), the live controls (:mod:`.control`),
the clock follower and tempo (:mod:`.sync`, :mod:`.clock`, :mod:`.grid`), the answer
player (:mod:`.answer`), the generator fault policy (:mod:`.faults`) and timed output
with note bookkeeping (:mod:`.scheduler`).  Nothing here blocks on I/O or reads a clock:
time is passed in.

May import: :mod:`midi_bridge.plugin` and the standard library.  Nothing above it
(runtime, stage, commands), no model library, no generator.
"""
