"""The stateful recurrent generator: event encoding, data pipeline, models, training.

Modules are named by what they hold: :mod:`encoding` (MIDI <-> events), :mod:`midifile`
(reading and cleaning .mid files), :mod:`dataset` (``prepare`` and cached tensors),
:mod:`corpus` (music21 export), :mod:`rnn` (LSTM/GRU with a one-event step API),
:mod:`cache` (in-piece copy statistics), :mod:`sampling`, :mod:`checkpoint`,
:mod:`train`, :mod:`evaluate`, :mod:`bench`, :mod:`device` and :mod:`cli`.
"""
