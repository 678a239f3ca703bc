"""Fixtures for the TLS plugin tests: identities, PSK files, a background server, CLI processes.

Everything listens on 127.0.0.1 with port 0 (an ephemeral port chosen by the kernel).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hybridkex import generate_identity, write_identity

from hybridkex_tls import HybridTLSContext, HybridTLSServer, HybridTLSSocket

LOOPBACK = "127.0.0.1"
#: Short handshake timeout for the tests, so stalled peers fail fast.
TIMEOUT = 5.0


@dataclass(frozen=True)
class Keys:
    """Key files shared by the tests (created once per session)."""

    server_key: Path
    server_pub: Path
    client_key: Path
    client_pub: Path
    stranger_pub: Path
    psk: Path
    other_psk: Path
    tls_psk: Path
    other_tls_psk: Path
    server_fingerprint: str
    client_fingerprint: str


def _secret(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    root = tmp_path_factory.mktemp("keys")
    paths, fingerprints = {}, {}
    for name in ("server", "client", "stranger"):
        identity = generate_identity("ml-dsa-65")
        paths[name] = write_identity(identity, root / name)
        fingerprints[name] = identity.fingerprint
    return Keys(
        server_key=paths["server"][0], server_pub=paths["server"][1],
        client_key=paths["client"][0], client_pub=paths["client"][1],
        stranger_pub=paths["stranger"][1],
        psk=_secret(root / "hybrid.psk", os.urandom(32)),
        other_psk=_secret(root / "other.psk", os.urandom(32)),
        tls_psk=_secret(root / "tls.psk", os.urandom(32)),
        other_tls_psk=_secret(root / "other-tls.psk", os.urandom(32)),
        server_fingerprint=fingerprints["server"], client_fingerprint=fingerprints["client"],
    )


@pytest.fixture(scope="session")
def server_ctx(keys: Keys) -> HybridTLSContext:
    return HybridTLSContext.server(identity=keys.server_key, peers=[keys.client_pub], timeout=TIMEOUT)


@pytest.fixture(scope="session")
def client_ctx(keys: Keys) -> HybridTLSContext:
    return HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], timeout=TIMEOUT)


def echo_handler(tls: HybridTLSSocket) -> None:
    """Send back everything until the client half-closes, then half-close too."""
    while True:
        data = tls.recv(1 << 16)
        if not data:
            break
        tls.sendall(data)
    tls.shutdown(socket.SHUT_WR)


@pytest.fixture
def echo() -> Callable[[HybridTLSSocket], None]:
    """The echo handler for servers."""
    return echo_handler


@dataclass
class Running:
    """A background HybridTLSServer and what it observed."""

    server: HybridTLSServer
    errors: list[BaseException] = field(default_factory=list)
    connected: list[HybridTLSSocket] = field(default_factory=list)
    error_event: threading.Event = field(default_factory=threading.Event)

    @property
    def address(self) -> tuple[str, int]:
        return self.server.server_address

    def wait_error(self, timeout: float = TIMEOUT + 5) -> BaseException:
        assert self.error_event.wait(timeout), "the server reported no error"
        return self.errors[0]


@pytest.fixture
def run_server() -> Iterator[Callable[..., Running]]:
    """``run_server(ctx, handler=echo, **kwargs)`` starts a server on 127.0.0.1:0; stopped after the test."""
    stack = contextlib.ExitStack()

    def start(ctx: HybridTLSContext, handler: Callable[[HybridTLSSocket], None] = echo_handler,
              **kwargs: Any) -> Running:
        holder: list[Running] = []

        def on_error(peer: Any, exc: BaseException) -> None:
            holder[0].errors.append(exc)
            holder[0].error_event.set()

        def on_connect(tls: HybridTLSSocket) -> None:
            holder[0].connected.append(tls)

        server = HybridTLSServer(ctx, (LOOPBACK, 0), handler, on_error=on_error, on_connect=on_connect, **kwargs)
        running = Running(server)
        holder.append(running)
        server.start()
        stack.callback(server.shutdown, 2.0)
        return running

    with stack:
        yield start


# -- the command line ------------------------------------------------------------------------------
_LISTENING = re.compile(rb"listening on ([0-9.]+):(\d+)")


class CLI:
    """Runs ``hybridkex`` in a subprocess (the entry point, so the plugin loads as users get it)."""

    argv = [sys.executable, "-c", "from hybridkex.cli import main; main()"]

    def run(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        """Run ``hybridkex ARGS`` to completion (bounded by a timeout)."""
        kwargs.setdefault("timeout", 60)
        return subprocess.run([*self.argv, *args], capture_output=True, check=False, **kwargs)

    def popen(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*self.argv, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

    @contextlib.contextmanager
    def server(self, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
        """``hybridkex tls serve --listen 127.0.0.1:0 ARGS``: yields (process, port); killed afterwards."""
        proc = subprocess.Popen([*self.argv, "tls", "serve", "--listen", f"{LOOPBACK}:0", *args],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            match = _LISTENING.search(line)
            if match is None:
                proc.kill()
                _, err = proc.communicate(timeout=10)
                raise AssertionError(f"server did not start: {(line + err).decode(errors='replace')}")
            yield proc, int(match.group(2))
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)


@pytest.fixture(scope="session")
def cli() -> CLI:
    return CLI()
