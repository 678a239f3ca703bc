"""hybridkex-tls: TLS 1.3 keyed by the hybrid QKD + ML-KEM + X25519 exchange.

The hybrid exchange runs first on the TCP connection; its output is imported as a TLS 1.3
external PSK (RFC 9258) and TLS runs in psk_dhe_ke mode over X25519MLKEM768, so the
traffic keys depend on the QKD key, ML-KEM and X25519 at once::

    from hybridkex_tls import HybridTLSContext

    ctx = HybridTLSContext.client(identity="id.key", peers=["server.pub"], qkd="sim", qkd_link="link.json")
    with socket.create_connection((host, port)) as raw, ctx.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(b"hello")
        data = tls.recv(4096)

Later connections to the same server resume the TLS session (no new hybrid exchange, no
QKD key) within the context's ``session_lifetime`` and ``max_resumptions``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hybridkex.io import lazy_exports

if TYPE_CHECKING:
    from ._context import DEFAULT_PSK_IDENTITY, HybridTLSContext, load_external_psk
    from ._errors import (
        TLSConnectionClosed,
        TLSError,
        TLSHandshakeError,
        TLSPSKError,
        TLSResumptionRefused,
        TLSSetupError,
        TLSSetupTimeout,
        TLSUnavailable,
        TLSWrongService,
    )
    from ._importer import ExternalPSK, imported_identity, imported_psk
    from ._server import HybridTLSServer
    from ._streams import TLSStreamReader, TLSStreamWriter, open_connection, start_server, wrap_streams
    from ._tlssocket import HybridTLSSocket

__version__ = "0.1.0"

__all__ = [
    "HybridTLSContext", "HybridTLSSocket", "HybridTLSServer",
    "open_connection", "start_server", "wrap_streams", "TLSStreamReader", "TLSStreamWriter",
    "ExternalPSK", "imported_identity", "imported_psk", "load_external_psk", "DEFAULT_PSK_IDENTITY",
    "TLSError", "TLSSetupError", "TLSSetupTimeout", "TLSHandshakeError", "TLSPSKError", "TLSConnectionClosed",
    "TLSResumptionRefused", "TLSWrongService", "TLSUnavailable",
]

# Imported on first use, so that loading the CLI plugin (hybridkex_tls.cli) does not import
# pyOpenSSL and asyncio for every 'hybridkex' command.
_LAZY = {
    "HybridTLSContext": "._context", "load_external_psk": "._context", "DEFAULT_PSK_IDENTITY": "._context",
    "HybridTLSSocket": "._tlssocket", "HybridTLSServer": "._server",
    "open_connection": "._streams", "start_server": "._streams", "wrap_streams": "._streams",
    "TLSStreamReader": "._streams", "TLSStreamWriter": "._streams",
    "ExternalPSK": "._importer", "imported_identity": "._importer", "imported_psk": "._importer",
    "TLSError": "._errors", "TLSHandshakeError": "._errors", "TLSPSKError": "._errors",
    "TLSConnectionClosed": "._errors", "TLSUnavailable": "._errors", "TLSSetupError": "._errors",
    "TLSSetupTimeout": "._errors", "TLSResumptionRefused": "._errors", "TLSWrongService": "._errors",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
