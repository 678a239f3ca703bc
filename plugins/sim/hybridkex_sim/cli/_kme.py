"""``hybridkex kme``: the ETSI GS QKD 014 KME simulator, its test PKI, and a small client.

The library is imported inside the commands, so ``hybridkex --help`` stays fast.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import signal
import sys
import threading
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

import click
from hybridkex import HybridKexError
from hybridkex.cli.options import handle_errors
from hybridkex.io import parse_address

__all__ = ["kme"]

_PROBABILITY = click.FloatRange(0.0, 1.0)
_dir = click.Path(file_okay=False, path_type=Path)
_file = click.Path(dir_okay=False, path_type=Path)



@click.group("kme")
def kme() -> None:
    """ETSI GS QKD 014 key management entities: a two-KME simulator, its test PKI, a client."""


@kme.command("pki")
@click.argument("directory", type=_dir)
@click.option("--sae", "saes", multiple=True, required=True, metavar="ID",
              help="An SAE to issue a client certificate for (CN=ID); repeat for each SAE.")
@click.option("--host", "hosts", multiple=True, metavar="NAME",
              help="A name the KME server certificates are valid for [default: 127.0.0.1 and localhost].")
@click.option("--force", is_flag=True, help="Create a new CA and reissue every certificate.")
@handle_errors
def pki(directory: Path, saes: tuple[str, ...], hosts: tuple[str, ...], force: bool) -> None:
    """Create a test PKI in DIRECTORY: CA, KME server certificates and one client certificate per SAE.

    An existing CA and existing certificates are reused unless --force, so running it again
    with a new --sae adds that SAE.  Keys are written 0600; this PKI is for tests and demos only.
    """
    from .._pki import DEFAULT_HOSTS, create_test_pki

    made, written = create_test_pki(directory, saes, hosts=hosts or DEFAULT_HOSTS, force=force)
    for path in written:
        click.echo(f"wrote {path}")
    click.echo(f"test PKI {made.directory}: CA {made.ca_cert.name}, SAEs {', '.join(made.sae_ids) or 'none'}")


@kme.command("serve")
@click.option("--pki", "pki_dir", type=_dir, required=True, help="Test PKI directory from 'hybridkex kme pki'.")
@click.option("--listen-a", default="127.0.0.1:0", show_default=True, metavar="HOST:PORT",
              help="Address of KME A (port 0: any free port; the ready line shows it).")
@click.option("--listen-b", default="127.0.0.1:0", show_default=True, metavar="HOST:PORT",
              help="Address of KME B.")
@click.option("--sae-a", required=True, metavar="ID", help="The SAE served by KME A.")
@click.option("--sae-b", required=True, metavar="ID", help="The SAE served by KME B.")
@click.option("--key-rate", type=click.FloatRange(min=1.0), default=64_000.0, show_default=True,
              metavar="BITS_PER_S", help="Secret-key rate of the simulated QKD link.")
@click.option("--link-error", type=click.FloatRange(0.0, 0.5), default=0.02, show_default=True, metavar="P",
              help="Bit-flip probability of the quantum channel.")
@click.option("--eve", type=_PROBABILITY, default=0.0, show_default=True, metavar="P",
              help="Fraction of photons an intercept-resend eavesdropper taps (raises the QBER).")
@click.option("--max-key-count", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Pool capacity in keys of the default size (256 bits).")
@click.option("--max-key-per-request", type=click.IntRange(min=1), default=128, show_default=True,
              help="Most keys in one request.")
@click.option("--max-connections", type=click.IntRange(min=1), default=256, show_default=True,
              help="Open connections per KME; beyond this the longest-idle one is closed.")
@click.option("--workers", type=click.IntRange(min=1), default=8, show_default=True,
              help="Threads per KME answering requests; more waiting than --queue-size get 503.")
@click.option("--queue-size", type=click.IntRange(min=0), default=64, show_default=True,
              help="Requests per KME that may wait for a busy worker.")
@click.option("--idle-timeout", type=click.FloatRange(min=0.01), default=30.0, show_default=True, metavar="SECONDS",
              help="How long a kept-alive connection may wait for its next request.")
@click.option("--seed", metavar="HEX", help="Link seed (>= 16 bytes of hex) for a reproducible key stream.")
@click.option("--empty", is_flag=True, help="Start with an empty pool instead of a full one.")
@click.option("--insecure-http", is_flag=True,
              help="Serve plain HTTP without authentication. Only for testing clients' insecure mode.")
@click.option("-v", "--verbose", count=True, help="Log requests (-v) and more (-vv) to stderr; never keys.")
@handle_errors
def serve(pki_dir: Path, listen_a: str, listen_b: str, sae_a: str, sae_b: str, key_rate: float,
          link_error: float, eve: float, max_key_count: int, max_key_per_request: int, max_connections: int,
          workers: int, queue_size: int, idle_timeout: float, seed: str | None,
          empty: bool, insecure_http: bool, verbose: int) -> None:
    """Run two KMEs joined by a simulated BB84 link until SIGTERM or SIGINT.

    Each KME requires mutual TLS and serves only its own SAE, identified by the client
    certificate's CN.  Keys the master SAE fetches at one KME (enc_keys) are delivered by
    key_ID at the other (dec_keys), once.  One line per KME is printed when it is ready.
    """
    from .._kme import KMEConfig, KMEPair

    if verbose:
        logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO,
                            format="%(asctime)s %(name)s %(message)s")
    try:
        seed_bytes = bytes.fromhex(seed) if seed is not None else None
    except ValueError:
        raise click.BadParameter("not hexadecimal", param_hint="--seed") from None
    if seed_bytes is not None and len(seed_bytes) < 16:
        raise click.BadParameter("give at least 16 bytes (32 hex digits)", param_hint="--seed")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Handlers first: a signal during start-up (the link fills the pool) stops cleanly too.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        host_a, port_a = parse_address(listen_a, "--listen-a", example="127.0.0.1:8443")
        host_b, port_b = parse_address(listen_b, "--listen-b", example="127.0.0.1:8444")
        config = KMEConfig(max_key_count=max_key_count, max_key_per_request=max_key_per_request,
                           max_connections=max_connections, workers=workers, queue_size=queue_size,
                           idle_timeout=idle_timeout)
        pair = KMEPair(pki_dir, sae_a=sae_a, sae_b=sae_b, host=host_a, port_a=port_a, host_b=host_b, port_b=port_b,
                       key_rate=key_rate, link_error=link_error, eve=eve, config=config, seed=seed_bytes,
                       prefill=not empty, tls=not insecure_http, create_pki=False)
    except HybridKexError:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        raise
    try:
        if not stop.is_set():
            pair.serve()
            if insecure_http:
                click.echo("hybridkex: warning: serving plain HTTP without authentication; keys cross the "
                           "network in clear", err=True)
            for line in pair.ready_lines():
                click.echo(line)
            sys.stdout.flush()
        while not stop.wait(0.5):
            pass
    finally:
        pair.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo("kme pair stopped", err=True)


def _client_options(f: Any) -> Any:
    options = [
        click.option("--kme-url", required=True, help="KME base URL, e.g. https://127.0.0.1:8443."),
        click.option("--kme-ca", type=_file, help="CA certificate that signed the KME's server certificate."),
        click.option("--sae-cert", type=_file, help="This SAE's client certificate."),
        click.option("--sae-key", type=_file, help="This SAE's client key."),
        click.option("--sae-id", required=True, help="This SAE's ID."),
        click.option("--peer-sae-id", required=True, help="The other SAE's ID (slave for enc-keys, master for "
                                                          "dec-keys)."),
        click.option("--kme-insecure-http", is_flag=True, help="Allow plain http:// (simulators only)."),
        click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
                     help="Seconds per request."),
        click.option("--retries", type=click.IntRange(min=0), default=3, show_default=True,
                     help="Retries after a 503, with exponential backoff."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _client(kw: dict[str, Any]) -> Any:
    from hybridkex.qkd import Etsi014Client

    return Etsi014Client(kw["kme_url"], ca=kw["kme_ca"], sae_cert=kw["sae_cert"], sae_key=kw["sae_key"],
                         sae_id=kw["sae_id"], peer_sae_id=kw["peer_sae_id"], timeout=kw["timeout"],
                         retries=kw["retries"], insecure_http=kw["kme_insecure_http"])


def _container_json(container: Any) -> str:
    # The ETSI GS QKD 014 §6.3 Key container, as the KME sent it.
    return json.dumps({"keys": [{"key_ID": str(k.key_id), "key": base64.b64encode(k.key).decode()}
                                for k in container.keys]})


@kme.command("status")
@_client_options
@handle_errors
def status(**kw: Any) -> None:
    """Get the status of the key shared with the peer SAE (ETSI GS QKD 014 §5.2), as JSON."""
    with _client(kw) as client:
        st = client.status()
    click.echo(json.dumps(dataclasses.asdict(st)))


@kme.command("enc-keys")
@_client_options
@click.option("--number", type=click.IntRange(min=1), default=1, show_default=True, help="Keys to fetch.")
@click.option("--size", type=click.IntRange(min=1), help="Key size in bits [default: the KME's].")
@handle_errors
def enc_keys(number: int, size: int | None, **kw: Any) -> None:
    """Fetch new keys as master SAE (ETSI GS QKD 014 §5.3); print the key container (secret!) as JSON."""
    with _client(kw) as client:
        container = client.enc_keys(number, size)
    click.echo(_container_json(container))


@kme.command("dec-keys")
@_client_options
@click.option("--key-id", "key_ids", multiple=True, required=True, help="A key_ID to fetch; repeat for several.")
@handle_errors
def dec_keys(key_ids: tuple[str, ...], **kw: Any) -> None:
    """Fetch keys by key_ID as slave SAE (ETSI GS QKD 014 §5.4); print the key container (secret!) as JSON."""
    try:
        ids = [uuid.UUID(k) for k in key_ids]
    except ValueError:
        raise click.BadParameter("each key_ID must be a UUID", param_hint="--key-id") from None
    with _client(kw) as client:
        container = client.dec_keys(ids, size_bits=None)
    click.echo(_container_json(container))
