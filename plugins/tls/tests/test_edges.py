"""Clear edges: what a plain TLS client, curl, a plain HTTP client, or a hybrid client at the wrong port sees."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hybridkex import HybridKexError, TransportError

from hybridkex_tls import HybridTLSContext, TLSWrongService

from .conftest import LOOPBACK, TIMEOUT


def test_plain_http_client_gets_400_naming_the_protocol(server_ctx: HybridTLSContext,
                                                        run_server: Callable[..., Any]) -> None:
    running = run_server(server_ctx)
    conn = http.client.HTTPConnection(*running.address, timeout=TIMEOUT)
    conn.request("GET", "/")
    response = conn.getresponse()
    assert response.status == 400
    assert b"This port speaks hybridkex-tls" in response.read()
    conn.close()
    assert isinstance(running.wait_error(), TLSWrongService)


def test_plain_tls_client_gets_a_tls_alert(server_ctx: HybridTLSContext, run_server: Callable[..., Any]) -> None:
    running = run_server(server_ctx)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(running.address, timeout=TIMEOUT) as raw:
        with pytest.raises(ssl.SSLError) as info:
            ctx.wrap_socket(raw, server_hostname="localhost")
    assert "ALERT" in str(info.value).upper() and "HANDSHAKE_FAILURE" in str(info.value).upper()


def test_openssl_s_client_reports_a_handshake_failure(require: Callable[[bool, str], None],
                                                      server_ctx: HybridTLSContext,
                                                      run_server: Callable[..., Any]) -> None:
    require(shutil.which("openssl") is not None, "needs the openssl command (Debian package openssl)")
    running = run_server(server_ctx)
    result = subprocess.run(["openssl", "s_client", "-connect", f"{LOOPBACK}:{running.address[1]}", "-tls1_3"],
                            input=b"", capture_output=True, timeout=30, check=False)
    assert result.returncode != 0
    text = (result.stdout + result.stderr).decode(errors="replace")
    assert "alert handshake failure" in text and "reset" not in text.lower()


def test_curl_reports_a_tls_alert_and_curl_http_gets_400(require: Callable[[bool, str], None],
                                                         server_ctx: HybridTLSContext,
                                                         run_server: Callable[..., Any]) -> None:
    require(shutil.which("curl") is not None, "needs the curl command (Debian package curl)")
    running = run_server(server_ctx)
    url = f"{LOOPBACK}:{running.address[1]}/"
    tls = subprocess.run(["curl", "-sS", "-k", "--max-time", "20", f"https://{url}"], capture_output=True,
                         timeout=30, check=False)
    assert tls.returncode == 35, tls  # CURLE_SSL_CONNECT_ERROR: the handshake failed (not 56, a reset)
    assert b"alert" in tls.stderr.lower() or b"handshake failure" in tls.stderr.lower()
    plain = subprocess.run(["curl", "-sS", "--max-time", "20", "-w", "%{http_code}", f"http://{url}"],
                           capture_output=True, timeout=30, check=False)
    assert plain.stdout.endswith(b"400") and b"speaks hybridkex-tls" in plain.stdout


@contextlib.contextmanager
def plain_tls_server(tmp_path: Any) -> Iterator[tuple[str, int]]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    listener = socket.create_server((LOOPBACK, 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn, contextlib.suppress(OSError, ssl.SSLError):
                ctx.wrap_socket(conn, server_side=True)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[:2]
    finally:
        listener.close()
        thread.join(10)


def test_hybrid_client_at_a_plain_tls_server_says_so(client_ctx: HybridTLSContext, tmp_path: Any) -> None:
    with plain_tls_server(tmp_path) as address:
        raw = socket.create_connection(address, timeout=TIMEOUT)
        with pytest.raises(HybridKexError, match="plain TLS") as info:
            client_ctx.wrap_socket(raw)
    # A TLS alert back is certainly plain TLS; a bare reset could also be the network, so that
    # one is a network error whose message names both causes.
    assert isinstance(info.value, TLSWrongService) or (isinstance(info.value, TransportError)
                                                       and "not hybridkex-tls" in str(info.value))
    assert isinstance(info.value, OSError)


def test_hybrid_client_at_a_plain_http_server_says_so(client_ctx: HybridTLSContext) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer((LOOPBACK, 0), Handler)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        raw = socket.create_connection(server.server_address[:2], timeout=TIMEOUT)  # type: ignore[arg-type]
        with pytest.raises(TLSWrongService, match="plain HTTP"):
            client_ctx.wrap_socket(raw)
    finally:
        thread.join(10)
        server.server_close()
