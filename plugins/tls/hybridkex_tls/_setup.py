"""What both drivers (blocking socket, asyncio streams) do to set up a connection, without I/O.

The first bytes on a hybridkex-tls connection say which setup follows (the server looks
before it commits to one, so every kind of client gets an answer it understands):

- ``HXTLS`` preamble (:func:`preamble`): a client starting a full connection: the server
  name it wants (SNI, may be empty), then the hybrid exchange, then TLS keyed by it.  The
  name is also bound into the hybrid exchange's context, so a changed preamble fails it.
- ``0x16`` (a TLS handshake record): a client resuming a TLS session with no hybrid
  exchange -- or a plain TLS client, which gets a TLS alert.
- An HTTP request line: a plain HTTP client, which gets an HTTP 400 naming the protocol.
- Anything else (including a bare hybridkex exchange): refused with a message.

A client whose hybrid exchange fails looks at the first bytes it got back, to say when
the server speaks plain TLS or HTTP instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hybridkex import HybridKexError, TransportError
from hybridkex.protocol import HandshakeConfig

from ._errors import TLSWrongService
from ._importer import EXCHANGE_CONTEXT, ExternalPSK
from ._resumption import ChainFacts, ServerSessionTable

if TYPE_CHECKING:
    from ._engine import TLSEngine

__all__ = [
    "PREAMBLE_MAGIC", "PREAMBLE_HEADER", "Kind", "preamble", "parse_preamble_header", "classify", "HTTP_400",
    "wrong_service", "SILENT_CLOSE", "bound_config", "server_name_key", "resume_hook", "full_hook", "cache_key",
    "full_chain",
]

PREAMBLE_MAGIC = b"HXTLS"
PREAMBLE_VERSION = 1
#: Magic, version, length of the server name.
PREAMBLE_HEADER = len(PREAMBLE_MAGIC) + 2
#: Longest server name the preamble carries (the exchange context holds at most 255 bytes).
MAX_SERVER_NAME = 255 - len(EXCHANGE_CONTEXT) - 1

_HTTP_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ",
                 b"TRACE ", b"PRI ")
_BODY = (b"This port speaks hybridkex-tls: TLS 1.3 keyed by a hybrid QKD + ML-KEM + X25519 exchange, "
         b"not plain HTTP or plain TLS. Connect with a hybridkex-tls client (hybridkex tls connect, or the "
         b"hybridkex_tls Python package).\n")
HTTP_400 = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(_BODY)).encode("ascii") + b"\r\n\r\n" + _BODY)

Kind = str  # "full", "tls", "http", "unknown", or "more" (look at more bytes)


def server_name_key(name: str | None) -> str:
    """A server name as compared and cached: lower case, no trailing dot; empty for none."""
    return (name or "").rstrip(".").lower()


def cache_key(server_hostname: str | None, peername: Callable[[], Any]) -> str:
    """The client's session-cache key for a server: its SNI name, else the ``host:port`` it connected to."""
    if server_hostname:
        return server_name_key(server_hostname)
    peer = peername()
    return f"{peer[0]}:{peer[1]}"


def full_chain(summary: dict[str, object], done: float, server_name: str | None) -> ChainFacts:
    """The facts of a chain's full connection, whose hybrid exchange finished at ``done`` (monotonic)."""
    return ChainFacts(summary, done, 0, server_name_key(server_name) or None)


def preamble(server_name: str | None) -> bytes:
    """The client's first bytes on a full connection."""
    name = server_name_key(server_name).encode("idna") if server_name else b""
    if len(name) > MAX_SERVER_NAME:
        raise ValueError(f"server_hostname is longer than {MAX_SERVER_NAME} bytes")
    return PREAMBLE_MAGIC + bytes([PREAMBLE_VERSION, len(name)]) + name


def parse_preamble_header(header: bytes) -> int:
    """The server name's length from the preamble header; raises TLSWrongService on a bad version."""
    if header[:len(PREAMBLE_MAGIC)] != PREAMBLE_MAGIC or header[len(PREAMBLE_MAGIC)] != PREAMBLE_VERSION:
        raise TLSWrongService(f"the client sent hybridkex-tls preamble version {header[len(PREAMBLE_MAGIC)]}; this "
                              f"server speaks version {PREAMBLE_VERSION}: upgrade the older side")
    return header[-1]


def classify(first: bytes) -> Kind:
    """What the first bytes a client sent say it is (``"more"``: wait for more bytes)."""
    if not first:
        return "more"
    if first[0] == 0x16:
        return "tls"
    if PREAMBLE_MAGIC.startswith(first[:len(PREAMBLE_MAGIC)]):
        return "more" if len(first) < len(PREAMBLE_MAGIC) else "full"
    for method in _HTTP_METHODS:
        if first.startswith(method):
            return "http"
        if method.startswith(first):
            return "more"
    return "unknown"


def unknown_client_error(first: bytes) -> TLSWrongService:
    if first.startswith(b"HX"):
        return TLSWrongService("the client started a bare hybridkex exchange on a hybridkex-tls port; connect with "
                               "'hybridkex tls connect' or the hybridkex_tls package")
    return TLSWrongService("the client speaks neither hybridkex-tls, TLS nor HTTP; refusing the connection")


def wrong_service(first: bytes, exc: HybridKexError, reset: bool = False) -> HybridKexError | None:
    """Client: the error to raise instead of ``exc`` when the server's first bytes are not hybridkex.

    ``reset``: the connection was reset before the server sent a byte.  A plain TLS server does
    that when no ClientHello comes, but so does a network fault, so it stays a network error
    (exit 5) whose message names both causes.
    """
    if reset and not first:
        return TransportError("the connection was reset before the server answered the hybrid exchange: a network "
                              "fault, or a server that is not hybridkex-tls (a plain TLS server resets on these "
                              "bytes); check the port and the path to the server")
    if len(first) >= 2 and first[0] in (0x15, 0x16) and first[1] == 0x03:
        return TLSWrongService("the server answered with plain TLS, not hybridkex-tls: it is an ordinary TLS server "
                               "(use an ordinary TLS client there, or point this client at a hybridkex-tls port)")
    if first.startswith((b"HTTP/", b"<!", b"<html", b"<HTML")):  # an HTTP/0.9-style page, too
        return TLSWrongService("the server answered in plain HTTP, not hybridkex-tls: it is an HTTP server (use "
                               "an HTTP client there, or point this client at a hybridkex-tls port)")
    return None


SILENT_CLOSE = ("the server closed the connection without answering the hybrid exchange, which a hybridkex "
                "responder does when the first message is not for it: check that the server's key is in peers (or "
                "in host_peers for this server_hostname), or the PSK and the name and peer_name, and that both "
                "clocks agree within two minutes; the server's log says which check failed")


def bound_config(config: HandshakeConfig, server_name: str | None) -> HandshakeConfig:
    """``config`` with the server name bound into the hybrid exchange's context, and TLS Finished as
    the exchange's key confirmation: the client sends its ClientHello in the flight of InitFinish
    (docs/protocol.md §6.4), except where a responder fallback is possible."""
    name = server_name_key(server_name).encode("idna") if server_name else b""
    return dataclasses.replace(config, context=EXCHANGE_CONTEXT + b"\x00" + name, channel_confirmation=True)


def resume_hook(table: ServerSessionTable | None, found: list[ChainFacts]) -> Callable[[bool, bytes, str | None],
                                                                                       bool]:
    """Server, on a connection that starts with TLS: accept only a session of a known, usable chain whose SNI
    matches; the facts of this connection in that chain (one resumption further) go to ``found``."""
    def on_hello(resumed: bool, key_id: bytes, server_name: str | None) -> bool:
        if not resumed or table is None:
            return False
        facts = table.take(key_id)
        if facts is None or server_name_key(facts.server_name) != server_name_key(server_name):
            return False
        found.append(facts.next())
        return True
    return on_hello


def record_tickets(table: ServerSessionTable | None,
                   chain: Callable[[], ChainFacts]) -> Callable[[TLSEngine], None] | None:
    """Server: the engine's ``on_done`` that records the session its tickets resume, as ``chain()``'s.

    It runs before the tickets go out: a client may hand a ticket to its next connection the moment it
    arrives, and that connection's ClientHello may reach another thread of this server before the first
    connection's thread runs again; recorded only afterwards, its session would be refused as unknown."""
    if table is None:
        return None

    def on_done(engine: TLSEngine) -> None:
        table.put(engine.session_key_id(), chain())
    return on_done


def full_hook(psk: ExternalPSK, server_name: str | None) -> Callable[[bool, bytes, str | None], bool]:
    """Server, after the hybrid exchange: TLS must use its PSK (not a ticket) and the preamble's server name."""
    expected = hashlib.sha256(psk.key).digest()

    def on_hello(resumed: bool, key_id: bytes, tls_name: str | None) -> bool:
        if server_name_key(tls_name) != server_name_key(server_name):
            return False
        return resumed and hmac.compare_digest(key_id, expected)
    return on_hello
