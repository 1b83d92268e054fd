"""The SASL gate (saslgate.py) is a faithful Kafka SASL server: real clients
(confluent-kafka / librdkafka, kafka-python) log in through it with PLAIN,
SCRAM-SHA-256 and SCRAM-SHA-512 and then produce and consume through it against a
plain Tansu broker behind it; wrong passwords and unknown users are refused; requests
before a login close the connection; the raw protocol paths the clients do not take
(SaslHandshake v0 with unframed tokens, SaslAuthenticate v0 and v2) and bad input are
checked with raw sockets.

The `sasl_dc2` fixture (and `start_sasl_broker` in saslgate.py) give a Tansu broker
whose metadata advertises the gate, so every client connection goes through it.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

import harness
import teeutil
from harness import HOST
from harness import uvarint
from saslgate import MECHANISMS, KafkaReader, SaslBroker, start_sasl_broker

USER, PASSWORD = "alice", "alice-secret"
USERS = {USER: PASSWORD, "bob": "bob-secret"}
FAILED = "Authentication failed: invalid credentials"


@pytest.fixture
def sasl_dc2(request, logdir):
    """A Tansu broker ("dc2") behind a SASL gate with the users in USERS; every
    mechanism the gate knows is enabled. Yields a SaslBroker (broker, gate)."""
    sb = start_sasl_broker("dc2", logdir, USERS)
    teeutil.register(request, sb.broker.proc)
    try:
        yield sb
    finally:
        try:
            sb.broker.stop()
        finally:
            sb.gate.stop()


# ------------------------------------------------------------------ clients


def sasl_conf(mechanism: str, user: str = USER, password: str = PASSWORD) -> dict:
    return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": mechanism,
            "sasl.username": user, "sasl.password": password}


def create_topic(bootstrap: str, topic: str, conf: dict, partitions: int = 1,
                 timeout: float = 20) -> None:
    """Creates a topic with an AdminClient using `conf` and waits until a listing of
    every topic shows it (never asked for by name: Tansu would create it)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    a = AdminClient(harness.confluent_conf(bootstrap, **conf))
    futures = a.create_topics([NewTopic(topic, partitions, 1)],
                              operation_timeout=timeout, request_timeout=timeout)
    futures[topic].result(timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        t = a.list_topics(timeout=5).topics.get(topic)
        if t is not None and t.error is None and len(t.partitions) == partitions:
            return
        assert time.monotonic() < deadline, f"topic {topic} not visible: {t}"
        time.sleep(0.2)


def assert_clean(sb: SaslBroker) -> None:
    g = sb.gate
    assert g.failures == [], g.failures
    assert g.refused_unauthenticated == 0
    assert g.malformed == 0
    assert g.errors == [], g.errors


# ------------------------------------------------------------- raw protocol


def request(api_key: int, version: int, corr: int, body: bytes = b"",
            flexible: bool = False) -> bytes:
    """A request frame with header v1, or v2 (header v1 + empty tagged fields)."""
    if not flexible:
        return harness.encode_request(api_key, version, corr, body, client_id="raw")
    payload = struct.pack(">hhih", api_key, version, corr, 3) + b"raw" + b"\x00" + body
    return struct.pack(">i", len(payload)) + payload


class Body(KafkaReader):
    """A response body; short input fails the test."""

    def __init__(self, data: bytes):
        super().__init__(data)

    def unpack(self, fmt: str):
        vals = struct.unpack(fmt, self.take(struct.calcsize(fmt)))
        return vals[0] if len(vals) == 1 else vals

    def str16(self) -> str | None:
        n = self.unpack(">h")
        return None if n < 0 else self.take(n).decode()

    def done(self) -> bool:
        return self.pos == len(self.data)


def connect(sb: SaslBroker) -> socket.socket:
    s = socket.create_connection((HOST, sb.gate.port), timeout=10)
    s.settimeout(10)
    return s


def call(s: socket.socket, frame: bytes, corr: int) -> Body:
    s.sendall(frame)
    got, body = harness.recv_frame(s)
    assert got == corr
    return Body(body)


def handshake(s: socket.socket, mechanism: str, version: int = 1) -> tuple[int, list[str]]:
    mech = mechanism.encode()
    b = call(s, request(17, version, 11, struct.pack(">h", len(mech)) + mech), 11)
    error, n = b.unpack(">hi")
    mechanisms = [b.str16() for _ in range(n)]
    assert b.done()
    return error, mechanisms


def authenticate(s: socket.socket, token: bytes, version: int,
                 corr: int = 21) -> tuple[int, str | None, bytes]:
    """One SaslAuthenticate round: (error code, error message, auth bytes)."""
    if version >= 2:
        b = call(s, request(36, version, corr, uvarint(len(token) + 1) + token + b"\x00",
                            flexible=True), corr)
        assert b.take(1) == b"\x00"  # response header tagged fields
        error = b.unpack(">h")
        n = b.uvarint()
        message = b.take(n - 1).decode() if n else None
        auth = b.take(b.uvarint() - 1)
        assert b.unpack(">q") == 0  # session lifetime
        assert b.take(1) == b"\x00"
    else:
        b = call(s, request(36, version, corr, struct.pack(">i", len(token)) + token), corr)
        error = b.unpack(">h")
        message = b.str16()
        auth = b.take(b.unpack(">i"))
        if version == 1:
            assert b.unpack(">q") == 0
    assert b.done()
    return error, message, auth


def raw_token(s: socket.socket, token: bytes) -> bytes:
    """One unframed token round after a v0 SaslHandshake."""
    s.sendall(struct.pack(">i", len(token)) + token)
    (n,) = struct.unpack(">i", harness.recv_exact(s, 4))
    return harness.recv_exact(s, n)


def metadata_broker_ports(s: socket.socket, corr: int = 31) -> list[int]:
    """Metadata v1 for every topic through an authenticated connection; the ports of
    the brokers in the answer."""
    b = call(s, harness.metadata_v1_all_topics(corr), corr)
    ports = []
    for _ in range(b.unpack(">i")):
        b.unpack(">i")
        b.str16()
        ports.append(b.unpack(">i"))
        b.str16()
    return ports


def plain_token(user: str, password: str, authzid: str = "") -> bytes:
    return f"{authzid}\0{user}\0{password}".encode()


def scram_client(mechanism: str, user: str = USER, password: str = PASSWORD):
    """kafka-python's SCRAM client: an implementation independent of the gate's."""
    from kafka.net.sasl.scram import ScramClient

    return ScramClient(user, password, mechanism)


# -------------------------------------------------------------------- tests


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_confluent_kafka_logs_in_produces_and_consumes(sasl_dc2, mechanism):
    sb, conf = sasl_dc2, sasl_conf(mechanism)
    md = harness.admin(sb.bootstrap, **conf).list_topics(timeout=10)
    assert {(b.host, b.port) for b in md.brokers.values()} == {(HOST, sb.gate.port)}
    topic = harness.unique(f"sasl-{mechanism.lower()}")
    create_topic(sb.bootstrap, topic, conf)
    sent = harness.make_records(10, tag=mechanism)
    res = harness.produce_confluent(sb.bootstrap, topic, sent, timeout=20, **conf)
    assert not res.errors, res.errors
    assert len(res.acked) == 10
    got = harness.consume_confluent(sb.bootstrap, topic, expected=10, timeout=20, **conf)
    assert [r.value for r in got] == [r.value for r in sent]
    harness.assert_same_records(res.acked, got, f"through the gate with {mechanism}")
    assert (USER, mechanism) in sb.gate.authenticated
    assert {m for _, m in sb.gate.authenticated} == {mechanism}
    assert_clean(sb)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
def test_wrong_password_is_refused(sasl_dc2, mechanism):
    from confluent_kafka import KafkaException, Producer

    sb, conf = sasl_dc2, sasl_conf(mechanism, password="not-the-password")
    with pytest.raises(KafkaException):
        harness.admin(sb.bootstrap, **conf).list_topics(timeout=5)
    delivered, errors = [], []

    def report(err, msg):
        (errors if err is not None else delivered).append(err or msg)

    p = Producer(harness.confluent_conf(sb.bootstrap, **conf, **{"message.timeout.ms": 3000}))
    p.produce(harness.unique("sasl-refused"), value=b"never", on_delivery=report)
    p.flush(6)
    assert delivered == []
    assert errors, "no delivery report within the message timeout"
    assert sb.gate.authenticated == []
    assert (USER, mechanism, "wrong password") in sb.gate.failures
    assert {(u, m) for u, m, _ in sb.gate.failures} == {(USER, mechanism)}
    assert sb.gate.errors == []


def test_kafka_python_scram_producer_and_confluent_consumer(sasl_dc2):
    sb = sasl_dc2
    topic = harness.unique("sasl-kp")
    create_topic(sb.bootstrap, topic, sasl_conf("SCRAM-SHA-256"))
    sent = harness.make_records(5, tag="kp")
    res = harness.produce_kafka_python(
        sb.bootstrap, topic, sent, timeout=20, security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256", sasl_plain_username="bob",
        sasl_plain_password=USERS["bob"])
    assert not res.errors, res.errors
    assert len(res.acked) == 5
    assert ("bob", "SCRAM-SHA-256") in sb.gate.authenticated  # only kafka-python is bob
    got = harness.consume_confluent(sb.bootstrap, topic, expected=5, timeout=20,
                                    **sasl_conf("SCRAM-SHA-256"))
    assert [r.value for r in got] == [r.value for r in sent]
    harness.assert_same_records(res.acked, got, "kafka-python in, confluent-kafka out")
    assert_clean(sb)


def test_request_before_login_closes_the_connection(sasl_dc2):
    sb = sasl_dc2
    with connect(sb) as s:
        s.sendall(harness.metadata_v1_all_topics(1))
        assert harness.wait_closed(s, 5) == b""
    assert sb.gate.refused_unauthenticated == 1
    # ApiVersions is answered (by the broker), and does not open the door either.
    with connect(sb) as s:
        b = call(s, harness.api_versions_v0(2), 2)
        assert b.unpack(">h") == 0
        s.sendall(harness.metadata_v1_all_topics(3))
        assert harness.wait_closed(s, 5) == b""
    assert sb.gate.refused_unauthenticated == 2
    # So does a SaslHandshake followed by anything but SaslAuthenticate.
    with connect(sb) as s:
        assert handshake(s, "PLAIN") == (0, list(MECHANISMS))
        s.sendall(harness.metadata_v1_all_topics(4))
        assert harness.wait_closed(s, 5) == b""
    assert sb.gate.refused_unauthenticated == 3
    assert sb.gate.authenticated == []
    assert sb.gate.errors == []


def test_unsupported_mechanism_and_unknown_user(sasl_dc2):
    sb = sasl_dc2
    with connect(sb) as s:
        assert handshake(s, "GSSAPI") == (33, list(MECHANISMS))
        assert harness.wait_closed(s, 5) == b""
    assert sb.gate.failures == [(None, "GSSAPI", "unsupported mechanism")]
    # An unknown user gets a normal-looking server-first message, then the same
    # failure as a wrong password.
    client = scram_client("SCRAM-SHA-256", user="mallory", password="guess")
    with connect(sb) as s:
        assert handshake(s, "SCRAM-SHA-256")[0] == 0
        error, message, server_first = authenticate(s, client.first_message(), 1)
        assert (error, message) == (0, None)
        assert server_first.startswith(b"r=" + client.nonce) and b",i=4096" in server_first
        client.process_server_first_message(server_first)
        assert authenticate(s, client.final_message(), 1, corr=22) == (58, FAILED, b"")
        assert harness.wait_closed(s, 5) == b""
    assert sb.gate.failures[-1] == ("mallory", "SCRAM-SHA-256", "unknown user")
    assert sb.gate.authenticated == []


@pytest.mark.parametrize("version", [0, 1, 2])
def test_scram_sha_512_over_each_sasl_authenticate_version(sasl_dc2, version):
    sb = sasl_dc2
    client = scram_client("SCRAM-SHA-512")
    with connect(sb) as s:
        assert handshake(s, "SCRAM-SHA-512")[0] == 0
        error, _, server_first = authenticate(s, client.first_message(), version)
        assert error == 0
        client.process_server_first_message(server_first)
        error, message, server_final = authenticate(s, client.final_message(), version, 22)
        assert (error, message) == (0, None)
        client.process_server_final_message(server_final)  # raises on a bad signature
        assert metadata_broker_ports(s) == [sb.gate.port]
    assert sb.gate.authenticated == [(USER, "SCRAM-SHA-512")]
    assert (36, version) in sb.gate.pre_auth_requests
    # PLAIN with a wrong password over the same version: error 58, then closed.
    with connect(sb) as s:
        assert handshake(s, "PLAIN")[0] == 0
        assert authenticate(s, plain_token(USER, "nope"), version) == (58, FAILED, b"")
        assert harness.wait_closed(s, 5) == b""
    assert sb.gate.failures == [(USER, "PLAIN", "wrong password")]
    assert sb.gate.errors == []


def test_handshake_v0_with_unframed_tokens(sasl_dc2):
    sb = sasl_dc2
    with connect(sb) as s:
        assert handshake(s, "PLAIN", version=0)[0] == 0
        assert raw_token(s, plain_token(USER, PASSWORD, authzid=USER)) == b""
        assert metadata_broker_ports(s) == [sb.gate.port]
    client = scram_client("SCRAM-SHA-256", user="bob", password=USERS["bob"])
    with connect(sb) as s:
        assert handshake(s, "SCRAM-SHA-256", version=0)[0] == 0
        client.process_server_first_message(raw_token(s, client.first_message()))
        client.process_server_final_message(raw_token(s, client.final_message()))
        assert metadata_broker_ports(s) == [sb.gate.port]
    assert sb.gate.authenticated == [(USER, "PLAIN"), ("bob", "SCRAM-SHA-256")]
    # A refused v0 login just closes the connection (there is no error frame in v0).
    client = scram_client("SCRAM-SHA-256", password="wrong")
    with connect(sb) as s:
        assert handshake(s, "SCRAM-SHA-256", version=0)[0] == 0
        client.process_server_first_message(raw_token(s, client.first_message()))
        s.sendall(struct.pack(">i", len(client.final_message())) + client.final_message())
        assert harness.wait_closed(s, 5) == b""
    assert sb.gate.failures == [(USER, "SCRAM-SHA-256", "wrong password")]
    assert sb.gate.errors == []


def test_bad_input_closes_only_that_connection(sasl_dc2):
    sb = sasl_dc2
    idle = connect(sb)  # an open, unauthenticated connection that must survive
    bad = [
        harness.tls_client_hello(),  # a TLS client on the plaintext port
        struct.pack(">i", 1 << 30) + b"x" * 16,  # a huge frame before a login
        struct.pack(">i", 2) + b"\x00\x11",  # a header cut short
        request(17, 1, 5, struct.pack(">h", 40) + b"PLAIN"),  # a string cut short
        request(36, 2, 6, b"\x05ab", flexible=True),  # SaslAuthenticate before handshake
    ]
    for data in bad:
        with connect(sb) as s:
            s.sendall(data)
            assert harness.wait_closed(s, 5) is not None, data[:16]
    assert sb.gate.malformed == len(bad)
    # A SCRAM client-first that is not one: refused (58), not a crash.
    with connect(sb) as s:
        assert handshake(s, "SCRAM-SHA-256")[0] == 0
        assert authenticate(s, b"\xff garbage", 2) == (58, FAILED, b"")
    with idle:
        assert call(idle, harness.api_versions_v0(7), 7).unpack(">h") == 0
    md = harness.admin(sb.bootstrap, **sasl_conf("PLAIN")).list_topics(timeout=10)
    assert md.brokers
    assert sb.gate.authenticated and sb.gate.errors == []
