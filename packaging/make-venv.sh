#!/bin/bash
# Build the private Python prefix that both packages ship as /opt/pystatsd.
#
#   packaging/make-venv.sh SOURCE_DIR DESTDIR
#
# Creates DESTDIR/opt/pystatsd: a venv on the distribution's /usr/bin/python3.11 holding pystatsd
# and every dependency from setup.cfg, installed from wheels so the package needs no network at
# install time. A venv is not relocatable by itself, so it is built under DESTDIR and then every
# trace of DESTDIR is rewritten to /opt/pystatsd (what dh-virtualenv does) and checked gone.
#
# PYSTATSD_WHEELHOUSE (default: SOURCE_DIR/build/wheelhouse) keeps the downloaded wheels, so a
# second build (the RPM after the DEB) downloads nothing.
set -euo pipefail

src=$(cd "$1" && pwd)
destdir=$(mkdir -p "$2" && cd "$2" && pwd)
prefix=/opt/pystatsd
venv="$destdir$prefix"
python=/usr/bin/python3.11   # the package depends on exactly this interpreter (docs/packaging.md)
wheelhouse=${PYSTATSD_WHEELHOUSE:-$src/build/wheelhouse}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off
# Run Python isolated (-I: no PYTHONPATH, no user site, no current directory on sys.path) and
# outside the source tree, or pip would take the source tree's pystatsd.egg-info for an
# installed pystatsd and install nothing.
unset PYTHONPATH PYTHONHOME
cd "$(mktemp -d)"

[ -x "$python" ] || { echo "make-venv: $python not found (apt-get install python3.11 python3-venv)" >&2; exit 1; }
mkdir -p "$wheelhouse"
rm -rf "$venv"
"$python" -m venv "$venv"

# 1. Wheels: pystatsd itself (built from SOURCE_DIR, with its compiled line cache: Cython from
#    the build requirements, the C compiler and python3.11's headers from the build
#    dependencies) and its install_requires, resolved by pip from setup.cfg so the dependency
#    list lives in one place. An older build's pystatsd wheel must not be the one installed.
rm -f "$wheelhouse"/pystatsd-*.whl
"$venv/bin/python" -I -m pip wheel --quiet --wheel-dir "$wheelhouse" --prefer-binary "$src"

# 2. Install offline from the wheelhouse only: proves the wheel set is complete.
version=$(sed -n 's/^__version__ *= *["'\'']\([^"'\'']*\)["'\''].*/\1/p' "$src/pystatsd/__init__.py")
"$venv/bin/python" -I -m pip install --quiet --no-index --find-links "$wheelhouse" --no-compile \
    "pystatsd==$version"
"$venv/bin/python" -I -m pip uninstall --quiet --yes pip setuptools
# setup.py builds the compiled line cache optionally (a developer without a compiler still gets
# an install); a package without it would run the slower Python one unnoticed: refuse.
PYSTATSD_LINE_CACHE=compiled "$venv/bin/python" -I -c "import pystatsd.aggregation" || {
    echo "make-venv: the compiled line cache was not built (gcc, python3.11-dev?)" >&2; exit 1; }
# Some wheels (protobuf 7.x) mark plain modules and metadata executable; nothing under lib/ is
# run directly, so only shared objects keep their modes.
find "$venv/lib" -type f -perm /111 ! -name '*.so' ! -name '*.so.*' -exec chmod a-x {} +

# 3. Relocate: shebangs and pyvenv.cfg name the build path; the activate scripts are for
#    interactive shells and only add more paths to rewrite, so they are not shipped.
rm -f "$venv"/bin/activate* "$venv"/bin/Activate.ps1
grep -rlI --null -F "$venv" "$venv" | xargs -0r sed -i "s|$venv|$prefix|g"
find "$venv" -name direct_url.json -delete   # records the build machine's wheel path
if grep -rlI -F "$destdir" "$venv"; then
    echo "make-venv: build path left in the files above" >&2; exit 1
fi

# 4. Byte-compile now, naming the installed paths, so the daemon (which cannot write /opt) never
#    compiles at start-up and tracebacks show /opt/pystatsd/... paths.
"$python" -m compileall -q -j0 -s "$destdir" -p / "$venv/lib" >/dev/null

[ -x "$venv/bin/pystatsd" ] || { echo "make-venv: bin/pystatsd was not installed" >&2; exit 1; }
"$venv/bin/python" -I -c "import pystatsd, forwarders; print('make-venv: pystatsd', pystatsd.__version__)"
rmdir "$PWD" 2>/dev/null || true
