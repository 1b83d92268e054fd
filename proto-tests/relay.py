"""A TCP relay for fault tests: sits between a client and a broker and can slow the
link down, stop forwarding (black hole) and cut every connection, on command.

Runs an asyncio loop in a background thread of the test process; the control methods
are thread-safe. Each accepted connection gets its own upstream connection and two
pumps (one per direction). A pump reads a chunk, stamps it with `now + delay` and
delivers it at that time, in order, so `set_delay` adds latency without reordering
(to both directions, or to requests or responses only).
While black-holed, nothing is delivered in either direction (chunks wait in the relay
and reading stops once a small queue is full, so TCP back-pressure reaches the sender),
and new connections are accepted but get nothing: like a link that went silent.
`cut()` closes every open connection (both sides), dropping whatever was in transit.

Usable on its own too (benches/longlink.py runs it so, in a process of its own):
`python3 relay.py LISTEN_PORT UPSTREAM_HOST:UPSTREAM_PORT [--delay-ms MS] [--queue-chunks N]`;
there SIGUSR1 black-holes the link and SIGUSR2 cuts every connection and lets data
flow again (a link that was down and came back).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import struct
import sys
import time

from loopserver import HOST, LoopServer

CHUNK = 64 * 1024
# Chunks that may wait in the relay per direction and connection: with the delay, this
# bounds what the link carries (16 x 64 KiB per one-way delay). A long-link benchmark
# raises it so that the relay, not the proxy, is never the limit.
QUEUE_CHUNKS = 16


class Relay(LoopServer):
    thread_name = "relay"

    def __init__(self, upstream: tuple[str, int], listen_port: int = 0,
                 listen_host: str = HOST, queue_chunks: int = QUEUE_CHUNKS):
        super().__init__(listen_host, listen_port)
        self.upstream = upstream
        self.queue_chunks = queue_chunks
        self.delay = {"up": 0.0, "down": 0.0}  # up: client -> upstream
        self.accepted = 0
        self.cuts = 0
        self.bytes_up = 0  # client -> upstream
        self.bytes_down = 0  # upstream -> client
        self._conns: set["_Conn"] = set()
        self._flowing: asyncio.Event | None = None

    # ---------------------------------------------------------------- control

    def set_delay(self, seconds: float, direction: str = "both") -> None:
        """Every chunk read from now on is delivered `seconds` after it was read; in
        one direction only with direction "up" (client to upstream) or "down"."""
        for d in (("up", "down") if direction == "both" else (direction,)):
            self.delay[d] = max(0.0, seconds)

    def blackhole(self, on: bool = True) -> None:
        """Stops (on) or resumes (off) forwarding in both directions."""
        self._call(lambda: self._flowing.clear() if on else self._flowing.set())

    def cut(self) -> int:
        """Closes every open connection on both sides; returns how many were cut."""
        fut = asyncio.run_coroutine_threadsafe(self._cut_all(), self._loop)
        return fut.result(timeout=10)

    def connections(self) -> int:
        return len(self._conns)

    # ------------------------------------------------------------- the loop

    def _setup(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream), timeout=10)
        except (OSError, asyncio.TimeoutError):
            writer.close()
            return
        conn = _Conn(self, reader, writer, up_reader, up_writer)
        self._conns.add(conn)
        conn.start()

    async def _cut_all(self) -> int:
        conns = list(self._conns)
        for c in conns:
            c.close()
        self.cuts += len(conns)
        return len(conns)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut_all()


class _Conn:
    def __init__(self, relay: Relay, reader, writer, up_reader, up_writer):
        self.relay = relay
        self.writers = (writer, up_writer)
        self.tasks: list[asyncio.Task] = []
        self.pairs = ((reader, up_writer, "up"), (up_reader, writer, "down"))
        self.closed = False

    def start(self) -> None:
        for src, dst, direction in self.pairs:
            q: asyncio.Queue = asyncio.Queue(self.relay.queue_chunks)
            self.tasks.append(asyncio.ensure_future(self._read(src, q, direction)))
            self.tasks.append(asyncio.ensure_future(self._write(q, dst, direction)))

    async def _read(self, src: asyncio.StreamReader, q: asyncio.Queue,
                    direction: str) -> None:
        try:
            while True:
                data = await src.read(CHUNK)
                await self.relay._flowing.wait()
                await q.put((time.monotonic() + self.relay.delay[direction], data))
                if not data:
                    return
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            if not self.closed:
                try:
                    q.put_nowait((0.0, b""))
                except asyncio.QueueFull:
                    self.close()

    async def _write(self, q: asyncio.Queue, dst: asyncio.StreamWriter,
                     direction: str) -> None:
        try:
            while True:
                due, data = await q.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self.relay._flowing.wait()
                if not data:
                    break
                dst.write(data)
                await dst.drain()
                if direction == "up":
                    self.relay.bytes_up += len(data)
                else:
                    self.relay.bytes_down += len(data)
        except (OSError, asyncio.CancelledError):
            pass
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.relay._conns.discard(self)
        for t in self.tasks:
            if t is not asyncio.current_task():
                t.cancel()
        for w in self.writers:
            try:
                # RST rather than FIN where possible: a cut link, not a polite close.
                sock = w.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
                w.close()
            except OSError:
                pass


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("listen_port", type=int)
    ap.add_argument("upstream", help="HOST:PORT")
    ap.add_argument("--delay-ms", type=float, default=0.0,
                    help="one-way delay added in each direction")
    ap.add_argument("--queue-chunks", type=int, default=QUEUE_CHUNKS,
                    help=f"chunks of {CHUNK // 1024} KiB waiting per direction and connection")
    a = ap.parse_args(argv[1:])
    host, port = a.upstream.rsplit(":", 1)
    r = Relay((host, int(port)), a.listen_port, queue_chunks=a.queue_chunks).start()
    r.set_delay(a.delay_ms / 1000)
    signal.signal(signal.SIGUSR1, lambda *_: r.blackhole(True))

    def restore(*_):
        r.cut()
        r.blackhole(False)

    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGUSR2, restore)
    signal.signal(signal.SIGTERM, stop)
    print(f"relay 127.0.0.1:{r.port} -> {host}:{port}, {a.delay_ms:g} ms each way; "
          "Ctrl-C stops it", flush=True)
    r.serve_until_interrupted()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
