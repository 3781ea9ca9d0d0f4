#!/usr/bin/env bash
# Set up (once, with the dev extra and jackd) and run the tests:  ./test.sh [PYTEST ARGS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=scripts/setup.sh
. scripts/setup.sh
mb_setup_venv dev
mb_ensure_jackd
status=0
"$MB_VENV/bin/python" -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "test.sh: pytest collected no tests (exit 5): counting that as a failure" >&2
fi
exit "$status"
