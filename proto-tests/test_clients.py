"""Client matrix: five Kafka clients through kafka-tee with the tee on.

Each client produces records with keys and headers to three partitions, once per
compression codec it has, and once as an idempotent producer where it can be one; then
reads them back through the proxy with a consumer group. DC1 and DC2 are read directly:
DC1 holds what the client sent (its batches in the codec it asked for), DC2 holds DC1's
records in DC1's order per partition, with keys, values, headers and timestamps, and
`kafka-tee verify` finds the two identical.

Clients: confluent-kafka and kafka-python (Python), kcat (Debian's, librdkafka 2.0.2),
KafkaJS 2.2.4 (npm, proto-tests/clients/node) and Sarama 1.22 (Debian's Go package,
built here offline from proto-tests/clients/go). A missing client fails its tests:
`proto-tests/setup.sh` installs them all.

Where a quirk of the test broker (Tansu 0.6) blocks a client feature, a test of its own
asserts the exact error, both through the proxy and straight against Tansu, so that the
limit is named and shown to be the broker's, not the proxy's:
- TANSU_JOIN_GROUP_V1: Tansu answers JoinGroup v1 without a member id with
  MEMBER_ID_REQUIRED (KIP-394 allows that answer only from v4); Sarama 1.22 sends v1,
  so its consumer group cannot join. Its records are read by partition instead.
- TANSU_INIT_PRODUCER_ID_V0: Tansu answers InitProducerId v0 and v1 with
  UNKNOWN_SERVER_ERROR (librdkafka and kafka-python ask with v3+, which works); KafkaJS
  sends v1, Sarama v0.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pytest

import harness
import rawkafka
import teeutil
from harness import REPO, Rec, unique
from teeutil import assert_same_partitions, read_count, run_verify, sorted_by_offset

PARTITIONS = 3
PER_ROUND = 30  # records per produce round
DC2_WAIT = 45
CLIENT_TIMEOUT = 60  # seconds one driver run may take

CLIENTS_DIR = Path(__file__).resolve().parent / "clients"
NODE_DIR = CLIENTS_DIR / "node"
GO_DIR = CLIENTS_DIR / "go" / "sarama-driver"
BUILD_DIR = REPO / "target" / "proto-tests"

# Kafka error codes the tests name.
UNKNOWN_SERVER_ERROR = -1
MEMBER_ID_REQUIRED = 79

TANSU_JOIN_GROUP_V1 = ("Tansu quirk TANSU_JOIN_GROUP_V1: JoinGroup v1 is answered with "
                       "MEMBER_ID_REQUIRED (KIP-394 allows it only from v4)")
TANSU_INIT_PRODUCER_ID_V0 = ("Tansu quirk TANSU_INIT_PRODUCER_ID_V0: InitProducerId v0 and "
                             "v1 are answered with UNKNOWN_SERVER_ERROR (v3+ works)")


def _missing(what: str) -> None:
    pytest.fail(f"{what}: run proto-tests/setup.sh (a missing client is a setup bug)",
                pytrace=False)


# ----------------------------------------------------------------- the clients


@dataclass
class Consumed:
    records: list[Rec]
    errors: list[dict]


class Client:
    """How the matrix drives one client. `codecs`: the compression codecs it is asked
    to produce with; `idempotent` and `group`: whether it can be an idempotent producer
    and a group consumer against Tansu (through the proxy)."""

    name = ""
    codecs: Sequence[str] = ()
    idempotent = True
    group = True  # whether it can read with a consumer group
    # Timestamps: the Python clients set explicit ones, the others use their clock.
    timestamps = False
    null_keys = True

    def __init__(self, request, logdir: Path):
        self.request, self.logdir = request, logdir
        self.runs = 0

    def records(self, tag: str) -> list[Rec]:
        recs = teeutil.make_trecords(PER_ROUND, f"{self.name}-{tag}", partitions=PARTITIONS,
                                     with_timestamps=self.timestamps,
                                     null_keys=self.null_keys)
        return recs

    def produce(self, bootstrap: str, topic: str, records: list[Rec], codec: str,
                idempotent: bool) -> teeutil.Produced:
        raise NotImplementedError

    def consume(self, bootstrap: str, topic: str, group: str | None,
                expected: int) -> Consumed:
        raise NotImplementedError

    def run(self, argv: list[str], timeout: float = CLIENT_TIMEOUT) -> harness.Proc:
        """Runs one client process to its end (killed by pid after `timeout`); its
        output is attached to the report if the test fails."""
        self.runs += 1
        proc = harness.Proc(f"{self.name}-{self.runs}", argv,
                            self.logdir / f"{self.name}-{self.runs}.log")
        proc.start()
        teeutil.register(self.request, proc)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"{self.name} did not finish within {timeout}s\n"
                                 f"{proc.log_tail()}")
        return proc


ALL_CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


class PythonClient(Client):
    """confluent-kafka or kafka-python, through the helpers of harness and teeutil."""

    codecs = ALL_CODECS
    timestamps = True

    def consume(self, bootstrap, topic, group, expected):
        consume = (harness.consume_confluent if isinstance(self, Confluent)
                   else harness.consume_kafka_python)
        return Consumed(consume(bootstrap, topic, expected, group=group), [])


class Confluent(PythonClient):
    name = "confluent-kafka"

    def produce(self, bootstrap, topic, records, codec, idempotent):
        return teeutil.produce_confluent(bootstrap, topic, records, **{
            "compression.type": codec, "enable.idempotence": idempotent,
            "batch.num.messages": 10})


class KafkaPython(PythonClient):
    name = "kafka-python"

    def produce(self, bootstrap, topic, records, codec, idempotent):
        return teeutil.produce_kafka_python(bootstrap, topic, records, **{
            "compression_type": None if codec == "none" else codec,
            "enable_idempotence": idempotent, "batch_size": 512})


class Kcat(Client):
    """kcat's -H headers hold for every record of one run, and it sends no null keys:
    one run per partition, the records' headers naming the round and partition."""

    name = "kcat"
    codecs = ALL_CODECS
    null_keys = False

    def __init__(self, request, logdir):
        super().__init__(request, logdir)
        self.bin = shutil.which("kcat")
        if self.bin is None:
            _missing("kcat is not on PATH (Debian package kcat)")

    def base(self, bootstrap: str) -> list[str]:
        return [self.bin, "-b", bootstrap, "-X", "broker.address.family=v4", "-m", "15"]

    def records(self, tag):
        out = []
        for r in super().records(tag):
            out.append(Rec(r.key, r.value, (("tag", tag.encode()),
                                            ("p", str(r.partition).encode())),
                           partition=r.partition))
        return out

    def produce(self, bootstrap, topic, records, codec, idempotent):
        res = teeutil.Produced()
        for p, recs in sorted(teeutil.by_partition(records).items()):
            data = self.logdir / f"kcat-input-{self.runs + 1}.txt"
            data.write_bytes(b"".join(r.key + b"|" + r.value + b"\n" for r in recs))
            argv = self.base(bootstrap) + [
                "-P", "-t", topic, "-p", str(p), "-K", "|", "-l", str(data),
                "-X", f"compression.codec={codec}",
                "-X", f"enable.idempotence={str(idempotent).lower()}",
                "-X", "linger.ms=5", "-X", "batch.num.messages=10"]
            for k, v in recs[0].headers:
                argv += ["-H", f"{k}={v.decode()}"]
            proc = self.run(argv)
            log = proc.log_text()
            if proc.returncode != 0 or "ERROR" in log or "failed" in log.lower():
                res.errors.append(f"kcat exit {proc.returncode}: {log[-2000:]}")
            else:
                res.acked += [Rec(r.key, r.value, r.headers, partition=p) for r in recs]
        return res

    def consume(self, bootstrap, topic, group, expected):
        assert group is not None
        proc = self.run(self.base(bootstrap) + [
            "-G", group, "-X", "auto.offset.reset=earliest",
            "-X", f"session.timeout.ms={harness.GROUP_SESSION_TIMEOUT_MS}",
            "-X", "heartbeat.interval.ms=1000", "-J", "-c", str(expected),
            "-q", topic])  # -q: no progress lines on stderr amid the JSON ones
        out, errors = [], []
        for line in proc.log_text().splitlines():
            if not line.startswith("{"):
                continue
            m = json.loads(line)
            h = m.get("headers") or []
            out.append(Rec(_b(m["key"]), _b(m["payload"]),
                           tuple((h[i], h[i + 1].encode()) for i in range(0, len(h), 2)),
                           partition=m["partition"], offset=m["offset"]))
        if proc.returncode != 0:
            errors.append({"message": f"kcat exit {proc.returncode}: {proc.log_tail(20)}"})
        return Consumed(out, errors)


def _b(s: str | None) -> bytes | None:
    return None if s is None else s.encode()


def _to_json(r: Rec) -> dict:
    return {"key": None if r.key is None else r.key.decode(),
            "value": None if r.value is None else r.value.decode(),
            "headers": [[k, v.decode()] for k, v in r.headers],
            "partition": r.partition}


def _from_json(m: dict) -> Rec:
    return Rec(_b(m["key"]), _b(m["value"]),
               tuple((k, v.encode()) for k, v in m.get("headers") or []),
               partition=m["partition"], offset=m.get("offset"))


class Driver(Client):
    """A client driven by a program of proto-tests/clients (spec and result formats in
    its README)."""

    argv: list[str] = []

    def call(self, mode: str, spec: dict) -> dict:
        n = self.runs + 1
        spec_path = self.logdir / f"{self.name}-{n}-{mode}.spec.json"
        result_path = self.logdir / f"{self.name}-{n}-{mode}.result.json"
        spec_path.write_text(json.dumps(spec))
        proc = self.run(self.argv + [mode, str(spec_path), str(result_path)])
        assert proc.returncode == 0 and result_path.is_file(), (
            f"{self.name} {mode} exited {proc.returncode} without a result\n"
            f"{proc.log_tail()}")
        return json.loads(result_path.read_text())

    def produce(self, bootstrap, topic, records, codec, idempotent):
        res = self.call("produce", {"bootstrap": bootstrap, "topic": topic,
                                    "compression": codec, "idempotent": idempotent,
                                    "records": [_to_json(r) for r in records]})
        return teeutil.Produced([_from_json(m) for m in res.get("acked", [])],
                                [json.dumps(e) for e in res["errors"]])

    def consume(self, bootstrap, topic, group, expected):
        res = self.call("consume", {"bootstrap": bootstrap, "topic": topic,
                                    "group": group or "",
                                    "partitions": list(range(PARTITIONS)),
                                    "expected": expected,
                                    "timeout_ms": CLIENT_TIMEOUT * 1000 - 10_000})
        return Consumed([_from_json(m) for m in res.get("records", [])], res["errors"])


class KafkaJS(Driver):
    name = "kafkajs"
    codecs = ("none", "gzip", "snappy")
    idempotent = False  # TANSU_INIT_PRODUCER_ID_V0

    def __init__(self, request, logdir):
        super().__init__(request, logdir)
        node = shutil.which("node")
        if node is None:
            _missing("node is not on PATH")
        if not (NODE_DIR / "node_modules" / "kafkajs" / "package.json").is_file():
            _missing(f"KafkaJS is not installed in {NODE_DIR} (npm ci)")
        self.argv = [node, str(NODE_DIR / "kafkajs-driver.js")]


class Sarama(Driver):
    name = "sarama"
    codecs = ("none", "gzip", "snappy", "lz4")
    idempotent = False  # TANSU_INIT_PRODUCER_ID_V0
    group = False  # TANSU_JOIN_GROUP_V1

    def __init__(self, request, logdir):
        super().__init__(request, logdir)
        self.argv = [str(sarama_driver())]


def sarama_driver() -> Path:
    """Builds the Sarama driver once (again when its source changed) offline against
    Debian's Go packages, into target/proto-tests/."""
    out = BUILD_DIR / "sarama-driver"
    src = GO_DIR / "main.go"
    if out.is_file() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    go = shutil.which("go")
    if go is None:
        _missing("go is not on PATH (Debian package golang-go)")
    gopath = Path("/usr/share/gocode")
    if not (gopath / "src" / "github.com" / "Shopify" / "sarama").is_dir():
        _missing(f"Sarama is not in {gopath} (Debian package golang-github-shopify-sarama-dev)")
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GO111MODULE="off", GOPATH=str(gopath), GOFLAGS="",
               GOCACHE=str(BUILD_DIR / "go-cache"), CGO_ENABLED="0", GOPROXY="off")
    tmp = out.with_suffix(".tmp")
    build = subprocess.run([go, "build", "-o", str(tmp), "."], cwd=GO_DIR, env=env,
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, f"go build failed:\n{build.stdout}\n{build.stderr}"
    tmp.replace(out)
    return out


CLIENTS = {c.name: c for c in (Confluent, KafkaPython, Kcat, KafkaJS, Sarama)}


@pytest.fixture(params=list(CLIENTS))
def client(request, logdir) -> Client:
    return CLIENTS[request.param](request, logdir)


# ------------------------------------------------------------------- the checks


@dataclass
class Tee:
    dc1: harness.Broker
    dc2: harness.Broker
    px: harness.Proxy


@pytest.fixture
def tee(dc1, dc2, proxy, tmp_path) -> Tee:
    return Tee(dc1, dc2, proxy(dc1.bootstrap, target=dc2.bootstrap,
                               state_dir=tmp_path / "state"))


def content(recs: Sequence[Rec]) -> list[Rec]:
    """Records without timestamp and offset (what a client sent)."""
    return [Rec(r.key, r.value, r.headers, partition=r.partition) for r in recs]


def produce_rounds(c: Client, t: Tee, topic: str, rounds: Sequence[tuple[str, bool]],
                   ) -> list[Rec]:
    """Produces one round of records per (codec, idempotent) through the proxy and
    returns DC1's records (read directly) after checking that DC1 holds exactly what
    was sent, in send order per partition, and that its batches carry the codec and,
    when idempotent, a producer id."""
    sent: list[Rec] = []
    for codec, idem in rounds:
        recs = c.records(f"{codec}{'-idem' if idem else ''}")
        res = c.produce(t.px.bootstrap, topic, recs, codec, idem)
        assert res.errors == [], f"{c.name} {codec}: {res.errors[:3]}"
        assert sorted(content(res.acked), key=repr) == sorted(content(recs), key=repr), (
            f"{c.name} {codec}: acked records differ from those sent")
        sent += recs
    dc1 = read_count(t.dc1.bootstrap, topic, len(sent), timeout=30)
    assert_same_partitions(content(sent), content(dc1), f"{c.name}: DC1 vs sent")

    batches = [b for p in range(PARTITIONS)
               for b in rawkafka.read_batches(t.dc1.bootstrap, topic, p)]
    codecs = {b.compression for b in batches}
    assert codecs == {codec for codec, _ in rounds}, (
        f"{c.name}: DC1 batches are {sorted(codecs)}, asked for {[r[0] for r in rounds]}")
    if all(idem for _, idem in rounds):
        plain = [b.base_offset for b in batches if b.producer_id < 0]
        assert not plain, f"{c.name}: batches without producer id at {plain[:5]}"
    return sorted_by_offset(dc1)


def check_dc2(t: Tee, topic: str, dc1: list[Rec], what: str) -> None:
    dc2 = read_count(t.dc2.bootstrap, topic, len(dc1), timeout=DC2_WAIT)
    assert_same_partitions(dc1, dc2, f"{what}: DC2 vs DC1")
    v = run_verify(t.dc1.bootstrap, t.dc2.bootstrap, [topic])
    assert v.returncode == 0 and "verify: identical" in v.stdout, (
        f"verify exit {v.returncode}\n{v.stdout}\n{v.stderr}")


def check_consumed(c: Client, got: Consumed, dc1: list[Rec], what: str) -> None:
    assert got.errors == [], f"{c.name} {what}: {got.errors[:3]}"
    assert_same_partitions(content(dc1), content(got.records), f"{c.name} {what} vs DC1")
    assert [(r.partition, r.offset) for r in sorted_by_offset(got.records)] == \
        [(r.partition, r.offset) for r in dc1], f"{c.name} {what}: offsets differ from DC1's"


def test_records_with_every_codec_reach_dc2_and_a_group_reads_them(tee, client):
    """One round per codec the client has (keys, headers, three partitions); a consumer
    group reads them back through the proxy; DC2 equals DC1."""
    topic = unique(f"clients-{client.name}")
    harness.create_topic(tee.px.bootstrap, topic, partitions=PARTITIONS)
    dc1 = produce_rounds(client, tee, topic, [(codec, False) for codec in client.codecs])
    group = unique(f"g-{client.name}") if client.group else None
    got = client.consume(tee.px.bootstrap, topic, group, len(dc1))
    check_consumed(client, got, dc1, "group consumer" if group else
                   f"partition consumer ({TANSU_JOIN_GROUP_V1})")
    check_dc2(tee, topic, dc1, client.name)


def test_idempotent_producer_reaches_dc2(tee, client):
    if not client.idempotent:
        pytest.skip(f"{client.name}: {TANSU_INIT_PRODUCER_ID_V0}; "
                    f"test_{client.name}_idempotent_producer_meets_tansu_* shows it")
    topic = unique(f"clients-idem-{client.name}")
    harness.create_topic(tee.px.bootstrap, topic, partitions=PARTITIONS)
    codec = client.codecs[-1]
    dc1 = produce_rounds(client, tee, topic, [(codec, True), (codec, True)])
    check_dc2(tee, topic, dc1, f"{client.name} idempotent")


# ----------------------------------------------- what the test broker blocks, by name


def bootstrap_of(t: Tee, via: str) -> str:
    return t.px.bootstrap if via == "proxy" else t.dc1.bootstrap


@pytest.mark.parametrize("via", ["proxy", "tansu"])
def test_kafkajs_idempotent_producer_meets_tansu_init_producer_id_v1(tee, logdir, request,
                                                                      via):
    """TANSU_INIT_PRODUCER_ID_V0: KafkaJS asks for a producer id with InitProducerId v1;
    Tansu answers UNKNOWN_SERVER_ERROR, through the proxy as straight, and KafkaJS
    reports it and sends nothing."""
    c = KafkaJS(request, logdir)
    topic = unique("clients-kafkajs-ipid")
    harness.create_topic(tee.dc1.bootstrap, topic, partitions=PARTITIONS)
    res = c.produce(bootstrap_of(tee, via), topic, c.records("idem"), "gzip", True)
    assert res.acked == [], f"{TANSU_INIT_PRODUCER_ID_V0}, yet records were acked"
    assert [json.loads(e)["code"] for e in res.errors] == [UNKNOWN_SERVER_ERROR], (
        f"expected exactly {TANSU_INIT_PRODUCER_ID_V0}; got {res.errors}")
    assert "InitProducerId(key: 22, version: 1)" in (logdir / f"{c.name}-1.log").read_text()
    plain = c.produce(bootstrap_of(tee, via), topic, c.records("plain"), "gzip", False)
    assert plain.errors == [] and len(plain.acked) == PER_ROUND, plain.errors[:3]


@pytest.mark.parametrize("via", ["proxy", "tansu"])
def test_sarama_idempotent_producer_meets_tansu_init_producer_id_v0(tee, logdir, request,
                                                                     via):
    """TANSU_INIT_PRODUCER_ID_V0: Sarama 1.22 asks with InitProducerId v0, Tansu answers
    UNKNOWN_SERVER_ERROR, and Sarama ignores the error code: it produces plain batches
    (no producer id) while configured as idempotent. The records still arrive, and
    through the proxy DC2 equals DC1."""
    c = Sarama(request, logdir)
    topic = unique("clients-sarama-ipid")
    harness.create_topic(tee.dc1.bootstrap, topic, partitions=PARTITIONS)
    recs = c.records("idem")
    res = c.produce(bootstrap_of(tee, via), topic, recs, "lz4", True)
    assert res.errors == [] and len(res.acked) == len(recs), res.errors[:3]
    batches = [b for p in range(PARTITIONS)
               for b in rawkafka.read_batches(tee.dc1.bootstrap, topic, p)]
    assert batches and {b.producer_id for b in batches} == {-1}, (
        f"expected plain batches ({TANSU_INIT_PRODUCER_ID_V0}); producer ids "
        f"{sorted({b.producer_id for b in batches})}")
    if via == "proxy":
        dc1 = read_count(tee.dc1.bootstrap, topic, len(recs), timeout=30)
        check_dc2(tee, topic, sorted_by_offset(dc1), "sarama 'idempotent'")


@pytest.mark.parametrize("via", ["proxy", "tansu"])
def test_sarama_consumer_group_meets_tansu_join_group_v1(tee, logdir, request, via):
    """TANSU_JOIN_GROUP_V1: Sarama 1.22 joins with JoinGroup v1 and no member id; Tansu
    answers MEMBER_ID_REQUIRED (79), through the proxy as straight, and the group never
    forms. (The matrix reads Sarama's records by partition instead.)"""
    c = Sarama(request, logdir)
    topic = unique("clients-sarama-join")
    harness.create_topic(tee.dc1.bootstrap, topic, partitions=PARTITIONS)
    sent = c.records("join")
    assert c.produce(tee.px.bootstrap, topic, sent, "none", False).errors == []
    got = c.consume(bootstrap_of(tee, via), topic, unique("g-sarama"), len(sent))
    assert got.records == [], f"{TANSU_JOIN_GROUP_V1}, yet the group read records"
    assert [e["code"] for e in got.errors] == [MEMBER_ID_REQUIRED], (
        f"expected exactly {TANSU_JOIN_GROUP_V1}; got {got.errors}")


def test_produce_v2_is_refused_with_the_tee_on(tee):
    """The proxy advertises Produce from v0 (as Apache Kafka 4.0 does, so that librdkafka
    before 2.10 compresses: kcat's codec rounds above check it), but the tee reads only
    record batches (v3+). A v2 request is refused: the connection closes, nothing
    reaches DC1, and the log says why."""
    topic = unique("clients-produce-v2")
    harness.create_topic(tee.px.bootstrap, topic, partitions=1)
    batch = rawkafka.encode_batch([(b"k", b"v2-record")], teeutil.TS_BASE)
    frame = bytearray(rawkafka.produce_request_v3(5, topic, 0, batch, acks=1))
    frame[6:8] = (2).to_bytes(2, "big")  # api_version
    with socket.create_connection((harness.HOST, tee.px.port), timeout=5) as s:
        s.sendall(bytes(frame))
        assert harness.wait_closed(s, 10) == b"", "the proxy answered or kept the socket"
    # The session logs why as it ends, which may come just after the socket closed.
    want = "refusing Produce request: Produce v2 is not supported"
    deadline = time.monotonic() + 5
    while want not in tee.px.proc.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert want in tee.px.proc.log_text()
    assert teeutil.read_all(tee.dc1.bootstrap, topic, idle=0.5, timeout=5) == []
