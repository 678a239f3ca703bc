"""hybridkex-wireguard: keep WireGuard pre-shared keys fresh from hybrid QKD + PQC exchanges.

WireGuard mixes an optional 32-byte pre-shared key into every handshake.  This package
feeds it a key that is fresh, hybrid (QKD key + ML-KEM + X25519 through CatKDF) and
confirmed by both ends, per peer and per epoch, so existing tunnels become quantum-safe
without touching WireGuard.  ``hybridkex wg`` is its command line.
"""

from ._config import DaemonConfig, PeerConfig, load_config, parse_config
from ._daemon import Daemon
from ._keys import PeerRef, default_initiator, parse_wg_key, wg_key_text
from ._rotation import (
    EpochKey,
    FailurePolicy,
    Install,
    PeerRotation,
    PeerStatus,
    Role,
    RotationPolicy,
    RotationRefused,
    Stale,
    StartExchange,
    State,
)
from ._session import PeerRuntime, Reporter, build_runtime, run_initiator, serve_connection
from ._sinks import CommandSink, FileSink, Sink, SinkError, WgSink

__version__ = "0.1.0"

__all__ = [
    "DaemonConfig", "PeerConfig", "load_config", "parse_config", "Daemon",
    "PeerRef", "default_initiator", "parse_wg_key", "wg_key_text",
    "EpochKey", "FailurePolicy", "Install", "PeerRotation", "PeerStatus", "Role", "RotationPolicy",
    "RotationRefused", "Stale", "StartExchange", "State",
    "PeerRuntime", "Reporter", "build_runtime", "run_initiator", "serve_connection",
    "Sink", "SinkError", "WgSink", "FileSink", "CommandSink",
]
