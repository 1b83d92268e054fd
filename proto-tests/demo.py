"""Demo: DC1 and DC2 Tansu brokers, kafka-tee in front of DC1 teeing to DC2; produce
through the proxy, then read DC2 directly and show what arrived. Run via demo.sh."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--topic", default="demo-orders")
    ap.add_argument("--wait", type=float, default=30.0,
                    help="seconds to wait for the records to show up in DC2")
    args = ap.parse_args()

    # SIGTERM/SIGINT unwind through the finally below, which stops every process.
    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)

    logdir = Path(tempfile.mkdtemp(prefix="kafka-tee-demo-"))
    started: list = []
    try:
        dc1 = harness.start_tansu("dc1", logdir)
        started.append(dc1)
        dc2 = harness.start_tansu("dc2", logdir)
        started.append(dc2)
        print(f"DC1 broker: {dc1.bootstrap}   DC2 broker: {dc2.bootstrap}")
        proxy = harness.start_proxy(dc1.bootstrap, logdir, target=dc2.bootstrap,
                                    state_dir=logdir / "state")
        started.append(proxy)
        print(f"kafka-tee:  {proxy.bootstrap} (source DC1, target DC2)")
        print(f"logs in {logdir}")

        harness.create_topic(proxy.bootstrap, args.topic, partitions=args.partitions)
        records = harness.make_records(args.records, "demo")
        t0 = time.monotonic()
        res = harness.produce_confluent(proxy.bootstrap, args.topic, records,
                                        **{"enable.idempotence": True,
                                           "compression.type": "lz4"})
        dt = time.monotonic() - t0
        print(f"\nproduced through the proxy: {len(res.acked)} acked, "
              f"{len(res.errors)} errors, {dt:.2f}s")
        for e in res.errors[:5]:
            print(f"  error: {e}")
        acked_parts = harness.by_partition(res.acked)
        for p in sorted(acked_parts):
            print(f"  partition {p}: {len(acked_parts[p])} acked")

        dc1_recs = harness.consume_confluent(dc1.bootstrap, args.topic,
                                             expected=len(res.acked), timeout=30)
        print(f"\nDC1 (read directly): {len(dc1_recs)} records")

        print(f"\nwaiting up to {args.wait:.0f}s for the topic in DC2 ...")
        got: list[harness.Rec] = []
        deadline = time.monotonic() + args.wait
        while time.monotonic() < deadline:
            topics = harness.admin(dc2.bootstrap).list_topics(timeout=5).topics
            t = topics.get(args.topic)
            if t is not None and t.error is None and t.partitions:
                remaining = max(1.0, deadline - time.monotonic())
                got = harness.consume_confluent(dc2.bootstrap, args.topic,
                                                expected=len(res.acked),
                                                timeout=remaining)
                if len(got) >= len(res.acked):
                    break
            time.sleep(1)

        print(f"\nDC2 (read directly): {len(got)} records")
        if not got:
            print("\n*** DC2 GOT NOTHING: the topic or its records never reached DC2 "
                  "(replication not working yet?) ***")
            print(f"proxy log: {proxy.proc.log_path}")
            return 1
        got_parts = harness.by_partition(got)
        for p in sorted(got_parts):
            print(f"  partition {p}: {len(got_parts[p])} records "
                  f"(offsets {got_parts[p][0].offset}..{got_parts[p][-1].offset})")
        print("  first records:")
        for r in got[:5]:
            print(f"    p{r.partition}@{r.offset} key={r.key!r} value={r.value!r} "
                  f"headers={list(r.headers)}")
        try:
            harness.assert_same_records(res.acked, got, "DC2 vs acked by DC1")
        except AssertionError as e:
            print(f"\n*** DC2 differs from what DC1 acked ***\n{e}")
            return 1
        print(f"\nOK: all {len(got)} records arrived in DC2, in order per partition, "
              "with keys, values and headers intact.")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted")
        return 130
    finally:
        for s in reversed(started):
            s.stop()
        print("stopped proxy and brokers")


if __name__ == "__main__":
    sys.exit(main())
