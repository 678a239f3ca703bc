"""Glue for HTTP over hybridkex-tls: ``http.client``, ``urllib3``, ``requests`` clients and an ``http.server``.

Each needs a line or three (the plugin README shows them)::

    conn = HTTPSConnection("server.example", 8443, context=client_ctx)          # http.client
    pool = HybridPoolManager(client_ctx); pool.request("GET", url)              # urllib3
    session = requests.Session(); session.mount("https://", HybridAdapter(client_ctx))   # requests
    HybridHTTPServer(("0.0.0.0", 8443), MyHandler, server_ctx).serve_forever()  # http.server

``https://`` URLs go over hybridkex-tls; the URL's host is the TLS server name (SNI, the
expected peers of ``host_peers``, and the session cache's key).  A connection whose cached
session the server refuses (it restarted, or the chain hit a bound) is retried once with a
full hybrid exchange.  Every setup error is an :class:`OSError`, so urllib3's retries and
``requests.RequestException`` see connection failures as they would with ``ssl``.
``urllib3`` and ``requests`` are imported only when their glue is used.
"""

from __future__ import annotations

import http.client
import http.server
import logging
import socket
import sys
from typing import TYPE_CHECKING, Any

from ._context import HybridTLSContext
from ._errors import TLSResumptionRefused
from ._tlssocket import HybridTLSSocket

if TYPE_CHECKING:
    import socketserver

__all__ = ["HTTPSConnection", "HybridHTTPServer", "HybridPoolManager", "HybridAdapter", "wrap_connected"]

log = logging.getLogger("hybridkex_tls")


def wrap_connected(context: HybridTLSContext, connect: Any, host: str) -> HybridTLSSocket:
    """``connect()`` a TCP socket and wrap it for ``host``; once more with a full exchange if resumption is refused."""
    try:
        return context.wrap_socket(connect(), server_hostname=host)
    except TLSResumptionRefused:
        return context.wrap_socket(connect(), server_hostname=host)


class HTTPSConnection(http.client.HTTPConnection):
    """:class:`http.client.HTTPSConnection` over hybridkex-tls: ``HTTPSConnection(host, port, context=ctx)``."""

    default_port = 443

    def __init__(self, host: str, port: int | None = None, *, context: HybridTLSContext, **kwargs: Any) -> None:
        if context.role != "client":
            raise ValueError("HTTPSConnection needs a client context (HybridTLSContext.client(...))")
        super().__init__(host, port, **kwargs)
        self.hybrid_context = context

    def connect(self) -> None:
        def tcp() -> socket.socket:
            super(HTTPSConnection, self).connect()
            assert self.sock is not None
            return self.sock

        self.sock = wrap_connected(self.hybrid_context, tcp, self.host)


class HybridHTTPServer(http.server.ThreadingHTTPServer):
    """An :class:`http.server.ThreadingHTTPServer` whose connections run hybridkex-tls.

    The setup runs in each connection's thread, bounded by the context's timeouts; a failed
    one is logged in one line and the server goes on.
    """

    daemon_threads = True

    def __init__(self, server_address: tuple[str, int], handler_class: type[socketserver.BaseRequestHandler],
                 context: HybridTLSContext, bind_and_activate: bool = True) -> None:
        if context.role != "server":
            raise ValueError("HybridHTTPServer needs a server context (HybridTLSContext.server(...))")
        self.hybrid_context = context
        super().__init__(server_address, handler_class, bind_and_activate)

    def finish_request(self, request: Any, client_address: Any) -> None:
        tls = self.hybrid_context.wrap_socket(request)
        try:
            self.RequestHandlerClass(tls, client_address, self)  # type: ignore[arg-type]
        finally:
            tls.close()  # close_notify, before socketserver shuts the TCP socket down

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        log.warning("connection from %s: %s", client_address[0] if client_address else "?", exc)


def _urllib3_classes() -> tuple[type, type]:
    import urllib3
    from urllib3.connection import HTTPConnection

    class HybridHTTPSConnection(HTTPConnection):
        default_port = 443  # type: ignore[misc]

        def __init__(self, *args: Any, hybrid_context: HybridTLSContext, **kwargs: Any) -> None:
            for name in _TLS_KWARGS:
                kwargs.pop(name, None)
            super().__init__(*args, **kwargs)
            self.hybrid_context = hybrid_context
            self.is_verified = True  # the hybrid exchange authenticated the server (pinned keys or PSK)

        def connect(self) -> None:
            def tcp() -> socket.socket:
                HTTPConnection.connect(self)
                return self.sock

            self.sock = wrap_connected(self.hybrid_context, tcp, self.host)

    class HybridHTTPSConnectionPool(urllib3.HTTPConnectionPool):
        scheme = "https"
        ConnectionCls = HybridHTTPSConnection

    return HybridHTTPSConnection, HybridHTTPSConnectionPool


#: Keyword arguments urllib3 and requests give HTTPS pools and connections for ``ssl``; hybridkex-tls needs none.
_TLS_KWARGS = ("key_file", "cert_file", "cert_reqs", "key_password", "ca_certs", "ca_cert_dir", "ca_cert_data",
               "ssl_version", "ssl_minimum_version", "ssl_maximum_version", "assert_hostname", "assert_fingerprint",
               "ssl_context", "server_hostname")


def HybridPoolManager(context: HybridTLSContext, **kwargs: Any) -> Any:  # noqa: N802 - a class factory
    """A :class:`urllib3.PoolManager` whose ``https://`` pools run hybridkex-tls (``http://`` stays plain)."""
    import urllib3

    if context.role != "client":
        raise ValueError("HybridPoolManager needs a client context (HybridTLSContext.client(...))")
    _, pool_class = _urllib3_classes()

    class _Manager(urllib3.PoolManager):
        def _new_pool(self, scheme: str, host: str, port: int, request_context: dict[str, Any] | None = None) \
                -> Any:
            if scheme != "https":
                return super()._new_pool(scheme, host, port, request_context)
            kw = dict(request_context if request_context is not None else self.connection_pool_kw)
            for name in ("scheme", "host", "port", *_TLS_KWARGS):
                kw.pop(name, None)
            return pool_class(host, port, hybrid_context=context, **kw)

    return _Manager(**kwargs)


def HybridAdapter(context: HybridTLSContext, **kwargs: Any) -> Any:  # noqa: N802 - a class factory
    """A :class:`requests.adapters.HTTPAdapter` for ``session.mount("https://", HybridAdapter(ctx))``."""
    from requests.adapters import HTTPAdapter

    class _Adapter(HTTPAdapter):
        def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
            self.poolmanager = HybridPoolManager(context, num_pools=connections, maxsize=maxsize, block=block,
                                                 **pool_kwargs)

    return _Adapter(**kwargs)
