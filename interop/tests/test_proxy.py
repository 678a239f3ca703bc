"""The fault proxy and the silent server, against a small echo server on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from hybridkex_interop import Fault, FaultProxy, SilentServer


class Echo:
    """Echo server that records everything it received, per connection."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        got = b""
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                got += data
                try:
                    conn.sendall(data)
                except OSError:
                    break
        self.received.append(got)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def echo() -> Iterator[Echo]:
    e = Echo()
    yield e
    e.close()


def talk(port: int, data: bytes, *, expect: int, timeout: float = 3.0) -> tuple[bytes, str]:
    """Send ``data``, read up to ``expect`` bytes; return them and how the connection ended."""
    try:
        conn = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except ConnectionResetError:
        # With a timeout, connect() is a non-blocking connect and a poll: a reset that arrives right after
        # the proxy's accept is reported by connect() itself.
        return b"", "reset"
    with conn as s:
        try:
            s.sendall(data)
        except (ConnectionResetError, BrokenPipeError):  # the reset can beat our send
            return b"", "reset"
        got = b""
        try:
            while len(got) < expect:
                chunk = s.recv(65536)
                if not chunk:
                    return got, "eof"
                got += chunk
        except TimeoutError:
            return got, "timeout"
        except ConnectionResetError:
            return got, "reset"
        return got, "ok"


def test_pass_through(echo: Echo) -> None:
    with FaultProxy(("127.0.0.1", echo.port)) as proxy:
        got, how = talk(proxy.port, b"hello" * 1000, expect=5000)
    assert (got, how) == (b"hello" * 1000, "ok")
    assert proxy.bytes == {"c2s": 5000, "s2c": 5000} and not proxy.triggered.is_set()


def test_delay(echo: Echo) -> None:
    with FaultProxy(("127.0.0.1", echo.port), Fault("delay", "s2c", delay=0.3)) as proxy:
        t0 = time.monotonic()
        got, how = talk(proxy.port, b"abc", expect=3)
        assert time.monotonic() - t0 >= 0.3
    assert (got, how) == (b"abc", "ok") and proxy.triggered.is_set()


def test_drop_black_holes_from_the_offset(echo: Echo) -> None:
    with FaultProxy(("127.0.0.1", echo.port), Fault("drop", "c2s", at=4)) as proxy:
        got, how = talk(proxy.port, b"abcdefgh", expect=8, timeout=0.5)
    assert (got, how) == (b"abcd", "timeout")
    assert proxy.triggered.is_set()


def test_truncate_closes_after_the_offset(echo: Echo) -> None:
    with FaultProxy(("127.0.0.1", echo.port), Fault("truncate", "s2c", at=3)) as proxy:
        got, how = talk(proxy.port, b"abcdefgh", expect=8)
    assert got == b"abc" and how in ("eof", "reset")
    assert proxy.triggered.is_set()


def test_duplicate_sends_the_chunk_twice(echo: Echo) -> None:
    with FaultProxy(("127.0.0.1", echo.port), Fault("duplicate", "c2s")) as proxy:
        got, how = talk(proxy.port, b"ping", expect=8)
    assert (got, how) == (b"pingping", "ok")


def test_corrupt_flips_one_byte(echo: Echo) -> None:
    with FaultProxy(("127.0.0.1", echo.port), Fault("corrupt", "s2c", at=2)) as proxy:
        got, how = talk(proxy.port, b"\x00\x00\x00\x00", expect=4)
    assert (got, how) == (b"\x00\x00\xff\x00", "ok")


def test_reset_sends_rst(echo: Echo) -> None:
    with FaultProxy(("127.0.0.1", echo.port), Fault("reset", "s2c")) as proxy:
        got, how = talk(proxy.port, b"abc", expect=3)
    assert got == b"" and how in ("reset", "eof")
    assert proxy.triggered.is_set()


def test_fault_applies_to_the_first_connections_only(echo: Echo) -> None:
    with FaultProxy(("127.0.0.1", echo.port), Fault("drop", "c2s", connections=1)) as proxy:
        assert talk(proxy.port, b"x", expect=1, timeout=0.3) == (b"", "timeout")
        assert talk(proxy.port, b"y", expect=1) == (b"y", "ok")
    assert proxy.connections == 2


def test_upstream_down_resets_the_client() -> None:
    with SilentServer() as reserve:
        port = reserve.port
    with FaultProxy(("127.0.0.1", port)) as proxy:
        got, how = talk(proxy.port, b"x", expect=1)
    assert got == b"" and how in ("reset", "eof")


def test_silent_server_reads_and_never_answers() -> None:
    with SilentServer() as silent:
        got, how = talk(silent.port, b"hello", expect=1, timeout=0.3)
        deadline = time.monotonic() + 2
        while silent.received < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert silent.received == 5
    assert (got, how) == (b"", "timeout")


@pytest.mark.parametrize("bad", [dict(kind="explode"), dict(direction="up"), dict(at=-1), dict(delay=-0.1)])
def test_fault_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Fault(**bad)  # type: ignore[arg-type]


def test_fault_describe() -> None:
    assert Fault("reset", "s2c").describe() == "reset responder→initiator from byte 0"
    assert Fault("delay", "c2s", delay=0.5, at=10).describe() == "delay 0.5s initiator→responder from byte 10"
