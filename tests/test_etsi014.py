"""The ETSI GS QKD 014 client: wire rules (no network), then against the KME simulator over
HTTPS with mutual TLS on 127.0.0.1."""

from __future__ import annotations

import base64
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hybridkex_sim._kme import KMEConfig, KMEPair
from hybridkex_sim._pki import TestPKI, create_test_pki

from hybridkex._errors import ConfigError, KMEError, QKDKeyReplay, QKDUnavailable
from hybridkex.protocol._qkd import QKDKey, QKDKeySource
from hybridkex.qkd._etsi014 import (
    Etsi014Client,
    KMEKeyReplay,
    KMEResponseError,
    KMEStatus,
    parse_error_body,
    parse_key_container,
    parse_status,
)

SAE_A, SAE_B = "sae-a", "sae-b"


def _entry(key: bytes, key_id: uuid.UUID | None = None) -> dict[str, str]:
    return {"key_ID": str(key_id or uuid.uuid4()), "key": base64.b64encode(key).decode()}


# -- wire rules, no network -----------------------------------------------------------------------------

def test_parse_key_container_accepts_a_good_answer() -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    obj = {"keys": [_entry(bytes([i]) * 32, k) for i, k in enumerate(ids)], "key_container_extension": {"x": 1}}
    container = parse_key_container(obj, number=3, size_bits=256)
    assert [k.key_id for k in container.keys] == ids
    assert container.keys[1].key == b"\x01" * 32 and container.key_container_extension == {"x": 1}
    # dec_keys: keys come back in the order asked for, whatever the KME's order
    rev = parse_key_container(obj, key_ids=list(reversed(ids)), size_bits=256)
    assert [k.key_id for k in rev.keys] == list(reversed(ids))


@pytest.mark.parametrize("mutate, words", [
    (lambda o: o["keys"].pop(), "1 keys, 2 were requested"),
    (lambda o: o["keys"][1].update(key=base64.b64encode(b"x" * 31).decode()), "248 bits, 256 were requested"),
    (lambda o: o["keys"][1].update(key="!!!!"), "not valid base64"),
    (lambda o: o["keys"][1].update(key=o["keys"][1]["key"].rstrip("=")), "not valid base64"),
    (lambda o: o["keys"][1].update(key="A" * 42 + "B="), "not canonical base64"),  # stray bits after the key
    (lambda o: o["keys"][1].update(key=""), "empty"),
    (lambda o: o["keys"][1].update(key_ID="not-a-uuid"), "not a UUID"),
    (lambda o: o["keys"][1].update(key_ID="{" + o["keys"][1]["key_ID"] + "}"), "not a UUID"),
    (lambda o: o["keys"][1].update(key_ID=o["keys"][1]["key_ID"].replace("-", "")), "not a UUID"),
    (lambda o: o["keys"][1].update(key_ID=o["keys"][0]["key_ID"]), "appears twice"),
    (lambda o: o["keys"][1].update(key=o["keys"][0]["key"]), "same key material"),
    (lambda o: o["keys"][1].pop("key"), "not a base64 string"),
    (lambda o: o.pop("keys"), "not a key container"),
    (lambda o: o["keys"].__setitem__(0, "x"), "not a JSON object"),
])
def test_parse_key_container_refuses_lies(mutate: Any, words: str) -> None:
    obj: dict[str, Any] = {"keys": [_entry(os.urandom(32)), _entry(os.urandom(32))]}
    mutate(obj)
    with pytest.raises(ValueError, match=words):
        parse_key_container(obj, number=2, size_bits=256)


def test_parse_key_container_checks_requested_key_ids() -> None:
    asked = [uuid.uuid4(), uuid.uuid4()]
    with pytest.raises(ValueError, match="other key_IDs than requested"):
        parse_key_container({"keys": [_entry(os.urandom(32), asked[0]), _entry(os.urandom(32))]}, key_ids=asked)
    with pytest.raises(ValueError, match="1 keys, 2 were requested"):
        parse_key_container({"keys": [_entry(os.urandom(32), asked[0])]}, key_ids=asked)
    # without a size, keys must at least agree with each other
    with pytest.raises(ValueError, match="size differs"):
        parse_key_container({"keys": [_entry(os.urandom(32), asked[0]), _entry(os.urandom(16), asked[1])]},
                            key_ids=asked)


def test_error_messages_never_contain_key_material() -> None:
    key = os.urandom(32)
    obj = {"keys": [_entry(key), _entry(key[:31])]}
    with pytest.raises(ValueError) as info:
        parse_key_container(obj, number=2, size_bits=256)
    assert base64.b64encode(key).decode()[:20] not in str(info.value) and key.hex()[:16] not in str(info.value)


def _status(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "source_KME_ID": "A", "target_KME_ID": "B", "master_SAE_ID": "a", "slave_SAE_ID": "b", "key_size": 256,
        "stored_key_count": 5, "max_key_count": 10, "max_key_per_request": 2, "max_key_size": 512,
        "min_key_size": 64, "max_SAE_ID_count": 0}
    base.update(over)
    return base


def test_parse_status() -> None:
    st = parse_status(_status(status_extension={"v": 1}))
    assert st == KMEStatus("A", "B", "a", "b", 256, 5, 10, 2, 512, 64, 0, {"v": 1})
    for bad in (_status(key_size="256"), _status(key_size=True), _status(stored_key_count=-1),
                _status(min_key_size=512, max_key_size=64), _status(source_KME_ID=""), [1]):
        with pytest.raises(ValueError):
            parse_status(bad)
    missing = _status()
    del missing["max_SAE_ID_count"]
    with pytest.raises(ValueError, match="max_SAE_ID_count"):
        parse_status(missing)


def test_parse_error_body() -> None:
    assert parse_error_body(b'{"message":"no","details":[{"a":1}]}') == ("no", [{"a": 1}])
    assert parse_error_body(b"<html>") == (None, None)


def test_strict_json_refuses_duplicate_members_and_nan() -> None:
    from hybridkex.qkd._etsi014 import _strict_json

    with pytest.raises(ValueError, match="duplicate"):
        _strict_json(b'{"keys":[],"keys":[]}')
    with pytest.raises(ValueError):
        _strict_json(b'{"key_size":NaN}')


# -- configuration ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    made, _ = create_test_pki(tmp_path_factory.mktemp("pki"), [SAE_A, SAE_B])
    return made


def _client(pki: TestPKI, url: str, sae: str = SAE_A, peer: str = SAE_B, **kw: Any) -> Etsi014Client:
    return Etsi014Client(url, ca=pki.ca_cert, sae_cert=pki.sae_cert(sae), sae_key=pki.sae_key(sae), sae_id=sae,
                         peer_sae_id=peer, **kw)


def test_plain_http_is_refused_without_the_flag(pki: TestPKI) -> None:
    with pytest.raises(ConfigError, match="refusing plain http://"):
        Etsi014Client("http://127.0.0.1:1", ca=None, sae_cert=None, sae_key=None, sae_id="a", peer_sae_id="b")


@pytest.mark.parametrize("url", ["ftp://x", "https://", "https://h/?q=1", "https://u:p@h", "https://h:99999"])
def test_bad_urls_are_config_errors(pki: TestPKI, url: str) -> None:
    with pytest.raises(ConfigError):
        _client(pki, url)


def test_missing_or_exposed_files_are_config_errors(pki: TestPKI, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs the CA"):
        Etsi014Client("https://127.0.0.1:1", ca=None, sae_cert=None, sae_key=None, sae_id="a", peer_sae_id="b")
    with pytest.raises(ConfigError, match="does not exist"):
        Etsi014Client("https://127.0.0.1:1", ca=tmp_path / "nope", sae_cert=pki.sae_cert(SAE_A),
                      sae_key=pki.sae_key(SAE_A), sae_id="a", peer_sae_id="b")
    exposed = tmp_path / "k.key"
    exposed.write_bytes(pki.sae_key(SAE_A).read_bytes())
    exposed.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        Etsi014Client("https://127.0.0.1:1", ca=pki.ca_cert, sae_cert=pki.sae_cert(SAE_A), sae_key=exposed,
                      sae_id="a", peer_sae_id="b")
    wrong = tmp_path / "w.key"
    wrong.write_bytes(pki.sae_key(SAE_B).read_bytes())
    wrong.chmod(0o600)
    with pytest.raises(ConfigError, match="matching PEM pair"):
        Etsi014Client("https://127.0.0.1:1", ca=pki.ca_cert, sae_cert=pki.sae_cert(SAE_A), sae_key=wrong,
                      sae_id="a", peer_sae_id="b")


# -- against the simulator ---------------------------------------------------------------------------------

@pytest.fixture()
def pair(pki: TestPKI) -> Any:
    with KMEPair.start(pki, sae_a=SAE_A, sae_b=SAE_B) as p:
        yield p


@pytest.fixture()
def clients(pair: KMEPair) -> Any:
    a, b = pair.client(SAE_A), pair.client(SAE_B)
    yield a, b
    a.close()
    b.close()


def test_is_a_qkd_key_source(clients: tuple[Etsi014Client, Etsi014Client]) -> None:
    a, b = clients
    assert isinstance(a, QKDKeySource) and a.kind == "etsi014"
    assert a.describe().startswith("etsi014 https://127.0.0.1:") and "sae=sae-a peer=sae-b" in a.describe()
    keys = a.get_new_keys(2)
    assert all(isinstance(k, QKDKey) and len(k.key) == 32 for k in keys)
    assert b.get_keys_by_id([k.key_id for k in keys]) == keys
    assert "key=" not in repr(keys) and "key=" not in repr(a)


def test_status(clients: tuple[Etsi014Client, Etsi014Client]) -> None:
    a, b = clients
    st = a.status()
    assert (st.source_kme_id, st.target_kme_id, st.master_sae_id, st.slave_sae_id) == ("kme-a", "kme-b", SAE_A, SAE_B)
    assert (st.key_size, st.max_key_count, st.max_key_per_request, st.min_key_size, st.max_key_size,
            st.max_sae_id_count) == (256, 1024, 128, 64, 1024, 0)
    assert 0 < st.stored_key_count <= st.max_key_count
    assert b.status().master_sae_id == SAE_B


@pytest.mark.parametrize("enc_method, dec_method", [("POST", "POST"), ("GET", "GET"), ("GET", "POST")])
def test_enc_then_dec_gives_equal_keys(clients: tuple[Etsi014Client, Etsi014Client], enc_method: Any,
                                       dec_method: Any) -> None:
    a, b = clients
    container = a.enc_keys(1, 512, method=enc_method)
    assert len(container.keys[0].key) == 64
    got = b.dec_keys([container.keys[0].key_id], size_bits=512, method=dec_method)
    assert got.keys == container.keys


def test_both_directions(clients: tuple[Etsi014Client, Etsi014Client]) -> None:
    a, b = clients
    keys = b.get_new_keys(3, 128)
    assert a.get_keys_by_id([k.key_id for k in keys], size_bits=128) == keys


def test_kme_default_size(clients: tuple[Etsi014Client, Etsi014Client]) -> None:
    a, b = clients
    container = a.enc_keys(2)
    assert [len(k.key) for k in container.keys] == [32, 32]
    assert b.dec_keys([k.key_id for k in container.keys]).keys == container.keys


def test_client_argument_errors(clients: tuple[Etsi014Client, Etsi014Client]) -> None:
    a, _ = clients
    calls: list[Callable[[], object]] = [
        lambda: a.enc_keys(0), lambda: a.enc_keys(1, 0), lambda: a.enc_keys(1, method="GET", extension_optional=[{}]),
        lambda: a.dec_keys([]), lambda: a.dec_keys([uuid.uuid4()] * 2),
        lambda: a.dec_keys([uuid.uuid4(), uuid.uuid4()], method="GET")]
    for call in calls:
        with pytest.raises(ValueError):
            call()


# -- KME errors (§5.1, §6.5) -------------------------------------------------------------------------------

@pytest.mark.parametrize("number, size, words", [
    (1, 100, "not a multiple of 8"),
    (1, 32, "outside"),
    (1, 4096, "outside"),
    (129, 256, "max_key_per_request"),
])
def test_bad_requests_surface_as_kme_error_400(clients: tuple[Etsi014Client, Etsi014Client], number: int,
                                               size: int, words: str) -> None:
    a, _ = clients
    with pytest.raises(KMEError) as info:
        a.enc_keys(number, size)
    err = info.value
    assert err.status == 400 and err.kme_message is not None and words in err.kme_message
    assert isinstance(err.details, list)
    text = str(err)
    assert "400" in text and words in text and "check the request" in text and "\n" not in text


def test_extensions_and_multicast_are_refused_by_this_kme(clients: tuple[Etsi014Client, Etsi014Client]) -> None:
    a, _ = clients
    with pytest.raises(KMEError, match="max_SAE_ID_count"):
        a.enc_keys(1, additional_slave_sae_ids=["sae-c"])
    with pytest.raises(KMEError, match="mandatory extension"):
        a.enc_keys(1, extension_mandatory=[{"route": "direct"}])
    assert len(a.enc_keys(1, extension_optional=[{"route": "direct"}]).keys) == 1


def test_unknown_key_id_is_400_and_consumed_key_id_is_replay(
        clients: tuple[Etsi014Client, Etsi014Client]) -> None:
    a, b = clients
    with pytest.raises(KMEError) as info:
        b.get_keys_by_id([uuid.uuid4()])
    assert info.value.status == 400 and "unknown" in str(info.value)
    assert not isinstance(info.value, QKDKeyReplay)
    key = a.get_new_keys(1)[0]
    assert b.get_keys_by_id([key.key_id]) == [key]
    with pytest.raises(QKDKeyReplay) as replay:
        b.get_keys_by_id([key.key_id])
    assert isinstance(replay.value, KMEKeyReplay) and replay.value.status == 400
    assert not isinstance(replay.value, QKDUnavailable)  # a replay must not look like "no QKD, fall back"
    assert "already consumed" in str(replay.value)


def test_wrong_sae_is_401(pair: KMEPair, pki: TestPKI) -> None:
    # SAE A's certificate at KME B (serving SAE B)
    with _client(pki, pair.url_b, SAE_A, SAE_B) as c, pytest.raises(KMEError) as info:
        c.get_new_keys(1)
    assert info.value.status == 401 and "not served by KME kme-b" in str(info.value)
    # SAE A using its own ID as the slave path
    with _client(pki, pair.url_a, SAE_A, SAE_A) as c, pytest.raises(KMEError) as info:
        c.enc_keys(1)
    assert info.value.status == 401 and "check that the SAE certificate" in str(info.value)


def test_status_naming_another_sae_is_a_config_problem(pair: KMEPair, pki: TestPKI) -> None:
    # the certificate says sae-a; the client was told it is someone else
    with Etsi014Client(pair.url_a, ca=pki.ca_cert, sae_cert=pki.sae_cert(SAE_A), sae_key=pki.sae_key(SAE_A),
                       sae_id="other", peer_sae_id=SAE_B) as c, pytest.raises(KMEResponseError, match="SAE IDs"):
        c.status()


# -- TLS and reachability ------------------------------------------------------------------------------------

def test_untrusted_server_ca_is_refused(pair: KMEPair, pki: TestPKI, tmp_path: Path) -> None:
    rogue, _ = create_test_pki(tmp_path / "rogue", [SAE_A])
    c = Etsi014Client(pair.url_a, ca=rogue.ca_cert, sae_cert=pki.sae_cert(SAE_A), sae_key=pki.sae_key(SAE_A),
                      sae_id=SAE_A, peer_sae_id=SAE_B)
    with pytest.raises(QKDUnavailable, match="does not verify") as info:
        c.get_new_keys(1)
    assert "certificate" in str(info.value)


def test_server_certificate_hostname_is_checked(tmp_path: Path) -> None:
    only_localhost, _ = create_test_pki(tmp_path / "p", [SAE_A, SAE_B], hosts=("localhost",))
    with KMEPair.start(only_localhost, sae_a=SAE_A, sae_b=SAE_B, prefill=False) as pair:
        with pair.client(SAE_A) as c, pytest.raises(QKDUnavailable, match="does not verify"):
            c.status()  # https://127.0.0.1:... is not a name in the certificate


def test_client_certificate_from_an_untrusted_ca_fails_tls(pair: KMEPair, pki: TestPKI, tmp_path: Path) -> None:
    rogue, _ = create_test_pki(tmp_path / "rogue", [SAE_A])
    c = Etsi014Client(pair.url_a, ca=pki.ca_cert, sae_cert=rogue.sae_cert(SAE_A), sae_key=rogue.sae_key(SAE_A),
                      sae_id=SAE_A, peer_sae_id=SAE_B)
    with pytest.raises(QKDUnavailable) as info:
        c.get_new_keys(1)
    assert not isinstance(info.value, KMEError)
    assert "TLS" in str(info.value) or "closed the connection" in str(info.value)


def test_unreachable_kme(pki: TestPKI) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with _client(pki, f"https://127.0.0.1:{port}") as c, pytest.raises(QKDUnavailable, match="connection refused"):
        c.get_new_keys(1)


def test_timeout(pair: KMEPair, pki: TestPKI) -> None:
    pair.a.faults.delay = 1.0
    with pair.client(SAE_A, timeout=0.2) as c, pytest.raises(QKDUnavailable, match="did not answer"):
        c.status()


def test_refused_connections(pair: KMEPair) -> None:
    pair.a.faults.refuse = True
    with pair.client(SAE_A) as c, pytest.raises(QKDUnavailable):
        c.status()


def test_insecure_http_against_a_plain_simulator(pki: TestPKI) -> None:
    with KMEPair.start(pki, sae_a=SAE_A, sae_b=SAE_B, tls=False) as pair:
        assert pair.url_a.startswith("http://")
        with pair.client(SAE_A) as a, pair.client(SAE_B) as b:
            keys = a.get_new_keys(1)
            assert b.get_keys_by_id([keys[0].key_id]) == keys


# -- connection reuse ---------------------------------------------------------------------------------------------

def test_one_connection_is_reused(pair: KMEPair, clients: tuple[Etsi014Client, Etsi014Client]) -> None:
    a, b = clients
    before_a, before_b = pair.a.connections_accepted, pair.b.connections_accepted
    for _ in range(10):
        key = a.get_new_keys(1)[0]
        b.get_keys_by_id([key.key_id])
    a.status()
    assert pair.a.connections_accepted - before_a == 1 and pair.b.connections_accepted - before_b == 1


def test_reconnects_when_the_kme_dropped_an_idle_connection(pair: KMEPair,
                                                            clients: tuple[Etsi014Client, Etsi014Client]) -> None:
    a, b = clients
    a.status()
    pair.drop_connections()
    time.sleep(0.05)
    key = a.get_new_keys(1)[0]  # the kept-alive connection is dead: one silent reconnect
    assert b.get_keys_by_id([key.key_id]) == [key]


def test_threads_share_one_client(clients: tuple[Etsi014Client, Etsi014Client]) -> None:
    a, b = clients
    got: list[QKDKey] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(10):
                key = a.get_new_keys(1)[0]
                assert b.get_keys_by_id([key.key_id]) == [key]
                got.append(key)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors and len({k.key_id for k in got}) == 40


# -- 503: retry with backoff, exhaustion, the eavesdropper ------------------------------------------------------

def test_503_is_retried_with_backoff_then_succeeds(pair: KMEPair) -> None:
    waits: list[float] = []
    pair.a.faults.status_503 = 3
    with pair.client(SAE_A, retries=3, backoff=0.1, max_backoff=0.3, sleep=waits.append) as a:
        assert len(a.get_new_keys(1)) == 1
    assert waits == [0.1, 0.2, 0.3]


def test_503_after_the_retries_is_a_kme_error(pair: KMEPair) -> None:
    waits: list[float] = []
    pair.a.faults.status_503 = 5
    with pair.client(SAE_A, retries=2, sleep=waits.append) as a, pytest.raises(KMEError) as info:
        a.get_new_keys(1)
    assert info.value.status == 503 and len(waits) == 2
    assert "after 2 retries" in str(info.value) and "retry later" in str(info.value)
    assert isinstance(info.value, QKDUnavailable)


def test_busy_kme_503_is_retried_after_its_retry_after(pki: TestPKI) -> None:
    # One worker, no queue: while it answers a slow request, the KME says 503 with Retry-After: 1.
    with KMEPair.start(pki, sae_a=SAE_A, sae_b=SAE_B, config=KMEConfig(workers=1, queue_size=0)) as pair:
        pair.a.faults.delay = 0.3

        def slow_status() -> None:
            with pair.client(SAE_A) as c:
                c.status()

        slow = threading.Thread(target=slow_status)
        slow.start()
        deadline = time.monotonic() + 5
        while pair.a.requests_in_progress != 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        waits: list[float] = []

        def sleep(seconds: float) -> None:
            waits.append(seconds)
            pair.a.faults.delay = 0.0
            slow.join(timeout=5)

        with pair.client(SAE_A, retries=2, backoff=0.01, max_backoff=2.0, sleep=sleep) as a:
            assert a.status().source_kme_id == "kme-a"
        assert waits == [1.0]  # the KME's Retry-After, not the client's 10 ms


def test_exhausted_pool_gives_503_then_retry_succeeds_after_refill(pki: TestPKI) -> None:
    config = KMEConfig(max_key_count=8, max_key_per_request=8)
    with KMEPair.start(pki, sae_a=SAE_A, sae_b=SAE_B, key_rate=2000, config=config) as pair:
        with pair.client(SAE_A, retries=0) as a:
            a.get_new_keys(8)
            with pytest.raises(KMEError) as info:
                a.get_new_keys(8)  # 2048 bits: a second of link
            assert info.value.status == 503 and "exhausted" in (info.value.kme_message or "")
        waits: list[float] = []

        def sleep(s: float) -> None:
            waits.append(s)
            time.sleep(s)

        with pair.client(SAE_A, retries=12, backoff=0.05, max_backoff=0.4, sleep=sleep) as a:
            t0 = time.monotonic()
            assert len(a.get_new_keys(8)) == 8
            assert waits and time.monotonic() - t0 < 8


def test_tapped_link_gives_503_saying_why(pki: TestPKI) -> None:
    with KMEPair.start(pki, sae_a=SAE_A, sae_b=SAE_B, eve=1.0) as pair, pair.client(SAE_A, retries=0) as a:
        assert a.status().stored_key_count == 0
        with pytest.raises(KMEError, match="aborted on high QBER") as info:
            a.get_new_keys(1)
        assert info.value.status == 503


# -- a KME that lies: clear error, never a key ------------------------------------------------------------------

@pytest.mark.parametrize("fault, words", [
    ("malformed_json", "not JSON"),
    ("short_keys", "248 bits, 256 were requested"),
    ("duplicate_ids", "appears twice"),
])
def test_lying_kme_on_enc_keys(pair: KMEPair, fault: str, words: str) -> None:
    setattr(pair.a.faults, fault, 1)
    with pair.client(SAE_A) as a:
        with pytest.raises(KMEResponseError, match=words) as info:
            a.get_new_keys(2)
        assert "no key from it was used" in str(info.value) and isinstance(info.value, KMEError)
        assert len(a.get_new_keys(2)) == 2  # the next answer is honest again


@pytest.mark.parametrize("fault, words", [
    ("mismatched_ids", "other key_IDs than requested"),
    ("short_keys", "248 bits"),
    ("malformed_json", "not JSON"),
])
def test_lying_kme_on_dec_keys(pair: KMEPair, clients: tuple[Etsi014Client, Etsi014Client], fault: str,
                               words: str) -> None:
    a, b = clients
    key = a.get_new_keys(1)[0]
    setattr(pair.b.faults, fault, 1)
    with pytest.raises(KMEResponseError, match=words):
        b.get_keys_by_id([key.key_id])


def test_mismatched_ids_on_enc_keys_are_caught_by_the_slave(pair: KMEPair,
                                                            clients: tuple[Etsi014Client, Etsi014Client]) -> None:
    a, b = clients
    pair.a.faults.mismatched_ids = 1
    key = a.get_new_keys(1)[0]  # the master cannot tell: these key_IDs exist nowhere
    with pytest.raises(KMEError, match="unknown"):
        b.get_keys_by_id([key.key_id])


def test_keys_never_in_logs_or_errors(pair: KMEPair, clients: tuple[Etsi014Client, Etsi014Client],
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    a, b = clients
    keys = a.get_new_keys(2)
    pair.b.faults.short_keys = 1
    with pytest.raises(KMEResponseError) as info:
        b.get_keys_by_id([k.key_id for k in keys])
    for key in keys:
        for text in (caplog.text, str(info.value), repr(a), repr(keys), a.describe()):
            assert base64.b64encode(key.key).decode() not in text and key.key.hex() not in text
