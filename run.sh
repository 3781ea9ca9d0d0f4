#!/usr/bin/env bash
# Set up (once) and run the bridge:  ./run.sh [midi-bridge run ARGS]   e.g. ./run.sh --help
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=scripts/setup.sh
. scripts/setup.sh
mb_setup_venv
exec "$MB_VENV/bin/midi-bridge" run "$@"
