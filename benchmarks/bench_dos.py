"""What an unauthenticated InitHello costs the responder, and whether real peers get through a flood.

Part 1, in this process: responder CPU per InitHello that (a) lacks a valid mac1 (a scanner), (b)
replays a recorded one, (c) is fresh and valid with the responder idle, (d) is fresh and valid
while the responder is under load (it answers with a cookie).  Baseline in the same run: (c), the
full cost of answering (X25519, ML-KEM encapsulation, CatKDF, an ML-DSA-65 signature).

Part 2, over loopback: a responder server (a separate process, a bounded pool of workers sharing
one DoSGuard) is flooded for ``--seconds`` by two processes from their own loopback addresses,
each sending replayed and fresh InitHellos as fast as it can, bounded in count and time, while a
legitimate initiator runs exchanges one after another.  Reported: the legitimate exchanges'
(five a second) success rate and latency, with and without the flood, and the server's CPU seconds.

    python benchmarks/bench_dos.py [--seconds 10] [--iterations 300]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hybridkex import HybridKexError, generate_identity, load_identity, load_public_identity, write_identity
from hybridkex.backends import get_backend
from hybridkex.io import connect, listen, run_handshake
from hybridkex.protocol import DoSGuard, HandshakeConfig, Initiator, Responder, SendMessage, SignatureAuthenticator

BACKEND = get_backend("cryptography")
LEGIT, FLOOD_A, FLOOD_B = "127.0.0.1", "127.0.0.2", "127.0.0.3"


def _configs(keys: Path) -> tuple[HandshakeConfig, HandshakeConfig]:
    alice, bob = load_identity(keys / "alice/id.key"), load_identity(keys / "bob/id.key")
    i = HandshakeConfig(SignatureAuthenticator(alice, [load_public_identity(keys / "bob/id.pub")], BACKEND),
                        backend=BACKEND, timeout=5.0)
    r = HandshakeConfig(SignatureAuthenticator(bob, [load_public_identity(keys / "alice/id.pub")], BACKEND),
                        backend=BACKEND, timeout=5.0)
    return i, r


def _make_keys(where: Path) -> None:
    for name in ("alice", "bob"):
        identity = generate_identity("ml-dsa-65")
        write_identity(identity, where / name)


def _hello(config: HandshakeConfig) -> bytes:
    event = Initiator(config).initiate()[0]
    assert isinstance(event, SendMessage)
    return event.data


# -- part 1: CPU per InitHello ----------------------------------------------------------------------

def _cpu_per_hello(r_config: HandshakeConfig, frames: list[bytes], guard: DoSGuard, source: bytes) -> float:
    start = time.process_time()
    for frame in frames:
        with contextlib.suppress(HybridKexError):
            Responder(r_config, guard=guard, source=source).receive(frame)
    return (time.process_time() - start) / len(frames) * 1e6


def part1(i_config: HandshakeConfig, r_config: HandshakeConfig, stranger: HandshakeConfig, n: int) -> dict[str, float]:
    fresh = [_hello(i_config) for _ in range(n)]
    guard = DoSGuard(load_threshold=10**9, source_rate=1e9, source_burst=10**9)
    idle = _cpu_per_hello(r_config, fresh, guard, b"a")
    replayed = _cpu_per_hello(r_config, fresh[:1] * n, guard, b"a")  # fresh[0] is in the cache now
    no_mac1 = _cpu_per_hello(r_config, [_hello(stranger) for _ in range(n)], guard, b"a")
    loaded = DoSGuard()
    loaded.forced_load = True
    under_load = _cpu_per_hello(r_config, [_hello(i_config) for _ in range(n)], loaded, b"b")
    return {"fresh_idle_us": idle, "replayed_us": replayed, "no_mac1_us": no_mac1, "fresh_under_load_us": under_load}


# -- part 2: a flood over loopback ------------------------------------------------------------------

def serve(keys: str, port_file: str, stop_file: str) -> None:
    """The responder server: a bounded pool of workers sharing one guard."""
    _, r_config = _configs(Path(keys))
    guard = DoSGuard()
    server = listen(("127.0.0.1", 0), backlog=256)
    Path(port_file).write_text(str(server.getsockname()[1]))
    server.settimeout(0.2)
    pool = ThreadPoolExecutor(max_workers=16)
    in_flight = threading.Semaphore(64)

    def one(sock: socket.socket) -> None:
        try:
            with contextlib.closing(sock):
                source = str(sock.getpeername()[0]).encode()
                with contextlib.suppress(HybridKexError, OSError):
                    run_handshake(sock, Responder(r_config, guard=guard, source=source), None, timeout=3.0)
        finally:
            in_flight.release()

    while not os.path.exists(stop_file):
        try:
            sock, _ = server.accept()
        except (TimeoutError, OSError):
            continue
        if not in_flight.acquire(blocking=False):
            guard.forced_load = True  # too much in flight: ask everyone for cookies
            sock.close()
            continue
        guard.forced_load = False
        pool.submit(one, sock)
    pool.shutdown(wait=True)


def _flood(keys: str, port: int, bind: str, seconds: float, max_sends: int) -> int:
    i_config, _ = _configs(Path(keys))
    recorded = _hello(i_config)
    deadline = time.monotonic() + seconds
    sent = 0
    while time.monotonic() < deadline and sent < max_sends:
        frame = recorded if sent % 2 else _hello(i_config)  # half replays, half fresh valid hellos
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5, source_address=(bind, 0)) as s:
                s.sendall(frame)
                s.settimeout(0.3)
                with contextlib.suppress(OSError):
                    s.recv(65536)
        except OSError:
            pass
        sent += 1
    return sent


def _legit(i_config: HandshakeConfig, port: int, seconds: float, rate: float = 5.0) -> tuple[int, int, list[float]]:
    """A real peer: ``rate`` exchanges a second (within its source's rate limit), each from a fresh connection."""
    deadline = time.monotonic() + seconds
    ok = tried = 0
    latencies: list[float] = []
    while time.monotonic() < deadline and tried < 10_000:
        tried += 1
        start = time.monotonic()
        next_start = start + 1.0 / rate
        try:
            sock = connect(("127.0.0.1", port), timeout=3.0)
            with contextlib.closing(sock):
                run_handshake(sock, Initiator(i_config), None, timeout=5.0)
            ok += 1
            latencies.append(time.monotonic() - start)
        except HybridKexError:
            pass
        time.sleep(max(0.0, next_start - time.monotonic()))
    return ok, tried, latencies


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def part2(keys: Path, seconds: float) -> dict[str, object]:
    i_config, _ = _configs(keys)
    port_file, stop_file = keys / "port", keys / "stop"
    ctx = multiprocessing.get_context("spawn")
    server = ctx.Process(target=serve, args=(str(keys), str(port_file), str(stop_file)))
    server.start()
    try:
        for _ in range(100):
            if port_file.exists() and port_file.read_text():
                break
            time.sleep(0.05)
        port = int(port_file.read_text())
        assert server.pid is not None
        cpu0 = _proc_cpu(server.pid)
        quiet_ok, quiet_tried, quiet_lat = _legit(i_config, port, seconds / 2)
        cpu1 = _proc_cpu(server.pid)
        with ctx.Pool(2) as pool:
            floods = [pool.apply_async(_flood, (str(keys), port, bind, seconds, 200_000))
                      for bind in (FLOOD_A, FLOOD_B)]
            time.sleep(0.5)
            flood_ok, flood_tried, flood_lat = _legit(i_config, port, seconds - 1.0)
            sent = sum(f.get(timeout=seconds + 30) for f in floods)
        cpu2 = _proc_cpu(server.pid)
    finally:
        stop_file.write_text("stop")
        server.join(timeout=30)
        if server.is_alive():
            server.kill()

    def ms(values: list[float], q: float) -> float:
        return round(1000 * statistics.quantiles(values, n=100)[int(q) - 1], 1) if len(values) > 2 else float("nan")

    return {
        "quiet": {"ok": quiet_ok, "tried": quiet_tried, "p50_ms": ms(quiet_lat, 50), "p95_ms": ms(quiet_lat, 95),
                  "server_cpu_s": round(cpu1 - cpu0, 2)},
        "flood": {"ok": flood_ok, "tried": flood_tried, "p50_ms": ms(flood_lat, 50), "p95_ms": ms(flood_lat, 95),
                  "server_cpu_s": round(cpu2 - cpu1, 2), "flood_hellos_sent": sent},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="flood duration (bounded)")
    parser.add_argument("--iterations", type=int, default=300, help="InitHellos per kind in part 1")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp)
        _make_keys(keys)
        i_config, r_config = _configs(keys)
        stranger_id = generate_identity("ml-dsa-65")
        stranger = HandshakeConfig(SignatureAuthenticator(load_identity(keys / "alice/id.key"),
                                                          [stranger_id.public], BACKEND), backend=BACKEND)
        cpu = part1(i_config, r_config, stranger, args.iterations)
        for name, value in cpu.items():
            print(f"responder CPU per InitHello, {name[:-3].replace('_', ' '):22s} {value:9.1f} us")
        print(f"  a scanner costs {cpu['no_mac1_us'] / cpu['fresh_idle_us']:.3f}x, a replay "
              f"{cpu['replayed_us'] / cpu['fresh_idle_us']:.3f}x, a fresh hello under load "
              f"{cpu['fresh_under_load_us'] / cpu['fresh_idle_us']:.3f}x of answering one")
        flood = part2(keys, args.seconds)
        for phase in ("quiet", "flood"):
            f = flood[phase]
            assert isinstance(f, dict)
            print(f"{phase:5s}: legitimate exchanges {f['ok']}/{f['tried']} ok, p50 {f['p50_ms']} ms, "
                  f"p95 {f['p95_ms']} ms, server CPU {f['server_cpu_s']} s"
                  + (f", flood InitHellos sent {f['flood_hellos_sent']}" if phase == "flood" else ""))
        print(json.dumps({"bench": "dos", "cpu_per_hello_us": {k: round(v, 1) for k, v in cpu.items()},
                          **flood, "seconds": args.seconds}))


if __name__ == "__main__":
    sys.exit(main())
