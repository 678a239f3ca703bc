"""Benchmark: rotate N peers against N responders on loopback, two real daemons, file sinks.

One ``hybridkex wg run`` process answers for one interface with N peers; another initiates
for N interfaces with one peer each (so both processes do N exchanges).  Every peer is
due at start-up; the clock runs from the moment the initiating daemon says it is
rotating until the responding daemon has installed all N keys (it installs last).

The headline is CPU seconds per rotation at each end (wall time depends on what else the
machine runs); next to it, measured in the same run, the floor: the CPU of one bare hybrid
exchange (both ends, in-process over a socket pair, same KEM, authentication and QKD
source), which no rotator can go below.  Each peer has its own PSK file: the rotator refuses
two WireGuard peers that share one credential.

    python benchmarks/bench_wg_rotate.py              # 1000 peers, QKD off and sim
    python benchmarks/bench_wg_rotate.py --quick      # 200 peers
    python benchmarks/bench_wg_rotate.py --peers 500 --qkd sim --workers 8
    python benchmarks/bench_wg_rotate.py --qkd both --runs 3   # medians, best wall

The goal: 1000 peers with the simulated QKD link rotated within 5 s of wall time on 2 cores.
The last output line is one JSON object with the figures: every run, and per case the median
CPU figures, the best and the median wall time, and whether the median met the goal.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CLI = [sys.executable, "-c", "from hybridkex.cli import main; main()"]
#: The goal: seconds of wall time for 1000 peers with the simulated QKD link (on 2 cores).
GOAL_SECONDS = 5.0


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def write_config(path: Path, top: dict[str, Any], tables: dict[str, dict[str, Any]],
                 arrays: list[tuple[str, dict[str, Any]]]) -> None:
    lines = [f"{k} = {toml_value(v)}" for k, v in top.items()]
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    for name, table in arrays:
        # A sub-table of the last array item ([peer.exchange]) or a new array item ([[peer]]).
        lines.append(f"[{name}]" if name.endswith(".exchange") else f"[[{name}]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


class Daemon:
    """A daemon process; counts its psk-set lines and notes when its log says it is rotating."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log_path = log
        self._log = open(log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen([*CLI, "wg", "run", "--config", str(config)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.psk_set = 0
        self.last_line_at = 0.0
        self.rotating_at: float | None = None
        self.listening = threading.Event()
        self._threads = [threading.Thread(target=self._out, daemon=True), threading.Thread(target=self._err,
                                                                                           daemon=True)]
        for t in self._threads:
            t.start()

    def _out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("psk-set "):
                self.psk_set += 1
                self.last_line_at = time.monotonic()

    def _err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._log.write(line)
            if "listening for rotations" in line:
                self.listening.set()
            if "rotating " in line and self.rotating_at is None:
                self.rotating_at = time.monotonic()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for t in self._threads:
            t.join(5)
        self._log.close()
        return self.proc.returncode


def bare_exchange_floor(qkd: str, work: Path, count: int = 100) -> float:
    """CPU seconds (both ends together) of one bare hybrid exchange, in-process over a socket pair."""
    from hybridkex_sim import init_link_file

    from hybridkex import ExchangeSettings, exchange_over_socket
    from hybridkex.protocol import DoSGuard

    psk = work / "floor.psk"
    psk.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    psk.chmod(0o600)
    extra: dict[str, Any] = {}
    if qkd == "sim":
        init_link_file(work / "floor-link.json")
        extra = {"qkd": "sim", "qkd_link": work / "floor-link.json", "qkd_journal": work / "floor-journal"}
    sides = {role: ExchangeSettings(psk_file=psk, name=role, peer_name=other, **extra)
             for role, other in (("initiator", "responder"), ("responder", "initiator"))}
    configs = {role: settings.handshake_config(context=b"bench") for role, settings in sides.items()}
    # The same guard sizing as the rotator's responder (a burst of exchanges from one host is expected).
    guard = DoSGuard(load_threshold=2 * count, source_rate=float(count), source_burst=2 * count)

    def one(role: str, sock: socket.socket) -> None:
        source = sides[role].open_qkd_source()
        try:
            exchange_over_socket(sock, role, configs[role], qkd_source=source,
                                 guard=guard if role == "responder" else None)
        finally:
            if source is not None:
                source.close()

    started = time.process_time()
    for _ in range(count):
        a, b = socket.socketpair()
        with a, b:
            t = threading.Thread(target=one, args=("responder", b))
            t.start()
            one("initiator", a)
            t.join()
    return (time.process_time() - started) / count


def run_case(n: int, qkd: str, workers: int, work: Path, timeout: float, roles: str) -> dict[str, Any]:
    case = work / f"qkd-{qkd}-{roles}"
    case.mkdir()
    exchange: dict[str, dict[str, Any]] = {"a": {"timeout": 60.0}, "b": {"timeout": 60.0}}

    def own_psk(i: int) -> str:
        path = case / "psk" / f"p{i}.psk"
        path.parent.mkdir(mode=0o700, exist_ok=True)
        path.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
        path.chmod(0o600)
        return str(path)

    psks = [own_psk(i) for i in range(n)]
    if qkd == "sim":
        link = case / "link-a.json"
        subprocess.run([*CLI, "qkd-link", "init", str(link)], check=True, capture_output=True)
        shutil.copy(link, case / "link-b.json")
        (case / "link-b.json").chmod(0o600)
        for side in ("a", "b"):
            # One simulated link between the two hosts, carrying every tunnel (as one QKD link would).
            # Each side its own key_ID journal, as on two hosts (not the user's default one).
            exchange[side].update({"qkd": "sim", "qkd_link": str(case / f"link-{side}.json"),
                                   "qkd_journal": str(case / f"journal-{side}")})
    port, port_i = free_port(), free_port()
    responder_key = base64.b64encode(os.urandom(32)).decode()
    initiator_keys = [base64.b64encode(os.urandom(32)).decode() for _ in range(n)]
    rotation: dict[str, Any] = {"interval": 3600.0, "jitter": 0.0, "deadline": 7200.0}
    if roles == "auto":
        # Each pair's smaller key initiates: both daemons connect and answer, about half each.  The first
        # daemon's attempts fail until the second listens; retry quickly so that costs little.
        rotation.update({"retry_initial": 0.05, "retry_max": 0.2})
    write_config(case / "responder.toml",
                 {"listen": f"127.0.0.1:{port}", "workers": workers},
                 {"rotation": rotation, "exchange": exchange["b"]},
                 [("interface", {"name": "wgR", "public_key": responder_key}),
                  ("interface.sink", {"type": "file", "path": str(case / "keys-r" / "{name}.psk")})]
                 + [item for i, k in enumerate(initiator_keys) for item in (
                     ("peer", {"public_key": k, "name": f"p{i}", "role": "responder"} if roles == "one-way" else
                      {"public_key": k, "name": f"p{i}", "endpoint": f"127.0.0.1:{port_i}"}),
                     ("peer.exchange", {"psk_file": psks[i]}))])
    arrays: list[tuple[str, dict[str, Any]]] = []
    for i, k in enumerate(initiator_keys):
        arrays += [("interface", {"name": f"wgI{i}", "public_key": k}),
                   ("interface.sink", {"type": "file", "path": str(case / "keys-i" / "{name}.psk")})]
    for i in range(n):
        arrays += [("peer", {"interface": f"wgI{i}", "public_key": responder_key, "name": f"p{i}",
                             "endpoint": f"127.0.0.1:{port}", **({"role": "initiator"} if roles == "one-way" else {})}),
                   ("peer.exchange", {"psk_file": psks[i]})]
    top: dict[str, Any] = {"workers": workers}
    if roles == "auto":
        top["listen"] = f"127.0.0.1:{port_i}"
    write_config(case / "initiator.toml", top, {"rotation": rotation, "exchange": exchange["a"]}, arrays)

    responder = Daemon(case / "responder.toml", case / "responder.log")
    initiator: Daemon | None = None
    try:
        if not responder.listening.wait(60):
            raise SystemExit(f"the responding daemon did not start; see {case / 'responder.log'}")
        initiator = Daemon(case / "initiator.toml", case / "initiator.log")
        give_up = time.monotonic() + timeout
        cpu_start: tuple[float, float] | None = None
        while responder.psk_set < n or initiator.psk_set < n:
            if cpu_start is None and initiator.rotating_at is not None:
                cpu_start = (cpu_seconds(initiator.proc.pid), cpu_seconds(responder.proc.pid))
            if time.monotonic() > give_up or responder.proc.poll() is not None or initiator.proc.poll() is not None:
                raise SystemExit(f"only {min(responder.psk_set, initiator.psk_set)}/{n} rotations finished; see the "
                                 f"logs in {case}")
            time.sleep(0.01)
        assert initiator.rotating_at is not None
        seconds = max(responder.last_line_at, initiator.last_line_at) - initiator.rotating_at
        cpu_i, cpu_r = cpu_seconds(initiator.proc.pid), cpu_seconds(responder.proc.pid)
        if cpu_start is not None:  # only the rotating, not the start-up (imports, 1000 configurations)
            cpu_i, cpu_r = cpu_i - cpu_start[0], cpu_r - cpu_start[1]
    finally:
        if initiator is not None:
            initiator.stop()
        responder.stop()
    mismatched = sum((case / "keys-i" / f"p{i}.psk").read_bytes() != (case / "keys-r" / f"p{i}.psk").read_bytes()
                     for i in range(n))
    errors = sum(1 for log in (case / "initiator.log", case / "responder.log")
                 for line in log.read_text().splitlines() if ": ERROR: " in line)
    rate = n / seconds
    floor = bare_exchange_floor(qkd, case)
    return {"qkd": qkd, "roles": roles, "peers": n, "seconds": round(seconds, 3),
            "cpu_ms_per_rotation_initiator": round(cpu_i / n * 1000, 2),
            "cpu_ms_per_rotation_responder": round(cpu_r / n * 1000, 2),
            "cpu_ms_bare_exchange_both_ends": round(floor * 1000, 2),
            "rotations_per_second": round(rate, 1),
            "seconds_per_1000_peers": round(1000 / rate, 2), "measured_1000": n >= 1000,
            "cpu_seconds_initiator": round(cpu_i, 2), "cpu_seconds_responder": round(cpu_r, 2),
            "mismatched_keys": mismatched, "errors_logged": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=1000, help="number of peers (default 1000)")
    parser.add_argument("--quick", action="store_true", help="200 peers")
    parser.add_argument("--qkd", choices=["off", "sim", "both"], default="both")
    parser.add_argument("--workers", type=int, default=16, help="threads per pool in each daemon")
    parser.add_argument("--roles", choices=["one-way", "auto", "both"], default="one-way",
                        help="one-way: one daemon initiates every pair; auto: each pair's smaller key initiates")
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
                        help="parent of the work directory [default: /dev/shm, where secrets belong (tmpfs) -- "
                             "keys of a file sink belong on tmpfs such as /run]")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--runs", type=int, default=1, help="runs per case (figures: medians, and the best wall)")
    args = parser.parse_args()
    n = 200 if args.quick else args.peers
    kinds = ["off", "sim"] if args.qkd == "both" else [args.qkd]
    role_modes = ["one-way", "auto"] if args.roles == "both" else [args.roles]
    work = Path(tempfile.mkdtemp(prefix="hkwg-bench-", dir=args.dir))
    for run in range(args.runs):
        (work / f"run{run}").mkdir()
    results: list[dict[str, Any]] = []
    try:
        for run, (qkd, roles) in [(i, (q, r)) for i in range(args.runs) for q in kinds for r in role_modes]:
            result = run_case(n, qkd, args.workers, work / f"run{run}", args.timeout, roles)
            results.append(result)
            print(f"qkd {qkd:>3}, roles {roles:>7}: CPU per rotation {result['cpu_ms_per_rotation_initiator']:.2f} ms "
                  f"initiator + {result['cpu_ms_per_rotation_responder']:.2f} ms responder (floor: one bare "
                  f"exchange {result['cpu_ms_bare_exchange_both_ends']:.2f} ms both ends); "
                  f"{n} peers rotated in {result['seconds']:.2f} s = "
                  f"{result['rotations_per_second']:.0f} rotations/s -> {result['seconds_per_1000_peers']:.2f} s per "
                  f"1000 peers{'' if result['measured_1000'] else ' (extrapolated)'}; CPU initiator "
                  f"{result['cpu_seconds_initiator']:.1f} s, responder {result['cpu_seconds_responder']:.1f} s; "
                  f"{result['mismatched_keys']} mismatched keys, {result['errors_logged']} errors", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import cryptography

    filesystem = subprocess.run(["stat", "-f", "-c", "%T", str(work.parent)], capture_output=True, text=True)
    cases = []
    for qkd, roles in [(q, r) for q in kinds for r in role_modes]:
        runs = [r for r in results if r["qkd"] == qkd and r["roles"] == roles]
        walls = [r["seconds_per_1000_peers"] for r in runs]
        case: dict[str, Any] = {"qkd": qkd, "roles": roles, "runs": len(runs), **{
            f"median_{k}": round(statistics.median(r[k] for r in runs), 2) for k in (
                "cpu_ms_per_rotation_initiator", "cpu_ms_per_rotation_responder", "cpu_ms_bare_exchange_both_ends")},
            "best_seconds_per_1000_peers": min(walls), "median_seconds_per_1000_peers": statistics.median(walls),
            "measured_1000": n >= 1000}
        if qkd == "sim":
            case["goal_met"] = n >= 1000 and case["median_seconds_per_1000_peers"] <= GOAL_SECONDS
        cases.append(case)
        print(f"qkd {qkd:>3}, roles {roles:>7}, {len(runs)} run(s): median CPU per rotation "
              f"{case['median_cpu_ms_per_rotation_initiator']:.2f} ms initiator + "
              f"{case['median_cpu_ms_per_rotation_responder']:.2f} ms responder (floor "
              f"{case['median_cpu_ms_bare_exchange_both_ends']:.2f} ms); wall per 1000 peers best "
              f"{case['best_seconds_per_1000_peers']:.2f} s, median {case['median_seconds_per_1000_peers']:.2f} s"
              + (f"; goal {GOAL_SECONDS:g} s {'met' if case['goal_met'] else 'NOT met'}" if qkd == "sim" else ""),
              flush=True)
    sim = [c for c in cases if c["qkd"] == "sim"]
    summary = {"benchmark": "hybridkex-wg rotate", "peers": n, "workers": args.workers, "cpus": os.cpu_count(),
               "goal": f"{GOAL_SECONDS:g} s of wall time for 1000 peers with the simulated QKD link on 2 cores",
               "goal_seconds": GOAL_SECONDS, "goal_met": all(c["goal_met"] for c in sim) if sim else None,
               "cases": cases,
               "sink_filesystem": filesystem.stdout.strip() or "unknown",
               "python": platform.python_version(), "cryptography": cryptography.__version__,
               "sink": "file", "auth": "psk", "kem": "ml-kem-768", "results": results}
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
