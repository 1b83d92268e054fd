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

Usable on its own too: `python3 relay.py LISTEN_PORT UPSTREAM_HOST:UPSTREAM_PORT`.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
import time

from loopserver import HOST, LoopServer

CHUNK = 64 * 1024
QUEUE_CHUNKS = 16


class Relay(LoopServer):
    thread_name = "relay"

    def __init__(self, upstream: tuple[str, int], listen_port: int = 0,
                 listen_host: str = HOST):
        super().__init__(listen_host, listen_port)
        self.upstream = upstream
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
            q: asyncio.Queue = asyncio.Queue(QUEUE_CHUNKS)
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
    if len(argv) != 3:
        print(__doc__)
        return 2
    host, port = argv[2].rsplit(":", 1)
    r = Relay((host, int(port)), int(argv[1])).start()
    print(f"relay 127.0.0.1:{r.port} -> {host}:{port}; Ctrl-C stops it")
    r.serve_until_interrupted()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
