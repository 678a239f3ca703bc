"""ETSI GS QKD 014: an independent client against the KME simulator, and a KME that misbehaves.

Section ``etsi014``: the third-party client from PyPI (``etsi-qkd-014-client``, run in its
own interpreter) and hybridkex's client, each as master SAE at KME A and as slave SAE at KME
B of ``hybridkex kme serve``, in every combination: both slaves must get exactly the keys
the master got.  Refusals (a consumed key_ID, an SAE at the wrong KME) must be the
documented status codes.

Section ``kme-faults``: the simulator in-process (its fault-injection hooks) with every
documented KME error injected, seen by hybridkex's client (the documented exception and no
key) and by two ``hybridkex exchange`` processes (``--qkd-policy required``: one error line
each, exit code 4 on the side that met the KME, no key written; ``preferred``: a key without
QKD, said so in the JSON line).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from ._cell import CellContext
from ._fixtures import SAE_A, SAE_B, SAE_OTHER, kme_pki
from ._hkx import auth_args, check_agreed, run_exchange_pair
from ._kmeproc import ServedKMEs, etsi014_client, exchange_qkd_args, kme_pair, serve_kmes
from ._model import Cell, Section
from ._peers import THIRD_PARTY_ETSI014, etsi014_client_path
from ._procs import Spawned, expect_clean_failure, hkx, spawn

__all__ = ["SECTIONS", "cells", "SCENARIOS"]

TP = THIRD_PARTY_ETSI014.name
HK = "hybridkex"
_CLIENT_COLUMNS = {(TP, TP): f"{TP} → {TP}", (TP, HK): f"{TP} → {HK}", (HK, TP): f"{HK} → {TP}",
                   (HK, HK): f"{HK} → {HK}"}
_CLIENT_ROWS = {
    "status": "Get status (§5.2) at KME A and at KME B",
    "keys": "Get key (§5.3) at KME A, Get key with key IDs (§5.4) at KME B: same keys",
    "replay": "a consumed key_ID asked again: 400, no key",
    "unauthorised": "an SAE at a KME that does not serve it: 401, no key",
}

SECTIONS = [
    Section("etsi014", f"ETSI GS QKD 014 clients ({TP} {THIRD_PARTY_ETSI014.version} from PyPI, and hybridkex's) "
                       "↔ hybridkex kme serve",
            "Columns: the client used as master SAE (alice, at KME A) → the client used as slave SAE (bob, at KME "
            "B); single-client rows use the left client alone.  Keys are compared byte for byte.",
            tuple(_CLIENT_COLUMNS.values())),
    Section("kme-faults", "A misbehaving KME (faults injected into the simulator)",
            "Rows: the fault and the KME it is injected at (A serves the initiator, the master SAE; B the "
            "responder, the slave SAE).  Columns: hybridkex's ETSI 014 client alone (the documented exception, "
            "no key), and two hybridkex exchange processes with QKD policy required (one error line each, exit "
            "code 4 where the KME was met, no key written) or preferred (a key without QKD, reported).",
            ("ETSI 014 client", "exchange, QKD required", "exchange, QKD preferred")),
]


def _client_cells() -> list[Cell]:
    out = []
    for row, label in _CLIENT_ROWS.items():
        pairs = list(_CLIENT_COLUMNS) if row == "keys" else [(TP, TP), (HK, HK)]
        for master, slave in pairs:
            tag = f"{'tp' if master == TP else 'hk'}-{'tp' if slave == TP else 'hk'}"
            out.append(Cell(id=f"etsi014/{row}/{tag}", section="etsi014", row=label,
                            column=_CLIENT_COLUMNS[(master, slave)], scenario="etsi014-clients",
                            params={"row": row, "master": master, "slave": slave}, timeout=300.0, quick=True))
    return out


@dataclass(frozen=True)
class KMEFault:
    """One injected KME fault and what each column must observe."""

    label: str
    at: str
    """KME the fault is injected at: ``a`` (master, enc_keys) or ``b`` (slave, dec_keys)."""
    lib_error: str | None
    """Exception class name the client must raise (None: the call succeeds)."""
    lib_words: tuple[str, ...]
    """Words one of which the exception message must hold."""
    exchange: bool = True
    """Whether the exchange columns apply."""
    exchange_ok: bool = False
    """Whether the exchange with QKD required succeeds (with the QKD key)."""
    quick: tuple[str, ...] = ("lib",)
    """Columns in the quick run: ``lib``, ``required``, ``preferred``."""
    timeout: float = 60.0


FAULTS: dict[str, KMEFault] = {
    "503-once": KMEFault("503 once, then keys (retried)", "a", None, (), exchange_ok=True,
                         quick=("lib", "required")),
    "503-always": KMEFault("503 on every request", "a", "KMEError", ("503",), quick=("lib", "required",
                                                                                    "preferred")),
    "malformed-json": KMEFault("malformed JSON in the key container", "a", "KMEResponseError", ("not JSON",),
                               quick=("lib", "required")),
    "short-keys": KMEFault("keys one byte short", "b", "KMEResponseError", ("bits",)),
    "mismatched-ids": KMEFault("other key_IDs than asked for", "b", "KMEResponseError", ("key_IDs",),
                               quick=("lib", "preferred")),
    "duplicate-ids": KMEFault("the same key_ID twice in one container", "a", "KMEResponseError", ("twice",),
                              exchange=False),
    "slow-ok": KMEFault("slow: 0.5 s per answer (within the timeout)", "a", None, (), exchange_ok=True),
    "slow-timeout": KMEFault("slow: no answer within the client's timeout", "a", "QKDUnavailable",
                             ("did not answer",), timeout=90.0),
    "down": KMEFault("KME down (connection refused)", "a", "QKDUnavailable", ("refused",),
                     quick=("lib", "required")),
    "drops": KMEFault("KME closes every connection", "b", "QKDUnavailable", ("closed", "connection", "TLS")),
    "replay": KMEFault("key_ID already delivered (replay)", "b", "KMEKeyReplay", ("already consumed",),
                       exchange=False),
    "unauthorised": KMEFault("SAE certificate not served by this KME (401)", "a", "KMEError", ("401",)),
    "bad-size": KMEFault("key size not a multiple of 8 bits (400)", "a", "KMEError", ("400",), exchange=False),
    "plain-http": KMEFault("plain http:// KME URL without the insecure flag", "a", "ConfigError",
                           ("http",)),
    "tapped": KMEFault("eavesdropper on the QKD link: QBER too high, pool dry (503)", "a", "KMEError",
                       ("503",), quick=("lib",)),
}
_FAULT_COLUMNS = {"lib": "ETSI 014 client", "required": "exchange, QKD required",
                  "preferred": "exchange, QKD preferred"}


def _fault_cells() -> list[Cell]:
    out = []
    for key, f in FAULTS.items():
        row = f"{f.label} @ KME {f.at.upper()}"
        for col in ("lib", "required", "preferred") if f.exchange else ("lib",):
            out.append(Cell(id=f"kme-fault/{key}/{col}", section="kme-faults", row=row, column=_FAULT_COLUMNS[col],
                            scenario="kme-fault", params={"fault": key, "column": col}, timeout=f.timeout,
                            quick=col in f.quick))
    return out


def cells() -> list[Cell]:
    return _client_cells() + _fault_cells()


# -- the third-party client ----------------------------------------------------------------------------

class ThirdPartyClient:
    """``etsi-qkd-014-client`` in its own interpreter (``peers/etsi014_peer.py``), as one SAE at one KME."""

    def __init__(self, ctx: CellContext, kmes: ServedKMEs, sae: str, kme_url: str | None = None) -> None:
        self.ctx = ctx
        target = etsi014_client_path(ctx)
        script = resources.files("hybridkex_interop").joinpath("peers/etsi014_peer.py")
        host = (kme_url or kmes.url_for(sae)).split("://", 1)[1]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env["PYTHONPATH"] = str(target)
        # -I would drop PYTHONPATH; -s keeps user site-packages out, so only the target's packages count.
        self.proc: Spawned = spawn(ctx, f"{TP} {sae}", [sys.executable, "-s", str(script), host,
                                                        str(kmes.pki / f"{sae}.crt"), str(kmes.pki / f"{sae}.key"),
                                                        str(kmes.pki / "ca.crt")], env=env, stdin=True,
                                   log_stdout=False)

    def request(self, req: dict[str, Any]) -> dict[str, Any]:
        self.proc.send(json.dumps(req) + "\n")
        line = self.proc.read_line(self.ctx.remaining(30))
        if line is None:
            self.ctx.fail(f"{TP} did not answer {req['op']}: {self.proc.stop().describe()}")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            self.ctx.fail(f"{TP} raised on {req['op']}: {answer.get('error')}")
        return answer


def _keys(answer: dict[str, Any]) -> list[tuple[str, bytes]]:
    return [(k["key_ID"], base64.b64decode(k["key"])) for k in answer.get("keys", [])]


def _client_scenario(ctx: CellContext) -> None:
    p = ctx.params
    kmes = serve_kmes(ctx)
    tp_used = TP in (p["master"], p["slave"])
    if tp_used:
        ctx.note(f"{TP} {THIRD_PARTY_ETSI014.version}")
    if p["row"] == "status":
        for sae, peer, kme_id in ((SAE_A, SAE_B, "kme-a"), (SAE_B, SAE_A, "kme-b")):
            if p["master"] == TP:
                ans = ThirdPartyClient(ctx, kmes, sae).request({"op": "status", "slave": peer})
                ctx.check(ans["code"] == 200, f"status at {kme_id}: {ans}")
                st = ans["status"]
                got = (st["source_kme_id"], st["master_sae_id"], st["slave_sae_id"], st["key_size"])
            else:
                s = etsi014_client(kmes, sae, peer).status()
                got = (s.source_kme_id, s.master_sae_id, s.slave_sae_id, s.key_size)
            ctx.check(got == (kme_id, sae, peer, 256), f"status at {kme_id} describes {got}")
        ctx.note("both KMEs report themselves, the SAE pair and 256-bit keys")
        return
    if p["row"] == "keys":
        number, size = 2, 256
        if p["master"] == TP:
            ans = ThirdPartyClient(ctx, kmes, SAE_A).request({"op": "get_key", "slave": SAE_B, "number": number,
                                                              "size": size})
            ctx.check(ans["code"] == 200, f"get_key at KME A answered {ans.get('code')}: {ans.get('message')}")
            master = _keys(ans)
        else:
            master = [(str(k.key_id), k.key) for k in etsi014_client(kmes, SAE_A, SAE_B).get_new_keys(number, size)]
        ctx.check(len(master) == number and all(len(k) == size // 8 for _, k in master),
                  f"the master got {len(master)} keys of sizes {[len(k) for _, k in master]}")
        ids = [i for i, _ in master]
        if p["slave"] == TP:
            ans = ThirdPartyClient(ctx, kmes, SAE_B).request({"op": "get_key_with_key_IDs", "master": SAE_A,
                                                              "key_ids": ids})
            ctx.check(ans["code"] == 200, f"get_key_with_key_IDs at KME B answered {ans.get('code')}: "
                                          f"{ans.get('message')}")
            slave = _keys(ans)
        else:
            slave = [(str(k.key_id), k.key) for k in
                     etsi014_client(kmes, SAE_B, SAE_A).get_keys_by_id([uuid.UUID(i) for i in ids])]
        ctx.check(slave == master, "the slave SAE got other keys or key_IDs than the master SAE")
        ctx.note(f"{number} keys of {size} bits: identical at KME A ({p['master']}) and KME B ({p['slave']})")
        return
    if p["row"] == "replay":
        got = etsi014_client(kmes, SAE_A, SAE_B).get_new_keys(1)
        ids = [str(got[0].key_id)]
        if p["master"] == TP:
            bob = ThirdPartyClient(ctx, kmes, SAE_B)
            first = bob.request({"op": "get_key_with_key_IDs", "master": SAE_A, "key_ids": ids})
            ctx.check(first["code"] == 200, f"the first dec_keys failed: {first}")
            again = bob.request({"op": "get_key_with_key_IDs", "master": SAE_A, "key_ids": ids})
            ctx.check(again["code"] == 400 and not again.get("keys"), f"a consumed key_ID was answered {again}")
            ctx.note(f"400: {again.get('message')}")
        else:
            bob_client = etsi014_client(kmes, SAE_B, SAE_A)
            bob_client.get_keys_by_id([got[0].key_id])
            _expect_raises(ctx, lambda: bob_client.get_keys_by_id([got[0].key_id]), "KMEKeyReplay",
                           ("already consumed",))
        return
    # unauthorised: mallory's certificate at KME A, which serves alice
    if p["master"] == TP:
        ans = ThirdPartyClient(ctx, kmes, SAE_OTHER, kme_url=kmes.url_a).request(
            {"op": "get_key", "slave": SAE_B, "number": 1})
        ctx.check(ans["code"] == 401 and not ans.get("keys"), f"an unauthorised SAE was answered {ans}")
        ctx.note(f"401: {ans.get('message')}")
    else:
        from hybridkex.qkd import Etsi014Client

        mallory = Etsi014Client(kmes.url_a, ca=kmes.pki / "ca.crt", sae_cert=kmes.pki / f"{SAE_OTHER}.crt",
                                sae_key=kmes.pki / f"{SAE_OTHER}.key", sae_id=SAE_OTHER, peer_sae_id=SAE_B)
        _expect_raises(ctx, lambda: mallory.get_new_keys(1), "KMEError", ("401",))


def _expect_raises(ctx: CellContext, call: Callable[[], object], name: str, words: tuple[str, ...]) -> None:
    try:
        result = call()
    except Exception as exc:
        names = [c.__name__ for c in type(exc).__mro__]
        ctx.check(name in names, f"raised {type(exc).__name__} ({exc}), expected {name}")
        ctx.check(any(w.lower() in str(exc).lower() for w in words), f"{type(exc).__name__} does not say "
                                                                      f"{' or '.join(words)}: {exc}")
        ctx.check("Traceback" not in str(exc), "the error message holds a traceback")
        ctx.note(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return
    ctx.fail(f"no error: the client returned {type(result).__name__} where {name} was expected")


# -- injected KME faults ---------------------------------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _inject(pair: Any, key: str) -> None:
    """Arm fault ``key`` on the pair (counter faults for the next 1000 requests, so retries see them too)."""
    f = FAULTS[key]
    faults = (pair.a if f.at == "a" else pair.b).faults
    many = 1000
    if key == "503-once":
        faults.status_503 = 1
    elif key == "503-always":
        faults.status_503 = many
    elif key == "malformed-json":
        faults.malformed_json = many
    elif key == "short-keys":
        faults.short_keys = many
    elif key == "mismatched-ids":
        faults.mismatched_ids = many
    elif key == "duplicate-ids":
        faults.duplicate_ids = many
    elif key == "slow-ok":
        faults.delay = 0.5
    elif key == "slow-timeout":
        faults.delay = 12.0
    elif key == "drops":
        faults.refuse = True


def _served(pair: Any, pki: Any, key: str) -> ServedKMEs:
    url_a, url_b = pair.url_a, pair.url_b
    if key == "down":
        url_a = f"https://127.0.0.1:{_closed_port()}"
    elif key == "plain-http":
        url_a = url_a.replace("https://", "http://")
    return ServedKMEs(url_a, url_b, pki)


def _lib_column(ctx: CellContext, key: str, pair: Any, kmes: ServedKMEs) -> None:
    from hybridkex.qkd import Etsi014Client

    f = FAULTS[key]
    options: dict[str, Any] = {"timeout": 2.0 if key == "slow-timeout" else 10.0, "retries": 3, "backoff": 0.05}
    if key == "slow-timeout":
        (pair.a.faults).delay = 4.0

    def alice() -> Any:
        if key == "unauthorised":
            return Etsi014Client(kmes.url_a, ca=kmes.pki / "ca.crt", sae_cert=kmes.pki / f"{SAE_OTHER}.crt",
                                 sae_key=kmes.pki / f"{SAE_OTHER}.key", sae_id=SAE_OTHER, peer_sae_id=SAE_B,
                                 **options)
        return etsi014_client(kmes, SAE_A, SAE_B, **options)

    if f.at == "a":
        number = 2 if key == "duplicate-ids" else 1
        size = 12 if key == "bad-size" else 256
        if f.lib_error is None:
            keys = alice().get_new_keys(number, size)
            ctx.check(len(keys) == number and all(len(k.key) == size // 8 for k in keys), "wrong keys")
            bob_keys = etsi014_client(kmes, SAE_B, SAE_A).get_keys_by_id([k.key_id for k in keys])
            ctx.check(bob_keys == keys, "KME B handed out other keys")
            ctx.note("keys delivered" + (" after one retry" if key == "503-once" else "") + "; KME B agrees")
            return
        _expect_raises(ctx, lambda: alice().get_new_keys(number, size), f.lib_error, f.lib_words)
        return
    keys = etsi014_client(kmes, SAE_A, SAE_B).get_new_keys(1)
    bob = etsi014_client(kmes, SAE_B, SAE_A, **options)
    if key == "replay":
        bob.get_keys_by_id([keys[0].key_id])
    assert f.lib_error is not None
    _expect_raises(ctx, lambda: bob.get_keys_by_id([keys[0].key_id]), f.lib_error, f.lib_words)


def _exchange_column(ctx: CellContext, key: str, policy: str, kmes: ServedKMEs) -> None:
    f = FAULTS[key]
    init_auth, resp_auth = auth_args(ctx, "psk", "initiator"), auth_args(ctx, "psk", "responder")
    common = ["--qkd-policy", policy]
    init_q, resp_q = exchange_qkd_args(kmes, "initiator"), exchange_qkd_args(kmes, "responder")
    if key == "unauthorised":  # the initiator presents mallory's certificate at KME A
        init_q = ["--qkd", "etsi014", "--kme-url", kmes.url_a, "--kme-ca", str(kmes.pki / "ca.crt"),
                  "--sae-cert", str(kmes.pki / f"{SAE_OTHER}.crt"), "--sae-key", str(kmes.pki / f"{SAE_OTHER}.key"),
                  "--sae-id", SAE_OTHER, "--peer-sae-id", SAE_B]
    # Refused before any connection under 'required': the initiator alone.  Under 'preferred' the
    # source that cannot be opened means no QKD key: the exchange goes on without it and says why
    # (the http:// URL is never used either way).
    if key == "plain-http" and policy == "required":
        done = spawn(ctx, "initiator", hkx("exchange", "--connect", f"127.0.0.1:{_closed_port()}", "--out",
                                           ctx.work / "init.key", *common, *init_auth, *init_q)).finish(ctx, 30)
        error = expect_clean_failure(ctx, done, codes=[2], contains=["http"])
        ctx.check(not (ctx.work / "init.key").exists(), "a key was written")
        ctx.note(f"exit 2: {error}")
        return
    # A responder whose initiator failed before authenticating listens on until --accept-timeout.
    failing = policy == "required" and not f.exchange_ok
    run = run_exchange_pair(ctx, [*common, *init_auth, *init_q], [*common, *resp_auth, *resp_q], timeout=45,
                            accept_timeout=12.0 if failing else 30.0)
    if f.exchange_ok:
        summary = check_agreed(ctx, run, qkd="etsi014")
        ctx.note(f"key agreed with QKD key_ID {summary['qkd_key_ids']}")
        return
    if policy == "preferred":
        summary = check_agreed(ctx, run)
        ctx.check(summary["qkd"] == "unavailable", f"QKD status {summary['qkd']!r}, expected 'unavailable'")
        ctx.check(summary.get("qkd_reason"), "no reason given for going on without QKD")
        if key == "plain-http":
            ctx.check("http" in str(summary["qkd_reason"]), "the reason does not name the refused http:// URL")
            ctx.check("hybridkex: warning:" in run.initiator.stderr, "the initiator printed no warning")
        ctx.note(f"key agreed without QKD: {str(summary['qkd_reason'])[:160]}")
        return
    met, other = (run.initiator, run.responder) if f.at == "a" else (run.responder, run.initiator)
    error = expect_clean_failure(ctx, met, codes=[4])
    if f.at == "a":
        # The master fails before it authenticated to the responder: its alert could be anyone's, so the
        # responder ignores it and waits for another initiator until --accept-timeout.
        expect_clean_failure(ctx, other, codes=[5], contains=["no peer completed"])
    else:
        # The slave fails after both authenticated: it alerts the initiator, which exits with the QKD code.
        expect_clean_failure(ctx, other, codes=[4])
    for path in (run.init_key, run.resp_key):
        ctx.check(not path.exists(), f"{path.name} was written although the exchange failed")
    ctx.note(f"{met.name} exit 4: {error[len('hybridkex: error: '):][:200]}")


def _fault_scenario(ctx: CellContext) -> None:
    key, column = ctx.params["fault"], ctx.params["column"]
    options: dict[str, Any] = {}
    if key == "tapped":
        options = {"eve": 1.0}
    pair = kme_pair(ctx, **options)
    _inject(pair, key)
    kmes = _served(pair, kme_pki(ctx), key)
    if column == "lib":
        _lib_column(ctx, key, pair, kmes)
    else:
        _exchange_column(ctx, key, column, kmes)


SCENARIOS = {"etsi014-clients": _client_scenario, "kme-fault": _fault_scenario}
