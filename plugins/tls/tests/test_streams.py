"""The asyncio helpers: open_connection / start_server, mixed with the blocking server and client."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import Callable
from typing import Any

import pytest
from hybridkex import HandshakeTimeout, HybridKexError

from hybridkex_tls import (
    HybridTLSContext,
    HybridTLSSocket,
    TLSStreamReader,
    TLSStreamWriter,
    open_connection,
    start_server,
)


async def echo(reader: TLSStreamReader, writer: TLSStreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.write_eof()


def test_asyncio_client_and_server(server_ctx: HybridTLSContext, client_ctx: HybridTLSContext, keys: Any) -> None:
    async def main() -> None:
        server = await start_server(echo, "127.0.0.1", 0, server_ctx)
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await open_connection("127.0.0.1", port, client_ctx)
            assert writer.get_extra_info("group") == "X25519MLKEM768"
            assert writer.get_extra_info("external_psk") is True
            assert writer.get_extra_info("peer") == keys.server_fingerprint
            assert writer.get_extra_info("peername")[1] == port
            assert writer.get_extra_info("socket") is None
            writer.write(b"line one\nline two\npartial")
            assert await reader.readline() == b"line one\n"
            assert await reader.readuntil(b"two\n") == b"line two\n"
            assert await reader.readexactly(3) == b"par"
            payload = os.urandom(3 * 1024 * 1024)
            writer.write(payload)
            await writer.drain()
            writer.write_eof()
            rest = await reader.read()
            assert hashlib.sha256(rest).digest() == hashlib.sha256(b"tial" + payload).digest()
            assert reader.at_eof()
            with pytest.raises(asyncio.IncompleteReadError):
                await reader.readexactly(1)
            writer.close()
            await writer.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_asyncio_client_against_the_threaded_server(client_ctx: HybridTLSContext, server_ctx: HybridTLSContext,
                                                    run_server: Callable[..., Any],
                                                    echo: Callable[[HybridTLSSocket], None]) -> None:
    running = run_server(server_ctx, echo)

    async def main() -> list[bytes]:
        reader, writer = await open_connection(*running.address, client_ctx)
        writer.write(b"a\nb\n")
        writer.write_eof()
        lines = [line async for line in reader]
        writer.close()
        return lines

    assert asyncio.run(asyncio.wait_for(main(), 30)) == [b"a\n", b"b\n"]


def test_blocking_client_against_the_asyncio_server(client_ctx: HybridTLSContext,
                                                    server_ctx: HybridTLSContext) -> None:
    async def main() -> bytes:
        server = await start_server(echo, "127.0.0.1", 0, server_ctx)
        async with server:
            address = server.sockets[0].getsockname()[:2]

            def blocking() -> bytes:
                with socket.create_connection(address) as raw, client_ctx.wrap_socket(raw) as tls:
                    tls.sendall(b"from a thread")
                    tls.shutdown(socket.SHUT_WR)
                    return tls.recv(100)

            return await asyncio.to_thread(blocking)

    assert asyncio.run(asyncio.wait_for(main(), 30)) == b"from a thread"


def test_asyncio_failures_are_reported_and_the_server_goes_on(keys: Any, server_ctx: HybridTLSContext,
                                                              client_ctx: HybridTLSContext) -> None:
    errors: list[BaseException] = []
    stranger = HybridTLSContext.client(identity=keys.client_key, peers=[keys.stranger_pub], timeout=5)

    async def main() -> None:
        server = await start_server(echo, "127.0.0.1", 0, server_ctx, on_error=lambda peer, exc: errors.append(exc))
        async with server:
            port = server.sockets[0].getsockname()[1]
            with pytest.raises(OSError):  # v2: the server drops an InitHello keyed for another responder
                await open_connection("127.0.0.1", port, stranger)
            for _ in range(50):
                if errors:
                    break
                await asyncio.sleep(0.02)
            reader, writer = await open_connection("127.0.0.1", port, client_ctx)
            writer.write(b"ok")
            writer.write_eof()
            assert await reader.read() == b"ok"
            writer.close()

    asyncio.run(asyncio.wait_for(main(), 30))
    assert len(errors) == 1 and "mac1" in str(errors[0])


def test_asyncio_handshake_timeout(keys: Any) -> None:
    client = HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], timeout=0.5)

    async def main() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # never answers; returns when the client gives up and closes
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            with pytest.raises(HandshakeTimeout):
                await open_connection("127.0.0.1", port, client)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_asyncio_connection_refused(client_ctx: HybridTLSContext) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(HybridKexError, match="cannot connect"):
            asyncio.run(open_connection("127.0.0.1", port, client_ctx))
