"""TOML configuration: parsing, defaults, validation messages, and the shipped example."""

from __future__ import annotations

import base64
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hybridkex import ConfigError

from hybridkex_wg._config import load_config, parse_config
from hybridkex_wg._rotation import FailurePolicy, Role
from hybridkex_wg._sinks import CommandSink, FileSink, WgSink

LOW = base64.b64encode(bytes([1]) * 32).decode()
HIGH = base64.b64encode(bytes([2]) * 32).decode()
OTHER = base64.b64encode(bytes([3]) * 32).decode()


def no_wg(interface: str, wg: str) -> str:
    raise AssertionError("the test configuration gives every public key")


def document(**top: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "listen": "127.0.0.1:7443",
        "exchange": {"psk_file": "psk.key"},
        "interface": [{"name": "wg0", "public_key": HIGH}],
        "peer": [{"interface": "wg0", "public_key": LOW, "name": "b"}],
    }
    doc.update(top)
    return doc


def test_minimal_configuration_and_defaults(tmp_path: Path) -> None:
    config = parse_config(document(), base=tmp_path, public_key_of=no_wg)
    (peer,) = config.peers
    assert peer.role is Role.RESPONDER  # the peer's key is the smaller one: it initiates
    assert config.listen == ("127.0.0.1", 7443) and config.workers == 16 and config.preauth_timeout == 10.0
    assert peer.settings.psk_file == tmp_path / "psk.key"
    assert peer.policy.interval == 120 and peer.policy.deadline == 180 and peer.policy.jitter == 0.1
    assert peer.policy.failure_policy is FailurePolicy.KEEP  # QKD off
    assert [type(s) for s in peer.sinks] == [WgSink]


def test_auto_role_smaller_key_initiates(tmp_path: Path) -> None:
    doc = document(interface=[{"name": "wg0", "public_key": LOW}],
                   peer=[{"public_key": HIGH, "endpoint": "10.0.0.2:7443"}])
    assert parse_config(doc, base=tmp_path, public_key_of=no_wg).peers[0].role is Role.INITIATOR
    doc = document(interface=[{"name": "wg0", "public_key": HIGH}], peer=[{"public_key": LOW}])
    assert parse_config(doc, base=tmp_path, public_key_of=no_wg).peers[0].role is Role.RESPONDER


def test_failure_policy_auto_fails_closed_when_qkd_is_required(tmp_path: Path) -> None:
    doc = document(exchange={"psk_file": "psk.key", "qkd": "sim", "qkd_link": "link.json"},
                   interface=[{"name": "wg0", "public_key": HIGH}],
                   peer=[{"public_key": LOW}, {"public_key": OTHER, "endpoint": "h:1", "role": "initiator",
                                               "exchange": {"qkd_policy": "preferred"}}])
    a, b = parse_config(doc, base=tmp_path, public_key_of=no_wg).peers
    assert a.policy.failure_policy is FailurePolicy.FAIL_CLOSED
    assert b.policy.failure_policy is FailurePolicy.KEEP
    assert a.settings.qkd_link == tmp_path / "link.json"


def test_per_peer_overrides_and_sinks(tmp_path: Path) -> None:
    doc = document(
        rotation={"interval": 60, "jitter": 0},
        interface=[{"name": "wg0", "public_key": HIGH,
                    "sink": [{"type": "wg", "wg": "/usr/bin/wg"},
                             {"type": "file", "path": "keys/{interface}-{name}.psk", "format": "hex"}]}],
        peer=[{"public_key": LOW, "name": "a", "rotation": {"failure_policy": "fail-closed", "deadline": 100},
               "exchange": {"psk_file": "a.psk", "timeout": 5, "qkd_journal_days": 2}},
              {"public_key": OTHER, "name": "c", "endpoint": "h:1",
               "sink": [{"type": "command", "command": ["/bin/true", "x"]}]}])
    a, c = parse_config(doc, base=tmp_path, public_key_of=no_wg).peers
    assert a.policy.interval == 60 and a.policy.deadline == 100 and a.policy.failure_policy is FailurePolicy.FAIL_CLOSED
    assert a.settings.psk_file == tmp_path / "a.psk" and a.settings.timeout == 5
    assert a.settings.qkd_journal_days == 2 and c.settings.qkd_journal_days == 7  # the default
    assert c.policy.deadline == 90 and c.settings.psk_file == tmp_path / "psk.key"
    wg_sink, file_sink = a.sinks
    assert isinstance(wg_sink, WgSink) and wg_sink.wg == "/usr/bin/wg"
    assert isinstance(file_sink, FileSink) and file_sink.fmt == "hex"
    assert file_sink.path_for(a.ref) == tmp_path / "keys" / "wg0-a.psk"
    assert isinstance(c.sinks[0], CommandSink) and c.sinks[0].argv == ("/bin/true", "x")


def test_interface_public_key_is_read_from_wg_when_absent(tmp_path: Path) -> None:
    calls = []

    def from_wg(interface: str, wg: str) -> str:
        calls.append((interface, wg))
        return HIGH

    doc = document(wg="/opt/wg", interface=[{"name": "wg7"}], peer=[{"public_key": LOW}])
    config = parse_config(doc, base=tmp_path, public_key_of=from_wg)
    assert calls == [("wg7", "/opt/wg")] and config.peers[0].interface == "wg7"


@pytest.mark.parametrize("change, match", [
    (dict(lisen="x"), "unknown key"),
    (dict(peer=[{"public_key": HIGH, "endpont": "x:1"}]), r"peer\[0\]: unknown key\(s\) endpont"),
    (dict(peer=[{"public_key": "not-a-key"}]), "not valid base64"),
    (dict(peer=[{"public_key": base64.b64encode(b"short").decode()}]), "decodes to 5 bytes"),
    (dict(peer=[{"public_key": LOW}, {"public_key": LOW}]), "repeats the peer"),
    (dict(peer=[{"public_key": HIGH, "interface": "wg0"}]), "equals the interface's own key"),
    (dict(peer=[{"public_key": LOW, "interface": "wg9"}]), "no \\[\\[interface\\]\\] table"),
    (dict(peer=[{"public_key": LOW, "role": "leader"}]), "role must be one of"),
    (dict(peer=[{"public_key": HIGH}], interface=[{"name": "wg0", "public_key": LOW}]), "needs endpoint"),
    (dict(listen=None), "needs listen"),
    (dict(peer=[]), "no peers"),
    (dict(rotation={"interval": 100, "deadline": 50}), "deadline"),
    (dict(rotation={"failure_policy": "explode"}), "failure_policy"),
    (dict(rotation={"interval": "fast"}), "interval must be a number"),
    (dict(exchange={}), "no authentication configured"),
    (dict(exchange={"psk_file": "k", "qkd": "quantum"}), "unknown QKD source"),
    (dict(exchange={"psk_file": "k", "pinned_peers": 3}), "pinned_peers must be a list"),
    (dict(interface=[{"name": "wg0", "public_key": LOW, "sink": [{"type": "file", "path": "{iface}"}]}],
          peer=[{"public_key": HIGH, "endpoint": "h:1"}]), "unknown placeholder"),
    (dict(interface=[{"name": "wg0", "public_key": LOW, "sink": [{"type": "pipe"}]}]), "type must be one of"),
    (dict(interface=[{"name": "wg0", "public_key": LOW, "sink": []}]), "non-empty list"),
    (dict(workers=0), "workers"),
    (dict(preauth_timeout=0), "preauth_timeout must be greater than 0"),
    (dict(exchange={"psk_file": "k", "qkd_journal_days": 0}), r"exchange.qkd_journal_days must be greater than 0"),
    (dict(exchange={"psk_file": "k", "qkd_journal_days": "week"}), "qkd_journal_days must be a number"),
])
def test_errors_say_where_and_what(tmp_path: Path, change: dict[str, Any], match: str) -> None:
    doc = document(**change)
    if doc.get("listen") is None:
        doc.pop("listen")
        doc["interface"] = [{"name": "wg0", "public_key": HIGH}]
        doc["peer"] = [{"public_key": LOW}]
    with pytest.raises(ConfigError, match=match):
        parse_config(doc, base=tmp_path, public_key_of=no_wg)


def test_load_config_reports_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("listen = [unclosed\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "wg.toml"
    path.write_text(f'listen = "127.0.0.1:1"\nstatus_file = "run/status.json"\n[exchange]\npsk_file = "p.key"\n'
                    f'[[interface]]\nname = "wg0"\npublic_key = "{HIGH}"\n[[peer]]\npublic_key = "{LOW}"\n')
    config = load_config(path, public_key_of=no_wg)
    assert config.status_file == tmp_path / "etc" / "run" / "status.json"
    assert config.peers[0].settings.psk_file == tmp_path / "etc" / "p.key"


def test_the_shipped_example_is_valid() -> None:
    text = resources.files("hybridkex_wg").joinpath("example.toml").read_text(encoding="utf-8")
    config = parse_config(tomllib.loads(text), base=Path("/etc/hybridkex"), public_key_of=lambda i, w: HIGH)
    assert len(config.peers) == 2
    site_b, site_c = config.peers
    assert site_b.policy.failure_policy is FailurePolicy.FAIL_CLOSED  # QKD required
    assert site_c.policy.failure_policy is FailurePolicy.KEEP
    assert site_c.settings.psk_file == Path("/etc/hybridkex/psk/site-c.psk")
    assert site_b.settings.qkd == "etsi014" and site_b.settings.peer_sae_id == "SAE-B"
