"""Consumer offsets fail over to DC2 (replication.group_offsets, --sync-groups): a
consumer group reads part of a topic in DC1 and commits; kafka-tee translates the
committed offsets through its offset map and commits them to the same group in DC2;
a consumer of that group in DC2 then reads exactly the records the group had not
processed, each once. Real Tansu brokers for DC1 and DC2, confluent-kafka clients."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

import harness
import teeutil
from harness import Rec, unique
from teeutil import make_trecords, metric, write_config

# Sync rounds in these tests (the default is 5 s).
SYNC_MS = 500
GROUP_PATTERN = "^app-"


def tee_config(tmp_path, name: str, sync: bool = True, replication_group: str | None = None,
               sync_ms: int = SYNC_MS):
    """A config with the tee on and, when `sync`, the app-* groups synced every
    `sync_ms`."""
    repl: dict = {"checkpoint_interval_ms": 200}
    if replication_group is not None:
        repl["group"] = replication_group
        repl["group_session_timeout_ms"] = 6000
    sections: dict = {"replication": repl}
    if sync:
        sections["replication.group_offsets"] = {"include": [GROUP_PATTERN],
                                                 "interval_ms": sync_ms}
    return write_config(tmp_path / f"{name}.toml", sections)


def start_tee(proxy, dc1, dc2, tmp_path, name: str = "kafka-tee", sync: bool = True,
              state_dir=None, replication_group: str | None = None, sync_ms: int = SYNC_MS):
    cfg = tee_config(tmp_path, name, sync, replication_group, sync_ms)
    return proxy(dc1.bootstrap, target=dc2.bootstrap, config=cfg, admin=True,
                 state_dir=state_dir, name=name)


def group_consumer(bootstrap: str, group: str, read_committed: bool = False, **extra):
    from confluent_kafka import Consumer

    return Consumer(harness.confluent_conf(bootstrap, **{
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": harness.GROUP_SESSION_TIMEOUT_MS,
        "isolation.level": "read_committed" if read_committed else "read_uncommitted",
        "fetch.wait.max.ms": 100,
        **extra,
    }))


def _rec(m) -> Rec:
    return Rec(m.key(), m.value(), (), m.partition(), m.offset())


def consume_and_commit(bootstrap: str, topic: str, group: str, n: int,
                       read_committed: bool = False, timeout: float = 60) -> list[Rec]:
    """A member of `group` processes the first `n` records it gets and commits, per
    partition, the offset after the last one it processed; then leaves."""
    from confluent_kafka import TopicPartition

    c = group_consumer(bootstrap, group, read_committed)
    c.subscribe([topic])
    got: list[Rec] = []
    last: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(got) < n and time.monotonic() < deadline:
            for m in c.consume(num_messages=min(500, n - len(got)), timeout=1):
                if m.error():
                    continue
                got.append(_rec(m))
                last[m.partition()] = m.offset()
        assert len(got) == n, f"{group}: only {len(got)} of {n} records consumed in DC1"
        c.commit(offsets=[TopicPartition(topic, p, o + 1) for p, o in last.items()],
                 asynchronous=False)
    finally:
        c.close()
    return got


def consume_rest(bootstrap: str, topic: str, group: str, expected: int,
                 read_committed: bool = False, timeout: float = 60,
                 idle: float = 3.0) -> list[Rec]:
    """A member of `group` reads from the group's committed offsets until it has
    `expected` records and then nothing new for `idle` seconds (or `timeout`)."""
    c = group_consumer(bootstrap, group, read_committed)
    c.subscribe([topic])
    got: list[Rec] = []
    deadline = time.monotonic() + timeout
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            msgs = c.consume(num_messages=1000, timeout=0.5)
            for m in msgs:
                if not m.error():
                    got.append(_rec(m))
            if msgs:
                last_new = time.monotonic()
            if len(got) >= expected and time.monotonic() - last_new > idle:
                break
    finally:
        c.close()
    return got


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets (-1001 when none), read without joining it."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(harness.confluent_conf(bootstrap, **{"group.id": group}))
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def wait_synced(px, dc2, group: str, topic: str, want: dict[int, int],
                timeout: float = 30) -> dict[int, int]:
    """Waits until the DC2 group's committed offsets are `want` (per partition)."""
    deadline = time.monotonic() + timeout
    now: dict[int, int] = {}
    while time.monotonic() < deadline:
        now = committed(dc2.bootstrap, group, topic, max(want) + 1)
        if all(now.get(p) == o for p, o in want.items()):
            return now
        time.sleep(SYNC_MS / 1000)
    raise AssertionError(f"{group}: DC2 committed {now}, want {want}; sync errors "
                         f"{metric(px, 'kafka_tee_consumer_offsets_sync_errors_total')}")


def dc2_offsets_of(dc2_recs: list[Rec]) -> dict[bytes, tuple[int, int]]:
    return {r.key: (r.partition, r.offset) for r in dc2_recs}


def expected_dc2_commits(dc1_recs: list[Rec], dc2_recs: list[Rec],
                         consumed: list[Rec]) -> dict[int, int]:
    """Per partition the group committed, the DC2 offset of the first record it did
    not process (DC2's end as read when it processed them all): what an exact
    translation commits."""
    at2 = dc2_offsets_of(dc2_recs)
    done = {r.key for r in consumed}
    out: dict[int, int] = {}
    for p in sorted({r.partition for r in consumed}):
        rest = [r for r in dc1_recs if r.partition == p and r.key not in done]
        if rest:
            out[p] = at2[min(rest, key=lambda r: r.offset).key][1]
        else:
            out[p] = max(o for (q, o) in at2.values() if q == p) + 1
    return out


def assert_exactly_the_rest(all_keys: set, consumed: list[Rec], rest: list[Rec],
                            what: str) -> None:
    done = {r.key for r in consumed}
    got = [r.key for r in rest]
    twice = len(got) - len(set(got))
    want = all_keys - done
    assert twice == 0, f"{what}: {twice} records read twice in DC2"
    assert set(got) == want, (
        f"{what}: DC2 consumer read {len(got)} records, want the {len(want)} not "
        f"processed in DC1; {len(want - set(got))} missing (e.g. "
        f"{sorted(want - set(got))[:3]}), {len(set(got) - want)} already processed "
        f"(e.g. {sorted(set(got) - want)[:3]})")


def run_offsets_cli(dc1, dc2, group: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(harness.kafka_tee_bin()), "offsets", "--source", dc1.bootstrap, "--target",
         dc2.bootstrap, "--group", group, *extra],
        capture_output=True, text=True, timeout=60)


def replicate(dc1, dc2, topic: str, recs: list[Rec], px,
              identical: bool = True) -> tuple[list[Rec], list[Rec]]:
    """Produces `recs` through `px` and waits until DC2 is identical to DC1 (or, when
    not `identical`, holds `recs`); returns what DC1 and DC2 hold."""
    res = teeutil.produce_confluent(px.bootstrap, topic, recs)
    assert res.errors == [] and len(res.acked) == len(recs), res.errors[:5]
    if identical:
        teeutil.assert_dc2_identical(dc1.bootstrap, dc2.bootstrap, topic, res.acked, 60)
    dc1_recs = teeutil.read_holding(dc1.bootstrap, topic, {r.key for r in recs})
    dc2_recs = teeutil.read_holding(dc2.bootstrap, topic, {r.key for r in recs})
    return dc1_recs, dc2_recs


def fail_over(px, dc1, dc2, topic: str, group: str, dc1_recs, dc2_recs, n: int,
              read_committed: bool = False, what: str = "") -> list[Rec]:
    """The group processes `n` records in DC1 and commits; once the sync committed the
    exact translation in DC2, a DC2 member of the group reads; asserts it reads
    exactly the rest. Returns what the group processed in DC1."""
    consumed = consume_and_commit(dc1.bootstrap, topic, group, n, read_committed)
    want = expected_dc2_commits(dc1_recs, dc2_recs, consumed)
    wait_synced(px, dc2, group, topic, want)
    rest = consume_rest(dc2.bootstrap, topic, group, len(dc1_recs) - n, read_committed)
    assert_exactly_the_rest({r.key for r in dc1_recs}, consumed, rest, what)
    print(f"\n[{what}] {n} processed in DC1, DC2 commits {want}, the DC2 member read "
          f"{len(rest)} records: exactly the rest, none twice")
    return consumed


# ------------------------------------------------------------------------ tests


def test_group_continues_in_dc2_where_it_left_off(dc1, dc2, proxy, tmp_path):
    """10,000 records on 3 partitions through the proxy; a group processes 6,000 in
    DC1 and commits; a DC2 member of the group reads exactly the other 4,000.
    `kafka-tee offsets` shows the translation."""
    topic, group = unique("offs-basic"), unique("app-basic")
    harness.create_topic(dc1.bootstrap, topic, partitions=3)
    state = tmp_path / "state"
    state.mkdir()
    px = start_tee(proxy, dc1, dc2, tmp_path, state_dir=state)
    dc1_recs, dc2_recs = replicate(dc1, dc2, topic, make_trecords(10_000, "b", 3), px)
    consumed = consume_and_commit(dc1.bootstrap, topic, group, 6_000)
    want = expected_dc2_commits(dc1_recs, dc2_recs, consumed)
    wait_synced(px, dc2, group, topic, want)
    # What a person checks before moving the group: the same numbers, and exit 0.
    out = run_offsets_cli(dc1, dc2, group, "--state-dir", str(state))
    print("\n" + out.stdout)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "is in sync" in out.stdout
    rows = {int(line.split()[1]): line.split() for line in out.stdout.splitlines()
            if line.startswith(topic)}
    dc1_next = {p: max(r.offset for r in consumed if r.partition == p) + 1 for p in want}
    for p, o in want.items():
        assert rows[p][2:5] == [str(dc1_next[p]), str(o), str(o)], rows[p]
        assert rows[p][5] == "0", f"DC2 trails DC1 on partition {p}: {rows[p]}"
    rest = consume_rest(dc2.bootstrap, topic, group, 4_000)
    assert_exactly_the_rest({r.key for r in dc1_recs}, consumed, rest, "basic")
    print(f"[basic] 6000 processed in DC1, DC2 commits {want}, the DC2 member read "
          f"{len(rest)} records: exactly the rest, none twice")
    assert metric(px, "kafka_tee_consumer_offsets_commits_total") >= 1
    assert metric(px, "kafka_tee_consumer_offsets_sync_errors_total") == 0
    # A group that committed nothing: the tool says so and exits 1.
    out = run_offsets_cli(dc1, dc2, unique("app-none"), "--state-dir", str(state))
    assert out.returncode == 1 and "no committed offsets" in out.stdout, out.stdout


def test_offsets_translate_where_dc2_starts_later(dc1, dc2, proxy, tmp_path):
    """DC1 holds 500 records per partition before the proxy starts, so DC2's copy of
    each partition starts at 0 where DC1's is at 500. The group processes the 1,000
    old records and 6,000 new ones in DC1; in DC2 it reads exactly the other 4,000."""
    topic, group = unique("offs-shift"), unique("app-shift")
    harness.create_topic(dc1.bootstrap, topic, partitions=2)
    old = make_trecords(1_000, "old", 2)
    res = teeutil.produce_confluent(dc1.bootstrap, topic, old)
    assert res.errors == [], res.errors[:5]
    px = start_tee(proxy, dc1, dc2, tmp_path)
    new = make_trecords(10_000, "new", 2)
    _, dc2_recs = replicate(dc1, dc2, topic, new, px, identical=False)
    dc1_recs = teeutil.read_holding(dc1.bootstrap, topic, {r.key for r in old + new})
    old_keys = {r.key for r in old}
    assert min(r.offset for r in dc2_recs) == 0
    assert {r.key for r in dc2_recs} & old_keys == set(), "records from before the proxy"
    consumed = consume_and_commit(dc1.bootstrap, topic, group, 7_000)
    want = expected_dc2_commits(dc1_recs, dc2_recs, consumed)
    wait_synced(px, dc2, group, topic, want)
    for p, o in want.items():
        dc1_next = max(r.offset for r in consumed if r.partition == p) + 1
        assert o == dc1_next - 500, f"partition {p}: DC1 {dc1_next}, DC2 {o}"
    rest = consume_rest(dc2.bootstrap, topic, group, 4_000)
    assert_exactly_the_rest({r.key for r in new}, consumed, rest, "shifted")
    print(f"\n[shifted] DC1 next offsets {[o + 500 for o in want.values()]} -> DC2 {want}")


def produce_transactions(bootstrap: str, topic: str, rounds: int) -> list[bytes]:
    """Per round, on 2 partitions: a committed transaction of 60 records, an aborted
    one of 20, and 40 plain records. Returns the keys a read_committed consumer sees."""
    from confluent_kafka import Producer

    txp = Producer(harness.confluent_conf(bootstrap, **{
        "transactional.id": unique("txid"), "linger.ms": 1}))
    plain = Producer(harness.confluent_conf(bootstrap, **{"linger.ms": 1}))
    errors: list[str] = []

    def cb(err, msg):
        if err is not None:
            errors.append(str(err))

    def send(p, tag: str, n: int) -> list[bytes]:
        keys = [f"{tag}-{i}".encode() for i in range(n)]
        for i, k in enumerate(keys):
            p.produce(topic, key=k, value=b"v" + k, partition=i % 2, on_delivery=cb)
        return keys

    visible: list[bytes] = []
    txp.init_transactions(30)
    for r in range(rounds):
        txp.begin_transaction()
        visible += send(txp, f"c{r}", 60)
        txp.commit_transaction(30)
        txp.begin_transaction()
        send(txp, f"a{r}", 20)
        assert txp.flush(30) == 0
        txp.abort_transaction(30)
        visible += send(plain, f"p{r}", 40)
        assert plain.flush(30) == 0
    assert errors == [], errors[:5]
    return visible


def test_offsets_translate_across_transactions(dc1, dc2, proxy, tmp_path):
    """Committed and aborted transactions before the commit point: their markers and
    aborted records take DC1 offsets that DC2 does not have in the same places. A
    read_committed group processes about 800 of the 1,000 visible records in DC1; in
    DC2 it reads exactly the others."""
    topic, group = unique("offs-txn"), unique("app-txn")
    harness.create_topic(dc1.bootstrap, topic, partitions=2)
    px = start_tee(proxy, dc1, dc2, tmp_path)
    visible = produce_transactions(px.bootstrap, topic, rounds=10)
    keys = set(visible)
    dc2_recs, took = teeutil.read_until(dc2.bootstrap, topic, lambda r: keys <= set(r.keys),
                                        60, read_committed=True)
    assert took is not None, "DC2 did not get every committed record"
    # What a read_committed consumer of DC1 sees. Tansu 0.6 lists no aborted
    # transactions in Fetch responses, so a read_committed consumer reading DC1 gets
    # the aborted records too (Apache Kafka filters them): DC1's committed view is
    # what it returns minus the aborted keys, and the group in DC1 "processes" aborted
    # records as well, which only moves its commit point.
    dc1_view = [r for r in teeutil.read_holding(dc1.bootstrap, topic, keys) if r.key in keys]
    assert len(dc1_view) == len(keys)
    consumed = consume_and_commit(dc1.bootstrap, topic, group, 1_000, read_committed=True)
    processed = [r for r in consumed if r.key in keys]
    want = expected_dc2_commits(dc1_view, dc2_recs, processed)
    wait_synced(px, dc2, group, topic, want)
    rest = consume_rest(dc2.bootstrap, topic, group, len(keys) - len(processed),
                        read_committed=True)
    assert_exactly_the_rest(keys, processed, rest, "transactions")
    at2 = dc2_offsets_of(dc2_recs)
    shifted = [r for r in dc1_view if at2[r.key][1] != r.offset]
    assert shifted, "the transactions moved no offset: the test shows nothing"
    print(f"\n[transactions] {len(processed)} committed records processed in DC1 (and "
          f"{len(consumed) - len(processed)} aborted ones Tansu hands out); {len(shifted)} "
          f"records sit at other offsets in DC2; DC2 commits {want}; the DC2 member read "
          f"exactly the other {len(rest)}")


def test_a_group_live_in_dc2_is_left_alone(dc1, dc2, proxy, tmp_path):
    """While the group has a member in DC2, its DC2 offsets are not touched; once that
    member leaves, the next round commits the translation."""
    topic, group = unique("offs-live"), unique("app-live")
    harness.create_topic(dc1.bootstrap, topic, partitions=2)
    px = start_tee(proxy, dc1, dc2, tmp_path)
    dc1_recs, dc2_recs = replicate(dc1, dc2, topic, make_trecords(2_000, "l", 2), px)
    stop = threading.Event()
    joined = threading.Event()

    # The live member subscribes to another topic, so it neither reads nor commits
    # this one.
    other = unique("offs-live-other")
    harness.create_topic(dc2.bootstrap, other, partitions=1)

    def live_member():
        c = group_consumer(dc2.bootstrap, group)
        c.subscribe([other])
        while not stop.is_set():
            c.poll(0.2)
            if c.assignment() is not None:
                joined.set()
        c.close()

    t = threading.Thread(target=live_member, daemon=True)
    t.start()
    try:
        consumed = consume_and_commit(dc1.bootstrap, topic, group, 1_200)
        deadline = time.monotonic() + 20
        while metric(px, "kafka_tee_consumer_offsets_live_groups_skipped") < 1:
            assert time.monotonic() < deadline, "the live DC2 group was not seen"
            time.sleep(0.2)
        time.sleep(3 * SYNC_MS / 1000)
        now = committed(dc2.bootstrap, group, topic, 2)
        assert all(o < 0 for o in now.values()), f"a live group's offsets changed: {now}"
    finally:
        stop.set()
        t.join(timeout=30)
    want = expected_dc2_commits(dc1_recs, dc2_recs, consumed)
    wait_synced(px, dc2, group, topic, want, timeout=60)
    print(f"\n[live] left alone while live; after the member left DC2 commits {want}")


@pytest.mark.parametrize("mode", ["single", "replication-group"])
def test_offsets_sync_after_a_restart(dc1, dc2, proxy, tmp_path, mode):
    """A restart between syncs: the group commits in DC1 and kafka-tee syncs it; the
    group commits further and kafka-tee stops before its next round (rounds every 5 s
    here). Restarted on its state directory (alone, or as the only member of a
    replication group), it syncs the new commit from the offset map it kept there: the
    DC2 member reads exactly the rest."""
    topic, group = unique(f"offs-restart-{mode}"), unique("app-restart")
    harness.create_topic(dc1.bootstrap, topic, partitions=2)
    rg = unique("tee-rg") if mode == "replication-group" else None
    state = tmp_path / "state"
    state.mkdir()
    first = start_tee(proxy, dc1, dc2, tmp_path, "kafka-tee-first", state_dir=state,
                      replication_group=rg, sync_ms=5000)
    if rg is not None:
        wait_owned(first, 2)
    dc1_recs, dc2_recs = replicate(dc1, dc2, topic, make_trecords(3_000, "r", 2), first)
    early = consume_and_commit(dc1.bootstrap, topic, group, 1_000)
    synced_before = wait_synced(first, dc2, group, topic,
                                expected_dc2_commits(dc1_recs, dc2_recs, early))
    later = consume_and_commit(dc1.bootstrap, topic, group, 800)
    assert first.stop() == 0
    at_stop = committed(dc2.bootstrap, group, topic, 2)
    again = start_tee(proxy, dc1, dc2, tmp_path, "kafka-tee-again", state_dir=state,
                      replication_group=rg)
    want = expected_dc2_commits(dc1_recs, dc2_recs, early + later)
    wait_synced(again, dc2, group, topic, want, timeout=60)
    rest = consume_rest(dc2.bootstrap, topic, group, 1_200)
    assert_exactly_the_rest({r.key for r in dc1_recs}, early + later, rest,
                            f"restart {mode}")
    print(f"\n[restart {mode}] synced {synced_before} before the restart, DC2 held {at_stop} "
          f"when it stopped; after it DC2 commits {want}; the DC2 member read exactly the "
          f"other {len(rest)}")


def test_a_new_owner_on_an_empty_disk_translates_older_offsets(dc1, dc2, proxy, tmp_path):
    """A replication group member takes over on an EMPTY state directory. Tansu 0.6
    keeps no OffsetCommit metadata (it answers null; Apache Kafka keeps it), so the
    offset map committed with the positions does not come back and the new owner knows
    where DC1's offsets went only from the takeover on. The offsets the group committed
    before that are translated by finding their batches in DC2 (by their bytes): the
    DC2 member of the group still reads exactly the records it had not processed."""
    topic, group = unique("offs-owner"), unique("app-owner")
    harness.create_topic(dc1.bootstrap, topic, partitions=2)
    rg = unique("tee-rg")
    first = start_tee(proxy, dc1, dc2, tmp_path, "kafka-tee-first", sync=False,
                      replication_group=rg)
    wait_owned(first, 2)
    dc1_recs, dc2_recs = replicate(dc1, dc2, topic, make_trecords(3_000, "o", 2), first)
    consumed = consume_and_commit(dc1.bootstrap, topic, group, 1_700)
    assert first.stop() == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    again = start_tee(proxy, dc1, dc2, tmp_path, "kafka-tee-again", state_dir=empty,
                      replication_group=rg)
    want = expected_dc2_commits(dc1_recs, dc2_recs, consumed)
    wait_synced(again, dc2, group, topic, want, timeout=60)
    assert metric(again, "kafka_tee_consumer_offsets_untranslated_partitions") == 0
    rest = consume_rest(dc2.bootstrap, topic, group, 1_300)
    assert_exactly_the_rest({r.key for r in dc1_recs}, consumed, rest, "new owner")
    print(f"\n[new owner] no offset map came back (Tansu keeps no commit metadata); the "
          f"older offsets were found in DC2: commits {want}, the DC2 member read exactly "
          f"the other {len(rest)}")


def wait_owned(px, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while metric(px, "kafka_tee_group_owned_partitions") < n:
        assert time.monotonic() < deadline, "the replication group did not form"
        time.sleep(0.2)
