"""Stock OpenSSL (``openssl s_client`` / ``s_server``, TLS 1.3 external PSK) <-> the TLS plugin's
static-PSK mode (``hybridkex tls serve|connect --external-psk``), both directions.

Data goes both ways: ``hybridkex tls serve --echo`` echoes what ``s_client`` sends, and
``s_server -rev`` sends back each line ``hybridkex tls connect`` sends, reversed.  The
negative columns check the documented failures: a wrong PSK, and a peer that only allows a
SHA-384 cipher suite (the external PSK is bound to SHA-256 suites), end in one error line.
"""

from __future__ import annotations

import os
import re
import shutil

from ._cell import CellContext
from ._integrations import json_lines, require_plugin
from ._model import Cell, Section
from ._procs import ERROR_PREFIX, LISTENING_RE, expect_clean_failure, expect_success, has_traceback, hkx, spawn

__all__ = ["SECTIONS", "cells", "SCENARIOS"]

SECTION = "openssl"
IDENTITY = "Client_identity"  # openssl's default -psk_identity
SUITES = {"aes128": "TLS_AES_128_GCM_SHA256", "chacha20": "TLS_CHACHA20_POLY1305_SHA256",
          "aes256": "TLS_AES_256_GCM_SHA384"}
CASES = {  # column key -> (label, cipher suite openssl allows, whether the PSKs match, expect success)
    "aes128": ("TLS_AES_128_GCM_SHA256", "aes128", True, True),
    "chacha20": ("TLS_CHACHA20_POLY1305_SHA256", "chacha20", True, True),
    "sha384-only": ("only TLS_AES_256_GCM_SHA384: clear error", "aes256", True, False),
    "wrong-psk": ("wrong PSK: clear error", "aes128", False, False),
}
DIRECTIONS = {"s_client": "openssl s_client → hybridkex tls serve",
              "s_server": "hybridkex tls connect → openssl s_server"}
_ACCEPT_RE = re.compile(r"^ACCEPT (\S+):(\d+)")
_SERVE_ERROR_RE = re.compile(r"^hybridkex: \S+: error: ")

SECTIONS = [Section(
    SECTION, "OpenSSL (system openssl, TLS 1.3 external PSK) ↔ hybridkex TLS plugin, static-PSK mode",
    "Rows: who connects to whom.  Columns: the cipher suite openssl is restricted to, and the documented "
    "failures.  Passing cells exchanged application data both ways over TLS 1.3 with the external PSK; "
    "negative cells ended in one clear error line on the hybridkex side and no traceback.",
    tuple(label for label, *_ in CASES.values()))]


def cells() -> list[Cell]:
    return [Cell(id=f"openssl/{direction}/{case}", section=SECTION, row=row, column=CASES[case][0],
                 scenario="openssl", params={"direction": direction, "case": case}, timeout=60.0, quick=True)
            for direction, row in DIRECTIONS.items() for case in CASES]


def _psk(ctx: CellContext, name: str) -> bytes:
    key = os.urandom(32)
    path = ctx.work / name
    path.write_bytes(key)
    path.chmod(0o600)
    return key


def _client_side(ctx: CellContext, suite: str, ours: bytes, theirs: bytes, ok: bool) -> None:
    server = spawn(ctx, "tls serve", hkx("tls", "serve", "--listen", "127.0.0.1:0", "--external-psk",
                                         ctx.work / "ours.psk", "--count", "1", "--echo", "--json"))
    m = server.wait_for(LISTENING_RE, ctx.remaining(20))
    if m is None:
        ctx.fail(f"'hybridkex tls serve' did not start listening: {server.stop().describe()}")
    client = spawn(ctx, "openssl s_client", ["openssl", "s_client", "-connect", f"127.0.0.1:{m.group(2)}",
                                             "-tls1_3", "-psk", theirs.hex(), "-psk_identity", IDENTITY,
                                             "-ciphersuites", suite], stdin=True)
    message = "hello from openssl s_client"
    client.send(message + "\n")
    echoed = client.wait_for(re.compile(re.escape(message)), ctx.remaining(15) if ok else 3, stream="out")
    # s_client prints what it receives, not what it sends: the line on its stdout is the echo.
    client.close_stdin()
    rc = client.finish(ctx, 15)
    rs = server.finish(ctx, 15)
    if ok:
        expect_success(ctx, rs)
        ctx.check(echoed is not None, f"s_client did not get its line echoed: {rc.describe()}")
        info = json_lines(rs)
        ctx.check(info and info[0].get("ok") is True, f"the server reported no successful connection: {info}")
        first = info[0]
        ctx.check(first.get("tls_version") == "TLSv1.3" and first.get("external_psk") is True,
                  f"server saw {first}")
        ctx.check(first.get("cipher") == suite, f"negotiated {first.get('cipher')}, expected {suite}")
        ctx.check(rc.returncode == 0, f"openssl s_client exited {rc.returncode}")
        ctx.note(f"s_client ↔ hybridkex: TLSv1.3 {suite} with the external PSK; data echoed")
        return
    # A server keeps serving after a bad client: one per-connection error line, no traceback.
    ctx.check(not has_traceback(rs), "hybridkex tls serve printed a Python traceback")
    errors = [line for line in rs.stderr.splitlines() if _SERVE_ERROR_RE.match(line) or line.startswith(ERROR_PREFIX)]
    ctx.check(len(errors) == 1, f"hybridkex tls serve printed {len(errors)} error lines, not 1: {rs.stderr[-300:]!r}")
    ctx.check(echoed is None, "data crossed a connection that should have failed")
    ctx.check(rc.returncode != 0, "openssl s_client exited 0 on a failed handshake")
    ctx.note(f"refused with: {errors[0]}")


def _server_side(ctx: CellContext, suite: str, ours: bytes, theirs: bytes, ok: bool) -> None:
    server = spawn(ctx, "openssl s_server", ["openssl", "s_server", "-accept", "127.0.0.1:0", "-tls1_3", "-nocert",
                                             "-psk", theirs.hex(), "-psk_identity", IDENTITY, "-ciphersuites", suite,
                                             "-naccept", "1", "-rev"])
    m = server.wait_for(_ACCEPT_RE, ctx.remaining(20), stream="out")
    if m is None:
        ctx.fail(f"openssl s_server did not start: {server.stop().describe()}")
    message = "hello from hybridkex tls connect"
    client = spawn(ctx, "tls connect", hkx("tls", "connect", f"127.0.0.1:{m.group(2)}", "--external-psk",
                                           ctx.work / "ours.psk", "--json", "--timeout", "10"), stdin=True)
    client.send(message + "\n")
    client.close_stdin()
    rc = client.finish(ctx, 30)
    server.stop()
    if ok:
        expect_success(ctx, rc)
        ctx.check(message[::-1] in rc.stdout, "the reversed line from s_server -rev did not come back")
        info = json_lines(rc)
        ctx.check(info and info[0].get("tls_version") == "TLSv1.3" and info[0].get("external_psk") is True,
                  f"client saw {info}")
        ctx.check(info[0].get("cipher") == suite, f"negotiated {info[0].get('cipher')}, expected {suite}")
        ctx.note(f"hybridkex ↔ s_server: TLSv1.3 {suite} with the external PSK; data returned reversed")
        return
    error = expect_clean_failure(ctx, rc)
    ctx.check(message[::-1] not in rc.stdout, "data crossed a connection that should have failed")
    ctx.note(f"refused with: {error}")


def _run(ctx: CellContext) -> None:
    ctx.require(shutil.which("openssl") is not None, "openssl is not installed (Debian package openssl)")
    require_plugin(ctx, "tls", "pip install -e plugins/tls")
    p = ctx.params
    _, suite_key, same_psk, ok = CASES[p["case"]]
    ours = _psk(ctx, "ours.psk")
    theirs = ours if same_psk else os.urandom(32)
    suite = SUITES[suite_key]
    if p["direction"] == "s_client":
        _client_side(ctx, suite, ours, theirs, ok)
    else:
        _server_side(ctx, suite, ours, theirs, ok)


SCENARIOS = {"openssl": _run}
