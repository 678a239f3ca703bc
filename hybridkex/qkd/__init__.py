"""QKD key sources: the simulated BB84 link, the ETSI GS QKD 014 client, and the KME simulator."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._source import QKD_KEY_BYTES, QKDKey, QKDKeySource

if TYPE_CHECKING:
    from ._bb84 import BB84Link, BlockResult, LinkParameters, run_block
    from ._etsi014 import Etsi014Client, KeyContainer, KMEStatus
    from ._kme import KMEPair
    from ._pki import create_test_pki
    from ._simlink import SimulatedLinkSource, init_link_file, load_link_file

__all__ = [
    "QKDKey", "QKDKeySource", "QKD_KEY_BYTES",
    "BB84Link", "LinkParameters", "BlockResult", "run_block",
    "SimulatedLinkSource", "init_link_file", "load_link_file",
    "Etsi014Client", "KMEStatus", "KeyContainer", "KMEPair", "create_test_pki",
]

# The simulated link needs numpy; import it on first use so that importing hybridkex.qkd
# (and starting the CLI) stays fast.
_LAZY = {
    "BB84Link": "._bb84", "LinkParameters": "._bb84", "BlockResult": "._bb84", "run_block": "._bb84",
    "SimulatedLinkSource": "._simlink", "init_link_file": "._simlink", "load_link_file": "._simlink",
    "Etsi014Client": "._etsi014", "KMEStatus": "._etsi014", "KeyContainer": "._etsi014", "KMEPair": "._kme",
    "create_test_pki": "._pki",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
