# Shared by tools/build_deb.sh and tools/build_rpm.sh (sourced, not run).

repo_root() { (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd); }

# The one place the version lives: pystatsd/__init__.py __version__ (PEP 440).
python_version() {
    sed -n 's/^__version__ *= *["'\'']\([^"'\'']*\)["'\''].*/\1/p' "$1/pystatsd/__init__.py"
}

# PEP 440 -> a version that sorts the same way in dpkg and rpm: pre-releases and dev releases
# sort before the release with "~" (2.0.0.dev0 -> 2.0.0~dev0, 2.0.0rc1 -> 2.0.0~rc1);
# post-releases after it ("+" for dpkg, "^" for rpm).
package_version() {  # version post-separator
    echo "$1" | sed -E -e 's/\.?(dev|a|b|rc)([0-9]+)/~\1\2/g' -e "s/\\.?post([0-9]+)/$2post\\1/"
}

# Install missing Debian packages quietly (idempotent; apt-get update only when needed).
ensure_debs() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" = 0 ] || { echo "build: need root to install: ${missing[*]}" >&2; return 1; }
    echo "build: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=120 update -qq >/dev/null
    apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Copy the source tree as git sees it (tracked + untracked-but-not-ignored files), so a build
# never picks up build/, dist/, venvs or caches. Falls back to a plain copy outside git.
copy_source() {  # from to
    local from=$1 to=$2
    rm -rf "$to"; mkdir -p "$to"
    if git -C "$from" rev-parse --git-dir >/dev/null 2>&1; then
        (cd "$from" && git ls-files -z -co --exclude-standard | while IFS= read -r -d '' f; do
            [ -e "$f" ] && printf '%s\0' "$f"; done | tar --null -T - -cf -) | tar -C "$to" -xf -
    else
        tar -C "$from" --exclude=./build --exclude=./dist --exclude=.git -cf - . | tar -C "$to" -xf -
    fi
    if [ ! -f "$to/etc/pystatsd.conf" ]; then
        # etc/pystatsd.conf is generated from the schema; until it exists ship an empty config
        # (every key has a default in the schema).
        echo "build: etc/pystatsd.conf missing, shipping a placeholder" >&2
        mkdir -p "$to/etc"
        printf '%s\n' "# pystatsd configuration (YAML). Every option and its default:" \
            "# /usr/share/doc/pystatsd or 'pystatsd --help'. Empty = all defaults." \
            > "$to/etc/pystatsd.conf"
    fi
}

# A date for changelogs that does not change between builds of the same commit.
source_date_epoch() {
    git -C "$1" log -1 --format=%ct 2>/dev/null || date +%s
}
