"""Benchmark: CPU time of a full connection setup, hybrid TLS beside the best PQ TLS without QKD.

Run with ``python benchmarks/bench_tls.py`` (``--help`` for options).  Both sides run in
this process over loopback TCP: a server thread and the client in the main thread.  One
*connection* is: TCP connect, handshake(s), one byte each way, close.  CPU time is
``time.process_time()`` (user + system time of all threads) divided by the connection
count; variants are measured in interleaved rounds, so a machine that is busy with other
work affects all variants alike.  The median over rounds is the headline figure; the best
round (least disturbed by other work) is reported beside it.

Variants:

``hybrid_qkd`` (the figure that matters)
    hybridkex exchange authenticated by ML-DSA-65 on both sides, QKD policy ``required``,
    ML-KEM-768 + X25519, then TLS 1.3 psk_dhe_ke over X25519MLKEM768 keyed by the RFC 9258
    imported PSK.  QKD keys come from an in-memory key store standing in for the two
    sites' KMEs (a real KME is a separate device; its cost is not this process's).
``baseline_mtls``
    pyOpenSSL TLS 1.3, mutual authentication with ML-DSA-65 certificates (CA + leaf on
    each side, both chains verified), X25519MLKEM768: the best post-quantum TLS
    deployable today without QKD.  No session resumption.
``hybrid_no_qkd``, ``hybrid_psk_auth`` (informational)
    the hybrid mode without QKD, and with PSK authentication instead of ML-DSA.

The last line printed is one JSON object with the timings and their ratio.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mldsa
from cryptography.x509.oid import NameOID
from hybridkex_tls._context import HybridTLSContext
from hybridkex_tls._importer import HYBRID_GROUPS
from hybridkex_tls._openssl import OPENSSL_VERSION, PYOPENSSL_VERSION, SSL, negotiated_group, session_reused, set_groups

from hybridkex import QKDKey, QKDKeySource, QKDUnavailable, generate_identity, write_identity

__all__ = ["main", "run", "plain_context", "plain_sides"]

ServerSide = Callable[[socket.socket], None]
ClientSide = Callable[[tuple[str, int]], object]


class _MemoryKME:
    """Two QKD key sources sharing one key store: master SAE makes keys, slave SAE takes each once."""

    def __init__(self) -> None:
        self._keys: dict[uuid.UUID, bytes] = {}
        self._lock = threading.Lock()
        self.master = _MemorySAE(self, "master")
        self.slave = _MemorySAE(self, "slave")

    def new_keys(self, number: int, size_bits: int) -> list[QKDKey]:
        keys = [QKDKey(uuid.uuid4(), os.urandom(size_bits // 8)) for _ in range(number)]
        with self._lock:
            self._keys.update((k.key_id, k.key) for k in keys)
        return keys

    def take(self, key_ids: Sequence[uuid.UUID]) -> list[QKDKey]:
        with self._lock:
            try:
                return [QKDKey(i, self._keys.pop(i)) for i in key_ids]
            except KeyError:
                raise QKDUnavailable("unknown or already used key_ID") from None


class _MemorySAE(QKDKeySource):
    kind = "memory"

    def __init__(self, kme: _MemoryKME, role: str) -> None:
        self._kme = kme
        self._role = role

    def get_new_keys(self, number: int = 1, size_bits: int = 256) -> list[QKDKey]:
        return self._kme.new_keys(number, size_bits)

    def get_keys_by_id(self, key_ids: Sequence[uuid.UUID]) -> list[QKDKey]:
        return self._kme.take(key_ids)


# -- the connections measured ------------------------------------------------------------------------
def _hybrid(server: HybridTLSContext, client: HybridTLSContext) -> tuple[ServerSide, ClientSide]:
    def server_side(raw: socket.socket) -> None:
        with server.wrap_socket(raw) as tls:
            tls.recv(1)
            tls.sendall(b"s")

    def client_side(address: tuple[str, int]) -> None:
        raw = socket.create_connection(address)
        with client.wrap_socket(raw) as tls:
            tls.sendall(b"c")
            tls.recv(1)

    return server_side, client_side


def _write_pki(directory: Path) -> None:
    """ML-DSA-65 CA, and a server and a client leaf certificate signed by it (PEM files)."""
    now = datetime.datetime.now(datetime.UTC)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def build(subject: str, public_key: mldsa.MLDSA65PublicKey, ca: bool) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name("bench CA"))
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))

    ca_key = mldsa.MLDSA65PrivateKey.generate()
    ca_cert = build("bench CA", ca_key.public_key(), True).sign(ca_key, None)
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for role in ("server", "client"):
        key = mldsa.MLDSA65PrivateKey.generate()
        builder = build(role, key.public_key(), False)
        if role == "server":
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        cert = builder.sign(ca_key, None)
        (directory / f"{role}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / f"{role}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def plain_context(directory: Path, role: str, *, mutual: bool, resume: bool = False) -> SSL.Context:
    """pyOpenSSL TLS 1.3 over X25519MLKEM768 with the ML-DSA-65 PKI of :func:`_write_pki`: the server (with
    ``mutual`` the client too) shows its certificate and the other side verifies it; ``resume``: TLS 1.3
    tickets (resumption), else every connection is a full handshake."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD if role == "server" else SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    if role == "server" or mutual:
        ctx.use_certificate_file(str(directory / f"{role}.pem"))
        ctx.use_privatekey_file(str(directory / f"{role}.key"))
        ctx.check_privatekey()
    ctx.load_verify_locations(str(directory / "ca.pem"))
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT if mutual or role == "client"
                   else SSL.VERIFY_NONE)
    set_groups(ctx, HYBRID_GROUPS)
    if resume:
        ctx.set_session_id(b"bench")
    else:
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)  # every connection a full handshake
        ctx.set_options(SSL.OP_NO_TICKET)
    return ctx


def plain_sides(directory: Path, *, mutual: bool, resume: bool = False, facts: dict[str, object] | None = None) \
        -> tuple[ServerSide, Callable[[tuple[str, int]], float]]:
    """One plain pyOpenSSL connection per call (connect, handshake, a byte each way, close); the client side
    returns the seconds from connect() to the reply byte and, with ``resume``, checks that it resumed."""
    server_ctx = plain_context(directory, "server", mutual=mutual, resume=resume)
    client_ctx = plain_context(directory, "client", mutual=mutual, resume=resume)
    session: list[SSL.Session] = []

    def server_side(raw: socket.socket) -> None:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = SSL.Connection(server_ctx, raw)
        conn.set_accept_state()
        conn.do_handshake()
        conn.recv(1)
        conn.sendall(b"s")
        conn.shutdown()
        raw.close()

    def client_side(address: tuple[str, int]) -> float:
        started = time.perf_counter()
        raw = socket.create_connection(address)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = SSL.Connection(client_ctx, raw)
        conn.set_tlsext_host_name(b"localhost")
        if resume and session:
            conn.set_session(session[0])
        conn.set_connect_state()
        conn.do_handshake()
        conn.sendall(b"c")
        conn.recv(1)
        elapsed = time.perf_counter() - started
        if facts is not None and not facts:
            peer = conn.get_peer_certificate(as_cryptography=True)
            facts.update(version=conn.get_protocol_version_name(), group=negotiated_group(conn),
                         cipher=conn.get_cipher_name(),
                         peer_key=type(peer.public_key()).__name__ if peer is not None else None)
        if resume:
            if session and not session_reused(conn):
                raise RuntimeError("the plain TLS session did not resume")
            ticket = conn.get_session()
            session[:] = [ticket] if ticket is not None else []
        conn.shutdown()
        raw.close()
        return elapsed

    return server_side, client_side


def _baseline(directory: Path) -> tuple[ServerSide, ClientSide, dict[str, object]]:
    """Mutual TLS 1.3 with ML-DSA-65 certificates and X25519MLKEM768, through pyOpenSSL."""
    _write_pki(directory)
    facts: dict[str, object] = {}
    server_side, client_side = plain_sides(directory, mutual=True, facts=facts)
    return server_side, client_side, facts


# -- the measurement ------------------------------------------------------------------------------------
def _measure(server_side: ServerSide, client_side: ClientSide, connections: int, warmup: int) -> tuple[float, float]:
    """CPU ms and wall ms per connection over ``connections`` sequential connections."""
    listener = socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()[:2]
    failures: list[BaseException] = []

    def serve() -> None:
        for _ in range(warmup + connections):
            raw, _ = listener.accept()
            try:
                server_side(raw)
            except Exception as exc:  # reported below; the client fails too
                failures.append(exc)
                raw.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        for _ in range(warmup):
            client_side(address)
        gc.collect()
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(connections):
            client_side(address)
        thread.join(30)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        listener.close()
    if failures:
        raise RuntimeError(f"server side failed: {failures[0]}")
    return cpu * 1000 / connections, wall * 1000 / connections


def run(connections: int = 100, rounds: int = 15, warmup: int = 10, *, extra: bool = True,
        echo: Callable[[str], None] = print) -> dict[str, object]:
    """Measure every variant in interleaved rounds; returns the JSON-ready summary."""
    with tempfile.TemporaryDirectory(prefix="hybridkex-tls-bench-") as tmp:
        root = Path(tmp)
        server_id, client_id = generate_identity("ml-dsa-65"), generate_identity("ml-dsa-65")
        server_key, server_pub = write_identity(server_id, root / "server")
        client_key, client_pub = write_identity(client_id, root / "client")
        psk = root / "auth.psk"
        psk.write_bytes(os.urandom(32))
        psk.chmod(0o600)
        kme = _MemoryKME()
        variants: dict[str, tuple[ServerSide, ClientSide]] = {
            "hybrid_qkd": _hybrid(
                HybridTLSContext.server(identity=server_key, peers=[client_pub], qkd_source=kme.slave),
                HybridTLSContext.client(identity=client_key, peers=[server_pub], qkd_source=kme.master)),
        }
        base_server, base_client, base_facts = _baseline(root)
        variants["baseline_mtls"] = (base_server, base_client)
        if extra:
            variants["hybrid_no_qkd"] = _hybrid(HybridTLSContext.server(identity=server_key, peers=[client_pub]),
                                                HybridTLSContext.client(identity=client_key, peers=[server_pub]))
            variants["hybrid_psk_auth"] = _hybrid(
                HybridTLSContext.server(psk_file=psk, name="server", peer_name="client", qkd_source=kme.slave),
                HybridTLSContext.client(psk_file=psk, name="client", peer_name="server", qkd_source=kme.master))
        # Check what is measured: QKD used, the PSK and X25519MLKEM768 in the hybrid; ML-DSA-65 mTLS in the baseline.
        with socket.create_server(("127.0.0.1", 0)) as probe:
            server_ctx = HybridTLSContext.server(identity=server_key, peers=[client_pub], qkd_source=kme.slave)
            client_ctx = HybridTLSContext.client(identity=client_key, peers=[server_pub], qkd_source=kme.master)
            holder: list[object] = []
            accept = threading.Thread(target=lambda: holder.append(server_ctx.wrap_socket(probe.accept()[0])))
            accept.start()
            with client_ctx.wrap_socket(socket.create_connection(probe.getsockname()[:2])) as tls:
                hybrid_facts = tls.info()
            accept.join(10)
        echo(f"hybrid:   {hybrid_facts['tls_version']} {hybrid_facts['cipher']} {hybrid_facts['group']}, external "
             f"PSK {hybrid_facts['external_psk']}, {hybrid_facts['hybrid_suite']}, auth {hybrid_facts['auth']}, "
             f"QKD {hybrid_facts['qkd']}")
        _measure(base_server, base_client, 1, 0)
        echo(f"baseline: {base_facts['version']} {base_facts['cipher']} {base_facts['group']}, mutual certificates "
             f"({base_facts['peer_key']})")
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        for round_number in range(rounds):
            for name, (server_side, client_side) in variants.items():
                samples[name].append(_measure(server_side, client_side, connections, warmup))
            echo(f"round {round_number + 1}/{rounds}: " + ", ".join(
                f"{name} {samples[name][-1][0]:.2f}" for name in variants) + " ms CPU per connection")
    cpu = {name: statistics.median(s[0] for s in values) for name, values in samples.items()}
    wall = {name: statistics.median(s[1] for s in values) for name, values in samples.items()}
    echo("")
    echo(f"{'variant':18} {'CPU ms/conn':>12} {'best':>8} {'wall ms/conn':>13}")
    for name, values in samples.items():
        echo(f"{name:18} {cpu[name]:12.3f} {min(s[0] for s in values):8.3f} {wall[name]:13.3f}")
    best = {name: min(s[0] for s in values) for name, values in samples.items()}
    ratio = cpu["hybrid_qkd"] / cpu["baseline_mtls"]
    ratio_best = best["hybrid_qkd"] / best["baseline_mtls"]
    echo(f"hybrid_qkd / baseline_mtls = {ratio:.3f} (medians), {ratio_best:.3f} (best rounds); goal: <= 1")
    return {
        "hybrid_qkd_cpu_ms": round(cpu["hybrid_qkd"], 4),
        "baseline_mtls_mldsa65_cpu_ms": round(cpu["baseline_mtls"], 4),
        "ratio": round(ratio, 4),
        "ratio_best_rounds": round(ratio_best, 4),
        "cpu_ms": {name: round(value, 4) for name, value in cpu.items()},
        "cpu_ms_best_round": {name: round(value, 4) for name, value in best.items()},
        "wall_ms": {name: round(value, 4) for name, value in wall.items()},
        "connections_per_round": connections,
        "rounds": rounds,
        "statistic": "median over rounds of process CPU time per connection, both sides in one process",
        "openssl": OPENSSL_VERSION,
        "pyopenssl": PYOPENSSL_VERSION,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_tls.py", description=__doc__.split("\n\n")[0]
                                     if __doc__ else None)
    parser.add_argument("--connections", type=int, default=100, help="connections per variant and round")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (median and best reported)")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured connections before each measurement")
    parser.add_argument("--no-extra", action="store_true", help="measure only hybrid_qkd and baseline_mtls")
    args = parser.parse_args(argv)
    if args.connections < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--connections and --rounds must be positive, --warmup not negative")
    result = run(args.connections, args.rounds, args.warmup, extra=not args.no_extra)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
