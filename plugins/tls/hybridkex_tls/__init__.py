"""hybridkex-tls: TLS 1.3 keyed by the hybrid QKD + ML-KEM + X25519 exchange.

The hybrid exchange runs first on the TCP connection; its output is imported as a TLS 1.3
external PSK (RFC 9258) and TLS runs in psk_dhe_ke mode over X25519MLKEM768, so the
traffic keys depend on the QKD key, ML-KEM and X25519 at once::

    from hybridkex_tls import HybridTLSContext

    ctx = HybridTLSContext.client(identity="id.key", peers=["server.pub"], qkd="sim", qkd_link="link.json")
    with socket.create_connection((host, port)) as raw, ctx.wrap_socket(raw) as tls:
        tls.sendall(b"hello")
        data = tls.recv(4096)
"""

from ._context import DEFAULT_PSK_IDENTITY, HybridTLSContext, load_external_psk
from ._errors import TLSConnectionClosed, TLSError, TLSHandshakeError, TLSPSKError, TLSUnavailable
from ._importer import ExternalPSK, imported_identity, imported_psk
from ._server import HybridTLSServer
from ._streams import TLSStreamReader, TLSStreamWriter, open_connection, start_server, wrap_streams
from ._tlssocket import HybridTLSSocket

__version__ = "0.1.0"

__all__ = [
    "HybridTLSContext", "HybridTLSSocket", "HybridTLSServer",
    "open_connection", "start_server", "wrap_streams", "TLSStreamReader", "TLSStreamWriter",
    "ExternalPSK", "imported_identity", "imported_psk", "load_external_psk", "DEFAULT_PSK_IDENTITY",
    "TLSError", "TLSHandshakeError", "TLSPSKError", "TLSConnectionClosed", "TLSUnavailable",
]
