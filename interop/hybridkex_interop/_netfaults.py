"""A misbehaving network between two hybridkex processes: the fault proxy, a silent responder,
a late and an absent one.

Every row says what the documented outcome is: either the exchange still succeeds (a slow
link, a responder that starts late: the initiator retries), or each side that fails prints
one ``hybridkex: error:`` line, exits with the documented code (5 network/timeout, 3
authentication, 1 other protocol errors), writes no key and shows no traceback.  A
``hybridkex exchange --listen`` responder ignores every connection that fails before its peer
authenticated, so in each failing row it listens on and ends at its ``--accept-timeout``
(exit 5, "no peer completed an exchange"); an InitHello altered on the way fails its mac1
and is dropped unanswered, so the initiator sees the connection close.  The
TLS wrapper column runs the same faults under ``hybridkex tls serve|connect``: its server
logs one error line for the failed connection and keeps serving.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from ._cell import CellContext
from ._fixtures import identity, link_file
from ._hkx import check_agreed, run_exchange_pair
from ._integrations import json_lines, require_plugin
from ._model import Cell, Section
from ._procs import ERROR_PREFIX, LISTENING_RE, Finished, expect_clean_failure, has_traceback, hkx, spawn
from ._proxy import Fault, FaultProxy, SilentServer

__all__ = ["SECTIONS", "cells", "SCENARIOS", "NET_FAULTS"]

SECTION = "net-faults"
TIMEOUT = 4.0  # --timeout of both sides in rows that wait for a timeout
ACCEPT_TIMEOUT = 12.0  # --accept-timeout of the responder in rows that fail: it listens on until then
COLUMNS = {"exchange": "hybridkex exchange", "tls": "TLS wrapper (hybrid)"}
_SERVE_ERROR_RE = re.compile(r"^hybridkex: \S+: error: ")
# Both sides wait with the same timeout: whichever gives up first closes, and the other may see that
# close before its own deadline.  Either way it is a network error (exit 5).
_TIMED_OUT = ("timed out", "closed")


@dataclass(frozen=True)
class NetFault:
    """A network fault and its documented outcome."""

    label: str
    fault: Fault | None
    """What the proxy does (None: no proxy; the row sets up something else)."""
    ok: bool = False
    """The exchange still succeeds."""
    init_codes: tuple[int, ...] = (5,)
    """Exit codes the initiator may end with."""
    resp_codes: tuple[int, ...] = (5,)
    """Exit codes the responder may end with."""
    resp_words: tuple[str, ...] = ("no peer completed",)
    """Words one of which the responder's error line holds."""
    init_words: tuple[str, ...] = ()
    """Words one of which the initiator's error line holds."""
    tls: bool = True
    quick: bool = False


NET_FAULTS: dict[str, NetFault] = {
    "delay": NetFault("delay 0.3 s on every chunk, responder→initiator", Fault("delay", "s2c", delay=0.3), ok=True,
                      quick=True),
    "delay-timeout": NetFault(f"delay {TIMEOUT + 2:g} s, beyond the handshake timeout",
                              Fault("delay", "s2c", delay=TIMEOUT + 2), init_words=_TIMED_OUT),
    "drop": NetFault("black hole: the responder's bytes are dropped", Fault("drop", "s2c"),
                     init_words=_TIMED_OUT, quick=True),
    "truncate-c2s": NetFault("InitHello cut after 100 bytes, connection closed", Fault("truncate", "c2s", at=100),
                             init_words=("closed", "reset", "failed")),
    "truncate-s2c": NetFault("RespHello cut after 100 bytes, connection closed", Fault("truncate", "s2c", at=100),
                             init_words=("closed",), quick=True),
    "duplicate": NetFault("InitHello sent twice", Fault("duplicate", "c2s"), init_codes=(1, 3, 5)),
    "corrupt-c2s": NetFault("one byte of InitHello flipped (mac1 fails: dropped unanswered)",
                            Fault("corrupt", "c2s", at=200), init_words=("closed",), quick=True),
    "corrupt-s2c": NetFault("one byte of RespHello flipped", Fault("corrupt", "s2c", at=200), init_codes=(1, 3),
                            init_words=("authenticat", "signature", "confirm", "peer")),
    "reset": NetFault("TCP reset when the responder answers", Fault("reset", "s2c"), init_words=("reset", "closed"),
                      quick=True),
    "silent": NetFault("responder accepts and never answers", None, init_words=("timed out",), quick=True),
    "late": NetFault("responder starts 1.5 s after the initiator (retried)", None, ok=True, tls=False),
    "absent": NetFault("nobody listening (retry gives up)", None, init_words=("refused",)),
}

SECTIONS = [Section(
    SECTION, "A misbehaving network (fault proxy between the processes)",
    "Rows: what the network or the responder does.  Columns: two hybridkex exchange processes (ML-DSA-65, "
    "QKD sim link), and the TLS wrapper in hybrid mode.  Rows marked by their outcome either still agree on a "
    f"key, or end with one error line per failing side, the documented exit code and no key; waits use "
    f"--timeout {TIMEOUT:g}.",
    tuple(COLUMNS.values()))]


def cells() -> list[Cell]:
    out = []
    for key, f in NET_FAULTS.items():
        for col in COLUMNS if f.tls else ("exchange",):
            out.append(Cell(id=f"net/{key}/{col}", section=SECTION, row=f.label, column=COLUMNS[col],
                            scenario="net-fault", params={"fault": key, "column": col}, timeout=60.0,
                            quick=(f.quick and col == "exchange") or (key in ("drop", "corrupt-c2s") and col == "tls")))
    return out


def _args(ctx: CellContext, role: str, link: str) -> list[str]:
    me, peer = ("a", "b") if role == "initiator" else ("b", "a")
    return ["--identity", str(identity(ctx, "ml-dsa-65", me) / "id.key"),
            "--peer", str(identity(ctx, "ml-dsa-65", peer) / "id.pub"), "--qkd", "sim", "--qkd-link", link]


def _check_failed_side(ctx: CellContext, done: Finished, codes: tuple[int, ...], words: tuple[str, ...]) -> str:
    return expect_clean_failure(ctx, done, codes=codes, contains=words)


def _exchange(ctx: CellContext, f: NetFault, key: str) -> None:
    link = str(link_file(ctx))
    init, resp = _args(ctx, "initiator", link), _args(ctx, "responder", link)
    timeouts = ["--timeout", str(TIMEOUT)] if not f.ok else []
    if key == "silent":
        with SilentServer() as silent:
            done = spawn(ctx, "initiator", hkx("exchange", "--connect", f"127.0.0.1:{silent.port}", "--out",
                                               ctx.work / "init.key", *timeouts, *init)).finish(ctx, 30)
        error = _check_failed_side(ctx, done, f.init_codes, f.init_words)
        ctx.check(not (ctx.work / "init.key").exists(), "the initiator wrote a key")
        ctx.note(f"initiator exit {done.returncode}: {error[len(ERROR_PREFIX):].strip()[:160]}")
        return
    if key in ("late", "absent"):
        with SilentServer() as reserve:  # a free port, known in advance
            port = reserve.port
        initiator = spawn(ctx, "initiator", hkx("exchange", "--connect", f"127.0.0.1:{port}", "--out",
                                                ctx.work / "init.key", "--connect-retry",
                                                "10" if key == "late" else "1", "--json", *init))
        if key == "absent":
            done = initiator.finish(ctx, 30)
            error = _check_failed_side(ctx, done, f.init_codes, f.init_words)
            ctx.check(not (ctx.work / "init.key").exists(), "the initiator wrote a key")
            ctx.note(f"initiator exit {done.returncode} after retrying: {error[len(ERROR_PREFIX):].strip()[:160]}")
            return
        time.sleep(1.5)
        responder = spawn(ctx, "responder", hkx("exchange", "--listen", f"127.0.0.1:{port}", "--accept-timeout",
                                                "20", "--out", ctx.work / "resp.key", "--json", *resp))
        from ._hkx import ExchangeRun

        run = ExchangeRun(initiator.finish(ctx, 30), responder.finish(ctx, 30), ctx.work / "init.key",
                          ctx.work / "resp.key")
        check_agreed(ctx, run, qkd="sim")
        ctx.note("the initiator retried until the responder listened; same key on both sides")
        return
    assert f.fault is not None
    proxies: list[FaultProxy] = []

    def via(port: int) -> int:
        proxy = FaultProxy(("127.0.0.1", port), f.fault)
        proxy.start()
        ctx.cleanup.callback(proxy.close)
        proxies.append(proxy)
        return proxy.port

    run = run_exchange_pair(ctx, [*timeouts, *init], [*timeouts, *resp], via=via, timeout=30,
                            accept_timeout=30.0 if f.ok else ACCEPT_TIMEOUT)
    ctx.check(proxies and proxies[0].triggered.is_set() or f.fault.kind == "drop",
              "the fault was never applied (no bytes reached its offset)")
    if f.ok:
        check_agreed(ctx, run, qkd="sim")
        ctx.note(f"same key on both sides despite: {f.fault.describe()}")
        return
    error = _check_failed_side(ctx, run.initiator, f.init_codes, f.init_words)
    resp_error = _check_failed_side(ctx, run.responder, f.resp_codes, f.resp_words)
    for path in (run.init_key, run.resp_key):
        ctx.check(not path.exists(), f"{path.name} was written although the exchange failed")
    ctx.note(f"initiator exit {run.initiator.returncode}: {error[len(ERROR_PREFIX):].strip()[:120]}; "
             f"responder exit {run.responder.returncode}: {resp_error[len(ERROR_PREFIX):].strip()[:120]}")


def _tls(ctx: CellContext, f: NetFault, key: str) -> None:
    require_plugin(ctx, "tls", "pip install -e plugins/tls")
    link = str(link_file(ctx))
    timeouts = ["--timeout", str(TIMEOUT)] if not f.ok else []
    message = "hello across a bad network"

    def connect(port: int) -> Finished:
        client = spawn(ctx, "tls connect", hkx("tls", "connect", f"127.0.0.1:{port}", "--json", *timeouts,
                                               *_args(ctx, "initiator", link)), stdin=True)
        client.send(message + "\n")
        client.close_stdin()
        return client.finish(ctx, 40)

    if key == "silent":
        with SilentServer() as silent:
            rc = connect(silent.port)
        error = expect_clean_failure(ctx, rc, codes=f.init_codes, contains=f.init_words)
        ctx.note(f"client exit {rc.returncode}: {error[len(ERROR_PREFIX):].strip()[:160]}")
        return
    if key == "absent":
        with SilentServer() as reserve:
            port = reserve.port
        rc = connect(port)
        error = expect_clean_failure(ctx, rc, codes=f.init_codes, contains=f.init_words)
        ctx.note(f"client exit {rc.returncode}: {error[len(ERROR_PREFIX):].strip()[:160]}")
        return
    assert f.fault is not None
    server = spawn(ctx, "tls serve", hkx("tls", "serve", "--listen", "127.0.0.1:0", "--count", "1", "--echo",
                                         "--json", *timeouts, *_args(ctx, "responder", link)))
    m = server.wait_for(LISTENING_RE, ctx.remaining(20))
    if m is None:
        ctx.fail(f"'hybridkex tls serve' did not start listening: {server.stop().describe()}")
    with FaultProxy(("127.0.0.1", int(m.group(2))), f.fault) as proxy:
        rc = connect(proxy.port)
        rs = server.finish(ctx, 30)
    if f.ok:
        ctx.check(rc.returncode == 0 and rs.returncode == 0, f"{rc.describe()}; {rs.describe()}")
        ctx.check(message in rc.stdout, "the data did not come back through TLS")
        ctx.note(f"TLS connection worked despite: {f.fault.describe()}")
        return
    error = expect_clean_failure(ctx, rc, codes=f.init_codes, contains=f.init_words)
    ctx.check(message not in rc.stdout, "data crossed a connection that failed")
    ctx.check(not has_traceback(rs), "hybridkex tls serve printed a Python traceback")
    ctx.check(rs.returncode == 0, f"the server did not keep serving after a bad connection: {rs.describe()}")
    lines = [line for line in rs.stderr.splitlines() if _SERVE_ERROR_RE.match(line)]
    ctx.check(len(lines) == 1, f"the server printed {len(lines)} per-connection error lines, not 1")
    ctx.check(all(i.get("ok") is False for i in json_lines(rs)), "the server reported a successful connection")
    ctx.note(f"client exit {rc.returncode}: {error[len(ERROR_PREFIX):].strip()[:120]}; server: "
             f"{lines[0][:120]}")


def _run(ctx: CellContext) -> None:
    key, column = ctx.params["fault"], ctx.params["column"]
    runner: Callable[[CellContext, NetFault, str], None] = _exchange if column == "exchange" else _tls
    runner(ctx, NET_FAULTS[key], key)


SCENARIOS = {"net-fault": _run}
