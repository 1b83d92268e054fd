"""Replication across a long link: DC2 behind a relay that delays every byte by half of
a 200 ms round trip in each direction, a confluent-kafka producer (idempotent,
linger.ms=5) writing through the proxy fast enough that each DC2 partition has dozens
of batches in flight, and faults while they are: connections cut, the link silent for
longer than the DC2 request timeout (timeouts with batches written and not written),
the proxy killed. DC2 must end identical to DC1, every record once, in DC1 order
(`kafka-tee verify`), and the replicator must have read DC2's tail to get there.

Speed is measured by benches/longlink.py, not here.
"""

from __future__ import annotations

import signal
import time

import pytest

import harness
from teeutil import LoadProducer, assert_dc2_identical, metric, write_config

ONE_WAY = 0.1  # seconds: a 200 ms round trip
PARTITIONS = 4
RATE = 2000  # records per second: ~100 batches/s per partition at linger.ms=5
CATCH_UP = 60

pytestmark = pytest.mark.timeout(150)


def long_link_proxy(proxy, dc1, relay, tmp_path, name="kafka-tee", port=None):
    relay.set_delay(ONE_WAY)
    cfg = write_config(tmp_path / "tee.toml", {"replication": {"request_timeout_ms": 2000}})
    return proxy(dc1.bootstrap, target=f"{harness.HOST}:{relay.port}",
                 state_dir=tmp_path / "state", config=cfg, name=name, port=port, admin=True)


def start_load(px, prefix: str) -> tuple[str, LoadProducer]:
    """A new topic through the proxy and the load on it, once it is flowing."""
    topic = harness.unique(prefix)
    harness.create_topic(px.bootstrap, topic, partitions=PARTITIONS)
    lp = LoadProducer(px.bootstrap, topic, PARTITIONS, RATE, value_size=500).start()
    lp.wait_acked(RATE, timeout=30)
    return topic, lp


def check(lp: LoadProducer, px, dc1, dc2, topic: str, what: str,
          acked_offsets: bool = True) -> None:
    acked = lp.stop()
    assert lp.errors == [], f"{what}: the producer saw errors: {lp.errors[:5]}"
    chk, took = assert_dc2_identical(dc1.bootstrap, dc2.bootstrap, topic, acked, CATCH_UP,
                                     acked_offsets)
    reads = metric(px, "kafka_tee_dc2_tail_reads_total")
    held = metric(px, "kafka_tee_dc2_tail_held_batches_total")
    print(f"\n[{what}] acked {chk.acked}, DC2 {chk.dc2_records} records, each once; "
          f"complete {took:.2f}s after the producer stopped; tail reads {reads}, "
          f"batches found held {held}")
    assert reads >= 1, f"{what}: the fault did not lead to a read of DC2's tail"


def test_cuts_and_silence_with_many_batches_in_flight(dc1, relayed_dc2, proxy, tmp_path):
    dc2, relay = relayed_dc2
    px = long_link_proxy(proxy, dc1, relay, tmp_path)
    topic, lp = start_load(px, "long-cut")
    time.sleep(2)
    assert relay.cut() > 0, "no DC2 connection to cut"
    time.sleep(2)
    assert relay.cut() > 0, "the replicator did not reconnect to DC2"
    # Silent for longer than the request timeout: the requests in flight time out,
    # some written by DC2 (in the relay's queue towards it), some not.
    time.sleep(1)
    relay.blackhole(True)
    time.sleep(3)
    relay.cut()
    relay.blackhole(False)
    time.sleep(3)
    check(lp, px, dc1, dc2, topic, "long link, cuts and silence")


def test_proxy_killed_with_many_batches_in_flight(dc1, relayed_dc2, proxy, tmp_path):
    dc2, relay = relayed_dc2
    px = long_link_proxy(proxy, dc1, relay, tmp_path)
    topic, lp = start_load(px, "long-kill")
    time.sleep(2)
    px.proc.signal(signal.SIGKILL)
    px.proc.wait(timeout=10)
    px2 = long_link_proxy(proxy, dc1, relay, tmp_path, name="kafka-tee-restarted",
                          port=px.port)
    lp.wait_acked(lp.acked_count() + RATE * 2, timeout=30)
    # The producer resends what was in flight when the proxy died; Tansu answers the
    # batches it already holds with DUPLICATE_SEQUENCE_NUMBER and offset 0, which
    # librdkafka reports as the record's offset. So acked offsets are not checked here
    # (every acked record must still be in DC1 and, once, in DC2).
    check(lp, px2, dc1, dc2, topic, "long link, proxy killed", acked_offsets=False)
