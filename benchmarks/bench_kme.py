"""Benchmark the ETSI GS QKD 014 client against the KME simulator on 127.0.0.1.

Measures, in one run against one KME pair:

* key fetch latency: ``enc_keys`` at KME A (master SAE) plus ``dec_keys`` at KME B (slave SAE),
  one 256-bit key, over kept-alive mutual-TLS connections;
* beside it, a bare pooled HTTPS request to the same server (``GET .../status`` at KME A on
  the same kept-alive connection), interleaved with the fetches so both see the same load;
* the simulator's sustained requests per second: ``--threads`` clients, each on its own
  connection, for ``--duration`` seconds -- once with status requests, once with key fetches
  (two requests each).

By default the KME pair runs in a child process (``hybridkex kme serve``) so client and server
do not share a GIL; ``--in-process`` runs it in this process instead.  The last line printed
is one JSON object with every figure.

    python benchmarks/bench_kme.py [--requests 1000] [--duration 3] [--threads 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hybridkex_sim._kme import KMEConfig, KMEPair
from hybridkex_sim._pki import TestPKI, create_test_pki

from hybridkex.qkd import Etsi014Client

SAE_A, SAE_B = "bench-a", "bench-b"
# A pool big enough for the whole run: 8192 keys of 256 bits, refilled at 1 Mbit/s.
MAX_KEY_COUNT = 8192
KEY_RATE = 1_000_000


@contextmanager
def kme_pair(pki: TestPKI, in_process: bool) -> Iterator[tuple[str, str]]:
    """Yield (url_a, url_b) of a running KME pair."""
    if in_process:
        config = KMEConfig(max_key_count=MAX_KEY_COUNT)
        with KMEPair.start(pki, sae_a=SAE_A, sae_b=SAE_B, key_rate=KEY_RATE, config=config) as pair:
            yield pair.url_a, pair.url_b
        return
    cmd = [sys.executable, "-c", "from hybridkex.cli import main; main()", "kme", "serve",
           "--pki", str(pki.directory), "--sae-a", SAE_A, "--sae-b", SAE_B, "--listen-a", "127.0.0.1:0",
           "--listen-b", "127.0.0.1:0", "--key-rate", str(KEY_RATE), "--max-key-count", str(MAX_KEY_COUNT)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().split() for _ in range(2)]
        if any(len(line) < 4 for line in lines):
            raise SystemExit("bench_kme: the KME simulator did not start; run 'hybridkex kme serve' to see why")
        yield lines[0][3], lines[1][3]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def clients(pki: TestPKI, url_a: str, url_b: str) -> tuple[Etsi014Client, Etsi014Client]:
    def make(url: str, sae: str, peer: str) -> Etsi014Client:
        return Etsi014Client(url, ca=pki.ca_cert, sae_cert=pki.sae_cert(sae), sae_key=pki.sae_key(sae), sae_id=sae,
                             peer_sae_id=peer, retries=5)

    return make(url_a, SAE_A, SAE_B), make(url_b, SAE_B, SAE_A)


def summary(samples: list[float]) -> dict[str, float]:
    """Median, p90, p99 and mean in milliseconds."""
    ms = sorted(s * 1e3 for s in samples)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {"median": round(statistics.median(ms), 3), "p90": round(q[89], 3), "p99": round(q[98], 3),
            "mean": round(statistics.fmean(ms), 3)}


def latency(a: Etsi014Client, b: Etsi014Client, n: int) -> dict[str, dict[str, float]]:
    fetch, enc, dec, status = [], [], [], []
    for _ in range(20):  # warm up: TLS handshakes, first blocks
        key = a.get_new_keys(1)[0]
        b.get_keys_by_id([key.key_id])
        a.status()
    for _ in range(n):
        t0 = time.perf_counter()
        key = a.get_new_keys(1)[0]
        t1 = time.perf_counter()
        b.get_keys_by_id([key.key_id])
        t2 = time.perf_counter()
        a.status()
        t3 = time.perf_counter()
        fetch.append(t2 - t0)
        enc.append(t1 - t0)
        dec.append(t2 - t1)
        status.append(t3 - t2)
    return {"fetch": summary(fetch), "enc_keys": summary(enc), "dec_keys": summary(dec), "status": summary(status)}


def sustained(pki: TestPKI, url_a: str, url_b: str, threads: int, duration: float,
              work: Callable[[Etsi014Client, Etsi014Client], int]) -> float:
    """Requests per second with ``threads`` clients (own connections) for ``duration`` seconds."""
    counts = [0] * threads
    errors: list[BaseException] = []
    start = threading.Barrier(threads + 1)
    stop = threading.Event()

    def run(i: int) -> None:
        a, b = clients(pki, url_a, url_b)
        try:
            a.status()
            b.status()
            start.wait()
            while not stop.is_set():
                counts[i] += work(a, b)
        except BaseException as exc:  # noqa: BLE001 - reported after the run
            errors.append(exc)
            stop.set()
        finally:
            a.close()
            b.close()

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(duration)
    stop.set()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"bench_kme: a client failed: {errors[0]}")
    return sum(counts) / elapsed


def status_request(a: Etsi014Client, b: Etsi014Client) -> int:
    a.status()
    return 1


def key_fetch(a: Etsi014Client, b: Etsi014Client) -> int:
    key = a.get_new_keys(1)[0]
    b.get_keys_by_id([key.key_id])
    return 2


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="key fetches timed for latency")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per sustained-rate run")
    parser.add_argument("--threads", type=int, default=4, help="concurrent clients in the sustained runs")
    parser.add_argument("--in-process", action="store_true", help="run the KME pair in this process")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-kme-") as tmp:
        pki, _ = create_test_pki(Path(tmp) / "pki", [SAE_A, SAE_B])
        with kme_pair(pki, args.in_process) as (url_a, url_b):
            a, b = clients(pki, url_a, url_b)
            with a, b:
                lat = latency(a, b, args.requests)
            status_rps = sustained(pki, url_a, url_b, args.threads, args.duration, status_request)
            fetch_rps = sustained(pki, url_a, url_b, args.threads, args.duration, key_fetch)
    f, s = lat["fetch"], lat["status"]
    print(f"key fetch (enc_keys at A + dec_keys at B), {args.requests} x 256 bits, kept-alive mTLS:")
    print(f"  median {f['median']:.3f} ms  p90 {f['p90']:.3f} ms  p99 {f['p99']:.3f} ms  "
          f"(enc_keys {lat['enc_keys']['median']:.3f} ms, dec_keys {lat['dec_keys']['median']:.3f} ms)")
    print(f"bare pooled HTTPS request (GET status, same connection): median {s['median']:.3f} ms  "
          f"p90 {s['p90']:.3f} ms  p99 {s['p99']:.3f} ms")
    print(f"sustained, {args.threads} clients x {args.duration:g} s: status {status_rps:.0f} req/s, "
          f"key fetches {fetch_rps:.0f} req/s ({fetch_rps / 2:.0f} keys/s)")
    result: dict[str, Any] = {
        "bench": "kme",
        "server": "in-process" if args.in_process else "subprocess",
        "requests": args.requests,
        "key_bits": 256,
        "fetch_ms": f,
        "enc_keys_ms": lat["enc_keys"],
        "dec_keys_ms": lat["dec_keys"],
        "status_ms": s,
        "fetch_over_status_median": round(f["median"] / s["median"], 2),
        "sustained_status_rps": round(status_rps, 1),
        "sustained_key_fetch_rps": round(fetch_rps, 1),
        "sustained_keys_per_s": round(fetch_rps / 2, 1),
        "threads": args.threads,
        "duration_s": args.duration,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
