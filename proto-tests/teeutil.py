"""Helpers for the tee and fault tests: records (harness's `Rec`) with explicit
timestamps, producers and consumers that keep them, a producer running in the
background during a fault, reading a cluster until given keys showed up, the
replication check, `kafka-tee verify`, and config files.

Everything reads the clusters directly (never through the proxy) and is bounded in
time.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import harness
from harness import HOST, Rec

# --------------------------------------------------------------------- records


# A fixed point an hour in the past: explicit timestamps that no clock produces.
TS_BASE = int(time.time() * 1000) - 3_600_000


def make_trecords(n: int, tag: str, partitions: int | None = None,
                  value_size: int = 0, with_timestamps: bool = True,
                  null_keys: bool = False) -> list[Rec]:
    """Distinct values, headers (some empty) and explicit, increasing timestamps an
    hour in the past; distinct keys, except that with `null_keys` every fifth record
    has none. Record i goes to partition i % partitions when `partitions` is given."""
    pad = b"p" * value_size
    out = []
    for i in range(n):
        key = None if (null_keys and i % 5 == 4) else f"k{tag}-{i}".encode()
        headers = (("i", str(i).encode()), ("tag", tag.encode()))
        if i % 3 == 0:
            headers += (("empty", b""),)
        out.append(Rec(key, f"v{tag}-{i}-".encode() + pad, headers,
                       partition=(i % partitions) if partitions else None,
                       timestamp=TS_BASE + i if with_timestamps else None))
    return out


_norm_headers = harness._norm_headers
by_partition = harness.by_partition


# -------------------------------------------------------------------- producing


Produced = harness.ProduceResult
produce_confluent = harness.produce_confluent
produce_kafka_python = harness.produce_kafka_python


def produce_transaction_mix(bootstrap: str, topic: str, partitions: int = 2,
                            value_size: int = 0) -> tuple[list[bytes], list[bytes]]:
    """A transactional producer commits transaction A, aborts B and commits C, with a
    plain producer's records before, between and after them, and while C is open.
    Returns the keys that must be visible (committed and plain) and the aborted ones."""
    from confluent_kafka import Producer

    plain = Producer(harness.confluent_conf(bootstrap, **{"linger.ms": 1}))
    txp = Producer(harness.confluent_conf(bootstrap, **{
        "transactional.id": harness.unique("txid"), "linger.ms": 1,
        "transaction.timeout.ms": 60000}))
    errors = []

    def cb(err, msg):
        if err is not None:
            errors.append(str(err))

    def send(p, tag: str, n: int):
        keys = []
        for i in range(n):
            k = f"{tag}-{i}".encode()
            p.produce(topic, key=k, value=b"v-" + k + b"x" * value_size,
                      partition=i % partitions, on_delivery=cb,
                      headers=[("tag", tag.encode())], timestamp=TS_BASE + i)
            keys.append(k)
        return keys

    committed: list[bytes] = []
    aborted: list[bytes] = []
    txp.init_transactions(30)

    committed += send(plain, "plain1", 10)
    assert plain.flush(30) == 0
    txp.begin_transaction()
    committed += send(txp, "txnA", 20)
    txp.commit_transaction(30)

    committed += send(plain, "plain2", 10)
    assert plain.flush(30) == 0
    txp.begin_transaction()
    aborted += send(txp, "txnB", 20)
    assert txp.flush(30) == 0  # in DC1, then aborted
    txp.abort_transaction(30)

    txp.begin_transaction()
    committed += send(txp, "txnC", 10)
    assert txp.flush(30) == 0
    committed += send(plain, "plain3", 10)  # lands while txnC is open
    assert plain.flush(30) == 0
    txp.commit_transaction(30)
    committed += send(plain, "plain4", 10)
    assert plain.flush(30) == 0
    assert errors == [], errors[:5]
    return committed, aborted


# -------------------------------------------------------------------- consuming


def no_autocreate_admin(bootstrap: str):
    """An AdminClient whose metadata requests never create topics. (librdkafka asks
    with auto-creation on by default, and Tansu then creates the topic with 4
    partitions: a test looking for a DC2 topic before kafka-tee made it would create
    it with the wrong partition count.)"""
    return harness.admin(bootstrap, **{"allow.auto.create.topics": False})


def partitions_of(bootstrap: str, topic: str, timeout: float = 10) -> list[int] | None:
    md = no_autocreate_admin(bootstrap).list_topics(topic=topic, timeout=timeout)
    t = md.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        return None
    return sorted(t.partitions)


def topic_names(bootstrap: str, timeout: float = 10) -> set[str]:
    return set(no_autocreate_admin(bootstrap).list_topics(timeout=timeout).topics)


def wait_partitions(bootstrap: str, topic: str, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        parts = partitions_of(bootstrap, topic)
        if parts:
            return parts
        if time.monotonic() > deadline:
            raise AssertionError(f"topic {topic} did not appear at {bootstrap} "
                                 f"within {timeout:.0f}s")
        time.sleep(0.25)


class Reader:
    """A confluent-kafka consumer reading every partition of a topic from the start,
    keeping every record (duplicates included), with timestamps."""

    def __init__(self, bootstrap: str, topic: str, read_committed: bool = False,
                 topic_timeout: float = 30):
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self.topic = topic
        parts = wait_partitions(bootstrap, topic, topic_timeout)
        self.c = Consumer(harness.confluent_conf(bootstrap, **{
            "group.id": harness.unique("reader"),
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
            "fetch.wait.max.ms": 100,
        }))
        self.c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self.records: list[Rec] = []
        self.keys: dict[bytes | None, int] = {}
        self.last_new = time.monotonic()

    def poll(self, seconds: float) -> int:
        """Reads for up to `seconds`; returns how many records came."""
        n = 0
        until = time.monotonic() + seconds
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return n
            msgs = self.c.consume(num_messages=1000, timeout=min(left, 0.2))
            for m in msgs:
                if m.error():
                    if m.error().fatal():
                        raise AssertionError(f"consumer error: {m.error()}")
                    continue
                r = Rec(m.key(), m.value(), _norm_headers(m.headers()), m.partition(),
                        m.offset(), timestamp=m.timestamp()[1])
                self.records.append(r)
                self.keys[r.key] = self.keys.get(r.key, 0) + 1
                n += 1
            if msgs:
                self.last_new = time.monotonic()

    def close(self) -> None:
        self.c.close()

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_until(bootstrap: str, topic: str, done, timeout: float, idle: float = 1.0,
               read_committed: bool = False) -> tuple[list[Rec], float | None]:
    """Reads the whole topic until `done(reader)` is true (then `idle` more seconds with
    nothing new, to see trailing extras) or `timeout`. Returns the records and the
    seconds it took until `done` held (None if it never did)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    with Reader(bootstrap, topic, read_committed,
                topic_timeout=max(1.0, timeout)) as r:
        reached = None
        while time.monotonic() < deadline:
            r.poll(0.3)
            if done(r):
                reached = time.monotonic() - t0
                break
        if reached is not None:
            settle = time.monotonic() + 10
            while time.monotonic() - r.last_new < idle and time.monotonic() < settle:
                r.poll(0.2)
        return r.records, reached


def read_count(bootstrap: str, topic: str, n: int, timeout: float = 30,
               read_committed: bool = False) -> list[Rec]:
    """Reads until at least `n` records (then a short look for extras)."""
    recs, _ = read_until(bootstrap, topic, lambda r: len(r.records) >= n, timeout,
                         idle=0.5, read_committed=read_committed)
    return recs


def read_all(bootstrap: str, topic: str, idle: float = 1.5, timeout: float = 30,
             read_committed: bool = False) -> list[Rec]:
    """Reads until nothing new came for `idle` seconds after the first record (or
    `idle` + 3 seconds with nothing at all)."""
    t0 = time.monotonic()
    with Reader(bootstrap, topic, read_committed, topic_timeout=timeout) as r:
        while time.monotonic() - t0 < timeout:
            r.poll(0.2)
            quiet = time.monotonic() - r.last_new
            if r.records and quiet > idle:
                break
            if not r.records and time.monotonic() - t0 > idle + 3:
                break
        return r.records


# ------------------------------------------------------------------- comparing


def assert_same_partitions(want: Sequence[Rec], got: Sequence[Rec], what: str,
                           compare_timestamps: bool = True) -> None:
    """Per partition, `got` holds exactly `want` (content and, with
    `compare_timestamps`, timestamp), in order."""
    def content(r: Rec):
        return (*r.content(), r.timestamp) if compare_timestamps else r.content()

    w, g = by_partition(want), by_partition(got)
    problems = []
    for p in sorted(set(w) | set(g), key=lambda x: (x is None, x or 0)):
        a = [content(r) for r in w.get(p, [])]
        b = [content(r) for r in g.get(p, [])]
        if a == b:
            continue
        i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        problems.append(
            f"partition {p}: want {len(a)} records, got {len(b)} "
            f"(missing {len(set(a) - set(b))}, unexpected {len(set(b) - set(a))}); "
            f"first difference at #{i}: want {a[i] if i < len(a) else None}, "
            f"got {b[i] if i < len(b) else None}")
    assert not problems, f"{what}:\n  " + "\n  ".join(problems)


def sorted_by_offset(recs: Iterable[Rec]) -> list[Rec]:
    """By partition, then offset (records acked without an offset first)."""
    return sorted(recs, key=lambda r: (r.partition, -1 if r.offset is None else r.offset))


@dataclass
class ReplicationCheck:
    acked: int
    dc1_records: int
    dc2_records: int
    duplicates: int  # DC2 records beyond one copy of each DC1 record
    dc1_duplicates: int  # records the producer itself wrote twice into DC1
    acked_without_offset: int = 0


def check_replicated(acked: Sequence[Rec], dc1: Sequence[Rec],
                     dc2: Sequence[Rec], acked_offsets: bool = True) -> ReplicationCheck:
    """Every acked record is in DC1 (at its acked offset, unless `acked_offsets` is
    false) and in DC2; so is every other DC1 record; in DC2 the first copies come in DC1
    order. Records are told apart by key (every key is unique per test run)."""
    problems = []
    dc1_parts, dc2_parts = by_partition(dc1), by_partition(dc2)
    dc1_at = {(r.partition, r.offset): r for r in dc1}
    dc1_keys = {r.key for r in dc1}
    # librdkafka reports a retried batch that the broker had already written
    # (DUPLICATE_SEQUENCE_NUMBER) as delivered without an offset.
    no_offset = [r for r in acked if r.offset is None or r.offset < 0]
    lost_in_dc1 = [r.key for r in no_offset if r.key not in dc1_keys]
    if lost_in_dc1:
        problems.append(f"{len(lost_in_dc1)} acked records are not in DC1: {lost_in_dc1[:5]}")
    for r in acked:
        if r.offset is None or r.offset < 0 or not acked_offsets:
            continue
        d = dc1_at.get((r.partition, r.offset))
        if d is None or d.key != r.key:
            where = [(x.partition, x.offset) for x in dc1 if x.key == r.key]
            first = min((x.offset for x in dc1_parts.get(r.partition, [])), default=None)
            problems.append(f"acked {r.key!r} at {r.partition}@{r.offset} but DC1 has "
                            f"{d.key if d else None!r} there (the key is at {where[:3]}; "
                            f"the read of DC1 partition {r.partition} starts at {first})")
            break
    dc2_keys = {r.key for r in dc2}
    missing_acked = [r for r in sorted_by_offset(acked) if r.key not in dc2_keys]
    if missing_acked:
        problems.append(f"{len(missing_acked)} acked records are not in DC2, first: "
                        f"{[(r.partition, r.offset, r.key) for r in missing_acked[:5]]}")
    missing_dc1 = [r for r in dc1 if r.key not in dc2_keys]
    if missing_dc1:
        problems.append(f"{len(missing_dc1)} DC1 records are not in DC2, first: "
                        f"{[(r.partition, r.offset, r.key) for r in missing_dc1[:5]]}")
    dups = 0
    dc1_dups = 0
    for p, recs in dc1_parts.items():
        dc1_order = []
        seen1 = set()
        for r in recs:
            if r.key in seen1:
                dc1_dups += 1
                continue
            seen1.add(r.key)
            dc1_order.append(r.key)
        seen2 = set()
        first2 = []
        for r in dc2_parts.get(p, []):
            if r.key in seen2:
                continue
            seen2.add(r.key)
            first2.append(r.key)
        dups += len(dc2_parts.get(p, [])) - len(first2)
        foreign = [k for k in first2 if k not in seen1]
        if foreign:
            problems.append(f"partition {p}: DC2 has {len(foreign)} records DC1 does not "
                            f"have there, first {foreign[:3]}")
        in_both = [k for k in first2 if k in seen1]
        expect = [k for k in dc1_order if k in seen2]
        if in_both != expect:
            i = next((i for i, (a, b) in enumerate(zip(expect, in_both)) if a != b), 0)
            problems.append(f"partition {p}: DC2 order differs from DC1 at #{i}: "
                            f"DC1 {expect[i:i + 3]}, DC2 {in_both[i:i + 3]}")
    for p in set(dc2_parts) - set(dc1_parts):
        problems.append(f"partition {p}: {len(dc2_parts[p])} DC2 records, none in DC1")
    assert not problems, "replication check:\n  " + "\n  ".join(problems)
    return ReplicationCheck(len(acked), len(dc1), len(dc2), dups, dc1_dups, len(no_offset))


def read_holding(bootstrap: str, topic: str, keys: set, timeout: float = 30,
                 attempts: int = 3) -> list[Rec]:
    """Reads the whole topic until it holds every key in `keys`. A read that ends
    without them all is described (what is missing, where each partition's records
    start) and repeated with a new consumer, up to `attempts` reads: a reader of the
    test broker has been seen to miss a partition's first batch under load, which a
    second read does not. Fails if no read finds them all."""
    for attempt in range(1, attempts + 1):
        recs, reached = read_until(bootstrap, topic, lambda r: keys <= set(r.keys),
                                   timeout, idle=1.0)
        if reached is not None:
            return recs
        got = {r.key for r in recs}
        starts = {p: (rs[0].offset, len(rs)) for p, rs in sorted(by_partition(recs).items())}
        print(f"[read {bootstrap} {topic}] read {attempt}/{attempts} ended without "
              f"{len(keys - got)} of {len(keys)} records, e.g. {sorted(keys - got)[:3]}; "
              f"per partition (first offset, count): {starts}")
    raise AssertionError(f"{topic}: {attempts} reads of {bootstrap} never held every "
                         f"acked record")


def assert_dc2_identical(dc1: str, dc2: str, topic: str, acked: Sequence[Rec],
                         timeout: float, acked_offsets: bool = True,
                         ) -> tuple[ReplicationCheck, float | None]:
    """Reads DC1 until it holds every acked record, then DC2 until it holds every DC1
    record (up to `timeout` s); asserts that DC2 holds each of them once, in DC1 order
    (`check_replicated`, no duplicates) and that `verify` finds the two identical.
    `acked_offsets` as for `check_replicated`. Returns the check and the seconds DC2
    took."""
    dc1_recs = read_holding(dc1, topic, {r.key for r in acked})
    dc1_keys = {r.key for r in dc1_recs}
    dc2_recs, took = read_until(dc2, topic, lambda r: dc1_keys <= set(r.keys), timeout,
                                idle=1.5)
    chk = check_replicated(acked, dc1_recs, dc2_recs, acked_offsets)
    assert chk.duplicates == 0, f"{topic}: {chk.duplicates} records twice in DC2"
    v = run_verify(dc1, dc2, [topic])
    assert v.returncode == 0, v.stdout
    return chk, took


# ------------------------------------------------------------ background producer


_RUNNING: list["LoadProducer"] = []


def abandon_producers() -> None:
    """Stops every LoadProducer still running (a test failed before stopping it)."""
    while _RUNNING:
        lp = _RUNNING.pop()
        if lp._thread is not None and lp._thread.is_alive():
            lp.abandon()


class LoadProducer:
    """A confluent-kafka producer writing numbered records to every partition of a
    topic at a steady rate in a background thread, until stopped. Keeps what was
    acknowledged (with DC1 partition and offset), errors and delivery latencies."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, rate: float = 400,
                 value_size: int = 200, tag: str = "load", **conf):
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.rate = rate
        self.pad = b"x" * value_size
        self.tag = tag
        self.conf = {"linger.ms": 5, "enable.idempotence": True,
                     "message.timeout.ms": 120000, "request.timeout.ms": 10000,
                     "max.in.flight.requests.per.connection": 5}
        self.conf.update(conf)
        self.acked: list[Rec] = []
        self.errors: list[str] = []
        # (seconds since the producer started, delivery latency in seconds)
        self.latencies: list[tuple[float, float]] = []
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._left = 0

    def start(self) -> "LoadProducer":
        self._thread = threading.Thread(target=self._run, name=f"load-{self.topic}",
                                        daemon=True)
        self._thread.start()
        _RUNNING.append(self)
        return self

    def abandon(self) -> None:
        """Stops the thread without waiting long for outstanding deliveries (for test
        teardown after a failure)."""
        self._flush_timeout = 2
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def acked_count(self) -> int:
        with self._lock:
            return len(self.acked)

    def wait_acked(self, n: int, timeout: float) -> None:
        """Waits until at least `n` records were acknowledged in total."""
        deadline = time.monotonic() + timeout
        while self.acked_count() < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.acked_count()} of {n} records acked "
                                     f"after {timeout:.0f}s; errors {self.errors[:3]}")
            if self._thread is not None and not self._thread.is_alive():
                raise AssertionError(f"producer thread ended; errors {self.errors[:3]}")
            time.sleep(0.1)

    def acked_snapshot(self) -> list[Rec]:
        with self._lock:
            return list(self.acked)

    def latency_after(self, warmup: float) -> list[float]:
        """Delivery latencies of the records sent `warmup` seconds or more after the
        start (the first ones wait for connections and a producer id)."""
        with self._lock:
            return [lat for at, lat in self.latencies if at >= warmup]

    def stop(self, flush_timeout: float = 60) -> list[Rec]:
        """Stops producing, waits for every outstanding delivery report."""
        self._flush_timeout = flush_timeout
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=flush_timeout + 10)
            assert not self._thread.is_alive(), "producer thread did not stop"
        assert self._left == 0, (f"{self._left} records without a delivery report after "
                                 f"{flush_timeout}s")
        return self.acked_snapshot()

    def _run(self) -> None:
        from confluent_kafka import Producer

        p = Producer(harness.confluent_conf(self.bootstrap, **self.conf))
        t0 = time.monotonic()

        def report(err, msg, key, at):
            with self._lock:
                if err is not None:
                    self.errors.append(f"{key!r}: {err}")
                    return
                self.latencies.append((at - t0, time.monotonic() - at))
                self.acked.append(Rec(key, msg.value(), _norm_headers(msg.headers()),
                                      msg.partition(), msg.offset(),
                                      timestamp=msg.timestamp()[1]))

        i = 0
        while not self._stop.is_set():
            due = t0 + i / self.rate
            now = time.monotonic()
            if due > now:
                p.poll(min(due - now, 0.05))
                continue
            key = f"{self.tag}-{i}".encode()
            at = time.monotonic()
            try:
                p.produce(self.topic, key=key, value=key + b"-" + self.pad,
                          headers=[("n", str(i).encode())], partition=i % self.partitions,
                          on_delivery=lambda e, m, k=key, a=at: report(e, m, k, a))
            except BufferError:
                p.poll(0.05)
                continue
            i += 1
            self.sent = i
            p.poll(0)
        self._left = p.flush(getattr(self, "_flush_timeout", 60))


# ------------------------------------------------------------------ processes


def start_tansu_at(name: str, log_dir: Path, port: int, advertised_port: int | None = None,
                   timeout: float = 30.0) -> harness.Broker:
    """A memory-backed Tansu broker listening on `port` and advertising
    `advertised_port` (e.g. a relay in front of it) in its metadata."""
    return harness.start_tansu(name, log_dir, timeout, port=port,
                               advertised_port=advertised_port)


def register(request, proc: harness.Proc) -> None:
    """Attaches a process's log to the test report if the test fails (like the
    conftest fixtures do for the processes they start)."""
    import sys

    conftest = sys.modules.get("conftest")
    key = getattr(conftest, "_PROCS", None)
    if key is not None:
        request.node.stash.setdefault(key, []).append(proc)


def run_verify(source: str, target: str, topics: Sequence[str], prefix: str | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess:
    argv = [str(harness.kafka_tee_bin()), "verify", "--source", source, "--target", target]
    for t in topics:
        argv += ["--topic", t]
    if prefix is not None:
        argv += ["--topic-prefix", prefix]
    return harness.run_proxy_expecting_exit(argv, timeout=timeout)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(v)


def write_config(path: Path, sections: dict[str, dict]) -> Path:
    """Writes a kafka-tee TOML config file from {section: {key: value}}."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def metric(px: harness.Proxy, name: str, label: str = "") -> float:
    """The sum of a metric's series on the proxy's admin endpoint (/metrics), only
    those whose labels contain `label` (e.g. 'reason="aborted"') when given."""
    import urllib.request

    body = urllib.request.urlopen(f"http://{HOST}:{px.admin_port}/metrics",
                                  timeout=5).read().decode()
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{") \
                and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]
