#!/usr/bin/env bash
# Set up roomstate in a local virtualenv (.venv) and run it.
#
#   ./deploy/dev.sh serve [ARGS...]   set up, then start a node (embedded in-memory bus, demo page)
#   ./deploy/dev.sh test  [PYTEST ARGS...]
#                                     set up, then run every check: ruff, mypy, the whole test suite
#   ./deploy/dev.sh faults [PYTEST ARGS...]
#                                     set up, then run the whole fault suite (pytest -m faults),
#                                     slow rows included (ROOMSTATE_FAULTS_FULL=1); docs/reliability.md
#   ./deploy/dev.sh setup             only set up
#
# Needs Python 3.11+. As root on Debian it installs the system packages it is missing
# (python3-venv; before the tests: redis-server, haproxy, chromium, npm, a colour emoji font) with
# apt-get.
#
# ROOMSTATE_PYTHON=/path/to/python3 picks the interpreter of .venv, and a .venv made with another
# one is made anew (without it: $PYTHON, else python3 on PATH, for a new .venv only). Benchmark on
# an optimized build, as the Docker image's official Python is: ROOMSTATE_PYTHON=/usr/bin/python3
# on Debian/Ubuntu, whose build is one too (docs/decisions/0009-optimized-interpreter.md).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON_GIVEN=${ROOMSTATE_PYTHON:+yes}
PYTHON=${ROOMSTATE_PYTHON:-${PYTHON:-python3}}
VENV=.venv

apt_install() {
    # apt_install PACKAGE... : install the Debian packages that are missing, as root.
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "missing system packages: ${missing[*]} (install them, or run this as root on Debian/Ubuntu)" >&2
        return 1
    fi
    echo "installing ${missing[*]} with apt-get" >&2
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null)" ]; then
        apt-get update -qq
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

setup() {
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "roomstate needs Python 3.11 or newer; $PYTHON is $("$PYTHON" --version)" >&2
        exit 1
    }
    if [ -d "$VENV" ] && ! "$VENV/bin/python" -c '' 2>/dev/null; then
        echo "$VENV is broken (its python does not run): making it anew" >&2
        rm -rf "$VENV"
    fi
    if [ -n "$PYTHON_GIVEN" ] && [ -x "$VENV/bin/python" ]; then
        local which='import sys; print(sys.base_prefix, sys.version.split()[0])'
        local have want
        have=$("$VENV/bin/python" -c "$which")
        want=$("$PYTHON" -c "$which")
        if [ "$have" != "$want" ]; then
            echo "$VENV's Python is $have, not $PYTHON's $want: making $VENV anew" >&2
            rm -rf "$VENV"
        fi
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
        "$PYTHON" -m venv "$VENV"
    fi
    # The editable install is "strict": a tree of links under build/ maps the import package
    # `roomstate` to node/ and crdt/ (mypy can follow it; the default import hook it cannot), so
    # roomstate is installed again when pyproject.toml or the set of package files changed.
    local log="$VENV/install.log" files
    files=$(find node crdt -type f -not -path '*/__pycache__/*' | sort | cksum)
    if [ ! -f "$VENV/.installed" ] || [ pyproject.toml -nt "$VENV/.installed" ]; then
        echo "installing roomstate and its dependencies into $VENV" >&2
        if ! { "$VENV/bin/python" -m pip install --upgrade pip &&
               "$VENV/bin/python" -m pip install --config-settings editable_mode=strict \
                   -e '.[dev,redis,bench]'; } >"$log" 2>&1; then
            tail -n 30 "$log" >&2
            echo "pip install failed; the whole log is $log" >&2
            exit 1
        fi
        echo "$files" >"$VENV/.installed"
    elif [ "$(cat "$VENV/.installed")" != "$files" ]; then
        if ! "$VENV/bin/python" -m pip install --no-deps --config-settings editable_mode=strict \
                -e . >"$log" 2>&1; then
            tail -n 30 "$log" >&2
            echo "pip install failed; the whole log is $log" >&2
            exit 1
        fi
        echo "$files" >"$VENV/.installed"
    fi
}

test_binaries() {
    # The servers and the browser the tests start, installed before they run (a test would
    # install what is missing itself, but inside its own time limit). Best effort: without root
    # the tests name the package that is missing.
    local missing=() pair
    for pair in redis-server:redis-server haproxy:haproxy chromium:chromium npm:npm; do
        PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" command -v "${pair%%:*}" >/dev/null ||
            missing+=("${pair##*:}")
    done
    # a colour emoji font for the demo's screenshot (the tests do not depend on it)
    [ -e /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || missing+=(fonts-noto-color-emoji)
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}" || true
}

run_tests() {
    test_binaries
    export HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    "$VENV/bin/mypy"
    local status=0
    unset PYTEST_ADDOPTS  # (--collect-only there would pass without running a test)
    "$VENV/bin/python" -m pytest "$@" || status=$?
    if [ "$status" -eq 5 ]; then
        echo "pytest ran no test: that is a failure" >&2
        exit 1
    fi
    exit "$status"
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
    setup) setup ;;
    serve) setup; exec "$VENV/bin/roomstate" serve "$@" ;;
    test) setup; run_tests "$@" ;;
    faults) setup; test_binaries; ROOMSTATE_FAULTS_FULL=1 exec "$VENV/bin/python" -m pytest -m faults -s tests/faults "$@" ;;
    *) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
