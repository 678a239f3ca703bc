"""ExchangeSettings: validation and PSK file formats."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from hybridkex import ConfigError, ExchangeSettings, QKDSourceMissing, load_psk_file

#: PSK mode binds both parties' names; each side's peer name is the other's name.
NAMES = dict(name="alice", peer_name="bob")


def secret(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    os.chmod(p, 0o600)
    return p


@pytest.mark.parametrize("encode", [lambda k: base64.b64encode(k) + b"\n", lambda k: k.hex().encode(), lambda k: k],
                         ids=["base64", "hex", "raw"])
def test_psk_formats(tmp_path: Path, encode: object) -> None:
    key = os.urandom(32)
    assert load_psk_file(secret(tmp_path, "p", encode(key))) == key  # type: ignore[operator]


def test_short_psk_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 32|fewer than 32"):
        load_psk_file(secret(tmp_path, "p", base64.b64encode(os.urandom(16))))


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "no authentication configured"),
    (dict(identity=Path("id.key")), "no peer pinned"),
    (dict(identity=Path("id.key"), peers=(Path("p"),), psk_file=Path("psk")), "choose one authentication mode"),
    (dict(psk_file=Path("psk"), qkd_policy="required", **NAMES), "needs a QKD source"),
    (dict(psk_file=Path("psk"), qkd="quantum-teleport", **NAMES), "unknown QKD source"),
    (dict(psk_file=Path("psk"), timeout=0, **NAMES), "--timeout"),
    (dict(psk_file=Path("psk")), "needs --name"),
    (dict(psk_file=Path("psk"), name="alice"), "--peer-name"),
    (dict(psk_ratchet=Path("r"), peer_name="bob"), "needs --name"),
    (dict(psk_file=Path("psk"), name="alice", peer_name="alice"), "own --name"),
])
def test_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ExchangeSettings(**kwargs).validate()  # type: ignore[arg-type]


def test_default_policy_follows_source() -> None:
    assert ExchangeSettings(psk_file=Path("p")).effective_qkd_policy == "off"
    assert ExchangeSettings(psk_file=Path("p"), qkd="sim").effective_qkd_policy == "required"
    assert ExchangeSettings(psk_file=Path("p"), qkd="sim", qkd_policy="preferred").effective_qkd_policy == "preferred"


def test_sources_say_what_is_missing(tmp_path: Path) -> None:
    psk = secret(tmp_path, "p", base64.b64encode(os.urandom(32)))
    with pytest.raises(ConfigError, match="--qkd-link"):
        ExchangeSettings(psk_file=psk, qkd="sim", **NAMES).open_qkd_source()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--kme-url"):
        ExchangeSettings(psk_file=psk, qkd="etsi014", **NAMES).open_qkd_source()  # type: ignore[arg-type]


def test_unopenable_source_fails_under_required_and_falls_back_under_preferred(tmp_path: Path) -> None:
    psk = secret(tmp_path, "p", base64.b64encode(os.urandom(32)))
    missing = tmp_path / "no-such-link.json"
    base = dict(psk_file=psk, qkd="sim", qkd_link=missing, qkd_journal=tmp_path / "journal", **NAMES)
    with pytest.raises(ConfigError):
        ExchangeSettings(**base).open_qkd_source()  # type: ignore[arg-type]
    source = ExchangeSettings(qkd_policy="preferred", **base).open_qkd_source()  # type: ignore[arg-type]
    assert source is not None
    try:
        with pytest.raises(QKDSourceMissing, match="cannot be opened"):
            source.get_new_keys(1)
        with pytest.raises(QKDSourceMissing, match="cannot be opened"):
            source.get_keys_by_id([])
    finally:
        source.close()


def test_missing_ratchet_state_is_an_error_not_a_bootstrap(tmp_path: Path) -> None:
    psk = secret(tmp_path, "p", base64.b64encode(os.urandom(32)))
    settings = ExchangeSettings(psk_file=psk, psk_ratchet=tmp_path / "r.ratchet", **NAMES)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ratchet-init"):
        settings.handshake_config()
    assert not (tmp_path / "r.ratchet").exists()
