"""A TCP proxy on loopback that can refuse, cut or stall connections to the broker."""

from __future__ import annotations

import asyncio
import contextlib
import ssl


class FaultProxy:
    """Forwards 127.0.0.1:<port> to a target; `up`, `cut_all`, `stalled` change what it does."""

    def __init__(
        self, target_host: str, target_port: int, *, tls: ssl.SSLContext | None = None
    ) -> None:
        self._target = (target_host, target_port)
        self._tls = tls  # a server-side context: the proxy terminates TLS, forwards plain TCP
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.accepting = True
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._replying = asyncio.Event()  # the broker's side only: see `replies_stalled`
        self._replying.set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, ssl=self._tls
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.cut_all()
        for link in list(self._links):
            link.cancel()
        await asyncio.gather(*self._links, return_exceptions=True)

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    @stalled.setter
    def stalled(self, value: bool) -> None:
        """A stalled link keeps its sockets open but forwards nothing: a silent network."""
        if value:
            self._flowing.clear()
        else:
            self._flowing.set()

    @property
    def replies_stalled(self) -> bool:
        return not self._replying.is_set()

    @replies_stalled.setter
    def replies_stalled(self, value: bool) -> None:
        """What the client sends still reaches the broker; what the broker sends back (a
        publish confirm) waits: a publish that arrived but whose confirm was lost."""
        if value:
            self._replying.clear()
        else:
            self._replying.set()

    @property
    def open_links(self) -> int:
        """Client connections forwarded right now."""
        return len(self._writers) // 2

    def cut_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.accepting:
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, upstream_writer))
        pumps = [
            asyncio.create_task(self._pump(reader, upstream_writer)),
            asyncio.create_task(self._pump(upstream_reader, writer, self._replying)),
        ]
        self._links.update(pumps)
        await asyncio.gather(*pumps, return_exceptions=True)
        self._links.difference_update(pumps)
        for end in (writer, upstream_writer):
            end.transport.abort()
            self._writers.discard(end)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        replying: asyncio.Event | None = None,
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await reader.read(65536):
                await self._flowing.wait()
                if replying is not None:
                    await replying.wait()
                writer.write(chunk)
                await writer.drain()
        writer.transport.abort()
