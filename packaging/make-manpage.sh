#!/bin/bash
# pystatsd(1) from `pystatsd --help` (help2man), run from the staged venv before it is installed.
#
#   packaging/make-manpage.sh VENV_DIR OUTPUT
set -euo pipefail
venv=$(cd "$1" && pwd)
out=$2
wrapper=$(mktemp -d)/pystatsd
trap 'rm -rf "$(dirname "$wrapper")"' EXIT
# help2man names the page after the program it runs, so the wrapper is called pystatsd.
printf '#!/bin/sh\nexec "%s/bin/python" -m pystatsd "$@"\n' "$venv" > "$wrapper"
chmod +x "$wrapper"
help2man --no-info --section 1 \
    --name "metrics daemon: statsd/DogStatsD and JSON ingest, aggregation, forwarding" \
    --version-string "$("$venv/bin/python" -c 'import pystatsd; print(pystatsd.__version__)')" \
    --output "$out" "$wrapper"
