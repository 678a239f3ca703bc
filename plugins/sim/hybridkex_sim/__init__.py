"""hybridkex-sim: simulators for testing and demonstrating hybridkex without QKD hardware.

- a BB84 QKD link with an eavesdropper knob (``BB84Link``, ``run_block``), shared by two
  sites through a link file (``init_link_file``) and registered as the ``sim`` QKD source;
- a pair of ETSI GS QKD 014 key-management servers over HTTPS with mutual TLS, with fault
  injection (``KMEPair``), and a throw-away test PKI for them (``create_test_pki``);
- two state machines wired back to back in memory (``Pair``), the one pair
  driver of the tests and benchmarks;
- the commands ``hybridkex demo``, ``hybridkex qkd-link`` and ``hybridkex kme``.

Nothing here is meant for production: the test PKI writes unencrypted keys, and the link is
a simulation.  numpy is imported on first use of the link.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hybridkex.io import lazy_exports

if TYPE_CHECKING:
    from ._bb84 import BB84Link, BlockResult, LinkParameters, run_block
    from ._demo import run_demo
    from ._kme import KMEConfig, KMEPair
    from ._pair import Delivery, Outcome, Pair, QKDPair, Tamper
    from ._pki import TestPKI, create_test_pki, load_test_pki
    from ._simlink import SimulatedLinkSource, init_link_file, load_link_file, update_link_file

__all__ = [
    "BB84Link", "LinkParameters", "BlockResult", "run_block",
    "SimulatedLinkSource", "init_link_file", "load_link_file", "update_link_file",
    "KMEPair", "KMEConfig", "TestPKI", "create_test_pki", "load_test_pki", "run_demo",
    "Pair", "QKDPair", "Outcome", "Delivery", "Tamper",
]

_LAZY = {
    "BB84Link": "._bb84", "LinkParameters": "._bb84", "BlockResult": "._bb84", "run_block": "._bb84",
    "SimulatedLinkSource": "._simlink", "init_link_file": "._simlink", "load_link_file": "._simlink",
    "update_link_file": "._simlink", "KMEPair": "._kme", "KMEConfig": "._kme", "TestPKI": "._pki",
    "create_test_pki": "._pki", "load_test_pki": "._pki", "run_demo": "._demo",
    "Pair": "._pair", "QKDPair": "._pair", "Outcome": "._pair", "Delivery": "._pair", "Tamper": "._pair",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
