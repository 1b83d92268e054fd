"""Large frames the proxy need not read move between plaintext sockets with splice(2)
(`proxy.splice_min_bytes`): Produce requests with the tee off, and Fetch responses.

Real Tansu brokers and real clients. What a user sees must not change: every record
arrives as produced, a Fetch through the proxy returns the very bytes DC1 sends, the
tee still replicates large batches (spliced to DC1 while it reads a copy, or read whole
with `proxy.tee_splice` off), and a client that stops or leaves in the middle of a
large frame affects nobody else.
`kafka_tee_spliced_bytes_total` shows which path the bytes took.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

import harness
import rawkafka
from harness import HOST, unique
from relay import Relay
from teeutil import (assert_same_partitions, make_trecords, metric, produce_confluent,
                     read_count, write_config)

PARTITIONS = 2
N = 120
VALUE = 40_000  # bytes per value: ~1 MB batches, far above the 64 KiB default
LARGE_BATCHES = {"batch.size": 1_000_000, "linger.ms": 100}


def spliced(px: harness.Proxy, direction: str) -> float:
    return metric(px, "kafka_tee_spliced_bytes_total", f'direction="{direction}"')


def produce_large(bootstrap: str, topic: str, tag: str, **conf):
    recs = make_trecords(N, tag, partitions=PARTITIONS, value_size=VALUE)
    out = produce_confluent(bootstrap, topic, recs, **{**LARGE_BATCHES, **conf})
    assert not out.errors, out.errors[:5]
    assert len(out.acked) == N
    return out


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "splice-off"])
def test_large_produce_and_fetch_through_the_proxy(dc1, proxy, tmp_path, splice):
    cfg = write_config(tmp_path / "kt.toml",
                       {"proxy": {"splice_min_bytes": 65536 if splice else 0}})
    px = proxy(dc1.bootstrap, admin=True, config=cfg)
    topic = unique("splice")
    harness.create_topic(px.bootstrap, topic, partitions=PARTITIONS)
    out = produce_large(px.bootstrap, topic, "s")
    # DC1 holds every record, and a consumer through the proxy reads them all back.
    assert_same_partitions(out.acked, read_count(dc1.bootstrap, topic, N), "DC1 direct")
    assert_same_partitions(out.acked, read_count(px.bootstrap, topic, N), "through proxy")
    # A Fetch through the proxy returns exactly DC1's bytes.
    for p in range(PARTITIONS):
        direct = rawkafka.fetch_v4(dc1.bootstrap, topic, p, 0)
        proxied = rawkafka.fetch_v4(px.bootstrap, topic, p, 0)
        assert len(direct.records) > 1 << 20
        assert proxied.records == direct.records, f"partition {p}: fetched bytes differ"
    sent_bytes = N * VALUE
    # Spliced or not, every Fetch is counted and timed.
    assert metric(px, "kafka_tee_request_duration_seconds_count", 'api="Fetch"') >= PARTITIONS
    if splice:
        assert spliced(px, "request") > 0.8 * sent_bytes
        assert spliced(px, "response") > 2 * 0.8 * sent_bytes
    else:
        assert spliced(px, "request") == 0
        assert spliced(px, "response") == 0


def test_kafka_python_reads_large_fetches_through_the_proxy(dc1, proxy):
    px = proxy(dc1.bootstrap, admin=True)
    topic = unique("splice-kp")
    harness.create_topic(dc1.bootstrap, topic, partitions=PARTITIONS)
    out = produce_large(px.bootstrap, topic, "kp")
    got = harness.consume_kafka_python(px.bootstrap, topic, expected=N)
    assert sorted(r.value for r in got) == sorted(r.value for r in out.acked)
    assert spliced(px, "response") > 0.8 * N * VALUE


@pytest.mark.parametrize("tee_splice", [True, False], ids=["tee-splice", "tee-read"])
def test_tee_copies_large_batches_and_dc2_gets_them(dc1, dc2, proxy, tmp_path, tee_splice):
    """With the tee on, large Produce requests go to DC1 through a pipe while the proxy
    reads a copy (`proxy.tee_splice`, on by default) or are read whole (off); either
    way DC2 gets every batch with DC1's records section byte for byte."""
    cfg = write_config(tmp_path / "kt.toml", {"proxy": {"tee_splice": tee_splice}})
    px = proxy(dc1.bootstrap, target=dc2.bootstrap, admin=True, state_dir=tmp_path / "st",
               config=cfg)
    topic = unique("splice-tee")
    harness.create_topic(px.bootstrap, topic, partitions=PARTITIONS)
    out = produce_large(px.bootstrap, topic, "t")
    assert_same_partitions(out.acked, read_count(dc2.bootstrap, topic, N, timeout=60),
                           "DC2")
    assert_same_partitions(out.acked, read_count(dc1.bootstrap, topic, N), "DC1")
    for p in range(PARTITIONS):
        b1 = rawkafka.read_batches(dc1.bootstrap, topic, p)
        b2 = rawkafka.read_batches(dc2.bootstrap, topic, p)
        assert [b.record_count for b in b1] == [b.record_count for b in b2], f"partition {p}"
        for a, b in zip(b1, b2):
            assert len(a.raw) > 65536, "batches too small to take the large-frame path"
            assert b.records_section == a.records_section, \
                f"partition {p}, DC1 offset {a.base_offset}: records section differs"
    if tee_splice:
        assert spliced(px, "request") > 0.8 * N * VALUE
    else:
        assert spliced(px, "request") == 0
    # acks=0 requests, which the proxy rewrites to acks=1, are read whole.
    before = spliced(px, "request")
    zero = produce_large(px.bootstrap, topic, "z", acks=0)
    assert len(read_count(dc2.bootstrap, topic, 2 * N, timeout=60)) == 2 * N, zero
    assert spliced(px, "request") == before
    # Fetch responses are still spliced with the tee on.
    assert len(read_count(px.bootstrap, topic, 2 * N)) == 2 * N
    assert spliced(px, "response") > 0.8 * 2 * N * VALUE


def test_tee_refuses_an_unreadable_large_produce_before_dc1_has_it(dc1, dc2, proxy):
    """A large Produce request whose body the tee cannot read is refused (the
    connection closes) and DC1 never gets it whole, though most of it was already
    spliced towards DC1. A relay between the proxy and DC1 counts the bytes."""
    relay = Relay((HOST, int(dc1.bootstrap.rsplit(":", 1)[1]))).start()
    try:
        refused_before_the_end(dc1, dc2, proxy, relay)
    finally:
        relay.stop()


def refused_before_the_end(dc1, dc2, proxy, relay: Relay):
    px = proxy(f"{HOST}:{relay.port}", target=dc2.bootstrap, admin=True)
    topic = unique("splice-bad")
    harness.create_topic(dc1.bootstrap, topic, partitions=1)
    size = 300_000
    body = struct.pack(">hhi", -1, 1, 30000) + struct.pack(">i", 1)
    body += struct.pack(">h", len(topic)) + topic.encode() + struct.pack(">i", 1)
    # Partition 0 claims more record bytes than the frame holds.
    body += struct.pack(">i", 0) + struct.pack(">i", size * 2)
    frame = harness.encode_request(0, 3, 1, body)
    frame += b"\x01" * (size - (len(frame) - 4))
    frame = struct.pack(">i", size) + frame[4:]
    # Sent in three parts. The proxy holds back only the last chunk it has read, so once
    # the second part comes, the whole first part goes on to DC1; the relay must have it
    # before the last part (which ends the frame and gets it judged) is sent.
    first, last = 100_000, len(frame) - 10_000
    s = socket.create_connection((HOST, px.port), timeout=10)
    try:
        s.sendall(frame[:first])
        time.sleep(0.5)
        s.sendall(frame[first:last])
        deadline = time.monotonic() + 10
        while relay.bytes_up < first and time.monotonic() < deadline:
            time.sleep(0.05)
        s.sendall(frame[last:])
        answer = harness.wait_closed(s, 10)
        assert answer is not None, "the proxy kept the connection open"
        assert answer == b"", f"the proxy answered: {answer[:40]!r}"
    finally:
        s.close()
    time.sleep(0.3)
    # Spliced on as it came (the tee path), but never the last bytes.
    assert first <= relay.bytes_up < size + 4, \
        f"{relay.bytes_up} of the request's {size + 4} bytes reached DC1"
    assert spliced(px, "request") == 0, "the refused request was counted as forwarded"
    # A good produce afterwards works, and DC1 holds only its records.
    out = produce_confluent(px.bootstrap, topic, make_trecords(3, "ok", partitions=1))
    assert len(out.acked) == 3
    time.sleep(0.5)
    got = read_count(dc1.bootstrap, topic, 3)
    assert sorted(r.key for r in got) == sorted(r.key for r in out.acked), got
    assert px.proc.poll() is None, "proxy died"
    assert "refusing Produce request" in px.proc.log_text()


def large_produce_head(size: int) -> bytes:
    """The first bytes of a Produce v3 request (acks=1) that declares `size` bytes."""
    body = struct.pack(">hhi", -1, 1, 30000) + struct.pack(">i", 1)
    body += struct.pack(">h", 5) + b"topic" + struct.pack(">i", 1) + struct.pack(">i", 0)
    body += struct.pack(">i", size)  # the records, which never come in full
    frame = harness.encode_request(0, 3, 1, body + b"\0" * 2000)
    return struct.pack(">i", size) + frame[4:]


def test_clients_that_stop_mid_frame_do_not_disturb_others(dc1, proxy, tmp_path):
    cfg = write_config(tmp_path / "kt.toml", {"proxy": {"frame_read_timeout_ms": 1500}})
    px = proxy(dc1.bootstrap, admin=True, config=cfg)
    topic = unique("splice-cut")
    harness.create_topic(dc1.bootstrap, topic, partitions=PARTITIONS)
    produce_large(dc1.bootstrap, topic, "c")
    healthy = socket.create_connection((HOST, px.port), timeout=10)
    try:
        # A large request whose bytes stop arriving: closed after the read timeout.
        stalled = socket.create_connection((HOST, px.port), timeout=10)
        stalled.sendall(large_produce_head(1 << 20))
        assert harness.wait_closed(stalled, 10) is not None, "stalled request not closed"
        stalled.close()
        # A large request cut off by its client.
        cut = socket.create_connection((HOST, px.port), timeout=10)
        cut.sendall(large_produce_head(1 << 20))
        cut.close()
        # A client that reads a few bytes of a large Fetch response and leaves.
        for _ in range(3):
            s = socket.create_connection((HOST, px.port), timeout=10)
            body = struct.pack(">iiiib", -1, 100, 1, 8 << 20, 0)
            body += struct.pack(">i", 1) + struct.pack(">h", len(topic)) + topic.encode()
            body += struct.pack(">i", 1) + struct.pack(">iqi", 0, 0, 8 << 20)
            s.sendall(harness.encode_request(1, 4, 9, body))
            harness.recv_exact(s, 1000)
            s.close()
        time.sleep(0.5)
        # The connection opened before all this still works, and so does a full fetch.
        healthy.sendall(harness.api_versions_v0(42))
        corr, _ = harness.recv_frame(healthy)
        assert corr == 42
        direct = rawkafka.fetch_v4(dc1.bootstrap, topic, 0, 0)
        assert rawkafka.fetch_v4(px.bootstrap, topic, 0, 0).records == direct.records
    finally:
        healthy.close()
    assert px.proc.poll() is None, "proxy died"
    log = px.proc.log_text()
    assert "panicked" not in log, log[-3000:]
    assert "mid-frame" in log
