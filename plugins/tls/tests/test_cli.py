"""``hybridkex tls serve`` / ``hybridkex tls connect`` as users run them (subprocesses, loopback only)."""

from __future__ import annotations

import json
from typing import Any

import pytest


def hybrid_server_args(keys: Any) -> list[str]:
    return ["--identity", str(keys.server_key), "--peer", str(keys.client_pub), "--timeout", "10"]


def hybrid_client_args(keys: Any) -> list[str]:
    return ["--identity", str(keys.client_key), "--peer", str(keys.server_pub), "--timeout", "10"]


def test_plugin_is_registered(cli: Any) -> None:
    result = cli.run("tls", "--help")
    assert result.returncode == 0, result.stderr
    assert b"serve" in result.stdout and b"connect" in result.stdout
    assert b"warning" not in result.stderr


def test_serve_echo_and_connect_json(cli: Any, keys: Any) -> None:
    with cli.server(*hybrid_server_args(keys), "--echo", "--json", "--count", "1") as (server, port):
        result = cli.run("tls", "connect", f"127.0.0.1:{port}", *hybrid_client_args(keys), "--json",
                         input=b"hello over hybrid TLS\n" * 1000)
        assert result.returncode == 0, result.stderr
        first, _, rest = result.stdout.partition(b"\n")
        info = json.loads(first)
        assert rest == b"hello over hybrid TLS\n" * 1000
        assert info["ok"] is True
        assert info["tls_version"] == "TLSv1.3"
        assert info["cipher"] in ("TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256")
        assert info["group"] == "X25519MLKEM768"
        assert info["external_psk"] is True
        assert info["hybrid_suite"] == "x25519+ml-kem-768/hkdf-sha256"
        assert info["qkd_key_ids"] == [] and info["qkd"] == "off"
        assert info["peer"] == keys.server_fingerprint
        assert b"X25519MLKEM768" in result.stderr
        out, err = server.communicate(timeout=30)  # --count 1: exits after the connection
    assert server.returncode == 0, err
    server_info = json.loads(out.splitlines()[0])
    assert server_info["peer"] == keys.client_fingerprint
    assert server_info["transcript_hash"] == info["transcript_hash"]


def test_serve_prints_what_clients_send(cli: Any, keys: Any) -> None:
    with cli.server(*hybrid_server_args(keys), "--count", "1") as (server, port):
        result = cli.run("tls", "connect", f"127.0.0.1:{port}", *hybrid_client_args(keys), input=b"to stdout")
        assert result.returncode == 0, result.stderr
        assert result.stdout == b""
        out, _ = server.communicate(timeout=30)
    assert out == b"to stdout"


def test_wrong_pin_is_one_line_and_exit_code_5(cli: Any, keys: Any) -> None:
    with cli.server(*hybrid_server_args(keys), "--echo", "--count", "1") as (server, port):
        result = cli.run("tls", "connect", f"127.0.0.1:{port}", "--identity", str(keys.client_key),
                         "--peer", str(keys.stranger_pub), input=b"")
        _, server_err = server.communicate(timeout=30)
    # v2: the server drops an InitHello keyed for another responder without a word; the client cannot tell
    # that from a network failure (exit 5) and says what to check.
    assert result.returncode == 5
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hybridkex: error: ") and "peers" in lines[0]
    assert b"mac1" in server_err


def test_json_error_line(cli: Any, keys: Any) -> None:
    with cli.server("--external-psk", str(keys.tls_psk), "--count", "1") as (server, port):
        result = cli.run("tls", "connect", f"127.0.0.1:{port}", "--external-psk", str(keys.other_tls_psk),
                         "--json", input=b"")
        server.communicate(timeout=30)
    assert result.returncode == 3
    error = json.loads(result.stdout)
    assert error["ok"] is False and error["error"] == "TLSPSKError" and "PSK" in error["message"]


@pytest.mark.parametrize(("args", "code", "needle"), [
    (["--identity", "X", "--external-psk", "Y"], 2, "static key"),
    (["--external-psk", "/nonexistent/psk"], 2, "does not exist"),
    (["--groups", "X25519", "--psk-file", "Z"], 2, "--groups only applies"),
    ([], 2, "no authentication configured"),
])
def test_configuration_errors(cli: Any, args: list[str], code: int, needle: str) -> None:
    result = cli.run("tls", "connect", "127.0.0.1:9", *args, input=b"")
    assert result.returncode == code, result.stderr
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and needle in lines[0]


def test_group_readable_psk_file_is_refused(cli: Any, tmp_path: Any) -> None:
    psk = tmp_path / "psk"
    psk.write_bytes(b"k" * 32)
    psk.chmod(0o644)
    result = cli.run("tls", "connect", "127.0.0.1:9", "--external-psk", str(psk), input=b"")
    assert result.returncode == 2 and b"chmod 600" in result.stderr


def test_connection_refused_exit_code_5(cli: Any, keys: Any) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        result = cli.run("tls", "connect", f"127.0.0.1:{port}", *hybrid_client_args(keys), input=b"")
    assert result.returncode == 5
    assert b"is the server running?" in result.stderr


def test_bad_address(cli: Any, keys: Any) -> None:
    result = cli.run("tls", "serve", "--listen", "localhost", *hybrid_server_args(keys))
    assert result.returncode == 2 and b"HOST:PORT" in result.stderr


def test_psk_ratchet_on_the_command_line(cli: Any, keys: Any, tmp_path: Any) -> None:
    from hybridkex._ratchet import AuthRatchet

    server_state, client_state = tmp_path / "server.ratchet", tmp_path / "client.ratchet"
    auth = ["--psk-file", str(keys.psk), "--timeout", "10"]
    for state in (server_state, client_state):
        made = cli.run("psk", "ratchet-init", str(state), "--psk-file", str(keys.psk))
        assert made.returncode == 0, made.stderr
    with cli.server(*auth, "--psk-ratchet", str(server_state), "--name", "server", "--peer-name", "client",
                    "--echo", "--count", "2") as (server, port):
        peers = []
        for _ in range(2):
            result = cli.run("tls", "connect", f"127.0.0.1:{port}", *auth, "--psk-ratchet", str(client_state),
                             "--name", "client", "--peer-name", "server", "--json", input=b"x")
            assert result.returncode == 0, result.stderr
            peers.append(json.loads(result.stdout.splitlines()[0])["peer"])
        server.communicate(timeout=30)
    assert server.returncode == 0
    assert peers == ["psk:server", "psk:server"]  # v2 names the peer; the ratchet's key changes underneath
    client = AuthRatchet(client_state, name="client", peer_name="server").load()
    assert client.epoch == 2 == AuthRatchet(server_state, name="server", peer_name="client").load().epoch
    assert client.current.key != keys.psk.read_bytes()
