"""Prometheus metrics of the daemon (config ``metrics = "HOST:PORT"``, served at ``/metrics``).

A custom collector reads the daemon's state at scrape time, so nothing is counted twice
and a scrape always shows what ``hybridkex wg status`` would.  Labels are public values
only (interface, peer public key, peer name); never a key or a fingerprint of one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from hybridkex import TransportError
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server

from ._session import COUNTERS, LIMITER

if TYPE_CHECKING:
    from ._daemon import Daemon

__all__ = ["DaemonCollector", "serve_metrics"]

_LABELS = ["interface", "peer", "name"]


class DaemonCollector:
    """Per-peer gauges and counters, computed from the daemon's state when scraped."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def collect(self) -> Iterator[Metric]:
        daemon = self._daemon
        now = time.time()
        document = daemon.status_document()
        g: dict[str, GaugeMetricFamily] = {
            "epoch": GaugeMetricFamily("hybridkex_wg_epoch", "Epoch of the installed shared key (0: none)",
                                       labels=_LABELS),
            "key_age": GaugeMetricFamily("hybridkex_wg_key_age_seconds",
                                         "Seconds since the handshake that made the installed key", labels=_LABELS),
            "wg_age": GaugeMetricFamily("hybridkex_wg_wireguard_handshake_age_seconds",
                                        "Seconds since WireGuard's latest handshake with the peer", labels=_LABELS),
            "wg_current": GaugeMetricFamily("hybridkex_wg_wireguard_handshake_uses_current_key",
                                            "1 when WireGuard's latest handshake came after the current key's "
                                            "install (so it used it)", labels=_LABELS),
            "stale": GaugeMetricFamily("hybridkex_wg_stale", "1 when the key passed its deadline", labels=_LABELS),
            "confirmed": GaugeMetricFamily("hybridkex_wg_confirmed", "1 when both ends confirmed the key",
                                           labels=_LABELS),
            "qkd": GaugeMetricFamily("hybridkex_wg_qkd_used", "1 when QKD contributed to the installed key",
                                     labels=_LABELS),
            "failures": GaugeMetricFamily("hybridkex_wg_consecutive_failures",
                                          "Failed exchanges since the last success", labels=_LABELS),
            "error_at": GaugeMetricFamily("hybridkex_wg_last_error_timestamp_seconds",
                                          "Unix time of the last error (0: none)", labels=_LABELS),
            "interval": GaugeMetricFamily("hybridkex_wg_interval_seconds", "Agreed rotation interval",
                                          labels=_LABELS),
            "deadline": GaugeMetricFamily("hybridkex_wg_deadline_seconds", "Agreed deadline", labels=_LABELS),
        }
        rotations = CounterMetricFamily("hybridkex_wg_rotations", "Keys installed from successful exchanges",
                                        labels=_LABELS)
        for p in document["peers"]:
            labels = [p["interface"], p["peer"], p["name"] or "-"]

            def age(value: Any) -> float:
                return max(0.0, now - value) if isinstance(value, (int, float)) and value else float("nan")

            g["epoch"].add_metric(labels, p["epoch"])
            g["key_age"].add_metric(labels, age(p.get("established")))
            g["wg_age"].add_metric(labels, age(p.get("wg_handshake")))
            current = p.get("wg_uses_current_key")
            g["wg_current"].add_metric(labels, float("nan") if current is None else float(current))
            g["stale"].add_metric(labels, float(bool(p["stale"])))
            g["confirmed"].add_metric(labels, float(bool(p["confirmed"])))
            g["qkd"].add_metric(labels, float(p.get("qkd") == "used"))
            g["failures"].add_metric(labels, p["failures"])
            g["error_at"].add_metric(labels, p.get("last_error_at") or 0.0)
            g["interval"].add_metric(labels, p["interval"])
            g["deadline"].add_metric(labels, p["deadline"])
            rotations.add_metric(labels, p["rotations"])
        yield from g.values()
        yield rotations
        rejected = CounterMetricFamily("hybridkex_wg_rejected_connections",
                                       "Incoming rotation connections refused or failed before authentication",
                                       labels=["reason"])
        for (name, label), value in sorted(COUNTERS.snapshot().items()):
            if name == "rejected":
                rejected.add_metric([label], value)
        yield rejected
        suppressed = CounterMetricFamily("hybridkex_wg_log_lines_suppressed", "Log lines the rate limiter dropped")
        suppressed.add_metric([], LIMITER.suppressed_total)
        yield suppressed
        up = GaugeMetricFamily("hybridkex_wg_daemon_start_timestamp_seconds", "Unix time the daemon started")
        up.add_metric([], daemon.started_wall)
        yield up


def serve_metrics(daemon: Daemon, address: tuple[str, int]) -> Any:
    """Serve ``/metrics`` on ``address`` in a thread; returns the server (``shutdown()`` stops it)."""
    registry = CollectorRegistry()
    registry.register(DaemonCollector(daemon))
    try:
        server, thread = start_http_server(address[1], addr=address[0], registry=registry)
    except OSError as exc:
        raise TransportError(f"cannot serve metrics on {address[0]}:{address[1]}: {exc.strerror or exc}") from None
    host, port = server.server_address[:2]
    daemon.metrics_address = (str(host), int(port))
    assert isinstance(thread, threading.Thread)
    return server
