"""The runtime around the live core: ports, threads, loading, supervision.

MIDI ports and backends (:mod:`.ports`), the engine thread (:mod:`.loop`), the loader
thread for hot swaps (:mod:`.host`), plugin discovery through entry points
(:mod:`.discovery`), the port supervisor (:mod:`.supervise`), the plugin watchdog
(:mod:`.watchdog`) and JACK's server registry and test server (:mod:`.jack`).

May import: :mod:`midi_bridge.core`, :mod:`midi_bridge.plugin`.  Not stage, commands,
the model library or a generator (generators are found through entry points only).
"""
