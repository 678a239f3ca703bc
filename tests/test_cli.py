"""The command line, as a user runs it: two real processes talking over loopback TCP."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import select
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

HKX = [sys.executable, "-m", "hybridkex.cli"]
#: PSK mode binds both names: the initiator is alice, the responder bob, each naming the other.
INIT_NAMES = ["--name", "alice", "--peer-name", "bob"]
RESP_NAMES = ["--name", "bob", "--peer-name", "alice"]
#: How long a responder waits in rows where the initiator fails: v2 responders keep listening past
#: connections that fail before the peer authenticated, so they end only at --accept-timeout.
SHORT_ACCEPT = 8.0


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's processes keep their QKD key_ID journal in a directory of their own."""
    directory = tmp_path / "state"
    monkeypatch.setenv("HYBRIDKEX_STATE_DIR", str(directory))
    return directory


def hkx(*args: str | Path, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*HKX, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pair(resp_args: list[str | Path], init_args: list[str | Path], timeout: float = 60,
         accept_timeout: float = 30) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """Run a responder and an initiator process against each other."""
    port = free_port()
    responder = subprocess.Popen([*HKX, "exchange", "--listen", f"127.0.0.1:{port}", "--accept-timeout",
                                  str(accept_timeout), *map(str, resp_args)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
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
                ["--identity", ids / "a/id.key", "--peer", ids / "b/id.pub",
                 "--out", tmp_path / "ki", "--json", "--kem", "ml-kem-1024"])
    assert r.returncode == 0 and i.returncode == 0, (r.stderr, i.stderr)
    key = (tmp_path / "ki").read_bytes()
    assert len(key) == 32 and key == (tmp_path / "kr").read_bytes()
    assert mode(tmp_path / "ki") == mode(tmp_path / "kr") == 0o600
    ji, jr = json.loads(i.stdout), json.loads(r.stdout)
    assert ji["suite"] == jr["suite"] == "x25519+ml-kem-1024/hkdf-sha384"
    assert ji["transcript_hash"] == jr["transcript_hash"] and ji["key_fingerprint"] == jr["key_fingerprint"]
    assert ji["auth"] == "ml-dsa-65" and jr["auth"] == "ml-dsa-87" and ji["qkd_key_ids"] == []
    assert ji["peer"] == jr["local"] and jr["peer"] == ji["local"] and ji["peer"] != ji["local"]
    for text in (i.stdout, r.stdout, i.stderr, r.stderr):
        assert key.hex() not in text and base64.b64encode(key).decode() not in text


def test_mldsa_initiator_pins_exactly_one_responder_not_itself(ids: Path, tmp_path: Path) -> None:
    # Its responder's key keys the InitHello's mac1, so an initiator must know which one it calls.
    p = hkx("exchange", "--connect", f"127.0.0.1:{free_port()}", "--identity", ids / "a/id.key",
            "--peer", ids / "b/id.pub", "--peer", ids / "m/id.pub", "--out", tmp_path / "k", check=False)
    assert p.returncode == 2 and "exactly one responder" in p.stderr and "Traceback" not in p.stderr
    p = hkx("exchange", "--connect", f"127.0.0.1:{free_port()}", "--identity", ids / "a/id.key",
            "--peer", ids / "a/id.pub", "--out", tmp_path / "k", check=False)
    assert p.returncode == 2 and "own public key" in p.stderr
    assert not (tmp_path / "k").exists()


def test_psk_exchange_formats(ids: Path, tmp_path: Path) -> None:
    r, i = pair(["--psk-file", ids / "psk", *RESP_NAMES, "--out", tmp_path / "kr", "--format", "hex"],
                ["--psk-file", ids / "psk", *INIT_NAMES, "--out", tmp_path / "ki", "--format", "base64"])
    assert r.returncode == 0 and i.returncode == 0, (r.stderr, i.stderr)
    assert bytes.fromhex((tmp_path / "kr").read_text()) == base64.b64decode((tmp_path / "ki").read_text())
    assert "peer psk:bob authenticated by psk" in i.stdout and "peer psk:alice authenticated by psk" in r.stdout


@pytest.mark.parametrize("case", ["no-names", "same-name"])
def test_psk_needs_two_distinct_names(ids: Path, tmp_path: Path, case: str) -> None:
    names = {"no-names": ["--name", "alice"], "same-name": ["--name", "alice", "--peer-name", "alice"]}[case]
    p = hkx("exchange", "--connect", f"127.0.0.1:{free_port()}", "--psk-file", ids / "psk", *names,
            "--out", tmp_path / "k", check=False)
    assert p.returncode == 2 and "--peer-name" in p.stderr and not (tmp_path / "k").exists()


#: (responder flags, initiator flags, initiator exit code, words in the initiator's error line, the error
#: the responder logs for the connection it ignored)
FAILURES = {
    # The responder does not know the initiator: it alerts it and goes on listening.
    "unpinned": (["--identity", "b/id.key", "--peer", "m/id.pub"], ["--identity", "a/id.key", "--peer", "b/id.pub"],
                 3, "does not know this side", "UnknownPeerError"),
    "wrong-psk": (["--psk-file", "other-psk", *RESP_NAMES], ["--psk-file", "psk", *INIT_NAMES],
                  3, "does not know this side", "UnknownPeerError"),
    # A name the responder does not answer to: its mac1 is wrong, the InitHello dropped unanswered.
    "wrong-name": (["--psk-file", "psk", *RESP_NAMES], ["--psk-file", "psk", "--name", "alice", "--peer-name", "carol"],
                   5, "closed", "UnverifiedMessage"),
    # mac1 is keyed by the responder's public key in one mode, by its name in the other: dropped too.
    "mixed-modes": (["--psk-file", "psk", *RESP_NAMES], ["--identity", "a/id.key", "--peer", "b/id.pub"],
                    5, "closed", "UnverifiedMessage"),
    "kem-mismatch": (["--psk-file", "psk", *RESP_NAMES, "--kem", "ml-kem-1024"], ["--psk-file", "psk", *INIT_NAMES],
                     3, "no common suite", "NegotiationError"),
}


def _in(ids: Path, flags: list[str]) -> list[str | Path]:
    return [ids / f if f.endswith((".key", ".pub", "psk")) else f for f in flags]


@pytest.mark.parametrize("case", list(FAILURES))
def test_failures_leave_no_key_and_say_why(ids: Path, tmp_path: Path, case: str) -> None:
    resp, init, init_code, words, resp_logged = FAILURES[case]
    r, i = pair([*_in(ids, resp), "--out", tmp_path / "kr"], [*_in(ids, init), "--out", tmp_path / "ki"],
                accept_timeout=SHORT_ACCEPT)
    assert not (tmp_path / "kr").exists() and not (tmp_path / "ki").exists()
    for proc in (r, i):
        errors = [line for line in proc.stderr.splitlines() if line.startswith("hybridkex: error:")]
        assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert i.returncode == init_code and words in i.stderr, i.stderr
    # The peer never authenticated, so the responder did not give up on its account: it waited for
    # another initiator until --accept-timeout, and logged the ignored connection in fixed words.
    assert r.returncode == 5 and "no peer completed an exchange" in r.stderr, r.stderr
    assert f"ignored an unauthenticated connection that failed: {resp_logged}" in r.stderr, r.stderr


def test_configuration_errors(ids: Path, tmp_path: Path) -> None:
    p = hkx("exchange", "--connect", "127.0.0.1:1", "--identity", tmp_path / "missing.key", "--peer",
            ids / "a/id.pub", "--out", tmp_path / "k", check=False)
    assert p.returncode == 2 and "does not exist" in p.stderr
    p = hkx("exchange", "--connect", "127.0.0.1:1", "--psk-file", ids / "psk", *INIT_NAMES, "--out", tmp_path / "k",
            "--qkd-policy", "required", check=False)
    assert p.returncode == 2 and "--qkd sim" in p.stderr
    p = hkx("exchange", "--psk-file", ids / "psk", *INIT_NAMES, "--out", tmp_path / "k", check=False)
    assert p.returncode == 2 and "--listen" in p.stderr
    loose = tmp_path / "loose.psk"
    loose.write_bytes((ids / "psk").read_bytes())
    os.chmod(loose, 0o644)
    p = hkx("exchange", "--connect", "127.0.0.1:1", "--psk-file", loose, *INIT_NAMES, "--out", tmp_path / "k",
            check=False)
    assert p.returncode == 2 and "chmod 600" in p.stderr
    assert not (tmp_path / "k").exists()


def test_unreachable_peer(ids: Path, tmp_path: Path) -> None:
    p = hkx("exchange", "--connect", f"127.0.0.1:{free_port()}", "--connect-retry", "0.2", "--psk-file",
            ids / "psk", *INIT_NAMES, "--out", tmp_path / "k", check=False)
    assert p.returncode == 5 and "refused" in p.stderr and not (tmp_path / "k").exists()


def test_qkd_sim_across_processes(ids: Path, tmp_path: Path, state_dir: Path) -> None:
    link = tmp_path / "link.json"
    hkx("qkd-link", "init", link)
    common = ["--psk-file", ids / "psk", "--qkd", "sim", "--qkd-link", link, "--json"]
    init, resp = [*common, *INIT_NAMES], [*common, *RESP_NAMES]
    r, i = pair([*resp, "--out", tmp_path / "kr"], [*init, "--out", tmp_path / "ki"])
    assert r.returncode == 0 and i.returncode == 0, (r.stderr, i.stderr)
    ji, jr = json.loads(i.stdout), json.loads(r.stdout)
    assert ji["qkd"] == jr["qkd"] == "used" and ji["qkd_key_ids"] == jr["qkd_key_ids"] and len(ji["qkd_key_ids"]) == 1
    assert (tmp_path / "ki").read_bytes() == (tmp_path / "kr").read_bytes()
    # Both sides journaled the key_ID they used (here one machine is both master and slave SAE).
    journal = [line.split()[:2] for line in (state_dir / "qkd-key-ids").read_text().splitlines()]
    assert ["master", ji["qkd_key_ids"][0]] in journal and ["slave", ji["qkd_key_ids"][0]] in journal

    hkx("qkd-link", "tap", link, "--eve", "1.0")
    r, i = pair([*resp, "--out", tmp_path / "kr2"], [*init, "--out", tmp_path / "ki2"], accept_timeout=SHORT_ACCEPT)
    assert i.returncode == 4 and "QBER" in i.stderr
    # The initiator failed before it authenticated to the responder, which waits for another peer.
    assert r.returncode == 5 and "no peer completed" in r.stderr
    assert not (tmp_path / "ki2").exists() and not (tmp_path / "kr2").exists()

    pref = ["--qkd-policy", "preferred"]
    r, i = pair([*resp, *pref, "--out", tmp_path / "kr3"], [*init, *pref, "--out", tmp_path / "ki3"])
    assert r.returncode == 0 and i.returncode == 0, (r.stderr, i.stderr)
    ji, jr = json.loads(i.stdout), json.loads(r.stdout)
    assert ji["qkd"] == jr["qkd"] == "unavailable" and "QBER" in ji["qkd_reason"] and ji["qkd_key_ids"] == []
    assert "hybridkex: warning:" in i.stderr and "WITHOUT QKD" in i.stderr
    assert (tmp_path / "ki3").read_bytes() == (tmp_path / "kr3").read_bytes()


def test_preferred_with_an_unopenable_source_goes_on_and_says_why(ids: Path, tmp_path: Path) -> None:
    # A QKD source that cannot even be opened (the link file is gone) is a missing QKD key, not a crash.
    common = ["--psk-file", ids / "psk", "--qkd", "sim", "--qkd-link", tmp_path / "gone.json", "--json"]
    pref = [*common, "--qkd-policy", "preferred"]
    r, i = pair([*pref, *RESP_NAMES, "--out", tmp_path / "kr"], [*pref, *INIT_NAMES, "--out", tmp_path / "ki"])
    assert r.returncode == 0 and i.returncode == 0, (r.stderr, i.stderr)
    ji, jr = json.loads(i.stdout), json.loads(r.stdout)
    assert ji["qkd"] == jr["qkd"] == "unavailable" and "cannot be opened" in ji["qkd_reason"]
    for proc in (r, i):
        assert "hybridkex: warning:" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "ki").read_bytes() == (tmp_path / "kr").read_bytes()
    p = hkx("exchange", "--connect", f"127.0.0.1:{free_port()}", *common, *INIT_NAMES, "--out", tmp_path / "kx",
            check=False)
    assert p.returncode == 2 and "gone.json" in p.stderr and not (tmp_path / "kx").exists()


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
    common = ["--psk-file", ids / "psk", "--qkd", "sim", "--qkd-link", link]
    ri_path, rr_path = tmp_path / "i.ratchet", tmp_path / "r.ratchet"
    # No silent bootstrap: without a state the exchange refuses and says how to create one.
    p = hkx("exchange", "--connect", f"127.0.0.1:{free_port()}", *common, *INIT_NAMES, "--psk-ratchet", ri_path,
            "--out", tmp_path / "k", check=False)
    assert p.returncode == 2 and "ratchet-init" in p.stderr and not ri_path.exists()
    hkx("psk", "ratchet-init", ri_path, "--psk-file", ids / "psk")
    hkx("psk", "ratchet-init", rr_path, "--psk-file", ids / "psk")
    assert mode(ri_path) == 0o600
    again = hkx("psk", "ratchet-init", ri_path, "--psk-file", ids / "psk", check=False)
    assert again.returncode == 2 and "--force" in again.stderr
    keys = []
    for n in range(2):
        r, i = pair([*common, *RESP_NAMES, "--psk-ratchet", rr_path, "--out", tmp_path / f"kr{n}"],
                    [*common, *INIT_NAMES, "--psk-ratchet", ri_path, "--out", tmp_path / f"ki{n}"])
        assert r.returncode == 0 and i.returncode == 0, (r.stderr, i.stderr)
        keys.append((tmp_path / f"ki{n}").read_bytes())
        assert keys[-1] == (tmp_path / f"kr{n}").read_bytes()
    assert keys[0] != keys[1]
    si, sr = (json.loads(p.read_text()) for p in (ri_path, rr_path))
    assert si["epoch"] == sr["epoch"] == 2 and si["current"]["key"] == sr["current"]["key"]
    assert si["current"]["qkd_fed"] and sr["current"]["qkd_fed"]
    assert si["previous"]["key"] == sr["previous"]["key"] != si["current"]["key"]
    bootstrap = base64.b64decode((ids / "psk").read_text())
    assert base64.b64decode(si["previous"]["key"]) != bootstrap and base64.b64decode(si["current"]["key"]) != bootstrap
    # A peer that kept only the bootstrap PSK is now refused: authentication moved on to QKD-fed keys.
    r, i = pair(["--psk-file", ids / "psk", *RESP_NAMES, "--out", tmp_path / "kx"],
                ["--psk-file", ids / "psk", *INIT_NAMES, "--psk-ratchet", ri_path, "--out", tmp_path / "ky"],
                accept_timeout=SHORT_ACCEPT)
    assert i.returncode == 3 and r.returncode == 5 and not (tmp_path / "ky").exists()
    assert not (tmp_path / "kx").exists() and json.loads(ri_path.read_text()) == si


def test_psk_init_with_ratchet(tmp_path: Path) -> None:
    hkx("psk", "init", tmp_path / "psk", "--ratchet", tmp_path / "state")
    state = json.loads((tmp_path / "state").read_text())
    assert state["epoch"] == 0 and state["previous"] is None
    assert base64.b64decode(state["current"]["key"]) == base64.b64decode((tmp_path / "psk").read_text())
    assert mode(tmp_path / "psk") == mode(tmp_path / "state") == 0o600


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
            names = INIT_NAMES if me == "alice" else RESP_NAMES
            return ["--psk-file", ids / "psk", *names, "--qkd", "etsi014", "--kme-url", url, "--kme-ca", pki / "ca.crt",
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
    r, i = pair(side("bob", "alice", urls["kme-b"], "kr2"), side("alice", "bob", urls["kme-a"], "ki2"),
                accept_timeout=SHORT_ACCEPT)
    assert i.returncode == 4 and r.returncode == 5 and "KME" in i.stderr
    assert not (tmp_path / "ki2").exists() and not (tmp_path / "kr2").exists()
    r, i = pair(side("bob", "alice", urls["kme-b"], "kr3", "--qkd-policy", "preferred"),
                side("alice", "bob", urls["kme-a"], "ki3", "--qkd-policy", "preferred"))
    assert r.returncode == 0 and i.returncode == 0, (r.stderr, i.stderr)
    assert json.loads(i.stdout)["qkd"] == "unavailable" and "KME" in json.loads(i.stdout)["qkd_reason"]
    assert "hybridkex: warning:" in i.stderr
    assert (tmp_path / "ki3").read_bytes() == (tmp_path / "kr3").read_bytes()


def _read_line_matching(stream: object, pattern: re.Pattern[str], deadline: float) -> re.Match[str] | None:
    """Read lines of a child's pipe until one matches or the deadline passes (never blocks past it)."""
    buf = ""
    fd = stream.fileno()  # type: ignore[attr-defined]
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 4096).decode(errors="replace")
        if not chunk:
            break
        buf += chunk
        m = pattern.search(buf)
        if m:
            return m
    return None


def _recv_until_closed(sock: socket.socket, deadline: float) -> bytes:
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _record_init_hello(target: int, psk: Path, work: Path) -> bytes:
    """Let a real initiator process send its InitHello through a relay to ``target``, record that
    frame, and cut the connection before anything comes back (traffic an eavesdropper could keep)."""
    with socket.socket() as relay:
        relay.bind(("127.0.0.1", 0))
        relay.listen(1)
        relay.settimeout(30)
        initiator = subprocess.Popen([*HKX, "exchange", "--connect", f"127.0.0.1:{relay.getsockname()[1]}",
                                      "--psk-file", str(psk), *INIT_NAMES, "--timeout", "5",
                                      "--out", str(work / "recorded.key")],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            conn, _ = relay.accept()
            with conn, socket.create_connection(("127.0.0.1", target), timeout=10) as upstream:
                conn.settimeout(10)
                header = b""
                while len(header) < 8:
                    chunk = conn.recv(8 - len(header))
                    assert chunk, "the initiator closed before sending an InitHello"
                    header += chunk
                (length,) = struct.unpack(">I", header[4:8])
                body = b""
                while len(body) < length:
                    chunk = conn.recv(length - len(body))
                    assert chunk, "the initiator closed in the middle of its InitHello"
                    body += chunk
                frame = header + body
                upstream.sendall(frame)
                upstream.shutdown(socket.SHUT_WR)
                # The responder answers (it has not seen this InitHello), then sees the connection close.
                _recv_until_closed(upstream, time.monotonic() + 10)
            initiator.communicate(timeout=30)
        finally:
            if initiator.poll() is None:
                initiator.kill()
                initiator.wait()
    assert initiator.returncode != 0 and not (work / "recorded.key").exists()
    assert frame[:4] == b"HX\x02\x01", "the recorded frame is not a v2 InitHello"
    return frame


def test_listener_outlives_strangers_and_replays(ids: Path, tmp_path: Path) -> None:
    # A one-shot 'exchange --listen' must not be ended by whoever connects first: garbage from a
    # stranger, an InitHello cut off mid-handshake, and a replay of that InitHello are each ignored,
    # and the real peer then completes the exchange.
    listener = subprocess.Popen([*HKX, "exchange", "--listen", "127.0.0.1:0", "--accept-timeout", "60",
                                 "--psk-file", str(ids / "psk"), *RESP_NAMES, "--json",
                                 "--out", str(tmp_path / "kr")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert listener.stderr is not None
        m = _read_line_matching(listener.stderr, re.compile(r"listening on 127\.0\.0\.1:(\d+)"),
                                time.monotonic() + 30)
        assert m, "the listener did not say where it listens"
        port = int(m.group(1))

        with socket.create_connection(("127.0.0.1", port), timeout=10) as stranger:
            stranger.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with contextlib.suppress(OSError):  # the listener may already have closed on the bad magic
                stranger.shutdown(socket.SHUT_WR)
            assert _recv_until_closed(stranger, time.monotonic() + 10) == b"", "a stranger got an answer"
        assert listener.poll() is None, "garbage from a stranger ended the listener"

        frame = _record_init_hello(port, ids / "psk", tmp_path)
        assert listener.poll() is None, "an initiator that vanished mid-handshake ended the listener"

        with socket.create_connection(("127.0.0.1", port), timeout=10) as replayer:
            replayer.sendall(frame)
            with contextlib.suppress(OSError):
                replayer.shutdown(socket.SHUT_WR)
            # Dropped before any public-key work: no RespHello, and no alert either.
            assert _recv_until_closed(replayer, time.monotonic() + 10) == b"", "a replayed InitHello got an answer"
        assert listener.poll() is None, "a replayed InitHello ended the listener"

        initiator = hkx("exchange", "--connect", f"127.0.0.1:{port}", "--psk-file", ids / "psk", *INIT_NAMES,
                        "--json", "--out", tmp_path / "ki")
        out, err = listener.communicate(timeout=60)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    assert listener.returncode == 0, err.decode()
    assert (tmp_path / "ki").read_bytes() == (tmp_path / "kr").read_bytes()
    ji, jr = json.loads(initiator.stdout), json.loads(out.decode().strip().splitlines()[-1])
    assert ji["transcript_hash"] == jr["transcript_hash"] and jr["peer"] == "psk:alice"
    assert "ignored an unauthenticated connection" in err.decode() and "error" not in err.decode()
