#!/usr/bin/env bash
# The whole test suite: Python setup, cargo build/fmt/clippy/test, then the protocol
# tests against real Tansu brokers. Every step runs even when an earlier one failed
# (so pytest's summary is always printed); the exit status is non-zero if any failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
export PYTHON

failed=()
step() {
    local name="$1"
    shift
    echo "==> $name: $*"
    local start=$SECONDS
    if "$@"; then
        echo "==> $name: ok ($((SECONDS - start))s)"
    else
        echo "==> $name: FAILED ($((SECONDS - start))s)"
        failed+=("$name")
    fi
}

step setup proto-tests/setup.sh
step build cargo build
step fmt cargo fmt --check
step clippy cargo clippy --all-targets -- -D warnings
step cargo-test cargo test

if ((${#failed[@]})); then
    echo "==> failed so far: ${failed[*]}"
fi

echo "==> pytest: $PYTHON -m pytest proto-tests -v"
set +e
"$PYTHON" -m pytest proto-tests -v
rc=$?
set -e
if ((rc == 5)); then
    echo "==> pytest collected no tests" >&2
fi
if ((rc != 0)); then
    failed+=("pytest")
fi
if ((${#failed[@]})); then
    echo "==> FAILED steps: ${failed[*]}" >&2
    exit 1
fi
