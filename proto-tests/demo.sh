#!/usr/bin/env bash
# Demo: DC1 + DC2 Tansu brokers, kafka-tee teeing DC1 to DC2, ~1000 records produced
# through the proxy and read back from DC2. Extra arguments go to demo.py
# (--records N, --partitions N, --wait SECONDS).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
export PYTHON
proto-tests/setup.sh
cargo build
exec "$PYTHON" proto-tests/demo.py "$@"
