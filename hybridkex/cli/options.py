"""Shared click options for everything that runs an exchange (core and plugins).

Usage in a plugin::

    from hybridkex.cli.options import exchange_options, settings_from_options

    @click.command()
    @exchange_options
    def rotate(**kwargs):
        settings = settings_from_options(kwargs)
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from .._config import ExchangeSettings, qkd_kinds
from .._errors import (
    AuthenticationError,
    ConfigError,
    HandshakeTimeout,
    HybridKexError,
    NegotiationError,
    PeerAlertError,
    QKDError,
    TransportError,
)
from ..backends import KEM_NAMES, backend_names
from ..protocol._suites import QKD_POLICIES
from ..protocol._wire import AlertCode
from ..qkd._journal import DEFAULT_RETENTION_DAYS

__all__ = ["exchange_options", "settings_from_options", "fail", "exit_code_for", "handle_errors",
           "EXIT_CODES", "EXCHANGE_KEYS"]

F = TypeVar("F", bound=Callable[..., Any])

_path = click.Path(path_type=Path, dir_okay=False)
_OPTIONS = [
    click.option("--identity", type=_path, help="Our ML-DSA identity key (DIR/id.key from 'hybridkex keygen')."),
    click.option("--peer", "peers", type=_path, multiple=True,
                 help="A pinned peer public key (id.pub); repeat to allow several peers."),
    click.option("--psk-file", type=_path, help="Authenticate with this pre-shared key instead of ML-DSA."),
    click.option("--psk-ratchet", type=_path,
                 help="State file of the QKD-fed authentication ratchet: each exchange replaces the PSK for the "
                      "next one (bootstraps from --psk-file)."),
    click.option("--name", help="This side's name (PSK mode): both names are bound into the exchange."),
    click.option("--peer-name", help="The expected peer's name (PSK mode); must differ from --name."),
    click.option("--kem", type=click.Choice(KEM_NAMES), default="ml-kem-768", show_default=True,
                 help="Post-quantum KEM."),
    click.option("--backend", type=click.Choice(["auto", *backend_names()]), default="auto",
                 show_default=True, help="Crypto backend for ML-KEM and ML-DSA."),
    click.option("--qkd", type=click.Choice(qkd_kinds()), default="off", show_default=True,
                 help="QKD key source: an ETSI GS QKD 014 KME (etsi014), or any installed source (sim: a "
                      "simulated link, from hybridkex-sim)."),
    click.option("--qkd-link", type=_path, help="Simulated QKD link file (for --qkd sim)."),
    click.option("--qkd-policy", type=click.Choice(QKD_POLICIES), default=None,
                 help="What to do without a QKD key [default: required with a QKD source, else off]."),
    click.option("--kme-url", help="KME base URL, e.g. https://kme-a.example:8443 (for --qkd etsi014)."),
    click.option("--kme-ca", type=_path, help="CA certificate that signed the KME's server certificate."),
    click.option("--sae-cert", type=_path, help="This SAE's client certificate for mutual TLS to the KME."),
    click.option("--sae-key", type=_path, help="This SAE's client key for mutual TLS to the KME."),
    click.option("--sae-id", help="This SAE's ID at the KME."),
    click.option("--peer-sae-id", help="The peer's SAE ID (slave SAE for the initiator, master for the responder)."),
    click.option("--peer-sae-map", "peer_sae_map", metavar="FINGERPRINT=SAE_ID", multiple=True,
                 help="Responder with several pinned peers: the SAE ID of each (repeat)."),
    click.option("--qkd-journal", type=_path,
                 help="File of the QKD key_IDs this side used [default: $HYBRIDKEX_STATE_DIR/qkd-key-ids]."),
    click.option("--qkd-journal-days", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_RETENTION_DAYS,
                 show_default=True, metavar="DAYS",
                 help="How long a used key_ID stays in the journal; a KME that hands it out again later is no "
                      "longer caught by it."),
    click.option("--kme-insecure-http", is_flag=True,
                 help="Allow plain http:// to the KME. For simulators only: keys would cross the network in clear."),
    click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds for the whole handshake."),
]
EXCHANGE_KEYS = ("identity", "peers", "psk_file", "psk_ratchet", "name", "peer_name", "kem", "backend", "qkd",
                 "qkd_link", "qkd_policy", "kme_url", "kme_ca", "sae_cert", "sae_key", "sae_id", "peer_sae_id",
                 "peer_sae_map", "kme_insecure_http", "qkd_journal", "qkd_journal_days", "timeout")


def exchange_options(f: F) -> F:
    """Add the identity/PSK, QKD, policy and backend options of ``hybridkex exchange``."""
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def settings_from_options(kwargs: dict[str, Any]) -> ExchangeSettings:
    """Pop the exchange options out of a click kwargs dict and build the settings."""
    values = {k: kwargs.pop(k) for k in EXCHANGE_KEYS if k in kwargs}
    values["peers"] = tuple(values.get("peers", ()))
    values["peer_sae_map"] = tuple(_sae_pair(item) for item in values.get("peer_sae_map", ()))
    return ExchangeSettings(**values)


def _sae_pair(text: str) -> tuple[str, str]:
    fingerprint, sep, sae = text.rpartition("=")
    if not sep or not fingerprint or not sae:
        raise ConfigError(f"--peer-sae-map {text!r} is not FINGERPRINT=SAE_ID (e.g. SHA256:abc...=SAE-B)")
    return fingerprint, sae


#: The exit codes of every ``hybridkex`` command, plugins' included (the README's table).
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "anything else (a check that failed, e.g. 'wg status' with a stale peer; an unexpected error)",
    2: "configuration or usage: a bad flag, file or setting; fix it and run again",
    3: "authentication: the peer is not who this side expects, or it refused this side",
    4: "QKD: no QKD key under policy required, a replayed key_ID, a KME error",
    5: "network or timeout: the peer or the KME is unreachable, closed or too slow",
    130: "interrupted (Ctrl-C)",
}
EXIT_OTHER, EXIT_USAGE, EXIT_AUTH, EXIT_QKD, EXIT_NETWORK, EXIT_INTERRUPTED = 1, 2, 3, 4, 5, 130

#: A peer's alert names the class of its failure: the same exit code as if it had failed here.  A
#: responder no longer exits by itself for an initiator it does not know, so the initiator's code says it.
_ALERT_EXIT: dict[int, int] = {AlertCode.AUTH_FAILED: EXIT_AUTH, AlertCode.UNKNOWN_PEER: EXIT_AUTH,
               AlertCode.NO_COMMON_SUITE: EXIT_AUTH, AlertCode.CONTEXT_MISMATCH: EXIT_AUTH,
               AlertCode.QKD_POLICY: EXIT_QKD, AlertCode.QKD_UNAVAILABLE: EXIT_QKD, AlertCode.QKD_REPLAY: EXIT_QKD,
               AlertCode.TIMEOUT: EXIT_NETWORK}


def exit_code_for(exc: BaseException) -> int:
    """The :data:`EXIT_CODES` entry for an error.  A peer's alert counts by its code (an "unknown
    peer" alert is 3)."""
    if isinstance(exc, PeerAlertError):
        return _ALERT_EXIT.get(exc.code, EXIT_OTHER)  # IntEnum keys match the plain int code
    if isinstance(exc, ConfigError):
        return EXIT_USAGE
    if isinstance(exc, (AuthenticationError, NegotiationError)):
        return EXIT_AUTH
    if isinstance(exc, QKDError):
        return EXIT_QKD
    if isinstance(exc, (TransportError, HandshakeTimeout)):
        return EXIT_NETWORK
    return EXIT_OTHER


def fail(exc: BaseException, *, as_json: bool = False) -> NoReturn:
    """Print one error line (and a JSON line with ``--json``) and exit with the matching code."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if as_json:
        click.echo(json.dumps({"ok": False, "error": type(exc).__name__, "message": message}))
    click.echo(f"hybridkex: error: {message}", err=True)
    sys.exit(exit_code_for(exc))


def handle_errors(f: F) -> F:
    """Turn hybridkex errors into one line on stderr and an exit code; no tracebacks for users."""
    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json", False))
        try:
            return f(*args, **kwargs)
        except HybridKexError as exc:
            fail(exc, as_json=as_json)
        except KeyboardInterrupt:
            click.echo("hybridkex: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
    return wrapper  # type: ignore[return-value]
