"""A TCP server running its own asyncio loop in a background thread of the test
process: the shared base of the fault relay (relay.py) and the SASL gate
(saslgate.py).

Subclasses set `upstream`, `listen_host` and `port` (0 = any free port), then
implement `async _accept(reader, writer)` and `async _shutdown()` (close what is open);
`_setup()` runs on the loop before the server starts. `start()` returns once the port
is bound (or raises what binding raised); `stop()` shuts down and joins the thread;
`_call(fn)` runs `fn` on the loop and waits for it.
"""

from __future__ import annotations

import asyncio
import threading
import time

HOST = "127.0.0.1"


class LoopServer:
    thread_name = "loopserver"

    def __init__(self, listen_host: str = HOST, listen_port: int = 0):
        self.listen_host = listen_host
        self.port = listen_port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0):
        self._thread = threading.Thread(target=self._run,
                                        name=f"{self.thread_name}-{self.port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"{self.thread_name} did not start")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        except Exception:  # noqa: BLE001 - stopping anyway
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    def serve_until_interrupted(self) -> None:
        """Blocks until Ctrl-C (SIGINT), then stops (for the command-line entry points)."""
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            self.stop()

    def _call(self, fn, timeout: float = 10.0) -> bool:
        """Runs `fn` on the loop; whether it finished within `timeout`."""
        done = threading.Event()

        def run():
            try:
                fn()
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        return done.wait(timeout=timeout)

    # ---------------------------------------------------------- for subclasses

    def _setup(self) -> None:
        """Runs on the loop before the server starts."""

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _shutdown(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._setup()
            self._server = loop.run_until_complete(
                asyncio.start_server(self._accept, self.listen_host, self.port,
                                     reuse_address=True))
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()
