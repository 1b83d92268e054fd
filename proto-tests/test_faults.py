"""Nothing acknowledged is lost: faults between kafka-tee and DC2, and of kafka-tee itself,
while a real producer keeps writing through the proxy.

Each test runs a confluent-kafka producer in the background (idempotent, five requests
in flight, numbered records on every partition), injects one fault, lets the producer
go on for a while, stops it, and then checks DC1 and DC2 directly: every record the
producer saw acknowledged, and every other record in DC1, is in DC2, and the first
copies in DC2 come in DC1 order. Copies beyond the first are allowed (at-least-once)
and printed as `duplicates: N`, with how long DC2 took to catch up (run with -s).
"""

from __future__ import annotations

import signal
import socket
import struct
import time

import pytest

import harness
import rawkafka
import teeutil
from harness import HOST, unique
from teeutil import (LoadProducer, Reader, check_replicated, metric, read_until,
                     write_config)

PARTITIONS = 3
RATE = 300  # records per second
CATCH_UP = 40  # seconds DC2 may take to hold everything once the producer stopped

# Each fault test is bounded in time.
pytestmark = pytest.mark.timeout(90)


@pytest.fixture(autouse=True)
def _stop_producers():
    """Background producers of a failed test do not outlive it."""
    yield
    teeutil.abandon_producers()


def settle(lp: LoadProducer, dc1: harness.Broker, dc2: harness.Broker, topic: str,
           what: str, acked_offsets: bool = True) -> teeutil.ReplicationCheck:
    """Stops the producer and checks DC2 against DC1 and the acks; prints the
    duplicate count and the catch-up time."""
    acked = lp.stop()
    assert lp.errors == [], f"{what}: the producer saw errors: {lp.errors[:5]}"
    assert len(acked) == lp.sent, f"{what}: {len(acked)} of {lp.sent} acked"
    acked_keys = {r.key for r in acked}
    with Reader(dc2.bootstrap, topic) as reader:
        caught_up = wait_dc2_has(reader, acked_keys, CATCH_UP)
    dc1_recs = teeutil.read_holding(dc1.bootstrap, topic, acked_keys)
    dc1_keys = {r.key for r in dc1_recs}
    dc2_recs, _ = read_until(dc2.bootstrap, topic, lambda r: dc1_keys <= set(r.keys),
                             CATCH_UP, idle=1.5)
    chk = check_replicated(acked, dc1_recs, dc2_recs, acked_offsets)
    print(f"\n[{what}] acked {chk.acked}, DC1 {chk.dc1_records}, DC2 {chk.dc2_records}, "
          f"DC1 duplicates {chk.dc1_duplicates}, acked without offset "
          f"{chk.acked_without_offset}")
    print(f"[{what}] every acked record in DC2 {caught_up:.2f}s after the last ack")
    print(f"duplicates: {chk.duplicates}")
    return chk


def wait_dc2_has(reader: Reader, keys: set[bytes], timeout: float) -> float:
    """Reads DC2 until it holds `keys`; returns the seconds it took."""
    t0 = time.monotonic()
    while not keys <= set(reader.keys):
        if time.monotonic() - t0 > timeout:
            missing = keys - set(reader.keys)
            raise AssertionError(f"DC2 still misses {len(missing)} of {len(keys)} records "
                                 f"after {timeout:.0f}s, e.g. {sorted(missing)[:3]}")
        reader.poll(0.3)
    return time.monotonic() - t0


def produce_for(lp: LoadProducer, seconds: float) -> None:
    """Lets the producer run `seconds` more and checks it kept getting acks."""
    before = lp.acked_count()
    lp.wait_acked(before + int(RATE * seconds * 0.5), timeout=seconds * 3 + 5)
    time.sleep(max(0.0, seconds - 0.1))


def acked_during(lp: LoadProducer, seconds: float) -> int:
    """Acks the producer got over `seconds` (the fault is going on meanwhile)."""
    before = lp.acked_count()
    time.sleep(seconds)
    return lp.acked_count() - before


def new_topic(px: harness.Proxy, prefix: str) -> str:
    return new_topic_at(px, prefix)


def new_topic_at(server, prefix: str) -> str:
    topic = unique(prefix)
    harness.create_topic(server.bootstrap, topic, partitions=PARTITIONS)
    return topic


# ------------------------------------------------------------------------ DC2 faults


def test_dc2_stops_answering(dc1, dc2, proxy, tmp_path):
    """DC2's broker is frozen (SIGSTOP) for 8 s while the producer goes on, then
    resumes (SIGCONT). The replicator's DC2 request timeout is 3 s, so its requests
    time out during the freeze and are sent again."""
    cfg = write_config(tmp_path / "tee.toml", {"replication": {"request_timeout_ms": 3000}})
    px = proxy(dc1.bootstrap, target=dc2.bootstrap, state_dir=tmp_path / "state",
               config=cfg)
    topic = new_topic(px, "fault-sigstop")
    lp = LoadProducer(px.bootstrap, topic, PARTITIONS, RATE).start()
    try:
        lp.wait_acked(RATE * 2, timeout=20)
        reader = Reader(dc2.bootstrap, topic)
        dc2.proc.signal(signal.SIGSTOP)
        try:
            during = acked_during(lp, 8.0)
        finally:
            dc2.proc.signal(signal.SIGCONT)
        before_cont = {r.key for r in lp.acked_snapshot()}
        # DC1 producers are not held up by a frozen DC2.
        assert during >= RATE * 8 * 0.25, f"only {during} acks during the 8 s freeze"
        took = wait_dc2_has(reader, before_cont, CATCH_UP)
        reader.close()
        print(f"\n[sigstop] {len(before_cont)} records acked before SIGCONT were in DC2 "
              f"{took:.2f}s after it")
        produce_for(lp, 3)
    finally:
        dc2.proc.signal(signal.SIGCONT)
    settle(lp, dc1, dc2, topic, "sigstop")


def test_slow_link_then_cut_then_restored(dc1, relayed_dc2, proxy, tmp_path):
    """The link to DC2 gets slow (300 ms per chunk), is cut mid-stream and stays
    silent (black hole) for 6 s, then comes back."""
    dc2, relay = relayed_dc2
    cfg = write_config(tmp_path / "tee.toml", {"replication": {"request_timeout_ms": 3000}})
    px = proxy(dc1.bootstrap, target=f"{HOST}:{relay.port}", state_dir=tmp_path / "state",
               config=cfg)
    topic = new_topic(px, "fault-relay")
    lp = LoadProducer(px.bootstrap, topic, PARTITIONS, RATE).start()
    lp.wait_acked(RATE * 2, timeout=20)
    assert relay.connections() > 0, "the proxy does not reach DC2 through the relay"

    relay.set_delay(0.3)
    slow = acked_during(lp, 5.0)
    bytes_before_cut = relay.bytes_up
    cut = relay.cut()
    relay.blackhole(True)
    silent = acked_during(lp, 6.0)
    relay.blackhole(False)
    relay.set_delay(0.0)
    restored_at_keys = {r.key for r in lp.acked_snapshot()}
    print(f"\n[relay] acks while slow: {slow}, while black-holed: {silent}; "
          f"connections cut: {cut}; bytes to DC2 before the cut: {bytes_before_cut}")
    assert cut > 0, "no DC2 connection was open to cut"
    assert slow >= RATE * 5 * 0.25 and silent >= RATE * 6 * 0.25, \
        "DC1 producers were held up by the DC2 link"
    with Reader(dc2.bootstrap, topic) as reader:
        took = wait_dc2_has(reader, restored_at_keys, CATCH_UP)
    print(f"[relay] {len(restored_at_keys)} records acked before the link came back were "
          f"in DC2 {took:.2f}s after it")
    produce_for(lp, 3)
    settle(lp, dc1, dc2, topic, "relay")


# relayed_dc1 and relayed_dc2: conftest.py.


def dc1_record_count(dc1: harness.Broker, topic: str) -> int:
    """Records in partition 0, read with raw Fetch requests straight to the broker's own
    port (its metadata points at the relay)."""
    return sum(b.record_count for b in rawkafka.read_batches(dc1.bootstrap, topic, 0)
               if not b.control)


def produce_into_dc2(px: harness.Proxy, dc2: harness.Broker, topic: str, n: int, tag: str,
                     partitions: int = PARTITIONS) -> teeutil.Produced:
    """Produces `n` records (spread over `partitions`) through `px` and waits until
    `dc2` holds them; returns what was acked."""
    res = teeutil.produce_confluent(px.bootstrap, topic,
                                    teeutil.make_trecords(n, tag, partitions=partitions))
    assert res.errors == []
    with Reader(dc2.bootstrap, topic) as reader:
        wait_dc2_has(reader, {r.key for r in res.acked}, CATCH_UP)
    return res


def topic_with_records_in_dc2(px: harness.Proxy, dc2: harness.Broker,
                              prefix: str) -> tuple[str, set[bytes]]:
    """A new one-partition topic with 20 records produced through `px` and in DC2;
    returns the topic and the records' keys."""
    topic = unique(prefix)
    harness.create_topic(px.bootstrap, topic, partitions=1)
    before = produce_into_dc2(px, dc2, topic, 20, "before", partitions=1)
    return topic, {r.key for r in before.acked}


def send_orphans(px: harness.Proxy, dc1: harness.Broker, topic: str, tag: str,
                 acks: int) -> tuple[socket.socket, list[bytes]]:
    """Sends three Produce requests of 10 records each to partition 0 through `px` on a
    raw connection, and waits until DC1 stores them (20 records were there before).
    Returns the connection, still open, and the records' keys."""
    orphans = [f"{tag}-{i}-{j}".encode() for i in range(3) for j in range(10)]
    s = socket.create_connection((HOST, px.port))
    for i in range(3):
        batch = rawkafka.encode_batch([(k, b"v-" + k) for k in orphans[i * 10:i * 10 + 10]],
                                      teeutil.TS_BASE + i)
        s.sendall(rawkafka.produce_request_v3(100 + i, topic, 0, batch, acks=acks))
    deadline = time.monotonic() + 10
    while dc1_record_count(dc1, topic) < 50:
        if time.monotonic() > deadline:
            s.close()
            raise AssertionError("DC1 never stored the 30 records")
        time.sleep(0.1)
    return s, orphans


@pytest.mark.parametrize("acks", [1, 0])
def test_client_reset_before_dc1_answers(relayed_dc1, dc2, proxy, tmp_path, acks):
    """A client sends Produce requests and its connection is reset before DC1's answers
    come back (DC1's responses are delayed by a relay; its log already has the records).
    DC1 acknowledged those batches to the proxy, so DC2 must get them too once later
    records on the same partition have been copied."""
    dc1, relay = relayed_dc1
    px = proxy(f"{HOST}:{relay.port}", target=dc2.bootstrap, state_dir=tmp_path / "state")
    topic, before = topic_with_records_in_dc2(px, dc2, f"fault-reset-acks{acks}")
    relay.set_delay(2.0, direction="down")
    s, orphans = send_orphans(px, dc1, topic, "reset", acks)
    # Reset (RST), while DC1's answers are still on their way back.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    time.sleep(2.5)  # the delayed answers reach the proxy after the reset
    relay.set_delay(0.0)

    after = teeutil.produce_confluent(px.bootstrap, topic,
                                      teeutil.make_trecords(20, "after", partitions=1))
    assert after.errors == []
    want = before | set(orphans) | {r.key for r in after.acked}
    with Reader(dc2.bootstrap, topic) as reader:
        wait_dc2_has(reader, {r.key for r in after.acked}, CATCH_UP)
        deadline = time.monotonic() + 10
        while not want <= set(reader.keys) and time.monotonic() < deadline:
            reader.poll(0.3)
        missing = sorted(want - set(reader.keys))
    v = teeutil.run_verify(dc1.bootstrap, dc2.bootstrap, [topic])
    print(f"\n[client-reset acks={acks}] DC2 misses {len(missing)} of the 30 records DC1 "
          f"stored; verify exit {v.returncode}: {v.stdout.strip().splitlines()[:1]}")
    assert not missing, (f"{len(missing)} records DC1 acknowledged to the proxy never reached "
                         f"DC2 (later records did), e.g. {missing[:3]}\n{v.stdout}")


def test_dc1_link_cut_mid_stream(relayed_dc1, dc2, proxy, tmp_path):
    """The link between the proxy and DC1 is cut while Produce answers are on their way
    back (the relay delays them): the producer's requests are retried on a new
    connection, and whatever DC1 appended, answered or not, reaches DC2.

    Tansu 0.6 answers the idempotent producer's requests after the cut (librdkafka bumps
    its epoch and restarts its sequences) with base offsets that restart at 0, also
    without the proxy in between, so the offsets the producer saw are not compared with
    DC1's here; the count is printed."""
    dc1, relay = relayed_dc1
    px = proxy(f"{HOST}:{relay.port}", target=dc2.bootstrap, state_dir=tmp_path / "state")
    topic = new_topic(px, "fault-dc1-cut")
    lp = LoadProducer(px.bootstrap, topic, PARTITIONS, RATE).start()
    lp.wait_acked(RATE * 2, timeout=20)
    relay.set_delay(0.5, direction="down")
    time.sleep(1.0)
    cut = relay.cut()
    relay.set_delay(0.0)
    assert cut > 0, "no DC1 connection was open to cut"
    produce_for(lp, 3)
    acked = lp.acked_snapshot()
    chk = settle(lp, dc1, dc2, topic, "dc1-cut", acked_offsets=False)
    dc1_at = {r.key: (r.partition, r.offset) for r in read_until(
        dc1.bootstrap, topic, lambda r: len(r.records) >= chk.dc1_records, 30, idle=0.5)[0]}
    wrong = sum(1 for r in acked if r.offset is not None and r.offset >= 0
                and dc1_at.get(r.key) != (r.partition, r.offset))
    print(f"[dc1-cut] connections cut: {cut}; acks whose offset differs from DC1's "
          f"(Tansu): {wrong}")


@pytest.mark.parametrize("follow_ms", [300, 0], ids=["follow", "follow-off"])
def test_answers_lost_with_the_dc1_link_and_no_later_traffic(relayed_dc1, dc2, proxy,
                                                              tmp_path, follow_ms):
    """DC1 appends three Produce requests, but the link between the proxy and DC1 is cut
    while their answers are on the way back (a relay delays them), so the proxy never
    learns where DC1 put them, and nothing more is produced to the partition. With
    `replication.follow_interval_ms` the idle partition's end in DC1 is looked up and
    the 30 records reach DC2 (`verify` finds DC2 identical to DC1). With it off (0)
    they stay missing until later traffic on the partition reveals them: shown here by
    their absence, which is what the look at DC1's end fixes."""
    dc1, relay = relayed_dc1
    cfg = write_config(tmp_path / "tee.toml",
                       {"replication": {"follow_interval_ms": follow_ms}})
    px = proxy(f"{HOST}:{relay.port}", target=dc2.bootstrap, state_dir=tmp_path / "state",
               config=cfg, admin=True)
    topic, _ = topic_with_records_in_dc2(px, dc2, "fault-lost-answers")
    relay.set_delay(3.0, direction="down")
    s, orphans = send_orphans(px, dc1, topic, "lost", acks=1)
    try:
        cut = relay.cut()
        assert cut > 0, "no DC1 connection was open to cut"
        # The proxy lost DC1 mid-answer: it closes the client's connection unanswered.
        assert harness.wait_closed(s, 10) == b"", "the proxy answered requests DC1 never answered"
    finally:
        s.close()
    relay.set_delay(0.0)
    cut_at = time.monotonic()

    with Reader(dc2.bootstrap, topic) as reader:
        if follow_ms:
            took = wait_dc2_has(reader, set(orphans), 20)
        else:
            end = time.monotonic() + 4
            while time.monotonic() < end:
                reader.poll(0.3)
            took = None
        got = set(reader.keys)
    v = teeutil.run_verify(dc1.bootstrap, dc2.bootstrap, [topic])
    found = metric(px, "kafka_tee_follow_offsets_total")
    print(f"\n[lost-answers follow={follow_ms}] DC2 holds {len(set(orphans) & got)} of the 30; "
          f"offsets found in DC1 by the idle check: {found:.0f}; verify exit {v.returncode}")
    if follow_ms:
        print(f"[lost-answers] in DC2 {time.monotonic() - cut_at:.2f}s after the cut "
              f"({took:.2f}s of reading)")
        assert v.returncode == 0, v.stdout
        assert found >= 30
    else:
        assert not set(orphans) & got, "records copied with the idle check off"
        assert v.returncode != 0, "verify found DC2 complete although 30 records are missing"
        assert found == 0


def test_dc2_that_lost_its_log_is_reported(dc1, dc2, proxy, tmp_path, logdir, request):
    """DC2's broker is replaced by an empty one on the same address (in-memory storage:
    like a DC2 cluster rebuilt from nothing). The records DC2 had acknowledged are gone
    from it, which no answer of DC2's says; but the replicator sees DC2 put its next
    batch at offset 0 where its previous one had ended, and reports it as an error
    (kafka_tee_dc2_offset_jumps_total, reason=rewound)."""
    px = proxy(dc1.bootstrap, target=dc2.bootstrap, state_dir=tmp_path / "state",
               admin=True)
    topic, _ = topic_with_records_in_dc2(px, dc2, "fault-dc2-rewound")
    rewound = 'reason="rewound"'
    assert metric(px, "kafka_tee_dc2_offset_jumps_total", rewound) == 0
    dc2.proc.signal(signal.SIGKILL)
    dc2.proc.wait(timeout=10)
    fresh = teeutil.start_tansu_at("dc2", logdir, int(dc2.bootstrap.rsplit(":", 1)[1]))
    teeutil.register(request, fresh.proc)
    produce_into_dc2(px, fresh, topic, 20, "after", partitions=1)
    deadline = time.monotonic() + 10
    while metric(px, "kafka_tee_dc2_offset_jumps_total", rewound) == 0:
        assert time.monotonic() < deadline, "DC2 lost 20 acknowledged records unnoticed"
        time.sleep(0.2)
    assert "offsets went back" in px.proc.log_text()


def test_producer_straight_to_dc1_alongside_the_proxy(dc1, dc2, proxy, tmp_path):
    """A producer through the proxy and one straight to DC1 write to the same partitions
    at the same time. The proxy copies its own batches from memory and reads the other
    producer's back from DC1 (the holes between its batches, then the look at DC1's end
    once the partition is idle): DC2 must end up identical to DC1, every record once,
    in DC1 order. The direct producer starts once the proxy's has records on every
    partition, since a partition is replicated from the first batch acked through the
    proxy."""
    px = proxy(dc1.bootstrap, target=dc2.bootstrap, state_dir=tmp_path / "state")
    topic = new_topic(px, "fault-mixed")
    through = LoadProducer(px.bootstrap, topic, PARTITIONS, RATE, tag="proxy").start()
    through.wait_acked(RATE // 2, timeout=30)
    direct = LoadProducer(dc1.bootstrap, topic, PARTITIONS, RATE, tag="direct").start()
    through.wait_acked(RATE * 4, timeout=30)
    direct.wait_acked(RATE * 4, timeout=30)
    acked = through.stop() + direct.stop()
    assert through.errors == [] and direct.errors == [], (through.errors + direct.errors)[:5]
    chk, took = teeutil.assert_dc2_identical(dc1.bootstrap, dc2.bootstrap, topic, acked,
                                             CATCH_UP)
    print(f"\n[mixed] {len(through.acked)} records through the proxy, {len(direct.acked)} "
          f"straight to DC1; DC2 {chk.dc2_records} records, each once, complete {took:.2f}s "
          f"after the producers stopped")


# One of two instances down, restarted on an empty state directory (a replication
# group): test_group.py.


# ---------------------------------------------------------------------- proxy faults


def test_proxy_killed_and_restarted_on_same_state_dir(dc1, dc2, proxy, tmp_path):
    """SIGKILL under load, restart on the same ports and --state-dir: after some more
    produce, everything acked before the crash is in DC2."""
    state = tmp_path / "state"
    px = proxy(dc1.bootstrap, target=dc2.bootstrap, state_dir=state)
    topic = new_topic(px, "fault-kill")
    lp = LoadProducer(px.bootstrap, topic, PARTITIONS, RATE).start()
    lp.wait_acked(RATE * 3, timeout=20)
    px.proc.signal(signal.SIGKILL)
    px.proc.wait(timeout=10)
    killed_at = time.monotonic()
    before_crash = lp.acked_snapshot()
    px2 = proxy(dc1.bootstrap, target=dc2.bootstrap, state_dir=state, port=px.port,
                name="kafka-tee-restarted")
    print(f"\n[sigkill] {len(before_crash)} acked before the crash; proxy back after "
          f"{time.monotonic() - killed_at:.2f}s")
    lp.wait_acked(len(before_crash) + RATE * 3, timeout=30)
    with Reader(dc2.bootstrap, topic) as reader:
        took = wait_dc2_has(reader, {r.key for r in before_crash}, CATCH_UP)
    print(f"[sigkill] records acked before the crash in DC2 {time.monotonic() - killed_at:.2f}s "
          f"after it ({took:.2f}s of reading)")
    chk = settle(lp, dc1, dc2, topic, "sigkill")
    assert px2.proc.poll() is None
    assert chk.acked >= len(before_crash)


def test_proxy_killed_partition_without_new_records_still_caught_up(dc1, dc2, proxy,
                                                                    tmp_path):
    """Records acked before a crash, on partitions that get no new records after the
    restart, must reach DC2 too. DC2 is frozen while they are produced, so most of them
    are not in DC2 when the proxy is killed; the restarted proxy gets records for
    another topic only."""
    state = tmp_path / "state"
    px = proxy(dc1.bootstrap, target=dc2.bootstrap, state_dir=state)
    quiet = new_topic(px, "fault-kill-quiet")
    busy = new_topic(px, "fault-kill-busy")
    first = produce_into_dc2(px, dc2, quiet, 30, "q0")
    dc2.proc.signal(signal.SIGSTOP)
    try:
        lp = LoadProducer(px.bootstrap, quiet, PARTITIONS, RATE).start()
        lp.wait_acked(RATE * 2, timeout=20)
        acked = lp.stop() + first.acked
        assert lp.errors == [], lp.errors[:5]
        time.sleep(1.5)  # a checkpoint interval: the crash is not before a write
        px.proc.signal(signal.SIGKILL)
        px.proc.wait(timeout=10)
    finally:
        dc2.proc.signal(signal.SIGCONT)
    proxy(dc1.bootstrap, target=dc2.bootstrap, state_dir=state, port=px.port,
          name="kafka-tee-restarted")
    restarted = time.monotonic()
    busy_lp = LoadProducer(px.bootstrap, busy, PARTITIONS, RATE, tag="busy").start()
    keys = {r.key for r in acked}
    with Reader(dc2.bootstrap, quiet) as reader:
        wait_dc2_has(reader, keys, CATCH_UP)
    took = time.monotonic() - restarted
    busy_lp.wait_acked(RATE, timeout=30)
    busy_lp.stop()
    assert busy_lp.errors == [], busy_lp.errors[:5]
    dc1_recs = teeutil.read_holding(dc1.bootstrap, quiet, keys)
    dc2_recs, _ = read_until(dc2.bootstrap, quiet, lambda r: keys <= set(r.keys), 10,
                             idle=1.0)
    chk = check_replicated(acked, dc1_recs, dc2_recs)
    print(f"\n[sigkill-quiet] {len(acked)} acked on the quiet topic before the crash were in "
          f"DC2 {took:.2f}s after the restart (no new records there)")
    print(f"duplicates: {chk.duplicates}")


def test_proxy_killed_with_transactions_not_yet_in_dc2(dc1, dc2, proxy, tmp_path):
    """Committed and aborted transactions acked by DC1 while DC2 is frozen, then the
    proxy is killed: after the restart they are read back from DC1, and DC2 gets the
    committed records and plain ones, never the aborted ones."""
    state = tmp_path / "state"
    px = proxy(dc1.bootstrap, target=dc2.bootstrap, state_dir=state)
    topic = new_topic(px, "fault-kill-txn")
    first = produce_into_dc2(px, dc2, topic, 30, "t0")
    dc2.proc.signal(signal.SIGSTOP)
    try:
        committed, aborted = teeutil.produce_transaction_mix(px.bootstrap, topic,
                                                             partitions=PARTITIONS)
        time.sleep(1.5)  # a checkpoint interval: the crash is not before a write
        px.proc.signal(signal.SIGKILL)
        px.proc.wait(timeout=10)
    finally:
        dc2.proc.signal(signal.SIGCONT)
    px2 = proxy(dc1.bootstrap, target=dc2.bootstrap, state_dir=state, port=px.port,
                name="kafka-tee-restarted", admin=True)
    # New records on every partition: the restarted proxy reads what came before them
    # back from DC1.
    after = teeutil.produce_confluent(px.bootstrap, topic,
                                      teeutil.make_trecords(6, "t1", partitions=PARTITIONS))
    assert after.errors == []
    want = {r.key for r in first.acked} | set(committed) | {r.key for r in after.acked}
    dc2_recs, took = read_until(dc2.bootstrap, topic, lambda r: want <= set(r.keys),
                                CATCH_UP, idle=1.5)
    keys = [r.key for r in dc2_recs]
    assert not set(keys) & set(aborted), \
        f"aborted records in DC2: {sorted(set(keys) & set(aborted))[:5]}"
    assert took is not None, f"DC2 misses {sorted(want - set(keys))[:5]} " \
                             f"({len(want - set(keys))} of {len(want)})"
    assert set(keys) == want, f"unexpected records in DC2: {sorted(set(keys) - want)[:5]}"
    skipped = metric(px2, "kafka_tee_catchup_skipped_batches_total", 'reason="aborted"')
    assert skipped > 0, "the read-back never met the aborted transaction (test too weak?)"
    print(f"\n[sigkill-txn] {len(want)} visible records in DC2 {took:.2f}s after the "
          f"restart's first produce")
    print(f"duplicates: {len(keys) - len(set(keys))}")


def test_proxy_killed_before_any_periodic_checkpoint(dc1, dc2, proxy, tmp_path):
    """A partition's first records are acked and the proxy is killed before a periodic
    checkpoint could name the partition (the interval is 10 minutes, and DC2 is frozen
    so nothing reaches it). The restarted proxy must still know where each partition
    started: every acked record reaches DC2 without new produce to that topic."""
    cfg = write_config(tmp_path / "tee.toml",
                       {"replication": {"checkpoint_interval_ms": 600_000}})
    state = tmp_path / "state"
    px = proxy(dc1.bootstrap, target=dc2.bootstrap, state_dir=state, config=cfg)
    topic = new_topic(px, "fault-kill-early")
    dc2.proc.signal(signal.SIGSTOP)
    try:
        sent = teeutil.produce_confluent(px.bootstrap, topic,
                                         teeutil.make_trecords(60, "e0", partitions=PARTITIONS))
        assert sent.errors == [], sent.errors[:5]
        assert len(sent.acked) == 60
        px.proc.signal(signal.SIGKILL)
        px.proc.wait(timeout=10)
    finally:
        dc2.proc.signal(signal.SIGCONT)
    restarted = time.monotonic()
    proxy(dc1.bootstrap, target=dc2.bootstrap, state_dir=state, port=px.port,
          name="kafka-tee-restarted", config=cfg)
    keys = {r.key for r in sent.acked}
    reading = time.monotonic()
    dc2_recs, took = read_until(dc2.bootstrap, topic, lambda r: keys <= set(r.keys),
                                CATCH_UP, idle=1.5)
    got = {r.key for r in dc2_recs}
    assert took is not None, (f"DC2 misses {len(keys - got)} of {len(keys)} records acked "
                              f"before the crash, e.g. {sorted(keys - got)[:3]}")
    dc1_recs = teeutil.read_holding(dc1.bootstrap, topic, keys)
    chk = check_replicated(sent.acked, dc1_recs, dc2_recs)
    print(f"\n[sigkill-early] {len(keys)} records acked before any periodic checkpoint in "
          f"DC2 {reading - restarted + took:.2f}s after the restart")
    print(f"duplicates: {chk.duplicates}")


def test_failing_checkpoint_disk_does_not_hold_producers(dc1, dc2, proxy, tmp_path):
    """The state directory becomes unwritable (replaced by a file) while the proxy runs:
    a new partition's first ack cannot wait for its checkpoint, so it goes out anyway,
    promptly, counted as unsaved; replication itself goes on."""
    state = tmp_path / "state"
    px = proxy(dc1.bootstrap, target=dc2.bootstrap, state_dir=state, admin=True)
    topic = new_topic(px, "fault-disk")
    if state.exists():
        state.rename(tmp_path / "state-gone")
    state.write_text("not a directory\n")
    t0 = time.monotonic()
    sent = teeutil.produce_confluent(px.bootstrap, topic,
                                     teeutil.make_trecords(30, "d0", partitions=PARTITIONS))
    took = time.monotonic() - t0
    assert sent.errors == [], sent.errors[:5]
    assert len(sent.acked) == 30
    assert took < 4, f"producing took {took:.1f}s: the acks waited for the failing disk"
    assert metric(px, "kafka_tee_checkpoint_start_unsaved_total") >= 1
    assert metric(px, "kafka_tee_checkpoint_errors_total") >= 1
    keys = {r.key for r in sent.acked}
    _, reached = read_until(dc2.bootstrap, topic, lambda r: keys <= set(r.keys), CATCH_UP)
    assert reached is not None, "DC2 did not get the records"
    assert "a crash now would not copy it" in px.proc.log_text()
    print(f"\n[disk] 30 records acked in {took:.2f}s with the checkpoint failing")


def test_tiny_memory_bound_reads_back_from_dc1(dc1, dc2, proxy, tmp_path):
    """max_pending_bytes = 1024: almost no batch fits in memory, so the replicator reads
    most of the data back from DC1 (catch-up)."""
    cfg = write_config(tmp_path / "tee.toml", {"replication": {"max_pending_bytes": 1024}})
    px = proxy(dc1.bootstrap, target=dc2.bootstrap, state_dir=tmp_path / "state",
               config=cfg, admin=True)
    topic = new_topic(px, "fault-tiny")
    # Every record is larger than the bound, so no captured batch fits in memory.
    lp = LoadProducer(px.bootstrap, topic, PARTITIONS, RATE, value_size=1500).start()
    produce_for(lp, 8)
    chk = settle(lp, dc1, dc2, topic, "tiny-bound")
    total = metric(px, "kafka_tee_replicated_batches_total")
    from_dc1 = metric(px, "kafka_tee_catchup_batches_total")
    print(f"[tiny-bound] batches replicated {total:.0f}, of which read back from DC1 "
          f"{from_dc1:.0f}")
    assert total > 0 and from_dc1 >= total / 2, \
        f"only {from_dc1:.0f} of {total:.0f} batches came through catch-up"
    assert chk.dc2_records >= chk.dc1_records


def latency_ms(lat: list[float]) -> str:
    p50, p99 = teeutil.percentile(lat, 0.5), teeutil.percentile(lat, 0.99)
    return (f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
            f"max {max(lat) * 1000:.1f} ms over {len(lat)} records")


def test_dc2_unreachable_at_start(dc1, proxy, tmp_path, logdir, request):
    """The proxy starts while nothing listens at DC2's address. Producers through it
    are neither failed nor slowed; once DC2 comes up, it catches up."""
    # Baseline: the same producer straight to DC1.
    direct = LoadProducer(dc1.bootstrap, new_topic_at(dc1, "fault-direct"), PARTITIONS,
                          RATE, tag="direct").start()
    direct.wait_acked(RATE * 3, timeout=30)
    direct.stop()
    assert direct.errors == []
    base = direct.latency_after(1.0)

    dc2_port = harness.free_port()
    px = proxy(dc1.bootstrap, target=f"{HOST}:{dc2_port}", state_dir=tmp_path / "state")
    topic = new_topic(px, "fault-late-dc2")
    lp = LoadProducer(px.bootstrap, topic, PARTITIONS, RATE).start()
    dc2 = None
    try:
        lp.wait_acked(RATE * 6, timeout=30)
        lat = lp.latency_after(1.0)
        print(f"\n[late-dc2] delivery latency straight to DC1: {latency_ms(base)}")
        print(f"[late-dc2] delivery latency through the proxy without DC2: {latency_ms(lat)}")
        assert lp.errors == [], lp.errors[:5]
        p99 = teeutil.percentile(lat, 0.99)
        assert p99 < 1.0, f"producers slowed down while DC2 is missing: p99 {p99:.2f}s"
        assert "cannot connect" in px.proc.log_text(), "the proxy never tried DC2?"
        started = time.monotonic()
        dc2 = teeutil.start_tansu_at("dc2", logdir, dc2_port)
        teeutil.register(request, dc2.proc)
        up_keys = {r.key for r in lp.acked_snapshot()}
        reader = Reader(dc2.bootstrap, topic, topic_timeout=CATCH_UP)
        took = wait_dc2_has(reader, up_keys, CATCH_UP)
        reader.close()
        print(f"[late-dc2] {len(up_keys)} records acked before DC2 started were in DC2 "
              f"{time.monotonic() - started:.2f}s after it started")
        produce_for(lp, 3)
        settle(lp, dc1, dc2, topic, "late-dc2")
    finally:
        if dc2 is not None:
            dc2.stop()
