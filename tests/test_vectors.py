"""The wire v2 test vectors (tests/data/hybridkex-v2-*.json, copied to docs/vectors/).

Three kinds of check:

* every component vector and every derivable value of every handshake vector is recomputed from
  the inputs and the recorded frames with the project's functions, and where the specification
  (docs/protocol.md) gives a formula, from that formula too;
* the real state machines, given each vector's inputs and its recorded ML-KEM encapsulation and
  ML-DSA signatures, produce the vector again byte for byte (so any change of the code's output
  for these inputs fails here);
* the copies for implementers under docs/vectors/ equal tests/data/.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest
import vectors_gen as gen
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from vectors import DATA, load

from hybridkex import QKDKey, QKDUnavailable, catkdf
from hybridkex.backends import get_backend
from hybridkex.protocol import (
    HandshakeComplete,
    HandshakeConfig,
    Initiator,
    NeedQKDKeys,
    PSKAuthenticator,
    SendMessage,
    key_fingerprint,
)
from hybridkex.protocol import _labels as L
from hybridkex.protocol._auth import _PSK_LABEL, Purpose
from hybridkex.protocol._handshake import _cookie_key, _mac1_key, _Transcript
from hybridkex.protocol._state import Role
from hybridkex.protocol._suites import AUTH_PSK, AUTH_SIG_CODES, QKD_POLICY_CODES, SUITES
from hybridkex.protocol._wire import HEADER_SIZE, MessageType, decode, init_hello_prefix, vec8, vec16

COMPONENTS = load(gen.COMPONENTS)
HANDSHAKES = load(gen.HANDSHAKES)
DOCS = Path(__file__).parent.parent / "docs" / "vectors"
BACKEND = get_backend("cryptography")
HASH_LEN = {"sha256": 32, "sha384": 48}


def h(x: str) -> bytes:
    return bytes.fromhex(x)


def th(hash_name: str, parts: list[bytes]) -> bytes:
    """TH per §5.1, written out."""
    data = L.TRANSCRIPT + b"".join(struct.pack(">I", len(p)) + p for p in parts)
    return hashlib.new(hash_name, data).digest()


def expand(hash_name: str, secret: bytes, label: bytes) -> bytes:
    """Expand per §2, written out."""
    return hmac.digest(secret, label + b"\x01", hash_name)


def spec_catkdf(hash_name: str, kdf: str, psk: bytes, k1: bytes, k2: bytes, ma: bytes, mb: bytes, context: bytes,
                label: bytes, length: int) -> bytes:
    """CatKDF per §2's pseudo-code (independent of hybridkex._catkdf)."""
    u32 = struct.Struct(">I").pack
    info = hashlib.new(hash_name, u32(len(context)) + context + u32(len(ma)) + ma + u32(len(mb)) + mb).digest()
    secret, out, block = psk + k1 + k2, b"", b""
    prk = hmac.digest(label, secret, hash_name)
    for i in range(1, 256):
        if kdf == "hkdf":
            block = hmac.digest(prk, block + info + bytes([i]), hash_name)
        else:
            block = hmac.digest(label, u32(i) + secret + info, hash_name)
        out += block
        if len(out) >= length:
            return out[:length]
    raise AssertionError("unreachable")


def _hkdf_expand(hash_name: str, secret: bytes, info: bytes, length: int) -> bytes:
    algorithm = hashes.SHA256() if hash_name == "sha256" else hashes.SHA384()
    return HKDFExpand(algorithm, length, info).derive(secret)


# -- component vectors ------------------------------------------------------------------------------

C = COMPONENTS["vectors"]


def test_component_file_covers_every_item() -> None:
    assert {(v["kdf"], v["hash"]) for v in C["catkdf"]} == {(k, x) for k in ("hkdf", "hmac")
                                                            for x in ("sha256", "sha384")}
    assert all(v["psk"] for v in C["catkdf"]), "CatKDF vectors must have a non-empty psk (a QKD key)"
    assert {v["name"] for v in C["confirmations"]} == {"confirm_I", "confirm_R", "fallback confirm_R", "confirm_F"}
    assert {v["purpose"] for v in C["psk_mac"]} == {p.value for p in Purpose}
    assert {v["label"] for v in C["aead_payload_keys"]} == {
        lab.decode() for lab in (L.KEY_RESP_HELLO, L.KEY_INIT_FINISH, L.KEY_RESP_FINISH, L.KEY_INIT_CONFIRM)}


@pytest.mark.parametrize("v", C["catkdf"], ids=lambda v: f"{v['kdf']}-{v['hash']}-{v['length']}")
def test_catkdf(v: dict[str, Any]) -> None:
    args = {k: h(v[k]) for k in ("psk", "k1", "k2", "ma", "mb", "context", "label")}
    assert catkdf(hash=v["hash"], kdf=v["kdf"], length=v["length"], **args).hex() == v["output"]
    assert spec_catkdf(v["hash"], v["kdf"], args["psk"], args["k1"], args["k2"], args["ma"], args["mb"],
                       args["context"], args["label"], v["length"]).hex() == v["output"]


@pytest.mark.parametrize("v", C["transcript_hash"], ids=lambda v: v["hash"])
def test_transcript_hash(v: dict[str, Any]) -> None:
    parts = [h(p) for p in v["parts"]]
    t = _Transcript(v["hash"])
    t.absorb(parts[0])
    t.absorb(parts[1])
    assert t.hash(parts[2]).hex() == th(v["hash"], parts).hex() == v["output"]
    assert t.hash().hex() == th(v["hash"], parts[:2]).hex() == v["output_of_first_two"]


@pytest.mark.parametrize("v", C["expand"], ids=lambda v: v["hash"])
def test_expand(v: dict[str, Any]) -> None:
    conn = gen._fake_connection(0x0001 if v["hash"] == "sha256" else 0x0002)
    assert conn._expand(h(v["secret"]), v["label"].encode()).hex() == v["output"]
    assert _hkdf_expand(v["hash"], h(v["secret"]), v["label"].encode(), HASH_LEN[v["hash"]]).hex() == v["output"]


@pytest.mark.parametrize("v", C["aead_payload_keys"], ids=lambda v: f"{v['hash']}-{v['label']}")
def test_aead_payload_key(v: dict[str, Any]) -> None:
    conn = gen._fake_connection(0x0001 if v["hash"] == "sha256" else 0x0002, h(v["hs"]))
    label = v["label"].encode()
    assert conn._expand(conn._hs, label)[:32].hex() == expand(v["hash"], h(v["hs"]), label)[:32].hex() == v["key"]
    assert conn._seal(label, h(v["aad"]), h(v["plaintext"])).hex() == v["sealed"]
    assert ChaCha20Poly1305(h(v["key"])).decrypt(bytes(12), h(v["sealed"]), h(v["aad"])).hex() == v["plaintext"]


@pytest.mark.parametrize("v", C["confirmations"], ids=lambda v: f"{v['hash']}-{v['name']}")
def test_confirmation(v: dict[str, Any]) -> None:
    conn = gen._fake_connection(0x0001 if v["hash"] == "sha256" else 0x0002)
    session, label, data = h(v["session"]), v["label"].encode(), h(v["transcript_hash"])
    assert conn._expand(session, label).hex() == v["key"]
    assert conn._mac(session, label, data).hex() == v["output"]
    assert hmac.digest(expand(v["hash"], session, label), data, v["hash"]).hex() == v["output"]


@pytest.mark.parametrize("v", C["psk_mac"], ids=lambda v: f"{v['purpose']}-{len(v['transcript_hash']) // 2}")
def test_psk_mac(v: dict[str, Any]) -> None:
    purpose = Purpose(v["purpose"])
    role = Role.INITIATOR if purpose is Purpose.INITIATOR else Role.RESPONDER
    own, peer = (v["name_I"], v["name_R"]) if role is Role.INITIATOR else (v["name_R"], v["name_I"])
    psk, data = h(v["psk"]), h(v["transcript_hash"])
    signer = PSKAuthenticator([psk], name=own, peer_name=peer)
    verifier = PSKAuthenticator([psk], name=peer, peer_name=own)
    assert signer.make_tag(role, psk, purpose, data).hex() == v["tag"]
    other = Role.RESPONDER if role is Role.INITIATOR else Role.INITIATOR
    verifier.verify_peer(other, psk, purpose, b"", data, h(v["tag"]))
    names = vec16(v["name_I"].encode()) + vec16(v["name_R"].encode())
    key = hmac.digest(psk, v["label"].encode() + names + b"\x01", "sha256")
    assert key.hex() == v["mac_key"] and v["label"].encode() == _PSK_LABEL[purpose]
    assert hmac.digest(key, data, "sha256").hex() == v["tag"]


@pytest.mark.parametrize("v", C["psk_blind"], ids=lambda v: v["psk"][:8])
def test_psk_blind(v: dict[str, Any]) -> None:
    psk, prefix = h(v["psk"]), h(v["prefix"])
    ini = PSKAuthenticator([psk], name=v["name_I"], peer_name=v["name_R"])
    res = PSKAuthenticator([psk], name=v["name_R"], peer_name=v["name_I"])
    assert ini.offer(prefix) == (h(v["output"]),)
    assert res.select(prefix, [h(v["output"])]) == (0, psk)
    names = vec16(v["name_I"].encode()) + vec16(v["name_R"].encode())
    k_blind = hmac.digest(psk, L.PSK_BLIND + names + b"\x01", "sha256")
    assert k_blind.hex() == v["K_blind"]
    assert hmac.digest(k_blind, prefix, "sha256")[:16].hex() == v["output"]


@pytest.mark.parametrize("v", C["mac1"], ids=lambda v: f"S_R-{len(v['S_R']) // 2}")
def test_mac1(v: dict[str, Any]) -> None:
    s_r, body = h(v["S_R"]), h(v["body"])
    assert _mac1_key(s_r).hex() == hashlib.sha256(L.MAC1 + s_r).hexdigest() == v["key"]
    assert hmac.digest(h(v["key"]), body[:-32], "sha256")[:16].hex() == v["output"]


def test_cookie_and_mac2() -> None:
    v = C["cookie"]
    secret, source = h(v["secret"]), v["source_address"].encode()
    guard = gen.DoSGuard(rng=lambda n: secret, now=lambda: 0.0, wall=lambda: 0.0)
    assert guard.cookie_for(source).hex() == hmac.digest(secret, source, "sha256")[:16].hex() == v["cookie"]
    body = h(v["body"])
    assert body[-32:-16].hex() == v["mac1"] and body[-16:].hex() == v["mac2"]
    assert hmac.digest(h(v["cookie"]), body[:-16], "sha256")[:16].hex() == v["mac2"]
    assert guard._valid_mac2(source, body[:-16], body[-16:])
    key = _cookie_key(h(v["S_R"]))
    assert key.hex() == hashlib.sha256(L.COOKIE + h(v["S_R"])).hexdigest() == v["cookie_key"]
    assert ChaCha20Poly1305(key).decrypt(h(v["nonce"]), h(v["sealed_cookie"]), h(v["mac1"])).hex() == v["cookie"]


@pytest.mark.parametrize("v", C["outputs"], ids=lambda v: v["hash"])
def test_outputs(v: dict[str, Any]) -> None:
    suite = 0x0001 if v["hash"] == "sha256" else 0x0002
    session, hn = h(v["session"]), v["hash"]
    auth = PSKAuthenticator([bytes(32)], name=v["id_I"], peer_name=v["id_R"])
    result = gen.result_for(suite, session, auth)
    application = expand(hn, session, L.SECRET_APPLICATION)
    assert result._application.hex() == application.hex() == v["application_secret"]
    assert result.key().hex() == expand(hn, session, L.SECRET_EXCHANGE_KEY)[:32].hex() == v["exchange_key"]
    ratchet = expand(hn, session, L.SECRET_RATCHET)
    assert ratchet.hex() == v["ratchet_secret"]
    ids = vec16(v["id_I"].encode()) + vec16(v["id_R"].encode())
    next_psk = hmac.digest(ratchet, L.RATCHET_NEXT_PSK + ids + b"\x01", hn)[:32]
    assert result.ratchet_psk().hex() == next_psk.hex() == v["ratchet_next_psk"]
    for e in v["exports"]:
        label = e["label"].encode()
        info = L.EXPORTER + vec16(label) + struct.pack(">H", e["length"])
        assert result.export(label, e["length"]).hex() == e["output"]
        assert _hkdf_expand(hn, application, info, e["length"]).hex() == e["output"]


@pytest.mark.parametrize("v", C["key_fingerprint"], ids=lambda v: v["key"][:8])
def test_key_fingerprint(v: dict[str, Any]) -> None:
    digest = hashlib.sha256(L.KEY_FINGERPRINT + h(v["key"])).digest()[:16]
    assert key_fingerprint(h(v["key"])) == "SHA256:" + base64.b64encode(digest).decode().rstrip("=") == v["output"]


def test_tls_import() -> None:
    from hybridkex_tls import _importer as imp
    v = C["tls_import"]
    assert (imp.EXCHANGE_CONTEXT.decode(), imp.EPSK_EXPORT_LABEL.decode(), imp.IMPORTER_CONTEXT.decode()) == (
        v["exchange_context"], v["epsk_export_label"], v["context"])
    identity = imp.imported_identity(h(v["external_identity"]), v["context"].encode(),
                                     target_protocol=v["target_protocol"], target_kdf=v["target_kdf"])
    ext, ctx = h(v["external_identity"]), v["context"].encode()
    assert identity == vec16(ext) + vec16(ctx) + struct.pack(">HH", v["target_protocol"], v["target_kdf"])
    assert identity.hex() == v["imported_identity"]
    epskx = hmac.digest(bytes(32), h(v["epsk"]), "sha256")
    assert epskx.hex() == v["epskx"]
    # RFC 8446 §7.1 HkdfLabel for "tls13 derived psk" with context SHA-256(ImportedIdentity)
    full = b"tls13 derived psk"
    info = struct.pack(">HB", 32, len(full)) + full + bytes([32]) + hashlib.sha256(identity).digest()
    assert _hkdf_expand("sha256", epskx, info, 32).hex() == v["ipskx"]
    psk = imp.imported_psk(h(v["epsk"]), ext, ctx)
    assert (psk.identity.hex(), psk.key.hex()) == (v["imported_identity"], v["ipskx"])


def test_wireguard_labels() -> None:
    from hybridkex_wg import _labels as wg
    v = C["wireguard_labels"]
    ipub, rpub, epoch = h(v["initiator_public"]), h(v["responder_public"]), v["epoch"]
    assert {n: getattr(wg, n).decode() for n in v["constants"]} == v["constants"]
    binding = ipub + rpub + struct.pack(">Q", epoch)
    assert wg.exchange_context(ipub, rpub, epoch).hex() == (wg.CONTEXT + binding).hex() == v["exchange_context"]
    assert wg.psk_label(ipub, rpub, epoch).hex() == (wg.EXPORT_PSK + binding).hex() == v["psk_label"]
    assert wg.confirm_label(ipub, rpub, epoch).hex() == (wg.EXPORT_CONFIRM + binding).hex() == v["confirm_label"]
    for label, key in ((h(v["psk_label"]), v["psk"]), (h(v["confirm_label"]), v["confirm_key"])):
        info = L.EXPORTER + vec16(label) + struct.pack(">H", 32)
        assert _hkdf_expand("sha256", h(v["application_secret"]), info, 32).hex() == key


# -- whole-handshake vectors ------------------------------------------------------------------------

V = HANDSHAKES["vectors"]


def test_handshake_file_covers_every_mode() -> None:
    ids = {v["id"] for v in V}
    for auth in ("ml-dsa-44", "ml-dsa-65", "ml-dsa-87", "psk"):
        for kem in ("ml-kem-768", "ml-kem-1024"):
            for qkd in ("qkd", "no-qkd"):
                assert f"{auth}/{kem}/{qkd}" in ids
    assert {f"0x{s:04x}" for s in SUITES} == {v["suite"] for v in V}
    assert [len(v["frames"]) for v in V if v["qkd"] == "responder-fallback"] == [5, 5]
    assert any(v["qkd"] == "initiator-unavailable" for v in V)


class Derivation:
    """Everything one handshake vector says, recomputed from its inputs and frames (docs/protocol.md)."""

    def __init__(self, v: dict[str, Any]) -> None:
        self.v = v
        self.inputs = v["inputs"]
        self.suite = SUITES[int(v["suite"], 16)]
        self.hash = self.suite.hash
        self.frames = {f["name"]: h(f["hex"]) for f in v["frames"]}  # with IH_first and CR in the cookie vector
        self.messages = {name: decode(frame) for name, frame in self.frames.items()}
        self.steps = v["steps"]

    def step(self, kind: str, **match: str) -> dict[str, Any]:
        found = [s for s in self.steps if s["step"] == kind and all(s.get(k) == x for k, x in match.items())]
        assert len(found) == 1, f"expected one {kind} step with {match}, found {len(found)}"
        return found[0]

    def ids(self) -> tuple[bytes, bytes]:
        if self.v["auth"] == "psk":
            p = self.inputs["psk"]
            return p["initiator_name"].encode(), p["responder_name"].encode()
        sig = BACKEND.signature(self.v["auth"])
        return tuple(sig.from_seed(h(self.inputs[side]["ml_dsa_seed"]))[1]  # type: ignore[return-value]
                     for side in ("initiator", "responder"))


@pytest.fixture(params=V, ids=lambda v: v["id"])
def d(request: pytest.FixtureRequest) -> Derivation:
    return Derivation(request.param)


def test_private_inputs_give_the_public_values(d: Derivation) -> None:
    ih, rh = d.messages["IH"], d.messages["RH"]
    i, r = d.inputs["initiator"], d.inputs["responder"]
    names = [f["name"] for f in d.v["frames"]]
    assert names[:4] == ["IH", "RH", "IF", "RF"] or names[:6] == ["IH_first", "CR", "IH", "RH", "IF", "RF"]
    assert ih.timestamp == d.inputs["timestamp"] and ih.nonce.hex() == i["nonce"] and rh.nonce.hex() == r["nonce"]
    assert ih.suites == tuple(d.inputs["initiator_suites"]) and rh.suite == d.suite.code
    assert ih.context.hex() == d.inputs["context"]
    assert ih.auth_kind == (AUTH_PSK if d.v["auth"] == "psk" else AUTH_SIG_CODES[d.v["auth"]])
    assert (ih.qkd_policy, rh.qkd_policy) == (QKD_POLICY_CODES[d.inputs["initiator_qkd_policy"]],
                                              QKD_POLICY_CODES[d.inputs["responder_qkd_policy"]])
    for side, msg in (("initiator", ih), ("responder", rh)):
        pub = x25519.X25519PrivateKey.from_private_bytes(h(d.inputs[side]["x25519_private"])).public_key()
        assert pub.public_bytes_raw() == msg.x25519
    _, ek = BACKEND.kem(d.suite.kem).generate(h(i["ml_kem_seed"]))
    assert ek == ih.kem_key


def test_shared_secrets(d: Derivation) -> None:
    ih, rh = d.messages["IH"], d.messages["RH"]
    ka = BACKEND.key_agreement("x25519")
    xi, _ = ka.generate(h(d.inputs["initiator"]["x25519_private"]))
    xr, _ = ka.generate(h(d.inputs["responder"]["x25519_private"]))
    k1 = ka.exchange(xi, rh.x25519)
    assert k1 == ka.exchange(xr, ih.x25519)
    kem = BACKEND.kem(d.suite.kem)
    dk, _ = kem.generate(h(d.inputs["initiator"]["ml_kem_seed"]))
    k2 = kem.decapsulate(dk, rh.kem_ciphertext)
    assert k2.hex() == d.v["recorded"]["ml_kem_shared_secret"]
    for s in d.steps:
        if s["step"] == "catkdf":
            assert (s["k1"], s["k2"]) == (k1.hex(), k2.hex())


def test_mac1_and_psk_identifiers(d: Derivation) -> None:
    ih, rh = d.messages["IH"], d.messages["RH"]
    body = d.frames["IH"][HEADER_SIZE:]
    id_i, id_r = d.ids()
    assert d.v["mac1"]["key"] == _mac1_key(id_r).hex() == hashlib.sha256(L.MAC1 + id_r).hexdigest()
    assert ih.mac1 == hmac.digest(_mac1_key(id_r), body[:-32], "sha256")[:16] == h(d.v["mac1"]["output"])
    if "cookie" not in d.v:
        assert ih.mac2 == bytes(16) and "CR" not in d.frames
    prefix = init_hello_prefix(ih)
    if d.v["auth"] != "psk":
        assert ih.psk_ids == () and rh.psk_choice == 0xFF
        return
    p = d.inputs["psk"]
    names = vec16(id_i) + vec16(id_r)
    blinds = []
    for key, step in zip(p["initiator_keys"], [s for s in d.steps if s["step"] == "psk_id"], strict=True):
        k_blind = hmac.digest(h(key), L.PSK_BLIND + names + b"\x01", "sha256")
        assert (step["psk"], step["K_blind"], step["prefix_length"]) == (key, k_blind.hex(), len(prefix))
        blinds.append(hmac.digest(k_blind, prefix, "sha256")[:16])
        assert blinds[-1].hex() == step["output"]
    assert list(ih.psk_ids) == blinds
    assert p["initiator_keys"][rh.psk_choice] == next(k for k in p["responder_keys"] if k in p["initiator_keys"])


def test_key_schedule(d: Derivation) -> None:
    """Recompute hs, open every sealed payload, check every tag and confirmation and the session secret."""
    hn, v = d.hash, d.v
    hs_step = d.step("catkdf", name="hs")
    k1, k2 = h(hs_step["k1"]), h(hs_step["k2"])
    rh_pub = gen.resp_hello_public(d.messages["RH"])
    assert (hs_step["MA"], hs_step["MB"], hs_step["psk"]) == ("IH", "RH_pub", "")
    assert h(hs_step["context"]) == L.CATKDF_CONTEXT_HANDSHAKE and hs_step["label"] == L.CATKDF_LABEL_HANDSHAKE.decode()
    hs = catkdf(hash=hn, kdf=d.suite.kdf, psk=b"", k1=k1, k2=k2, ma=d.frames["IH"], mb=rh_pub,
                context=L.CATKDF_CONTEXT_HANDSHAKE, label=L.CATKDF_LABEL_HANDSHAKE, length=HASH_LEN[hn])
    assert hs.hex() == hs_step["output"]

    # Open each sealed payload with the spec's key and AAD (§4.3-4.6).
    order = [n for n in ("IH", "RH", "IF", "RF", "IC") if n in d.frames]  # never IH_first nor CR (§5.1)
    labels = {"RH": L.KEY_RESP_HELLO, "IF": L.KEY_INIT_FINISH, "RF": L.KEY_RESP_FINISH, "IC": L.KEY_INIT_CONFIRM}
    plaintexts = {}
    for name in order[1:]:
        before = [d.frames[n] for n in order[:order.index(name)]]
        aad = th(hn, before + [rh_pub]) if name == "RH" else th(hn, before)
        key = expand(hn, hs, labels[name])[:32]
        step = d.step("aead", message=name)
        assert (step["label"], step["key"], step["aad"], step["secret"]) == (labels[name].decode(), key.hex(),
                                                                             aad.hex(), "hs")
        plaintexts[name] = ChaCha20Poly1305(key).decrypt(bytes(12), d.messages[name].sealed, aad)
        assert plaintexts[name].hex() == step["plaintext_hex"]
    parts = gen.named_parts(d.frames, plaintexts)
    for name in order[1:]:
        assert gen.resolve(d.step("aead", message=name)["plaintext"], parts) == plaintexts[name]

    # Every transcript hash recorded is TH of the parts it names.
    for step in d.steps:
        if step["step"] == "transcript_hash":
            assert th(hn, [gen.resolve(p, parts) for p in step["parts"]]).hex() == step["output"]

    # Tags (§5.4) over the spec's transcript hashes.
    f = [d.frames[n] for n in order]
    fallback = v["qkd"] == "responder-fallback"
    expected_th = {"responder": th(hn, [f[0], rh_pub, parts["vec16(identity_R)"]]),
                   "initiator": th(hn, f[:2] + [parts["IF_core"]])}
    if fallback:
        expected_th["responder fallback"] = th(hn, f[:3] + [parts["RF_core"]])
    in_payload = {"responder": parts["vec16(tag_R)"][2:], "initiator": parts["vec16(tag_I)"][2:],
                  "responder fallback": parts["vec16(tag_F)"][2:]}
    id_i, id_r = d.ids()
    for purpose, transcript in expected_th.items():
        step = d.step("tag", purpose=purpose)
        assert step["transcript_hash"] == transcript.hex() and step["output"] == in_payload[purpose].hex()
        tag = h(step["output"])
        if v["auth"] == "psk":
            p = d.inputs["psk"]
            psk = h(p["initiator_keys"][d.messages["RH"].psk_choice])
            label = _PSK_LABEL[Purpose(purpose)]
            mac_key = hmac.digest(psk, label + vec16(id_i) + vec16(id_r) + b"\x01", "sha256")
            assert step["mac_key"] == mac_key.hex() and hmac.digest(mac_key, transcript, "sha256") == tag
        else:
            signer = id_i if purpose == "initiator" else id_r
            assert step["recorded"] and step["message_label"] == gen._SIG_CONTEXT[Purpose(purpose)].decode()
            sig = BACKEND.signature(v["auth"])
            assert sig.verify(signer, step["message_label"].encode() + transcript, tag, b"")
            assert not sig.verify(signer, transcript, tag, b"")
    assert (parts["identity_R"], parts["identity_I"]) == ((b"", b"") if v["auth"] == "psk" else (id_r, id_i))
    if not fallback:
        assert in_payload["responder fallback"] == b""

    # Session secret(s) (§6.3, §6.4).
    q = d.inputs.get("qkd")
    block = parts["qkd_block"]
    used = block[0] == 1
    assert block[0] == {"off": 0, "used": 1, "responder-fallback": 1, "initiator-unavailable": 2}[v["qkd"]]
    if q is not None:
        sae = vec8(q["master_sae_id"].encode()) + vec8(q["slave_sae_id"].encode())
        key_ids = uuid.UUID(q["key_id"]).bytes if used else b""
        assert block[2:] == sae + struct.pack(">H", q["key_bits"]) + bytes([len(key_ids) // 16]) + key_ids
    ma = d.frames["IH"] + parts["IF_core"] + parts["vec16(tag_I)"]
    mb = rh_pub + parts["RH_plain"]
    context = L.CATKDF_CONTEXT_SESSION + vec16(id_i) + vec16(id_r)

    def session(psk: bytes, final_block: bytes, mb: bytes, name: str) -> bytes:
        step = d.step("catkdf", name=name)
        out = catkdf(hash=hn, kdf=d.suite.kdf, psk=psk, k1=k1, k2=k2, ma=ma, mb=mb, context=context + final_block,
                     label=L.CATKDF_LABEL_SESSION, length=HASH_LEN[hn])
        assert (step["psk"], step["context"], step["label"]) == (psk.hex(), (context + final_block).hex(),
                                                                 L.CATKDF_LABEL_SESSION.decode())
        assert (gen.resolve(step["MA"], parts), gen.resolve(step["MB"], parts)) == (ma, mb)
        assert out.hex() == step["output"]
        assert spec_catkdf(hn, d.suite.kdf, psk, k1, k2, ma, mb, context + final_block, L.CATKDF_LABEL_SESSION,
                           HASH_LEN[hn]) == out
        return out

    qkd_key = h(q["key"]) if used else b""
    s = session(qkd_key, block, mb, "session")

    def mac(secret: bytes, label: bytes, transcript: bytes, in_plain: str, name: str) -> None:
        step = d.step("confirmation", label=label.decode(), secret=name)
        key = expand(hn, secret, label)
        assert (step["key"], step["transcript_hash"]) == (key.hex(), transcript.hex())
        assert hmac.digest(key, transcript, hn).hex() == step["output"]
        if in_plain:
            assert parts[in_plain][1:].hex() == step["output"]

    mac(s, L.SECRET_INIT_FINISHED, th(hn, f[:2] + [parts["IF_core"] + parts["vec16(tag_I)"]]), "vec8(confirm_I)",
        "session")
    final = s
    if fallback:
        final_block = bytes([2, parts["RF_core"][1]]) + block[2:]
        final = session(b"", final_block, mb + parts["RF_core"] + parts["vec16(tag_F)"], "session_fallback")
        mac(final, L.SECRET_RESP_FINISHED, th(hn, f[:3] + [parts["RF_core"] + parts["vec16(tag_F)"]]),
            "vec8(confirm_R)", "session_fallback")
        mac(final, L.SECRET_INIT_CONFIRM, th(hn, f[:4]), "vec8(confirm_F)", "session_fallback")
        assert parts["RF_core"][0] == 2 and parts["RF_core"][1] != 0
    else:
        assert parts["RF_core"] == b"\x00\x00" and parts["vec16(tag_F)"] == b"\x00\x00"
        mac(s, L.SECRET_RESP_FINISHED, th(hn, f[:3] + [parts["RF_core"] + parts["vec16(tag_F)"]]),
            "vec8(confirm_R)", "session")

    # Outputs (§6.4, §6.6, §5.1).
    out = v["outputs"]
    application = expand(hn, final, L.SECRET_APPLICATION)
    assert out["final_session"] == final.hex() and out["application_secret"] == application.hex()
    assert out["exchange_key"] == expand(hn, final, L.SECRET_EXCHANGE_KEY)[:32].hex()
    next_psk = hmac.digest(expand(hn, final, L.SECRET_RATCHET), L.RATCHET_NEXT_PSK + vec16(id_i) + vec16(id_r)
                           + b"\x01", hn)[:32]
    assert out["ratchet_next_psk"] == next_psk.hex()
    assert out["key_fingerprint"] == key_fingerprint(h(out["exchange_key"]))
    e = out["export"]
    info = L.EXPORTER + vec16(e["label"].encode()) + struct.pack(">H", e["length"])
    assert _hkdf_expand(hn, application, info, e["length"]).hex() == e["output"]
    assert out["transcript_hash"] == th(hn, f).hex()
    assert out["qkd"] == {"used": "used", "off": "off"}.get(v["qkd"], "unavailable")

    # Nothing recorded is left unchecked: every step was derived above (transcript hashes in the loop).
    count = {k: sum(s["step"] == k for s in d.steps) for k in ("catkdf", "aead", "confirmation", "tag", "psk_id")}
    assert count == {"catkdf": 3 if fallback else 2, "aead": len(order) - 1, "confirmation": 3 if fallback else 2,
                     "tag": len(expected_th), "psk_id": len(d.inputs["psk"]["initiator_keys"]) if d.inputs.get("psk")
                     else 0}
    assert {s["step"] for s in d.steps} == set(count) - ({"psk_id"} if v["auth"] != "psk" else set()) | {
        "transcript_hash"}


def test_cookie_vector() -> None:
    """§4.7, §8: the CookieReply seals the cookie for the first InitHello's mac1; the retry differs only in mac2."""
    (v,) = [v for v in V if "cookie" in v]
    frames = {f["name"]: h(f["hex"]) for f in v["frames"]}
    first, cr, ih = decode(frames["IH_first"]), decode(frames["CR"]), decode(frames["IH"])
    inputs, rec = v["inputs"], v["cookie"]
    cookie = hmac.digest(h(inputs["cookie"]["secret"]), inputs["cookie"]["source_address"].encode(), "sha256")[:16]
    s_r = inputs["psk"]["responder_name"].encode()
    assert rec["cookie"] == cookie.hex() and rec["cookie_key"] == hashlib.sha256(L.COOKIE + s_r).hexdigest()
    assert cr.nonce.hex() == inputs["responder"]["cookie_nonce"]
    assert ChaCha20Poly1305(h(rec["cookie_key"])).decrypt(cr.nonce, cr.sealed_cookie, first.mac1) == cookie
    assert first.mac2 == bytes(16) and frames["IH_first"][:-16] == frames["IH"][:-16]
    assert ih.mac2 == hmac.digest(cookie, frames["IH"][HEADER_SIZE:-16], "sha256")[:16] == h(rec["mac2"])
    assert v["outputs"]["transcript_hash"] == th("sha256", [frames[n] for n in ("IH", "RH", "IF", "RF")]).hex()


# -- the code still produces the vectors ------------------------------------------------------------

def test_init_hello_is_deterministic(d: Derivation) -> None:
    """InitHello needs nothing recorded: the plain cryptography backend with the injected rng and clock
    sends the recorded frame."""
    case = next(c for c in gen.cases() if c.id == d.v["id"])
    inputs = gen._inputs(case)
    i_auth, _ = gen._authenticators(case, inputs, BACKEND)
    q = inputs.get("qkd", {})
    cfg = HandshakeConfig(i_auth, tuple(inputs["initiator_suites"]), inputs["initiator_qkd_policy"],
                          backend=BACKEND, context=case.context, sae_id=q.get("master_sae_id", ""),
                          peer_sae_id=q.get("slave_sae_id", ""))
    i = inputs["initiator"]
    ini = Initiator(cfg, rng=gen.Script([i["ml_kem_seed"], i["x25519_private"], i["nonce"]]),
                    wall=lambda: float(gen.TIMESTAMP), now=lambda: 0.0)
    (hello,) = ini.initiate()
    first = d.frames.get("IH_first", d.frames["IH"])  # the cookie vector's retry differs in mac2 only
    assert hello.data == first and MessageType(hello.data[3]) is MessageType.INIT_HELLO


@pytest.mark.parametrize("v", [v for v in V if v["auth"] == "psk"], ids=lambda v: v["id"])
def test_psk_initiator_answers_the_recorded_frames_byte_for_byte(v: dict[str, Any]) -> None:
    """In PSK mode nothing the initiator sends is randomized: fed the recorded RespHello and RespFinish, the plain
    cryptography backend sends the recorded InitFinish (and InitConfirm) and outputs the recorded keys."""
    case = next(c for c in gen.cases() if c.id == v["id"])
    inputs = gen._inputs(case)
    i_auth, _ = gen._authenticators(case, inputs, BACKEND)
    q = inputs.get("qkd", {})
    cfg = HandshakeConfig(i_auth, tuple(inputs["initiator_suites"]), inputs["initiator_qkd_policy"],
                          backend=BACKEND, context=case.context, sae_id=q.get("master_sae_id", ""),
                          peer_sae_id=q.get("slave_sae_id", ""))
    i = inputs["initiator"]
    ini = Initiator(cfg, rng=gen.Script([i["ml_kem_seed"], i["x25519_private"], i["nonce"]]),
                    wall=lambda: float(gen.TIMESTAMP), now=lambda: 0.0)
    sent = [e.data for e in ini.initiate()]
    results = []
    for frame in (h(f["hex"]) for f in v["frames"] if f["from"] == "responder"):
        events = ini.receive(frame)
        while events:
            ev = events.pop(0)
            if isinstance(ev, NeedQKDKeys):
                events += (ini.qkd_failed(QKDUnavailable("the KME did not answer")) if not q["key"]
                           else ini.qkd_keys([QKDKey(uuid.UUID(q["key_id"]), q["key"])]))
            elif isinstance(ev, SendMessage):
                sent.append(ev.data)
            elif isinstance(ev, HandshakeComplete):
                results.append(ev.result)
    assert [s.hex() for s in sent] == [f["hex"] for f in v["frames"] if f["from"] == "initiator"]
    (result,) = results
    out = v["outputs"]
    assert (result.key().hex(), result.ratchet_psk().hex(), result.transcript_hash.hex()) == (
        out["exchange_key"], out["ratchet_next_psk"], out["transcript_hash"])
    assert result.export(out["export"]["label"].encode(), out["export"]["length"]).hex() == out["export"]["output"]


def test_state_machines_reproduce_the_vector(d: Derivation) -> None:
    """Both roles, given the vector's inputs and its recorded encapsulation and signatures, give every
    frame and value again."""
    case = next(c for c in gen.cases() if c.id == d.v["id"])
    assert gen.run_case(case, gen.tape_from(d.v)) == d.v


def test_regenerating_gives_identical_files() -> None:
    texts = gen.generate(HANDSHAKES)
    for name, text in texts.items():
        assert (DATA / name).read_text(encoding="utf-8") == text, f"{name} changed: the code's output changed"


@pytest.mark.parametrize("name", [gen.COMPONENTS, gen.HANDSHAKES])
def test_docs_copies_equal_test_data(name: str) -> None:
    assert (DOCS / name).read_bytes() == (DATA / name).read_bytes(), f"copy docs/vectors/{name} from tests/data/"
