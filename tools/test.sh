#!/usr/bin/env bash
# Sets up .venv if needed, then runs the whole test suite. Extra arguments go to pytest.
#
#   bash tools/test.sh            the whole suite (what CI runs), in two phases:
#                                   1. the unit tiers, spread over every core (pytest-xdist);
#                                   2. the tiers that start real processes, time outages or
#                                      build packages (markers `integration`, `packaging`,
#                                      `slow`), in one process after it: their timed outages
#                                      and real daemons would compete for the cores.
#                                 Extra arguments go to both phases; a phase that selects
#                                 nothing (pytest's exit 5) is not a failure when the other ran.
#   bash tools/test.sh --fast     phase 1 only: no real daemon, broker or npm statsd, no package
#                                 builds, no timed outages
set -euo pipefail
cd "$(dirname "$0")/.."
unit=(-m "not integration and not packaging and not slow" -n auto)
rest=(-m "integration or packaging or slow")
bash tools/setup_venv.sh
if [ "${1:-}" = "--fast" ]; then
    shift
    exec .venv/bin/python -m pytest "${unit[@]}" "$@"
fi

status=0
.venv/bin/python -m pytest "${unit[@]}" "$@" || status=$?
second=0
.venv/bin/python -m pytest "${rest[@]}" "$@" || second=$?
# 5 is pytest's "no tests collected": fine for one phase (a path with only unit tests, say),
# not for both.
if [ "$status" -eq 5 ] && [ "$second" -ne 5 ]; then status=0; fi
if [ "$second" -eq 5 ] && [ "$status" -ne 5 ]; then second=0; fi
if [ "$status" -eq 0 ]; then status=$second; fi
exit "$status"
