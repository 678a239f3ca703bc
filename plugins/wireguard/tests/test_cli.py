"""``hybridkex wg`` commands as an operator runs them (loopback, file sinks, no WireGuard needed)."""

from __future__ import annotations

import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hybridkex_wg._status import read_status


def test_rotate_once_both_ends_print_the_same_line_and_epochs_grow(
        tmp_path: Path, psk_file: Path, cli: list[str], spawn: Callable[..., Any], port: Callable[[], int],
        new_key: Callable[[], str]) -> None:
    ka, kb = new_key(), new_key()
    address = f"127.0.0.1:{port()}"
    common = ["--psk-file", str(psk_file), "--no-wg", "--once"]
    epochs = []
    for _ in range(2):
        responder = spawn(["wg", "rotate", "--interface", "wgB", "--wg-public-key", kb, "--wg-peer", ka,
                           "--listen", address, "--key-file", str(tmp_path / "b.psk"), "--label", "a",
                           "--status-file", str(tmp_path / "b.json"), *common], stderr_path=tmp_path / "b.log")
        initiator = subprocess.run([*cli, "wg", "rotate", "--interface", "wgA", "--wg-public-key", ka, "--wg-peer",
                                    kb, "--connect", address, "--key-file", str(tmp_path / "a.psk"), "--label", "b",
                                    "--status-file", str(tmp_path / "a.json"), *common],
                                   capture_output=True, text=True, timeout=60)
        assert initiator.returncode == 0, initiator.stderr
        assert responder.proc.wait(30) == 0, responder.stderr_tail()
        responder.wait_for(lambda p=responder: len(p.records("psk-set")) == 1, 5, "the responder's line")
        (line_a,) = [x for x in initiator.stdout.splitlines() if x.startswith("psk-set")]
        fields_a = dict(f.split("=", 1) for f in line_a.split()[1:])
        fields_b = responder.records("psk-set")[0]
        assert fields_a["interface"] == "wgA" and fields_a["peer"] == kb and fields_a["role"] == "initiator"
        assert fields_b["interface"] == "wgB" and fields_b["peer"] == ka and fields_b["role"] == "responder"
        assert fields_a["epoch"] == fields_b["epoch"] and fields_a["fingerprint"] == fields_b["fingerprint"]
        assert fields_a["qkd"] == "no"
        assert (tmp_path / "a.psk").read_bytes() == (tmp_path / "b.psk").read_bytes()
        assert (tmp_path / "a.psk").read_text().strip() not in initiator.stdout + initiator.stderr
        epochs.append(int(fields_a["epoch"]))
    assert epochs == [1, 2]  # remembered in the status files
    assert read_status(tmp_path / "a.json")["peers"][0]["epoch"] == 2


def test_rotate_once_errors_have_exit_codes(tmp_path: Path, psk_file: Path, cli: list[str],
                                            port: Callable[[], int], new_key: Callable[[], str]) -> None:
    base = [*cli, "wg", "rotate", "--interface", "wgA", "--wg-public-key", new_key(), "--wg-peer", new_key(),
            "--psk-file", str(psk_file), "--no-wg", "--key-file", str(tmp_path / "k"), "--once"]
    refused = subprocess.run([*base, "--connect", f"127.0.0.1:{port()}", "--connect-retry", "0"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 5 and "refused" in refused.stderr
    both = subprocess.run([*base, "--connect", "127.0.0.1:1", "--listen", "127.0.0.1:2"], capture_output=True,
                          text=True, timeout=60)
    assert both.returncode == 2 and "exactly one of" in both.stderr
    bad_key = subprocess.run([*cli, "wg", "rotate", "--interface", "wgA", "--wg-public-key", "xyz", "--wg-peer",
                              new_key(), "--connect", "127.0.0.1:1", "--psk-file", str(psk_file), "--once"],
                             capture_output=True, text=True, timeout=60)
    assert bad_key.returncode == 2 and "not valid base64" in bad_key.stderr
    no_sink = subprocess.run([*base[:-3], "--connect", "127.0.0.1:1", "--once"], capture_output=True, text=True,
                             timeout=60)
    assert no_sink.returncode == 2 and "no sink" in no_sink.stderr
    assert not (tmp_path / "k").exists()


def test_config_example_and_check(tmp_path: Path, psk_file: Path, cli: list[str], new_key: Callable[[], str],
                                  write_toml: Callable[[Path, dict[str, Any]], Path]) -> None:
    example = subprocess.run([*cli, "wg", "config-example"], capture_output=True, text=True, timeout=60)
    assert example.returncode == 0
    document = tomllib.loads(example.stdout)
    assert document["rotation"]["interval"] == 120 and len(document["peer"]) == 2
    assert example.stdout.count("#") > 40  # commented
    config = write_toml(tmp_path / "wg.toml", {
        "listen": "127.0.0.1:7443", "exchange": {"psk_file": str(psk_file)},
        "interface": [{"name": "wg0", "public_key": "A" + new_key()[1:]}],
        "peer": [{"public_key": "/" + new_key()[1:], "name": "b", "endpoint": "127.0.0.1:7444"}]})
    checked = subprocess.run([*cli, "wg", "check", "--config", str(config)], capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert "1 peer(s)" in checked.stdout and "wg0/b: initiator -> 127.0.0.1:7444" in checked.stdout
    psk_file.unlink()
    missing = subprocess.run([*cli, "wg", "check", "--config", str(config)], capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
