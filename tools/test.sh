#!/usr/bin/env bash
# Sets up .venv if needed, then runs the whole test suite. Extra arguments go to pytest.
#
#   bash tools/test.sh            the whole suite (what CI runs)
#   bash tools/test.sh --fast     the unit tiers only: no real daemon, broker or npm statsd,
#                                 no package builds, no timed outages (markers `integration`,
#                                 `packaging` and `slow`), spread over every core (pytest-xdist;
#                                 the whole suite stays in one process: its timed outages and
#                                 real daemons would compete for the cores)
set -euo pipefail
cd "$(dirname "$0")/.."
fast=()
if [ "${1:-}" = "--fast" ]; then
    shift
    fast=(-m "not integration and not packaging and not slow" -n auto)
fi
bash tools/setup_venv.sh
exec .venv/bin/python -m pytest "${fast[@]}" "$@"
