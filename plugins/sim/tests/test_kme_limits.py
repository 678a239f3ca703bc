"""The KME simulator under abuse: idle-connection floods, methods it does not serve, malformed
requests.  Every answer is ``application/json`` with an ETSI GS QKD 014 §6.5 Error body, and the
number of threads stays bounded whatever the number of connections.  Loopback only."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hybridkex_sim import KMEConfig, KMEPair, TestPKI, create_test_pki

SAE_A, SAE_B = "sae-a", "sae-b"
KEYS = "/api/v1/keys"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    made, _ = create_test_pki(tmp_path_factory.mktemp("pki"), [SAE_A, SAE_B])
    return made


@pytest.fixture()
def pair(pki: TestPKI) -> Iterator[KMEPair]:
    with KMEPair.start(pki, sae_a=SAE_A, sae_b=SAE_B, seed=b"l" * 32) as p:
        yield p


def _addr(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


def _tls(pki: TestPKI, url: str, sae: str = SAE_A, timeout: float = 5.0) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(pki.sae_cert(sae), pki.sae_key(sae))
    host, port = _addr(url)
    return ctx.wrap_socket(socket.create_connection((host, port), timeout=timeout), server_hostname=host)


def _answer(sock: socket.socket, method: str = "GET") -> tuple[int, http.client.HTTPResponse, bytes]:
    resp = http.client.HTTPResponse(sock, method=method)
    resp.begin()
    return resp.status, resp, resp.read()


def raw(pki: TestPKI, url: str, data: bytes, method: str = "GET") -> tuple[int, http.client.HTTPResponse, bytes]:
    """Send ``data`` as is over mutual TLS (SAE A) and read one answer."""
    with _tls(pki, url) as sock:
        sock.sendall(data)
        return _answer(sock, method)


def assert_error_body(resp: http.client.HTTPResponse, body: bytes, *, head: bool = False) -> dict[str, Any]:
    """ETSI GS QKD 014 §6.5 Error: a JSON object with a message and a list of details."""
    assert resp.getheader("Content-Type") == "application/json", resp.getheaders()
    if head:
        assert body == b"" and int(resp.getheader("Content-Length", "-1")) > 0
        return {}
    obj = json.loads(body)
    assert isinstance(obj, dict) and isinstance(obj.get("message"), str) and obj["message"], obj
    assert isinstance(obj.get("details"), list), obj
    assert all(isinstance(d, dict) for d in obj["details"]), obj
    assert int(resp.getheader("Content-Length", "-1")) == len(body)
    return obj


def _request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body and "Content-Length" not in (headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _wait_for(what: str, condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# -- methods the KME does not serve ----------------------------------------------------------------

@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
@pytest.mark.parametrize("op, allow", [("enc_keys", "GET, POST"), ("dec_keys", "GET, POST"), ("status", "GET")])
def test_other_methods_are_405_with_allow(pair: KMEPair, pki: TestPKI, method: str, op: str, allow: str) -> None:
    status, resp, body = raw(pki, pair.url_a, _request(method, f"{KEYS}/{SAE_B}/{op}", b"{}"))
    assert status == 405
    assert resp.getheader("Allow") == allow
    assert method in assert_error_body(resp, body)["message"]


def test_post_to_status_is_405_with_allow_get(pair: KMEPair, pki: TestPKI) -> None:
    status, resp, body = raw(pki, pair.url_a, _request("POST", f"{KEYS}/{SAE_B}/status", b"{}"))
    assert (status, resp.getheader("Allow")) == (405, "GET")
    assert_error_body(resp, body)


def test_head_is_405_without_a_body(pair: KMEPair, pki: TestPKI) -> None:
    with _tls(pki, pair.url_a) as sock:
        sock.sendall(_request("HEAD", f"{KEYS}/{SAE_B}/status"))
        status, resp, body = _answer(sock, "HEAD")
        assert (status, resp.getheader("Allow")) == (405, "GET")
        assert_error_body(resp, body, head=True)
        # no body went out: the connection is still in step for the next request
        sock.sendall(_request("GET", f"{KEYS}/{SAE_B}/status"))
        assert _answer(sock)[0] == 200


@pytest.mark.parametrize("method", ["FOO", "BREW", "get"])
def test_unknown_method_is_501(pair: KMEPair, pki: TestPKI, method: str) -> None:
    status, resp, body = raw(pki, pair.url_a, _request(method, f"{KEYS}/{SAE_B}/status"))
    assert status == 501
    assert_error_body(resp, body)


# -- malformed requests ------------------------------------------------------------------------------

@pytest.mark.parametrize("data, code", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET\r\n\r\n", 400),
    (b"GET /api/v1/keys/sae-b/status\r\n\r\n", 400),           # HTTP/0.9 is not served
    (b"GET /api/v1/keys/sae-b/status HTTP/1.1 x\r\n\r\n", 400),
    (b"GET /api/v1/keys/sae-b/status HTTP/9.9\r\n\r\n", 505),
    (b"GET /api/v1/keys/sae-b/status FTP/1.1\r\n\r\n", 400),
    (b"GET /api/v1/keys/sae-b/status HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    (b"GET /api/v1/keys/sae-b/status HTTP/1.1\r\n" + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
    (b"GET /api/v1/keys/sae-b/status HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n", 431),
    (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET /api/v2/keys/sae-b/status HTTP/1.1\r\n\r\n", 404),
    (b"GET / HTTP/1.1\r\n\r\n", 404),
    (b"\xff\xfe\r\n\r\n", 400),
])
def test_malformed_requests_get_json_errors(pair: KMEPair, pki: TestPKI, data: bytes, code: int) -> None:
    status, resp, body = raw(pki, pair.url_a, data)
    assert status == code, body
    assert_error_body(resp, body)
    if code != 404:
        assert resp.getheader("Connection") == "close"  # the stream cannot be trusted any more


@pytest.mark.parametrize("headers, body, code", [
    ({"Content-Type": "application/json"}, b"{not json", 400),
    ({"Content-Type": "application/json"}, b"[1]", 400),
    ({"Content-Type": "text/plain"}, b'{"number": 1}', 415),
    ({"Content-Type": "application/x-www-form-urlencoded"}, b"number=1", 415),
    ({"Content-Type": "application/json", "Content-Length": "abc"}, b"", 400),
    ({"Content-Type": "application/json", "Content-Length": "-1"}, b"", 400),
    ({"Content-Type": "application/json", "Content-Length": "1000000000"}, b"", 413),
    ({"Content-Type": "application/json", "Transfer-Encoding": "chunked"}, b"2\r\n{}\r\n0\r\n\r\n", 411),
])
def test_bad_bodies_get_json_errors(pair: KMEPair, pki: TestPKI, headers: dict[str, str], body: bytes,
                                    code: int) -> None:
    status, resp, got = raw(pki, pair.url_a, _request("POST", f"{KEYS}/{SAE_B}/enc_keys", body, headers))
    assert status == code, got
    assert_error_body(resp, got)


def test_json_with_charset_is_accepted(pair: KMEPair, pki: TestPKI) -> None:
    status, _, body = raw(pki, pair.url_a, _request("POST", f"{KEYS}/{SAE_B}/enc_keys", b'{"number": 1}',
                                                      {"Content-Type": "application/json; charset=utf-8"}))
    assert status == 200 and len(json.loads(body)["keys"]) == 1


def test_duplicate_content_lengths_are_400(pair: KMEPair, pki: TestPKI) -> None:
    data = (f"POST {KEYS}/{SAE_B}/enc_keys HTTP/1.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{{}} ").encode()
    status, resp, body = raw(pki, pair.url_a, data)
    assert status == 400
    assert_error_body(resp, body)


def test_a_body_that_never_comes_is_408(pki: TestPKI) -> None:
    config = KMEConfig(request_timeout=0.5)
    with KMEPair.start(pki, sae_a=SAE_A, sae_b=SAE_B, config=config) as pair, _tls(pki, pair.url_a) as sock:
        sock.sendall(_request("POST", f"{KEYS}/{SAE_B}/enc_keys", b"",
                              {"Content-Type": "application/json", "Content-Length": "20"}) + b'{"num')
        t0 = time.monotonic()
        status, resp, body = _answer(sock)
        assert status == 408 and time.monotonic() - t0 < 5
        assert_error_body(resp, body)


def test_expect_100_continue_is_answered(pair: KMEPair, pki: TestPKI) -> None:
    body = b'{"number": 2}'
    with _tls(pki, pair.url_a) as sock:
        sock.sendall(_request("POST", f"{KEYS}/{SAE_B}/enc_keys", b"",
                              {"Content-Type": "application/json", "Content-Length": str(len(body)),
                               "Expect": "100-continue"}))
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        status, _, got = _answer(sock)
        assert status == 200 and len(json.loads(got)["keys"]) == 2


def test_errors_keep_the_connection_when_the_stream_is_sound(pair: KMEPair, pki: TestPKI) -> None:
    with _tls(pki, pair.url_a) as sock:
        for request, code in ((_request("PUT", f"{KEYS}/{SAE_B}/enc_keys", b"{}"), 405),
                              (_request("GET", f"{KEYS}/nope"), 404),
                              (_request("GET", f"{KEYS}/{SAE_B}/status"), 200)):
            sock.sendall(request)
            assert _answer(sock)[0] == code


def test_plain_http_errors_are_json_too(pki: TestPKI) -> None:
    with KMEPair.start(pki, sae_a=SAE_A, sae_b=SAE_B, tls=False) as pair:
        with socket.create_connection(_addr(pair.url_a), timeout=5) as sock:
            sock.sendall(b"FOO / HTTP/1.1\r\n\r\n")
            status, resp, body = _answer(sock)
        assert status == 501
        assert_error_body(resp, body)


# -- bounded pool, bounded connections ----------------------------------------------------------------

def _threads() -> int:
    return threading.active_count()


def test_idle_flood_keeps_threads_bounded_and_a_client_served(pki: TestPKI) -> None:
    """1 000 idle TCP connections and 20 idle TLS ones: threads stay within the pool, a real client
    still gets keys quickly, and everything is given back when the flood goes away."""
    config = KMEConfig(max_connections=128, workers=4)
    before = _threads()
    with KMEPair.start(pki, sae_a=SAE_A, sae_b=SAE_B, config=config) as pair:
        started = _threads()
        assert started - before <= 2 * (config.workers + 1) + 1  # per KME: the workers and one I/O thread
        held: list[socket.socket] = []
        try:
            deadline = time.monotonic() + 15
            for i in range(1000):
                if time.monotonic() > deadline:
                    break
                url = pair.url_a if i % 2 else pair.url_b
                try:
                    held.append(socket.create_connection(_addr(url), timeout=2))
                except OSError:
                    pass  # the backlog is full for a moment: the test is about what the KME does
            for _ in range(20):
                held.append(_tls(pki, pair.url_a))
            assert len(held) >= 900
            assert _threads() <= started, "a connection must not cost a thread"
            assert pair.a.connections_open <= config.max_connections
            t0 = time.monotonic()
            with pair.client(SAE_A, timeout=5, retries=0) as alice, pair.client(SAE_B, timeout=5) as bob:
                key = alice.get_new_keys(1)[0]
                assert bob.get_keys_by_id([key.key_id]) == [key]
            assert time.monotonic() - t0 < 3
            assert _threads() <= started
        finally:
            for sock in held:
                sock.close()
        _wait_for("idle connections to be closed", lambda: pair.a.connections_open + pair.b.connections_open == 0)
    _wait_for("the pool threads to end", lambda: _threads() <= before)


def test_idle_connections_are_dropped_after_the_handshake_timeout(pki: TestPKI) -> None:
    config = KMEConfig(handshake_timeout=0.3, idle_timeout=0.3)
    with KMEPair.start(pki, sae_a=SAE_A, sae_b=SAE_B, config=config) as pair:
        with socket.create_connection(_addr(pair.url_a), timeout=5) as silent, _tls(pki, pair.url_a) as kept:
            kept.sendall(_request("GET", f"{KEYS}/{SAE_B}/status"))
            assert _answer(kept)[0] == 200
            t0 = time.monotonic()
            assert silent.recv(1) == b""  # closed by the KME, not by us
            assert kept.recv(1) == b""    # the kept-alive connection too, after idle_timeout
            assert time.monotonic() - t0 < 3
        _wait_for("no open connections", lambda: pair.a.connections_open == 0)


def test_keep_alive_is_bounded_in_requests(pki: TestPKI) -> None:
    config = KMEConfig(max_requests_per_connection=3)
    with KMEPair.start(pki, sae_a=SAE_A, sae_b=SAE_B, config=config) as pair, _tls(pki, pair.url_a) as sock:
        for i in range(3):
            sock.sendall(_request("GET", f"{KEYS}/{SAE_B}/status"))
            status, resp, _ = _answer(sock)
            assert status == 200
            assert (resp.getheader("Connection") == "close") == (i == 2)
        assert sock.recv(1) == b""


def test_over_max_connections_the_longest_idle_one_makes_room(pki: TestPKI) -> None:
    config = KMEConfig(max_connections=4)
    with KMEPair.start(pki, sae_a=SAE_A, sae_b=SAE_B, config=config) as pair:
        idle = [socket.create_connection(_addr(pair.url_a), timeout=5) for _ in range(4)]
        try:
            _wait_for("four open connections", lambda: pair.a.connections_open == 4)
            with pair.client(SAE_A, timeout=5, retries=0) as alice:
                assert alice.status().max_key_count == 1024
            assert idle[0].recv(1) == b""  # the oldest idle connection gave way
            assert pair.a.connections_open <= 4
        finally:
            for sock in idle:
                sock.close()


def test_full_queue_is_503_with_retry_after(pki: TestPKI) -> None:
    config = KMEConfig(workers=1, queue_size=1)
    with KMEPair.start(pki, sae_a=SAE_A, sae_b=SAE_B, config=config) as pair:
        pair.a.faults.delay = 1.0
        socks = [_tls(pki, pair.url_a) for _ in range(3)]
        try:
            socks[0].sendall(_request("GET", f"{KEYS}/{SAE_B}/status"))
            _wait_for("the worker to be busy", lambda: pair.a.requests_in_progress == 1)
            socks[1].sendall(_request("GET", f"{KEYS}/{SAE_B}/status"))
            _wait_for("a queued request", lambda: pair.a.requests_waiting == 1)
            socks[2].sendall(_request("GET", f"{KEYS}/{SAE_B}/status"))
            status, resp, body = _answer(socks[2])
            assert status == 503 and resp.getheader("Retry-After") == "1"
            assert "busy" in assert_error_body(resp, body)["message"]
            pair.a.faults.delay = 0.0
            assert _answer(socks[0])[0] == 200 and _answer(socks[1])[0] == 200
        finally:
            for sock in socks:
                sock.close()


@pytest.mark.parametrize("field, value", [("workers", 0), ("max_connections", 0), ("queue_size", -1),
                                          ("handshake_timeout", 0.0), ("idle_timeout", -1.0),
                                          ("request_timeout", float("nan")), ("max_requests_per_connection", 0)])
def test_bad_limits_are_config_errors(field: str, value: object) -> None:
    from hybridkex import ConfigError

    with pytest.raises(ConfigError, match=field):
        KMEConfig(**{field: value})


def test_cli_serve_takes_the_limits(pki: TestPKI) -> None:
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", "from hybridkex.cli import main; main()", "kme", "serve", "--pki", str(pki.directory),
         "--sae-a", SAE_A, "--sae-b", SAE_B, "--max-connections", "2", "--workers", "1", "--queue-size", "0",
         "--idle-timeout", "0.3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[3]
        with _tls(pki, url) as sock:
            sock.sendall(_request("GET", f"{KEYS}/{SAE_B}/status"))
            assert _answer(sock)[0] == 200
            t0 = time.monotonic()
            assert sock.recv(1) == b"" and time.monotonic() - t0 < 3  # --idle-timeout
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
