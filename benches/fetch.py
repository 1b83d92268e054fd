#!/usr/bin/env python3
"""Consumer side: what kafka-tee's CPU costs per record fetched through it, with large
Fetch responses spliced between the sockets (the default) and copied through the proxy
(`proxy.splice_min_bytes = 0`).

One Tansu broker (in memory) gets N records of 1000 bytes in one partition, written
directly by the load generator. Then, alternating in each round, the whole partition is
read through each kafka-tee with Fetch v4 requests of up to 8 MiB (proto-tests/rawkafka.py)
and the proxy's user+system CPU (from /proc) is divided by the records fetched. Every
process is started here, on 127.0.0.1, and stopped by pid.

  python3 benches/fetch.py                 # 300,000 records, 3 rounds
  python3 benches/fetch.py --skip-build --records 100000 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "proto-tests"))

import e2e  # noqa: E402
import rawkafka  # noqa: E402

HOST = e2e.HOST


def read_partition(bootstrap: str, topic: str) -> tuple[int, int]:
    """Fetches the whole partition 0; returns (records, bytes)."""
    offset = size = 0
    while True:
        f = rawkafka.fetch_v4(bootstrap, topic, 0, offset, max_bytes=8 << 20)
        if f.error_code != 0:
            raise RuntimeError(f"fetch from {bootstrap} at {offset}: error {f.error_code}")
        batches = [b for b in rawkafka.split_batches(f.records) if b.last_offset >= offset]
        if not batches:
            return offset, size
        size += len(f.records)
        offset = batches[-1].last_offset + 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-build", action="store_true")
    args = ap.parse_args()
    kt, loadgen = e2e.build(args.skip_build)
    with tempfile.TemporaryDirectory(prefix="kafka-tee-fetch-") as tmp:
        procs = e2e.Procs(Path(tmp))
        try:
            port = e2e.free_port()
            broker = procs.start("tansu", [
                e2e.tansu_bin(), "broker", "--cluster-id", "fetch",
                "--listener-url", f"tcp://{HOST}:{port}",
                "--advertised-listener-url", f"tcp://{HOST}:{port}",
                "--storage-engine", "memory://fetch/"],
                env=dict(os.environ, RUST_LOG="warn"))
            e2e.wait_port(port, broker, "tansu", procs)
            dc1 = f"{HOST}:{port}"
            e2e.log(f"writing {args.records} records to the broker")
            subprocess.run([str(loadgen), "--bootstrap", dc1, "--topic", "fetch",
                            "--partitions", "1", "--num-records", str(args.records),
                            "--record-size", "1000"], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            proxies = {}
            for name, splice_min in (("splice", 65536), ("copy", 0)):
                cfg = Path(tmp) / f"{name}.toml"
                cfg.write_text(f"[proxy]\nsplice_min_bytes = {splice_min}\n")
                pport = e2e.free_port()
                p = procs.start(f"kafka-tee-{name}", [
                    str(kt), "--config", str(cfg), "--listen", f"{HOST}:{pport}",
                    "--source", dc1])
                e2e.wait_port(pport, p, f"kafka-tee-{name}", procs)
                proxies[name] = (p.pid, f"{HOST}:{pport}")
            results: dict[str, list[float]] = {name: [] for name in proxies}
            for rnd in range(args.rounds):
                order = list(proxies) if rnd % 2 == 0 else list(reversed(proxies))
                for name in order:
                    pid, bootstrap = proxies[name]
                    c0, t0 = e2e.cpu_seconds(pid) or 0.0, time.monotonic()
                    records, size = read_partition(bootstrap, "fetch")
                    wall = time.monotonic() - t0
                    cpu = (e2e.cpu_seconds(pid) or 0.0) - c0
                    if records < args.records:
                        raise RuntimeError(f"{name}: read {records} of {args.records} records")
                    us = cpu / records * 1e6
                    results[name].append(us)
                    e2e.log(f"round {rnd + 1}/{args.rounds} {name:6s} {records} records, "
                            f"{size / 1e6:.0f} MB in {wall:.2f} s; proxy CPU {cpu:.2f} s = "
                            f"{us:.3f} µs/record")
        finally:
            procs.stop_all()
    med = {name: statistics.median(v) for name, v in results.items()}
    print(f"median proxy CPU per fetched record: splice {med['splice']:.3f} µs, "
          f"copy {med['copy']:.3f} µs ({med['splice'] / med['copy']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
