"""First-party generator plugins, registered through the ``midi_bridge.generators`` entry points."""
