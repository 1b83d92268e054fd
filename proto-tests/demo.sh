#!/usr/bin/env bash
# Demo: DC1 + DC2 Tansu brokers, kafka-tee teeing DC1 to DC2, ~1000 records produced
# through the proxy and read back from DC2. Extra arguments go to demo.py
# (--records N, --partitions N, --wait SECONDS). The proxy is a release build
# (target/release/kafka-tee), as it would run in production; KAFKA_TEE_BIN overrides it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
export PYTHON
proto-tests/setup.sh
if [[ -z ${KAFKA_TEE_BIN:-} ]]; then
    cargo build --release --bin kafka-tee
    KAFKA_TEE_BIN="$PWD/target/release/kafka-tee"
fi
export KAFKA_TEE_BIN
exec "$PYTHON" proto-tests/demo.py "$@"
