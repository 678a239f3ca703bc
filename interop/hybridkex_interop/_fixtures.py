"""Per-run fixtures shared by cells: ML-DSA identities, PSK files, a QKD link, a test PKI.

They are made once per run (by whichever cell needs them first, under a file lock) in the
run's fixtures directory, with the project's own commands and public API, so a fixture is
exactly what a user would create.  Stateful files (the simulated link, ratchet state) are
copied into the cell's work directory, so cells running in parallel never share state.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from ._cell import CellContext
from ._procs import expect_success, hkx, run

__all__ = ["identity", "psk_file", "link_file", "kme_pki", "SAE_A", "SAE_B", "SAE_OTHER", "KME_HOSTS"]

#: SAE IDs in the test PKI: A is served by KME A, B by KME B; OTHER has a certificate but no KME.
SAE_A, SAE_B, SAE_OTHER = "alice", "bob", "mallory"
#: Names the KME server certificates are valid for: loopback, and the hub's underlay address in
#: the WireGuard namespaces (where KME B serves the spoke's SAE).
KME_HOSTS = ("127.0.0.1", "localhost", "10.201.1.1")


@contextlib.contextmanager
def _locked(ctx: CellContext) -> Iterator[None]:
    ctx.fixtures.mkdir(parents=True, exist_ok=True)
    with open(ctx.fixtures / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def identity(ctx: CellContext, alg: str, who: str) -> Path:
    """Directory holding ``id.key`` and ``id.pub`` of an ML-DSA identity (``who``: a name)."""
    from hybridkex import generate_identity, write_identity

    directory = ctx.fixtures / f"id-{alg}-{who}"
    with _locked(ctx):
        if not (directory / "id.pub").is_file():
            write_identity(generate_identity(alg), directory)
    return directory


def psk_file(ctx: CellContext, name: str = "psk") -> Path:
    """A PSK file (32 random bytes, base64, mode 0600), as ``hybridkex psk init`` writes it."""
    from hybridkex.io import atomic_write

    path = ctx.fixtures / f"{name}.txt"
    with _locked(ctx):
        if not path.is_file():
            atomic_write(path, base64.b64encode(os.urandom(32)) + b"\n", mode=0o600)
    return path


def link_file(ctx: CellContext, name: str = "link.json") -> Path:
    """A fresh simulated QKD link file in the cell's work directory (copied from a per-run template)."""
    template = ctx.fixtures / "link.json"
    with _locked(ctx):
        if not template.is_file():
            expect_success(ctx, run(ctx, "qkd-link init", hkx("qkd-link", "init", template), timeout=30))
    target = ctx.work / name
    shutil.copy2(template, target)
    return target


def kme_pki(ctx: CellContext) -> Path:
    """A test PKI (``hybridkex kme pki``) with client certificates for SAEs alice, bob and mallory, and
    KME certificates valid for :data:`KME_HOSTS`."""
    directory = ctx.fixtures / "pki"
    with _locked(ctx):
        if not (directory / f"{SAE_OTHER}.crt").is_file():
            hosts = [a for h in KME_HOSTS for a in ("--host", h)]
            expect_success(ctx, run(ctx, "kme pki", hkx("kme", "pki", directory, "--sae", SAE_A, "--sae", SAE_B,
                                                        "--sae", SAE_OTHER, *hosts), timeout=30))
    return directory
