"""QKD in the loop: the simulated BB84 link (``--qkd sim``) feeds the hybrid exchange that keys TLS."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hybridkex_tls import HybridTLSContext, HybridTLSSocket

pytest.importorskip("hybridkex_sim._simlink", reason="the simulated QKD link is not in this checkout")


@pytest.fixture
def link(cli: Any, tmp_path: Path) -> Path:
    path = tmp_path / "link.json"
    result = cli.run("qkd-link", "init", str(path))
    assert result.returncode == 0, result.stderr
    return path


def test_qkd_key_ids_reach_both_sides(keys: Any, link: Path, run_server: Callable[..., Any]) -> None:
    seen: dict[str, tuple[str, ...]] = {}

    def handler(tls: HybridTLSSocket) -> None:
        seen["server"] = tls.qkd_key_ids()
        tls.sendall(tls.recv(100))

    server = HybridTLSContext.server(identity=keys.server_key, peers=[keys.client_pub], qkd="sim", qkd_link=link,
                                     timeout=20)
    client = HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], qkd="sim",
                                     qkd_link=str(link), qkd_policy="required", timeout=20)
    running = run_server(server, handler)
    with socket.create_connection(running.address) as raw, client.wrap_socket(raw) as tls:
        tls.sendall(b"qkd")
        assert tls.recv(100) == b"qkd"
        ids = tls.qkd_key_ids()
        assert tls.info()["qkd"] == "used"
        assert tls.group() == "X25519MLKEM768" and tls.psk_used()
    assert len(ids) == 1 and uuid.UUID(ids[0])
    assert seen["server"] == ids


def test_cli_with_qkd_sim(cli: Any, keys: Any, link: Path) -> None:
    qkd = ["--qkd", "sim", "--qkd-link", str(link), "--timeout", "20"]
    with cli.server("--identity", str(keys.server_key), "--peer", str(keys.client_pub), *qkd, "--echo", "--json",
                    "--count", "1") as (server, port):
        result = cli.run("tls", "connect", f"127.0.0.1:{port}", "--identity", str(keys.client_key), "--peer",
                         str(keys.server_pub), *qkd, "--json", input=b"through QKD")
        out, err = server.communicate(timeout=30)
    assert result.returncode == 0, result.stderr
    first, _, rest = result.stdout.partition(b"\n")
    info = json.loads(first)
    assert rest == b"through QKD"
    assert info["qkd"] == "used" and len(info["qkd_key_ids"]) == 1
    assert info["group"] == "X25519MLKEM768" and info["external_psk"] is True
    assert json.loads(out.splitlines()[0])["qkd_key_ids"] == info["qkd_key_ids"]
    assert f"QKD key_ID {info['qkd_key_ids'][0]}".encode() in result.stderr


def test_qkd_required_on_one_side_only_fails_clearly(cli: Any, keys: Any, link: Path,
                                                     run_server: Callable[..., Any]) -> None:
    from hybridkex import QKDPolicyError, RemoteProtocolError

    server = HybridTLSContext.server(identity=keys.server_key, peers=[keys.client_pub], timeout=10)
    client = HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], qkd="sim", qkd_link=link,
                                     timeout=10)
    running = run_server(server)
    raw = socket.create_connection(running.address)
    with pytest.raises((QKDPolicyError, RemoteProtocolError)) as info:
        client.wrap_socket(raw)
    assert "QKD" in str(info.value)
    assert raw.fileno() == -1
    assert "QKD" in str(running.wait_error())
