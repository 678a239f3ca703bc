"""hybridkex <-> hybridkex: two ``hybridkex`` processes over loopback TCP, dimension by dimension.

Dimensions: crypto backend of each side (``cryptography``, ``liboqs``), KEM (ML-KEM-768,
ML-KEM-1024), authentication (ML-DSA-44/65/87, PSK, QKD-replenished PSK via
``--psk-ratchet``), QKD source (off, simulated link, ETSI GS QKD 014 via ``hybridkex kme
serve``) and integration (plain exchange, TLS wrapper, WireGuard rotator).  Rows are
(integration, authentication, QKD, KEM); columns are backend pairs, initiator first.

The quick run takes a pairwise covering of (integration, authentication, QKD, KEM) with
both sides on ``cryptography``, plus liboqs columns for a few rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ._cell import CellContext
from ._fixtures import identity, link_file, psk_file
from ._kmeproc import exchange_qkd_args, serve_kmes
from ._model import Cell, Section
from ._pairwise import pairwise
from ._procs import LISTENING_RE, Finished, expect_success, hkx, run, spawn

__all__ = ["SECTIONS", "cells", "SCENARIOS", "run_exchange_pair", "ExchangeRun", "auth_args", "qkd_sides",
           "BACKENDS", "require_backends", "missing_backend", "check_agreed", "check_ratchet", "PSK_NAMES"]

SECTION = "hkx"
BACKENDS = ("cryptography", "liboqs")
BACKEND_PAIRS = tuple((i, r) for i in BACKENDS for r in BACKENDS)
KEMS = ("ml-kem-768", "ml-kem-1024")
AUTHS = ("ml-dsa-44", "ml-dsa-65", "ml-dsa-87", "psk", "psk-ratchet")
QKDS = ("off", "sim", "etsi014")
INTEGRATIONS = ("exchange", "tls", "wg")

_KEM_LABEL = {"ml-kem-768": "ML-KEM-768", "ml-kem-1024": "ML-KEM-1024"}
_AUTH_LABEL = {"ml-dsa-44": "ML-DSA-44", "ml-dsa-65": "ML-DSA-65", "ml-dsa-87": "ML-DSA-87", "psk": "PSK",
               "psk-ratchet": "PSK ratchet"}
_QKD_LABEL = {"off": "no QKD", "sim": "QKD sim link", "etsi014": "QKD ETSI 014"}
_INTEGRATION_LABEL = {"exchange": "exchange", "tls": "TLS wrapper", "wg": "WireGuard rotator"}


def _column(init: str, resp: str) -> str:
    return f"{init} → {resp}"


SECTIONS = [Section(
    SECTION, "hybridkex ↔ hybridkex (separate processes)",
    "Two hybridkex processes agree on a key over loopback TCP.  Rows: integration · authentication · QKD "
    "source · KEM; columns: crypto backend of the initiator → the responder.  A cell passes when both "
    "sides exit 0, write the same 32-byte key (mode 0600), report the same suite, transcript hash and "
    "QKD key_IDs, and print no key.",
    tuple(_column(i, r) for i, r in BACKEND_PAIRS))]


def _cell(integration: str, auth: str, qkd: str, kem: str, init: str, resp: str, quick: bool) -> Cell:
    row = f"{_INTEGRATION_LABEL[integration]} · {_AUTH_LABEL[auth]} · {_QKD_LABEL[qkd]} · {_KEM_LABEL[kem]}"
    timeout = {"exchange": 60.0, "tls": 90.0, "wg": 120.0}[integration]
    return Cell(id=f"hkx/{integration}/{auth}/{qkd}/{kem}/{init}-{resp}", section=SECTION, row=row,
                column=_column(init, resp), scenario=f"hkx-{integration}",
                params={"auth": auth, "qkd": qkd, "kem": kem, "init_backend": init, "resp_backend": resp},
                timeout=timeout, quick=quick, needs=("liboqs",) if "liboqs" in (init, resp) else ())


def cells() -> list[Cell]:
    """Every row for every backend pair; the quick flags mark a pairwise covering subset."""
    quick_rows = {tuple(r) for r in pairwise([INTEGRATIONS, AUTHS, QKDS, KEMS])}
    # liboqs on one or both sides, in the quick run: a few rows that together use every KEM and
    # both authentication families, so a liboqs machine gets each value crossed with liboqs.
    liboqs_rows = {
        ("cryptography", "liboqs"): ("exchange", "ml-dsa-65", "off", "ml-kem-768"),
        ("liboqs", "cryptography"): ("exchange", "psk", "sim", "ml-kem-1024"),
        ("liboqs", "liboqs"): ("exchange", "ml-dsa-87", "etsi014", "ml-kem-1024"),
    }
    out = []
    for integration in INTEGRATIONS:
        for auth in AUTHS:
            for qkd in QKDS:
                for kem in KEMS:
                    row = (integration, auth, qkd, kem)
                    for init, resp in BACKEND_PAIRS:
                        if (init, resp) == ("cryptography", "cryptography"):
                            quick = row in quick_rows
                        else:
                            quick = liboqs_rows.get((init, resp)) == row
                        out.append(_cell(integration, auth, qkd, kem, init, resp, quick))
    return out


# -- building blocks shared with the fault scenarios ------------------------------------------------

def missing_backend(name: str) -> str | None:
    """Why backend ``name`` cannot be used here (the skip reason), or None when it can."""
    from hybridkex.backends import available_backends

    reason = available_backends().get(name, "unknown backend")
    return None if reason is None else f"{name} not installed"


def require_backends(ctx: CellContext, *names: str) -> None:
    """Skip when a requested backend is not installed (liboqs is optional: a skip even in CI)."""
    for name in sorted(set(names)):
        reason = missing_backend(name)
        if reason is not None:
            ctx.skip(reason)


#: PSK mode binds both parties' names: the initiator is alice, the responder bob, each naming the other.
PSK_NAMES = {"initiator": ("alice", "bob"), "responder": ("bob", "alice")}


def auth_args(ctx: CellContext, auth: str, role: str) -> list[str]:
    """Authentication flags of one side.  ML-DSA: each side its own identity and the other's pinned (an
    initiator pins exactly its responder).  PSK: the shared key and both names.  PSK ratchet: the state
    is created on first use with ``hybridkex psk ratchet-init``, as an operator does once per side."""
    if auth.startswith("ml-dsa"):
        me, peer = ("a", "b") if role == "initiator" else ("b", "a")
        return ["--identity", str(identity(ctx, auth, me) / "id.key"),
                "--peer", str(identity(ctx, auth, peer) / "id.pub")]
    name, peer_name = PSK_NAMES[role]
    args = ["--psk-file", str(psk_file(ctx)), "--name", name, "--peer-name", peer_name]
    if auth == "psk-ratchet":
        state = ctx.work / f"{role}.ratchet"
        if not state.exists():
            expect_success(ctx, run(ctx, f"psk ratchet-init ({role})",
                                    hkx("psk", "ratchet-init", state, "--psk-file", psk_file(ctx)), timeout=30))
        args += ["--psk-ratchet", str(state)]
    return args


def qkd_sides(ctx: CellContext, qkd: str) -> tuple[list[str], list[str]]:
    """QKD flags of (initiator, responder); starts ``hybridkex kme serve`` for ``etsi014``."""
    if qkd == "off":
        return [], []
    if qkd == "sim":
        link = link_file(ctx)
        both = ["--qkd", "sim", "--qkd-link", str(link)]
        return both, list(both)
    kmes = serve_kmes(ctx)
    return exchange_qkd_args(kmes, "initiator"), exchange_qkd_args(kmes, "responder")


@dataclass(frozen=True)
class ExchangeRun:
    """Both sides of one exchange and where each was told to write its key."""

    initiator: Finished
    responder: Finished
    init_key: Path
    resp_key: Path


def run_exchange_pair(ctx: CellContext, init_args: Sequence[str], resp_args: Sequence[str], *, tag: str = "",
                      via: Callable[[int], int] | None = None, timeout: float = 30.0,
                      accept_timeout: float = 30.0) -> ExchangeRun:
    """Run a responder (``--listen 127.0.0.1:0``) and an initiator against it, as processes.

    ``via`` maps the responder's port to the port the initiator connects to (a fault proxy).
    """
    init_key, resp_key = ctx.work / f"init{tag}.key", ctx.work / f"resp{tag}.key"
    responder = spawn(ctx, f"responder{tag}", hkx("exchange", "--listen", "127.0.0.1:0", "--accept-timeout",
                                                  str(accept_timeout), "--out", resp_key, "--json", *resp_args))
    m = responder.wait_for(LISTENING_RE, ctx.remaining(20))
    if m is None:
        done = responder.finish(ctx, 10)
        ctx.fail(f"the responder did not start listening: {done.describe()}")
    port = int(m.group(2))
    target = via(port) if via is not None else port
    initiator = spawn(ctx, f"initiator{tag}", hkx("exchange", "--connect", f"127.0.0.1:{target}", "--out", init_key,
                                                  "--json", "--connect-retry", "2", *init_args))
    ri = initiator.finish(ctx, timeout + 15)
    rr = responder.finish(ctx, timeout + 15)
    return ExchangeRun(ri, rr, init_key, resp_key)


def _summary(ctx: CellContext, done: Finished) -> dict[str, object]:
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    ctx.check(lines, f"{done.name} printed no JSON summary")
    summary: dict[str, object] = json.loads(lines[-1])
    return summary


def check_agreed(ctx: CellContext, run: ExchangeRun, *, kem: str | None = None, qkd: str | None = None,
                 auth: str | None = None) -> dict[str, object]:
    """Both sides succeeded and agree; returns the initiator's summary."""
    for done in (run.initiator, run.responder):
        expect_success(ctx, done)
    ctx.check(run.init_key.is_file() and run.resp_key.is_file(), "a side exited 0 but wrote no key file")
    ki, kr = run.init_key.read_bytes(), run.resp_key.read_bytes()
    ctx.check(len(ki) == 32, f"the key file holds {len(ki)} bytes, not 32")
    ctx.check(ki == kr, "the two sides wrote different keys")
    for path in (run.init_key, run.resp_key):
        ctx.check(path.stat().st_mode & 0o077 == 0, f"{path.name} is readable by group or others")
    for done in (run.initiator, run.responder):
        ctx.check(ki.hex() not in done.stdout + done.stderr, f"{done.name} printed the key")
    si, sr = _summary(ctx, run.initiator), _summary(ctx, run.responder)
    for name in ("suite", "transcript_hash", "key_fingerprint", "qkd", "qkd_key_ids"):
        ctx.check(si.get(name) == sr.get(name), f"the sides disagree on {name}: {si.get(name)!r} vs "
                                                 f"{sr.get(name)!r}")
    if kem is not None:
        ctx.check(kem in str(si["suite"]), f"suite {si['suite']} does not use {kem}")
    if qkd is not None:
        want = "off" if qkd == "off" else "used"
        ctx.check(si["qkd"] == want, f"QKD status {si['qkd']!r}, expected {want!r} ({si.get('qkd_reason')})")
        ids = si["qkd_key_ids"]
        ctx.check(isinstance(ids, list) and (len(ids) >= 1) == (qkd != "off"), f"QKD key_IDs {ids!r}")
    if auth is not None:
        want_auth = "psk" if auth.startswith("psk") else auth
        ctx.check(si["auth"] == want_auth and sr["auth"] == want_auth,
                  f"authenticated by {si['auth']}/{sr['auth']}, expected {want_auth}")
    return si


def check_ratchet(ctx: CellContext, qkd: str, rounds: int) -> None:
    """After ``rounds`` exchanges with ``--psk-ratchet``, both state files hold the same current and
    previous keys at that epoch, QKD-fed when QKD was on."""
    states = []
    for role in ("initiator", "responder"):
        path = ctx.work / f"{role}.ratchet"
        ctx.check(path.is_file(), f"the {role} has no ratchet state (created by 'hybridkex psk ratchet-init')")
        states.append(json.loads(path.read_text()))
    si, sr = states
    ctx.check(si["current"]["key"] == sr["current"]["key"], "the two ratchet states hold different current keys")
    ctx.check((si["previous"] or {}).get("key") == (sr["previous"] or {}).get("key"),
              "the two ratchet states hold different previous keys")
    ctx.check(si["epoch"] == sr["epoch"] == rounds, f"ratchet epochs {si['epoch']}/{sr['epoch']}, expected {rounds}")
    ctx.check(si["current"]["qkd_fed"] == (qkd != "off"),
              f"ratchet current key qkd_fed is {si['current']['qkd_fed']} with QKD {qkd}")


# -- scenarios --------------------------------------------------------------------------------------

def _exchange(ctx: CellContext) -> None:
    p = ctx.params
    require_backends(ctx, p["init_backend"], p["resp_backend"])
    qi, qr = qkd_sides(ctx, p["qkd"])
    common = ["--kem", p["kem"]]
    rounds = 2 if p["auth"] == "psk-ratchet" else 1
    fingerprints = []
    for n in range(rounds):
        run = run_exchange_pair(
            ctx, [*common, "--backend", p["init_backend"], *auth_args(ctx, p["auth"], "initiator"), *qi],
            [*common, "--backend", p["resp_backend"], *auth_args(ctx, p["auth"], "responder"), *qr], tag=str(n))
        summary = check_agreed(ctx, run, kem=p["kem"], qkd=p["qkd"], auth=p["auth"])
        fingerprints.append(summary["key_fingerprint"])
    ctx.note(f"same key on both sides, suite {summary['suite']}, QKD {summary['qkd']}")
    if rounds == 2:
        check_ratchet(ctx, p["qkd"], rounds)
        ctx.check(fingerprints[0] != fingerprints[1], "two ratchet exchanges produced the same key")
        ctx.note("ratchet advanced to epoch 2 on both sides with equal keys")


#: The integration rows' scenarios ("hkx-tls", "hkx-wg") live with their code in :mod:`._integrations`.
SCENARIOS: dict[str, Callable[[CellContext], None]] = {"hkx-exchange": _exchange}
