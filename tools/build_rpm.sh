#!/bin/bash
# Build the pystatsd .rpm (self-contained: private venv in /opt/pystatsd) and check it with rpmlint.
#
#   tools/build_rpm.sh [OUTDIR]        default OUTDIR: dist/
#
# Runs on Debian/Ubuntu (installs rpm and rpmlint with apt-get; needs root the first time) or on
# an RPM distribution with rpm-build, rpmlint, python3.11 and help2man installed. Environment:
#   PYSTATSD_WHEELHOUSE   where downloaded wheels are kept between builds (default build/wheelhouse)
#   PYSTATSD_MAINTAINER   changelog name (default "pystatsd maintainers <pystatsd@example.com>")
#   PYSTATSD_URL          URL tag (default https://github.com/pystatsd/pystatsd)
#   PYSTATSD_NO_LINT=1    skip rpmlint
# Prints the path of the .rpm on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/packaging/lib.sh"

out=$(mkdir -p "${1:-$here/dist}" && cd "${1:-$here/dist}" && pwd)
export PYSTATSD_WHEELHOUSE=${PYSTATSD_WHEELHOUSE:-$here/build/wheelhouse}
maintainer=${PYSTATSD_MAINTAINER:-pystatsd maintainers <pystatsd@example.com>}
url=${PYSTATSD_URL:-https://github.com/pystatsd/pystatsd}

if command -v dpkg-query >/dev/null; then
    ensure_debs rpm rpmlint help2man python3.11 python3.11-venv python3.11-dev gcc
    # rpm's database is empty on Debian: BuildRequires cannot be checked there (they are
    # installed above as Debian packages instead).
    nodeps=--nodeps
else
    nodeps=
fi

upstream=$(python_version "$here")
version=$(package_version "$upstream" ^)
work="$here/build/rpm"
rm -rf "$work"; mkdir -p "$work"/{SOURCES,SPECS,BUILD,RPMS,SRPMS,BUILDROOT}
copy_source "$here" "$work/pystatsd-src"
tar -C "$work" -czf "$work/SOURCES/pystatsd-src.tar.gz" pystatsd-src
rm -rf "$work/pystatsd-src"

commit=$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)
export SOURCE_DATE_EPOCH=$(source_date_epoch "$here")
spec="$work/SPECS/pystatsd.spec"
{ cat "$here/packaging/pystatsd.spec"
  echo "* $(LC_ALL=C date -u -d "@$SOURCE_DATE_EPOCH" '+%a %b %d %Y') $maintainer - $version-1"
  echo "- Package of pystatsd $upstream, built from commit $commit."
} > "$spec"

rpmbuild -bb $nodeps --quiet \
    --define "_topdir $work" \
    --define "upstream_version $upstream" \
    --define "rpm_version $version" \
    --define "project_url $url" \
    --define "packager $maintainer" \
    --define "_buildhost reproducible" \
    "$spec" >"$work/rpmbuild.log" 2>&1 || { tail -n 40 "$work/rpmbuild.log" >&2; exit 1; }

rpm=$(find "$work/RPMS" -name 'pystatsd-*.rpm' | head -n1)
mv -f "$rpm" "$out/"
rpm="$out/$(basename "$rpm")"

if [ "${PYSTATSD_NO_LINT:-0}" != 1 ]; then
    # Errors and warnings fail the build; each accepted one is filtered, with its reason, in
    # packaging/pystatsd.rpmlintrc and docs/packaging.md; packaging/rpmlint.toml sets Fedora's defaults.
    rpmlint --strict -c "$here/packaging/rpmlint.toml" -r "$here/packaging/pystatsd.rpmlintrc" "$rpm" >&2
fi
echo "$rpm"
