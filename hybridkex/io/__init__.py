"""Adapters around the sans-I/O protocol, public to plugins and applications that drive it themselves.

- sockets: :func:`connect`, :func:`listen`, :func:`recv_exact`, :func:`send_all`, :func:`read_frame`;
- the event pump (:func:`pump`) and its two drivers, :func:`run_handshake` (blocking) and
  :func:`run_handshake_async` (asyncio);
- files: :func:`atomic_write`, :func:`read_secret_file`, :func:`write_key_file`, :func:`locked`;
- :func:`parse_address` for every ``HOST:PORT``, :class:`Backoff` for every retry loop, and
  :func:`lazy_exports` for a plugin package whose names should load on first use.
"""

from ._address import parse_address
from ._backoff import Backoff
from ._files import (
    KEY_FORMATS,
    atomic_write,
    check_not_world_readable,
    encode_key,
    locked,
    read_secret_file,
    write_key_file,
)
from ._guard import default_guard, peer_source, source_of
from ._lazy import lazy_exports
from ._pump import AWAIT_CLOSE, AWAIT_CLOSE_SECONDS, READ, AskQKD, Send, Step, ask_qkd, pump
from ._transport import connect, listen, read_frame, recv_exact, run_handshake, run_handshake_async, send_all

__all__ = [
    "connect", "listen", "recv_exact", "send_all", "read_frame",
    "pump", "Step", "Send", "AskQKD", "READ", "AWAIT_CLOSE", "AWAIT_CLOSE_SECONDS", "ask_qkd",
    "run_handshake", "run_handshake_async",
    "atomic_write", "read_secret_file", "check_not_world_readable", "write_key_file", "encode_key", "KEY_FORMATS",
    "locked", "parse_address", "Backoff", "lazy_exports", "default_guard", "source_of", "peer_source",
]
