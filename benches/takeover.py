#!/usr/bin/env python3
"""Takeover benchmark: how long after a replication group member dies do its partitions
replicate to DC2 again?

Every run starts fresh processes on 127.0.0.1 (proto-tests/harness.py):

  producer (confluent-kafka, idempotent) -> kafka-tee x3 (one replication group) -> DC1 (Tansu)
                                                |
                                                +-> DC2 (Tansu)

Three kafka-tee instances share the replication of one 8-partition topic as group
NAME (session timeout --session-timeout-ms, heartbeat --heartbeat-ms). A producer
writes --rate records/s round-robin over the partitions, with all three instances as
its bootstrap list. Once the three hold one generation that covers the 8 partitions
and DC2 has received records on every partition since, one instance that owns
partitions and carries no produce traffic is killed with SIGKILL at wall time K (an
instance that also carried the producer would add the producer's own failover to the
number). A consumer assigned every partition of the DC2 topic notes, per record, the
wall time it first arrived; the producer's delivery reports give each record's DC1 ack
time (its CreateTime plus its delivery latency). Per partition:

  first arrival in DC2 of a record DC1 acknowledged after K, minus K

and the run's takeover time is the largest over the 8 partitions (in practice one of
the dead instance's). The survivors' own partitions give the ordinary replication
latency next to it. Also kept: kafka_tee_group_takeover_seconds of the survivors that
took partitions over (the internal part: generation formed -> workers running). After
the producer stopped, DC2 must hold exactly DC1's records (teeutil.assert_dc2_identical,
which also runs `kafka-tee verify`), or the run fails.

  python3 benches/takeover.py                          # 5 runs, about 2 minutes
  python3 benches/takeover.py --session-timeout-ms 3000
  python3 benches/takeover.py --runs 1                 # smoke test

Writes benches/results/takeover-latest.json and .md. Every process is stopped by pid at
the end of its run, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

BENCHES = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHES))
sys.path.insert(0, str(BENCHES.parent / "proto-tests"))
import e2e  # noqa: E402  (machine info, CPU accounting)
from e2e import REPO, RESULTS  # noqa: E402

# Absolute: harness starts each process in its log directory.
os.environ["KAFKA_TEE_BIN"] = str(Path(os.environ.get(
    "KAFKA_TEE_BIN", REPO / "target" / "release" / "kafka-tee")).resolve())
os.environ.setdefault("KAFKA_TEE_LOG", "info")

import harness  # noqa: E402
import teeutil  # noqa: E402

TAKEOVER_METRIC = "kafka_tee_group_takeover_seconds"


def log(msg: str) -> None:
    print(f"[takeover {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def status(px: harness.Proxy) -> dict:
    url = f"http://{harness.HOST}:{px.admin_port}/status.json"
    return json.loads(urllib.request.urlopen(url, timeout=5).read())


def status_or_none(px: harness.Proxy) -> dict | None:
    try:
        return status(px)
    except OSError:
        return None


class Arrivals:
    """Reads every partition of the DC2 topic from the start in a thread and notes the
    wall time each key first arrived: {key: (partition, time.time())}."""

    def __init__(self, bootstrap: str, topic: str):
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        parts = teeutil.wait_partitions(bootstrap, topic, 60)
        self.c = Consumer(harness.confluent_conf(bootstrap, **{
            "group.id": harness.unique("takeover-reader"),
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "fetch.wait.max.ms": 20,
            "fetch.error.backoff.ms": 20,
        }))
        self.c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self.first: dict[bytes, tuple[int, float]] = {}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            msgs = self.c.consume(num_messages=1000, timeout=0.05)
            now = time.time()
            with self.lock:
                for m in msgs:
                    if m.error():
                        continue
                    self.first.setdefault(m.key(), (m.partition(), now))

    def snapshot(self) -> dict[bytes, tuple[int, float]]:
        with self.lock:
            return dict(self.first)

    def close(self) -> None:
        self._stop.set()
        self._t.join(timeout=10)
        self.c.close()


def ack_times(lp: teeutil.LoadProducer) -> dict[bytes, tuple[int, float]]:
    """{key: (DC1 partition, DC1 ack wall time)}: LoadProducer appends a record to
    `acked` and its (sent at, latency) to `latencies` together, under one lock, so the
    two lists line up; the CreateTime is the wall clock at produce()."""
    with lp._lock:
        pairs = list(zip(lp.acked, lp.latencies))
    return {r.key: (r.partition, r.timestamp / 1000.0 + lat) for r, (_at, lat) in pairs}


def first_after(kill_at: float, acks: dict, arrivals: dict, partitions: int) -> dict[int, float]:
    """Per partition, seconds from K to the first DC2 arrival of a record DC1 acked
    after K (partitions without one yet are absent)."""
    out: dict[int, float] = {}
    for key, (p, acked_at) in acks.items():
        if acked_at <= kill_at:
            continue
        a = arrivals.get(key)
        if a is None:
            continue
        d = a[1] - kill_at
        if p not in out or d < out[p]:
            out[p] = d
    return out


def group_view(px: harness.Proxy) -> dict | None:
    """The instance's membership from its metrics (status.json leaves `group` out):
    generation, partitions owned, rebalances, last takeover gauge; plus its status."""
    try:
        st = status(px)
        g = {name: teeutil.metric(px, f"kafka_tee_group_{name}")
             for name in ("generation", "owned_partitions", "rebalances_total",
                          "takeover_seconds")}
    except OSError:
        return None
    g["owned_partitions"] = int(g["owned_partitions"])
    g["requests_total"] = st["requests_total"]
    rows = [p for p in st["replication"]["partitions"] if p.get("partition") is not None]
    # Its own partition rows are the partitions it replicates; owners by member id
    # are named only by `kafka-tee status` (DescribeGroups).
    listed = sorted({p["partition"] for p in rows})
    g["partitions"] = listed if len(listed) == g["owned_partitions"] else None
    return g


def generation_formed_at(px: harness.Proxy, after_generation: float) -> float | None:
    """Wall time of the instance's first log line "replication group generation
    formed" for a generation after `after_generation`."""
    import datetime as dt
    import re

    for line in px.proc.log_text().splitlines():
        if "generation formed" not in line:
            continue
        m = re.search(r"generation=(-?\d+)", line)
        if not m or int(m.group(1)) <= after_generation:
            continue
        stamp = line.split()[0].rstrip("Z")
        try:
            t = dt.datetime.fromisoformat(stamp[:26]).replace(tzinfo=dt.timezone.utc)
        except ValueError:
            continue
        return t.timestamp()
    return None


def group_formed(proxies: list[harness.Proxy], partitions: int,
                 after_generation: float | None = None) -> list[dict] | None:
    """Every instance's view, once they hold one generation (newer than
    `after_generation` when given) whose assignments cover `partitions` partitions."""
    views = [group_view(px) for px in proxies]
    if any(v is None for v in views):
        return None
    gens = {v["generation"] for v in views}
    if len(gens) != 1 or sum(v["owned_partitions"] for v in views) != partitions:
        return None
    if after_generation is not None and min(gens) <= after_generation:
        return None
    return views


def run_once(args, n: int, work: Path) -> dict:
    log_dir = work / f"run-{n}"
    log_dir.mkdir(parents=True)
    tag = harness.unique(f"r{n}")
    brokers: list[harness.Broker] = []
    proxies: list[harness.Proxy] = []
    lp = arrivals = None
    try:
        dc1 = harness.start_tansu(f"dc1-{tag}", log_dir)
        brokers.append(dc1)
        dc2 = harness.start_tansu(f"dc2-{tag}", log_dir)
        brokers.append(dc2)
        topic = f"takeover-{tag}"
        harness.create_topic(dc1.bootstrap, topic, args.partitions)
        group = f"kt-{tag}"
        cfg = teeutil.write_config(log_dir / "kafka-tee.toml", {"replication": {
            "group": group,
            "group_session_timeout_ms": args.session_timeout_ms,
            "group_heartbeat_interval_ms": args.heartbeat_ms}})
        for i in range(3):
            proxies.append(harness.start_proxy(dc1.bootstrap, log_dir, target=dc2.bootstrap,
                                               config=cfg, admin=True, name=f"kafka-tee-{i}"))
        lp = teeutil.LoadProducer(",".join(px.bootstrap for px in proxies), topic,
                                  args.partitions, rate=args.rate, tag=f"t{n}").start()
        t_start = time.monotonic()
        sts = None
        while sts is None:
            if time.monotonic() - t_start > 90:
                raise RuntimeError("the group did not form within 90 s:\n"
                                   + "\n".join(px.proc.log_tail(20) for px in proxies))
            time.sleep(0.25)
            sts = group_formed(proxies, args.partitions)
        formed_s = time.monotonic() - t_start
        formed_wall = time.time()
        log(f"run {n}: generation {sts[0]['generation']:.0f} formed after "
            f"{formed_s:.1f} s, owned {[v['partitions'] for v in sts]}")
        arrivals = Arrivals(dc2.bootstrap, topic)
        deadline = time.monotonic() + 60
        while True:
            got = first_after(formed_wall, ack_times(lp), arrivals.snapshot(), args.partitions)
            if len(got) == args.partitions:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"DC2 got records on partitions {sorted(got)} only")
            time.sleep(0.2)
        time.sleep(args.settle)
        sts = group_formed(proxies, args.partitions)
        if sts is None:
            raise RuntimeError("the group changed before the kill")
        # The victim: an owner whose request count does not grow (no producer on it).
        req0 = [v["requests_total"] for v in sts]
        time.sleep(1.0)
        sts = group_formed(proxies, args.partitions)
        if sts is None:
            raise RuntimeError("the group changed before the kill")
        growth = [v["requests_total"] - r for v, r in zip(sts, req0)]
        owners = [i for i, v in enumerate(sts) if v["owned_partitions"] > 0]
        victim = min(owners, key=lambda i: (growth[i], -sts[i]["owned_partitions"]))
        (log_dir / "group-before-kill.json").write_text(json.dumps(sts, indent=1))
        victim_parts = sts[victim]["partitions"]
        gen_before = sts[victim]["generation"]
        survivors = [i for i in range(3) if i != victim]
        acked_before = lp.acked_count()

        kill_at = time.time()
        proxies[victim].proc.signal(signal.SIGKILL)
        proxies[victim].proc.wait(timeout=10)
        log(f"run {n}: SIGKILL kafka-tee-{victim} (owned {victim_parts}, "
            f"{growth[victim]} requests in the last second against "
            f"{[growth[i] for i in survivors]} on the others)")

        limit = time.monotonic() + args.session_timeout_ms / 1000 * 3 + 30
        while True:
            per_part = first_after(kill_at, ack_times(lp), arrivals.snapshot(),
                                   args.partitions)
            if len(per_part) == args.partitions:
                break
            if time.monotonic() > limit:
                raise RuntimeError(f"after the kill only partitions {sorted(per_part)} "
                                   "replicated again within the time limit")
            time.sleep(0.1)
        takeover = max(per_part.values())
        # The survivors' view of the new generation and their takeover gauge.
        new_views = None
        until = time.monotonic() + 15
        while time.monotonic() < until and new_views is None:
            new_views = group_formed([proxies[i] for i in survivors], args.partitions,
                                     after_generation=gen_before)
            time.sleep(0.2)
        formed_at = [t for t in (generation_formed_at(proxies[i], gen_before)
                                 for i in survivors) if t is not None]
        new_generation_s = round(min(formed_at) - kill_at, 3) if formed_at else None
        internal = {}
        for i, v in zip(survivors, new_views or []):
            if v["owned_partitions"] > sts[i]["owned_partitions"]:
                internal[f"kafka-tee-{i}"] = round(v["takeover_seconds"], 3)
        time.sleep(1.0)
        acked = lp.stop(flush_timeout=60)
        errors = list(lp.errors)
        lp = None
        chk, took = teeutil.assert_dc2_identical(dc1.bootstrap, dc2.bootstrap, topic, acked,
                                                 timeout=60)
        inferred = victim_parts is None
        if inferred:  # the slowest partitions, as many as the victim owned
            k = sts[victim]["owned_partitions"]
            victim_parts = sorted(sorted(per_part, key=per_part.get)[-k:])
        victim_lat = [per_part[p] for p in victim_parts if p in per_part]
        other_lat = [d for p, d in per_part.items() if p not in victim_parts]
        r = {
            "run": n,
            "session_timeout_ms": args.session_timeout_ms,
            "heartbeat_ms": args.heartbeat_ms,
            "partitions": args.partitions,
            "rate": args.rate,
            "group_formed_after_s": round(formed_s, 2),
            "victim": f"kafka-tee-{victim}",
            "victim_partitions": victim_parts,
            "victim_partitions_inferred": inferred,
            "takeover_s": round(takeover, 3),
            "per_partition_s": {str(p): round(d, 3) for p, d in sorted(per_part.items())},
            "victim_partitions_max_s": round(max(victim_lat), 3) if victim_lat else None,
            "other_partitions_max_s": round(max(other_lat), 3) if other_lat else None,
            "new_generation_after_s": new_generation_s,
            "survivor_takeover_seconds": internal,
            "acked_before_kill": acked_before,
            "acked": chk.acked,
            "dc1_records": chk.dc1_records,
            "dc2_records": chk.dc2_records,
            "dc2_duplicates": chk.duplicates,
            "producer_errors": len(errors),
            "dc2_identical": True,
        }
        log(f"run {n}: takeover {takeover:.2f} s (new generation after "
            f"{new_generation_s} s; victim's partitions "
            f"{r['victim_partitions_max_s']} s, others {r['other_partitions_max_s']} s), "
            f"survivors' {TAKEOVER_METRIC} {internal}; DC2 identical "
            f"({chk.dc2_records} records)")
        return r
    finally:
        if arrivals is not None:
            arrivals.close()
        if lp is not None:
            lp.abandon()
        for px in proxies:
            px.stop()
        for b in brokers:
            b.stop()


def fmt(v, spec=".2f", none="-"):
    return none if v is None else format(v, spec)


def table(result: dict) -> str:
    m = result["machine"]
    s = result["summary"]
    out = [f"Measured {m['date_utc']} on {m['nproc']} cores ({m['cpu_model']}), commit "
           f"{m['git_commit']}{' (src modified)' if m['src_dirty'] else ''}; three "
           f"instances in one replication group, session timeout "
           f"{result['session_timeout_ms']} ms, heartbeat {result['heartbeat_ms']} ms, "
           f"{result['partitions']} partitions, {result['rate']} records/s; other load on "
           f"the machine during the run: {result['foreign_cores']:.2f} cores.", "",
           "Takeover = from SIGKILL of one instance until DC2 receives, on every partition, "
           "a record DC1 acknowledged after the kill (the slowest partition).", "",
           "| session timeout ms | runs | median takeover s | worst takeover s | "
           "median x session timeout | median new generation after s | "
           "survivors' kafka_tee_group_takeover_seconds (max) |",
           "|---:|---:|---:|---:|---:|---:|---:|",
           f"| {result['session_timeout_ms']} | {s['runs']} | {fmt(s['median_s'])} | "
           f"{fmt(s['worst_s'])} | "
           f"{fmt(s['median_s'] / (result['session_timeout_ms'] / 1000))} | "
           f"{fmt(s['new_generation_median_s'])} | {fmt(s['internal_max_s'], '.3f')} |", "",
           "| run | killed | its partitions | takeover s | new generation after s | "
           "its partitions, slowest s | other partitions, slowest s | "
           "survivors' takeover gauge s | DC2 records | DC2 identical |",
           "|---:|---|---|---:|---:|---:|---:|---|---:|---|"]
    for r in result["runs"]:
        gauge = ", ".join(f"{k}: {v:.3f}" for k, v in r["survivor_takeover_seconds"].items())
        out.append(f"| {r['run']} | {r['victim']} | {','.join(map(str, r['victim_partitions']))} | "
                   f"{r['takeover_s']:.2f} | {fmt(r['new_generation_after_s'])} | "
                   f"{fmt(r['victim_partitions_max_s'])} | "
                   f"{fmt(r['other_partitions_max_s'])} | {gauge or '-'} | "
                   f"{r['dc2_records']} | {'yes' if r['dc2_identical'] else 'NO'} |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--session-timeout-ms", type=int, default=6000)
    ap.add_argument("--heartbeat-ms", type=int, default=500)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--rate", type=float, default=400, help="records/s of the producer")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds of steady replication before the kill")
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "takeover-latest.json")
    args = ap.parse_args()
    e2e.ensure_python_packages()
    if not args.skip_build:
        log("cargo build --release --bin kafka-tee")
        subprocess.run(["cargo", "build", "--release", "--bin", "kafka-tee"], cwd=REPO,
                       check=True)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    work = Path(tempfile.mkdtemp(prefix="kafka-tee-takeover-"))
    log(f"{args.runs} runs, binary {os.environ['KAFKA_TEE_BIN']}; logs in {work}")
    busy0, t0, mine0 = e2e.busy_cores_seconds(), time.monotonic(), e2e.children_cpu()
    runs = []
    try:
        for n in range(1, args.runs + 1):
            runs.append(run_once(args, n, work))
    except KeyboardInterrupt as e:
        log(f"interrupted ({e})")
        return 130
    finally:
        teeutil.abandon_producers()
    wall = time.monotonic() - t0
    foreign = max(0.0, (e2e.busy_cores_seconds() - busy0) - (e2e.children_cpu() - mine0))
    times = [r["takeover_s"] for r in runs]
    gens = [r["new_generation_after_s"] for r in runs
            if r["new_generation_after_s"] is not None]
    internal = [v for r in runs for v in r["survivor_takeover_seconds"].values()]
    result = {
        "machine": e2e.machine(),
        "binary": os.environ["KAFKA_TEE_BIN"],
        "session_timeout_ms": args.session_timeout_ms,
        "heartbeat_ms": args.heartbeat_ms,
        "partitions": args.partitions,
        "rate": args.rate,
        "foreign_cores": round(foreign / wall, 2),
        "summary": {"runs": len(runs), "median_s": round(statistics.median(times), 3),
                    "worst_s": round(max(times), 3), "takeover_s": times,
                    "internal_max_s": round(max(internal), 3) if internal else None,
                    "new_generation_median_s": round(statistics.median(gens), 3)
                    if gens else None},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    md = table(result)
    args.out.with_suffix(".md").write_text(md)
    print(md)
    log(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
