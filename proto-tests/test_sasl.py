"""SASL on kafka-tee's own connections, against brokers that require a login (a Tansu
broker behind the SASL gate of saslgate.py, whose metadata points every client at the
gate):

- the replicator logs in to DC2 with `[target.sasl]` (PLAIN, SCRAM-SHA-256,
  SCRAM-SHA-512; password inline, from a file, from the environment) and DC2 gets every
  record; `kafka-tee verify --config` logs in to both clusters the same way;
- SASL sessions with a lifetime (KIP-368) are renewed before they end, nothing lost;
- a refused login keeps the data queued (nothing dropped, the log says why, never the
  password) until the credentials are fixed on the broker, then everything arrives;
- DC1 requiring SASL: clients log in through the proxy (their SASL frames pass through
  untouched) and the replicator's catch-up reads from DC1 log in with `[source.sasl]`.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import harness
import teeutil
from saslgate import SaslBroker, start_sasl_broker
from teeutil import make_trecords, write_config

TEE_USER, TEE_PASSWORD = "kafka-tee", "tee-Secret-7f3a"
CLIENT_USER, CLIENT_PASSWORD = "alice", "alice-Secret-91c2"
N = 60


@pytest.fixture
def sasl_broker(request, logdir):
    """Factory: sasl_broker("dc2", users) starts a Tansu broker behind a SASL gate."""
    started: list[SaslBroker] = []

    def start(name: str, users: dict[str, str]) -> SaslBroker:
        sb = start_sasl_broker(name, logdir, users)
        teeutil.register(request, sb.broker.proc)
        started.append(sb)
        return sb

    yield start
    for sb in started:
        try:
            sb.broker.stop()
        finally:
            sb.gate.stop()


def _sasl_section(mechanism: str, source: str, tmp_path: Path, monkeypatch,
                  password: str = TEE_PASSWORD) -> dict:
    """A [*.sasl] table taking the password from `source`: inline, file or env."""
    section = {"mechanism": mechanism, "username": TEE_USER}
    if source == "inline":
        section["password"] = password
    elif source == "file":
        f = tmp_path / f"pw-{mechanism}"
        f.write_text(password + "\n")
        section["password_file"] = str(f)
    else:
        monkeypatch.setenv("KAFKA_TEE_TEST_DC2_PASSWORD", password)
        section["password_env"] = "KAFKA_TEE_TEST_DC2_PASSWORD"
    return section


def _verify(cfg: Path, source: str, target: str, topic: str):
    argv = [str(harness.kafka_tee_bin()), "verify", "--config", str(cfg), "--source", source,
            "--target", target, "--topic", topic]
    return harness.run_proxy_expecting_exit(argv, timeout=90)


def _wait_verified(cfg: Path, source: str, target: str, topic: str, timeout: float):
    """Runs `kafka-tee verify` until it says identical (or `timeout`); returns the last
    run."""
    deadline = time.monotonic() + timeout
    while True:
        res = _verify(cfg, source, target, topic)
        if res.returncode == 0 or time.monotonic() > deadline:
            return res
        time.sleep(1)


def _produce(bootstrap: str, topic: str, tag: str, **conf) -> list[harness.Rec]:
    sent = make_trecords(N, tag, value_size=200)
    res = teeutil.produce_confluent(bootstrap, topic, sent, **{"batch.num.messages": 10},
                                    **conf)
    assert not res.errors, res.errors
    assert len(res.acked) == N
    return res.acked


def _no_secret_in(px: harness.Proxy, *secrets: str) -> None:
    """No password in the proxy's log, metrics or status report."""
    import urllib.request

    texts = {"log": px.proc.log_text()}
    for path in ("metrics", "status.json"):
        texts[path] = urllib.request.urlopen(
            f"http://{harness.HOST}:{px.admin_port}/{path}", timeout=5).read().decode()
    for s in secrets:
        for where, text in texts.items():
            assert s not in text, f"a password appears in the proxy's {where}"


@pytest.mark.parametrize("mechanism,source", [("PLAIN", "inline"),
                                              ("SCRAM-SHA-256", "file"),
                                              ("SCRAM-SHA-512", "env")])
def test_replicator_logs_in_to_dc2(dc1, sasl_broker, proxy, tmp_path, monkeypatch,
                                   mechanism, source):
    dc2 = sasl_broker("dc2", {TEE_USER: TEE_PASSWORD})
    cfg = write_config(tmp_path / "tee.toml", {
        "target.sasl": _sasl_section(mechanism, source, tmp_path, monkeypatch)})
    px = proxy(dc1.bootstrap, target=dc2.bootstrap, config=cfg, admin=True)
    topic = harness.unique(f"sasl-{mechanism.lower()}")
    harness.create_topic(px.bootstrap, topic, partitions=2)
    _produce(px.bootstrap, topic, "s")
    res = _wait_verified(cfg, dc1.bootstrap, dc2.bootstrap, topic, timeout=40)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "verify: identical" in res.stdout
    assert (TEE_USER, mechanism) in dc2.gate.authenticated
    assert dc2.gate.failures == [] and dc2.gate.refused_unauthenticated == 0
    assert teeutil.metric(px, "kafka_tee_data_lost_records_total") == 0
    _no_secret_in(px, TEE_PASSWORD)
    if mechanism == "PLAIN":
        assert "SASL PLAIN without TLS" in px.proc.log_text()


def test_refused_login_keeps_data_until_credentials_are_fixed(dc1, sasl_broker, proxy,
                                                              tmp_path, monkeypatch):
    dc2 = sasl_broker("dc2", {TEE_USER: "rotated-on-the-broker"})
    cfg = write_config(tmp_path / "tee.toml", {
        "target.sasl": _sasl_section("SCRAM-SHA-512", "inline", tmp_path, monkeypatch),
        "replication": {"retry_backoff_max_ms": 500}})
    px = proxy(dc1.bootstrap, target=dc2.bootstrap, config=cfg, admin=True)
    topic = harness.unique("sasl-refused")
    harness.create_topic(px.bootstrap, topic, partitions=1)
    _produce(px.bootstrap, topic, "r")

    deadline = time.monotonic() + 20
    lines: list[str] = []
    while not lines and time.monotonic() < deadline:
        lines = [ln for ln in px.proc.log_text().splitlines()
                 if "SASL SCRAM-SHA-512 login" in ln and "failed" in ln]
        time.sleep(0.25)
    assert lines, "no log line says the DC2 login failed"
    assert "Authentication failed" in lines[0], lines[0]
    assert dc2.gate.failures and dc2.gate.failures[0][0] == TEE_USER
    assert dc2.gate.authenticated == []
    assert teeutil.metric(px, "kafka_tee_upstream_connect_failures_total",
                          'cluster="DC2",stage="login"') >= 1
    assert teeutil.metric(px, "kafka_tee_replicated_batches_total") == 0
    assert teeutil.metric(px, "kafka_tee_data_lost_records_total") == 0

    # The operator fixes the password on the broker; nothing else changes.
    dc2.gate.set_password(TEE_USER, TEE_PASSWORD)
    res = _wait_verified(cfg, dc1.bootstrap, dc2.bootstrap, topic, timeout=40)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (TEE_USER, "SCRAM-SHA-512") in dc2.gate.authenticated
    assert teeutil.metric(px, "kafka_tee_data_lost_records_total") == 0
    _no_secret_in(px, TEE_PASSWORD, "rotated-on-the-broker")


def test_sasl_dc1_clients_pass_through_and_catchup_logs_in(sasl_broker, proxy, tmp_path,
                                                           monkeypatch):
    """DC1 requires SASL too. A client logs in through the proxy with its own
    credentials (kafka-tee never sees them as anything but opaque frames); a memory bound
    of 1 KiB makes the replicator read the data back from DC1, which needs
    `[source.sasl]`."""
    dc1 = sasl_broker("dc1", {CLIENT_USER: CLIENT_PASSWORD, TEE_USER: TEE_PASSWORD})
    dc2 = sasl_broker("dc2", {TEE_USER: TEE_PASSWORD})
    sasl = _sasl_section("SCRAM-SHA-256", "inline", tmp_path, monkeypatch)
    cfg = write_config(tmp_path / "tee.toml", {
        "source.sasl": sasl, "target.sasl": sasl,
        "replication": {"max_pending_bytes": 1024}})
    px = proxy(dc1.bootstrap, target=dc2.bootstrap, config=cfg, admin=True)
    client = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512",
              "sasl.username": CLIENT_USER, "sasl.password": CLIENT_PASSWORD}

    from confluent_kafka.admin import AdminClient, NewTopic

    topic = harness.unique("sasl-dc1")
    admin = AdminClient(harness.confluent_conf(px.bootstrap, **client))
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=20)
    md = admin.list_topics(timeout=10)
    assert all(b.port in px.ports for b in md.brokers.values()), md.brokers
    _produce(px.bootstrap, topic, "d", **client)

    res = _wait_verified(cfg, dc1.bootstrap, dc2.bootstrap, topic, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (CLIENT_USER, "SCRAM-SHA-512") in dc1.gate.authenticated
    assert (TEE_USER, "SCRAM-SHA-256") in dc1.gate.authenticated
    assert teeutil.metric(px, "kafka_tee_catchup_batches_total") > 0
    assert teeutil.metric(px, "kafka_tee_data_lost_records_total") == 0

    # A client with a wrong password is refused by DC1, through the proxy.
    bad = AdminClient(harness.confluent_conf(px.bootstrap, **dict(
        client, **{"sasl.password": "wrong"})))
    with pytest.raises(Exception):
        bad.list_topics(timeout=4)
    assert any(f[0] == CLIENT_USER for f in dc1.gate.failures)
    _no_secret_in(px, TEE_PASSWORD, CLIENT_PASSWORD)


def test_sessions_that_expire_lose_nothing(dc1, sasl_broker, proxy, tmp_path, monkeypatch):
    """DC2 grants 2-second SASL sessions (KIP-368) and closes a connection when its
    session ends. Traffic for 7 s spans several sessions: kafka-tee logs in again
    (renewing at 80% of the lifetime) and DC2 still gets every record."""
    dc2 = sasl_broker("dc2", {TEE_USER: TEE_PASSWORD})
    dc2.gate.session_lifetime_ms = 2000
    cfg = write_config(tmp_path / "tee.toml", {
        "target.sasl": _sasl_section("SCRAM-SHA-256", "inline", tmp_path, monkeypatch)})
    px = proxy(dc1.bootstrap, target=dc2.bootstrap, config=cfg, admin=True)
    topic = harness.unique("sasl-lifetime")
    harness.create_topic(px.bootstrap, topic, partitions=1)
    from confluent_kafka import Producer

    p = Producer(harness.confluent_conf(px.bootstrap, **{"linger.ms": 0}))
    errors: list[str] = []
    sent = 0
    t_end = time.monotonic() + 7
    while time.monotonic() < t_end:
        for _ in range(5):
            p.produce(topic, value=f"v{sent}".encode(), key=f"k{sent}".encode(),
                      on_delivery=lambda e, m: errors.append(str(e)) if e else None)
            sent += 1
        p.poll(0)
        time.sleep(0.2)
    assert p.flush(30) == 0
    assert not errors, errors[:3]
    res = _wait_verified(cfg, dc1.bootstrap, dc2.bootstrap, topic, timeout=40)
    assert res.returncode == 0, res.stdout + res.stderr
    logins = dc2.gate.authenticated.count((TEE_USER, "SCRAM-SHA-256"))
    print(f"{sent} records, {logins} logins, {dc2.gate.expired_sessions} sessions ended "
          "by the gate")
    assert logins >= 4, f"only {logins} logins in 7 s of 2-second sessions"
    # Renewed before the end: the gate seldom has to cut a session (without renewal,
    # nearly every login would follow a cut).
    assert dc2.gate.expired_sessions < logins // 2, dc2.gate.expired_sessions
    assert teeutil.metric(px, "kafka_tee_data_lost_records_total") == 0
