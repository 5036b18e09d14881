# shellcheck shell=bash disable=SC2034
# Tool setup shared by scripts/test and scripts/demo; source it, don't run it.
#
# A fresh machine has only the Rust toolchain, gcc/g++, python3 and pip:
# everything else comes from PyPI into .venv, or from Debian's packages when
# running as root. Each helper is idempotent and cheap when the tool is
# already there.
#
# After sourcing: ASOCK_ROOT (the repository), ASOCK_VENV (.venv), and
# asock_ensure_* set CMAKE, CTEST, PKG_CONFIG, VALGRIND.

ASOCK_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ASOCK_VENV=${ASOCK_VENV:-$ASOCK_ROOT/.venv}
ASOCK_MIN_CMAKE=3.16

# cargo installed by rustup but not on PATH (a non-login shell).
if ! command -v cargo >/dev/null 2>&1 && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
    PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
    export PATH
fi

asock_say() { printf '==> %s\n' "$*"; }
asock_warn() { printf 'warning: %s\n' "$*" >&2; }
asock_die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

asock_is_root() { [[ $(id -u) -eq 0 ]]; }

# apt-get install as root, with one `apt-get update` per run first.
# Returns 1 (installing nothing) when not root or without apt-get.
_asock_apt_updated=0
asock_apt_install() {
    asock_is_root && command -v apt-get >/dev/null 2>&1 || return 1
    if [[ $_asock_apt_updated -eq 0 ]]; then
        asock_say "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq || return 1
        _asock_apt_updated=1
    fi
    asock_say "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" </dev/null
}

asock_ensure_venv() {
    if [[ ! -x $ASOCK_VENV/bin/python ]]; then
        asock_say "creating $ASOCK_VENV"
        python3 -m venv "$ASOCK_VENV" ||
            asock_die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    fi
}

asock_pip_install() {
    asock_ensure_venv
    asock_say "pip install $* (into .venv)"
    "$ASOCK_VENV/bin/python" -m pip install -q --disable-pip-version-check "$@"
}

asock_ensure_pytest() {
    asock_ensure_venv
    "$ASOCK_VENV/bin/python" -c 'import pytest' >/dev/null 2>&1 || asock_pip_install pytest
}

# The SMTP tests' real server (aiosmtpd, with STARTTLS and AUTH) and its
# certificates (trustme: a throwaway CA, nothing touches the system store).
asock_ensure_smtp_test_packages() {
    asock_ensure_venv
    "$ASOCK_VENV/bin/python" - <<'PY' >/dev/null 2>&1 || asock_pip_install "aiosmtpd>=1.4.6" "trustme>=1.1"
import aiosmtpd, trustme
v = tuple(int(x) for x in aiosmtpd.__version__.split(".")[:3])
assert v >= (1, 4, 6), v
PY
}

# True when $1 is a cmake of at least ASOCK_MIN_CMAKE.
_asock_cmake_ok() {
    local v major minor
    v=$("$1" --version 2>/dev/null | sed -n '1s/^cmake version \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')
    [[ -n $v ]] || return 1
    IFS=. read -r major minor <<<"$v"
    local want_major=${ASOCK_MIN_CMAKE%%.*} want_minor=${ASOCK_MIN_CMAKE#*.}
    ((major > want_major || (major == want_major && minor >= want_minor)))
}

# Sets CMAKE and CTEST: the cmake on PATH if new enough, else the one from
# PyPI in .venv.
asock_ensure_cmake() {
    local found
    found=$(command -v cmake 2>/dev/null || true)
    if [[ -n $found ]] && _asock_cmake_ok "$found" && [[ -x $(dirname "$found")/ctest ]]; then
        CMAKE=$found
        CTEST=$(dirname "$found")/ctest
    else
        if [[ ! -x $ASOCK_VENV/bin/cmake ]] || ! _asock_cmake_ok "$ASOCK_VENV/bin/cmake"; then
            asock_say "no cmake >= $ASOCK_MIN_CMAKE on PATH: installing it from PyPI"
            asock_pip_install "cmake>=$ASOCK_MIN_CMAKE"
        fi
        CMAKE=$ASOCK_VENV/bin/cmake
        CTEST=$ASOCK_VENV/bin/ctest
    fi
    _asock_cmake_ok "$CMAKE" || asock_die "no usable cmake >= $ASOCK_MIN_CMAKE"
    # CMake's default generator needs make; without it, ninja from PyPI.
    if [[ -z ${CMAKE_GENERATOR:-} ]] && ! command -v make >/dev/null 2>&1; then
        if ! command -v ninja >/dev/null 2>&1; then
            [[ -x $ASOCK_VENV/bin/ninja ]] || asock_pip_install ninja
            PATH=$ASOCK_VENV/bin:$PATH
        fi
        export CMAKE_GENERATOR=Ninja
        asock_say "no make on PATH: using the Ninja generator"
    fi
    asock_say "cmake: $CMAKE ($("$CMAKE" --version | head -n1))"
}

# Sets PKG_CONFIG: pkg-config/pkgconf on PATH, else Debian's (as root),
# else the PyPI pkgconf in .venv.
asock_ensure_pkg_config() {
    PKG_CONFIG=$(command -v pkg-config 2>/dev/null || command -v pkgconf 2>/dev/null || true)
    if [[ -z $PKG_CONFIG ]]; then
        if asock_apt_install pkg-config; then
            PKG_CONFIG=$(command -v pkg-config || true)
        fi
    fi
    if [[ -z $PKG_CONFIG ]]; then
        [[ -x $ASOCK_VENV/bin/pkg-config ]] || asock_pip_install pkgconf
        PKG_CONFIG=$ASOCK_VENV/bin/pkg-config
    fi
    [[ -x $PKG_CONFIG ]] || asock_die "no pkg-config available"
    asock_say "pkg-config: $PKG_CONFIG"
}

# Sets VALGRIND (empty when unavailable). Installs it as root; otherwise
# fails unless ASOCK_ALLOW_NO_VALGRIND=1.
asock_ensure_valgrind() {
    VALGRIND=$(command -v valgrind 2>/dev/null || true)
    if [[ -z $VALGRIND ]]; then
        if asock_apt_install valgrind; then
            VALGRIND=$(command -v valgrind || true)
        fi
    fi
    if [[ -z $VALGRIND ]]; then
        if [[ ${ASOCK_ALLOW_NO_VALGRIND:-0} == 1 ]]; then
            asock_warn "valgrind is not installed and cannot be (not root, or no apt-get): the valgrind tests are SKIPPED (ASOCK_ALLOW_NO_VALGRIND=1)"
            return 0
        fi
        asock_die "valgrind is not installed and cannot be installed here (not root, or no apt-get). Install it, or set ASOCK_ALLOW_NO_VALGRIND=1 to skip the valgrind tests"
    fi
    asock_say "valgrind: $VALGRIND"
}

# Configures build/ (or $ASOCK_BUILD_DIR) with RelWithDebInfo; extra
# arguments go to cmake.
ASOCK_BUILD_DIR=${ASOCK_BUILD_DIR:-$ASOCK_ROOT/build}
asock_cmake_configure() {
    "$CMAKE" -S "$ASOCK_ROOT" -B "$ASOCK_BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@"
}
