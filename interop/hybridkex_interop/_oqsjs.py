"""liboqs (its WebAssembly build on npm, ``@oqs/liboqs-js``, under node) <-> hybridkex's primitives.

A small node script that ships with the suite (``peers/oqs_peer.mjs``) holds the liboqs side:
it generates keys, encapsulates, decapsulates, signs and verifies on request.  Raw public
keys, ciphertexts and signatures cross between the processes as hex, exactly the FIPS 203 /
FIPS 204 byte strings hybridkex puts on the wire.  Each direction is checked, and so is
rejection: a flipped signature byte must not verify, a flipped ciphertext byte must give a
different shared secret (FIPS 203 implicit rejection), a short ciphertext must be refused.
Signatures use the empty context string (liboqs-js signs with ``OQS_SIG_sign``, pure ML-DSA).
"""

from __future__ import annotations

import json
import os
from importlib import resources
from typing import Any

from ._cell import CellContext
from ._model import Cell, Section
from ._peers import LIBOQS_JS, liboqs_js, require_node
from ._procs import Spawned, spawn

__all__ = ["SECTIONS", "cells", "SCENARIOS", "NodePeer"]

SECTION = "liboqs-js"
ALGORITHMS = ("ML-KEM-768", "ML-KEM-1024", "ML-DSA-44", "ML-DSA-65", "ML-DSA-87")
BACKENDS = ("cryptography", "liboqs")
ROUNDS = 3


def _column(js_first: bool, backend: str) -> str:
    return f"liboqs-js → hybridkex/{backend}" if js_first else f"hybridkex/{backend} → liboqs-js"


SECTIONS = [Section(
    SECTION, f"liboqs-js ({LIBOQS_JS.name}@{LIBOQS_JS.version}, WebAssembly under node) ↔ hybridkex primitives",
    "KEM rows: the left side encapsulates to the right side's encapsulation key and the right side "
    "decapsulates; signature rows: the left side signs and the right side verifies.  Raw keys, ciphertexts "
    f"and signatures cross as hex between node and Python, {ROUNDS} fresh key pairs per cell, plus rejection "
    "of a flipped signature byte, a flipped ciphertext byte (implicit rejection) and a short ciphertext.",
    tuple(_column(js, b) for b in BACKENDS for js in (True, False)))]


def cells() -> list[Cell]:
    out = []
    for alg in ALGORITHMS:
        kind = "encapsulate → decapsulate" if alg.startswith("ML-KEM") else "sign → verify"
        for backend in BACKENDS:
            for js_first in (True, False):
                direction = "js-py" if js_first else "py-js"
                out.append(Cell(id=f"liboqs-js/{alg.lower()}/{direction}/{backend}", section=SECTION,
                                row=f"{alg} ({kind})", column=_column(js_first, backend), scenario="liboqs-js",
                                params={"alg": alg, "direction": direction, "backend": backend},
                                timeout=240.0, quick=backend == "cryptography",
                                needs=("liboqs",) if backend == "liboqs" else ()))
    return out


class NodePeer:
    """The node process running ``oqs_peer.mjs``; one JSON request and answer per line."""

    def __init__(self, ctx: CellContext) -> None:
        node = require_node(ctx)
        package = liboqs_js(ctx)
        script = resources.files("hybridkex_interop").joinpath("peers/oqs_peer.mjs")
        self.ctx = ctx
        # stdout carries shared secrets: keep it out of the log.
        self.proc: Spawned = spawn(ctx, "liboqs-js", [node, str(script), str(package)], stdin=True,
                                   log_stdout=False)
        info = self.request({"op": "info"})
        ctx.note(f"liboqs-js {info['version']} under node {info['node']}")

    def request(self, req: dict[str, Any], *, expect_ok: bool = True) -> dict[str, Any]:
        self.proc.send(json.dumps(req) + "\n")
        line = self.proc.read_line(self.ctx.remaining(60))
        if line is None:
            done = self.proc.stop()
            self.ctx.fail(f"the liboqs-js peer did not answer {req['op']}: {done.describe()}")
        answer: dict[str, Any] = json.loads(line)
        if expect_ok and not answer.get("ok"):
            self.ctx.fail(f"liboqs-js refused {req['op']}: {answer.get('error')}")
        return answer


def _flip(data: bytes, index: int = 0) -> bytes:
    buf = bytearray(data)
    buf[index] ^= 0x01
    return bytes(buf)


def _kem(ctx: CellContext, peer: NodePeer, alg: str, js_first: bool, backend: Any) -> None:
    kem = backend.kem(alg.lower())
    for _ in range(ROUNDS):
        if js_first:  # liboqs-js encapsulates to a hybridkex key; hybridkex decapsulates
            handle, ek = kem.generate(os.urandom(64))
            ans = peer.request({"op": "kem_encaps", "alg": alg, "public_key": ek.hex()})
            ct, ss = bytes.fromhex(ans["ciphertext"]), bytes.fromhex(ans["shared_secret"])
            ctx.check(len(ct) == kem.sizes.ciphertext, f"liboqs-js sent a {len(ct)}-byte ciphertext")
            ctx.check(kem.decapsulate(handle, ct) == ss, "hybridkex decapsulated a different shared secret")
            ctx.check(kem.decapsulate(handle, _flip(ct)) != ss,
                      "a flipped ciphertext byte gave the same shared secret")
            try:
                kem.decapsulate(handle, ct[:-1])
            except ValueError:
                pass
            else:
                ctx.fail("hybridkex accepted a ciphertext one byte short")
        else:  # hybridkex encapsulates to a liboqs-js key; liboqs-js decapsulates
            key = peer.request({"op": "kem_keygen", "alg": alg})
            ek = bytes.fromhex(key["public_key"])
            ctx.check(len(ek) == kem.sizes.encapsulation_key, f"liboqs-js sent a {len(ek)}-byte encapsulation key")
            ss, ct = kem.encapsulate(ek)
            ans = peer.request({"op": "kem_decaps", "alg": alg, "handle": key["handle"], "ciphertext": ct.hex()})
            ctx.check(bytes.fromhex(ans["shared_secret"]) == ss, "liboqs-js decapsulated a different shared secret")
            bad = peer.request({"op": "kem_decaps", "alg": alg, "handle": key["handle"],
                                "ciphertext": _flip(ct).hex()})
            ctx.check(bytes.fromhex(bad["shared_secret"]) != ss,
                      "a flipped ciphertext byte gave the same shared secret in liboqs-js")
            short = peer.request({"op": "kem_decaps", "alg": alg, "handle": key["handle"],
                                  "ciphertext": ct[:-1].hex()}, expect_ok=False)
            ctx.check(not short.get("ok"), "liboqs-js accepted a ciphertext one byte short")
    ctx.note(f"{ROUNDS} key pairs: same shared secret both sides; flipped and short ciphertexts handled")


def _sig(ctx: CellContext, peer: NodePeer, alg: str, js_first: bool, backend: Any) -> None:
    scheme = backend.signature(alg.lower())
    for n in range(ROUNDS):
        message = os.urandom(32 + n * 500)
        if js_first:  # liboqs-js signs, hybridkex verifies
            key = peer.request({"op": "sig_keygen", "alg": alg})
            pk = bytes.fromhex(key["public_key"])
            ctx.check(len(pk) == scheme.sizes.public_key, f"liboqs-js sent a {len(pk)}-byte public key")
            sig = bytes.fromhex(peer.request({"op": "sig_sign", "alg": alg, "handle": key["handle"],
                                              "message": message.hex()})["signature"])
            ctx.check(len(sig) == scheme.sizes.signature, f"liboqs-js made a {len(sig)}-byte signature")
            ctx.check(scheme.verify(pk, message, sig, b""), "hybridkex rejected liboqs-js's signature")
            ctx.check(not scheme.verify(pk, message, _flip(sig, len(sig) // 2), b""),
                      "hybridkex accepted a signature with a flipped byte")
            ctx.check(not scheme.verify(pk, _flip(message), sig, b""), "hybridkex accepted a changed message")
        else:  # hybridkex signs, liboqs-js verifies
            handle, pk = scheme.from_seed(os.urandom(32))
            sig = scheme.sign(handle, message, b"")

            def verify(m: bytes, s: bytes, pk: bytes = pk) -> bool:
                return bool(peer.request({"op": "sig_verify", "alg": alg, "public_key": pk.hex(),
                                          "message": m.hex(), "signature": s.hex()})["valid"])

            ctx.check(verify(message, sig), "liboqs-js rejected hybridkex's signature")
            ctx.check(not verify(message, _flip(sig, len(sig) // 2)), "liboqs-js accepted a flipped signature byte")
            ctx.check(not verify(_flip(message), sig), "liboqs-js accepted a changed message")
    ctx.note(f"{ROUNDS} key pairs: signatures verify across; flipped signature and changed message rejected")


def _run(ctx: CellContext) -> None:
    from hybridkex.backends import get_backend

    from ._hkx import require_backends

    p = ctx.params
    require_backends(ctx, p["backend"])
    backend = get_backend(p["backend"])
    peer = NodePeer(ctx)
    js_first = p["direction"] == "js-py"
    if p["alg"].startswith("ML-KEM"):
        _kem(ctx, peer, p["alg"], js_first, backend)
    else:
        _sig(ctx, peer, p["alg"], js_first, backend)


SCENARIOS = {"liboqs-js": _run}
