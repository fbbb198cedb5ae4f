"""A TCP proxy on 127.0.0.1 to HOST:PORT that delays every byte by a fixed one-way latency,
both ways: an emulated network path (RTT = 2 x delay) without touching the interfaces (no `tc`).

python -m bench.latency_proxy HOST PORT DELAY_MS    # prints the port it listens on

Run as its own process, so its work never competes for the GIL with the client it measures.
It stops when its stdin closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

CHUNK = 1 << 16


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    delivering = asyncio.ensure_future(deliver())
    try:
        while data := await reader.read(CHUNK):
            queue.put_nowait((loop.time() + delay, data))
    except ConnectionError:
        pass
    queue.put_nowait((loop.time() + delay, b""))
    with contextlib.suppress(ConnectionError):
        await delivering


async def _serve(host: str, port: int, delay: float) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        writers = [client_w]
        try:
            server_r, server_w = await asyncio.open_connection(host, port)
            writers.append(server_w)
            await asyncio.gather(_pipe(client_r, server_w, delay), _pipe(server_r, client_w, delay))
        except (OSError, asyncio.CancelledError):
            pass  # refused, reset, or this proxy is stopping
        finally:
            for writer in writers:
                writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


def main() -> None:
    host, port, delay_ms = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    asyncio.run(_serve(host, port, delay_ms / 1000))


if __name__ == "__main__":
    main()
