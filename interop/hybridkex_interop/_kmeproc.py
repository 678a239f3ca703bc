"""KMEs for cells: ``hybridkex kme serve`` as a process, or the simulator in-process with faults.

The ETSI GS QKD 014 simulator and client live in the core's private modules
(``hybridkex.qkd._kme``, ``hybridkex.qkd._etsi014``); this module is the one place the
suite imports them from.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._cell import CellContext
from ._fixtures import SAE_A, SAE_B, kme_pki
from ._procs import Spawned, hkx, spawn

__all__ = ["ServedKMEs", "serve_kmes", "kme_pair", "etsi014_client", "exchange_qkd_args"]

_READY_RE = re.compile(r"(kme-[ab]) listening on (\S+) sae=(\S+)")


@dataclass(frozen=True)
class ServedKMEs:
    """Two KMEs (A for alice, B for bob) and the PKI files a client needs."""

    url_a: str
    url_b: str
    pki: Path
    process: Spawned | None = None

    def url_for(self, sae: str) -> str:
        return self.url_a if sae == SAE_A else self.url_b

    def client_args(self, sae: str, peer: str) -> list[str]:
        """``hybridkex`` flags that point an SAE at its KME (mutual TLS with the test PKI)."""
        return ["--kme-url", self.url_for(sae), "--kme-ca", str(self.pki / "ca.crt"),
                "--sae-cert", str(self.pki / f"{sae}.crt"), "--sae-key", str(self.pki / f"{sae}.key"),
                "--sae-id", sae, "--peer-sae-id", peer]


def serve_kmes(ctx: CellContext, *extra: str, prefix: Sequence[str] = ()) -> ServedKMEs:
    """Start ``hybridkex kme serve`` (two KMEs on free loopback ports) for the rest of the cell.

    ``extra``: more ``kme serve`` flags (e.g. ``--listen-b``); ``prefix``: a command to run it
    under (``ip netns exec NS``)."""
    pki = kme_pki(ctx)
    proc = spawn(ctx, "kme serve", [*prefix, *hkx("kme", "serve", "--pki", pki, "--sae-a", SAE_A, "--sae-b", SAE_B,
                                                  *extra)])
    # KME B's line comes second: once it is there, both are.
    if proc.wait_for(re.compile(r"kme-b listening on "), ctx.remaining(20), stream="out") is None:
        done = proc.stop()
        ctx.fail(f"'hybridkex kme serve' did not print its ready lines: {done.describe()}")
    urls = {m.group(1): m.group(2) for m in map(_READY_RE.search, list(proc.out)) if m}
    return ServedKMEs(urls["kme-a"], urls["kme-b"], pki, proc)


def kme_pair(ctx: CellContext, **options: Any) -> Any:
    """An in-process :class:`hybridkex.qkd._kme.KMEPair` (with fault-injection hooks), serving
    until the cell ends.  ``options`` go to the constructor (``config``, ``key_rate``, ...)."""
    from hybridkex_sim import KMEPair

    pair = KMEPair(kme_pki(ctx), sae_a=SAE_A, sae_b=SAE_B, create_pki=False, **options)
    pair.serve()
    ctx.cleanup.callback(pair.close)
    return pair


def etsi014_client(kmes: ServedKMEs, sae: str, peer: str, **options: Any) -> Any:
    """The project's ETSI GS QKD 014 client for ``sae`` at its KME."""
    from hybridkex.qkd import Etsi014Client

    return Etsi014Client(kmes.url_for(sae), ca=kmes.pki / "ca.crt", sae_cert=kmes.pki / f"{sae}.crt",
                         sae_key=kmes.pki / f"{sae}.key", sae_id=sae, peer_sae_id=peer, **options)


def exchange_qkd_args(kmes: ServedKMEs, role: str) -> list[str]:
    """``hybridkex exchange --qkd etsi014`` flags: the initiator is alice (master SAE) at KME A,
    the responder bob (slave SAE) at KME B."""
    sae, peer = (SAE_A, SAE_B) if role == "initiator" else (SAE_B, SAE_A)
    return ["--qkd", "etsi014", *kmes.client_args(sae, peer)]
