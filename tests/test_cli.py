"""The command line, as a user runs it: two real processes talking over loopback TCP."""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

HKX = [sys.executable, "-m", "hybridkex.cli"]


def hkx(*args: str | Path, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*HKX, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pair(resp_args: list[str | Path], init_args: list[str | Path], timeout: float = 60) -> tuple[
        subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """Run a responder and an initiator process against each other."""
    port = free_port()
    responder = subprocess.Popen([*HKX, "exchange", "--listen", f"127.0.0.1:{port}", "--accept-timeout", "30",
                                  *map(str, resp_args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        initiator = subprocess.run([*HKX, "exchange", "--connect", f"127.0.0.1:{port}", *map(str, init_args)],
                                   capture_output=True, text=True, timeout=timeout)
        out, err = responder.communicate(timeout=timeout)
    finally:
        if responder.poll() is None:
            responder.kill()
            responder.wait()
    return subprocess.CompletedProcess(responder.args, responder.returncode, out, err), initiator


@pytest.fixture(scope="module")
def ids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ids")
    for name, alg in (("a", "ml-dsa-65"), ("b", "ml-dsa-87"), ("m", "ml-dsa-65")):
        hkx("keygen", d / name, "--alg", alg)
    hkx("psk", "init", d / "psk")
    hkx("psk", "init", d / "other-psk")
    return d


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_keygen_files_and_fingerprint(tmp_path: Path) -> None:
    out = hkx("keygen", tmp_path / "k", "--alg", "ml-dsa-44").stdout
    assert out.startswith("SHA256:") and "ml-dsa-44" in out
    assert mode(tmp_path / "k/id.key") == 0o600
    assert (tmp_path / "k/id.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    again = hkx("keygen", tmp_path / "k", check=False)
    assert again.returncode == 2 and "--force" in again.stderr
    assert hkx("keygen", tmp_path / "k", "--force").stdout.split()[0] != out.split()[0]


def test_mldsa_exchange_writes_equal_keys(ids: Path, tmp_path: Path) -> None:
    r, i = pair(["--identity", ids / "b/id.key", "--peer", ids / "a/id.pub", "--out", tmp_path / "kr", "--json",
                 "--kem", "ml-kem-1024"],
                ["--identity", ids / "a/id.key", "--peer", ids / "b/id.pub", "--peer", ids / "m/id.pub",
                 "--out", tmp_path / "ki", "--json", "--kem", "ml-kem-1024"])
    assert r.returncode == 0 and i.returncode == 0, (r.stderr, i.stderr)
    key = (tmp_path / "ki").read_bytes()
    assert len(key) == 32 and key == (tmp_path / "kr").read_bytes()
    assert mode(tmp_path / "ki") == mode(tmp_path / "kr") == 0o600
    ji, jr = json.loads(i.stdout), json.loads(r.stdout)
    assert ji["suite"] == jr["suite"] == "x25519+ml-kem-1024/hkdf-sha384"
    assert ji["transcript_hash"] == jr["transcript_hash"] and ji["key_fingerprint"] == jr["key_fingerprint"]
    assert ji["auth"] == "ml-dsa-65" and jr["auth"] == "ml-dsa-87" and ji["qkd_key_ids"] == []
    for text in (i.stdout, r.stdout, i.stderr, r.stderr):
        assert key.hex() not in text and base64.b64encode(key).decode() not in text


def test_psk_exchange_formats(ids: Path, tmp_path: Path) -> None:
    r, i = pair(["--psk-file", ids / "psk", "--out", tmp_path / "kr", "--format", "hex"],
                ["--psk-file", ids / "psk", "--out", tmp_path / "ki", "--format", "base64"])
    assert r.returncode == 0 and i.returncode == 0, (r.stderr, i.stderr)
    assert bytes.fromhex((tmp_path / "kr").read_text()) == base64.b64decode((tmp_path / "ki").read_text())
    assert "authenticated by psk" in i.stdout


@pytest.mark.parametrize("case", ["unpinned", "wrong-psk", "mixed-modes", "kem-mismatch"])
def test_failures_leave_no_key_and_say_why(ids: Path, tmp_path: Path, case: str) -> None:
    resp = {"unpinned": ["--identity", ids / "b/id.key", "--peer", ids / "m/id.pub"],
            "wrong-psk": ["--psk-file", ids / "other-psk"],
            "mixed-modes": ["--psk-file", ids / "psk"],
            "kem-mismatch": ["--psk-file", ids / "psk", "--kem", "ml-kem-1024"]}[case]
    init = {"unpinned": ["--identity", ids / "a/id.key", "--peer", ids / "b/id.pub"],
            "wrong-psk": ["--psk-file", ids / "psk"],
            "mixed-modes": ["--identity", ids / "a/id.key", "--peer", ids / "b/id.pub"],
            "kem-mismatch": ["--psk-file", ids / "psk"]}[case]
    r, i = pair([*resp, "--out", tmp_path / "kr"], [*init, "--out", tmp_path / "ki"])
    assert r.returncode != 0 and i.returncode != 0
    assert not (tmp_path / "kr").exists() and not (tmp_path / "ki").exists()
    for proc in (r, i):
        errors = [line for line in proc.stderr.splitlines() if line.startswith("hybridkex: error:")]
        assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    if case == "unpinned":
        assert "not pinned" in r.stderr and "--peer" in r.stderr and r.returncode == 3


def test_configuration_errors(ids: Path, tmp_path: Path) -> None:
    p = hkx("exchange", "--connect", "127.0.0.1:1", "--identity", tmp_path / "missing.key", "--peer",
            ids / "a/id.pub", "--out", tmp_path / "k", check=False)
    assert p.returncode == 2 and "does not exist" in p.stderr
    p = hkx("exchange", "--connect", "127.0.0.1:1", "--psk-file", ids / "psk", "--out", tmp_path / "k",
            "--qkd-policy", "required", check=False)
    assert p.returncode == 2 and "--qkd sim" in p.stderr
    p = hkx("exchange", "--psk-file", ids / "psk", "--out", tmp_path / "k", check=False)
    assert p.returncode == 2 and "--listen" in p.stderr
    loose = tmp_path / "loose.psk"
    loose.write_bytes((ids / "psk").read_bytes())
    os.chmod(loose, 0o644)
    p = hkx("exchange", "--connect", "127.0.0.1:1", "--psk-file", loose, "--out", tmp_path / "k", check=False)
    assert p.returncode == 2 and "chmod 600" in p.stderr
    assert not (tmp_path / "k").exists()


def test_unreachable_peer(ids: Path, tmp_path: Path) -> None:
    p = hkx("exchange", "--connect", f"127.0.0.1:{free_port()}", "--connect-retry", "0.2", "--psk-file",
            ids / "psk", "--out", tmp_path / "k", check=False)
    assert p.returncode == 5 and "refused" in p.stderr and not (tmp_path / "k").exists()


def test_qkd_sim_across_processes(ids: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.json"
    hkx("qkd-link", "init", link)
    common = ["--psk-file", ids / "psk", "--qkd", "sim", "--qkd-link", link, "--json"]
    r, i = pair([*common, "--out", tmp_path / "kr"], [*common, "--out", tmp_path / "ki"])
    assert r.returncode == 0 and i.returncode == 0, (r.stderr, i.stderr)
    ji, jr = json.loads(i.stdout), json.loads(r.stdout)
    assert ji["qkd"] == jr["qkd"] == "used" and ji["qkd_key_ids"] == jr["qkd_key_ids"] and len(ji["qkd_key_ids"]) == 1
    assert (tmp_path / "ki").read_bytes() == (tmp_path / "kr").read_bytes()

    hkx("qkd-link", "tap", link, "--eve", "1.0")
    r, i = pair([*common, "--out", tmp_path / "kr2"], [*common, "--out", tmp_path / "ki2"])
    assert r.returncode != 0 and i.returncode == 4 and "QBER" in i.stderr
    assert not (tmp_path / "ki2").exists() and not (tmp_path / "kr2").exists()

    pref = [*common, "--qkd-policy", "preferred"]
    r, i = pair([*pref, "--out", tmp_path / "kr3"], [*pref, "--out", tmp_path / "ki3"])
    assert r.returncode == 0 and i.returncode == 0, (r.stderr, i.stderr)
    ji = json.loads(i.stdout)
    assert ji["qkd"] == "unavailable" and "QBER" in ji["qkd_reason"]
    assert (tmp_path / "ki3").read_bytes() == (tmp_path / "kr3").read_bytes()


def test_demo_runs() -> None:
    p = hkx("demo", timeout=120)
    assert "keys match" in p.stdout and "QBER" in p.stdout and "continued without it" in p.stdout


def test_help_lists_core_commands() -> None:
    out = hkx("--help").stdout
    for cmd in ("keygen", "exchange", "demo", "qkd-link", "psk"):
        assert cmd in out


def test_psk_ratchet_across_processes(ids: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.json"
    hkx("qkd-link", "init", link)
    keys = []
    for n in range(2):
        common = ["--psk-file", ids / "psk", "--qkd", "sim", "--qkd-link", link]
        r, i = pair([*common, "--psk-ratchet", tmp_path / "r.ratchet", "--out", tmp_path / f"kr{n}"],
                    [*common, "--psk-ratchet", tmp_path / "i.ratchet", "--out", tmp_path / f"ki{n}"])
        assert r.returncode == 0 and i.returncode == 0, (r.stderr, i.stderr)
        keys.append((tmp_path / f"ki{n}").read_bytes())
        assert keys[-1] == (tmp_path / f"kr{n}").read_bytes()
    ri, rr = (json.loads((tmp_path / f"{s}.ratchet").read_text()) for s in "ir")
    assert ri["epoch"] == rr["epoch"] == 2 and ri["keys"] == rr["keys"] and ri["qkd_fed"]
    # A peer that kept only the bootstrap PSK is now refused: authentication moved on to QKD-fed keys.
    r, i = pair(["--psk-file", ids / "psk", "--out", tmp_path / "kx"],
                ["--psk-file", ids / "psk", "--psk-ratchet", tmp_path / "i.ratchet", "--out", tmp_path / "ky"])
    assert r.returncode != 0 and i.returncode != 0 and not (tmp_path / "ky").exists()


def test_etsi014_exchange_through_kme_serve(ids: Path, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    hkx("kme", "pki", pki, "--sae", "alice", "--sae", "bob")
    kme = subprocess.Popen([*HKX, "kme", "serve", "--pki", str(pki), "--listen-a", "127.0.0.1:0", "--listen-b",
                            "127.0.0.1:0", "--sae-a", "alice", "--sae-b", "bob"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        urls = {}
        assert kme.stdout is not None
        while len(urls) < 2:
            line = kme.stdout.readline()
            assert line, kme.stderr.read() if kme.stderr else "kme exited"
            if "listening on" in line:
                urls[line.split()[0]] = line.split()[3]

        def side(me: str, peer: str, url: str, out: str, *extra: str) -> list[str | Path]:
            return ["--psk-file", ids / "psk", "--qkd", "etsi014", "--kme-url", url, "--kme-ca", pki / "ca.crt",
                    "--sae-cert", pki / f"{me}.crt", "--sae-key", pki / f"{me}.key", "--sae-id", me,
                    "--peer-sae-id", peer, "--out", tmp_path / out, "--json", *extra]

        r, i = pair(side("bob", "alice", urls["kme-b"], "kr"), side("alice", "bob", urls["kme-a"], "ki"))
        assert r.returncode == 0 and i.returncode == 0, (r.stderr, i.stderr)
        ji, jr = json.loads(i.stdout), json.loads(r.stdout)
        assert ji["qkd"] == jr["qkd"] == "used" and ji["qkd_key_ids"] == jr["qkd_key_ids"]
        assert (tmp_path / "ki").read_bytes() == (tmp_path / "kr").read_bytes()
    finally:
        kme.terminate()
        kme.wait(10)
    # The KME is gone: 'required' fails with a clear error, 'preferred' goes on and says so.
    r, i = pair(side("bob", "alice", urls["kme-b"], "kr2"), side("alice", "bob", urls["kme-a"], "ki2"))
    assert i.returncode == 4 and r.returncode != 0 and "KME" in i.stderr
    assert not (tmp_path / "ki2").exists() and not (tmp_path / "kr2").exists()
    r, i = pair(side("bob", "alice", urls["kme-b"], "kr3", "--qkd-policy", "preferred"),
                side("alice", "bob", urls["kme-a"], "ki3", "--qkd-policy", "preferred"))
    assert r.returncode == 0 and i.returncode == 0, (r.stderr, i.stderr)
    assert json.loads(i.stdout)["qkd"] == "unavailable" and "KME" in json.loads(i.stdout)["qkd_reason"]
    assert (tmp_path / "ki3").read_bytes() == (tmp_path / "kr3").read_bytes()
