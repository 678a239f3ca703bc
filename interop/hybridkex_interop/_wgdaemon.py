"""The WireGuard rotator daemon with one healthy and one failing peer.

A hub (``hybridkex wg run``, initiator for both peers, rotating every 10 s -- the shortest
interval the rotator accepts -- with the first rotation at start-up) and two spokes
in network namespaces, each with a wireguard-go interface.  Spoke B always answers
(``hybridkex wg rotate --listen``); spoke C misbehaves as the row says.  The documented
outcome: the daemon keeps running and keeps rotating B's key (equal on both ends, traffic
crosses the tunnel), installs nothing for C (failure policy ``keep``), records C's error in
its status file, and prints no traceback.  Each spoke authenticates with its own PSK file:
the rotator refuses two WireGuard peers that share one credential.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time

from ._cell import CellContext
from ._fixtures import psk_file
from ._integrations import require_plugin
from ._model import Cell, Section
from ._netns import WgHost, WgNet, require_wireguard, underlay_ip
from ._procs import Spawned, has_traceback, hkx, spawn

__all__ = ["SECTIONS", "cells", "SCENARIOS"]

SECTION = "wg-daemon"
INTERVAL = 10.0
WINDOW = INTERVAL + 3.0  # seconds after B's first key before the checks: one more rotation
ROWS = {
    "healthy": "control: peer C answers too",
    "down": "peer C's rotator is down (connection refused)",
    "wrong-psk": "peer C authenticates with another PSK",
    "silent": "peer C's rotator accepts and never answers",
}
COLUMN = "hub daemon: B keeps rotating, C is reported"
_SILENT = ("import socket,sys,time\n"
           "s=socket.create_server((sys.argv[1],int(sys.argv[2])))\n"
           "print('ready',flush=True)\n"
           "conns=[]\n"
           "while True:\n"
           "    conns.append(s.accept()[0])\n")

SECTIONS = [Section(
    SECTION, "WireGuard rotator daemon (wireguard-go in network namespaces) with a failing peer",
    f"A hub runs 'hybridkex wg run' for peers B and C (rotation every {INTERVAL:g} s, failure policy keep, "
    f"observed for {WINDOW:g} s).  Passing cells: the daemon stays up, B's pre-shared key keeps rotating and "
    "is equal on both ends with traffic crossing the tunnel, and C gets no key but an error in the status file.",
    (COLUMN,))]


def cells() -> list[Cell]:
    return [Cell(id=f"wg-daemon/{row}", section=SECTION, row=label, column=COLUMN, scenario="wg-daemon",
                 params={"row": row}, timeout=120.0, quick=row == "down") for row, label in ROWS.items()]


def _config(ctx: CellContext, hub: WgHost, spokes: list[WgHost]) -> str:
    peers = "".join(f"""
[[peer]]
interface = "{hub.iface}"
name = "{s.name}"
public_key = "{s.public_key}"
endpoint = "{underlay_ip(i, 2)}:7443"
role = "initiator"
[peer.exchange]
psk_file = "{psk_file(ctx, f'psk-{s.name}')}"
""" for i, s in enumerate(spokes, start=1))
    return f"""status_file = "{ctx.work / 'hub-status.json'}"
workers = 4

[rotation]
interval = {INTERVAL}
jitter = 0
deadline = 60
retry_initial = 0.5
retry_max = 1
startup_spread = 0
failure_policy = "keep"

[exchange]
timeout = 3

[[interface]]
name = "{hub.iface}"
{peers}"""


def _responder(ctx: CellContext, spoke: WgHost, hub: WgHost, index: int, psk: str) -> Spawned:
    proc = spawn(ctx, f"rotator {spoke.name}", spoke.exec(*hkx(
        "wg", "rotate", "--interface", spoke.iface, "--wg-peer", hub.public_key, "--listen",
        f"{underlay_ip(index, 2)}:7443", "--psk-file", psk, "--interval", str(INTERVAL), "--timeout", "3")))
    return proc


def _run(ctx: CellContext) -> None:
    require_wireguard(ctx)
    require_plugin(ctx, "wg", "pip install -e plugins/wireguard")
    row = ctx.params["row"]
    net = WgNet(ctx, spokes=2).up()
    hub, b, c = net.hosts
    _responder(ctx, b, hub, 1, str(psk_file(ctx, f"psk-{b.name}")))
    if row == "healthy":
        _responder(ctx, c, hub, 2, str(psk_file(ctx, f"psk-{c.name}")))
    elif row == "wrong-psk":
        _responder(ctx, c, hub, 2, str(psk_file(ctx, "other-psk")))
    elif row == "silent":
        silent = spawn(ctx, "silent rotator c", c.exec(sys.executable, "-c", _SILENT, underlay_ip(2, 2), "7443"))
        if silent.wait_for(re.compile("ready"), 10, stream="out") is None:
            ctx.fail("the silent server in C's namespace did not start")
    config = ctx.work / "hub.toml"
    config.write_text(_config(ctx, hub, [b, c]))
    daemon = spawn(ctx, "wg run (hub)", hub.exec(*hkx("wg", "run", "--config", config)))
    # The window counts from B's first key (start-up time varies with the machine's load).
    give_up = time.monotonic() + 30
    while not any(line.startswith("psk-set") and " name=b " in line for line in daemon.out):
        if time.monotonic() > give_up or daemon.proc.poll() is not None:
            break
        time.sleep(0.1)
    time.sleep(WINDOW)
    if daemon.proc.poll() is not None:
        ctx.fail(f"the daemon exited: {daemon.stop().describe()}")
    sets = [line for line in daemon.out if line.startswith("psk-set")]
    b_sets = [line for line in sets if " name=b " in line + " "]
    c_sets = [line for line in sets if " name=c " in line + " "]
    pa, pb = net.psk(hub, b), net.psk(b, hub)
    ctx.check(pa not in ("", "(none)") and pa == pb, "B's pre-shared key differs between the two ends or is unset")
    ctx.check(len(b_sets) >= 2, f"B's key was installed {len(b_sets)} times in {WINDOW:g} s, expected >= 2")
    ctx.check(net.tunnel_works(b, hub), "no traffic crossed the tunnel to B")
    status = json.loads((ctx.work / "hub-status.json").read_text())
    entry = {p["name"]: p for p in status["peers"]}
    if row == "healthy":
        pc = net.psk(hub, c)
        ctx.check(pc not in ("", "(none)") and pc == net.psk(c, hub), "C's pre-shared key differs or is unset")
        ctx.check(len(c_sets) >= 2, f"C's key was installed {len(c_sets)} times, expected >= 2")
        ctx.note(f"B rotated {len(b_sets)} times, C {len(c_sets)} times; both tunnels keyed alike")
    else:
        ctx.check(net.psk(hub, c) == "(none)", "a key was installed for C although its exchanges failed")
        ctx.check(not c_sets, "the daemon reported a key for C")
        c_entry = entry.get("c", {})
        ctx.check(c_entry.get("failures", 0) >= 1 and c_entry.get("last_error"),
                  f"C's failures are not in the status file: {c_entry}")
        if row == "down":  # retry_initial 0.5 s, retry_max 1 s: several attempts in the window
            ctx.check(c_entry.get("failures", 0) >= 3, f"C was retried {c_entry.get('failures')} times, expected >= 3")
        ctx.note(f"B rotated {len(b_sets)} times; C: {c_entry.get('failures')} failures, last error: "
                 f"{str(c_entry.get('last_error'))[:140]}")
    daemon.proc.send_signal(signal.SIGTERM)
    done = daemon.wait(10)
    ctx.check(done is not None, "the daemon did not stop on SIGTERM")
    assert done is not None
    ctx.check(not has_traceback(done), "the daemon printed a Python traceback")


SCENARIOS = {"wg-daemon": _run}
