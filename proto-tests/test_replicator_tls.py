"""TLS from the replicator to DC2: a kafka-tee "edge" proxy with a TLS listener stands
in front of the DC2 Tansu broker (a TLS-speaking DC2), and the main kafka-tee
replicates to it with `[target.tls]`. Also: a wrong CA keeps data out of DC2 and the
log names the TLS failure; the replication latency and oldest-pending metrics after
traffic."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

import harness
import teeutil
from teeutil import make_trecords

N = 50


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True,
                   timeout=60)


def _make_ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)


def _make_server(d: Path, ca: str, name: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-extfile", ext.name, "-out", f"{name}.pem",
             cwd=d)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1 it signed, and an unrelated CA."""
    d = tmp_path / "pki"
    d.mkdir()
    _make_ca(d, "ca")
    _make_ca(d, "other-ca")
    _make_server(d, "ca", "dc2-edge")
    return d


def _tls_dc2(dc2, proxy, pki: Path) -> harness.Proxy:
    """DC2 as a TLS endpoint: a kafka-tee without replication, TLS on every port."""
    return proxy(dc2.bootstrap, name="dc2-tls-edge",
                 extra=["--tls-cert", str(pki / "dc2-edge.pem"),
                        "--tls-key", str(pki / "dc2-edge.key")])


def _tee(dc1, proxy, edge: harness.Proxy, ca: Path, tmp_path: Path) -> harness.Proxy:
    cfg = tmp_path / "target-tls.toml"
    cfg.write_text(f'[target.tls]\nenabled = true\nca = "{ca}"\n')
    return proxy(dc1.bootstrap, target=edge.bootstrap, config=cfg, admin=True,
                 name="kafka-tee")


def _wait_topic(bootstrap: str, topic: str, timeout: float) -> bool:
    """Whether `topic` shows up in a listing of every topic (never asked for by name:
    Tansu would create it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if topic in teeutil.topic_names(bootstrap, timeout=5):
            return True
        time.sleep(0.25)
    return False


def _produce(px: harness.Proxy, topic: str) -> list[harness.Rec]:
    harness.create_topic(px.bootstrap, topic, partitions=1)
    sent = make_trecords(N, "tls")
    res = teeutil.produce_confluent(px.bootstrap, topic, sent, **{"batch.num.messages": 10})
    assert not res.errors, res.errors
    assert len(res.acked) == N
    return res.acked


def _metrics_text(px) -> str:
    import urllib.request

    return urllib.request.urlopen(f"http://{harness.HOST}:{px.admin_port}/metrics",
                                  timeout=5).read().decode()


def _wait_metric(px, name: str, ok, timeout: float, label: str = "") -> float:
    deadline = time.monotonic() + timeout
    while True:
        v = teeutil.metric(px, name, label)
        if ok(v) or time.monotonic() > deadline:
            return v
        time.sleep(0.2)


def test_replicator_reaches_dc2_over_tls(dc1, dc2, proxy, pki, tmp_path):
    edge = _tls_dc2(dc2, proxy, pki)
    px = _tee(dc1, proxy, edge, pki / "ca.pem", tmp_path)
    topic = harness.unique("repl-tls")
    acked = _produce(px, topic)
    assert _wait_topic(dc2.bootstrap, topic, 30), f"{topic} never appeared in DC2"
    got = teeutil.read_count(dc2.bootstrap, topic, N, timeout=30)
    assert sorted(r.value for r in got) == sorted(r.value for r in acked)
    assert len(got) == N


def test_wrong_ca_keeps_data_out_of_dc2_and_says_why(dc1, dc2, proxy, pki, tmp_path):
    edge = _tls_dc2(dc2, proxy, pki)
    px = _tee(dc1, proxy, edge, pki / "other-ca.pem", tmp_path)
    topic = harness.unique("repl-badca")
    _produce(px, topic)
    deadline = time.monotonic() + 20
    log = ""
    while time.monotonic() < deadline:
        log = px.proc.log_text()
        if any("DC2" in line and "TLS handshake failed" in line for line in log.splitlines()):
            break
        time.sleep(0.25)
    lines = [line for line in log.splitlines() if "DC2" in line and "TLS handshake failed" in line]
    assert lines, "no log line names a TLS failure towards DC2"
    assert topic not in teeutil.topic_names(dc2.bootstrap)
    assert teeutil.metric(px, "kafka_tee_replicated_batches_total") == 0
    # The data waits: the age of the oldest batch grows, its bytes are counted.
    label = f'topic="{topic}"'
    age = _wait_metric(px, "kafka_tee_replication_oldest_pending_seconds",
                       lambda v: v >= 1, 10, label)
    assert age >= 1
    assert teeutil.metric(px, "kafka_tee_replication_lag_bytes", label) > 0
    assert teeutil.metric(px, "kafka_tee_replication_latency_seconds_count") == 0


def test_latency_histogram_and_oldest_pending_after_traffic(dc1, dc2, proxy, pki, tmp_path):
    edge = _tls_dc2(dc2, proxy, pki)
    px = _tee(dc1, proxy, edge, pki / "ca.pem", tmp_path)
    topic = harness.unique("repl-lat")
    _produce(px, topic)
    assert _wait_topic(dc2.bootstrap, topic, 30), f"{topic} never appeared in DC2"
    teeutil.read_count(dc2.bootstrap, topic, N, timeout=30)
    label = f'topic="{topic}"'
    body = _metrics_text(px)
    assert f'kafka_tee_replication_oldest_pending_seconds{{{label}}}' in body
    oldest = _wait_metric(px, "kafka_tee_replication_oldest_pending_seconds",
                          lambda v: v == 0, 20, label)
    assert oldest == 0
    lag = _wait_metric(px, "kafka_tee_replication_lag_bytes", lambda v: v == 0, 20, label)
    assert lag == 0
    batches = teeutil.metric(px, "kafka_tee_replicated_batches_total")
    assert batches >= 1
    count = teeutil.metric(px, "kafka_tee_replication_latency_seconds_count")
    assert count == batches, (count, batches)
    total = teeutil.metric(px, "kafka_tee_replication_latency_seconds_sum")
    assert 0 < total < 30 * batches
    # The status report's partition rows come from the replicator itself.
    import json
    import urllib.request

    report = json.loads(urllib.request.urlopen(
        f"http://{harness.HOST}:{px.admin_port}/status.json", timeout=5).read())
    rows = [r for r in report["replication"]["partitions"] if r["topic"] == topic]
    assert [(r["partition"], r["lag_records"], r["lag_bytes"], r["oldest_pending_seconds"],
             r["state"]) for r in rows] == [(0, 0, 0, 0.0, "in sync")], rows
    assert rows[0]["replicated_offset"] == N - 1


def test_catchup_reads_dc1_over_tls(dc1, dc2, proxy, pki, tmp_path):
    """DC1 behind a TLS edge too, and a memory bound so small that batches are read back
    from DC1 (Fetch over TLS) before they go to DC2 (over TLS)."""
    dc1_edge = proxy(dc1.bootstrap, name="dc1-tls-edge",
                     extra=["--tls-cert", str(pki / "dc2-edge.pem"),
                            "--tls-key", str(pki / "dc2-edge.key")])
    dc2_edge = _tls_dc2(dc2, proxy, pki)
    ca = pki / "ca.pem"
    cfg = tmp_path / "both-tls.toml"
    cfg.write_text(f'[source.tls]\nenabled = true\nca = "{ca}"\n'
                   f'[target.tls]\nenabled = true\nca = "{ca}"\n'
                   '[replication]\nmax_pending_bytes = 1024\n')
    px = proxy(dc1_edge.bootstrap, target=dc2_edge.bootstrap, config=cfg, admin=True,
               name="kafka-tee")
    topic = harness.unique("repl-tls-catchup")
    harness.create_topic(px.bootstrap, topic, partitions=1)
    sent = make_trecords(N, "c", value_size=200)
    res = teeutil.produce_confluent(px.bootstrap, topic, sent, **{"batch.num.messages": 10})
    assert not res.errors, res.errors
    assert _wait_topic(dc2.bootstrap, topic, 30), f"{topic} never appeared in DC2"
    got = teeutil.read_count(dc2.bootstrap, topic, N, timeout=30)
    assert sorted(r.value for r in got) == sorted(r.value for r in res.acked)
    assert teeutil.metric(px, "kafka_tee_catchup_batches_total") > 0
    assert teeutil.metric(px, "kafka_tee_data_lost_records_total") == 0
