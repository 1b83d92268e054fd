"""Synchronous topics (`replication.sync_topics`): the producer's acknowledgement waits
until DC2 holds the batch, and a DC2 that does not confirm in time turns into an error
for the producer instead of an acknowledgement that only DC1 backs."""

from __future__ import annotations

import signal
import time

import harness


def _config(tmp_path, request_timeout_ms: int = 2000):
    cfg = tmp_path / "sync.toml"
    cfg.write_text(
        "[replication]\n"
        'sync_topics = ["^sync-"]\n'
        f"request_timeout_ms = {request_timeout_ms}\n"
        "retry_backoff_max_ms = 500\n"
    )
    return cfg


def _produce_one_by_one(bootstrap: str, topic: str, n: int, tag: str, **conf):
    """Produces `n` records, one flush each; returns (acked records, errors)."""
    from confluent_kafka import Producer

    p = Producer(harness.confluent_conf(bootstrap, **{"linger.ms": 0, **conf}))
    acked, errors = [], []
    for i in range(n):
        key, value = f"{tag}-{i}".encode(), f"value-{tag}-{i}".encode()
        result = {}
        p.produce(topic, key=key, value=value,
                  on_delivery=lambda err, msg, r=result: r.update(err=err, msg=msg))
        p.flush(30)
        if result.get("err") is None and "msg" in result:
            acked.append((key, value))
        else:
            errors.append(str(result.get("err")))
    return acked, errors


def _dc2_keys(dc2, topic: str, expected: int, timeout: float = 20):
    got = harness.consume_confluent(dc2.bootstrap, topic, expected=expected, timeout=timeout)
    return [r.key for r in got]


def test_ack_means_dc2_has_it(dc1, dc2, proxy, tmp_path):
    p = proxy(dc1.bootstrap, target=dc2.bootstrap, config=_config(tmp_path))
    topic = harness.unique("sync-ok")
    harness.create_topic(dc1.bootstrap, topic, partitions=1)
    # Warm up: the first batch creates the DC2 topic.
    _produce_one_by_one(p.bootstrap, topic, 1, "warm")
    acked, errors = _produce_one_by_one(p.bootstrap, topic, 20, "s")
    assert not errors, errors
    # Read DC2 right after the last acknowledgement: nothing may be missing, since each
    # acknowledgement waited for DC2.
    got = harness.consume_confluent(dc2.bootstrap, topic, expected=21, timeout=10)
    keys = [r.key for r in got]
    for key, _ in acked:
        assert key in keys, f"acked {key!r} not in DC2"


def test_dc2_silent_means_producer_error_not_ack(dc1, dc2, proxy, tmp_path):
    p = proxy(dc1.bootstrap, target=dc2.bootstrap, config=_config(tmp_path, 1500))
    sync_topic, async_topic = harness.unique("sync-stall"), harness.unique("plain")
    harness.create_topic(dc1.bootstrap, sync_topic, partitions=1)
    harness.create_topic(dc1.bootstrap, async_topic, partitions=1)
    _produce_one_by_one(p.bootstrap, sync_topic, 1, "warm")
    _produce_one_by_one(p.bootstrap, async_topic, 1, "warm")
    dc2.proc.signal(signal.SIGSTOP)
    try:
        # The ordinary topic is not slowed down by DC2 being silent.
        start = time.monotonic()
        acked, errors = _produce_one_by_one(p.bootstrap, async_topic, 5, "a")
        assert not errors and len(acked) == 5
        assert time.monotonic() - start < 5
        # The synchronous topic does not acknowledge what DC2 did not confirm.
        acked, errors = _produce_one_by_one(
            p.bootstrap, sync_topic, 1, "s", **{"message.timeout.ms": 4000, "retries": 0})
        assert not acked and errors, (acked, errors)
    finally:
        dc2.proc.signal(signal.SIGCONT)
    # Once DC2 answers again, synchronous produce succeeds and everything arrives.
    deadline = time.monotonic() + 30
    acked = []
    while time.monotonic() < deadline and not acked:
        acked, _ = _produce_one_by_one(p.bootstrap, sync_topic, 1, "after")
    assert acked, "synchronous produce never recovered after DC2 came back"
    assert b"after-0" in _dc2_keys(dc2, sync_topic, expected=3)
    assert "DC2 did not confirm" in p.proc.log_text()
