#!/usr/bin/env python3
"""Long-link benchmark: does DC2 keep pace when it is 0-200 ms away?

Every case starts fresh processes on 127.0.0.1:

  loadgen (librdkafka, idempotent, acks=all) -> kafka-tee -> DC1 (Tansu)
                                                  |
                                                  +-> relay (+RTT/2 each way) -> DC2 (Tansu)

DC2's broker advertises the relay's port, so every replicator connection crosses the
delay (proto-tests/relay.py in a process of its own, with a queue deep enough that the
relay never limits the rate). While the load runs, the end offsets of DC1 and DC2 are
read every 0.25 s straight from the brokers' own ports (not through the relay), which
gives the columns:

  offered      records/s DC1 acknowledged during the load (after the warm-up)
  DC2 rate     records/s DC2 gained over the same seconds, and its ratio to offered
  behind       seconds from the load's last DC1 ack until DC2 held every record
               (capped at --drain-timeout), and how many records DC2 lacked then
  CPU/record   kafka-tee's CPU (user + system, /proc) per replicated record
  peak RSS     kafka-tee's VmHWM

Cases: the round-trip sweep (--rtts) with 4 partitions at 20 MB/s (linger.ms=5); at the
longest round trip, 4 partitions and one hot partition (5 MB/s) at linger.ms 0, 5, 20;
then the catch-up run: DC2 unreachable (relay black-holed) for --outage seconds under
the 4-partition load, then the link comes back and the catch-up rate is measured
against the live rate. With --baseline PATH every case runs twice, with that kafka-tee
binary and with this tree's, one after the other, so the two face the same machine.

DC2 is Tansu by default. `--dc2 double` puts the Kafka-rules DC2 double
(benches/dc2_double.rs, built from proto-tests/kafka_double.rs) in its place, behind the
same relay: it follows Apache Kafka's idempotence rules, appends to an in-memory log
(the newest 64 MiB per partition) and serves Fetch and ListOffsets, at a fraction of
Tansu's CPU, so DC2 is no longer what the 2 cores are short of. `--dc2 tansu,double`
runs every case against both, one after the other. Each catch-up run also records the
CPU every process used while DC2 caught up, the other load on the machine meanwhile,
and whether DC2's end offsets equal DC1's partition by partition at the end.

  python3 benches/longlink.py                                   # about 20 minutes
  python3 benches/longlink.py --baseline /path/to/old/kafka-tee # side by side
  python3 benches/longlink.py --quick                           # smoke test
  python3 benches/longlink.py --rtts 200 --no-matrix --dc2 tansu,double \
      --out benches/results/longlink-catchup-double.json          # catch-up, both DC2s

Writes benches/results/longlink-latest.json and .md. Every process is stopped by pid
when it ends, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # noqa: E402  (the shared process, build and machine helpers)
from e2e import HOST, REPO, RESULTS, Procs, cpu_seconds, free_port, rss_kib, wait_port  # noqa: E402

RELAY = REPO / "proto-tests" / "relay.py"
RECORD = 1000
# 8192 x 64 KiB per direction and connection: far more than 200 ms at these rates.
RELAY_QUEUE_CHUNKS = 8192


def log(msg: str) -> None:
    print(f"[longlink {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------- end offsets, raw


class Offsets:
    """End offsets of one topic's partitions, read with ListOffsets v1 on one broker's
    own port (every partition of a single-broker Tansu lives there)."""

    def __init__(self, addr: str, topic: str, partitions: int):
        host, port = addr.rsplit(":", 1)
        self.addr, self.topic, self.partitions = (host, int(port)), topic, partitions
        self.sock: socket.socket | None = None
        self.corr = 0

    def total(self) -> int | None:
        """Sum of the end offsets, or None while the topic or the broker is not there."""
        ends = self.ends()
        return sum(ends) if ends is not None else None

    def ends(self) -> list[int] | None:
        """End offset per partition, or None while the topic or the broker is not there."""
        try:
            return self._list()
        except OSError:
            self.close()
            return None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _list(self) -> list[int] | None:
        if self.sock is None:
            self.sock = socket.create_connection(self.addr, timeout=5)
        self.corr += 1
        name = self.topic.encode()
        body = struct.pack(">hhih", 2, 1, self.corr, 8) + b"longlink"
        body += struct.pack(">ii", -1, 1) + struct.pack(">h", len(name)) + name
        body += struct.pack(">i", self.partitions)
        for p in range(self.partitions):
            body += struct.pack(">iq", p, -1)
        self.sock.sendall(struct.pack(">i", len(body)) + body)
        data = self._read(struct.unpack(">i", self._read(4))[0])
        pos = 4 + 4  # correlation id, topic count (one)
        pos += 2 + struct.unpack_from(">h", data, pos)[0]
        (n,) = struct.unpack_from(">i", data, pos)
        pos += 4
        ends = []
        for _ in range(n):
            _p, err, _ts, off = struct.unpack_from(">ihqq", data, pos)
            pos += 22
            if err != 0:
                return None
            ends.append(off)
        return ends if len(ends) == self.partitions else None

    def fetched_ends(self) -> list[int] | None:
        """High watermark per partition, from a Fetch v4 at the offset ListOffsets
        "latest" gives (Tansu 0.6 answers that with the last batch's base offset + 1,
        which is only inside the log; the double answers the end); None on an error."""
        at = self.ends()
        if at is None:
            return None
        try:
            return self._fetch_hw(at)
        except OSError:
            self.close()
            return None

    def _fetch_hw(self, at: list[int]) -> list[int] | None:
        if self.sock is None:
            self.sock = socket.create_connection(self.addr, timeout=5)
        self.corr += 1
        name = self.topic.encode()
        # Fetch v4: replica -1, max wait 50 ms, min 1 byte, at most 1 byte per partition
        # (a broker still returns one batch), read_uncommitted.
        body = struct.pack(">hhih", 1, 4, self.corr, 8) + b"longlink"
        body += struct.pack(">iiiib", -1, 50, 1, self.partitions, 0)
        body += struct.pack(">i", 1) + struct.pack(">h", len(name)) + name
        body += struct.pack(">i", self.partitions)
        for p in range(self.partitions):
            body += struct.pack(">iqi", p, at[p], 1)
        self.sock.sendall(struct.pack(">i", len(body)) + body)
        data = self._read(struct.unpack(">i", self._read(4))[0])
        pos = 4 + 4 + 4  # correlation id, throttle time, topic count (one)
        pos += 2 + struct.unpack_from(">h", data, pos)[0]
        (n,) = struct.unpack_from(">i", data, pos)
        pos += 4
        hw = {}
        for _ in range(n):
            p, err, high, _lso = struct.unpack_from(">ihqq", data, pos)
            pos += 22
            (aborted,) = struct.unpack_from(">i", data, pos)
            pos += 4 + 16 * max(0, aborted)
            (size,) = struct.unpack_from(">i", data, pos)
            pos += 4 + max(0, size)
            if err != 0:
                return None
            hw[p] = high
        return [hw[p] for p in range(self.partitions)] if len(hw) == self.partitions else None

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            buf += chunk
        return buf


def own_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Watch:
    """Samples DC1's and DC2's end offsets (and a few of the proxy's metrics) every
    0.25 s in a thread: [(seconds since start, dc1 total, dc2 total)]; once a second,
    the CPU seconds of each process in `pids`, of this script and of the whole machine."""

    def __init__(self, dc1: str, dc2: str, topic: str, partitions: int, admin: str,
                 pids: dict[str, int]):
        self.dc1, self.dc2 = Offsets(dc1, topic, partitions), Offsets(dc2, topic, partitions)
        self.admin, self.pids = admin, pids
        self.samples: list[tuple[float, int, int]] = []
        # (seconds since start, {name: CPU s}, own CPU s, machine busy s)
        self.cpu: list[tuple[float, dict[str, float], float, float]] = []
        self.window_full: list[float] = []
        self.in_flight_bytes: list[float] = []
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.dc1.close()
        self.dc2.close()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def last(self) -> tuple[float, int, int]:
        return self.samples[-1] if self.samples else (0.0, 0, 0)

    def _loop(self):
        n = 0
        while not self._stop.is_set():
            a, b = self.dc1.total(), self.dc2.total()
            if a is not None:
                self.samples.append((self.now(), a, b or 0))
            if n % 4 == 0:
                self._metrics()
                self._cpu()
            n += 1
            self._stop.wait(0.25)

    def _cpu(self):
        per = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        # A process that has ended (the producer) keeps its last reading.
        last = self.cpu[-1][1] if self.cpu else {}
        per = {k: last.get(k) if v is None else v for k, v in per.items()}
        self.cpu.append((self.now(), {k: v for k, v in per.items() if v is not None},
                         own_cpu(), e2e.busy_cores_seconds()))

    def cores(self, t0: float, t1: float) -> dict | None:
        """Cores each process used between the CPU samples nearest to t0 and t1, and
        the machine's other load (busy cores not spent by these processes or this
        script)."""
        if len(self.cpu) < 2:
            return None
        b = min(self.cpu, key=lambda c: abs(c[0] - t1))
        # The first sample after the start that reads every process the last one reads.
        a = min((c for c in self.cpu if c[1].keys() >= b[1].keys()),
                key=lambda c: abs(c[0] - t0), default=self.cpu[0])
        span = b[0] - a[0]
        if span <= 0.5:
            return None
        per = {k: round((b[1][k] - a[1][k]) / span, 2) for k in b[1] if k in a[1]}
        ours = sum(b[1][k] - a[1][k] for k in b[1] if k in a[1]) + (b[2] - a[2])
        return {"from_s": round(a[0], 1), "to_s": round(b[0], 1), "per_process": per,
                "machine_busy": round((b[3] - a[3]) / span, 2),
                "other_load": round(max(0.0, (b[3] - a[3]) - ours) / span, 2)}

    def _metrics(self):
        try:
            text = urllib.request.urlopen(f"http://{self.admin}/metrics", timeout=2).read()
        except OSError:
            return
        full = inflight = None
        for line in text.decode(errors="replace").splitlines():
            if line.startswith("kafka_tee_replication_window_full_partitions"):
                full = float(line.rsplit(" ", 1)[1])
            elif line.startswith("kafka_tee_dc2_in_flight_bytes"):
                inflight = (inflight or 0.0) + float(line.rsplit(" ", 1)[1])
        if full is not None:
            self.window_full.append(full)
        if inflight is not None:
            self.in_flight_bytes.append(inflight)

    def at(self, t: float) -> tuple[int, int]:
        """DC1 and DC2 totals at the first sample at or after `t`."""
        for s in self.samples:
            if s[0] >= t:
                return s[1], s[2]
        return self.last()[1], self.last()[2]


# ------------------------------------------------------------------------- cases


class Case:
    def __init__(self, kind: str, binary: str, rtt_ms: int, partitions: int, rate: int,
                 linger_ms: float, dc2: str = "tansu"):
        self.kind, self.binary, self.rtt_ms = kind, binary, rtt_ms
        self.partitions, self.rate, self.linger_ms = partitions, rate, linger_ms
        self.dc2 = dc2

    def label(self) -> str:
        return (f"{self.binary} rtt {self.rtt_ms} ms, {self.partitions} partition(s), "
                f"{self.rate * RECORD / 1e6:g} MB/s, linger {self.linger_ms:g} ms, "
                f"DC2 {self.dc2}")


def build_double() -> Path:
    """Builds the DC2 double (benches/dc2_double.rs); returns its path."""
    path = e2e.bench_binary("dc2_double")
    if path is None:
        raise RuntimeError("build did not produce the dc2_double binary")
    return path


class Bench:
    def __init__(self, args, binaries: dict[str, Path], loadgen: Path, work: Path,
                 double: Path | None = None):
        self.args, self.binaries, self.loadgen, self.work = args, binaries, loadgen, work
        self.double = double

    def tansu(self, procs: Procs, name: str, advertise_port: int | None = None) -> str:
        port = free_port()
        p = procs.start(name, [
            e2e.tansu_bin(), "broker", "--cluster-id", name,
            "--listener-url", f"tcp://{HOST}:{port}",
            "--advertised-listener-url", f"tcp://{HOST}:{advertise_port or port}",
            "--storage-engine", f"memory://{name}/"], env=e2e.tansu_env())
        wait_port(port, p, name, procs)
        return f"{HOST}:{port}"

    def dc2_double(self, procs: Procs, name: str, advertise_port: int) -> str:
        port = free_port()
        p = procs.start(name, [
            str(self.double), "--listen", f"{HOST}:{port}",
            "--advertise", f"{HOST}:{advertise_port}"])
        wait_port(port, p, name, procs)
        return f"{HOST}:{port}"

    def start(self, case: Case, procs: Procs, tag: str):
        """DC1, DC2 behind the relay, kafka-tee; returns (proxy bootstrap, admin, DC1,
        DC2's own address, kafka-tee pid, relay process)."""
        dc1 = self.tansu(procs, f"dc1-{tag}")
        rport = free_port()
        if case.dc2 == "double":
            dc2 = self.dc2_double(procs, f"dc2-{tag}", advertise_port=rport)
        else:
            dc2 = self.tansu(procs, f"dc2-{tag}", advertise_port=rport)
        relay = procs.start(f"relay-{tag}", [
            sys.executable, str(RELAY), str(rport), dc2,
            "--delay-ms", str(case.rtt_ms / 2), "--queue-chunks", str(RELAY_QUEUE_CHUNKS)])
        wait_port(rport, relay, f"relay-{tag}", procs)
        port, admin_port = free_port(), free_port()
        state = self.work / f"state-{tag}"
        state.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, KAFKA_TEE_LOG=os.environ.get("KAFKA_TEE_LOG", "warn"))
        kt = procs.start(f"kafka-tee-{tag}", [
            str(self.binaries[case.binary]), "--listen", f"{HOST}:{port}", "--source", dc1,
            "--target", f"{HOST}:{rport}", "--state-dir", str(state),
            "--admin", f"{HOST}:{admin_port}"], env=env)
        wait_port(port, kt, f"kafka-tee-{tag}", procs)
        return f"{HOST}:{port}", f"{HOST}:{admin_port}", dc1, dc2, kt.pid, relay

    def produce(self, case: Case, bootstrap: str, topic: str, duration: float):
        return subprocess.Popen([
            str(self.loadgen), "--bootstrap", bootstrap, "--topic", topic,
            "--record-size", str(RECORD), "--duration", str(duration),
            "--warmup", str(self.args.warmup), "--partitions", str(case.partitions),
            "--rate", str(case.rate), "--idempotence", "--linger-ms", str(case.linger_ms),
            "--acks", "all", "--label", case.kind],
            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def run(self, case: Case, outage: float = 0.0) -> dict:
        tag = f"{case.kind}-{case.binary}-{case.dc2}-{case.rtt_ms}-{case.partitions}-" \
              f"{case.linger_ms:g}-{random.randrange(1 << 20):x}"
        procs = Procs(self.work)
        try:
            return self._run(case, outage, procs, tag)
        finally:
            procs.stop_all()

    def _run(self, case: Case, outage: float, procs: Procs, tag: str) -> dict:
        a = self.args
        bootstrap, admin, dc1, dc2, kt_pid, relay = self.start(case, procs, tag)
        topic = f"long-{tag}"
        lead = a.warmup + 5
        duration = a.duration if not outage else lead + outage + a.after_outage
        cpu0 = cpu_seconds(kt_pid) or 0.0
        pids = {("kafka-tee" if name.startswith("kafka-tee") else name.split("-", 1)[0]): p.pid
                for name, p in procs.children}
        with Watch(dc1, dc2, topic, case.partitions, admin, pids) as w:
            lg = self.produce(case, bootstrap, topic, duration)
            w.pids["producer"] = lg.pid
            restore_at = None
            if outage:
                time.sleep(lead)
                relay.send_signal(signal.SIGUSR1)
                down_at = w.now()
                time.sleep(outage)
                relay.send_signal(signal.SIGUSR2)
                restore_at = w.now()
            out, err = lg.communicate(timeout=duration + a.warmup + 300)
            load_end = w.now()
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            if lg.returncode != 0 or not lines:
                raise RuntimeError(f"loadgen failed ({lg.returncode}): {err[-2000:]}")
            res = json.loads(lines[-1])
            acked = res["acked"]
            # DC2 done: it holds what DC1 holds (a fresh topic, copied batch by batch,
            # has DC1's offsets in DC2 too).
            # The producer has flushed: DC1's end offsets no longer move.
            time.sleep(0.3)
            final_dc1 = w.last()[1]
            deadline = time.monotonic() + a.drain_timeout
            done_at = None
            while time.monotonic() < deadline:
                _, _, d2 = w.last()
                if d2 >= final_dc1:
                    done_at = w.now()
                    break
                time.sleep(0.1)
            # Partition by partition, from each broker's own port.
            time.sleep(0.3)
            ends = []
            for addr in (dc1, dc2):
                o = Offsets(addr, topic, case.partitions)
                ends.append(o.fetched_ends())
                o.close()
        cpu = (cpu_seconds(kt_pid) or 0.0) - cpu0
        hwm = rss_kib(kt_pid, "VmHWM")
        start = a.warmup + 1.0
        d1s, d2s = w.at(start)
        d1e, d2e = w.at(load_end)
        span = max(0.1, load_end - start)
        r = {
            "kind": case.kind, "binary": case.binary, "dc2": case.dc2, "rtt_ms": case.rtt_ms,
            "partitions": case.partitions, "rate_target": case.rate,
            "linger_ms": case.linger_ms, "acked": acked,
            "producer_errors": res["errors"], "first_error": res.get("first_error"),
            "offered_rps": round((d1e - d1s) / span, 1),
            "dc2_rps": round((d2e - d2s) / span, 1),
            "dc2_behind_records_at_end": max(0, d1e - d2e),
            "dc2_complete_after_s": None if done_at is None else round(done_at - load_end, 2),
            "drain_timeout_s": a.drain_timeout,
            "proxy_cpu_us_per_record": round(1e6 * cpu / max(1, acked), 2),
            "proxy_peak_rss_mib": round((hwm or 0) / 1024, 1),
            "producer_p99_ms": res["latency_ms"]["p99"],
            "window_full_max": max(w.window_full) if w.window_full else None,
            "dc2_in_flight_mib_max": round(max(w.in_flight_bytes) / 2**20, 2)
            if w.in_flight_bytes else None,
            "dc1_end_offsets": ends[0], "dc2_end_offsets": ends[1],
            "dc2_ends_equal_dc1": ends[0] is not None and ends[0] == ends[1],
            "cores_during_load": w.cores(start, load_end),
        }
        r["dc2_ratio"] = round(r["dc2_rps"] / r["offered_rps"], 3) if r["offered_rps"] else None
        if outage:
            r.update(self._catch_up(w, down_at, restore_at, load_end))
            until = restore_at + (r["caught_up_after_s"] or (load_end - restore_at))
            r["cores_while_catching_up"] = w.cores(restore_at, until)
        return r

    @staticmethod
    def _catch_up(w: Watch, down_at: float, restore_at: float, load_end: float) -> dict:
        """Live rate during the outage; from the link's return, how long until DC2 held
        what DC1 held a second before, and at what rate DC2 grew meanwhile."""
        d1a, _ = w.at(down_at)
        d1b, d2b = w.at(restore_at)
        live = (d1b - d1a) / max(0.1, restore_at - down_at)
        caught = None
        for t, _d1, d2 in w.samples:
            if t < restore_at:
                continue
            if t > load_end:
                break
            d1_before, _ = w.at(t - 1.0)
            if d2 >= d1_before:
                caught = t
                break
        out = {"outage_s": round(restore_at - down_at, 1), "live_rps": round(live, 1),
               "backlog_records": max(0, d1b - d2b)}
        if caught is not None:
            _, d2c = w.at(caught)
            rate = (d2c - d2b) / max(0.1, caught - restore_at)
            out.update(caught_up_after_s=round(caught - restore_at, 1),
                       catch_up_rps=round(rate, 1),
                       catch_up_x_live=round(rate / live, 2) if live else None)
        else:
            _, d2e = w.at(load_end)
            rate = (d2e - d2b) / max(0.1, load_end - restore_at)
            out.update(caught_up_after_s=None, catch_up_rps=round(rate, 1),
                       catch_up_x_live=round(rate / live, 2) if live else None)
        return out


# ------------------------------------------------------------------------ report


def fmt(v, spec=".0f", none="-"):
    return none if v is None else format(v, spec)


def row(r: dict) -> str:
    behind = fmt(r["dc2_complete_after_s"], ".2f",
                 none=f"> {r['drain_timeout_s']:.0f}")
    return (f"| {r['binary']} | {r.get('dc2', 'tansu')} | {r['rtt_ms']} | {r['partitions']} | "
            f"{r['linger_ms']:g} | "
            f"{fmt(r['offered_rps'])} | {fmt(r['dc2_rps'])} | {fmt(r['dc2_ratio'], '.2f')} | "
            f"{behind} | {r['dc2_behind_records_at_end']} | "
            f"{fmt(r['proxy_cpu_us_per_record'], '.2f')} | {fmt(r['proxy_peak_rss_mib'], '.1f')} | "
            f"{fmt(r['dc2_in_flight_mib_max'], '.1f')} | {r['producer_errors']} |")


def table(result: dict) -> str:
    m = result["machine"]
    head = ("| binary | DC2 | RTT ms | partitions | linger ms | offered rec/s | DC2 rec/s | "
            "DC2/offered | DC2 complete s after load | DC2 behind at end, records | "
            "proxy CPU µs/record | proxy peak RSS MiB | DC2 in flight MiB (max) | "
            "producer errors |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    out = [f"Measured {m['date_utc']} on {m['nproc']} cores ({m['cpu_model']}), "
           f"commit {m['git_commit']}{' (src modified)' if m['src_dirty'] else ''}; "
           f"records of {RECORD} B, idempotent, acks=all; {result['duration_s']:g} s of load "
           f"per case; other load on the machine during the run: "
           f"{result['foreign_cores']:.2f} cores.", ""]
    if m.get("lscpu_model"):
        out[0] += f" lscpu model name: {m['lscpu_model']}."
    for kind, title in (("sweep", "Round-trip sweep, 4 partitions at 20 MB/s, linger.ms=5"),
                        ("matrix", "At the longest round trip: 4 partitions (20 MB/s) and "
                                   "one hot partition (5 MB/s)")):
        rows = [r for r in result["cases"] if r["kind"] == kind]
        if rows:
            out += [f"**{title}**", "", head, *map(row, rows), ""]
    cu = [r for r in result["cases"] if r["kind"] == "catch-up"]
    if cu:
        out += ["**Catch-up after DC2 was unreachable, 4 partitions, records of 1000 B**", "",
                "| binary | DC2 | RTT ms | outage s | live rec/s | backlog records | caught up "
                "after s | catch-up rec/s | x live | proxy peak RSS MiB | DC2 ends = DC1's "
                "|\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in cu:
            out.append(f"| {r['binary']} | {r.get('dc2', 'tansu')} | {r['rtt_ms']} | "
                       f"{fmt(r['outage_s'])} | "
                       f"{fmt(r['live_rps'])} | {r['backlog_records']} | "
                       f"{fmt(r['caught_up_after_s'], '.1f', none='not within the run')} | "
                       f"{fmt(r['catch_up_rps'])} | {fmt(r['catch_up_x_live'], '.2f')} | "
                       f"{fmt(r['proxy_peak_rss_mib'], '.1f')} | "
                       f"{'yes' if r.get('dc2_ends_equal_dc1') else 'no'} |")
        out += ["", "Cores used while DC2 caught up (from the link's return until back in "
                "step), per process, and the machine's other load meanwhile:", "",
                "| binary | DC2 | live rec/s | window s | dc1 | dc2 | producer | relay | "
                "kafka-tee | machine busy | other load |",
                "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in cu:
            c = r.get("cores_while_catching_up")
            if not c:
                continue
            pp = c["per_process"]
            out.append(f"| {r['binary']} | {r.get('dc2', 'tansu')} | {fmt(r['live_rps'])} | "
                       f"{c['from_s']}-{c['to_s']} | "
                       + " | ".join(fmt(pp.get(k), ".2f")
                                    for k in ("dc1", "dc2", "producer", "relay", "kafka-tee"))
                       + f" | {c['machine_busy']:.2f} | {c['other_load']:.2f} |")
        out.append("")
    return "\n".join(out)


def lscpu_model() -> str | None:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                 if ln.startswith("Model name:")), None)


def wait_quiet(cores: float, longest: float, settle: float = 30.0) -> dict:
    """Waits until, for `settle` s on end, no pytest process runs and the machine's busy
    cores (over each 3 s) stay below `cores`; at most `longest` s. Returns what it saw
    last."""
    deadline = time.monotonic() + longest
    quiet_since = None
    while True:
        pytest = subprocess.run(["pgrep", "-f", "pytest"], capture_output=True,
                                text=True).stdout.split()
        b0, t0 = e2e.busy_cores_seconds(), time.monotonic()
        time.sleep(3)
        busy = (e2e.busy_cores_seconds() - b0) / (time.monotonic() - t0)
        now = time.monotonic()
        quiet = not pytest and busy < cores
        quiet_since = (quiet_since or t0) if quiet else None
        seen = {"busy_cores": round(busy, 2), "pytest_pids": len(pytest),
                "loadavg_1m": round(os.getloadavg()[0], 2),
                "quiet_for_s": round(now - quiet_since, 1) if quiet_since else 0.0}
        if (quiet_since and now - quiet_since >= settle) or now > deadline:
            seen["quiet"] = bool(quiet_since and now - quiet_since >= settle)
            log(f"machine before the case: {seen}")
            return seen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rtts", default="0,20,50,100,200", help="round trips to DC2, ms")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of load per case")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--drain-timeout", type=float, default=60.0,
                    help="longest wait for DC2 after the load")
    ap.add_argument("--outage", type=float, default=60.0,
                    help="seconds DC2 is unreachable in the catch-up run (0: none)")
    ap.add_argument("--after-outage", type=float, default=60.0,
                    help="seconds of load after the link comes back")
    ap.add_argument("--catch-up-rates", default="20000",
                    help="live rates (records/s) of the catch-up runs, comma-separated")
    ap.add_argument("--no-matrix", action="store_true",
                    help="skip the partitions x linger.ms cases")
    ap.add_argument("--baseline", type=Path,
                    help="another kafka-tee binary to run side by side with this tree's")
    ap.add_argument("--dc2", default="tansu",
                    help="DC2 broker(s), comma-separated: tansu, double (the Kafka-rules "
                         "double of benches/dc2_double.rs); each case runs against each")
    ap.add_argument("--no-sweep", action="store_true", help="skip the round-trip sweep")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each catch-up case")
    ap.add_argument("--quiet-cores", type=float, default=0.0,
                    help="before each case, wait until for 30 s no pytest runs and the "
                         "machine's busy cores over 3 s stay below this (0: do not wait)")
    ap.add_argument("--quiet-wait", type=float, default=900.0,
                    help="longest wait for a quiet machine before a case, s")
    ap.add_argument("--start-before", metavar="HH:MM",
                    help="start no case at or after this time of day (UTC)")
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--quick", action="store_true", help="short smoke test")
    ap.add_argument("--out", type=Path, default=RESULTS / "longlink-latest.json")
    args = ap.parse_args()
    if args.quick:
        args.rtts, args.duration, args.outage, args.after_outage = "0,200", 5.0, 10.0, 10.0
        args.drain_timeout, args.no_matrix = 20.0, True
    e2e.ensure_python_packages()
    kt, loadgen = e2e.build(args.skip_build)
    binaries = {"this": kt}
    if args.baseline:
        if not args.baseline.is_file():
            ap.error(f"--baseline {args.baseline}: no such file")
        binaries = {"baseline": args.baseline.resolve(), "this": kt}
    dc2s = [x.strip() for x in args.dc2.split(",") if x.strip()]
    if not dc2s or any(d not in ("tansu", "double") for d in dc2s):
        ap.error(f"--dc2 {args.dc2}: expected tansu, double or both, comma-separated")
    double = build_double() if "double" in dc2s else None
    rtts = [int(x) for x in args.rtts.split(",") if x.strip()]
    longest = max(rtts)
    cases: list[tuple[Case, float]] = []
    if not args.no_sweep:
        for rtt in rtts:
            for d in dc2s:
                for b in binaries:
                    cases.append((Case("sweep", b, rtt, 4, 20000, 5, d), 0.0))
    if not args.no_matrix:
        for parts, rate in ((4, 20000), (1, 5000)):
            for linger in (0, 5, 20):
                if parts == 4 and linger == 5:
                    continue  # in the sweep
                for d in dc2s:
                    for b in binaries:
                        cases.append((Case("matrix", b, longest, parts, rate, linger, d), 0.0))
    if args.outage > 0:
        for _ in range(args.repeats):
            for rate in (int(x) for x in args.catch_up_rates.split(",") if x.strip()):
                for d in dc2s:
                    for b in binaries:
                        cases.append((Case("catch-up", b, longest, 4, rate, 5, d),
                                      args.outage))

    work = Path(tempfile.mkdtemp(prefix="kafka-tee-longlink-"))
    log(f"{len(cases)} cases; logs in {work}")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    bench = Bench(args, binaries, loadgen, work, double)
    results = []
    busy0, t0 = e2e.busy_cores_seconds(), time.monotonic()
    mine0 = e2e.children_cpu()
    try:
        for case, outage in cases:
            quiet = wait_quiet(args.quiet_cores, args.quiet_wait) if args.quiet_cores else None
            if args.start_before and time.strftime("%H:%M", time.gmtime()) >= args.start_before:
                log(f"{args.start_before} UTC has passed; the remaining cases are not run")
                break
            r = bench.run(case, outage)
            r["machine_before"] = quiet
            results.append(r)
            msg = (f"{case.label()}: offered {r['offered_rps']:.0f}/s, DC2 {r['dc2_rps']:.0f}/s "
                   f"({fmt(r['dc2_ratio'], '.2f')}), complete after "
                   f"{fmt(r['dc2_complete_after_s'], '.2f', none='timeout')} s, CPU "
                   f"{r['proxy_cpu_us_per_record']:.2f} µs/rec, RSS {r['proxy_peak_rss_mib']} MiB")
            if outage:
                msg += (f"; catch-up {fmt(r['catch_up_rps'])}/s = "
                        f"{fmt(r['catch_up_x_live'], '.2f')}x live, caught up after "
                        f"{fmt(r['caught_up_after_s'], '.1f', none='never')} s")
            log(msg)
            write(args, binaries, results, busy0, mine0, t0)
    except KeyboardInterrupt as e:
        log(f"interrupted ({e})")
        return 130
    print(write(args, binaries, results, busy0, mine0, t0))
    log(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


def write(args, binaries, results, busy0: float, mine0: float, t0: float) -> str:
    """Writes the results so far (after every case, so an interrupted run keeps them);
    returns the Markdown."""
    wall = time.monotonic() - t0
    foreign = max(0.0, (e2e.busy_cores_seconds() - busy0) - (e2e.children_cpu() - mine0))
    machine = e2e.machine()
    machine["lscpu_model"] = lscpu_model()
    result = {"machine": machine, "duration_s": args.duration,
              "binaries": {k: str(v) for k, v in binaries.items()},
              "foreign_cores": round(foreign / wall, 2), "cases": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    md = table(result)
    args.out.with_suffix(".md").write_text(md + "\n")
    return md


if __name__ == "__main__":
    sys.exit(main())
