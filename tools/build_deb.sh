#!/bin/bash
# Build the pystatsd .deb (self-contained: private venv in /opt/pystatsd) and check it with lintian.
#
#   tools/build_deb.sh [OUTDIR]        default OUTDIR: dist/
#
# Installs its own build tools with apt-get (needs root the first time). Environment:
#   PYSTATSD_WHEELHOUSE   where downloaded wheels are kept between builds (default build/wheelhouse)
#   PYSTATSD_MAINTAINER   Maintainer field (default "pystatsd maintainers <pystatsd@example.com>")
#   PYSTATSD_NO_LINT=1    skip lintian
# Prints the path of the .deb on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/packaging/lib.sh"

out=$(mkdir -p "${1:-$here/dist}" && cd "${1:-$here/dist}" && pwd)
export PYSTATSD_WHEELHOUSE=${PYSTATSD_WHEELHOUSE:-$here/build/wheelhouse}
maintainer=${PYSTATSD_MAINTAINER:-pystatsd maintainers <pystatsd@example.com>}

ensure_debs build-essential debhelper dpkg-dev fakeroot help2man lintian python3.11 python3.11-venv \
    python3.11-dev

upstream=$(python_version "$here")
version="$(package_version "$upstream" +)-1"
work="$here/build/deb"
src="$work/pystatsd-$upstream"
copy_source "$here" "$src"

# debian/ from packaging/, plus the files shared with the RPM.
cp -r "$here/packaging/debian" "$src/debian"
sed -i "s|@MAINTAINER@|$maintainer|" "$src/debian/control"
cp "$src/pystatsd.service" "$src/debian/pystatsd.service"
cp "$here/packaging/pystatsd.init" "$src/debian/pystatsd.init"
cp "$here/packaging/pystatsd.logrotate" "$src/debian/pystatsd.logrotate"
cp "$here/packaging/pystatsd.lintian-overrides" "$src/debian/pystatsd.lintian-overrides"
commit=$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)
export SOURCE_DATE_EPOCH=$(source_date_epoch "$here")
cat > "$src/debian/changelog" <<CHANGELOG
pystatsd ($version) unstable; urgency=medium

  * Package of pystatsd $upstream, built from commit $commit.

 -- $maintainer  $(date -R -u -d "@$SOURCE_DATE_EPOCH")
CHANGELOG

(cd "$src" && dpkg-buildpackage -b -us -uc -rfakeroot >"$work/dpkg-buildpackage.log" 2>&1) || {
    tail -n 40 "$work/dpkg-buildpackage.log" >&2; exit 1; }

deb="pystatsd_${version}_$(dpkg --print-architecture).deb"
mv -f "$work/$deb" "$out/$deb"
rm -f "$work"/*.buildinfo "$work"/*.changes "$work"/*.ddeb

if [ "${PYSTATSD_NO_LINT:-0}" != 1 ]; then
    # Warnings fail the build; each accepted one is overridden, with its reason, in
    # packaging/pystatsd.lintian-overrides and docs/packaging.md.
    lintian --fail-on error,warning "$out/$deb" >&2
fi
echo "$out/$deb"
