#!/usr/bin/env bash
# Creates (or updates) .venv with pystatsd installed editable plus the test and
# embedded-broker extras. Idempotent: silent when .venv is already up to date; otherwise says
# on stderr what it is doing, since a first install takes a while.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
started=$SECONDS
say() { echo "setup_venv: $*" >&2; }

if [ ! -x .venv/bin/python ]; then
    say "creating .venv with $("$python" --version 2>&1) ($(command -v "$python"))"
    "$python" -m venv .venv
fi
# Only what decides the installation: setup.cfg, pyproject's [build-system] (editing the
# pytest or ruff settings in pyproject.toml must not cost a reinstall), and setup.py with the
# compiled line cache's source, which the editable install compiles into pystatsd/ once: an
# edited .pyx, or a built module gone (git clean), must rebuild it.
stamp=.venv/.installed-from
want="$( (cat setup.cfg setup.py pystatsd/_linecache.pyx pystatsd/_fold.pyx pystatsd/_receive.pyx
          sed -n '/^\[build-system\]/,/^$/p' pyproject.toml) | sha1sum | cut -d' ' -f1)"
if ! compgen -G 'pystatsd/_linecache.*.so' > /dev/null \
        || ! compgen -G 'pystatsd/_fold.*.so' > /dev/null; then
    rm -f "$stamp"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    if [ -s "$stamp" ]; then
        say "setup.cfg or the build system changed; updating .venv"
    else
        say "installing pystatsd (editable) with its test and embedded-broker extras into" \
            ".venv; about 20-40 s the first time"
    fi
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,embedded-broker]'
    echo "$want" > "$stamp"
    if ! .venv/bin/python -c 'import pystatsd._linecache' 2> /dev/null; then
        say "WARNING: the compiled line cache did not build (see pip install -v -e .); the" \
            "daemon runs the pure-Python one, and its tests of the compiled one fail"
    fi
    say "ready in $((SECONDS - started)) s"
fi
# statsd-telegraf installs a package named statsd, like jsocol's statsd in the test extra: it
# goes to a directory of its own, which tests/clients puts on that client's path alone.
if [ ! -d .venv/clients/statsd-telegraf/statsd ]; then
    say "installing the statsd-telegraf client (tests/clients) into .venv/clients"
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
        --target .venv/clients/statsd-telegraf 'statsd-telegraf>=3.2'
fi
