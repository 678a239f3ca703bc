"""The integration column of hybridkex <-> hybridkex: the TLS wrapper and the WireGuard rotator.

Both run the same hybrid exchange as ``hybridkex exchange`` (same flags), then use its key:
``hybridkex tls serve|connect`` as the TLS 1.3 external PSK (data is echoed through the TLS
connection), ``hybridkex wg rotate --once`` as the pre-shared key of a wireguard-go peer in a
network namespace (traffic then has to cross the tunnel, which only works with equal PSKs).
"""

from __future__ import annotations

import importlib.metadata
import json
import re

from ._cell import CellContext
from ._fixtures import SAE_A, SAE_B
from ._hkx import auth_args, check_ratchet, qkd_sides, require_backends
from ._kmeproc import serve_kmes
from ._netns import WgNet, require_wireguard, underlay_ip
from ._procs import LISTENING_RE, Finished, expect_success, hkx, spawn

__all__ = ["require_plugin", "tls_pair", "wg_pair", "json_lines"]

_WG_LISTENING_RE = re.compile(r"listening on (\S+):(\d+)")


def require_plugin(ctx: CellContext, name: str, install: str) -> None:
    """Skip (fail in CI) unless the plugin is installed and ``hybridkex NAME`` exists."""
    names = {ep.name for ep in importlib.metadata.entry_points(group="hybridkex.plugins")}
    ctx.require(name in names, f"the '{name}' plugin is not installed ({install})")
    from hybridkex.cli import cli  # loads every plugin, as the command line does

    ctx.require(name in cli.commands, f"the '{name}' plugin is installed but did not register 'hybridkex {name}'")


def json_lines(done: Finished) -> list[dict[str, object]]:
    """The JSON objects a process printed on stdout, one per line."""
    out: list[dict[str, object]] = []
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
    return out


def tls_pair(ctx: CellContext) -> None:
    """``hybridkex tls serve --echo`` and ``hybridkex tls connect``: hybrid exchange, then TLS 1.3."""
    p = ctx.params
    require_backends(ctx, p["init_backend"], p["resp_backend"])
    require_plugin(ctx, "tls", "pip install -e plugins/tls")
    qi, qr = qkd_sides(ctx, p["qkd"])
    rounds = 2 if p["auth"] == "psk-ratchet" else 1
    hashes = []
    message = "hello through hybrid TLS"
    for n in range(rounds):
        server = spawn(ctx, f"tls serve{n}", hkx(
            "tls", "serve", "--listen", "127.0.0.1:0", "--count", "1", "--echo", "--json", "--kem", p["kem"],
            "--backend", p["resp_backend"], *auth_args(ctx, p["auth"], "responder"), *qr))
        m = server.wait_for(LISTENING_RE, ctx.remaining(20))
        if m is None:
            ctx.fail(f"'hybridkex tls serve' did not start listening: {server.stop().describe()}")
        client = spawn(ctx, f"tls connect{n}", hkx(
            "tls", "connect", f"127.0.0.1:{m.group(2)}", "--json", "--kem", p["kem"], "--backend", p["init_backend"],
            *auth_args(ctx, p["auth"], "initiator"), *qi), stdin=True)
        client.send(message + "\n")
        client.close_stdin()
        rc = client.finish(ctx, 45)
        if rc.returncode != 0:  # the server would wait for a connection that never came
            server.stop()
        expect_success(ctx, rc)
        rs = server.finish(ctx, 20)
        expect_success(ctx, rs)
        ctx.check(message in rc.stdout, "the client did not get its data echoed through TLS")
        ci, si = json_lines(rc), json_lines(rs)
        ctx.check(ci and si, "a side printed no JSON line about the connection")
        c, s = ci[0], si[0]
        for side, info in (("client", c), ("server", s)):
            ctx.check(info.get("ok") is True and info.get("mode") == "hybrid", f"{side}: {info}")
            ctx.check(info.get("tls_version") == "TLSv1.3", f"{side}: TLS version {info.get('tls_version')}")
            ctx.check(info.get("external_psk") is True, f"{side}: the external PSK was not used")
        for name in ("hybrid_suite", "transcript_hash", "qkd", "qkd_key_ids", "cipher", "group"):
            ctx.check(c.get(name) == s.get(name), f"client and server disagree on {name}: {c.get(name)!r} vs "
                                                  f"{s.get(name)!r}")
        ctx.check(p["kem"] in str(c.get("hybrid_suite")), f"hybrid suite {c.get('hybrid_suite')} lacks {p['kem']}")
        want_qkd = "off" if p["qkd"] == "off" else "used"
        ctx.check(c.get("qkd") == want_qkd, f"QKD {c.get('qkd')!r}, expected {want_qkd!r}")
        hashes.append(c.get("transcript_hash"))
    ctx.note(f"{c.get('tls_version')} {c.get('cipher')} over {c.get('group')} keyed by {c.get('hybrid_suite')}, "
             f"QKD {c.get('qkd')}; data echoed")
    if rounds == 2:
        check_ratchet(ctx, p["qkd"], rounds)
        ctx.check(hashes[0] != hashes[1], "two exchanges had the same transcript")
        ctx.note("authentication ratchet advanced on both sides")


def wg_pair(ctx: CellContext) -> None:
    """``hybridkex wg rotate --once`` on both ends of a wireguard-go tunnel in network namespaces."""
    p = ctx.params
    require_backends(ctx, p["init_backend"], p["resp_backend"])
    require_wireguard(ctx)
    require_plugin(ctx, "wg", "pip install -e plugins/wireguard")
    net = WgNet(ctx).up()
    a, b = net.hosts
    if p["qkd"] == "etsi014":
        # KME A on the hub's loopback, KME B on the hub's underlay address, which the spoke reaches.
        kmes = serve_kmes(ctx, "--listen-a", "127.0.0.1:0", "--listen-b", f"{underlay_ip(1, 1)}:0",
                          prefix=a.exec())
        qi = ["--qkd", "etsi014", *kmes.client_args(SAE_A, SAE_B)]
        qr = ["--qkd", "etsi014", *kmes.client_args(SAE_B, SAE_A)]
    else:
        qi, qr = qkd_sides(ctx, p["qkd"])
    rounds = 2 if p["auth"] == "psk-ratchet" else 1
    psks = []
    listen = f"{underlay_ip(1, 2)}:7443"
    for n in range(rounds):
        resp = spawn(ctx, f"wg rotate b{n}", b.exec(*hkx(
            "wg", "rotate", "--interface", b.iface, "--wg-peer", a.public_key, "--listen", listen, "--once",
            "--accept-timeout", "60", "--kem", p["kem"], "--backend", p["resp_backend"],
            *auth_args(ctx, p["auth"], "responder"), *qr)))
        if resp.wait_for(_WG_LISTENING_RE, ctx.remaining(20)) is None:
            ctx.fail(f"the responding rotator did not start listening: {resp.stop().describe()}")
        init = spawn(ctx, f"wg rotate a{n}", a.exec(*hkx(
            "wg", "rotate", "--interface", a.iface, "--wg-peer", b.public_key, "--connect", listen, "--once",
            "--kem", p["kem"], "--backend", p["init_backend"], *auth_args(ctx, p["auth"], "initiator"), *qi)))
        ri = init.finish(ctx, 60)
        rr = resp.finish(ctx, 20)
        expect_success(ctx, ri)
        expect_success(ctx, rr)
        pa, pb = net.psk(a, b), net.psk(b, a)
        ctx.check(pa not in ("", "(none)"), "the initiator's wg0 holds no pre-shared key for the peer")
        ctx.check(pa == pb, "the two WireGuard interfaces hold different pre-shared keys")
        psks.append(pa)
    ctx.check(net.tunnel_works(a, b), "no traffic crossed the WireGuard tunnel with the rotated PSK")
    ctx.note("both wg0 interfaces hold the same rotated PSK and traffic crosses the tunnel")
    if rounds == 2:
        check_ratchet(ctx, p["qkd"], rounds)
        ctx.check(psks[0] != psks[1], "the second rotation installed the same PSK")
        ctx.note("a second rotation installed a new PSK; the authentication ratchet advanced")


SCENARIOS = {"hkx-tls": tls_pair, "hkx-wg": wg_pair}
