"""The HTTP glue: http.client, urllib3 and requests clients against an http.server-based server.

Each client takes the lines the plugin README shows; all of them run over one server,
and the later connections resume (no hybrid exchange).
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from hybridkex_tls import HybridTLSContext
from hybridkex_tls.http import HTTPSConnection, HybridAdapter, HybridHTTPServer, HybridPoolManager

from .conftest import LOOPBACK


class Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = f"hello {self.path} resumed={self.connection.session_reused()}".encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def https_server(server_ctx: HybridTLSContext) -> Iterator[int]:
    server = HybridHTTPServer((LOOPBACK, 0), Hello, server_ctx)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_http_client(client_ctx: HybridTLSContext, https_server: int) -> None:
    for _ in range(2):
        conn = HTTPSConnection(LOOPBACK, https_server, context=client_ctx, timeout=10)
        conn.request("GET", "/a")
        response = conn.getresponse()
        assert response.status == 200 and response.read().startswith(b"hello /a")
        conn.close()


def test_urllib3(client_ctx: HybridTLSContext, https_server: int) -> None:
    pytest.importorskip("urllib3")
    pool = HybridPoolManager(client_ctx)
    bodies = [pool.request("GET", f"https://{LOOPBACK}:{https_server}/b").data for _ in range(3)]
    assert all(b.startswith(b"hello /b") for b in bodies)
    pool.clear()
    assert pool.request("GET", f"https://{LOOPBACK}:{https_server}/c").data == b"hello /c resumed=True"


def test_requests(client_ctx: HybridTLSContext, https_server: int) -> None:
    requests = pytest.importorskip("requests")
    session = requests.Session()
    session.mount("https://", HybridAdapter(client_ctx))
    response = session.get(f"https://{LOOPBACK}:{https_server}/d", timeout=10)
    assert response.status_code == 200 and response.text.startswith("hello /d")
    session.close()


def test_requests_connection_errors_are_request_exceptions(keys: Any) -> None:
    requests = pytest.importorskip("requests")
    import socket

    client = HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], timeout=0.5)
    with socket.create_server((LOOPBACK, 0)) as silent:
        session = requests.Session()
        session.mount("https://", HybridAdapter(client))
        with pytest.raises(requests.RequestException):
            session.get(f"https://{LOOPBACK}:{silent.getsockname()[1]}/", timeout=5)
