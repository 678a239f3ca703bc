"""Static external-PSK mode against the system ``openssl`` binary, in both directions.

``openssl s_client/s_server -tls1_3 -psk HEX -psk_identity ID`` use the same TLS 1.3
external PSK mechanism (a SHA-256 suite, psk_dhe_ke); the group is negotiated (the
system openssl may predate X25519MLKEM768, so X25519 is what both ends share then).
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any

import pytest

IDENTITY = "hybridkex-interop"


@pytest.fixture
def openssl(require: Callable[[bool, str], None]) -> str:
    path = shutil.which("openssl")
    require(path is not None, "the openssl command line tool is not installed (apt install openssl)")
    assert path is not None
    return path


def lines_of(stream: IO[bytes]) -> queue.Queue[bytes]:
    """Read ``stream`` line by line in a thread, so the test can wait with a timeout."""
    lines: queue.Queue[bytes] = queue.Queue()

    def pump() -> None:
        for line in iter(stream.readline, b""):
            lines.put(line)
        lines.put(b"")

    threading.Thread(target=pump, daemon=True).start()
    return lines


def wait_for(lines: queue.Queue[bytes], pattern: bytes, timeout: float = 20) -> bytes:
    seen = []
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line matching {pattern!r} in {b''.join(seen)!r}") from None
        if not line:
            raise AssertionError(f"stream ended without {pattern!r}: {b''.join(seen)!r}")
        seen.append(line)
        if re.search(pattern, line):
            return line


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@pytest.fixture
def s_server(openssl: str) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], int]]]:
    """``openssl s_server -tls1_3 -nocert -psk HEX -rev -naccept 1`` on 127.0.0.1:0."""
    started: list[subprocess.Popen[bytes]] = []

    def start(key: bytes, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
        proc = subprocess.Popen([openssl, "s_server", "-tls1_3", "-nocert", "-psk", key.hex(), "-psk_identity",
                                 IDENTITY, "-accept", "127.0.0.1:0", "-naccept", "1", "-rev", *extra],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        started.append(proc)
        assert proc.stdout is not None
        line = wait_for(lines_of(proc.stdout), rb"ACCEPT")
        match = re.search(rb":(\d+)\s*$", line)
        assert match is not None, line
        return proc, int(match.group(1))

    yield start
    for proc in started:
        stop(proc)


def test_connect_to_openssl_s_server(cli: Any, keys: Any, s_server: Callable[..., Any]) -> None:
    _, port = s_server(keys.tls_psk.read_bytes())
    result = cli.run("tls", "connect", f"127.0.0.1:{port}", "--external-psk", str(keys.tls_psk), "--psk-identity",
                     IDENTITY, "--json", input=b"hello from hybridkex\n", timeout=30)
    assert result.returncode == 0, result.stderr
    first, _, rest = result.stdout.partition(b"\n")
    info = json.loads(first)
    assert info["tls_version"] == "TLSv1.3" and info["external_psk"] is True and info["mode"] == "static-psk"
    assert info["cipher"] in ("TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256")
    assert b"xekdirbyh morf olleh" in rest  # -rev sends every line back reversed


def test_connect_with_the_wrong_psk_to_openssl(cli: Any, keys: Any, s_server: Callable[..., Any]) -> None:
    _, port = s_server(keys.other_tls_psk.read_bytes())
    result = cli.run("tls", "connect", f"127.0.0.1:{port}", "--external-psk", str(keys.tls_psk), "--psk-identity",
                     IDENTITY, input=b"", timeout=30)
    assert result.returncode == 3
    assert b"PSK" in result.stderr and len(result.stderr.splitlines()) == 1


def test_openssl_s_client_to_serve(cli: Any, keys: Any, openssl: str) -> None:
    with cli.server("--external-psk", str(keys.tls_psk), "--psk-identity", IDENTITY, "--echo",
                    "--count", "1") as (server, port):
        client = subprocess.Popen([openssl, "s_client", "-tls1_3", "-psk", keys.tls_psk.read_bytes().hex(),
                                   "-psk_identity", IDENTITY, "-connect", f"127.0.0.1:{port}", "-quiet"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert client.stdin is not None and client.stdout is not None
            client.stdin.write(b"ping from openssl\n")
            client.stdin.flush()
            assert wait_for(lines_of(client.stdout), rb"ping from openssl") == b"ping from openssl\n"
        finally:
            stop(client)
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert re.search(rb"TLSv1\.3 TLS_\w+_SHA256 over \w+, external PSK \(static\)", err), err


def test_openssl_s_client_with_the_wrong_psk(cli: Any, keys: Any, openssl: str) -> None:
    with cli.server("--external-psk", str(keys.tls_psk), "--psk-identity", IDENTITY,
                    "--count", "1") as (server, port):
        client = subprocess.run([openssl, "s_client", "-tls1_3", "-psk", keys.other_tls_psk.read_bytes().hex(),
                                 "-psk_identity", IDENTITY, "-connect", f"127.0.0.1:{port}"],
                                input=b"", capture_output=True, timeout=30, check=False)
        _, err = server.communicate(timeout=30)
    assert client.returncode != 0
    assert b"alert decrypt error" in client.stdout + client.stderr
    assert b"error: TLS handshake failed: the two sides hold different TLS PSKs" in err
