"""Load test: ``hybridkex tls serve`` fed by the KME simulator at a low key rate, under a steady connection rate.

Run with ``python -m hybridkex_tls.loadtest`` (``--help`` for options).  It starts, as
processes, ``hybridkex kme serve`` (two KMEs joined by a simulated QKD link delivering
``--key-rate`` keys per second, pool starting empty) and ``hybridkex tls serve --echo``
with QKD ``required``, then opens ``--rate`` connections per second for ``--seconds``
seconds from one client context (QKD required too).  Each connection sends a line and
reads it back.  With resumption (the default) a QKD key is drawn only by a full hybrid
exchange, once per ``--max-resumptions`` connections; without it (``--no-resumption``)
every connection needs a key and the KME runs dry.  Processes started here are ended by
their PID.  The last line printed is one JSON object; exit status 0 when every connection
succeeded and QKD keys were drawn only by full handshakes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from hybridkex import generate_identity, write_identity

from ._context import HybridTLSContext

__all__ = ["main", "run"]

_SAE_A, _SAE_B = "sae-client", "sae-server"


def _hkx(*args: str) -> list[str]:
    return [sys.executable, "-c", "from hybridkex.cli import main; main()", *args]


@contextlib.contextmanager
def _process(argv: list[str], ready: re.Pattern[str], stream: str, timeout: float = 30.0) \
        -> Iterator[tuple[subprocess.Popen[str], re.Match[str], list[str]]]:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        pipe: IO[str] | None = proc.stdout if stream == "out" else proc.stderr
        assert pipe is not None
        deadline = time.monotonic() + timeout
        seen = []
        match = None
        while time.monotonic() < deadline and match is None:
            line = pipe.readline()
            if not line:
                break
            seen.append(line)
            match = ready.search(line)
        if match is None:
            raise RuntimeError(f"{' '.join(argv[3:5])} did not start: {''.join(seen)[-2000:]}")
        yield proc, match, seen
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)


def run(rate: float = 50.0, seconds: float = 30.0, key_rate: float = 4.0, resumption: bool = True,
        max_resumptions: int = 100) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pki = root / "pki"
        subprocess.run(_hkx("kme", "pki", str(pki), "--sae", _SAE_A, "--sae", _SAE_B), check=True,
                       capture_output=True, timeout=60)
        ids = {name: write_identity(generate_identity("ml-dsa-65"), root / name) for name in ("server", "client")}
        kme_argv = _hkx("kme", "serve", "--pki", str(pki), "--sae-a", _SAE_A, "--sae-b", _SAE_B,
                        "--key-rate", str(key_rate * 256), "--max-key-count", "16", "--empty")
        with _process(kme_argv, re.compile(r"kme-b listening on (\S+)"), "out") as (kme, _, lines):
            urls = {}
            for line in lines:
                found = re.search(r"(kme-[ab]) listening on (\S+)", line)
                if found:
                    urls[found.group(1)] = found.group(2)
            url_a, url_b = urls.get("kme-a"), urls.get("kme-b")
            if not url_a or not url_b:
                raise RuntimeError("could not read the KMEs' addresses")
            _discard(kme)

            def kme_args(sae: str, peer: str, url: str) -> list[str]:
                return ["--qkd", "etsi014", "--qkd-policy", "required", "--kme-url", url, "--kme-ca",
                        str(pki / "ca.crt"), "--sae-cert", str(pki / f"{sae}.crt"), "--sae-key",
                        str(pki / f"{sae}.key"), "--sae-id", sae, "--peer-sae-id", peer]

            serve_argv = _hkx("tls", "serve", "--listen", "127.0.0.1:0", "--identity", str(ids["server"][0]),
                              "--peer", str(ids["client"][1]), *kme_args(_SAE_B, _SAE_A, url_b), "--echo",
                              "--max-resumptions", str(max_resumptions), "--session-lifetime",
                              "3600" if resumption else "0", "--timeout", "20")
            with _process(serve_argv, re.compile(r"listening on [0-9.]+:(\d+)"), "err") as (server, ready, _):
                port = int(ready.group(1))
                _discard(server)
                client = HybridTLSContext.client(
                    identity=ids["client"][0], peers=[ids["server"][1]],
                    qkd="etsi014", qkd_policy="required", kme_url=url_a, kme_ca=pki / "ca.crt",
                    sae_cert=pki / f"{_SAE_A}.crt", sae_key=pki / f"{_SAE_A}.key", sae_id=_SAE_A,
                    peer_sae_id=_SAE_B, timeout=20, max_resumptions=max_resumptions,
                    session_lifetime=3600 if resumption else 0)
                return _drive(client, port, rate, seconds, key_rate, resumption)


def _discard(proc: subprocess.Popen[str]) -> None:
    """Keep reading a process's output in the background, so a full pipe never blocks it."""
    import threading

    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            threading.Thread(target=lambda p=pipe: [None for _ in p], daemon=True).start()


def _drive(client: HybridTLSContext, port: int, rate: float, seconds: float, key_rate: float,
           resumption: bool) -> dict[str, Any]:
    total = int(rate * seconds)
    started = time.monotonic()
    ok = failed = full = resumed = 0
    key_ids: set[str] = set()
    full_key_ids: set[str] = set()
    errors: dict[str, int] = {}
    latencies: list[float] = []
    for n in range(total):
        due = started + n / rate
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        t0 = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=20) as raw, \
                    client.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"load\n")
                if tls.recv(100) != b"load\n":
                    raise RuntimeError("the echo did not match")
                info = tls.info()
            ok += 1
            ids = [str(i) for i in info.get("qkd_key_ids") or []]  # type: ignore[attr-defined]
            key_ids.update(ids)
            if info["resumed"]:
                resumed += 1
            else:
                full += 1
                full_key_ids.update(ids)
            latencies.append(time.monotonic() - t0)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            failed += 1
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
    elapsed = time.monotonic() - started
    latencies.sort()
    result = {
        "connections": total, "ok": ok, "failed": failed, "full": full, "resumed": resumed,
        "qkd_keys_used": len(key_ids), "qkd_keys_by_full_handshakes": len(full_key_ids),
        "seconds": round(elapsed, 1), "rate_asked": rate, "key_rate": key_rate, "resumption": resumption,
        "median_ms": round(latencies[len(latencies) // 2] * 1000, 1) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1) if latencies else None,
        "errors": errors,
    }
    result["passed"] = failed == 0 and len(key_ids) == len(full_key_ids) == full
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybridkex_tls.loadtest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50.0, help="connections per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to keep the rate")
    parser.add_argument("--key-rate", type=float, default=4.0, help="QKD keys (256 bits) per second of the link")
    parser.add_argument("--max-resumptions", type=int, default=100, help="resumptions per hybrid exchange")
    parser.add_argument("--no-resumption", action="store_true", help="a full hybrid exchange for every connection")
    args = parser.parse_args(argv)
    result = run(args.rate, args.seconds, args.key_rate, not args.no_resumption, args.max_resumptions)
    print(f"{result['ok']} of {result['connections']} connections succeeded in {result['seconds']} s "
          f"({result['full']} full, {result['resumed']} resumed); {result['qkd_keys_used']} QKD keys used",
          flush=True)
    print(json.dumps(result, sort_keys=True))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
