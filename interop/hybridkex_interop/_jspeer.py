"""hybridkex-js (``interop/jspeer``, a second implementation of wire v2 written from
``docs/protocol.md`` alone, in JavaScript under node) <-> hybridkex, over loopback TCP.

The JS peer uses node's own crypto (X25519, HMAC, HKDF, ChaCha20-Poly1305, HTTPS with a client
certificate to the KME) and ``@oqs/liboqs-js`` for ML-KEM and ML-DSA.  liboqs-js cannot expand the
32-byte seed that ``hybridkex keygen`` stores, so the JS peer makes its own ML-DSA key pair
(``cli.mjs keygen``) and writes its public key as the PEM SubjectPublicKeyInfo ``id.pub`` that
hybridkex pins with ``--peer``; it pins hybridkex's ``id.pub`` the same way.

Rows: authentication · QKD · KEM, and fault rows where the proxy flips one byte of the
initiator's InitFinish or of the responder's RespFinish (so once a message of each
implementation in each column): both sides must then fail and write no key.  Columns: which
implementation is the initiator.  A separate matrix recomputes the vector files with the JS code.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

from ._cell import CellContext
from ._fixtures import identity, psk_file
from ._kmeproc import exchange_qkd_args, serve_kmes
from ._model import Cell, Section
from ._peers import liboqs_js, require_node
from ._procs import Finished, Spawned, error_lines, expect_clean_failure, expect_success, hkx, run, spawn
from ._proxy import Fault, FaultProxy

__all__ = ["SECTIONS", "cells", "SCENARIOS", "jspeer_cli"]

SECTION = "jspeer"
VECTOR_SECTION = "jspeer-vectors"
JS_INIT, PY_INIT = "js-py", "py-js"
COLUMNS = {JS_INIT: "hybridkex-js → hybridkex", PY_INIT: "hybridkex → hybridkex-js"}
AUTHS = ("psk", "ml-dsa-44", "ml-dsa-65", "ml-dsa-87")
QKDS = ("off", "etsi014")
KEMS = ("ml-kem-768", "ml-kem-1024")
FALLBACKS = ("slave-kme-down", "master-kme-down")
FAULTS = ("corrupt-init-finish", "corrupt-resp-finish")
NAMES = {"initiator": "alice", "responder": "bob"}
JS_ERROR = "hybridkex-js: error:"
_LISTENING = re.compile(r"listening on (\S+):(\d+)")
_QKD_LABEL = {"off": "no QKD", "etsi014": "QKD ETSI 014", "slave-kme-down": "QKD preferred, responder's KME down",
              "master-kme-down": "QKD preferred, initiator's KME down"}
_SIZES = {"ml-kem-768": (1184, 1088), "ml-kem-1024": (1568, 1568)}

SECTIONS = [
    Section(SECTION, "hybridkex-js (second implementation from the specification) ↔ hybridkex",
            "A JavaScript implementation of wire v2 written from docs/protocol.md alone (node crypto + liboqs-js) "
            "against hybridkex exchange, over loopback TCP.  Rows: authentication · QKD · KEM, and faults (one "
            "flipped byte of InitFinish or RespFinish, via the fault proxy).  Columns: initiator → responder.  An "
            "exchange passes when both exit 0 with the same 32-byte key (0600), the same suite, transcript hash, key "
            "fingerprint and QKD key_IDs, and print no key; a fault passes when both fail and neither writes a key.",
            tuple(COLUMNS.values())),
    Section(VECTOR_SECTION, "hybridkex-js recomputes the vectors",
            "The JS implementation recomputes the ETSI TS 103 744 CatKDF vectors and the protocol's component and "
            "whole-handshake vectors (docs/vectors) from their inputs; ML-KEM outputs and ML-DSA signatures are "
            "recorded values there (checked: signatures verify).", ("hybridkex-js",)),
]


def cells() -> list[Cell]:
    out = [Cell(id="jspeer/vectors", section=VECTOR_SECTION, row="CatKDF, component and handshake vectors",
                column="hybridkex-js", scenario="jspeer-vectors", timeout=120.0, quick=True)]
    quick = {("psk", "off", "ml-kem-768"), ("ml-dsa-65", "etsi014", "ml-kem-1024")}
    rows = [(a, q, k) for a in AUTHS for q in QKDS for k in KEMS]
    rows += [(a, f, "ml-kem-768") for a in ("psk", "ml-dsa-65") for f in FALLBACKS]
    for auth, qkd, kem in rows:
        for direction, column in COLUMNS.items():
            out.append(Cell(id=f"jspeer/exchange/{auth}/{qkd}/{kem}/{direction}", section=SECTION,
                            row=f"{auth.upper() if auth == 'psk' else auth.replace('ml-dsa', 'ML-DSA')} · "
                                f"{_QKD_LABEL[qkd]} · {kem.replace('ml-kem', 'ML-KEM')}",
                            column=column, scenario="jspeer-exchange",
                            params={"auth": auth, "qkd": qkd, "kem": kem, "direction": direction},
                            timeout=90.0, quick=(auth, qkd, kem) in quick))
    for fault in FAULTS:
        what = "InitFinish" if fault == "corrupt-init-finish" else "RespFinish"
        for direction, column in COLUMNS.items():
            out.append(Cell(id=f"jspeer/fault/{fault}/{direction}", section=SECTION,
                            row=f"fault · one flipped byte of {what} · PSK · ML-KEM-768", column=column,
                            scenario="jspeer-fault", params={"fault": fault, "direction": direction},
                            timeout=90.0))
    return out


# -- the JS peer ------------------------------------------------------------------------------------

def _repo() -> Path:
    return Path(__file__).resolve().parents[2]


def jspeer_cli(ctx: CellContext, *args: str | Path) -> list[str]:
    """Command line of ``node interop/jspeer/cli.mjs ARGS`` with the installed liboqs-js."""
    node = require_node(ctx)
    script = _repo() / "interop" / "jspeer" / "cli.mjs"
    ctx.require(script.is_file(), "interop/jspeer is not next to this package (run from a source checkout)")
    return [node, str(script), *(str(a) for a in args), "--liboqs-js", str(liboqs_js(ctx))]


def _js_identity(ctx: CellContext, alg: str) -> Path:
    directory = ctx.work / f"js-id-{alg}"
    expect_success(ctx, run(ctx, "jspeer keygen", jspeer_cli(ctx, "keygen", directory, "--alg", alg), timeout=60))
    return directory


def _auth_args(ctx: CellContext, auth: str, role: str, js: bool, js_id: Path | None) -> list[str]:
    if auth == "psk":
        me, peer = NAMES[role], NAMES["responder" if role == "initiator" else "initiator"]
        return ["--psk-file", str(psk_file(ctx)), "--name", me, "--peer-name", peer]
    assert js_id is not None
    py_id = identity(ctx, auth, "py")
    if js:
        return ["--identity", str(js_id / "id.key"), "--peer", str(py_id / "id.pub")]
    return ["--identity", str(py_id / "id.key"), "--peer", str(js_id / "id.pub")]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _qkd_args(ctx: CellContext, qkd: str) -> tuple[list[str], list[str]]:
    if qkd == "off":
        return [], []
    kmes = serve_kmes(ctx)
    qi, qr = exchange_qkd_args(kmes, "initiator"), exchange_qkd_args(kmes, "responder")
    if qkd == "etsi014":
        return qi, qr
    dead = f"https://127.0.0.1:{_closed_port()}"
    victim = qr if qkd == "slave-kme-down" else qi
    victim[victim.index("--kme-url") + 1] = dead
    return [*qi, "--qkd-policy", "preferred"], [*qr, "--qkd-policy", "preferred"]


def _start_responder(ctx: CellContext, argv: Sequence[str], name: str) -> tuple[Spawned, int]:
    proc = spawn(ctx, name, argv)
    m = proc.wait_for(_LISTENING, ctx.remaining(30))
    if m is None:
        done = proc.stop()
        ctx.fail(f"the {name} did not start listening: {done.describe()}")
    return proc, int(m.group(2))


def _pair(ctx: CellContext, direction: str, common: Sequence[str], init_extra: Sequence[str],
          resp_extra: Sequence[str], *, via: Callable[[int], int] | None = None,
          accept_timeout: float = 30.0) -> tuple[Finished, Finished, Path, Path]:
    """Responder listening on 127.0.0.1:0, initiator connecting (through ``via`` if given)."""
    init_key, resp_key = ctx.work / "init.key", ctx.work / "resp.key"
    js_init = direction == JS_INIT
    resp_args = ["exchange", "--listen", "127.0.0.1:0", "--accept-timeout", str(accept_timeout), "--timeout", "20",
                 "--out", str(resp_key), "--json", *common, *resp_extra]
    resp_argv = hkx(*resp_args) if js_init else jspeer_cli(ctx, *resp_args)
    responder, port = _start_responder(ctx, resp_argv, "responder (hybridkex)" if js_init else "responder (js)")
    target = via(port) if via is not None else port
    init_args = ["exchange", "--connect", f"127.0.0.1:{target}", "--connect-retry", "2", "--timeout", "20",
                 "--out", str(init_key), "--json", *common, *init_extra]
    initiator = spawn(ctx, "initiator (js)" if js_init else "initiator (hybridkex)",
                      jspeer_cli(ctx, *init_args) if js_init else hkx(*init_args))
    ri = initiator.finish(ctx, 60)
    rr = responder.finish(ctx, 60)
    return ri, rr, init_key, resp_key


def _summary(ctx: CellContext, done: Finished) -> dict[str, object]:
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    ctx.check(lines, f"{done.name} printed no JSON summary")
    summary: dict[str, object] = json.loads(lines[-1])
    return summary


def _check_js_success(ctx: CellContext, done: Finished) -> None:
    ctx.check(done.returncode == 0, f"{done.name} exited {done.returncode}: "
                                    f"{([ln for ln in done.stderr.splitlines() if JS_ERROR in ln] or ['?'])[0][:300]}")


def _exchange(ctx: CellContext) -> None:
    p = ctx.params
    js_init = p["direction"] == JS_INIT
    js_id = _js_identity(ctx, p["auth"]) if p["auth"] != "psk" else None
    qi, qr = _qkd_args(ctx, p["qkd"])
    init_extra = [*_auth_args(ctx, p["auth"], "initiator", js_init, js_id), *qi]
    resp_extra = [*_auth_args(ctx, p["auth"], "responder", not js_init, js_id), *qr]
    ri, rr, ki_path, kr_path = _pair(ctx, p["direction"], ["--kem", p["kem"]], init_extra, resp_extra)
    for done, is_js in ((ri, js_init), (rr, not js_init)):
        if is_js:
            _check_js_success(ctx, done)
        else:
            expect_success(ctx, done)
    ctx.check(ki_path.is_file() and kr_path.is_file(), "a side exited 0 but wrote no key file")
    ki, kr = ki_path.read_bytes(), kr_path.read_bytes()
    ctx.check(len(ki) == 32, f"the key file holds {len(ki)} bytes, not 32")
    ctx.check(ki == kr, "the two implementations wrote different keys")
    for path in (ki_path, kr_path):
        ctx.check(path.stat().st_mode & 0o077 == 0, f"{path.name} is readable by group or others")
    for done in (ri, rr):
        ctx.check(ki.hex() not in done.stdout + done.stderr, f"{done.name} printed the key")
    si, sr = _summary(ctx, ri), _summary(ctx, rr)
    for name in ("suite", "transcript_hash", "key_fingerprint", "qkd", "qkd_key_ids", "auth"):
        ctx.check(si.get(name) == sr.get(name), f"the sides disagree on {name}: {si.get(name)!r} vs {sr.get(name)!r}")
    ctx.check(p["kem"] in str(si["suite"]), f"suite {si['suite']} does not use {p['kem']}")
    want = {"off": "off", "etsi014": "used"}.get(p["qkd"], "unavailable")
    ctx.check(si["qkd"] == want, f"QKD {si['qkd']!r}, expected {want!r}")
    ctx.check(bool(si["qkd_key_ids"]) == (want == "used"), f"QKD key_IDs {si['qkd_key_ids']!r}")
    ctx.note(f"same key both sides, suite {si['suite']}, QKD {si['qkd']}, transcript hashes equal")


def _frame_sizes(kem: str) -> tuple[int, int]:
    """(InitHello, RespHello) frame sizes in PSK mode with one PSK, empty context, two offered suites."""
    ek, ct = _SIZES[kem]
    ih = 8 + 8 + 32 + (1 + 2 * 2) + 1 + 1 + 1 + (1 + 32) + (2 + ek) + (1 + 16) + 32
    rh = 8 + 32 + 2 + 1 + (1 + 32) + (2 + ct) + 1 + 2 + (2 + 0 + 2 + 32 + 16)
    return ih, rh


def _fault(ctx: CellContext) -> None:
    p = ctx.params
    js_init = p["direction"] == JS_INIT
    ih, rh = _frame_sizes("ml-kem-768")
    if p["fault"] == "corrupt-init-finish":   # a byte inside InitFinish's sealed payload, whatever the suite count
        fault = Fault("corrupt", "c2s", at=ih + 50)
        sender = "hybridkex-js" if js_init else "hybridkex"
    else:                                      # a byte inside RespFinish's sealed payload
        fault = Fault("corrupt", "s2c", at=rh + 20)
        sender = "hybridkex" if js_init else "hybridkex-js"
    with FaultProxy(("127.0.0.1", 0), fault) as proxy:
        def via(port: int) -> int:
            proxy.target = ("127.0.0.1", port)
            return proxy.port

        ri, rr, ki, kr = _pair(ctx, p["direction"], ["--kem", "ml-kem-768"],
                               _auth_args(ctx, "psk", "initiator", js_init, None),
                               _auth_args(ctx, "psk", "responder", not js_init, None), via=via, accept_timeout=8.0)
        ctx.check(proxy.triggered.is_set(), f"the proxy never reached byte {fault.at} ({fault.direction})")
    for done, is_js in ((ri, js_init), (rr, not js_init)):
        if is_js:
            ctx.check(done.returncode != 0, f"{done.name} exited 0 although {sender}'s message was corrupted")
            errs = [ln for ln in done.stderr.splitlines() if ln.startswith(JS_ERROR)]
            ctx.check(len(errs) == 1, f"{done.name} printed {len(errs)} error lines, not 1")
        else:
            expect_clean_failure(ctx, done)
    ctx.check(not ki.exists() and not kr.exists(), "a side wrote a key although the exchange failed")
    said = [(error_lines(d) or [ln for ln in d.stderr.splitlines() if ln.startswith(JS_ERROR)] or ["?"])[0]
            for d in (ri, rr)]
    ctx.note(f"{fault.describe()} ({sender}'s message): both failed, no key; initiator: {said[0][:120]}; "
             f"responder: {said[1][:120]}")


def _vectors(ctx: CellContext) -> None:
    repo = _repo()
    catkdf = repo / "tests" / "data" / "etsi-ts103744-catkdf.json"
    vectors = repo / "docs" / "vectors"
    ctx.require(catkdf.is_file(), "tests/data/etsi-ts103744-catkdf.json is not here (run from a source checkout)")
    done = run(ctx, "jspeer catkdf", jspeer_cli(ctx, "catkdf", catkdf), timeout=60)
    ctx.check(done.returncode == 0, f"CatKDF vectors: {done.stdout.strip().splitlines()[-1:]} {done.stderr[-300:]}")
    ctx.note(done.stdout.strip().splitlines()[-1])
    ctx.check((vectors / "hybridkex-v2-handshakes.json").is_file(),
              "docs/vectors/hybridkex-v2-handshakes.json is missing")
    done = run(ctx, "jspeer vectors", jspeer_cli(ctx, "vectors", vectors), timeout=90)
    last = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
    mismatches = [json.loads(ln)["mismatch"] for ln in done.stdout.splitlines() if ln.startswith('{"mismatch"')]
    ctx.check(done.returncode == 0, f"{last.get('mismatches', '?')} vector mismatches: {'; '.join(mismatches[:3])} "
                                    f"{done.stderr[-300:]}")
    ctx.note(f"docs/vectors: {last.get('checks_passed')} checks in {last.get('vector_groups')} groups, no mismatch")


SCENARIOS: dict[str, Callable[[CellContext], None]] = {
    "jspeer-exchange": _exchange, "jspeer-fault": _fault, "jspeer-vectors": _vectors}
