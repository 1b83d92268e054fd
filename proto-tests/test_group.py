"""Replication groups: several kafka-tee instances started with the same
`replication.group` share the replication of DC1's partitions through Kafka's group
membership protocol at DC1's coordinator (JoinGroup/SyncGroup/Heartbeat).

Real Tansu brokers for DC1 and DC2, real confluent-kafka producers that use every
instance as a bootstrap server, and real kafka-tee processes that each test starts and
stops itself (by pid). Members are killed (SIGKILL, never restarted), added, stopped
with SIGTERM, frozen (SIGSTOP) past their session timeout and resumed, or restarted on
an empty state directory, while the producers go on. Afterwards DC2 must hold every
DC1 record once, in DC1 order (`teeutil.assert_dc2_identical`, which also runs
`kafka-tee verify`), no member may have seen another writer in its DC2 partitions, and
the group's committed offsets in DC1 (consumer group NAME) must equal DC1's end offset
of every partition.

Each test prints a summary line (records, how long DC2 took to be complete, the
takeover metric); run with -s to see them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

import harness
import teeutil
from harness import HOST, unique
from teeutil import LoadProducer, make_trecords, read_until, write_config

PARTITIONS = 8
RATE = 300  # records per second, over all producers of a test
DC2_WAIT = 90  # seconds DC2 may take to hold everything once the producers stopped
SESSION_MS = 6000  # Tansu's first join waits about session / 2
HEARTBEAT_MS = 500
GROUP_WAIT = 90  # seconds a group may take to settle into a generation

GROUP_METRICS = ("kafka_tee_group_generation", "kafka_tee_group_owned_partitions",
                 "kafka_tee_group_rebalances_total")
# The last takeover's duration: printed when the member has it.
TAKEOVER = "kafka_tee_group_takeover_seconds"

pytestmark = pytest.mark.timeout(420)


@pytest.fixture(autouse=True)
def _stop_producers():
    """Background producers of a failed test do not outlive it."""
    yield
    teeutil.abandon_producers()


# ------------------------------------------------------------------------ members


def group_config(path: Path, group: str | None, **extra) -> Path:
    """A config whose `[replication]` section puts the instance in `group` (None: the
    group comes from the command line) with the tests' session and heartbeat."""
    section = {"group_session_timeout_ms": SESSION_MS,
               "group_heartbeat_interval_ms": HEARTBEAT_MS}
    if group is not None:
        section["group"] = group
    section.update(extra)
    return write_config(path, {"replication": section})


def start_member(proxy, dc1, dc2, tmp_path: Path, group: str, name: str,
                 state_dir: Path | None = None, port: int | None = None,
                 group_from_cli: bool = False) -> harness.Proxy:
    cfg = group_config(tmp_path / f"{name}.toml", None if group_from_cli else group)
    extra = ["--replication-group", group] if group_from_cli else []
    return proxy(dc1.bootstrap, target=dc2.bootstrap, config=cfg, admin=True,
                 state_dir=state_dir, port=port, name=name, extra=extra)


def bootstrap_of(members: list[harness.Proxy], rotate: int = 0) -> str:
    """Every member as a bootstrap server (a comma list), starting with member
    `rotate`."""
    order = members[rotate:] + members[:rotate]
    return ",".join(m.bootstrap for m in order)


def alive(members: list[harness.Proxy]) -> list[harness.Proxy]:
    return [m for m in members if m.proc.poll() is None]


# ------------------------------------------------------------------------ metrics


def scrape(px: harness.Proxy) -> dict[str, float]:
    """Every metric of the member's /metrics, its series summed per name."""
    body = urllib.request.urlopen(f"http://{HOST}:{px.admin_port}/metrics",
                                  timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        try:
            value = float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        out[name] = out.get(name, 0.0) + value
    return out


def group_view(px: harness.Proxy) -> dict[str, float]:
    """The group metrics one member has (a gauge appears once it is first set)."""
    m = scrape(px)
    return {n: m[n] for n in (*GROUP_METRICS, TAKEOVER) if n in m}


def settled(views: dict[str, dict[str, float]], total: int, min_generation: float) -> bool:
    """Every member has the group metrics, one generation (at least `min_generation`),
    and the partitions they own add up to `total`."""
    if not all(n in v for v in views.values() for n in GROUP_METRICS):
        return False
    gens = {v["kafka_tee_group_generation"] for v in views.values()}
    owned = sum(v["kafka_tee_group_owned_partitions"] for v in views.values())
    return len(gens) == 1 and min(gens) >= min_generation and owned == total


def dc1_partition_count(dc1: harness.Broker) -> int:
    """Partitions of DC1's non-internal topics: what the group shares."""
    md = teeutil.no_autocreate_admin(dc1.bootstrap).list_topics(timeout=10)
    return sum(len(t.partitions) for name, t in md.topics.items()
               if not name.startswith("__") and t.error is None)


def wait_stable(members: list[harness.Proxy], total: int, min_generation: float = 0,
                timeout: float = GROUP_WAIT) -> tuple[float, dict[str, dict[str, float]]]:
    """Waits until every member reports the same generation, at least
    `min_generation`, and their owned partitions add up to `total`. Returns the seconds
    it took and each member's group metrics."""
    t0 = time.monotonic()
    views: dict[str, dict[str, float]] = {}
    while True:
        views = {m.proc.name: group_view(m) for m in members}
        if settled(views, total, min_generation):
            return time.monotonic() - t0, views
        dead = [m.proc.name for m in members if m.proc.poll() is not None]
        assert not dead, f"{dead} exited with {[m.proc.returncode for m in members]}"
        if time.monotonic() - t0 > timeout:
            raise AssertionError(
                f"the group did not settle within {timeout:.0f}s (want {GROUP_METRICS} "
                f"on every member, one generation >= {min_generation:.0f} and {total} "
                f"partitions owned): {views}")
        time.sleep(0.25)


def generation(views: dict[str, dict[str, float]]) -> float:
    return max(v["kafka_tee_group_generation"] for v in views.values())


def takeover_text(views: dict[str, dict[str, float]]) -> str:
    return ", ".join(f"{name} {v[TAKEOVER]:.2f}s" if TAKEOVER in v else f"{name} absent"
                     for name, v in sorted(views.items()))


# ---------------------------------------------------------------- committed offsets


def dc1_end_offsets(dc1: harness.Broker, topic: str, keys: set[bytes]) -> dict[int, int]:
    """Per partition, the offset after DC1's last record (read from DC1 until it holds
    `keys`; no transactions here, so that is the high watermark)."""
    recs = teeutil.read_holding(dc1.bootstrap, topic, keys)
    ends: dict[int, int] = {}
    for r in recs:
        ends[r.partition] = max(ends.get(r.partition, 0), r.offset + 1)
    return ends


def committed_offsets(dc1: harness.Broker, group: str, topic: str,
                      partitions: list[int]) -> tuple[dict[int, object], dict[int, int]]:
    """The group's committed offsets (a consumer with group.id `group` that never
    subscribes, so it never joins) and DC1's high watermarks, per partition."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(harness.confluent_conf(dc1.bootstrap, **{
        "group.id": group, "enable.auto.commit": False, "enable.partition.eof": False}))
    try:
        tps = c.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        got = {tp.partition: (f"error {tp.error}" if tp.error else tp.offset) for tp in tps}
        highs = {}
        for p in partitions:
            try:
                highs[p] = c.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
            except Exception as e:  # noqa: BLE001 - only printed
                highs[p] = f"error {e}"
        return got, highs
    finally:
        c.close()


def assert_committed_at_end(dc1: harness.Broker, group: str, topic: str,
                            keys: set[bytes], timeout: float = 30) -> None:
    """The group's committed offset of every partition of `topic` equals DC1's end
    offset (retried: commits are periodic)."""
    want = dc1_end_offsets(dc1, topic, keys)
    parts = sorted(want)
    deadline = time.monotonic() + timeout
    last: object = None
    highs: dict[int, int] = {}
    while True:
        try:
            got, highs = committed_offsets(dc1, group, topic, parts)
            if got == want:
                return
            last = got
        except Exception as e:  # noqa: BLE001 - retried, then reported
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() > deadline:
            raise AssertionError(
                f"group {group}: committed offsets of {topic} are not DC1's end after "
                f"{timeout:.0f}s:\n  want (DC1 end) {want}\n  committed      {last}\n"
                f"  high watermark {highs}")
        time.sleep(1.0)


# ------------------------------------------------------------------ status --json


def status_json(px: harness.Proxy) -> dict:
    r = subprocess.run([str(harness.kafka_tee_bin()), "status", "--admin",
                        f"{HOST}:{px.admin_port}", "--json"], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, f"status --json exit {r.returncode}: {r.stderr}"
    return json.loads(r.stdout)


def check_status_group(members: list[harness.Proxy], group: str, topic: str) -> str:
    """`kafka-tee status --json` of every member: its `group` object and the
    partition rows' `owner`. Both may not have landed yet: then a message says so and
    nothing is asserted."""
    reports = {m.proc.name: status_json(m) for m in members}
    if not all("group" in r for r in reports.values()):
        return "status --json has no `group` object yet: its assertions skipped"
    ids = {}
    leaders = []
    for name, r in reports.items():
        g = r["group"]
        for key in ("group", "generation", "member_id", "leader", "owned_partitions",
                    "rebalances_total", "last_takeover_seconds"):
            assert key in g, f"{name}: status group object has no {key!r}: {g}"
        assert g["group"] == group, f"{name}: {g}"
        assert isinstance(g["member_id"], str) and g["member_id"], f"{name}: {g}"
        ids[name] = g["member_id"]
        if g["leader"]:
            leaders.append(name)
    assert len(set(ids.values())) == len(ids), f"member ids not distinct: {ids}"
    assert len(leaders) == 1, f"leaders: {leaders} of {sorted(ids)}"
    gens = {r["group"]["generation"] for r in reports.values()}
    assert len(gens) == 1, f"members report generations {gens}"
    rows = [(name, row) for name, r in reports.items()
            for row in r["replication"]["partitions"] if row.get("topic") == topic]
    if not any("owner" in row for _, row in rows):
        return ("status --json has the group object, but no partition row has an "
                "`owner` yet: those assertions skipped")
    owners: dict[int, set[str]] = {}
    for name, row in rows:
        if row.get("owner") is None or row.get("partition") is None:
            continue
        assert row["owner"] in ids.values(), \
            f"{name}: {topic}-{row['partition']} owned by {row['owner']!r}, not a member {ids}"
        owners.setdefault(row["partition"], set()).add(row["owner"])
    split = {p: o for p, o in owners.items() if len(o) > 1}
    assert not split, f"members disagree on owners: {split}"
    return f"status --json: group objects and owners of {len(owners)} partitions agree"


# ----------------------------------------------------------------------- settling


def stop_load(producers: list[LoadProducer]) -> list[harness.Rec]:
    acked = []
    for lp in producers:
        acked += lp.stop()
    for lp in producers:
        assert lp.errors == [], f"the producer saw errors: {lp.errors[:5]}"
        assert len(lp.acked) == lp.sent, f"{len(lp.acked)} of {lp.sent} acked"
    return acked


def settle(dc1, dc2, group: str, topic: str, acked: list[harness.Rec],
           members: list[harness.Proxy]) -> tuple[teeutil.ReplicationCheck, float]:
    """DC2 identical to DC1, each record once, in DC1 order, `verify` exit 0; no live
    member saw another writer in DC2; the group's committed offsets at DC1's end."""
    chk, took = teeutil.assert_dc2_identical(dc1.bootstrap, dc2.bootstrap, topic, acked,
                                             DC2_WAIT)
    assert took is not None
    for m in alive(members):
        jumps = teeutil.metric(m, "kafka_tee_dc2_offset_jumps_total")
        assert jumps == 0, f"{m.proc.name} saw {jumps:.0f} DC2 offset jumps"
    assert_committed_at_end(dc1, group, topic, {r.key for r in acked})
    return chk, took


def stop_and_settle(dc1, dc2, group: str, topic: str, producers: list[LoadProducer],
                    members: list[harness.Proxy], seconds: float,
                    ) -> tuple[teeutil.ReplicationCheck, float]:
    """Lets the producers run `seconds` more, stops them (`stop_load`) and settles
    (`settle`)."""
    wait_acked_more(producers, seconds)
    return settle(dc1, dc2, group, topic, stop_load(producers), members)


def settled_text(chk: teeutil.ReplicationCheck, took: float) -> str:
    """What `settle` found, for a test's report."""
    return (f"acked {chk.acked}, DC1 {chk.dc1_records}, DC2 {chk.dc2_records} records, "
            f"each once; DC2 complete after {took:.2f}s of reading; committed offsets at "
            f"DC1's end")


def wait_acked_more(producers: list[LoadProducer], seconds: float) -> None:
    """Lets the producers run `seconds` more; fails when they got fewer than half the
    acks their rate promises."""
    before = sum(lp.acked_count() for lp in producers)
    time.sleep(seconds)
    deadline = time.monotonic() + seconds * 3 + 10
    want = before + int(RATE * seconds * 0.5)
    while sum(lp.acked_count() for lp in producers) < want:
        assert time.monotonic() < deadline, \
            (f"only {sum(lp.acked_count() for lp in producers) - before} acks over "
             f"{seconds:.0f}s; errors {[lp.errors[:3] for lp in producers]}")
        time.sleep(0.2)


def load(members: list[harness.Proxy], topic: str, n: int = 3,
         partitions: int = PARTITIONS) -> list[LoadProducer]:
    """`n` producers, each with every member as a bootstrap server (in a different
    order), sharing RATE."""
    return [LoadProducer(bootstrap_of(members, i % len(members)), topic, partitions,
                         RATE / n, tag=f"p{i}").start() for i in range(n)]


# -------------------------------------------------------------------------- tests


def three_under_load(dc1, dc2, proxy, tmp_path, name: str, seconds: int):
    """A topic of PARTITIONS partitions, three members of a new group, formed, and a
    producer per member acked for about `seconds`. Returns (group, topic, members,
    DC1's partition count, seconds the group took to form, its views, producers)."""
    group, topic = unique(f"tee-group-{name}"), unique(f"group-{name}")
    harness.create_topic(dc1.bootstrap, topic, partitions=PARTITIONS)
    members = [start_member(proxy, dc1, dc2, tmp_path, group, f"kafka-tee-g{i}")
               for i in range(3)]
    total = dc1_partition_count(dc1)
    formed, views = wait_stable(members, total)
    producers = load(members, topic)
    for lp in producers:
        lp.wait_acked(int(RATE / 3 * seconds), timeout=60)
    return group, topic, members, total, formed, views, producers


def test_member_killed_the_others_take_over(dc1, dc2, proxy, tmp_path):
    """Three members without state directories; one is SIGKILLed mid-load and never
    restarted. The other two take over its partitions after the session timeout, from
    the group's committed offsets, without copying what it had already sent to DC2
    again."""
    group, topic, members, total, formed, views, producers = three_under_load(
        dc1, dc2, proxy, tmp_path, "kill", 3)
    victim, survivors = members[0], members[1:]
    before = generation(views)
    victim.proc.signal(signal.SIGKILL)
    victim.proc.wait(timeout=10)
    took_over, views = wait_stable(survivors, total, before + 1)
    chk, took = stop_and_settle(dc1, dc2, group, topic, producers, members, 5)
    status = check_status_group(survivors, group, topic)
    print(f"\n[group kill] group formed in {formed:.2f}s; survivors settled in generation "
          f"{generation(views):.0f} {took_over:.2f}s after the SIGKILL; takeover metric: "
          f"{takeover_text(views)}")
    print(f"[group kill] {settled_text(chk, took)}; {status}")


def test_member_added_then_one_leaves_with_sigterm(dc1, dc2, proxy, tmp_path):
    """Three members; a fourth joins mid-load (a rebalance moves partitions to it);
    then one of the first three is stopped with SIGTERM: it leaves the group, exits 0,
    and the others take its partitions over."""
    group, topic, members, total, _, views, producers = three_under_load(
        dc1, dc2, proxy, tmp_path, "grow", 2)
    members.append(start_member(proxy, dc1, dc2, tmp_path, group, "kafka-tee-g3"))
    joined, views = wait_stable(members, total, generation(views) + 1)
    owned_by_new = views["kafka-tee-g3"]["kafka_tee_group_owned_partitions"]
    assert owned_by_new > 0, f"the fourth member owns nothing: {views}"
    wait_acked_more(producers, 3)
    leaving = members[1]
    leaving.proc.signal(signal.SIGTERM)
    rc = leaving.proc.wait(timeout=30)
    assert rc == 0, f"SIGTERM: exit {rc}\n{leaving.proc.log_tail()}"
    rest = alive(members)
    took_over, views = wait_stable(rest, total, generation(views) + 1)
    chk, took = stop_and_settle(dc1, dc2, group, topic, producers, members, 3)
    status = check_status_group(rest, group, topic)
    print(f"\n[group grow+leave] fourth member settled in {joined:.2f}s owning "
          f"{owned_by_new:.0f}; after the SIGTERM (exit 0) the rest settled in generation "
          f"{generation(views):.0f} after {took_over:.2f}s; takeover metric: "
          f"{takeover_text(views)}")
    print(f"[group grow+leave] {settled_text(chk, took)}; {status}")


def test_member_frozen_past_its_session_then_resumed(dc1, dc2, proxy, tmp_path):
    """Three members; one is frozen (SIGSTOP) for twice the session timeout while the
    load goes on, then resumed (SIGCONT). Its membership is in doubt by then, so it
    must not send what the others took over; it rejoins and keeps running."""
    group, topic, members, total, _, views, producers = three_under_load(
        dc1, dc2, proxy, tmp_path, "stop", 2)
    before = generation(views)
    frozen, others = members[2], members[:2]
    frozen.proc.signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    took_over = None
    try:
        acked_before = sum(lp.acked_count() for lp in producers)
        while time.monotonic() - stopped_at < 2 * SESSION_MS / 1000:
            if took_over is None and settled({m.proc.name: group_view(m) for m in others},
                                             total, before + 1):
                took_over = time.monotonic() - stopped_at
            time.sleep(0.25)
        during = sum(lp.acked_count() for lp in producers) - acked_before
    finally:
        frozen.proc.signal(signal.SIGCONT)
    resumed, views = wait_stable(members, total, before + 1)
    chk, took = stop_and_settle(dc1, dc2, group, topic, producers, members, 3)
    assert frozen.proc.poll() is None, \
        f"the resumed member exited with {frozen.proc.returncode}\n{frozen.proc.log_tail()}"
    status = check_status_group(members, group, topic)
    took_over_text = f"{took_over:.2f}s" if took_over is not None else "not within the freeze"
    print(f"\n[group sigstop] {during} acks during the {2 * SESSION_MS / 1000:.0f}s freeze; "
          f"the other two owned everything after {took_over_text}; all three settled in "
          f"generation {generation(views):.0f} {resumed:.2f}s after SIGCONT; takeover "
          f"metric: {takeover_text(views)}")
    print(f"[group sigstop] {settled_text(chk, took)}; the resumed member still runs; "
          f"{status}")


@pytest.mark.parametrize("old", [{"instances": 2}, {"instances": 2, "instance": 1},
                                 {"instance": 0}, {"instances": 1}],
                         ids=["instances", "instances+instance", "instance", "instances=1"])
def test_removed_instances_settings_are_refused(dc1, dc2, kafka_tee_bin, tmp_path, old):
    """`replication.instances` and `replication.instance` are gone: a config that has
    them makes kafka-tee exit non-zero, pointing at `replication.group`."""
    cfg = write_config(tmp_path / "old.toml", {"replication": old})
    argv = harness.proxy_argv(f"{HOST}:{harness.free_port_block(harness.PROXY_PORT_BLOCK)}",
                              dc1.bootstrap, dc2.bootstrap, config=cfg,
                              state_dir=tmp_path / "state")
    r = harness.run_proxy_expecting_exit(argv)
    out = r.stdout + r.stderr
    assert r.returncode != 0, f"{old}: kafka-tee exited 0\n{out}"
    assert "replication.group" in out, f"{old}: the message does not name replication.group\n{out}"
    said = next((ln for ln in out.splitlines() if "replication.group" in ln), "")
    print(f"\n[old config {old}] exit {r.returncode}: {said.strip()}")


def test_two_instances_share_the_replication(dc1, dc2, proxy, tmp_path):
    """Two kafka-tee instances in one replication group in front of one DC1 (one named
    in its config, the other with --replication-group): producers through both write to
    the same partitions at once, and a second topic is produced through one instance
    only. Each instance copies the partitions the group gave it, also what the other
    carried (read back from DC1), so DC2 ends up identical to DC1, every record once,
    neither instance sees another writer in DC2, and the group's committed offsets are
    DC1's end offsets."""
    group = unique("tee-group-ha")
    shared, only_b = unique("tee-ha-shared"), unique("tee-ha-only-b")
    harness.create_topic(dc1.bootstrap, shared, partitions=4)
    harness.create_topic(dc1.bootstrap, only_b, partitions=4)
    px = [start_member(proxy, dc1, dc2, tmp_path, group, "kafka-tee-0",
                       state_dir=tmp_path / "s0"),
          start_member(proxy, dc1, dc2, tmp_path, group, "kafka-tee-1",
                       state_dir=tmp_path / "s1", group_from_cli=True)]
    a, b = px
    wait_stable(px, dc1_partition_count(dc1))
    pa = teeutil.LoadProducer(a.bootstrap, shared, 4, 200, tag="a").start()
    pb = teeutil.LoadProducer(b.bootstrap, shared, 4, 200, tag="b").start()
    sent = make_trecords(80, "only-b", partitions=4)
    res = teeutil.produce_confluent(b.bootstrap, only_b, sent)
    assert res.errors == [] and len(res.acked) == len(sent), res.errors[:5]
    ob = teeutil.sorted_by_offset(res.acked)
    pa.wait_acked(600, timeout=30)
    pb.wait_acked(600, timeout=30)
    acked = pa.stop() + pb.stop()
    assert pa.errors == [] and pb.errors == [], (pa.errors + pb.errors)[:5]
    for topic, recs in ((shared, acked), (only_b, ob)):
        chk, took = teeutil.assert_dc2_identical(dc1.bootstrap, dc2.bootstrap, topic, recs,
                                                 DC2_WAIT)
        print(f"\n[two instances] {topic}: DC1 {chk.dc1_records}, DC2 {chk.dc2_records} "
              f"records, each once; complete after {took:.2f}s of reading")
        assert_committed_at_end(dc1, group, topic, {r.key for r in recs})
    for p in px:
        assert teeutil.metric(p, "kafka_tee_dc2_offset_jumps_total") == 0
    # Items an instance carried for partitions the other one owns (so the owner read
    # them back from DC1). Which instance carries such items depends on the group's
    # assignment (one may own all four partitions of the shared topic), so the sum.
    not_owned = [teeutil.metric(p, "kafka_tee_not_owned_items_total") for p in px]
    assert sum(not_owned) > 0, f"no instance carried a partition it does not own: {not_owned}"
    _, views = wait_stable(px, dc1_partition_count(dc1))
    print(f"[two instances] generation {generation(views):.0f}, owned "
          f"{[v['kafka_tee_group_owned_partitions'] for v in views.values()]}, items "
          f"carried for the other's partitions {not_owned}; takeover "
          f"metric: {takeover_text(views)}; {check_status_group(px, group, shared)}")


def test_instance_down_its_partitions_copied_when_back(dc1, dc2, proxy, tmp_path):
    """Two instances in one replication group. One is killed (SIGKILL) while producers
    go on through the other, also to partitions the dead one owned; DC1 holds them
    meanwhile. Restarted on an EMPTY state directory (positions live in the group's
    committed offsets), the instance rejoins: DC2 ends up identical to DC1, every
    record once."""
    group = unique("tee-group-down")
    topic = unique("fault-instance-down")
    harness.create_topic(dc1.bootstrap, topic, partitions=3)
    a = start_member(proxy, dc1, dc2, tmp_path, group, "kafka-tee",
                     state_dir=tmp_path / "s0")
    b = start_member(proxy, dc1, dc2, tmp_path, group, "kafka-tee-b",
                     state_dir=tmp_path / "s1")
    total = dc1_partition_count(dc1)
    wait_stable([a, b], total)
    lp = LoadProducer(b.bootstrap, topic, 3, RATE).start()
    lp.wait_acked(RATE * 2, timeout=30)
    a.proc.signal(signal.SIGKILL)
    a.proc.wait(timeout=10)
    wait_acked_more([lp], 3)
    empty = tmp_path / "s0-empty"
    empty.mkdir()
    back = start_member(proxy, dc1, dc2, tmp_path, group, "kafka-tee-restarted",
                        state_dir=empty, port=a.port)
    wait_acked_more([lp], 1)
    acked = lp.stop()
    assert lp.errors == [], lp.errors[:5]
    chk, took = teeutil.assert_dc2_identical(dc1.bootstrap, dc2.bootstrap, topic, acked,
                                             DC2_WAIT)
    print(f"\n[instance down] {chk.acked} acked through the other instance, DC2 "
          f"{chk.dc2_records} records, each once; complete after {took:.2f}s of reading")
    for m in (b, back):
        assert teeutil.metric(m, "kafka_tee_dc2_offset_jumps_total") == 0
    assert_committed_at_end(dc1, group, topic, {r.key for r in acked})
    _, views = wait_stable([b, back], total)
    assert views["kafka-tee-restarted"]["kafka_tee_group_owned_partitions"] > 0, views
    print(f"[instance down] restarted member back in generation {generation(views):.0f} "
          f"owning {views['kafka-tee-restarted']['kafka_tee_group_owned_partitions']:.0f}; "
          f"takeover metric: {takeover_text(views)}")
