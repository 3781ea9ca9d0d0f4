#!/usr/bin/env bash
# Set up (once) and run the bridge:  ./run.sh [midi-bridge run ARGS]   e.g. ./run.sh --help
#   ./run.sh doctor|plugins|ports [ARGS]   runs that midi-bridge command instead of 'run'
set -euo pipefail
# How the user called this script, for messages that name a command to run next.
export MIDI_BRIDGE_LAUNCHER="$0"
cd "$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=scripts/setup.sh
. scripts/setup.sh
mb_setup_venv
case "${1:-}" in
    doctor | plugins | ports) exec "$MB_VENV/bin/midi-bridge" "$@" ;;
esac
exec "$MB_VENV/bin/midi-bridge" run "$@"
