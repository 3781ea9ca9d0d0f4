"""midi-bridge: a real-time MIDI bridge to generator plugins (Markov, rules, LSTM/GRU)."""

__version__ = "0.1.0"
