"""The transparent proxy, replication off (no --target): real clients through kafka-tee
in front of a Tansu broker, asserting what a user sees — records, broker addresses,
errors, exit codes."""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import time

import pytest

import harness
from harness import (HOST, Rec, assert_same_records, by_partition, consume_confluent,
                     consume_kafka_python, create_topic, make_records, produce_confluent,
                     produce_kafka_python, unique)

PARTITIONS = 3
N_RECORDS = 300

# name -> (confluent-kafka settings, kafka-python settings)
VARIANTS = {
    "plain": ({}, {}),
    "idempotent": ({"enable.idempotence": True}, {"enable_idempotence": True}),
    "gzip": ({"compression.type": "gzip"}, {"compression_type": "gzip"}),
    "snappy": ({"compression.type": "snappy"}, {"compression_type": "snappy"}),
    "lz4": ({"compression.type": "lz4"}, {"compression_type": "lz4"}),
    "zstd": ({"compression.type": "zstd"}, {"compression_type": "zstd"}),
    "idempotent-zstd": ({"enable.idempotence": True, "compression.type": "zstd"},
                        {"enable_idempotence": True, "compression_type": "zstd"}),
    "acks0": ({"acks": "0"}, {"acks": 0}),
    "acks1": ({"acks": "1"}, {"acks": 1}),
    "acksall": ({"acks": "all"}, {"acks": "all"}),
}


def expected_from(sent: list[Rec], res: harness.ProduceResult, acks0: bool) -> list[Rec]:
    """What the topic must hold: the acked records (with offsets), or for acks=0, what
    was sent, in send order per partition (no offsets come back)."""
    assert res.errors == [], res.errors[:5]
    assert len(res.acked) == len(sent)
    if acks0:
        return [Rec(r.key, r.value, r.headers, r.partition, None) for r in sent]
    want_part = {r.key: r.partition for r in sent}
    wrong = [r for r in res.acked if r.partition != want_part[r.key]]
    assert not wrong, f"acked on another partition than requested: {wrong[:3]}"
    return res.acked


def assert_proxy_address(px: harness.Proxy, dc1: harness.Broker, host: str, port: int,
                         what: str) -> None:
    assert port != dc1.port, f"{what}: {host}:{port} is DC1's own address"
    assert host == HOST, f"{what}: host {host!r} is not {HOST}"
    assert port in px.ports, f"{what}: port {port} outside the proxy's ports {px.ports}"


def assert_only_proxy_connections(px: harness.Proxy, dc1: harness.Broker, what: str):
    conns = harness.own_tcp_connections()
    to_dc1 = [c for c in conns if c[1][1] == dc1.port]
    assert not to_dc1, f"{what}: this client holds connections straight to DC1: {to_dc1}"
    to_proxy = [c for c in conns if c[1][1] in px.ports]
    assert to_proxy, f"{what}: no connection to the proxy at all? {conns}"


# ------------------------------------------------------------------ round trips


def roundtrip(dc1, proxy, variant: str, prefix: str, conf: dict, produce, consume,
              client: str) -> None:
    """Produces through the proxy with `produce` and `conf`, then reads the records
    back with `consume`, with a group through the proxy and straight from DC1."""
    px = proxy(dc1.bootstrap)
    topic = unique(f"{prefix}-{variant}")
    create_topic(px.bootstrap, topic, partitions=PARTITIONS)

    sent = make_records(N_RECORDS, variant, partitions=PARTITIONS)
    res = produce(px.bootstrap, topic, sent, **conf)
    want = expected_from(sent, res, acks0=variant == "acks0")

    got = consume(px.bootstrap, topic, expected=len(sent), group=unique("g"))
    assert_same_records(want, got, f"{variant}: {client} group consumer through the proxy")

    direct = consume(dc1.bootstrap, topic, expected=len(sent))
    assert_same_records(want, direct, f"{variant}: {client} read straight from DC1")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_roundtrip_confluent(dc1, proxy, variant):
    conf, _ = VARIANTS[variant]
    roundtrip(dc1, proxy, variant, "ck", conf, produce_confluent, consume_confluent,
              "confluent-kafka")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_roundtrip_kafka_python(dc1, proxy, variant):
    _, conf = VARIANTS[variant]
    roundtrip(dc1, proxy, variant, "kp", conf, produce_kafka_python, consume_kafka_python,
              "kafka-python")


def test_topic_created_by_kafka_python_admin(dc1, proxy):
    from kafka.admin import KafkaAdminClient, NewTopic

    px = proxy(dc1.bootstrap)
    topic = unique("kp-admin")
    ka = KafkaAdminClient(bootstrap_servers=px.bootstrap)
    try:
        ka.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        ka.close()
    harness.wait_for_topic(dc1.bootstrap, topic, 2)
    harness.wait_for_topic(px.bootstrap, topic, 2)


def test_group_offsets_survive_through_proxy(dc1, proxy):
    """OffsetCommit/OffsetFetch reach the group coordinator through the proxy: a second
    session of the same group starts after what the first one committed."""
    px = proxy(dc1.bootstrap)
    topic = unique("offsets")
    create_topic(px.bootstrap, topic, partitions=2)
    group = unique("g")

    first = produce_confluent(px.bootstrap, topic, make_records(50, "a", partitions=2))
    assert first.errors == []
    got = consume_confluent(px.bootstrap, topic, expected=50, group=group, commit=True)
    assert_same_records(first.acked, got, "first session")

    second = produce_confluent(px.bootstrap, topic, make_records(20, "b", partitions=2))
    assert second.errors == []
    got = consume_confluent(px.bootstrap, topic, expected=20, group=group)
    assert_same_records(second.acked, got, "second session resumes after the commit")


# -------------------------------------------------------- addresses clients see


def test_metadata_brokers_are_proxy_addresses(dc1, proxy):
    px = proxy(dc1.bootstrap)
    topic = unique("addr")
    create_topic(px.bootstrap, topic, partitions=PARTITIONS)

    md = harness.admin(px.bootstrap).list_topics(timeout=10)
    assert md.brokers, "no brokers in metadata"
    for b in md.brokers.values():
        assert_proxy_address(px, dc1, b.host, b.port, f"confluent metadata broker {b.id}")
    ids = set(md.brokers)
    assert md.controller_id in ids | {-1}, f"controller {md.controller_id} not in {ids}"
    for p in md.topics[topic].partitions.values():
        assert p.leader in ids, f"partition {p.id} leader {p.leader} not among brokers {ids}"
        assert set(p.replicas) <= ids and set(p.isrs) <= ids, p

    # the per-broker listeners really serve Kafka: bootstrap straight at one of them
    for b in md.brokers.values():
        md2 = harness.admin(f"{b.host}:{b.port}").list_topics(timeout=10)
        assert topic in md2.topics
        for b2 in md2.brokers.values():
            assert_proxy_address(px, dc1, b2.host, b2.port, "metadata via broker port")


def test_kafka_python_describe_cluster_is_proxy(dc1, proxy):
    from kafka.admin import KafkaAdminClient

    px = proxy(dc1.bootstrap)
    ka = KafkaAdminClient(bootstrap_servers=px.bootstrap)
    try:
        cluster = ka.describe_cluster()
    finally:
        ka.close()
    assert cluster["brokers"], cluster
    ids = set()
    for b in cluster["brokers"]:
        assert_proxy_address(px, dc1, b["host"], b["port"], "describe_cluster broker")
        ids.add(b["broker_id"])
    assert cluster["controller_id"] in ids | {-1}, cluster


def test_group_coordinator_is_proxy(dc1, proxy):
    px = proxy(dc1.bootstrap)
    topic = unique("coord")
    create_topic(px.bootstrap, topic, partitions=1)
    res = produce_confluent(px.bootstrap, topic, make_records(5, "c"))
    assert res.errors == []
    group = unique("g")
    got = consume_confluent(px.bootstrap, topic, expected=5, group=group, commit=True)
    assert len(got) == 5

    a = harness.admin(px.bootstrap)
    desc = a.describe_consumer_groups([group])[group].result(timeout=20)
    c = desc.coordinator
    assert c is not None, desc
    assert_proxy_address(px, dc1, c.host, c.port, f"coordinator of {group}")


def test_clients_never_connect_to_dc1_directly(dc1, proxy):
    """While a producer and a group consumer of each client library are busy, every
    TCP connection this process holds goes to the proxy's ports."""
    from confluent_kafka import Consumer, Producer
    from kafka import KafkaConsumer, KafkaProducer

    px = proxy(dc1.bootstrap)
    topic = unique("conns")
    create_topic(px.bootstrap, topic, partitions=2)

    p = Producer(harness.confluent_conf(px.bootstrap, **{"enable.idempotence": True}))
    for i in range(20):
        p.produce(topic, value=b"x%d" % i)
    assert p.flush(20) == 0
    c = Consumer(harness.confluent_conf(px.bootstrap, **{
        "group.id": unique("g"), "auto.offset.reset": "earliest",
        "session.timeout.ms": harness.GROUP_SESSION_TIMEOUT_MS}))
    c.subscribe([topic])
    n = 0
    deadline = time.monotonic() + 30
    while n < 20 and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            n += 1
    assert n == 20
    assert_only_proxy_connections(px, dc1, "confluent-kafka producer + group consumer")
    c.close()
    del p

    kp = KafkaProducer(bootstrap_servers=px.bootstrap)
    kp.send(topic, b"y").get(timeout=20)
    kc = KafkaConsumer(topic, bootstrap_servers=px.bootstrap, group_id=unique("g"),
                       auto_offset_reset="earliest",
                       session_timeout_ms=harness.GROUP_SESSION_TIMEOUT_MS,
                       heartbeat_interval_ms=1000)
    try:
        n = 0
        deadline = time.monotonic() + 30
        while n < 21 and time.monotonic() < deadline:
            n += sum(len(v) for v in kc.poll(timeout_ms=200).values())
        assert n == 21
        assert_only_proxy_connections(px, dc1, "kafka-python producer + group consumer")
    finally:
        kc.close()
        kp.close()


# ------------------------------------------------------------------ pipelining


@pytest.mark.parametrize("workers", [None, 1], ids=["default-threads", "one-thread"])
def test_pipelined_produce_confluent(dc1, proxy, workers):
    px = proxy(dc1.bootstrap, extra=["--worker-threads", str(workers)] if workers else [])
    topic = unique("pipe-ck")
    create_topic(px.bootstrap, topic, partitions=2)
    sent = make_records(5000, "pipe", partitions=2)
    res = produce_confluent(px.bootstrap, topic, sent, **{
        "max.in.flight.requests.per.connection": 5,
        "linger.ms": 0,
        "batch.num.messages": 20,
        "acks": "all",
    })
    assert res.errors == [], res.errors[:5]
    assert len(res.acked) == 5000
    # acks come back in send order with increasing offsets per partition
    sent_keys = {p: [r.key for r in rs] for p, rs in by_partition(sent).items()}
    for p, rs in by_partition(res.acked).items():
        assert [r.key for r in rs] == sent_keys[p], f"partition {p}: acked out of order"
        offsets = [r.offset for r in rs]
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), \
            f"partition {p}: offsets not consecutive"
    got = consume_confluent(px.bootstrap, topic, expected=5000)
    assert_same_records(res.acked, got, "pipelined produce, read through the proxy")


def test_pipelined_produce_kafka_python(dc1, proxy):
    px = proxy(dc1.bootstrap)
    topic = unique("pipe-kp")
    create_topic(px.bootstrap, topic, partitions=2)
    sent = make_records(2000, "pipe", partitions=2)
    res = produce_kafka_python(px.bootstrap, topic, sent, linger_ms=0, batch_size=512,
                               max_in_flight_requests_per_connection=5, acks=1)
    want = expected_from(sent, res, acks0=False)
    got = consume_kafka_python(px.bootstrap, topic, expected=2000)
    assert_same_records(want, got, "kafka-python pipelined produce")


def test_pipelined_raw_requests_answered_in_order(dc1, proxy):
    """Many requests written back to back in one send: one response each, in order,
    with the right correlation ids."""
    px = proxy(dc1.bootstrap)
    frames = []
    for i in range(50):
        frames.append(harness.api_versions_v0(1000 + 2 * i))
        frames.append(harness.metadata_v1_all_topics(1001 + 2 * i))
    with socket.create_connection((HOST, px.port), timeout=10) as s:
        s.sendall(b"".join(frames))
        corrs = []
        for i in range(100):
            corr, body = harness.recv_frame(s)
            corrs.append(corr)
            if corr % 2 == 0:  # ApiVersions v0: error_code i16 first
                (err,) = struct.unpack(">h", body[:2])
                assert err == 0, f"ApiVersions error {err}"
    assert corrs == list(range(1000, 1100))


# ------------------------------------------------------------------- bad input


BAD_INPUTS = {
    "http-request": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "huge-length": struct.pack(">i", 0x7FFFFFF0) + b"\x00" * 64,
    "negative-length": struct.pack(">i", -5) + b"\x00" * 16,
    "frame-shorter-than-header": struct.pack(">i", 2) + b"\x00\x12",
    "tls-client-hello": None,  # filled in at run time
}


def _client_still_works(px: harness.Proxy, dc1: harness.Broker) -> None:
    assert px.proc.poll() is None, "proxy died"
    topic = unique("after-bad")
    create_topic(px.bootstrap, topic, partitions=1)
    res = produce_confluent(px.bootstrap, topic, make_records(10, "ok"))
    assert res.errors == []
    got = consume_confluent(px.bootstrap, topic, expected=10)
    assert_same_records(res.acked, got, "real client after bad input")


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_input_closes_connection(dc1, proxy, kind):
    px = proxy(dc1.bootstrap)
    data = BAD_INPUTS[kind] if kind != "tls-client-hello" else harness.tls_client_hello()
    # a healthy connection opened before the bad one must not be disturbed
    healthy = socket.create_connection((HOST, px.port), timeout=10)
    try:
        with socket.create_connection((HOST, px.port), timeout=10) as s:
            s.sendall(data)
            got = harness.wait_closed(s, timeout=5)
            assert got is not None, f"{kind}: proxy kept the connection open for 5 s"
        healthy.sendall(harness.api_versions_v0(7))
        corr, _ = harness.recv_frame(healthy)
        assert corr == 7
    finally:
        healthy.close()
    _client_still_works(px, dc1)


def test_half_frames_and_abrupt_disconnects(dc1, proxy):
    """Clients that vanish mid-frame or mid-request leave the proxy serving others."""
    px = proxy(dc1.bootstrap)
    for i in range(20):
        s = socket.create_connection((HOST, px.port), timeout=5)
        frame = harness.metadata_v1_all_topics(i)
        s.sendall(frame[: 3 + i % (len(frame) - 3)])
        if i % 2:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    # requests whose responses nobody reads
    for i in range(10):
        s = socket.create_connection((HOST, px.port), timeout=5)
        s.sendall(b"".join(harness.metadata_v1_all_topics(j) for j in range(20)))
        s.close()
    time.sleep(0.5)
    _client_still_works(px, dc1)


# ------------------------------------------------------------------ bad config


def _run_bad(argv: list[str]) -> str:
    r = harness.run_proxy_expecting_exit(argv)
    out = (r.stdout or "") + (r.stderr or "")
    assert r.returncode != 0, f"{argv} exited 0\n{out}"
    assert r.returncode > 0, f"{argv} died by signal {-r.returncode}\n{out}"
    assert "panicked" not in out, f"{argv} panicked instead of reporting\n{out}"
    return out


def test_bad_listen_address(kafka_tee_bin):
    out = _run_bad(harness.proxy_argv("nope", "127.0.0.1:9092"))
    assert "listen" in out.lower() and "nope" in out, out


def test_missing_source(kafka_tee_bin):
    out = _run_bad(harness.proxy_argv(f"{HOST}:{harness.free_port()}", None))
    assert "source" in out.lower(), out


def test_bad_source_address(kafka_tee_bin):
    out = _run_bad(harness.proxy_argv(f"{HOST}:{harness.free_port()}", "no-port-here"))
    assert "source" in out.lower() and "no-port-here" in out, out


def test_config_unknown_field(kafka_tee_bin, tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[proxy]\nlisten_port = 9092\n")
    out = _run_bad(harness.proxy_argv(f"{HOST}:{harness.free_port()}", "127.0.0.1:9092",
                                      config=cfg))
    assert "listen_port" in out, out


def test_config_file_missing(kafka_tee_bin, tmp_path):
    cfg = tmp_path / "does-not-exist.toml"
    out = _run_bad(harness.proxy_argv(f"{HOST}:{harness.free_port()}", "127.0.0.1:9092",
                                      config=cfg))
    assert "does-not-exist.toml" in out, out


def test_config_reports_every_problem(kafka_tee_bin, tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[replication]\nmax_in_flight_per_partition = 0\n"
                   "include = [\"(\"]\n")
    out = _run_bad(harness.proxy_argv("nope", "127.0.0.1:9092", config=cfg))
    for needle in ("listen", "max_in_flight_per_partition", "include"):
        assert needle in out, f"{needle} missing from:\n{out}"


def test_listen_port_in_use(dc1, kafka_tee_bin):
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = _run_bad(harness.proxy_argv(f"{HOST}:{port}", dc1.bootstrap))
    assert str(port) in out, f"error does not name the port {port}:\n{out}"


# -------------------------------------------------------------------- shutdown


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_exits_zero_within_grace(dc1, proxy, sig):
    px = proxy(dc1.bootstrap)
    topic = unique("shutdown")
    create_topic(px.bootstrap, topic, partitions=1)
    res = produce_confluent(px.bootstrap, topic, make_records(10, "s"))
    assert res.errors == []
    # an idle client connection must not hold the exit past the grace period
    idle = socket.create_connection((HOST, px.port), timeout=5)
    try:
        t0 = time.monotonic()
        px.proc.signal(sig)
        try:
            rc = px.proc.wait(timeout=12)  # default grace is 10 s
        except subprocess.TimeoutExpired:
            pytest.fail(f"proxy still running 12 s after {sig.name}")
        took = time.monotonic() - t0
    finally:
        idle.close()
    assert rc == 0, f"exit status {rc} after {sig.name} ({took:.1f}s)"
    with socket.socket() as s:
        s.settimeout(1)
        assert s.connect_ex((HOST, px.port)) != 0, "listener still accepting after exit"
    # DC1 kept what was acked
    got = consume_confluent(dc1.bootstrap, topic, expected=10)
    assert_same_records(res.acked, got, "DC1 after proxy shutdown")


# ------------------------------------------------------------------- admin HTTP


def test_admin_endpoints(dc1, proxy):
    import urllib.request

    px = proxy(dc1.bootstrap, admin=True)
    topic = unique("admin")
    create_topic(px.bootstrap, topic, partitions=1)
    assert produce_confluent(px.bootstrap, topic, make_records(5, "a")).errors == []

    def get(path: str) -> tuple[int, str]:
        with urllib.request.urlopen(f"http://{HOST}:{px.admin_port}{path}", timeout=5) as r:
            return r.status, r.read().decode()

    assert get("/healthz")[0] == 200
    assert get("/readyz")[0] == 200
    status, body = get("/metrics")
    assert status == 200
    samples = [line for line in body.splitlines() if line and not line.startswith("#")]
    assert samples, "no metric samples"
    bad = [line for line in samples if not line.startswith("kafka_tee_")]
    assert not bad, f"metrics without the kafka_tee_ prefix: {bad[:5]}"
