"""Generate the hybridkex wire v2 test vectors (``tests/data/hybridkex-v2-*.json``).

    python tests/vectors_gen.py --out tests/data                       # fresh encapsulations and signatures
    python tests/vectors_gen.py --out tests/data --replay tests/data   # reuse the recorded ones: same bytes

Every private input comes from injected randomness (``rng=``) and clocks (``wall=``, ``now=``) of the
real :class:`hybridkex.Initiator` and :class:`hybridkex.Responder` on the ``cryptography`` backend.
Two steps take randomness that ``cryptography`` does not let a caller inject: ML-KEM encapsulation
and hedged ML-DSA signing.  A tape backend records their outputs (the ciphertext and shared secret,
the signature); with ``--replay`` it plays them back, so regenerating gives byte-identical files.
The intermediate values are taken from the state machines while they run (a recording subclass of
each role), not recomputed here: ``tests/test_vectors.py`` recomputes them from the specification.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hybridkex_sim import Pair, QKDPair

from hybridkex import QKDKey, QKDUnavailable, catkdf
from hybridkex.backends import KEM, Backend, KeyAgreement, SignatureScheme, get_backend
from hybridkex.protocol import (
    HandshakeConfig,
    Initiator,
    PSKAuthenticator,
    Responder,
    SignatureAuthenticator,
    key_fingerprint,
)
from hybridkex.protocol import _labels as L
from hybridkex.protocol._auth import _PSK_LABEL, _SIG_CONTEXT, Purpose
from hybridkex.protocol._dos import DoSGuard
from hybridkex.protocol._handshake import HandshakeResult, _cookie_key, _mac1_key, _Transcript
from hybridkex.protocol._identity import Identity, PublicIdentity
from hybridkex.protocol._state import Role
from hybridkex.protocol._suites import SUITES
from hybridkex.protocol._wire import (
    HEADER_SIZE,
    MessageType,
    QKDBlock,
    QKDStatus,
    decode,
    pull_init_confirm_payload,
    pull_init_finish_payload,
    pull_resp_finish_payload,
    pull_resp_hello_payload,
    resp_hello_public,
    vec8,
    vec16,
)

COMPONENTS = "hybridkex-v2-components.json"
HANDSHAKES = "hybridkex-v2-handshakes.json"
SOURCE = ("hybridkex (this repository): tests/vectors_gen.py running the real hybridkex.Initiator and "
          "hybridkex.Responder on the 'cryptography' backend with injected randomness and clocks")
TIMESTAMP = 1767225600  # 2026-01-01T00:00:00Z, the wall clock of every handshake
EXPORT_LABEL = b"example exporter"
EXPORT_LENGTH = 42
TLS_IMPORTER_VERSION = "plugins/tls/hybridkex_tls/_importer.py as of commit 13c5fbe"
WG_LABELS_VERSION = "plugins/wireguard/hybridkex_wg/_labels.py as of commit d41678e"
FRAME_NAMES = {MessageType.INIT_HELLO: "IH", MessageType.RESP_HELLO: "RH", MessageType.INIT_FINISH: "IF",
               MessageType.RESP_FINISH: "RF", MessageType.INIT_CONFIRM: "IC", MessageType.COOKIE_REPLY: "CR"}


def det(vector_id: str, what: str, n: int) -> bytes:
    """A private input: a fixed function of the vector's id and the input's name (any bytes would do)."""
    return hashlib.shake_256(b"hybridkex v2 test vector input\x00" + vector_id.encode() + b"\x00"
                             + what.encode()).digest(n)


# -- the two steps whose randomness cryptography does not take: record, or play back ---------------

@dataclass
class Tape:
    """ML-KEM encapsulations (by encapsulation key) and ML-DSA signatures (by public key and message)."""

    replay: bool = False
    encapsulations: dict[bytes, tuple[bytes, bytes]] = field(default_factory=dict)
    signatures: dict[tuple[bytes, bytes], bytes] = field(default_factory=dict)


class _TapeKEM(KEM):
    def __init__(self, base: KEM, tape: Tape) -> None:
        self.name, self.sizes, self._base, self._tape = base.name, base.sizes, base, tape

    def generate(self, seed: bytes) -> tuple[Any, bytes]:
        return self._base.generate(seed)

    def encapsulate(self, encapsulation_key: bytes) -> tuple[bytes, bytes]:
        if self._tape.replay:
            if encapsulation_key not in self._tape.encapsulations:
                raise AssertionError("the code encapsulates to a key the recorded vector does not have")
            return self._tape.encapsulations[encapsulation_key]
        shared_secret, ciphertext = self._base.encapsulate(encapsulation_key)
        self._tape.encapsulations[encapsulation_key] = (shared_secret, ciphertext)
        return shared_secret, ciphertext

    def decapsulate(self, private: Any, ciphertext: bytes) -> bytes:
        return self._base.decapsulate(private, ciphertext)


class _TapeSignature(SignatureScheme):
    def __init__(self, base: SignatureScheme, tape: Tape) -> None:
        self.name, self.sizes, self._base, self._tape = base.name, base.sizes, base, tape

    def from_seed(self, seed: bytes) -> tuple[Any, bytes]:
        private, public = self._base.from_seed(seed)
        return (private, public), public

    def sign(self, private: Any, message: bytes, context: bytes) -> bytes:
        handle, public = private
        if self._tape.replay:
            signature = self._tape.signatures.get((public, message))
            if signature is None or not self._base.verify(public, message, signature, context):
                raise AssertionError("the code signs a message the recorded vector has no signature for")
            return signature
        signature = self._base.sign(handle, message, context)
        self._tape.signatures[(public, message)] = signature
        return signature

    def verify(self, public_key: bytes, message: bytes, signature: bytes, context: bytes) -> bool:
        return self._base.verify(public_key, message, signature, context)


class TapeBackend(Backend):
    """The ``cryptography`` backend, with encapsulation and signing going through a :class:`Tape`."""

    name = "cryptography-tape"

    def __init__(self, tape: Tape) -> None:
        self._base = get_backend("cryptography")
        self.tape = tape

    def kem(self, name: str) -> KEM:
        return _TapeKEM(self._base.kem(name), self.tape)

    def key_agreement(self, name: str) -> KeyAgreement:
        return self._base.key_agreement(name)

    def signature(self, name: str) -> SignatureScheme:
        return _TapeSignature(self._base.signature(name), self.tape)


class Script:
    """Injected randomness: hands out the given byte strings in order and checks each size."""

    def __init__(self, values: list[bytes]) -> None:
        self.values = list(values)

    def __call__(self, n: int) -> bytes:
        if not self.values:
            raise AssertionError(f"the code asked for {n} more random bytes than the vector has")
        value = self.values.pop(0)
        if len(value) != n:
            raise AssertionError(f"the code asked for {n} random bytes where the vector has {len(value)}")
        return value


# -- watching the real state machines ----------------------------------------------------------------

Log = list[tuple[str, dict[str, Any], bytes]]


class _WatchedTranscript:
    def __init__(self, inner: _Transcript, log: Log) -> None:
        self._inner, self._log = inner, log

    @property
    def frames(self) -> list[bytes]:
        return self._inner.frames

    def absorb(self, frame: bytes) -> None:
        self._inner.absorb(frame)

    def hash(self, *extra: bytes) -> bytes:
        out = self._inner.hash(*extra)
        self._log.append(("transcript_hash", {"parts": [*self._inner.frames, *extra]}, out))
        return out


class _Watch:
    """Mixed into each role: logs every CatKDF, AEAD, MAC and transcript hash the real code computes."""

    log: Log

    def _catkdf(self, *, psk: bytes, ma: bytes, mb: bytes, context: bytes, label: bytes) -> bytes:
        out: bytes = super()._catkdf(psk=psk, ma=ma, mb=mb, context=context, label=label)  # type: ignore[misc]
        self.log.append(("catkdf", {"psk": psk, "k1": self._k1, "k2": self._k2,  # type: ignore[attr-defined]
                                    "MA": ma, "MB": mb, "context": context, "label": label}, out))
        return out

    def _seal(self, label: bytes, aad: bytes, plaintext: bytes) -> bytes:
        out: bytes = super()._seal(label, aad, plaintext)  # type: ignore[misc]
        self._log_aead(label, aad, plaintext)
        return out

    def _open(self, label: bytes, aad: bytes, sealed: bytes, who: str) -> bytes:
        out: bytes = super()._open(label, aad, sealed, who)  # type: ignore[misc]
        self._log_aead(label, aad, out)
        return out

    def _log_aead(self, label: bytes, aad: bytes, plaintext: bytes) -> None:
        key = self._expand(self._hs, label)[:32]  # type: ignore[attr-defined]
        self.log.append(("aead", {"label": label, "secret": self._hs, "aad": aad,  # type: ignore[attr-defined]
                                  "plaintext": plaintext}, key))

    def _mac(self, secret: bytes, label: bytes, data: bytes) -> bytes:
        out: bytes = super()._mac(secret, label, data)  # type: ignore[misc]
        self.log.append(("confirmation", {"label": label, "secret": secret, "data": data,
                                          "key": self._expand(secret, label)}, out))  # type: ignore[attr-defined]
        return out

    @property
    def transcript(self) -> _WatchedTranscript:
        return _WatchedTranscript(super().transcript, self.log)  # type: ignore[misc]


class WatchedInitiator(_Watch, Initiator):
    pass


class WatchedResponder(_Watch, Responder):
    pass


class WatchedAuthenticator:
    """Delegates to an authenticator and logs each tag it makes (and, in PSK mode, its MAC key)."""

    def __init__(self, inner: Any, log: Log) -> None:
        self._inner, self._log = inner, log

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def mode(self) -> str:
        return str(self._inner.mode)

    def make_tag(self, role: Role, key: bytes | None, purpose: Purpose, transcript: bytes) -> bytes:
        tag: bytes = self._inner.make_tag(role, key, purpose, transcript)
        info: dict[str, Any] = {"purpose": purpose.value, "by": role.value, "transcript_hash": transcript}
        if isinstance(self._inner, PSKAuthenticator):
            assert key is not None
            info["psk"] = key
            info["mac_key"] = self._inner._derive(key, _PSK_LABEL[purpose], role)
        else:
            info["message"] = _SIG_CONTEXT[purpose] + transcript
        self._log.append(("tag", info, tag))
        return tag

    def offer(self, prefix: bytes) -> tuple[bytes, ...]:
        ids: tuple[bytes, ...] = self._inner.offer(prefix)
        if not isinstance(self._inner, PSKAuthenticator):
            return ids
        for k, blind in zip(self._inner.keys, ids, strict=True):
            self._log.append(("psk_id", {"psk": k, "K_blind": self._inner._derive(k, L.PSK_BLIND, Role.INITIATOR),
                                         "prefix": prefix}, blind))
        return ids


# -- naming byte strings by the parts of the specification ---------------------------------------------

def named_parts(frames: dict[str, bytes], plaintexts: dict[str, bytes]) -> dict[str, bytes]:
    """Every part the specification names, from the frames and the opened payloads (docs/protocol.md §4)."""
    parts = dict(frames)
    if "RH" in frames:
        parts["RH_pub"] = resp_hello_public(decode(frames["RH"]))  # type: ignore[arg-type]
    if "RH" in plaintexts:
        rh = pull_resp_hello_payload(plaintexts["RH"])
        parts |= {"RH_plain": plaintexts["RH"], "identity_R": rh.identity, "vec16(identity_R)": vec16(rh.identity),
                  "vec16(tag_R)": vec16(rh.auth_tag)}
    if "IF" in plaintexts:
        fin = pull_init_finish_payload(plaintexts["IF"])
        parts |= {"IF_plain": plaintexts["IF"], "IF_core": fin.core, "vec16(tag_I)": vec16(fin.auth_tag),
                  "vec8(confirm_I)": vec8(fin.confirm), "vec16(identity_I)": vec16(fin.identity),
                  "identity_I": fin.identity,
                  "qkd_block": fin.core[2 + len(fin.identity):]}
    if "RF" in plaintexts:
        rf = pull_resp_finish_payload(plaintexts["RF"])
        parts |= {"RF_plain": plaintexts["RF"], "RF_core": bytes([int(rf.status), int(rf.reason)]),
                  "vec16(tag_F)": vec16(rf.auth_tag), "vec8(confirm_R)": vec8(rf.confirm)}
    if "IC" in plaintexts:
        parts |= {"IC_plain": plaintexts["IC"], "vec8(confirm_F)": vec8(pull_init_confirm_payload(plaintexts["IC"]))}
    return parts


#: The parts each kind of value is made of, in field order (one list per place, so that two parts with the
#: same bytes, such as an empty vec16 and RF_core 00 00, are named by where they stand).
CANDIDATES = {
    "MA": ("IH", "IF_core", "vec16(tag_I)"),
    "MB": ("RH_pub", "RH_plain", "RF_core", "vec16(tag_F)"),
    "TH after IH": ("RH_pub", "vec16(identity_R)"),
    "TH after RH": ("IF_core", "vec16(tag_I)"),
    "TH after IF": ("RF_core", "vec16(tag_F)"),
    "RH": ("vec16(identity_R)", "vec16(tag_R)"),
    "IF": ("IF_core", "vec16(tag_I)", "vec8(confirm_I)"),
    "RF": ("RF_core", "vec16(tag_F)", "vec8(confirm_R)"),
    "IC": ("vec8(confirm_F)",),
    "S_R": ("identity_R",),
}


def describe(data: bytes, parts: dict[str, bytes], place: str) -> str:
    """Write ``data`` as a concatenation of named parts, ``"IH || IF_core || vec16(tag_I)"``, taking the
    parts that may stand at ``place`` (a key of :data:`CANDIDATES`) in their order, longest first."""
    names = [n for n in CANDIDATES[place] if parts.get(n)]

    def split(pos: int, after: int) -> list[str] | None:
        if pos == len(data):
            return []
        for index in sorted(range(after + 1, len(names)), key=lambda i: -len(parts[names[i]])):
            if data.startswith(parts[names[index]], pos):
                rest = split(pos + len(parts[names[index]]), index)
                if rest is not None:
                    return [names[index], *rest]
        return None

    found = split(0, -1)
    if found is None:
        raise AssertionError("these bytes are no concatenation of named parts")
    return " || ".join(found)


def resolve(expression: str, parts: dict[str, bytes]) -> bytes:
    """The inverse of :func:`describe`."""
    return b"".join(parts[n] for n in expression.split(" || ")) if expression else b""


# -- whole handshakes ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    id: str
    auth: str  # ml-dsa-44 | ml-dsa-65 | ml-dsa-87 | psk
    suite: int
    qkd: str  # off | used | responder-fallback | initiator-unavailable
    context: bytes = b"hybridkex test vectors"
    note: str = ""
    cookie: bool = False


def cases() -> list[Case]:
    kems = {0x0001: "ml-kem-768", 0x0003: "ml-kem-768-hmac", 0x0002: "ml-kem-1024", 0x0004: "ml-kem-1024-hmac"}
    out = []
    for auth in ("ml-dsa-44", "ml-dsa-65", "ml-dsa-87", "psk"):
        suites = (0x0001, 0x0003, 0x0002) if auth in ("ml-dsa-44", "psk") else (0x0001, 0x0002)
        if auth == "psk":
            suites += (0x0004,)
        for suite in suites:
            for qkd in ("used", "off"):
                name = "qkd" if qkd == "used" else "no-qkd"
                out.append(Case(f"{auth}/{kems[suite]}/{name}", auth, suite, qkd))
    out.append(Case("ml-dsa-65/ml-kem-768/qkd-responder-fallback", "ml-dsa-65", 0x0001, "responder-fallback", b"",
                    "the responder's KME fails (policies preferred): five messages"))
    out.append(Case("psk/ml-kem-768/qkd-responder-fallback", "psk", 0x0001, "responder-fallback", b"",
                    "the responder's KME fails (policies preferred): five messages"))
    out.append(Case("psk/ml-kem-768/no-qkd-cookie", "psk", 0x0001, "off", b"",
                    "the responder is under load: CookieReply, then the same InitHello with mac2", cookie=True))
    out.append(Case("psk/ml-kem-768/qkd-initiator-unavailable", "psk", 0x0001, "initiator-unavailable", b"",
                    "the initiator's KME fails (policies preferred): InitFinish says status 2, reason 1"))
    return out


def _inputs(case: Case) -> dict[str, Any]:
    v = case.id
    suite = SUITES[case.suite]
    kem = get_backend("cryptography").kem(suite.kem)
    qkd = case.qkd != "off"
    inputs: dict[str, Any] = {
        "suite": case.suite, "initiator_suites": [case.suite], "responder_suites": [1, 2, 3, 4],
        "context": case.context, "timestamp": TIMESTAMP,
        "initiator_qkd_policy": ("required" if case.qkd == "used" else "preferred") if qkd else "off",
        "responder_qkd_policy": ("required" if case.qkd == "used" else "preferred") if qkd else "off",
        "initiator": {"ml_kem_seed": det(v, "initiator ml-kem seed", kem.sizes.decapsulation_key_seed),
                      "x25519_private": det(v, "initiator x25519", 32), "nonce": det(v, "initiator nonce", 32)},
        "responder": {"x25519_private": det(v, "responder x25519", 32), "nonce": det(v, "responder nonce", 32)},
    }
    if case.cookie:
        inputs["responder"] = {"cookie_nonce": det(v, "responder cookie nonce", 12), **inputs["responder"]}
        inputs["cookie"] = {"secret": det(v, "responder cookie secret", 32), "source_address": "192.0.2.7"}
    if case.auth == "psk":
        psk = det(v, "psk", 32)
        inputs["psk"] = {"initiator_name": "initiator.example", "responder_name": "responder.example",
                         "initiator_keys": [psk], "responder_keys": [psk]}
        if case.suite == 0x0002 and case.qkd == "off":
            # The ratchet's two keys: the initiator offers its current and previous key, the responder has
            # only the previous one, so psk_choice is 1.
            inputs["psk"]["initiator_keys"] = [det(v, "psk current", 32), psk]
    else:
        inputs["initiator"]["ml_dsa_seed"] = det(v, "initiator ml-dsa seed", 32)
        inputs["responder"]["ml_dsa_seed"] = det(v, "responder ml-dsa seed", 32)
    if qkd:
        inputs["qkd"] = {"master_sae_id": "sae-initiator", "slave_sae_id": "sae-responder", "key_bits": 256,
                         "key_id": str(uuid.UUID(bytes=det(v, "qkd key_ID", 16), version=4)),
                         "key": det(v, "qkd key", 32) if case.qkd != "initiator-unavailable" else b""}
    return inputs


def _authenticators(case: Case, inputs: dict[str, Any], backend: Backend) -> tuple[Any, Any]:
    if case.auth == "psk":
        p = inputs["psk"]
        return (PSKAuthenticator(p["initiator_keys"], name=p["initiator_name"], peer_name=p["responder_name"]),
                PSKAuthenticator(p["responder_keys"], name=p["responder_name"], peer_name=p["initiator_name"]))
    ids = {}
    for side in ("initiator", "responder"):
        seed = inputs[side]["ml_dsa_seed"]
        _, public = get_backend("cryptography").signature(case.auth).from_seed(seed)
        ids[side] = Identity(case.auth, seed, public)
    return (SignatureAuthenticator(ids["initiator"], [ids["responder"].public], backend),
            SignatureAuthenticator(ids["responder"], [PublicIdentity(case.auth, ids["initiator"].public_key)],
                                   backend))


def run_case(case: Case, tape: Tape) -> dict[str, Any]:
    """Run one handshake with the real state machines; return its vector."""
    inputs = _inputs(case)
    backend = TapeBackend(tape)
    log: Log = []
    i_auth, r_auth = _authenticators(case, inputs, backend)
    q = inputs.get("qkd", {})
    i_cfg = HandshakeConfig(WatchedAuthenticator(i_auth, log), tuple(inputs["initiator_suites"]),  # type: ignore
                            inputs["initiator_qkd_policy"], backend=backend, context=case.context,
                            sae_id=q.get("master_sae_id", ""), peer_sae_id=q.get("slave_sae_id", ""))
    r_cfg = HandshakeConfig(WatchedAuthenticator(r_auth, log), tuple(inputs["responder_suites"]),  # type: ignore
                            inputs["responder_qkd_policy"], backend=backend, context=case.context,
                            sae_id=q.get("slave_sae_id", ""), peer_sae_id=q.get("master_sae_id", ""))
    i, r = inputs["initiator"], inputs["responder"]
    ini = WatchedInitiator(i_cfg, rng=Script([i["ml_kem_seed"], i["x25519_private"], i["nonce"]]),
                           wall=lambda: float(TIMESTAMP), now=lambda: 0.0)
    guard, source = None, b""
    if case.cookie:
        secret = inputs["cookie"]["secret"]
        guard = DoSGuard(rng=lambda n: secret, now=lambda: 0.0, wall=lambda: float(TIMESTAMP))
        guard.forced_load = True
        source = inputs["cookie"]["source_address"].encode()
    res = WatchedResponder(r_cfg, rng=Script([r[k] for k in ("cookie_nonce", "x25519_private", "nonce") if k in r]),
                           wall=lambda: float(TIMESTAMP), now=lambda: 0.0, guard=guard, source=source)
    ini.log = res.log = log
    down = QKDUnavailable("the KME did not answer")
    link = QKDPair(keys=[QKDKey(uuid.UUID(q["key_id"]), q["key"])] if q.get("key") else [],
                   fail_master=down if case.qkd == "initiator-unavailable" else None,
                   fail_slave=down if case.qkd == "responder-fallback" else None)
    o = Pair(ini, res, qkd=link).run()
    assert isinstance(o.initiator, HandshakeResult) and isinstance(o.responder, HandshakeResult), o
    names = {"i": "initiator", "r": "responder"}
    frames = [(names[who], frame) for who, frame in zip(o.senders, o.frames, strict=True)]
    results = {"initiator": o.initiator, "responder": o.responder}
    a, b = results["initiator"], results["responder"]
    assert a.key() == b.key() and a.ratchet_psk() == b.ratchet_psk() and a.transcript_hash == b.transcript_hash
    assert a.export(EXPORT_LABEL, EXPORT_LENGTH) == b.export(EXPORT_LABEL, EXPORT_LENGTH)
    return _vector(case, inputs, frames, log, a, tape)


def _vector(case: Case, inputs: dict[str, Any], frames: list[tuple[str, bytes]], log: Log, result: HandshakeResult,
            tape: Tape) -> dict[str, Any]:
    names = [FRAME_NAMES[MessageType(f[3])] for _, f in frames]
    if "CR" in names:  # the InitHello the CookieReply answered is not part of the transcript (§5.1)
        names[names.index("IH")] = "IH_first"
    by_name = {n: f for n, (_, f) in zip(names, frames, strict=True) if n not in ("IH_first", "CR")}
    plaintexts: dict[str, bytes] = {}
    aad_of = {}
    for kind, info, _ in log:
        if kind == "aead":
            name = {L.KEY_RESP_HELLO: "RH", L.KEY_INIT_FINISH: "IF", L.KEY_RESP_FINISH: "RF",
                    L.KEY_INIT_CONFIRM: "IC"}[info["label"]]
            plaintexts[name] = info["plaintext"]
            aad_of[name] = info["aad"]
    parts = named_parts(by_name, plaintexts)
    secrets: dict[bytes, str] = {}
    for kind, info, out in log:
        if kind == "catkdf" and out not in secrets:
            name = "hs" if info["label"] == L.CATKDF_LABEL_HANDSHAKE else \
                ("session" if "session" not in secrets.values() else "session_fallback")
            secrets[out] = name

    def hx(b: bytes) -> str:
        return b.hex()

    frame_set = set(by_name.values())
    steps: list[dict[str, Any]] = []
    seen: set[tuple[str, bytes]] = set()
    for kind, info, out in log:
        if (kind, out) in seen:
            continue
        seen.add((kind, out))
        if kind == "catkdf":
            steps.append({"step": "catkdf", "name": secrets[out], "psk": hx(info["psk"]), "k1": hx(info["k1"]),
                          "k2": hx(info["k2"]), "MA": describe(info["MA"], parts, "MA"),
                          "MB": describe(info["MB"], parts, "MB"),
                          "context": hx(info["context"]), "label": info["label"].decode(), "output": hx(out)})
        elif kind == "transcript_hash":
            frames_in = [FRAME_NAMES[MessageType(p[3])] for p in info["parts"] if p in frame_set]
            named = frames_in + [describe(p, parts, f"TH after {frames_in[-1]}")
                                 for p in info["parts"][len(frames_in):]]
            steps.append({"step": "transcript_hash", "parts": named, "output": hx(out)})
        elif kind == "aead":
            name = next(n for n, p in plaintexts.items() if p == info["plaintext"])
            steps.append({"step": "aead", "message": name, "secret": secrets[info["secret"]],
                          "label": info["label"].decode(), "key": hx(out), "aad": hx(info["aad"]),
                          "plaintext": describe(info["plaintext"], parts, name),
                          "plaintext_hex": hx(info["plaintext"])})
        elif kind == "confirmation":
            steps.append({"step": "confirmation", "secret": secrets[info["secret"]], "label": info["label"].decode(),
                          "key": hx(info["key"]), "transcript_hash": hx(info["data"]), "output": hx(out)})
        elif kind == "tag":
            step = {"step": "tag", "purpose": info["purpose"], "by": info["by"],
                    "transcript_hash": hx(info["transcript_hash"]), "output": hx(out)}
            if "mac_key" in info:
                step["mac_key"] = hx(info["mac_key"])
            else:
                step["message_label"] = info["message"][:-len(info["transcript_hash"])].decode()
                step["recorded"] = True
            steps.append(step)
        elif kind == "psk_id":
            steps.append({"step": "psk_id", "psk": hx(info["psk"]), "K_blind": hx(info["K_blind"]),
                          "prefix_length": len(info["prefix"]), "output": hx(out)})
    final = [s for s in steps if s["step"] == "catkdf"][-1]["output"]
    ih_body = by_name["IH"][HEADER_SIZE:]
    static = (inputs["psk"]["responder_name"].encode() if case.auth == "psk"
              else pull_resp_hello_payload(plaintexts["RH"]).identity)
    mac1_key = _mac1_key(static)
    (ss, ct), = tape.encapsulations.values()
    assert ct == decode(by_name["RH"]).kem_ciphertext  # type: ignore[union-attr]
    recorded: dict[str, Any] = {"ml_kem_shared_secret": hx(ss),
                                "ml_kem_ciphertext": "the kem_ciphertext field of RH",
                                "ml_dsa_signatures": "the output of every tag step with recorded: true"
                                if case.auth != "psk" else "none (PSK mode)"}
    vector: dict[str, Any] = {
        "id": case.id,
        "note": case.note,
        "suite": f"0x{case.suite:04x}",
        "suite_name": SUITES[case.suite].name,
        "auth": case.auth,
        "qkd": case.qkd,
        "inputs": _hexed(inputs),
        "recorded": recorded,
        "frames": [{"name": n, "from": who, "hex": hx(f)} for n, (who, f) in zip(names, frames, strict=True)],
        "mac1": {"S_R": describe(static, parts, "S_R") if case.auth != "psk" else static.decode(), "key": hx(mac1_key),
                 "input_length": len(ih_body) - 32,
                 "output": hx(hmac.digest(mac1_key, ih_body[:-32], "sha256")[:16])},
        "steps": steps,
        "outputs": {"final_session": final, "application_secret": hx(result._application),
                    "exchange_key": hx(result.key()), "ratchet_next_psk": hx(result.ratchet_psk()),
                    "key_fingerprint": key_fingerprint(result.key()),
                    "export": {"label": EXPORT_LABEL.decode(), "length": EXPORT_LENGTH,
                               "output": hx(result.export(EXPORT_LABEL, EXPORT_LENGTH))},
                    "transcript_hash": hx(result.transcript_hash),
                    "qkd": result.qkd.status},
    }
    if case.cookie:
        cookie = hmac.digest(inputs["cookie"]["secret"], inputs["cookie"]["source_address"].encode(), "sha256")[:16]
        vector["cookie"] = {"cookie": hx(cookie), "cookie_key": hx(_cookie_key(static)),
                            "mac2": hx(hmac.digest(cookie, ih_body[:-16], "sha256")[:16])}
        assert vector["cookie"]["mac2"] == hx(ih_body[-16:])
    return vector


def _hexed(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _hexed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_hexed(v) for v in value]
    return value


def tape_from(vector: dict[str, Any]) -> Tape:
    """The recorded encapsulation and signatures of a vector, to play back."""
    tape = Tape(replay=True)
    frames = {f["name"]: bytes.fromhex(f["hex"]) for f in vector["frames"]}
    ek = decode(frames["IH"]).kem_key  # type: ignore[union-attr]
    ct = decode(frames["RH"]).kem_ciphertext  # type: ignore[union-attr]
    tape.encapsulations[ek] = (bytes.fromhex(vector["recorded"]["ml_kem_shared_secret"]), ct)
    for step in vector["steps"]:
        if step["step"] == "tag" and step.get("recorded"):
            side = vector["inputs"][step["by"]]
            _, public = get_backend("cryptography").signature(vector["auth"]).from_seed(
                bytes.fromhex(side["ml_dsa_seed"]))
            message = step["message_label"].encode() + bytes.fromhex(step["transcript_hash"])
            tape.signatures[(public, message)] = bytes.fromhex(step["output"])
    return tape


HANDSHAKE_HEADER = {
    "title": "hybridkex wire version 2 whole-handshake vectors",
    "source": SOURCE,
    "protocol": "hybridkex wire version 2 (docs/protocol.md)",
    "generator": "python tests/vectors_gen.py --out tests/data [--replay tests/data]",
    "fields": {
        "id": "auth / KEM (-hmac: the CatKDF HMAC variant) / qkd: a QKD key used, no-qkd, or a QKD failure",
        "suite": "the suite both sides use (the initiator offers only it; the responder accepts 1..4)",
        "inputs": "private inputs, hex: per side the values its rng returned in order (initiator: ml_kem_seed "
                  "d||z, x25519_private, nonce; responder: x25519_private, nonce), ML-DSA seeds (xi), PSKs "
                  "(newest first) and names, the QKD key with its key_ID and SAE IDs; timestamp is the "
                  "initiator's wall clock and the responder's (seconds)",
        "recorded": "outputs of randomized steps that cannot be recomputed: the ML-KEM ciphertext and shared "
                    "secret (Encaps at the responder), the ML-DSA signatures (hedged signing)",
        "frames": "every frame on the wire in order, header included, hex; name IH RH IF RF IC, and in the "
                  "cookie vector IH_first (the InitHello the CookieReply answers) and CR",
        "cookie": "the cookie vector only: cookie = HMAC-SHA256(secret, source_address)[0:16], the CookieReply "
                  "key SHA-256(\"hybridkex v2 cookie\" || S_R), and mac2 of the retried InitHello (IH)",
        "mac1": "the InitHello's mac1: S_R, the key SHA-256(\"hybridkex v2 mac1\" || S_R), output",
        "steps": "every derived value in the order the state machines computed it, each with its inputs: "
                 "catkdf (both stages; MA, MB as named parts), transcript_hash (the parts, each a named part or "
                 "a concatenation of them), aead (key = Expand(secret, label)[0:32], aad, the plaintext as named "
                 "parts and hex), confirmation (key = Expand(secret, label), HMAC-H(key, transcript_hash)), "
                 "tag (ML-DSA: Sign(sk, message_label || transcript_hash), recorded; PSK: HMAC-SHA256(mac_key, "
                 "transcript_hash)), psk_id (the blinded identifiers of InitHello)",
        "named parts": "IH RH IF RF IC: whole frames; RH_pub: RespHello body from nonce through psk_choice; "
                       "RH_plain, IF_plain, RF_plain, IC_plain: the opened payloads; IF_core, RF_core, qkd_block, "
                       "vec16(identity_R), vec16(tag_R), vec16(identity_I), vec16(tag_I), vec8(confirm_I), "
                       "vec16(tag_F), vec8(confirm_R), vec8(confirm_F): fields of those payloads (docs/protocol.md "
                       "§4); 'a || b' is a concatenation",
        "outputs": "final session secret, application secret, exchange key, the ratchet's next PSK, the key "
                   "fingerprint, one export(label, length), the reported transcript hash, the QKD outcome",
    },
    "caveats": [
        "cryptography (the backend used) takes no randomness for ML-KEM encapsulation nor for ML-DSA signing "
        "(hedged), and does not expose the FIPS 203/204 internal functions (ML-KEM.Encaps_internal, "
        "ML-DSA.Sign_internal); liboqs's WebAssembly build on npm does not export derandomized APIs either. So "
        "the RespHello ciphertext and every ML-DSA signature are recorded outputs: check them (Decaps with the "
        "dk from the recorded seed gives the recorded shared secret; each signature verifies), do not expect "
        "to reproduce them. No fully deterministic vector of those two steps is given.",
        "InitHello is fully deterministic given the injected randomness and clock.",
        "Private inputs are fixed functions of the vector id (SHAKE-256), so regenerating gives the same inputs.",
    ],
}


# -- component vectors -------------------------------------------------------------------------------

def _fake_connection(suite: int, hs: bytes = b"") -> Initiator:
    """An Initiator with only a suite and a handshake secret, to call the real key-schedule methods."""
    conn = Initiator.__new__(Initiator)
    conn.suite = SUITES[suite]
    conn._hs = hs
    return conn


def result_for(suite: int, session: bytes, auth: Any, peer_identity: bytes = b"") -> HandshakeResult:
    """The real HandshakeResult the state machine builds for ``session`` (outputs, exporter, ratchet)."""
    conn = _fake_connection(suite)
    conn.config = SimpleNamespace(authenticator=auth)  # type: ignore[assignment]
    conn._peer_identity = peer_identity
    conn._peer = SimpleNamespace()  # type: ignore[assignment]
    conn._th = _Transcript(SUITES[suite].hash)
    return conn._result(session, QKDBlock(QKDStatus.OFF), "")


def components() -> dict[str, Any]:
    def c(what: str, n: int = 32) -> bytes:
        return det("components", what, n)

    def hx(b: bytes) -> str:
        return b.hex()

    out: dict[str, Any] = {}
    out["catkdf"] = []
    for kdf in ("hkdf", "hmac"):
        for hash_ in ("sha256", "sha384"):
            for length in ((32, 48) if hash_ == "sha256" else (48, 100)):
                args = dict(psk=c("catkdf qkd key"), k1=c("catkdf k1"), k2=c("catkdf k2"), ma=c("catkdf MA", 70),
                            mb=c("catkdf MB", 50), context=L.CATKDF_CONTEXT_SESSION + c("catkdf context", 20),
                            label=L.CATKDF_LABEL_SESSION)
                value = catkdf(hash=hash_, kdf=kdf, length=length, **args)  # type: ignore[arg-type]
                out["catkdf"].append({"kdf": kdf, "hash": hash_, "length": length,
                                      **{k: hx(v) for k, v in args.items()}, "output": hx(value)})
    out["transcript_hash"] = []
    for hash_ in ("sha256", "sha384"):
        parts = [c("th IH", 40), c("th RH", 60), c("th partial", 10)]
        th = _Transcript(hash_)
        for p in parts[:2]:
            th.absorb(p)
        out["transcript_hash"].append({"hash": hash_, "parts": [hx(p) for p in parts],
                                       "output": hx(th.hash(parts[2])),
                                       "output_of_first_two": hx(th.hash())})
    out["expand"] = []
    out["aead_payload_keys"] = []
    for suite in (0x0001, 0x0002):
        conn = _fake_connection(suite, c(f"hs {suite}", SUITES[suite].hash_len))
        out["expand"].append({"hash": SUITES[suite].hash, "secret": hx(conn._hs), "label": "hybridkex v2 exchange key",
                              "output": hx(conn._expand(conn._hs, L.SECRET_EXCHANGE_KEY))})
        for label in (L.KEY_RESP_HELLO, L.KEY_INIT_FINISH, L.KEY_RESP_FINISH, L.KEY_INIT_CONFIRM):
            aad, plain = c(f"aad {suite}", SUITES[suite].hash_len), c(f"plain {label!r}", 24)
            out["aead_payload_keys"].append({"hash": SUITES[suite].hash, "hs": hx(conn._hs), "label": label.decode(),
                                             "key": hx(conn._expand(conn._hs, label)[:32]), "aad": hx(aad),
                                             "plaintext": hx(plain), "sealed": hx(conn._seal(label, aad, plain))})
    out["confirmations"] = []
    for suite in (0x0001, 0x0002):
        conn = _fake_connection(suite)
        for name, label in (("confirm_I", L.SECRET_INIT_FINISHED), ("confirm_R", L.SECRET_RESP_FINISHED),
                            ("fallback confirm_R", L.SECRET_RESP_FINISHED), ("confirm_F", L.SECRET_INIT_CONFIRM)):
            stage = "fallback session" if name in ("fallback confirm_R", "confirm_F") else "session"
            session = c(f"{stage} {suite}", SUITES[suite].hash_len)
            th = c(f"th {suite} {name}", SUITES[suite].hash_len)
            out["confirmations"].append({"name": name, "hash": SUITES[suite].hash, "session": hx(session),
                                         "label": label.decode(), "key": hx(conn._expand(session, label)),
                                         "transcript_hash": hx(th), "output": hx(conn._mac(session, label, th))})
    names = ("initiator.example", "responder.example")
    psk = c("psk")
    i_auth = PSKAuthenticator([psk], name=names[0], peer_name=names[1])
    r_auth = PSKAuthenticator([psk], name=names[1], peer_name=names[0])
    out["psk_mac"] = []
    for purpose, role in ((Purpose.RESPONDER, Role.RESPONDER), (Purpose.INITIATOR, Role.INITIATOR),
                          (Purpose.RESPONDER_FALLBACK, Role.RESPONDER)):
        signer = r_auth if role is Role.RESPONDER else i_auth
        for hlen in (32, 48):
            th = c(f"psk th {purpose.value} {hlen}", hlen)
            out["psk_mac"].append({"purpose": purpose.value, "label": _PSK_LABEL[purpose].decode(), "psk": hx(psk),
                                   "name_I": names[0], "name_R": names[1],
                                   "mac_key": hx(signer._derive(psk, _PSK_LABEL[purpose], role)),
                                   "transcript_hash": hx(th), "tag": hx(signer.make_tag(role, psk, purpose, th))})
    prefix = c("blind prefix", 1300)
    out["psk_blind"] = [{"psk": hx(k), "name_I": names[0], "name_R": names[1],
                         "K_blind": hx(i_auth._derive(k, L.PSK_BLIND, Role.INITIATOR)), "prefix": hx(prefix),
                         "output": hx(i_auth._blind(k, Role.INITIATOR, prefix))} for k in (psk, c("psk previous"))]
    body = c("ih body", 300)
    out["mac1"] = []
    for s_r in (names[1].encode(), c("an ML-DSA-44 public key stands here", 1312)):
        out["mac1"].append({"S_R": hx(s_r), "key": hx(_mac1_key(s_r)), "body": hx(body),
                            "output": hx(hmac.digest(_mac1_key(s_r), body[:-32], "sha256")[:16])})
    secret, source = c("cookie secret"), b"192.0.2.7"
    guard = DoSGuard(rng=lambda n: secret, now=lambda: 0.0, wall=lambda: 0.0)
    cookie = guard.cookie_for(source)
    mac1 = out["mac1"][0]["output"]
    with_mac1 = body[:-32] + bytes.fromhex(mac1)
    mac2 = hmac.digest(cookie, with_mac1, "sha256")[:16]
    assert guard._valid_mac2(source, with_mac1, mac2)
    nonce = c("cookie nonce", 12)
    out["cookie"] = {"secret": hx(secret), "source_address": source.decode(), "cookie": hx(cookie),
                     "S_R": hx(names[1].encode()), "cookie_key": hx(_cookie_key(names[1].encode())),
                     "nonce": hx(nonce), "mac1": mac1,
                     "sealed_cookie": hx(ChaCha20Poly1305(_cookie_key(names[1].encode())).encrypt(
                         nonce, cookie, bytes.fromhex(mac1))),
                     "body": hx(with_mac1 + mac2), "mac2": hx(mac2)}
    out["outputs"] = []
    for suite in (0x0001, 0x0002):
        session = c(f"outputs session {suite}", SUITES[suite].hash_len)
        res = result_for(suite, session, i_auth)
        out["outputs"].append({
            "hash": SUITES[suite].hash, "session": hx(session), "id_I": names[0], "id_R": names[1],
            "application_secret": hx(res._application), "exchange_key": hx(res.key()),
            "ratchet_secret": hx(_fake_connection(suite)._expand(session, L.SECRET_RATCHET)),
            "ratchet_next_psk": hx(res.ratchet_psk()),
            "exports": [{"label": lab.decode(), "length": n, "output": hx(res.export(lab, n))}
                        for lab, n in ((b"example exporter", 32), (b"tls13 external psk", 32), (b"x", 100))]})
    out["key_fingerprint"] = [{"key": hx(k), "output": key_fingerprint(k)} for k in (c("fingerprint key"), bytes(32))]
    out["tls_import"] = _tls_import(c)
    out["wireguard_labels"] = _wg_labels(c, result_for(0x0001, c("wg session"), i_auth))
    return out


def _tls_import(c: Callable[..., bytes]) -> dict[str, Any]:
    from hybridkex_tls import _importer as imp
    epsk, ext = c("tls epsk"), c("tls transcript hash")
    psk = imp.imported_psk(epsk, ext)
    return {"version": TLS_IMPORTER_VERSION, "exchange_context": imp.EXCHANGE_CONTEXT.decode(),
            "epsk_export_label": imp.EPSK_EXPORT_LABEL.decode(), "epsk": epsk.hex(), "external_identity": ext.hex(),
            "context": imp.IMPORTER_CONTEXT.decode(), "target_protocol": imp.TARGET_PROTOCOL_TLS13,
            "target_kdf": imp.TARGET_KDF_HKDF_SHA256,
            "imported_identity": psk.identity.hex(), "epskx": imp.hkdf_extract(b"", epsk).hex(), "ipskx": psk.key.hex()}


def _wg_labels(c: Callable[..., bytes], result: HandshakeResult) -> dict[str, Any]:
    from hybridkex_wg import _labels as wg
    ipub, rpub, epoch = c("wg initiator public"), c("wg responder public"), 7
    psk_label, confirm_label = wg.psk_label(ipub, rpub, epoch), wg.confirm_label(ipub, rpub, epoch)
    return {"version": WG_LABELS_VERSION, "initiator_public": ipub.hex(), "responder_public": rpub.hex(),
            "epoch": epoch, "exchange_context": wg.exchange_context(ipub, rpub, epoch).hex(),
            "psk_label": psk_label.hex(), "confirm_label": confirm_label.hex(),
            "suite": "0x0001", "application_secret": result._application.hex(),
            "psk": result.export(psk_label, 32).hex(), "confirm_key": result.export(confirm_label, 32).hex(),
            "constants": {name: getattr(wg, name).decode() for name in
                          ("CONTEXT", "EXPORT_PSK", "EXPORT_CONFIRM", "PROOF_INSTALLED", "TAG_COMMIT", "TAG_DONE")}}


COMPONENT_HEADER = {
    "title": "hybridkex wire version 2 component vectors",
    "source": SOURCE + "; each value computed by the project's own function for it",
    "protocol": "hybridkex wire version 2 (docs/protocol.md)",
    "generator": "python tests/vectors_gen.py --out tests/data",
    "fields": {
        "catkdf": "ETSI TS 103 744 CatKDF (§2) with a non-empty psk (a QKD key); context, label, MA, MB hex",
        "transcript_hash": "TH(parts) (§5.1); output_of_first_two is TH of the first two parts alone",
        "expand": "Expand(S, label) = HMAC-H(S, label || 0x01) (§2)",
        "aead_payload_keys": "key = Expand(hs, label)[0:32]; sealed = ChaCha20-Poly1305(key, 12 zero bytes, aad, "
                             "plaintext) (§4.3-4.6)",
        "confirmations": "key = Expand(session, label), output = HMAC-H(key, transcript_hash) (§6.3, §6.4); "
                         "the fallback's confirm_R uses the fallback session secret",
        "psk_mac": "mac_key = HMAC-SHA256(psk, label || vec16(name_I) || vec16(name_R) || 0x01), tag = "
                   "HMAC-SHA256(mac_key, transcript_hash) (§5.4), also for 48-byte transcript hashes",
        "psk_blind": "K_blind and blind = HMAC-SHA256(K_blind, prefix)[0:16] (§5.3)",
        "mac1": "key = SHA-256(\"hybridkex v2 mac1\" || S_R), output = HMAC-SHA256(key, body[0:len-32])[0:16] "
                "(§5.5); body is an InitHello body with mac1 and mac2 (their values do not matter)",
        "cookie": "cookie = HMAC-SHA256(secret, source_address)[0:16]; mac2 = HMAC-SHA256(cookie, "
                  "body[0:len-16])[0:16]; sealed_cookie under SHA-256(\"hybridkex v2 cookie\" || S_R) with "
                  "AAD = mac1 (§4.7, §8); source_address is the peer's host as ASCII text",
        "outputs": "from a session secret: application secret, exchange key, ratchet secret and next PSK "
                   "(id_I, id_R the PSK names), exports (§6.4, §6.6)",
        "key_fingerprint": "\"SHA256:\" || base64(SHA-256(\"hybridkex v2 key fingerprint\" || key)[0:16]), "
                           "unpadded (§6.4)",
        "tls_import": "the TLS plugin's RFC 9258 import: ImportedIdentity(external_identity, context, "
                      "target_protocol, target_kdf), epskx = HKDF-Extract(0, epsk), ipskx = "
                      "HKDF-Expand-Label(epskx, \"derived psk\", SHA-256(ImportedIdentity), 32)",
        "wireguard_labels": "the WireGuard plugin's labels: exchange_context, psk_label, confirm_label = a "
                            "prefix || initiator_public || responder_public || u64(epoch); psk and confirm_key = "
                            "export(label, 32) from application_secret (suite 0x0001)",
    },
    "caveats": [
        "Inputs are fixed functions of names (SHAKE-256), not real keys; every value is deterministic.",
        "tls_import and wireguard_labels pin the plugins' code as named in their 'version'; the plugins "
        "document those bindings (plugins/tls/README.md, plugins/wireguard/README.md).",
    ],
}


def dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def generate(replay: dict[str, Any] | None = None) -> dict[str, str]:
    """Both files' text; ``replay`` (a loaded handshake file) supplies the recorded encapsulations and signatures."""
    recorded = {v["id"]: v for v in (replay or {}).get("vectors", [])}
    vectors = [run_case(case, tape_from(recorded[case.id]) if case.id in recorded else Tape()) for case in cases()]
    return {COMPONENTS: dump({**COMPONENT_HEADER, "vectors": components()}),
            HANDSHAKES: dump({**HANDSHAKE_HEADER, "vectors": vectors})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to write the JSON files to")
    parser.add_argument("--replay", type=Path, help="directory holding a handshake file to take the recorded "
                                                    "encapsulations and signatures from")
    args = parser.parse_args(argv)
    replay = None
    if args.replay is not None:
        replay = json.loads((args.replay / HANDSHAKES).read_text(encoding="utf-8"))
    for name, text in generate(replay).items():
        (args.out / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.out / name} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
