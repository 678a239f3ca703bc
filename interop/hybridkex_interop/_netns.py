"""Two (or three) WireGuard hosts in network namespaces, joined by veth links, for one cell.

Each host is a namespace with ``lo`` up, a veth link to the hub host ``a`` (underlay
``10.201.N.x``) and a ``wireguard-go`` interface (overlay ``10.202.0.x``).  Interface names
are unique across namespaces because wireguard-go's control socket
(``/var/run/wireguard/NAME.sock``) lives on the shared file system.  The
hybridkex rotators talk over the underlay; WireGuard itself runs over the underlay too, and
traffic over the overlay only flows when both ends hold the same pre-shared key.  Everything
is created with the cell's PID in the names and removed when the cell ends (the runner
removes left-over namespaces of a killed cell from its ``netns.txt``).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ._cell import CellContext
from ._procs import Spawned, spawn

__all__ = ["WgHost", "WgNet", "require_wireguard", "underlay_ip", "overlay_ip"]

_ECHO_SERVER = (
    "import socket,sys\n"
    "s=socket.create_server((sys.argv[1],int(sys.argv[2])))\n"
    "print('ready',flush=True)\n"
    "s.settimeout(float(sys.argv[3]))\n"
    "c,_=s.accept()\n"
    "c.sendall(c.recv(100))\n"
    "c.close()\n"
)
_ECHO_CLIENT = (
    "import socket,sys\n"
    "c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=float(sys.argv[3]))\n"
    "c.sendall(b'through the tunnel')\n"
    "print(c.recv(100).decode())\n"
)


def underlay_ip(index: int, host: int) -> str:
    """Address of host ``host`` (1: the hub ``a``) on veth link ``index``."""
    return f"10.201.{index}.{host}"


def overlay_ip(host: int) -> str:
    """WireGuard address of host number ``host`` (a=1, b=2, c=3)."""
    return f"10.202.0.{host}"


def require_wireguard(ctx: CellContext) -> None:
    """Root, /dev/net/tun, ip, wireguard-go and wg -- skip (or fail in CI) without them."""
    ctx.require(os.geteuid() == 0, "WireGuard cells need root (network namespaces, TUN devices)")
    ctx.require(os.path.exists("/dev/net/tun"), "WireGuard cells need /dev/net/tun")
    for tool, package in (("ip", "iproute2"), ("wireguard-go", "wireguard-go"), ("wg", "wireguard-tools")):
        ctx.require(shutil.which(tool) is not None, f"'{tool}' is not installed (Debian package {package})")


def _x25519_pair() -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    key = X25519PrivateKey.generate()
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode(), base64.b64encode(pub).decode()


@dataclass
class WgHost:
    """One namespace with a WireGuard interface."""

    name: str
    """Letter: a, b, c."""
    number: int
    """1, 2, 3: the last octet of its overlay address."""
    netns: str
    iface: str
    """The WireGuard interface name (unique on the machine)."""
    private_key: str = field(repr=False)
    public_key: str
    daemon: Spawned | None = None

    @property
    def overlay(self) -> str:
        return overlay_ip(self.number)

    def exec(self, *argv: str) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]


class WgNet:
    """Hosts ``a`` (the hub) and one or more spokes, each spoke joined to ``a`` by its own veth link."""

    def __init__(self, ctx: CellContext, spokes: int = 1) -> None:
        self.ctx = ctx
        self.hosts: list[WgHost] = []
        tag = f"hkxi{os.getpid()}"
        for i, letter in enumerate("abc"[: spokes + 1]):
            private, public = _x25519_pair()
            self.hosts.append(WgHost(letter, i + 1, f"{tag}{letter}", f"wg{os.getpid()}{letter}", private, public))

    def _ip(self, *args: str) -> None:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
        print(f"$ ip {' '.join(args)} -> {done.returncode} {done.stderr.strip()}", flush=True)
        if done.returncode != 0:
            self.ctx.fail(f"'ip {' '.join(args)}' failed: {done.stderr.strip()}")

    def _wg(self, host: WgHost, *args: str) -> str:
        done = subprocess.run(host.exec("wg", *args), capture_output=True, text=True, timeout=20)
        if done.returncode != 0:
            self.ctx.fail(f"'wg {' '.join(args)}' in {host.netns} failed: {done.stderr.strip()}")
        return done.stdout

    def up(self) -> WgNet:
        """Create namespaces, links and WireGuard interfaces; torn down when the cell ends."""
        ctx = self.ctx
        for host in self.hosts:
            self._ip("netns", "add", host.netns)
            ctx.track_netns(host.netns)
            ctx.cleanup.callback(self._delete_netns, host.netns)
            self._ip("-n", host.netns, "link", "set", "lo", "up")
        hub = self.hosts[0]
        for index, spoke in enumerate(self.hosts[1:], start=1):
            # Created directly inside the namespaces: no interface name ever exists in the root namespace.
            self._ip("link", "add", f"veth{index}", "netns", hub.netns, "type", "veth", "peer", "name", "veth0",
                     "netns", spoke.netns)
            self._ip("-n", hub.netns, "addr", "add", f"{underlay_ip(index, 1)}/24", "dev", f"veth{index}")
            self._ip("-n", spoke.netns, "addr", "add", f"{underlay_ip(index, 2)}/24", "dev", "veth0")
            self._ip("-n", hub.netns, "link", "set", f"veth{index}", "up")
            self._ip("-n", spoke.netns, "link", "set", "veth0", "up")
        for host in self.hosts:
            host.daemon = spawn(ctx, f"wireguard-go {host.name}", host.exec("wireguard-go", "-f", host.iface),
                                env={**os.environ, "WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"})
        for host in self.hosts:
            self._wait_interface(host)
            key_file = ctx.work / f"wg-{host.name}.key"
            key_file.write_text(host.private_key + "\n")
            key_file.chmod(0o600)
            self._wg(host, "set", host.iface, "private-key", str(key_file), "listen-port", "51820")
            self._ip("-n", host.netns, "addr", "add", f"{host.overlay}/24", "dev", host.iface)
            self._ip("-n", host.netns, "link", "set", host.iface, "up")
        for index, spoke in enumerate(self.hosts[1:], start=1):
            self._wg(hub, "set", hub.iface, "peer", spoke.public_key, "allowed-ips", f"{spoke.overlay}/32",
                     "endpoint", f"{underlay_ip(index, 2)}:51820")
            self._wg(spoke, "set", spoke.iface, "peer", hub.public_key, "allowed-ips", f"{hub.overlay}/32",
                     "endpoint", f"{underlay_ip(index, 1)}:51820")
        return self

    def _wait_interface(self, host: WgHost) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done = subprocess.run(["ip", "-n", host.netns, "link", "show", host.iface], capture_output=True, timeout=10)
            if done.returncode == 0:
                return
            if host.daemon is not None and host.daemon.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.ctx.fail(f"wireguard-go did not create {host.iface} in {host.netns}")

    def _delete_netns(self, name: str) -> None:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=20)

    def psk(self, host: WgHost, peer: WgHost) -> str:
        """The pre-shared key ``host``'s interface holds for ``peer`` (``(none)`` when unset)."""
        for line in self._wg(host, "show", host.iface, "preshared-keys").splitlines():
            pub, _, psk = line.partition("\t")
            if pub == peer.public_key:
                return psk.strip()
        self.ctx.fail(f"{host.name}'s {host.iface} has no peer {peer.name}")

    def tunnel_works(self, client: WgHost, server: WgHost, timeout: float = 8.0) -> bool:
        """Send bytes over the overlay from ``client`` to ``server`` and back (needs equal PSKs)."""
        echo = spawn(self.ctx, f"echo server {server.name}",
                     server.exec(sys.executable, "-c", _ECHO_SERVER, server.overlay, "7000", str(timeout)))
        if echo.wait_for(re.compile("ready"), 10, stream="out") is None:
            self.ctx.fail("the echo server in the namespace did not start")
        done = subprocess.run(client.exec(sys.executable, "-c", _ECHO_CLIENT, server.overlay, "7000", str(timeout)),
                              capture_output=True, text=True, timeout=timeout + 10)
        print(f"tunnel {client.name}->{server.name}: {done.returncode} {done.stdout.strip()} {done.stderr.strip()}",
              flush=True)
        echo.stop()
        return done.returncode == 0 and "through the tunnel" in done.stdout

    def write(self, name: str, text: str) -> Path:
        path = self.ctx.work / name
        path.write_text(text)
        return path
