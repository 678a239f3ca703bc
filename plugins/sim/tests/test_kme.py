"""The ETSI GS QKD 014 KME simulator, seen from the wire: raw HTTPS with mutual TLS on 127.0.0.1."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import math
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import NameOID
from hybridkex._errors import ConfigError

from hybridkex_sim._kme import KeyPool, KMEConfig, KMEPair, LinkPump
from hybridkex_sim._pki import TestPKI, create_test_pki, load_test_pki

SAE_A, SAE_B, SAE_C = "sae-a", "sae-b", "sae-c"
KEYS = "/api/v1/keys"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    made, _ = create_test_pki(tmp_path_factory.mktemp("pki"), [SAE_A, SAE_B, SAE_C])
    return made


@pytest.fixture(scope="module")
def rogue_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    """Another CA issuing certificates with the same names."""
    made, _ = create_test_pki(tmp_path_factory.mktemp("rogue"), [SAE_A, SAE_B])
    return made


@pytest.fixture()
def pair(pki: TestPKI) -> Any:
    with KMEPair.start(pki, sae_a=SAE_A, sae_b=SAE_B, seed=b"k" * 32) as p:
        yield p


def _ctx(pki: TestPKI, sae: str | None, ca: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca or pki.ca_cert))
    if sae is not None:
        ctx.load_cert_chain(pki.sae_cert(sae), pki.sae_key(sae))
    return ctx


def _conn(url: str, ctx: ssl.SSLContext) -> http.client.HTTPSConnection:
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname and parts.port
    return http.client.HTTPSConnection(parts.hostname, parts.port, context=ctx, timeout=5)


def call(url: str, pki: TestPKI, sae: str, method: str, path: str, body: object = None,
         conn: http.client.HTTPSConnection | None = None) -> tuple[int, Any]:
    """One request as SAE ``sae``; returns (status, decoded JSON)."""
    own = conn is None
    c = conn or _conn(url, _ctx(pki, sae))
    try:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        c.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        resp = c.getresponse()
        raw = resp.read()
        assert resp.getheader("Content-Type") == "application/json"
        return resp.status, json.loads(raw)
    finally:
        if own:
            c.close()


def _b64(s: str) -> bytes:
    return base64.b64decode(s, validate=True)


# -- test PKI --------------------------------------------------------------------------------------

def test_pki_layout_modes_and_names(pki: TestPKI) -> None:
    for name in ("ca.key", "kme-a.key", "kme-b.key", f"{SAE_A}.key", f"{SAE_C}.key"):
        assert stat.S_IMODE(os.stat(pki.directory / name).st_mode) == 0o600, name
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sae = x509.load_pem_x509_certificate(pki.sae_cert(SAE_B).read_bytes())
    assert sae.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == SAE_B
    assert sae.issuer == ca.subject
    server = x509.load_pem_x509_certificate(pki.kme_cert("kme-a").read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert set(load_test_pki(pki.directory).sae_ids) == {SAE_A, SAE_B, SAE_C}


def test_pki_rerun_adds_an_sae_and_keeps_the_ca(tmp_path: Path) -> None:
    made, written = create_test_pki(tmp_path / "p", ["x1"])
    ca_before = made.ca_cert.read_bytes()
    again, written2 = create_test_pki(tmp_path / "p", ["x1", "x2"])
    assert again.ca_cert.read_bytes() == ca_before
    assert [p.name for p in written2] == ["x2.crt", "x2.key"]
    _, forced = create_test_pki(tmp_path / "p", ["x1"], force=True)
    assert made.ca_cert.read_bytes() != ca_before and len(forced) == 8


@pytest.mark.parametrize("bad", ["", "a/b", "../x", "ca", "kme-a", "-x", "x" * 65])
def test_pki_refuses_unsafe_sae_ids(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="SAE ID"):
        create_test_pki(tmp_path, [bad])


def test_load_missing_pki_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hybridkex kme pki"):
        load_test_pki(tmp_path)


# -- status (§5.2, §6.1) -------------------------------------------------------------------------------

def test_status_has_every_field(pair: KMEPair, pki: TestPKI) -> None:
    status, body = call(pair.url_a, pki, SAE_A, "GET", f"{KEYS}/{SAE_B}/status")
    assert status == 200
    ints = ("key_size", "stored_key_count", "max_key_count", "max_key_per_request", "max_key_size",
            "min_key_size", "max_SAE_ID_count")
    assert {k: body[k] for k in ("source_KME_ID", "target_KME_ID", "master_SAE_ID", "slave_SAE_ID")} == {
        "source_KME_ID": "kme-a", "target_KME_ID": "kme-b", "master_SAE_ID": SAE_A, "slave_SAE_ID": SAE_B}
    assert all(type(body[k]) is int for k in ints)
    assert body["stored_key_count"] == body["max_key_count"] == 1024  # prefilled
    assert body["min_key_size"] <= body["key_size"] <= body["max_key_size"]
    assert body["status_extension"]["hybridkex_link"]["aborted"] is False
    status, body = call(pair.url_b, pki, SAE_B, "GET", f"{KEYS}/{SAE_A}/status")
    assert (status, body["source_KME_ID"], body["master_SAE_ID"]) == (200, "kme-b", SAE_B)


def test_status_takes_get_only(pair: KMEPair, pki: TestPKI) -> None:
    status, body = call(pair.url_a, pki, SAE_A, "POST", f"{KEYS}/{SAE_B}/status", {})
    assert status == 405 and "GET" in body["message"]


def test_unknown_path_is_404_json(pair: KMEPair, pki: TestPKI) -> None:
    status, body = call(pair.url_a, pki, SAE_A, "GET", "/api/v2/keys/x/status")
    assert status == 404 and "ETSI GS QKD 014" in body["message"]


# -- enc_keys / dec_keys (§5.3, §5.4) -----------------------------------------------------------------

def test_enc_post_then_dec_post_gives_equal_keys(pair: KMEPair, pki: TestPKI) -> None:
    status, enc = call(pair.url_a, pki, SAE_A, "POST", f"{KEYS}/{SAE_B}/enc_keys", {"number": 3, "size": 512})
    assert status == 200 and len(enc["keys"]) == 3
    assert all(len(_b64(k["key"])) == 64 for k in enc["keys"])
    ids = [k["key_ID"] for k in enc["keys"]]
    assert all(str(uuid.UUID(i)) == i for i in ids)
    status, dec = call(pair.url_b, pki, SAE_B, "POST", f"{KEYS}/{SAE_A}/dec_keys",
                       {"key_IDs": [{"key_ID": i} for i in reversed(ids)]})
    assert status == 200
    assert dec["keys"] == list(reversed(enc["keys"]))  # in the order asked for


def test_enc_get_then_dec_get(pair: KMEPair, pki: TestPKI) -> None:
    status, enc = call(pair.url_a, pki, SAE_A, "GET", f"{KEYS}/{SAE_B}/enc_keys?number=2&size=128")
    assert status == 200 and [len(_b64(k["key"])) for k in enc["keys"]] == [16, 16]
    for key in enc["keys"]:
        status, dec = call(pair.url_b, pki, SAE_B, "GET", f"{KEYS}/{SAE_A}/dec_keys?key_ID={key['key_ID']}")
        assert status == 200 and dec["keys"] == [key]


def test_defaults_are_one_key_of_key_size(pair: KMEPair, pki: TestPKI) -> None:
    for method, body in (("POST", {}), ("GET", None)):
        status, enc = call(pair.url_a, pki, SAE_A, method, f"{KEYS}/{SAE_B}/enc_keys", body)
        assert status == 200 and len(enc["keys"]) == 1 and len(_b64(enc["keys"][0]["key"])) == 32


def test_b_can_be_master_too(pair: KMEPair, pki: TestPKI) -> None:
    _, enc = call(pair.url_b, pki, SAE_B, "POST", f"{KEYS}/{SAE_A}/enc_keys", {"number": 1})
    status, dec = call(pair.url_a, pki, SAE_A, "POST", f"{KEYS}/{SAE_B}/dec_keys",
                       {"key_IDs": [{"key_ID": enc["keys"][0]["key_ID"]}]})
    assert status == 200 and dec["keys"] == enc["keys"]


def test_keys_are_distinct_and_pool_shrinks(pair: KMEPair, pki: TestPKI) -> None:
    _, before = call(pair.url_a, pki, SAE_A, "GET", f"{KEYS}/{SAE_B}/status")
    started = time.monotonic()
    _, enc = call(pair.url_a, pki, SAE_A, "POST", f"{KEYS}/{SAE_B}/enc_keys", {"number": 100})
    assert len({k["key"] for k in enc["keys"]}) == 100 and len({k["key_ID"] for k in enc["keys"]}) == 100
    _, after = call(pair.url_b, pki, SAE_B, "GET", f"{KEYS}/{SAE_A}/status")  # one store, seen from both KMEs
    # The link refills at its key rate meanwhile (64 kbit/s = 250 keys of 256 bits per second).
    refilled = math.ceil((time.monotonic() - started) * 64000 / 256) + 2
    assert after["stored_key_count"] <= before["stored_key_count"] - 100 + refilled


def test_connection_is_kept_alive(pair: KMEPair, pki: TestPKI) -> None:
    conn = _conn(pair.url_a, _ctx(pki, SAE_A))
    before = pair.a.connections_accepted
    for _ in range(5):
        assert call(pair.url_a, pki, SAE_A, "GET", f"{KEYS}/{SAE_B}/status", conn=conn)[0] == 200
    conn.close()
    assert pair.a.connections_accepted == before + 1


# -- 400: bad requests (§5.1, §6.2, §6.4) ------------------------------------------------------------------

@pytest.mark.parametrize("request_body, words", [
    ({"size": 100}, "multiple of 8"),
    ({"size": 32}, "outside"),
    ({"size": 2048}, "outside"),
    ({"number": 129}, "max_key_per_request"),
    ({"number": 0}, "positive"),
    ({"number": "2"}, "positive"),
    ({"size": True}, "positive"),
    ({"additional_slave_SAE_IDs": ["sae-c"]}, "max_SAE_ID_count"),
    ({"extension_mandatory": [{"abc_route_type": "direct"}]}, "abc_route_type"),
    (b"{not json", "not JSON"),
    ([1, 2], "not a JSON object"),
])
def test_enc_keys_bad_requests_are_400(pair: KMEPair, pki: TestPKI, request_body: object, words: str) -> None:
    status, body = call(pair.url_a, pki, SAE_A, "POST", f"{KEYS}/{SAE_B}/enc_keys", request_body)
    assert status == 400 and words in body["message"]
    assert isinstance(body.get("details", []), list)


def test_enc_keys_optional_extensions_are_ignored(pair: KMEPair, pki: TestPKI) -> None:
    status, _ = call(pair.url_a, pki, SAE_A, "POST", f"{KEYS}/{SAE_B}/enc_keys",
                     {"extension_optional": [{"abc_route_type": "direct"}]})
    assert status == 200


@pytest.mark.parametrize("query", ["number=x", "size=-8", "number=1&number=2", "size=12"])
def test_enc_keys_bad_get_queries_are_400(pair: KMEPair, pki: TestPKI, query: str) -> None:
    status, body = call(pair.url_a, pki, SAE_A, "GET", f"{KEYS}/{SAE_B}/enc_keys?{query}")
    assert status == 400 and body["message"]


def test_dec_keys_unknown_consumed_and_malformed_key_ids_are_400(pair: KMEPair, pki: TestPKI) -> None:
    unknown = str(uuid.uuid4())
    status, body = call(pair.url_b, pki, SAE_B, "POST", f"{KEYS}/{SAE_A}/dec_keys",
                        {"key_IDs": [{"key_ID": unknown}]})
    assert status == 400 and "unknown" in body["message"] and body["details"] == [{"key_ID": unknown}]
    _, enc = call(pair.url_a, pki, SAE_A, "POST", f"{KEYS}/{SAE_B}/enc_keys", {"number": 2})
    ids = [{"key_ID": k["key_ID"]} for k in enc["keys"]]
    # All or nothing: one unknown key_ID delivers none of the good ones.
    status, _ = call(pair.url_b, pki, SAE_B, "POST", f"{KEYS}/{SAE_A}/dec_keys",
                     {"key_IDs": ids + [{"key_ID": unknown}]})
    assert status == 400
    assert call(pair.url_b, pki, SAE_B, "POST", f"{KEYS}/{SAE_A}/dec_keys", {"key_IDs": ids})[0] == 200
    status, body = call(pair.url_b, pki, SAE_B, "POST", f"{KEYS}/{SAE_A}/dec_keys", {"key_IDs": ids[:1]})
    assert status == 400 and "already been consumed" in body["message"]
    status, body = call(pair.url_b, pki, SAE_B, "GET", f"{KEYS}/{SAE_A}/dec_keys?key_ID={ids[1]['key_ID']}")
    assert status == 400 and "already been consumed" in body["message"]
    bads: list[dict[str, Any]] = [{"key_IDs": [{"key_ID": "not-a-uuid"}]}, {"key_IDs": []},
                                  {"key_IDs": [ids[0], ids[0]]}, {}]
    for bad in bads:
        assert call(pair.url_b, pki, SAE_B, "POST", f"{KEYS}/{SAE_A}/dec_keys", bad)[0] == 400
    assert call(pair.url_b, pki, SAE_B, "GET", f"{KEYS}/{SAE_A}/dec_keys")[0] == 400


# -- 401: SAEs asking for keys they are not entitled to ---------------------------------------------------

def test_wrong_sae_is_401(pair: KMEPair, pki: TestPKI) -> None:
    cases = [
        (pair.url_a, SAE_B, "GET", f"{KEYS}/{SAE_A}/status"),          # B at A's KME
        (pair.url_a, SAE_C, "POST", f"{KEYS}/{SAE_B}/enc_keys"),        # a third SAE with a valid certificate
        (pair.url_a, SAE_A, "POST", f"{KEYS}/{SAE_A}/enc_keys"),        # A using its own ID as slave path
        (pair.url_a, SAE_A, "POST", f"{KEYS}/{SAE_C}/enc_keys"),        # A asking for keys shared with C
        (pair.url_a, SAE_A, "GET", f"{KEYS}/nobody/status"),
    ]
    for url, sae, method, path in cases:
        status, body = call(url, pki, sae, method, path, {} if method == "POST" else None)
        assert status == 401, (sae, path)
        assert body["message"]


def test_master_cannot_fetch_its_own_keys_by_id(pair: KMEPair, pki: TestPKI) -> None:
    _, enc = call(pair.url_a, pki, SAE_A, "POST", f"{KEYS}/{SAE_B}/enc_keys", {})
    key_id = enc["keys"][0]["key_ID"]
    # at its own KME, naming itself as master: not entitled
    assert call(pair.url_a, pki, SAE_A, "POST", f"{KEYS}/{SAE_A}/dec_keys",
                {"key_IDs": [{"key_ID": key_id}]})[0] == 401
    # naming the peer as master at its own KME: the key is not there for it
    assert call(pair.url_a, pki, SAE_A, "POST", f"{KEYS}/{SAE_B}/dec_keys",
                {"key_IDs": [{"key_ID": key_id}]})[0] == 400
    # the slave still gets it
    assert call(pair.url_b, pki, SAE_B, "POST", f"{KEYS}/{SAE_A}/dec_keys",
                {"key_IDs": [{"key_ID": key_id}]})[0] == 200


# -- TLS: mutual authentication ------------------------------------------------------------------------------

def test_no_client_certificate_is_rejected_by_tls(pair: KMEPair, pki: TestPKI) -> None:
    conn = _conn(pair.url_a, _ctx(pki, None))
    with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected)):
        conn.request("GET", f"{KEYS}/{SAE_B}/status")
        conn.getresponse().read()
    conn.close()


def test_client_certificate_from_another_ca_is_rejected(pair: KMEPair, pki: TestPKI, rogue_pki: TestPKI) -> None:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(rogue_pki.sae_cert(SAE_A), rogue_pki.sae_key(SAE_A))
    conn = _conn(pair.url_a, ctx)
    with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected)):
        conn.request("GET", f"{KEYS}/{SAE_B}/status")
        conn.getresponse().read()
    conn.close()


def test_server_certificate_names_127_0_0_1(pair: KMEPair, pki: TestPKI) -> None:
    # check_hostname is on in _ctx: the handshake verifies the IP SAN.
    assert call(pair.url_a, pki, SAE_A, "GET", f"{KEYS}/{SAE_B}/status")[0] == 200


# -- the link: pool at the key rate, exhaustion, recovery, eavesdropper -------------------------------------

def test_pool_exhaustion_is_503_then_recovers(pki: TestPKI) -> None:
    config = KMEConfig(max_key_count=8, max_key_per_request=8)
    # 2048 bits take 2 s to come back at 1 kbit/s: the second request cannot be served yet
    with KMEPair.start(pki, sae_a=SAE_A, sae_b=SAE_B, key_rate=1000, config=config) as pair:
        url = pair.url_a
        assert call(url, pki, SAE_A, "POST", f"{KEYS}/{SAE_B}/enc_keys", {"number": 8})[0] == 200
        status, body = call(url, pki, SAE_A, "POST", f"{KEYS}/{SAE_B}/enc_keys", {"number": 8})
        assert status == 503 and "exhausted" in body["message"] and "retry later" in body["message"]
        # 256 bits take 256 ms at 1 kbit/s
        deadline = time.monotonic() + 5
        while call(url, pki, SAE_A, "POST", f"{KEYS}/{SAE_B}/enc_keys", {"number": 1})[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)


def test_eavesdropper_leaves_the_pool_empty(pki: TestPKI) -> None:
    with KMEPair.start(pki, sae_a=SAE_A, sae_b=SAE_B, eve=1.0) as pair:
        status, body = call(pair.url_a, pki, SAE_A, "GET", f"{KEYS}/{SAE_B}/status")
        assert body["stored_key_count"] == 0
        assert body["status_extension"]["hybridkex_link"]["qber"] > 0.11
        status, body = call(pair.url_a, pki, SAE_A, "POST", f"{KEYS}/{SAE_B}/enc_keys", {})
        assert status == 503 and "aborted on high QBER" in body["message"]


class _FixedLink:
    """A link whose blocks are 1000 bytes of a counter (to test the pump's accounting)."""

    def __init__(self) -> None:
        self.calls = 0

    def block(self, index: int) -> Any:
        self.calls += 1
        from types import SimpleNamespace

        return SimpleNamespace(key=bytes([index % 256]) * 1000, qber=0.01, aborted=False, reason="",
                               final_bits=8000)


def test_pump_releases_key_at_the_rate_and_stops_when_full() -> None:
    pool = KeyPool(capacity_bits=80_000)
    pump = LinkPump(_FixedLink(), pool, key_rate=8000)
    pump.advance(0.5)
    assert pool.bits == 4000
    pump.advance(100)  # credit never exceeds the pool size
    assert pool.bits == 80_000
    pump.advance(1)  # full: the link time is lost, not banked
    with pool.lock:
        pool.take_locked(1000)
    pump.advance(0)
    assert pool.bits == 72_000
    assert pump.state().blocks == 10


def test_same_seed_same_key_stream(pki: TestPKI) -> None:
    keys = []
    for _ in range(2):
        with KMEPair.start(pki, sae_a=SAE_A, sae_b=SAE_B, seed=b"s" * 32) as pair:
            _, enc = call(pair.url_a, pki, SAE_A, "POST", f"{KEYS}/{SAE_B}/enc_keys", {"number": 2})
            keys.append([k["key"] for k in enc["keys"]])
    assert keys[0] == keys[1]


# -- fault injection -------------------------------------------------------------------------------------------

def test_faults_503_malformed_and_delay(pair: KMEPair, pki: TestPKI) -> None:
    pair.a.faults.status_503 = 1
    status, body = call(pair.url_a, pki, SAE_A, "GET", f"{KEYS}/{SAE_B}/status")
    assert status == 503 and "injected" in body["message"]
    pair.a.faults.malformed_json = 1
    with pytest.raises(json.JSONDecodeError):
        call(pair.url_a, pki, SAE_A, "GET", f"{KEYS}/{SAE_B}/status")
    pair.a.faults.delay = 0.2
    t0 = time.monotonic()
    assert call(pair.url_a, pki, SAE_A, "GET", f"{KEYS}/{SAE_B}/status")[0] == 200
    assert time.monotonic() - t0 >= 0.2
    pair.a.faults.reset()
    assert repr(pair.a.faults) == "Faults()"


def test_fault_refuse_drops_connections(pair: KMEPair, pki: TestPKI) -> None:
    pair.a.faults.refuse = True
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected, OSError)):
        call(pair.url_a, pki, SAE_A, "GET", f"{KEYS}/{SAE_B}/status")
    pair.a.faults.refuse = False
    assert call(pair.url_a, pki, SAE_A, "GET", f"{KEYS}/{SAE_B}/status")[0] == 200


def test_fault_short_keys_and_mismatched_ids(pair: KMEPair, pki: TestPKI) -> None:
    pair.a.faults.short_keys = 1
    _, enc = call(pair.url_a, pki, SAE_A, "POST", f"{KEYS}/{SAE_B}/enc_keys", {"number": 1})
    assert len(_b64(enc["keys"][0]["key"])) == 31
    _, enc = call(pair.url_a, pki, SAE_A, "POST", f"{KEYS}/{SAE_B}/enc_keys", {"number": 1})
    pair.b.faults.mismatched_ids = 1
    _, dec = call(pair.url_b, pki, SAE_B, "POST", f"{KEYS}/{SAE_A}/dec_keys",
                  {"key_IDs": [{"key_ID": enc["keys"][0]["key_ID"]}]})
    assert dec["keys"][0]["key_ID"] != enc["keys"][0]["key_ID"]


# -- secrets stay out of logs and reprs ------------------------------------------------------------------------

def test_keys_never_logged(pair: KMEPair, pki: TestPKI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _, enc = call(pair.url_a, pki, SAE_A, "POST", f"{KEYS}/{SAE_B}/enc_keys", {"number": 2})
    _, dec = call(pair.url_b, pki, SAE_B, "GET", f"{KEYS}/{SAE_A}/dec_keys?key_ID={enc['keys'][0]['key_ID']}")
    key = enc["keys"][0]["key"]
    raw = _b64(key)
    assert caplog.records, "the KME logs requests at DEBUG"
    for text in (caplog.text, repr(pair.a), repr(pair.pool), repr(pair.a.faults)):
        assert key not in text and raw.hex() not in text


# -- CLI --------------------------------------------------------------------------------------------------------

def test_cli_pki(tmp_path: Path) -> None:
    from hybridkex.cli import cli

    result = CliRunner().invoke(cli, ["kme", "pki", str(tmp_path / "p"), "--sae", "x", "--sae", "y"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p" / "x.key").exists() and "SAEs x, y" in result.output
    result = CliRunner().invoke(cli, ["kme", "pki", str(tmp_path / "q"), "--sae", "../evil"])
    assert result.exit_code == 2 and "Traceback" not in result.output and "SAE ID" in result.output
    assert result.output.startswith("hybridkex: error: ")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_cli_serve_prints_ready_lines_and_stops_on_a_signal(pki: TestPKI, stop_signal: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "from hybridkex.cli import main; main()", "kme", "serve", "--pki", str(pki.directory),
         "--listen-a", "127.0.0.1:0", "--listen-b", "127.0.0.1:0", "--sae-a", SAE_A, "--sae-b", SAE_B,
         "--key-rate", "32000", "--max-key-count", "64"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip() for _ in range(2)]
        assert lines[0].startswith("kme-a listening on https://127.0.0.1:") and lines[0].endswith(f"sae={SAE_A}")
        assert lines[1].startswith("kme-b listening on https://127.0.0.1:") and lines[1].endswith(f"sae={SAE_B}")
        url_a, url_b = lines[0].split()[3], lines[1].split()[3]
        status, body = call(url_a, pki, SAE_A, "GET", f"{KEYS}/{SAE_B}/status")
        assert status == 200 and body["max_key_count"] == 64
        _, enc = call(url_a, pki, SAE_A, "POST", f"{KEYS}/{SAE_B}/enc_keys", {})
        _, dec = call(url_b, pki, SAE_B, "POST", f"{KEYS}/{SAE_A}/dec_keys",
                      {"key_IDs": [{"key_ID": enc["keys"][0]["key_ID"]}]})
        assert dec == enc
        proc.send_signal(stop_signal)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_serve_without_pki_fails_cleanly(tmp_path: Path) -> None:
    from hybridkex.cli import cli

    result = CliRunner().invoke(cli, ["kme", "serve", "--pki", str(tmp_path), "--sae-a", "a", "--sae-b", "b"])
    assert result.exit_code == 2 and "hybridkex kme pki" in result.output and "Traceback" not in result.output
    assert result.output.startswith("hybridkex: error: ")


def test_cli_bad_listen_address_is_a_config_error(pki: TestPKI) -> None:
    from hybridkex.cli import cli

    for bad in ("127.0.0.1", "h:99999", "h:x"):
        result = CliRunner().invoke(cli, ["kme", "serve", "--pki", str(pki.directory), "--sae-a", "a", "--sae-b", "b",
                                          "--listen-a", bad])
        assert result.exit_code == 2, result.output
        assert f"hybridkex: error: --listen-a {bad!r} is not HOST:PORT" in result.output


def test_port_in_use_is_a_config_error(pki: TestPKI) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ConfigError, match="cannot listen"):
            KMEPair(pki, sae_a=SAE_A, sae_b=SAE_B, port_a=s.getsockname()[1], prefill=False)
