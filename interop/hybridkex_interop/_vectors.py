"""Published vectors: the ETSI TS 103 744 CatKDF known-answer tests, as one row of the report.

The vectors are the project's data file (``tests/data/etsi-ts103744-catkdf.json``, which names
its provenance); the cell runs them through ``hybridkex.catkdf``, one column per KDF/hash
variant.  Installed without a source checkout, the file is not there and the row is skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

from ._cell import CellContext
from ._model import Cell, Section

__all__ = ["SECTIONS", "cells", "SCENARIOS", "vectors_file"]

SECTION = "vectors"
VARIANTS = (("HKDF", "SHA256"), ("HKDF", "SHA384"), ("HMAC", "SHA256"), ("HMAC", "SHA384"))
FILE = "tests/data/etsi-ts103744-catkdf.json"

SECTIONS = [Section(
    SECTION, "Published vectors",
    f"ETSI TS 103 744 V1.2.1 CatKDF known answers ({FILE}) through hybridkex.catkdf; columns: KDF and hash.",
    tuple(f"{kdf}-{h}" for kdf, h in VARIANTS))]


def cells() -> list[Cell]:
    return [Cell(id=f"vectors/catkdf/{kdf.lower()}-{h.lower()}", section=SECTION,
                 row="ETSI TS 103 744 CatKDF", column=f"{kdf}-{h}", scenario="vectors",
                 params={"kdf": kdf, "hash": h}, timeout=30.0, quick=True) for kdf, h in VARIANTS]


def vectors_file() -> Path | None:
    """The vectors file of the source checkout hybridkex runs from, if there is one."""
    import hybridkex

    path = Path(hybridkex.__file__).resolve().parent.parent / FILE
    return path if path.is_file() else None


def _run(ctx: CellContext) -> None:
    from hybridkex import catkdf

    path = vectors_file()
    if path is None:
        ctx.skip(f"{FILE} not found: hybridkex is not installed from a source checkout")
    data = json.loads(path.read_text(encoding="utf-8"))
    ctx.check(data.get("source"), f"{FILE} does not name its source")
    kdf, h = ctx.params["kdf"], ctx.params["hash"]
    vectors = [v for v in data["vectors"] if v["kdf"] == kdf and v["hash"] == h]
    ctx.check(vectors, f"{FILE} has no {kdf}-{h} vectors")
    for v in vectors:
        expected = bytes.fromhex(v["key_material"])
        out = catkdf(hash=h.lower(), kdf=kdf.lower(), psk=bytes.fromhex(v["psk"]), k1=bytes.fromhex(v["k1"]),
                     k2=bytes.fromhex(v["k2"]), ma=bytes.fromhex(v["MA"]), mb=bytes.fromhex(v["MB"]),
                     context=v["info"].encode(), label=bytes.fromhex(v["label"]), length=len(expected))
        ctx.check(out == expected, f"vector cid {v['cid']} ({v['ecdh']}, {v['kem']}) gives other key material")
    ctx.note(f"{len(vectors)} of {len(vectors)} vectors match ({', '.join(sorted({v['kem'] for v in vectors}))})")


SCENARIOS = {"vectors": _run}
