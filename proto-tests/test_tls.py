"""TLS at the edge: real clients (confluent-kafka, kafka-python) over TLS through the
proxy, mTLS accepted and refused, plaintext refused on a TLS port, certificate reload,
TLS from the proxy to its upstream (a second kafka-tee acting as a TLS DC1), each kind
of handshake failure named in the log and counted by cause, and README's certificate
recipe."""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
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


# ------------------------------------------------------- handshake failures by cause


_CA_CNF = """\
[ca]
default_ca = test_ca
[test_ca]
database = index.txt
new_certs_dir = .
serial = serial
unique_subject = no
default_md = sha256
policy = any
x509_extensions = client_ext
[any]
commonName = supplied
[client_ext]
basicConstraints = CA:FALSE
keyUsage = digitalSignature
extendedKeyUsage = clientAuth
"""


def _csr(d: Path, name: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)


def _make_dated_client(d: Path, name: str, start: str, end: str) -> None:
    """A v3 client certificate from the test CA valid from `start` to `end`
    (YYYYMMDDHHMMSSZ): `openssl x509` cannot set dates in the past, `openssl ca` can."""
    if not (d / "ca.cnf").exists():
        (d / "ca.cnf").write_text(_CA_CNF)
        (d / "index.txt").write_text("")
        (d / "serial").write_text("1000\n")
    _csr(d, name)
    _openssl("ca", "-batch", "-notext", "-config", "ca.cnf", "-cert", "ca.pem",
             "-keyfile", "ca.key", "-in", f"{name}.csr", "-out", f"{name}.pem",
             "-startdate", start, "-enddate", end, cwd=d)


def _x509_version(cert: Path) -> int:
    text = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-text"],
                          check=True, capture_output=True, text=True).stdout
    m = re.search(r"Version: (\d+)", text)
    assert m, text
    return int(m.group(1))


@pytest.fixture
def bad_clients(pki: Path) -> Path:
    """Client certificates the proxy must refuse, each for one reason: X.509 v1 (plain
    `openssl x509 -req`, OpenSSL's default without extensions), expired, not valid yet.
    (`rogue-client` from `pki` is the one from an unknown CA.)"""
    _csr(pki, "v1-client")
    _openssl("x509", "-req", "-in", "v1-client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-out", "v1-client.pem", cwd=pki)
    _make_dated_client(pki, "expired-client", "20200101000000Z", "20200201000000Z")
    _make_dated_client(pki, "future-client", "20990101000000Z", "20990201000000Z")
    assert _x509_version(pki / "v1-client.pem") == 1
    for good in ("client", "rogue-client", "expired-client", "future-client"):
        assert _x509_version(pki / f"{good}.pem") == 3, good
    return pki


_FAILURE_SERIES = re.compile(
    r'^kafka_tee_tls_handshake_failures_total\{cause="([a-z0-9_]+)"\} (\S+)$', re.M)


def _failures_by_cause(px: harness.Proxy) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://{HOST}:{px.admin_port}/metrics",
                                  timeout=5).read().decode()
    return {cause: float(v) for cause, v in _FAILURE_SERIES.findall(body)}


def _handshake(pki: Path, port: int, ca: str = "ca", client: str | None = None) -> None:
    """One TLS connection as a client would make it: handshake, then a Kafka request,
    reading until the proxy answers or closes. Errors are expected and ignored; the
    proxy's log and metrics are what the tests look at."""
    ctx = ssl.create_default_context(cafile=str(pki / f"{ca}.pem"))
    if client:
        ctx.load_cert_chain(str(pki / f"{client}.pem"), str(pki / f"{client}.key"))
    try:
        with socket.create_connection((HOST, port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                # With TLS 1.3 the client's side of the handshake is done before the
                # proxy has checked the client certificate: its verdict comes next.
                s.sendall(harness.api_versions_v0(1))
                s.recv(4096)
    except (ssl.SSLError, OSError):
        pass


def _plaintext(pki: Path, port: int) -> None:
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(harness.api_versions_v0(1))
        harness.wait_closed(s, 5)


def _failure_lines(px: harness.Proxy, cause: str) -> list[str]:
    return [line for line in px.proc.log_text().splitlines()
            if "TLS handshake failed" in line and f"cause=\"{cause}\"" in line]


# (cause label, how the client fails, words the one log line must hold)
FAILURES = [
    ("plaintext_client", _plaintext,
     ["plaintext client on a TLS port", "security.protocol=SSL"]),
    ("no_client_cert", lambda pki, port: _handshake(pki, port),
     ["client sent no certificate", "tls.client_ca", "ssl.certificate.location"]),
    ("client_cert_v1", lambda pki, port: _handshake(pki, port, client="v1-client"),
     ["X.509 v1", "re-issue it as X.509 v3",
      "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key",
      "-extfile <(printf 'basicConstraints=CA:FALSE\\nkeyUsage=digitalSignature"
      "\\nextendedKeyUsage=clientAuth')"]),
    ("client_cert_unknown_ca", lambda pki, port: _handshake(pki, port, client="rogue-client"),
     ["not issued by a CA in tls.client_ca", "issue it from that CA"]),
    ("client_cert_expired", lambda pki, port: _handshake(pki, port, client="expired-client"),
     ["client certificate has expired", "issue a new one"]),
    ("client_cert_not_yet_valid",
     lambda pki, port: _handshake(pki, port, client="future-client"),
     ["not valid yet", "clock"]),
    ("server_cert_rejected", lambda pki, port: _handshake(pki, port, ca="rogue-ca"),
     ["client refused the proxy's certificate", "ssl.ca.location"]),
]


@pytest.mark.parametrize("cause,fail,words", FAILURES, ids=[f[0] for f in FAILURES])
def test_handshake_failure_is_named_and_counted(dc1, proxy, bad_clients, cause, fail, words):
    pki = bad_clients
    p = proxy(dc1.bootstrap, admin=True, extra=tls_args(pki, client_ca=True))
    before = _failures_by_cause(p)
    # Every cause is exported from the start, so rate() has a series to work on.
    assert set(before) >= {c for c, _, _ in FAILURES} | {"timeout", "other"}, before
    assert before[cause] == 0, before

    fail(pki, p.port)

    deadline = time.monotonic() + 10
    while not _failure_lines(p, cause) and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = _failure_lines(p, cause)
    assert len(lines) == 1, p.proc.log_tail(30)
    for w in words:
        assert w in lines[0], f"{w!r} not in the log line: {lines[0]}"
    after = _failures_by_cause(p)
    # client_closed is left out: the harness's port probe (connect, close) counts there,
    # and may do so only after `before` was read.
    grown = {c: after[c] - before.get(c, 0) for c in after
             if after[c] != before.get(c, 0) and c != "client_closed"}
    assert grown == {cause: 1}, f"counted {grown}, expected one {cause}"
    # A good client is still served.
    assert _can_list_topics(p.bootstrap, ssl_conf(pki, client="client"))


def test_v1_certificate_advice_works_as_printed(dc1, proxy, bad_clients, tmp_path):
    """The issue's case: librdkafka with a v1 client certificate. The command the log
    line prints, run as printed on the same CSR and CA, gives a certificate the proxy
    accepts."""
    pki = bad_clients
    p = proxy(dc1.bootstrap, admin=True, extra=tls_args(pki, client_ca=True))
    assert not _can_list_topics(p.bootstrap, ssl_conf(pki, client="v1-client"))
    lines = _failure_lines(p, "client_cert_v1")
    assert lines, p.proc.log_tail(30)
    assert _failures_by_cause(p)["client_cert_v1"] >= 1

    m = re.search(r"(openssl x509 -req .*?'\))", lines[0])
    assert m, lines[0]
    work = tmp_path / "reissue"
    work.mkdir()
    for src, dst in [("v1-client.csr", "client.csr"), ("ca.pem", "ca.pem"),
                     ("ca.key", "ca.key"), ("v1-client.key", "client.key")]:
        shutil.copy(pki / src, work / dst)
    subprocess.run(["bash", "-c", m.group(1)], cwd=work, check=True, capture_output=True)
    assert _x509_version(work / "client.pem") == 3
    conf = {**ssl_conf(pki), "ssl.certificate.location": str(work / "client.pem"),
            "ssl.key.location": str(work / "client.key")}
    assert _can_list_topics(p.bootstrap, conf)


# ----------------------------------------------------------- README's certificates


def _readme_tls_recipe() -> str:
    readme = (harness.REPO / "README.md").read_text()
    section = readme.split("\n## TLS\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    recipe = [b for b in blocks if "openssl" in b]
    assert len(recipe) == 1, "README's TLS section should have one block of openssl lines"
    return recipe[0]


def test_readme_mtls_recipe_makes_v3_certificates_the_proxy_accepts(dc1, proxy, tmp_path):
    work = tmp_path / "readme-pki"
    work.mkdir()
    recipe = _readme_tls_recipe()
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", recipe], cwd=work,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for cert in ("ca.pem", "proxy.pem", "client.pem"):
        assert _x509_version(work / cert) == 3, cert
    p = proxy(dc1.bootstrap, extra=["--tls-cert", str(work / "proxy.pem"),
                                    "--tls-key", str(work / "proxy.key"),
                                    "--tls-client-ca", str(work / "ca.pem")])
    conf = {"security.protocol": "SSL", "ssl.ca.location": str(work / "ca.pem"),
            "ssl.certificate.location": str(work / "client.pem"),
            "ssl.key.location": str(work / "client.key")}
    assert _can_list_topics(p.bootstrap, conf), p.proc.log_tail(20)
    assert "TLS handshake failed" not in p.proc.log_text()
