#!/usr/bin/env python3
"""Profiles kafka-tee's hot path under load, tee off and tee on.

For each mode it starts Tansu brokers (DC1, and DC2 for the tee) and the release
proxy, drives it with benches/loadgen.rs, and records two profiles:

  callgrind  the proxy under `valgrind --tool=callgrind` at a fixed low rate (valgrind
             slows it ~50x): instructions per function, user space only;
  perf       `perf record -e cpu-clock` on the uninstrumented proxy at the same rate as
             the e2e benchmark's half-rate run: CPU time including the kernel (socket
             syscalls), where the hardware counters are not available.

Writes benches/results/profile-<mode>-{callgrind,perf}.txt and profile.json, and prints
the top functions with their share.

  python3 benches/profile.py [--rate 4000] [--duration 8] [--perf-rate 30000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # noqa: E402

RESULTS = e2e.RESULTS
HOST = e2e.HOST


def stop(p: subprocess.Popen, grace: float = 90.0) -> None:
    if p.poll() is None:
        os.kill(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=10)


def loadgen(lg: Path, bootstrap: str, topic: str, rate: int, duration: float,
            dc2: str | None) -> dict:
    argv = [str(lg), "--bootstrap", bootstrap, "--topic", topic, "--rate", str(rate),
            "--duration", str(duration), "--warmup", "1", "--record-size", "1000"]
    if dc2:
        argv += ["--dc2", dc2, "--dc2-timeout", "120"]
    p = subprocess.run(argv, text=True, capture_output=True, timeout=duration + 300)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"loadgen failed:\n{p.stderr[-2000:]}")
    return json.loads(lines[-1])


# Symbol patterns -> cost group, first match wins.
GROUPS = [
    ("memcpy/memmove", r"memcpy|memmove|__memcpy|__memmove"),
    ("allocator (malloc/free)", r"malloc|free\b|_int_free|realloc|calloc|cfree|tcache|"
                                r"alloc::alloc|__rust_alloc|__rust_dealloc|__rdl_|"
                                r"kafka_tee::alloc"),
    ("CRC-32C", r"crc32c"),
    ("kafka-protocol decode/encode", r"kafka_protocol"),
    ("Produce request reader", r"protocol::produce"),
    ("frame codec / session", r"protocol::frame|proxy::session|FramedRead|codec"),
    ("response rewrite", r"proxy::rewrite"),
    ("capture (tee ordering)", r"tee::capture"),
    ("replicator / DC2 client", r"tee::replicator|kafka_tee::client|tee::batch"),
    ("metrics", r"metrics"),
    ("tracing", r"tracing"),
    ("tokio runtime, timers, channels", r"tokio"),
    ("syscall wrappers (libc)", r"__libc|epoll|sendto|recvfrom|\bread\b|\bwrite\b|"
                                r"writev|syscall|futex|pthread"),
    ("kernel", r"\[k\]"),
]


def group_of(sym: str) -> str:
    for name, pat in GROUPS:
        if re.search(pat, sym):
            return name
    return "other"


def callgrind_top(out_file: Path, text_file: Path, n: int = 20) -> dict:
    ann = subprocess.run(["callgrind_annotate", "--threshold=99.5", str(out_file)],
                         text=True, capture_output=True, check=True).stdout
    text_file.write_text(ann)
    total = None
    rows = []
    for line in ann.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS", line)
        if m:
            total = int(m.group(1).replace(",", ""))
            continue
        m = re.match(r"^\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(.*)$", line)
        if m and total:
            sym = m.group(3)
            sym = re.sub(r"\s+\[[^\]]*\]$", "", sym)  # drop the object file
            sym = re.sub(r"^\S+?:(?=\S)", "", sym, count=1)  # drop "file:" prefixes
            rows.append((int(m.group(1).replace(",", "")), sym))
    groups: dict[str, float] = {}
    for ir, sym in rows:
        g = group_of(sym)
        groups[g] = groups.get(g, 0.0) + 100.0 * ir / total
    top = [{"function": sym[:160], "share_pct": round(100.0 * ir / total, 2)}
           for ir, sym in rows[:n]]
    return {"instructions": total, "top": top,
            "groups": dict(sorted(((k, round(v, 1)) for k, v in groups.items()),
                                  key=lambda kv: -kv[1]))}


def perf_top(data: Path, text_file: Path, n: int = 20) -> dict:
    rep = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--sort", "sym",
                          "--percent-limit", "0.01"], text=True, capture_output=True).stdout
    text_file.write_text(rep)
    rows = []
    for line in rep.splitlines():
        m = re.match(r"^\s*([\d.]+)%\s+(\[[k.]\])\s+(.*)$", line)
        if m:
            rows.append((float(m.group(1)), f"{m.group(2)} {m.group(3).strip()}"))
    groups: dict[str, float] = {}
    for pct, sym in rows:
        g = group_of(sym)
        groups[g] = groups.get(g, 0.0) + pct
    dso = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--sort", "dso"],
                         text=True, capture_output=True).stdout
    by_dso = {}
    for line in dso.splitlines():
        m = re.match(r"^\s*([\d.]+)%\s+(\S+)", line)
        if m:
            by_dso[m.group(2)] = float(m.group(1))
    return {"kernel_pct": by_dso.get("[kernel.kallsyms]"), "by_object": by_dso,
            "top": [{"function": s[:160], "share_pct": p} for p, s in rows[:n]],
            "groups": dict(sorted(((k, round(v, 1)) for k, v in groups.items()),
                                  key=lambda kv: -kv[1]))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=4000, help="records/s under callgrind")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--perf-rate", type=int, default=30000,
                    help="records/s for the perf profile (0 = as fast as possible)")
    ap.add_argument("--modes", default="tee-off,tee-on")
    ap.add_argument("--skip-build", action="store_true")
    args = ap.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("valgrind is missing: apt-get install -y valgrind")
    e2e.ensure_python_packages()
    kt, lg = e2e.build(args.skip_build)
    work = Path(tempfile.mkdtemp(prefix="kafka-tee-profile-"))
    e2e.log(f"work dir {work}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary: dict = {"machine": e2e.machine(), "params": vars(args)}
    procs = e2e.Procs(work)
    try:
        topo = e2e.Topology(procs, kt, None, work / "state")
        dc1 = topo.tansu("dc1")
        dc2 = topo.tansu("dc2")
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            tee = mode == "tee-on"
            port = e2e.free_port()
            base = [str(kt), "--listen", f"{HOST}:{port}", "--source", dc1]
            if tee:
                (work / f"state-{mode}").mkdir(exist_ok=True)
                base += ["--target", dc2, "--state-dir", str(work / f"state-{mode}")]
            env = dict(os.environ, KAFKA_TEE_LOG="warn")

            # callgrind: instructions per function at a low fixed rate.
            cg_out = work / f"callgrind-{mode}.out"
            p = procs.start(f"callgrind-{mode}", [
                "valgrind", "--tool=callgrind", f"--callgrind-out-file={cg_out}",
                "--fair-sched=yes", *base], env=env)
            e2e.wait_port(port, p, f"callgrind-{mode}", procs, timeout=120)
            topic = f"profile-cg-{mode}-{int(time.time())}"
            r = loadgen(lg, f"{HOST}:{port}", topic, args.rate, args.duration,
                        dc2 if tee else None)
            e2e.log(f"callgrind {mode}: {r['records_per_s']:.0f} records/s, "
                    f"p99 {r['latency_ms']['p99']:.1f} ms, DC2 {r.get('dc2_catchup_s')}")
            stop(p)
            cg = callgrind_top(cg_out, RESULTS / f"profile-{mode}-callgrind.txt")
            cg["load"] = {k: r[k] for k in ("records_per_s", "acked", "dc2_catchup_s")}
            for b in [dc1] + ([dc2] if tee else []):
                e2e.delete_topic(b, topic)

            # perf: CPU time including the kernel, uninstrumented binary.
            port = e2e.free_port()
            base[2] = f"{HOST}:{port}"
            p = procs.start(f"perf-{mode}", base, env=env)
            e2e.wait_port(port, p, f"perf-{mode}", procs)
            data = work / f"perf-{mode}.data"
            rec = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "2000",
                                    "-p", str(p.pid), "-o", str(data)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            topic = f"profile-perf-{mode}-{int(time.time())}"
            cpu0 = e2e.cpu_seconds(p.pid)
            r = loadgen(lg, f"{HOST}:{port}", topic, args.perf_rate, args.duration,
                        dc2 if tee else None)
            cpu1 = e2e.cpu_seconds(p.pid)
            os.kill(rec.pid, signal.SIGINT)
            rec.wait(timeout=60)
            stop(p)
            pf = perf_top(data, RESULTS / f"profile-{mode}-perf.txt")
            pf["load"] = {k: r[k] for k in ("records_per_s", "acked", "dc2_catchup_s")}
            pf["proxy_cpu_us_per_record"] = round(1e6 * (cpu1 - cpu0) / max(1, r["acked"]), 3)
            e2e.log(f"perf {mode}: {r['records_per_s']:.0f} records/s, proxy "
                    f"{pf['proxy_cpu_us_per_record']} CPU µs/record, kernel "
                    f"{pf['kernel_pct']}%")
            for b in [dc1] + ([dc2] if tee else []):
                e2e.delete_topic(b, topic)
            summary[mode] = {"callgrind": cg, "perf": pf}
    finally:
        procs.stop_all()
    (RESULTS / "profile.json").write_text(json.dumps(summary, indent=1) + "\n")
    for mode in [m for m in ("tee-off", "tee-on") if m in summary]:
        for kind in ("callgrind", "perf"):
            s = summary[mode][kind]
            print(f"\n== {mode}, {kind}: cost groups (%)")
            for g, v in s["groups"].items():
                print(f"  {v:6.1f}  {g}")
            print(f"== {mode}, {kind}: top functions")
            for t in s["top"][:15]:
                print(f"  {t['share_pct']:6.2f}  {t['function']}")
    print(f"\nwrote {RESULTS / 'profile.json'} and profile-*.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
