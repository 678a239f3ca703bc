"""Sinks: where the key goes, and that it never shows up on a command line or in an error."""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
from pathlib import Path

import pytest
from hybridkex import ConfigError
from hybridkex.protocol import key_fingerprint

from hybridkex_wg._keys import PeerRef
from hybridkex_wg._sinks import CommandSink, FileSink, SinkError, WgSink, scrub

KEY = bytes(range(32))
PEER = PeerRef("wg0", bytes([7]) * 32, "site-b")


def script(path: Path, body: str) -> str:
    """A small executable Python program (a stand-in for wg or a hook)."""
    path.write_text(f"#!{sys.executable}\nimport json, os, sys\n{body}\n")
    path.chmod(0o755)
    return str(path)


def fake_wg(tmp_path: Path, peers: list[str]) -> tuple[str, Path]:
    """A stand-in for wg: 'show IF peers' lists ``peers``; 'set' records its argv and stdin."""
    record = tmp_path / "record.json"
    return script(tmp_path / "wg", f"""
if sys.argv[1] == "show":
    print("\\n".join({peers!r}))
else:
    json.dump({{'argv': sys.argv[1:], 'stdin': sys.stdin.read()}}, open({str(record)!r}, 'w'))
"""), record


def test_wg_sink_passes_the_key_on_stdin_only(tmp_path: Path) -> None:
    fake, record = fake_wg(tmp_path, [PEER.public_key_text])
    WgSink(fake).set_psk(PEER, KEY, 3)
    seen = json.loads(record.read_text())
    assert seen["argv"] == ["set", "wg0", "peer", PEER.public_key_text, "preshared-key", "/dev/stdin"]
    assert seen["stdin"] == base64.b64encode(KEY).decode() + "\n"
    assert all(base64.b64encode(KEY).decode() not in a and KEY.hex() not in a for a in seen["argv"])


def test_wg_sink_refuses_to_create_a_peer(tmp_path: Path) -> None:
    fake, record = fake_wg(tmp_path, ["someone+else="])
    with pytest.raises(SinkError, match="is not a peer of interface wg0"):
        WgSink(fake).set_psk(PEER, KEY, 3)
    assert not record.exists()
    WgSink(fake, require_peer=False).set_psk(PEER, KEY, 3)
    assert record.exists()


def test_wg_sink_failure_is_one_scrubbed_line(tmp_path: Path) -> None:
    # A hostile or buggy tool that echoes its input must not leak the key into our error.
    fake = script(tmp_path / "wg", "sys.stderr.write('Unable to set: ' + sys.stdin.read() + '\\nmore\\n'); "
                                   "sys.exit(1)")
    with pytest.raises(SinkError) as info:
        WgSink(fake, require_peer=False).set_psk(PEER, KEY, 3)
    message = str(info.value)
    assert "exited with status 1" in message and "wg0/site-b" in message and "[key]" in message
    assert base64.b64encode(KEY).decode() not in message and "\n" not in message


def test_wg_sink_missing_program() -> None:
    with pytest.raises(SinkError, match="not found"):
        WgSink("/nonexistent/wg").set_psk(PEER, KEY, 1)


def test_file_sink_replaces_atomically_with_mode_0600(tmp_path: Path) -> None:
    sink = FileSink(str(tmp_path / "keys" / "{interface}" / "{name}-{peer}.psk"))
    sink.set_psk(PEER, KEY, 1)
    path = tmp_path / "keys" / "wg0" / f"site-b-{PEER.file_safe_key}.psk"
    assert path.read_text() == base64.b64encode(KEY).decode() + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    inode = path.stat().st_ino
    sink.set_psk(PEER, bytes(32), 2)
    assert path.read_bytes() == base64.b64encode(bytes(32)) + b"\n"
    assert path.stat().st_ino != inode  # a new file renamed over the old one, never rewritten in place
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind
    assert "/" not in PEER.file_safe_key and "+" not in PEER.file_safe_key


@pytest.mark.parametrize("fmt, expected", [("hex", KEY.hex().encode() + b"\n"), ("raw", KEY)])
def test_file_sink_formats(tmp_path: Path, fmt: str, expected: bytes) -> None:
    FileSink(str(tmp_path / "k"), fmt).set_psk(PEER, KEY, 1)
    assert (tmp_path / "k").read_bytes() == expected


def test_file_sink_error_is_a_sink_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SinkError, match="file sink"):
        FileSink(str(blocker / "sub" / "k")).set_psk(PEER, KEY, 1)


def test_command_sink_gets_key_on_stdin_and_metadata_in_env(tmp_path: Path) -> None:
    record = tmp_path / "hook.json"
    hook = script(tmp_path / "hook", "json.dump({'argv': sys.argv[1:], 'stdin': sys.stdin.read(), "
                                     "'env': {k: v for k, v in os.environ.items() if k.startswith('HKWG_')}}, "
                                     f"open({str(record)!r}, 'w'))")
    CommandSink((hook, "--flag", "{interface}:{peer}:{name}:{epoch}:{event}")).set_psk(PEER, KEY, 5, event="stale")
    seen = json.loads(record.read_text())
    assert seen["argv"] == ["--flag", f"wg0:{PEER.public_key_text}:site-b:5:stale"]
    assert seen["stdin"] == base64.b64encode(KEY).decode() + "\n"
    assert seen["env"] == {
        "HKWG_INTERFACE": "wg0", "HKWG_PEER": PEER.public_key_text, "HKWG_PEER_NAME": "site-b",
        "HKWG_EPOCH": "5", "HKWG_EVENT": "stale", "HKWG_FINGERPRINT": key_fingerprint(KEY), "HKWG_FORCE_HANDSHAKE": "0",
    }


def test_command_sink_arguments_may_only_name_public_values() -> None:
    with pytest.raises(ConfigError, match="unknown placeholder"):
        CommandSink(("/bin/hook", "{key}"))
    with pytest.raises(ConfigError, match="not a valid template"):
        CommandSink(("/bin/hook", "{unclosed"))


def test_command_sink_failures(tmp_path: Path) -> None:
    slow = script(tmp_path / "slow", "import time; time.sleep(5)")
    with pytest.raises(SinkError, match="did not finish within 0.2 s"):
        CommandSink((slow,), timeout=0.2).set_psk(PEER, KEY, 1)
    failing = script(tmp_path / "fail", "print(sys.stdin.read().strip()); sys.exit(3)")
    with pytest.raises(SinkError, match="status 3: \\[key\\]"):
        CommandSink((failing,)).set_psk(PEER, KEY, 1)
    not_executable = tmp_path / "plain"
    not_executable.write_text("x")
    with pytest.raises(SinkError, match="not executable"):
        CommandSink((str(not_executable),)).set_psk(PEER, KEY, 1)


def test_scrub_removes_every_encoding() -> None:
    text = f"a {base64.b64encode(KEY).decode()} b {KEY.hex()} c {KEY.hex().upper()}\n" + "x" * 400
    cleaned = scrub(text, KEY)
    assert cleaned.count("[key]") == 3 and len(cleaned) <= 301 and os.linesep not in cleaned
