"""The model library: the networks and everything that runs them live.

:mod:`.encoding` (MIDI <-> event rows), :mod:`.rnn` (LSTM/GRU with a one-event step
API), :mod:`.step` (the batch-1 CPU stepper; its weight tables, products and int8 in
:mod:`.step_tables`, its GRU/LSTM cells in :mod:`.step_cells`, its field-by-field sampling
in :mod:`.step_sample`), :mod:`.cuda_graph` (the captured CUDA step), :mod:`.cache`
(in-piece copy statistics), :mod:`.sampling`, :mod:`.checkpoint` (safe loading),
:mod:`.paths` (where a named checkpoint is found), :mod:`.device`, :mod:`.gan_bars` (the
conditional GAN's bar tokens) and :mod:`.gan` (its networks, checkpoints and sampling),
:mod:`.ppm` (the PPM predictor), :mod:`.keys` (key names) and :mod:`.theory`
(music-theory reward and metrics).

May import: its own modules and :mod:`midi_bridge.plugin` (for its error type).  Never a
generator: the generators build on this library, not the other way round.  Offline
work (datasets, training, evaluation) lives in :mod:`midi_bridge.training`.
"""
