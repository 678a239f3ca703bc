"""After the handshake the streams hand the socket to OpenSSL: nothing may be lost, reordered or left hanging."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
from typing import cast

import pytest

from hybridkex_tls import HybridTLSContext, TLSStreamReader, TLSStreamWriter, open_connection, start_server
from hybridkex_tls._engine import TLSEngine
from hybridkex_tls._streams import _DirectSocket, wrap_streams

_BIG = 24 * 1024 * 1024  # far more than loopback's socket buffers: the backlog must fill and drain


async def _read_to_end(reader: TLSStreamReader, slow_first: int = 0) -> tuple[int, bytes]:
    """Count and SHA-256 of everything up to the end of the stream; the first ``slow_first`` bytes slowly."""
    h = hashlib.sha256()
    count = 0
    while data := await reader.read(1 << 16):
        h.update(data)
        count += len(data)
        if count < slow_first:
            await asyncio.sleep(0.001)  # a slow consumer: the sender's backlog grows
    return count, h.digest()


async def _digest_then_reply(reader: TLSStreamReader, writer: TLSStreamWriter) -> None:
    """Read slowly at first to the end of the stream, then answer with the count and SHA-256 of it."""
    count, digest = await _read_to_end(reader, slow_first=1 << 20)
    writer.write(struct.pack(">Q", count) + digest)
    await writer.drain()


def test_direct_mode_is_used_and_a_backlog_arrives_whole_and_in_order(
        server_ctx: HybridTLSContext, client_ctx: HybridTLSContext) -> None:
    payload = os.urandom(1 << 20) * (_BIG >> 20)

    async def main() -> None:
        server = await start_server(_digest_then_reply, "127.0.0.1", 0, server_ctx)
        async with server:
            reader, writer = await open_connection("127.0.0.1", server.sockets[0].getsockname()[1], client_ctx)
            direct = writer._direct
            assert direct is not None and reader._direct is direct  # OpenSSL has the socket
            for start in range(0, len(payload), 1 << 18):
                writer.write(payload[start:start + (1 << 18)])  # no drain: everything queues
            assert len(direct.backlog) > 0  # the kernel did not take it all
            await writer.drain()
            assert not direct.backlog
            writer.write_eof()  # half-close: the reply still comes back
            reply = await reader.readexactly(40)
            assert struct.unpack(">Q", reply[:8])[0] == len(payload)
            assert reply[8:] == hashlib.sha256(payload).digest()
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()
            assert writer.is_closing()

    asyncio.run(asyncio.wait_for(main(), 120))


def test_close_with_a_backlog_sends_all_of_it_first(server_ctx: HybridTLSContext,
                                                     client_ctx: HybridTLSContext) -> None:
    payload = os.urandom(8 * 1024 * 1024)
    got: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()

    async def count(reader: TLSStreamReader, writer: TLSStreamWriter) -> None:
        await got.put(await _read_to_end(reader))

    async def main() -> None:
        server = await start_server(count, "127.0.0.1", 0, server_ctx)
        async with server:
            _, writer = await open_connection("127.0.0.1", server.sockets[0].getsockname()[1], client_ctx)
            writer.write(payload)
            writer.close()  # at once, as one may with asyncio's own streams: the data still goes out
            await writer.wait_closed()
            n, digest = await asyncio.wait_for(got.get(), 60)
            assert n == len(payload) and digest == hashlib.sha256(payload).digest()

    asyncio.run(asyncio.wait_for(main(), 120))


def test_a_peer_that_resets_ends_the_transfer_with_an_oserror(server_ctx: HybridTLSContext,
                                                               client_ctx: HybridTLSContext) -> None:
    async def reset(reader: TLSStreamReader, writer: TLSStreamWriter) -> None:
        await reader.read(1)
        sock = writer._raw.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
        writer.close()

    async def main() -> None:
        server = await start_server(reset, "127.0.0.1", 0, server_ctx)
        async with server:
            reader, writer = await open_connection("127.0.0.1", server.sockets[0].getsockname()[1], client_ctx)
            assert writer._direct is not None
            with pytest.raises(OSError):
                for _ in range(2000):  # 500 MiB at most: the reset must stop it long before
                    writer.write(bytes(1 << 18))
                    await writer.drain()
            with pytest.raises(OSError):
                while await reader.read(1 << 16):
                    pass
            writer.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_bytes_already_buffered_keep_the_memory_bios(server_ctx: HybridTLSContext,
                                                     client_ctx: HybridTLSContext) -> None:
    # A raw stream that holds unread bytes (they came with the handshake's last flight) must not hand
    # its socket over: OpenSSL would never see those bytes.  The records then go the memory-BIO way.
    async def main() -> None:
        server = await start_server(_digest_then_reply, "127.0.0.1", 0, server_ctx)
        async with server:
            raw_reader, raw_writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
            reader, writer = await wrap_streams(raw_reader, raw_writer, client_ctx)
            assert writer._direct is not None
            writer.close()
            await writer.wait_closed()
            raw_reader, raw_writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
            raw_reader.feed_data(b"x")  # as if the peer's bytes had arrived already
            # an engine that is ready (done, BIOs idle): only the raw stream's unread byte can refuse
            assert _DirectSocket.attach(cast(TLSEngine, _Ready()), raw_reader, raw_writer) is None
            raw_writer.close()

    class _Ready:
        def can_attach_socket(self) -> bool:
            return True

    asyncio.run(asyncio.wait_for(main(), 60))
