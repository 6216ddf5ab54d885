#!/usr/bin/env bash
# Creates (or updates) .venv with pystatsd installed editable plus the test and
# embedded-broker extras. Idempotent; quiet unless something fails.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=.venv/.installed-from
want="$(cat setup.cfg pyproject.toml | sha1sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,embedded-broker]'
    echo "$want" > "$stamp"
fi
