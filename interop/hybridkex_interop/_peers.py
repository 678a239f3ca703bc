"""Third-party peers the suite installs from package registries into its cache.

* ``@oqs/liboqs-js`` from npm (liboqs compiled to WebAssembly), run with the machine's node;
* ``etsi-qkd-014-client`` from PyPI (an independent ETSI GS QKD 014 client), installed with
  ``pip install --target`` into the cache and run in its own interpreter process.

Versions are pinned here, so a report says exactly what was tested.  Installs happen once
per cache, under a file lock (cells running in parallel wait for each other).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ._cell import CellContext

__all__ = ["Package", "LIBOQS_JS", "THIRD_PARTY_ETSI014", "liboqs_js", "etsi014_client_path", "require_node"]


@dataclass(frozen=True)
class Package:
    """A pinned package from a registry."""

    name: str
    version: str


#: liboqs built to WebAssembly, on npm.
LIBOQS_JS = Package("@oqs/liboqs-js", "0.15.1")
#: An ETSI GS QKD 014 client on PyPI, written independently of hybridkex.
THIRD_PARTY_ETSI014 = Package("etsi-qkd-014-client", "0.9.0")

_INSTALL_TIMEOUT = 300.0


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _install(ctx: CellContext, what: str, argv: list[str]) -> None:
    print(f"$ {' '.join(argv)}", flush=True)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=min(_INSTALL_TIMEOUT, ctx.remaining()))
    except subprocess.TimeoutExpired:
        ctx.require(False, f"installing {what} timed out (is the registry reachable?)")
        return
    print(done.stdout[-2000:], done.stderr[-2000:], sep="\n", flush=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if "ERR" in line or "ERROR" in line] or \
            done.stderr.strip().splitlines() or ["no output"]
        ctx.require(False, f"could not install {what}: {lines[0][:200]}")


def require_node(ctx: CellContext) -> str:
    """The path of node (Debian packages nodejs and npm); skip, or fail in CI, without it."""
    node = shutil.which("node")
    ctx.require(node is not None and shutil.which("npm") is not None,
                "node and npm are not installed (Debian packages nodejs and npm)")
    assert node is not None
    return node


def liboqs_js(ctx: CellContext) -> Path:
    """Directory of the installed ``@oqs/liboqs-js`` package (``npm install --prefix CACHE/npm``)."""
    require_node(ctx)
    prefix = ctx.cache / "npm"
    package = prefix / "node_modules" / "@oqs" / "liboqs-js"
    spec = f"{LIBOQS_JS.name}@{LIBOQS_JS.version}"

    def installed() -> bool:
        try:
            return bool(json.loads((package / "package.json").read_text())["version"] == LIBOQS_JS.version)
        except (OSError, ValueError, KeyError):
            return False

    with _locked(ctx.cache / "npm.lock"):
        if not installed():
            _install(ctx, spec, ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
                                 "--loglevel=error", spec])
            ctx.check(installed(), f"npm installed {spec} but {package}/package.json does not show it")
    return package


def etsi014_client_path(ctx: CellContext) -> Path:
    """A directory to put on ``PYTHONPATH`` that holds ``etsi_qkd_014_client`` and its dependencies."""
    spec = f"{THIRD_PARTY_ETSI014.name}=={THIRD_PARTY_ETSI014.version}"
    target = ctx.cache / "pip" / f"{THIRD_PARTY_ETSI014.name}-{THIRD_PARTY_ETSI014.version}"
    marker = target / ".hybridkex-interop-installed"
    with _locked(ctx.cache / "pip.lock"):
        if not marker.is_file():
            shutil.rmtree(target, ignore_errors=True)
            _install(ctx, spec, [sys.executable, "-m", "pip", "install", "--quiet", "--no-input",
                                 "--disable-pip-version-check", "--target", str(target), spec])
            marker.write_text(spec + "\n")
    return target
