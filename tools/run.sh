#!/usr/bin/env bash
# Sets up .venv if needed and runs pystatsd in the foreground on its built-in defaults:
# UDP and TCP on 127.0.0.1:5090, a flush every 10 s printed to stdout as JSON lines.
# Extra arguments go to pystatsd (e.g. -c etc/pystatsd.conf). Ctrl-C stops it cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_venv.sh
exec .venv/bin/pystatsd "$@"
