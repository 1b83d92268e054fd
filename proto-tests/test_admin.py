"""Operability: the admin endpoint (/metrics, /healthz, /readyz, /, /status.json),
`kafka-tee status` and `kafka-tee check-config`, against real Tansu brokers and real
client traffic. The numbers on /metrics must match the traffic that was sent."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request

import pytest

import harness
from harness import HOST, create_topic, make_records, produce_confluent, unique

N_RECORDS = 200
PARTITIONS = 2


# ----------------------------------------------------------------------- helpers


def http(port: int, path: str, timeout: float = 5) -> tuple[int, str, str]:
    """GET http://127.0.0.1:port/path -> (status, content type, body), 4xx/5xx
    included."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Metrics:
    """Parsed Prometheus text."""

    def __init__(self, text: str):
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = []
        self.help: dict[str, str] = {}
        self.type: dict[str, str] = {}
        for line in text.splitlines():
            if line.startswith("# HELP "):
                name, _, doc = line[7:].partition(" ")
                self.help[name] = doc
            elif line.startswith("# TYPE "):
                name, _, kind = line[7:].partition(" ")
                self.type[name] = kind
            elif line and not line.startswith("#"):
                m = _SAMPLE.match(line)
                assert m, f"unparsable metrics line: {line!r}"
                labels = dict(_LABEL.findall(m.group(2) or ""))
                self.samples.append((m.group(1), labels, float(m.group(3))))

    def get(self, name: str, **labels: str) -> float | None:
        """Sum of the series of `name` whose labels include `labels`; None if none."""
        hits = [v for n, ls, v in self.samples
                if n == name and all(ls.get(k) == v2 for k, v2 in labels.items())]
        return sum(hits) if hits else None

    def value(self, name: str, **labels: str) -> float:
        v = self.get(name, **labels)
        assert v is not None, f"no sample of {name}{labels or ''} in:\n{self.text}"
        return v


def metrics(px: harness.Proxy) -> Metrics:
    status, ctype, body = http(px.admin_port, "/metrics")
    assert status == 200, body
    assert ctype.startswith("text/plain"), ctype
    return Metrics(body)


def wait_for(what: str, fn, timeout: float = 30, every: float = 0.2):
    """Calls fn until it returns a truthy value; fails naming `what` after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([str(harness.kafka_tee_bin()), *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------- tests


def test_metrics_health_and_status_match_traffic(dc1, dc2, proxy):
    px = proxy(dc1.bootstrap, target=dc2.bootstrap, admin=True,
               extra=["--log", "info,kafka_tee=debug"])
    status, ctype, body = http(px.admin_port, "/healthz")
    assert (status, body) == (200, "ok\n") and ctype.startswith("text/plain")
    wait_for("/readyz to answer 200", lambda: http(px.admin_port, "/readyz")[0] == 200,
             timeout=15)

    topic = unique("admin")
    create_topic(px.bootstrap, topic, partitions=PARTITIONS)
    sent = make_records(N_RECORDS, "adm", partitions=PARTITIONS, value_size=100)
    res = produce_confluent(px.bootstrap, topic, sent)
    assert res.errors == [], res.errors[:5]
    assert len(res.acked) == N_RECORDS

    m = metrics(px)
    # every metric with a sample is described
    names = {n for n, _, _ in m.samples}
    for n in names:
        base = re.sub(r"_(bucket|sum|count)$", "", n) if n not in m.type else n
        assert base.startswith("kafka_tee_"), f"{n} lacks the kafka_tee_ prefix"
        assert m.help.get(base), f"{base} has no HELP line"
        assert base in m.type, f"{base} has no TYPE line"
    assert m.type["kafka_tee_requests_total"] == "counter"
    assert m.type["kafka_tee_request_duration_seconds"] == "histogram"
    assert m.type["kafka_tee_connections_open"] == "gauge"

    # the numbers follow the traffic
    assert m.value("kafka_tee_requests_total", api="Produce") > 0
    assert m.value("kafka_tee_requests_total", api="Metadata") > 0
    assert m.value("kafka_tee_request_duration_seconds_count", api="Produce") > 0
    assert m.value("kafka_tee_produce_acked_records_total") == N_RECORDS
    batches = m.value("kafka_tee_produce_acked_batches_total")
    assert 1 <= batches <= N_RECORDS
    assert m.value("kafka_tee_produce_acked_bytes_total") >= N_RECORDS * 100
    assert m.value("kafka_tee_client_bytes_in_total") >= N_RECORDS * 100
    assert m.value("kafka_tee_client_bytes_out_total") > 0
    assert m.value("kafka_tee_connections_accepted_total") >= 2  # bootstrap + broker port
    assert m.value("kafka_tee_connections_refused_total") == 0
    assert m.value("kafka_tee_data_lost_records_total") == 0
    assert m.value("kafka_tee_ready") == 1
    assert m.value("kafka_tee_pending_bytes_limit") > 0
    assert m.value("kafka_tee_build_info") == 1

    # /status.json and the page say the same
    status, ctype, body = http(px.admin_port, "/status.json")
    assert status == 200 and ctype.startswith("application/json"), (status, ctype)
    report = json.loads(body)
    assert report["ready"] is True, report
    assert report["listeners"]["bootstrap"] == px.bootstrap
    assert report["listeners"]["admin"] == f"{HOST}:{px.admin_port}"
    assert report["listeners"]["brokers"], "no broker listener after traffic"
    assert report["replication"]["enabled"] is True
    assert report["replication"]["acked_records_total"] == N_RECORDS
    assert report["source"] == [dc1.bootstrap] and report["target"] == [dc2.bootstrap]

    status, ctype, page = http(px.admin_port, "/")
    assert status == 200 and ctype.startswith("text/html"), (status, ctype)
    for needle in ("kafka-tee", px.bootstrap, dc1.bootstrap, "Replication", "ready"):
        assert needle in page, f"{needle!r} missing from the status page"

    # one span per connection, naming the peer and the listener
    log = px.proc.log_text()
    assert re.search(r"conn\{peer=127\.0\.0\.1:\d+ listener=bootstrap ", log), log[-3000:]
    assert re.search(r"conn\{peer=127\.0\.0\.1:\d+ listener=broker \d+ ", log), log[-3000:]

    # stops cleanly, admin endpoint included
    assert px.stop() == 0
    status = None
    try:
        status = http(px.admin_port, "/healthz", timeout=2)[0]
    except OSError:
        pass
    assert status is None, "admin endpoint still answering after exit"


def test_replicated_records_match_traffic(dc1, dc2, proxy):
    px = proxy(dc1.bootstrap, target=dc2.bootstrap, admin=True)
    topic = unique("admin-repl")
    create_topic(px.bootstrap, topic, partitions=PARTITIONS)
    res = produce_confluent(px.bootstrap, topic,
                            make_records(N_RECORDS, "rep", partitions=PARTITIONS))
    assert res.errors == [], res.errors[:5]

    wait_for(f"kafka_tee_replicated_records_total == {N_RECORDS}",
             lambda: metrics(px).get("kafka_tee_replicated_records_total") == N_RECORDS,
             timeout=60)
    m = metrics(px)
    assert m.value("kafka_tee_produce_acked_records_total") == N_RECORDS
    assert m.value("kafka_tee_replicated_batches_total") >= 1
    assert m.value("kafka_tee_data_lost_records_total") == 0
    wait_for("replication lag back to 0", lambda: metrics(px).get(
        "kafka_tee_replication_lag_records", topic=topic) in (None, 0.0), timeout=30)

    # per-partition rows: DC2 holds each partition up to its last acked offset
    last = {}
    for r in res.acked:
        last[r.partition] = max(last.get(r.partition, -1), r.offset)
    report = json.loads(http(px.admin_port, "/status.json")[2])
    rows = {row["partition"]: row for row in report["replication"]["partitions"]
            if row["topic"] == topic}
    assert set(rows) == set(last), rows
    for p, off in last.items():
        assert rows[p]["replicated_offset"] == off, rows[p]
        assert rows[p]["state"] in ("in sync", "idle"), rows[p]

    # the terminal table, as a person at a shell sees it
    r = run_cli("status", "--admin", f"{HOST}:{px.admin_port}")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "READY" in out and "NOT READY" not in out, out
    for needle in ("TOPIC", "PARTITION", "LAG RECORDS", "LAG BYTES", "THROUGHPUT", "STATE",
                   topic, f"replicated {N_RECORDS}"):
        assert needle in out, f"{needle!r} missing from:\n{out}"
    r = run_cli("status", "--admin", f"{HOST}:{px.admin_port}", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["replication"]["replicated_records_total"] == N_RECORDS


def test_readyz_follows_dc1(dc1, proxy):
    px = proxy(dc1.bootstrap, admin=True)
    wait_for("/readyz to answer 200", lambda: http(px.admin_port, "/readyz")[0] == 200,
             timeout=15)
    dc1.stop()
    status, _, body = wait_for(
        "/readyz to answer 503 with DC1 down",
        lambda: (lambda r: r if r[0] == 503 else None)(http(px.admin_port, "/readyz")),
        timeout=30, every=0.5)
    assert "DC1" in body, body
    assert http(px.admin_port, "/healthz")[0] == 200, "the process is still alive"
    assert metrics(px).value("kafka_tee_ready") == 0
    report = json.loads(http(px.admin_port, "/status.json")[2])
    assert report["ready"] is False and "DC1" in report["ready_reason"], report
    r = run_cli("status", "--admin", f"{HOST}:{px.admin_port}")
    assert r.returncode == 0, r.stderr
    assert "NOT READY" in r.stdout and "replication: off" in r.stdout, r.stdout


def test_status_command_without_endpoint(kafka_tee_bin):
    port = harness.free_port()
    r = run_cli("status", "--admin", f"{HOST}:{port}", "--timeout", "3")
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert f"cannot reach the admin endpoint at {HOST}:{port}" in r.stderr, r.stderr
    assert "panicked" not in r.stderr


def test_admin_port_in_use(dc1, kafka_tee_bin):
    import socket

    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = harness.proxy_argv(f"{HOST}:{harness.free_port_block(harness.PROXY_PORT_BLOCK)}",
                                  dc1.bootstrap, admin=f"{HOST}:{port}")
        r = harness.run_proxy_expecting_exit(argv)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "admin.listen" in out and str(port) in out, out


def test_check_config_reports_every_problem(kafka_tee_bin, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[proxy]\nlisten = "nope"\n\n'
                   '[source]\nbootstrap = ["127.0.0.1:9092"]\n\n'
                   '[replication]\nmax_in_flight_per_partition = 0\n')
    r = run_cli("check-config", str(bad))
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    problems = [line for line in r.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == 2, r.stderr
    assert any("proxy.listen" in p and "nope" in p for p in problems), problems
    assert any("max_in_flight_per_partition" in p for p in problems), problems

    good = tmp_path / "good.toml"
    good.write_text('[source]\nbootstrap = ["127.0.0.1:9092"]\n\n'
                    f'[admin]\nlisten = "{HOST}:9644"\n')
    r = run_cli("check-config", str(good))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{good}: ok"

    example = harness.REPO / "config" / "kafka-tee.toml"
    r = run_cli("check-config", str(example))
    assert r.returncode == 0, r.stderr
