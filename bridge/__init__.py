"""midi-bridge: a real-time MIDI bridge to generator plugins (Markov, rules, LSTM/GRU, GAN).

One import package, in rooms whose imports point down (docs/architecture.md has the map):

    commands   the ``midi-bridge`` command line         (bridge/commands/)
    bench      benchmarks: live latency, model cost     (bridge/bench/)
    stage      status screen, recording, ratings        (bridge/stage/)
    runtime    ports, threads, loading, supervision     (bridge/runtime/)
    core       the engine and what it calls per event   (bridge/core/)
    plugin     the generator contract, one module       (bridge/plugin.py)

    generators the first-party generators               (plugins/ -> midi_bridge.generators)
    training   offline data, training, evaluation       (bridge/training/)
    model      networks and what runs them live         (bridge/model/)
"""

__version__ = "0.1.0"
