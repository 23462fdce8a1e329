"""A TCP proxy on 127.0.0.1 that can cut the link: every connection reset, new ones refused.

Used by the broker-fault tests: the embedded broker advertises the proxy's address, so every Kafka
connection of the worker (bootstrap, group coordinator, fetch, produce) goes through it.

    proxy = TcpProxy(upstream_port=broker_port, port=advertised_port)
    await proxy.start()
    await proxy.cut()        # existing connections reset (RST), the port refuses new ones
    await proxy.restore()    # listening again on the same port
    await proxy.stop()

Every piping loop ends when its connection closes (``cut``/``stop`` close them all) or after a
bounded number of chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

_CHUNK = 256 * 1024
_MAX_CHUNKS = 1_000_000  # 256 GB per connection: more than any test moves


def _reset(writer: asyncio.StreamWriter) -> None:
    """Abort a connection with a TCP RST (SO_LINGER 0), as a dying broker host would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy:
    """Forwards ``host:port`` to ``upstream_host:upstream_port``; ``port=0`` picks a free port."""

    def __init__(
        self, upstream_port: int, *, upstream_host: str = "127.0.0.1", host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0  # connections accepted while listening
        self.cuts = 0

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen (again) on ``port``; the first start picks the port when it is 0."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def cut(self) -> None:
        """Stop listening (new connections are refused) and reset every open connection."""
        self.cuts += 1
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()
        await self._settle_tasks()

    async def restore(self) -> None:
        """Accept connections again, on the same port."""
        await self.start()

    async def stop(self) -> None:
        """Cut everything and stop for good."""
        await self.cut()

    async def _settle_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None:  # accepted in the instant of a cut
            _reset(writer)
            return
        self.accepted += 1
        self._writers.add(writer)
        task = asyncio.create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            self._writers.discard(writer)
            _reset(writer)
            return
        self._writers.add(up_writer)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for end in (writer, up_writer):
                self._writers.discard(end)
                end.transport.abort()

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Copy until end of stream or a connection error (each read is one chunk at most)."""
        with contextlib.suppress(ConnectionError, OSError):
            for _ in range(_MAX_CHUNKS):
                chunk = await source.read(_CHUNK)
                if not chunk:
                    break
                sink.write(chunk)
                await sink.drain()
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            if not sink.is_closing():
                sink.write_eof()
