"""TLS at the edge: real clients (confluent-kafka, kafka-python) over TLS through the
proxy, mTLS accepted and refused, plaintext refused on a TLS port, certificate reload,
and TLS from the proxy to its upstream (a second kafka-tee acting as a TLS DC1)."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

import harness
from harness import HOST


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)


def _make_leaf(d: Path, ca: str, name: str, server: bool) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
    ext = d / f"{name}.ext"
    if server:
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:*.kafka.test\n"
                       "extendedKeyUsage=serverAuth\n")
    else:
        ext.write_text("extendedKeyUsage=clientAuth\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-extfile", ext.name, "-out", f"{name}.pem", cwd=d)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A test CA, a server certificate for 127.0.0.1, a second server certificate (for
    reload), a client certificate from the CA and one from an untrusted CA."""
    d = tmp_path / "pki"
    d.mkdir()
    _make_ca(d, "ca")
    _make_ca(d, "rogue-ca")
    _make_leaf(d, "ca", "server", server=True)
    _make_leaf(d, "ca", "server2", server=True)
    _make_leaf(d, "ca", "client", server=False)
    _make_leaf(d, "rogue-ca", "rogue-client", server=False)
    return d


def tls_args(pki: Path, client_ca: bool = False) -> list[str]:
    args = ["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")]
    if client_ca:
        args += ["--tls-client-ca", str(pki / "ca.pem")]
    return args


def ssl_conf(pki: Path, client: str | None = None) -> dict:
    conf = {"security.protocol": "SSL", "ssl.ca.location": str(pki / "ca.pem")}
    if client:
        conf["ssl.certificate.location"] = str(pki / f"{client}.pem")
        conf["ssl.key.location"] = str(pki / f"{client}.key")
    return conf


def peer_cert_subject(port: int, pki: Path) -> str:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with socket.create_connection((HOST, port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            cert = s.getpeercert()
    return dict(x[0] for x in cert["subject"])["commonName"]


def test_confluent_and_kafka_python_over_tls(dc1, proxy, pki):
    p = proxy(dc1.bootstrap, extra=tls_args(pki))
    conf = ssl_conf(pki)
    topic = harness.unique("tls")
    harness.create_topic(dc1.bootstrap, topic, partitions=2)
    # Every broker address handed out is a proxy port, reached over TLS too.
    md = harness.admin(p.bootstrap, **conf).list_topics(timeout=10)
    brokers = {b.id: (b.host, b.port) for b in md.brokers.values()}
    assert brokers and all(h == HOST and port in p.ports for h, port in brokers.values()), brokers

    sent = harness.make_records(40, tag="c", partitions=2)
    res = harness.produce_confluent(p.bootstrap, topic, sent, **conf)
    assert not res.errors, res.errors
    sent_kp = harness.make_records(20, tag="k", partitions=2)
    res_kp = harness.produce_kafka_python(
        p.bootstrap, topic, sent_kp, security_protocol="SSL", ssl_cafile=str(pki / "ca.pem"))
    assert not res_kp.errors, res_kp.errors

    got = harness.consume_confluent(p.bootstrap, topic, expected=60, **conf)
    harness.assert_same_records(res.acked + res_kp.acked, got, "over TLS")
    got_kp = harness.consume_kafka_python(
        p.bootstrap, topic, expected=60, security_protocol="SSL", ssl_cafile=str(pki / "ca.pem"))
    assert len(got_kp) == 60


def _can_list_topics(bootstrap: str, conf: dict) -> bool:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    a = AdminClient({"bootstrap.servers": bootstrap, **conf})
    try:
        a.list_topics(timeout=6)
        return True
    except KafkaException:
        return False


def test_mtls_accepts_trusted_client_and_refuses_others(dc1, proxy, pki):
    p = proxy(dc1.bootstrap, extra=tls_args(pki, client_ca=True))
    assert _can_list_topics(p.bootstrap, ssl_conf(pki, client="client"))
    assert not _can_list_topics(p.bootstrap, ssl_conf(pki))
    assert not _can_list_topics(p.bootstrap, ssl_conf(pki, client="rogue-client"))
    log = p.proc.log_text()
    assert "TLS handshake failed" in log, log[-2000:]


def test_plaintext_refused_on_tls_port(dc1, proxy, pki):
    p = proxy(dc1.bootstrap, extra=tls_args(pki))
    with socket.create_connection((HOST, p.port), timeout=5) as s:
        s.sendall(harness.api_versions_v0(1))
        s.settimeout(10)
        # The proxy answers a plaintext request with a TLS alert or nothing, then closes;
        # it never answers with a Kafka response.
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except OSError:
            pass
        assert not data.startswith(b"\x00\x00"), data[:16]
    assert not _can_list_topics(p.bootstrap, {})
    # The proxy still serves TLS clients afterwards.
    assert _can_list_topics(p.bootstrap, ssl_conf(pki))


def test_tls_client_on_plaintext_port_gets_clear_error(dc1, proxy, pki):
    p = proxy(dc1.bootstrap)
    assert not _can_list_topics(p.bootstrap, ssl_conf(pki))
    deadline = time.monotonic() + 5
    while "TLS/plaintext mismatch" not in p.proc.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "TLS/plaintext mismatch" in p.proc.log_text()
    assert _can_list_topics(p.bootstrap, {})


def test_certificate_reload_reaches_new_connections(dc1, proxy, pki, tmp_path):
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    live_cert.write_bytes((pki / "server.pem").read_bytes())
    live_key.write_bytes((pki / "server.key").read_bytes())
    cfg = tmp_path / "tls.toml"
    cfg.write_text(f'[tls]\ncert = "{live_cert}"\nkey = "{live_key}"\nreload_interval_ms = 200\n')
    p = proxy(dc1.bootstrap, config=cfg)
    assert peer_cert_subject(p.port, pki) == "server"
    # Replace key first, then certificate; the proxy must end up serving server2.
    live_key.write_bytes((pki / "server2.key").read_bytes())
    live_cert.write_bytes((pki / "server2.pem").read_bytes())
    deadline = time.monotonic() + 10
    subject = None
    while time.monotonic() < deadline:
        try:
            subject = peer_cert_subject(p.port, pki)
        except (ssl.SSLError, OSError):
            subject = None
        if subject == "server2":
            break
        time.sleep(0.2)
    assert subject == "server2"
    assert _can_list_topics(p.bootstrap, ssl_conf(pki))


def test_tls_towards_upstream(dc1, proxy, pki, tmp_path):
    """Client -> proxy B (plaintext) -> TLS -> proxy A (TLS listener) -> Tansu."""
    edge = proxy(dc1.bootstrap, extra=tls_args(pki), name="kafka-tee-tls-dc1")
    cfg = tmp_path / "upstream-tls.toml"
    cfg.write_text(
        f'[source]\nbootstrap = ["{edge.bootstrap}"]\n'
        f'[source.tls]\nenabled = true\nca = "{pki / "ca.pem"}"\n')
    front = proxy(edge.bootstrap, config=cfg, name="kafka-tee-front")
    topic = harness.unique("up-tls")
    harness.create_topic(dc1.bootstrap, topic, partitions=1)
    sent = harness.make_records(30, tag="u")
    res = harness.produce_confluent(front.bootstrap, topic, sent)
    assert not res.errors, res.errors
    got = harness.consume_confluent(dc1.bootstrap, topic, expected=30)
    harness.assert_same_records(res.acked, got, "through TLS upstream")


def test_sni_routing_on_one_port(dc1, proxy, pki, tmp_path, monkeypatch):
    """One TLS port for every broker: brokers are named broker-<id>.kafka.test and the
    server name the client asks for picks the broker. kafka-python resolves names with
    socket.getaddrinfo, which the test points at 127.0.0.1 for *.kafka.test."""
    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):
        if isinstance(host, str) and host.endswith(".kafka.test"):
            host = HOST
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    cfg = tmp_path / "sni.toml"
    cfg.write_text(f'[tls]\ncert = "{pki / "server.pem"}"\nkey = "{pki / "server.key"}"\n'
                   'sni_domain = "kafka.test"\n')
    p = proxy(dc1.bootstrap, config=cfg)
    topic = harness.unique("sni")
    harness.create_topic(dc1.bootstrap, topic, partitions=2)
    tls = dict(security_protocol="SSL", ssl_cafile=str(pki / "ca.pem"))

    from kafka import KafkaAdminClient

    a = KafkaAdminClient(bootstrap_servers=p.bootstrap, **tls)
    try:
        brokers = a.describe_cluster()["brokers"]
    finally:
        a.close()
    assert brokers and all(
        b["host"] == f"broker-{b.get('node_id', b.get('broker_id'))}.kafka.test"
        and b["port"] == p.port
        for b in brokers
    ), brokers

    sent = harness.make_records(30, tag="sni", partitions=2)
    res = harness.produce_kafka_python(p.bootstrap, topic, sent, **tls)
    assert not res.errors, res.errors
    got = harness.consume_kafka_python(p.bootstrap, topic, expected=30, **tls)
    harness.assert_same_records(res.acked, got, "through SNI routing")
    # No per-broker port was opened.
    with pytest.raises(OSError):
        socket.create_connection((HOST, p.port + 1), timeout=2).close()
