"""Stage features: what the musician sees and keeps of a session.

The status screen (:mod:`.tui`, its panel drawn by :mod:`.panel`) and the figures it
shows (:mod:`.stats`), session recording to .mid (:mod:`.record`) and the ratings file
(:mod:`.ratings`).  None of it
is on the per-event path: the engine hands them public snapshots and events.

May import: :mod:`midi_bridge.runtime`, :mod:`midi_bridge.core`, :mod:`midi_bridge.plugin`.
Not commands, the model library or a generator.
"""
