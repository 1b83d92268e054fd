"""The harness itself, straight against Tansu (no proxy): two independent brokers,
produce and consume with both clients, and processes that really stop."""

from __future__ import annotations

import socket

import harness
from harness import (assert_same_records, consume_confluent, consume_kafka_python,
                     create_topic, make_records, produce_confluent, produce_kafka_python,
                     unique)


def test_two_brokers_are_independent(dc1, dc2):
    assert dc1.port != dc2.port
    assert harness.metadata_brokers(dc1.bootstrap) == {111: ("127.0.0.1", dc1.port)}
    assert harness.metadata_brokers(dc2.bootstrap) == {111: ("127.0.0.1", dc2.port)}

    topic = unique("only-dc1")
    create_topic(dc1.bootstrap, topic, partitions=2)
    topics_dc2 = harness.admin(dc2.bootstrap).list_topics(timeout=10).topics
    assert topic not in topics_dc2


def test_produce_consume_direct_confluent(dc1):
    topic = unique("direct-ck")
    create_topic(dc1.bootstrap, topic, partitions=3)
    sent = make_records(300, "ck", partitions=3)
    res = produce_confluent(dc1.bootstrap, topic, sent, **{"enable.idempotence": True})
    assert res.errors == []
    assert len(res.acked) == 300

    got = consume_confluent(dc1.bootstrap, topic, expected=300)
    assert_same_records(res.acked, got, "assign-consume from dc1")

    got = consume_confluent(dc1.bootstrap, topic, expected=300, group=unique("g"))
    assert_same_records(res.acked, got, "group-consume from dc1")


def test_produce_consume_direct_kafka_python(dc1):
    topic = unique("direct-kp")
    create_topic(dc1.bootstrap, topic, partitions=2)
    sent = make_records(100, "kp", partitions=2)
    res = produce_kafka_python(dc1.bootstrap, topic, sent, acks="all",
                               compression_type="gzip")
    assert res.errors == []
    assert len(res.acked) == 100

    got = consume_kafka_python(dc1.bootstrap, topic, expected=100)
    assert_same_records(res.acked, got, "kafka-python consume from dc1")
    # the other client reads the same thing
    got = consume_confluent(dc1.bootstrap, topic)
    assert_same_records(res.acked, got, "confluent consume until idle")


def test_broker_stops_by_pid(tansu):
    b = tansu("short-lived")
    b.stop()
    assert b.proc.poll() is not None
    with socket.socket() as s:
        s.settimeout(1)
        assert s.connect_ex(("127.0.0.1", b.port)) != 0
