"""ExchangeSettings: validation and PSK file formats."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from hybridkex import ConfigError, ExchangeSettings, load_psk_file


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
    (dict(psk_file=Path("psk"), qkd_policy="required"), "needs a QKD source"),
    (dict(psk_file=Path("psk"), qkd="quantum-teleport"), "unknown QKD source"),
    (dict(psk_file=Path("psk"), timeout=0), "--timeout"),
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
        ExchangeSettings(psk_file=psk, qkd="sim").open_qkd_source()
    with pytest.raises(ConfigError, match="--kme-url"):
        ExchangeSettings(psk_file=psk, qkd="etsi014").open_qkd_source()
