"""Holding its ground: pre-authentication timeout, per-source caps, idle timeout, and EMFILE in the accept loop."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

from hybridkex_tls import HybridTLSContext, HybridTLSSocket, TLSSetupTimeout

from .conftest import LOOPBACK, TIMEOUT


def echo_once(tls: HybridTLSSocket) -> None:
    tls.sendall(tls.recv(100))


def test_pre_auth_timeout_is_shorter_than_the_setup_deadline(keys: Any, run_server: Callable[..., Any]) -> None:
    server = HybridTLSContext.server(identity=keys.server_key, peers=[keys.client_pub], timeout=30,
                                     pre_auth_timeout=0.5)
    running = run_server(server)
    started = time.monotonic()
    with socket.create_connection(running.address) as idle:
        idle.settimeout(10)
        assert idle.recv(100) == b""  # dropped, long before the 30 s setup deadline
    assert time.monotonic() - started < 5
    error = running.wait_error()
    assert isinstance(error, TLSSetupTimeout) and isinstance(error, TimeoutError)
    assert "pre-authentication" in str(error)


def test_idle_connections_from_one_source_do_not_keep_a_client_out(keys: Any, client_ctx: HybridTLSContext,
                                                                   run_server: Callable[..., Any]) -> None:
    """500 silent sockets from 127.0.0.1, then a real client from the same address is served at once."""
    server = HybridTLSContext.server(identity=keys.server_key, peers=[keys.client_pub], timeout=TIMEOUT,
                                     pre_auth_timeout=TIMEOUT)
    running = run_server(server, echo_once, max_pending_per_source=32, max_connections=8)
    idle: list[socket.socket] = []
    try:
        for _ in range(500):
            idle.append(socket.create_connection(running.address, timeout=5))
        for _ in range(100):  # the accept loop catches up (bounded)
            if running.server.connections_evicted >= 400:
                break
            time.sleep(0.05)
        assert running.server.pending_connections <= 32
        started = time.monotonic()
        with socket.create_connection(running.address, timeout=TIMEOUT) as raw, client_ctx.wrap_socket(raw) as tls:
            tls.sendall(b"still here")
            assert tls.recv(100) == b"still here"
        # A generous bound for a loaded machine; the benchmark measures the real figure.
        assert time.monotonic() - started < TIMEOUT
    finally:
        for sock in idle:
            sock.close()


def test_idle_timeout_after_setup(keys: Any, client_ctx: HybridTLSContext, run_server: Callable[..., Any]) -> None:
    server = HybridTLSContext.server(identity=keys.server_key, peers=[keys.client_pub], timeout=TIMEOUT,
                                     idle_timeout=0.5)
    running = run_server(server, echo_once)
    with socket.create_connection(running.address) as raw, client_ctx.wrap_socket(raw) as tls:
        error = running.wait_error()
        assert isinstance(error, TimeoutError)
        assert tls.recv(100) == b""  # the server closed the idle connection


_EMFILE_SERVER = textwrap.dedent("""
    import resource, socket, sys, time
    from hybridkex_tls import HybridTLSContext, HybridTLSServer
    ctx = HybridTLSContext.server(identity=sys.argv[1], peers=[sys.argv[2]], timeout=5, pre_auth_timeout=1.5)
    def echo(tls):
        tls.sendall(tls.recv(100))
    server = HybridTLSServer(ctx, ("127.0.0.1", 0), echo, max_pending=1000, max_pending_per_source=1000)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    server.start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()
    server.shutdown(2)
    print("accepted after EMFILE", server.connections_ok, flush=True)
""")


def test_accept_loop_survives_running_out_of_file_descriptors(keys: Any, client_ctx: HybridTLSContext) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _EMFILE_SERVER, str(keys.server_key), str(keys.client_pub)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    idle: list[socket.socket] = []
    try:
        assert proc.stdout is not None and proc.stdin is not None
        port = int(proc.stdout.readline())
        for _ in range(100):  # more than the server has descriptors for
            idle.append(socket.create_connection((LOOPBACK, port), timeout=5))
        time.sleep(0.5)
        for sock in idle:
            sock.close()
        idle.clear()
        deadline = time.monotonic() + 20
        while True:  # the server drops the idle ones (pre-auth timeout) and accepts again
            try:
                with socket.create_connection((LOOPBACK, port), timeout=TIMEOUT) as raw, \
                        client_ctx.wrap_socket(raw) as tls:
                    tls.sendall(b"after EMFILE")
                    assert tls.recv(100) == b"after EMFILE"
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        out, err = proc.communicate(b"", timeout=20)  # end of stdin: the server stops
        assert proc.returncode == 0, err
        assert b"accepted after EMFILE 1" in out
        assert b"Too many open files" in err  # the loop saw EMFILE, logged it and went on
    finally:
        for sock in idle:
            sock.close()
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=10)
