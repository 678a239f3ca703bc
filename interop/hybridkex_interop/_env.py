"""What the run saw: versions of Python, hybridkex, plugins, backends, tools and pinned peers."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess

from ._peers import LIBOQS_JS, THIRD_PARTY_ETSI014

__all__ = ["environment"]


def _tool(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unusable ({exc})"
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0][:120] if text else f"exit {done.returncode}"


def _dist(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, str]:
    """Facts for the report's environment table (no secrets, no paths)."""
    from hybridkex.backends import available_backends, get_backend

    env = {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}, {os.cpu_count()} CPUs",
        "hybridkex": _dist("hybridkex"),
        "cryptography": _dist("cryptography"),
    }
    plugins = sorted(ep.name for ep in importlib.metadata.entry_points(group="hybridkex.plugins"))
    env["plugins"] = ", ".join(plugins) or "none"
    env["hybridkex-tls"] = _dist("hybridkex-tls")
    env["hybridkex-wireguard"] = _dist("hybridkex-wireguard")
    for name, reason in available_backends().items():
        env[f"backend {name}"] = f"available: {get_backend(name).describe()}" if reason is None else "not installed"
    env["node"] = _tool(["node", "--version"])
    env["npm"] = _tool(["npm", "--version"])
    env["openssl"] = _tool(["openssl", "version"])
    env["wireguard-go"] = _tool(["wireguard-go", "--version"])
    env["wg"] = _tool(["wg", "--version"])
    env["root, /dev/net/tun"] = f"{'yes' if os.geteuid() == 0 else 'no'}, " \
                                f"{'yes' if os.path.exists('/dev/net/tun') else 'no'}"
    env["npm peer"] = f"{LIBOQS_JS.name}@{LIBOQS_JS.version} (installed by the suite)"
    env["PyPI peer"] = f"{THIRD_PARTY_ETSI014.name}=={THIRD_PARTY_ETSI014.version} (installed by the suite)"
    env["CI"] = "yes" if os.environ.get("CI", "").lower() == "true" else "no"
    return env
