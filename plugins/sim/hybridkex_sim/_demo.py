"""``hybridkex demo``: both sides in one process over loopback TCP, on a simulated QKD link.

It shows what is mixed, who authenticates whom, that both sides derive the same key, and
what happens when an eavesdropper taps the link: the QBER jumps, the link delivers no key,
and the QKD policy decides between failing (``required``) and going on with ML-KEM and
X25519 alone (``preferred``).  It also shows a v2 listener's rule: a connection that fails
before its peer authenticated does not end the listener.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from hybridkex import ExchangeSettings, HandshakeResult, HybridKexError, exchange, generate_identity, write_identity

__all__ = ["run_demo"]

Echo = Callable[[str], None]


class _Collect(logging.Handler):
    """Keeps the listener's log lines (fixed words, no secrets) to show them in the demo's own words."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def _collect_log() -> Iterator[_Collect]:
    log = logging.getLogger("hybridkex")
    handler, propagate = _Collect(), log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def _pair(initiator: ExchangeSettings, responder: ExchangeSettings, accept_timeout: float = 30.0) -> tuple[
        HandshakeResult | HybridKexError, HandshakeResult | HybridKexError]:
    """Run responder (thread) and initiator over 127.0.0.1 with an ephemeral port."""
    ready = threading.Event()
    port: list[int] = []
    box: dict[str, HandshakeResult | HybridKexError] = {}

    def serve() -> None:
        def listening(addr: tuple[str, int]) -> None:
            port.append(addr[1])
            ready.set()
        try:
            box["r"] = exchange(responder, listen_on=("127.0.0.1", 0), accept_timeout=accept_timeout,
                                on_listening=listening)
        except HybridKexError as exc:
            box["r"] = exc
            ready.set()

    thread = threading.Thread(target=serve, name="demo-responder", daemon=True)
    thread.start()
    ready.wait(30)
    if "r" in box:
        return box["r"], box["r"]
    try:
        box["i"] = exchange(initiator, connect_to=("127.0.0.1", port[0]))
    except HybridKexError as exc:
        box["i"] = exc
    thread.join(accept_timeout + 30)
    return box["i"], box.get("r", HybridKexError("responder did not finish"))


def _show(echo: Echo, name: str, outcome: HandshakeResult | HybridKexError) -> None:
    if isinstance(outcome, HybridKexError):
        echo(f"  {name:<5} FAILED ({type(outcome).__name__}): {outcome}")
        return
    qkd = {"used": "QKD key used", "off": "no QKD", "unavailable": "NO QKD KEY - continued without it"}[
        outcome.qkd.status]
    echo(f"  {name:<5} key {outcome.summary()['key_fingerprint']}  ({qkd})")


def run_demo(echo: Echo = print, workdir: Path | None = None) -> bool:
    """Run the demo, printing with ``echo``.  Returns True when every step behaved as expected."""
    from ._bb84 import LinkParameters
    from ._simlink import SimulatedLinkSource, init_link_file, update_link_file

    with tempfile.TemporaryDirectory(prefix="hybridkex-demo-") as tmp:
        base = workdir or Path(tmp)
        alice, bob = generate_identity("ml-dsa-65"), generate_identity("ml-dsa-65")
        write_identity(alice, base / "alice")
        write_identity(bob, base / "bob")
        link_path = base / "qkd-link.json"
        init_link_file(link_path, LinkParameters(channel_error=0.02))
        common = ExchangeSettings(qkd="sim", qkd_link=link_path, kem="ml-kem-768", backend="auto")
        # Each side keeps its own journal of the QKD key_IDs it used (a replayed key_ID is refused).
        a = dataclasses.replace(common, identity=base / "alice/id.key", peers=(base / "bob/id.pub",),
                                qkd_journal=base / "alice/qkd-key-ids")
        b = dataclasses.replace(common, identity=base / "bob/id.key", peers=(base / "alice/id.pub",),
                                qkd_journal=base / "bob/qkd-key-ids")

        echo("hybridkex demo: alice (initiator) and bob (responder) on 127.0.0.1, joined by a simulated BB84 link")
        echo(f"  alice  {alice.fingerprint}  ML-DSA-65 identity")
        echo(f"  bob    {bob.fingerprint}  ML-DSA-65 identity")
        link = SimulatedLinkSource(link_path)
        stats = link.link.statistics(8)
        echo(f"  link   {link.describe()}: QBER {stats.mean_qber:.1%}, "
             f"{stats.secret_key_bits_per_block:.0f} secret bits per block of {link.link.params.pulses_per_block} "
             "pulses")
        echo("")
        echo("1. Exchange on a healthy link (QKD policy: required)")
        i, r = _pair(a, b)
        good = isinstance(i, HandshakeResult) and isinstance(r, HandshakeResult) and i.key() == r.key()
        if isinstance(i, HandshakeResult) and isinstance(r, HandshakeResult):
            echo(f"  mixed  QKD key {i.qkd.key_ids[0]} (alice fetched it as master SAE, bob by key_ID as slave SAE)")
            echo(f"         + {i.suite.kem} shared secret + {i.suite.key_agreement} shared secret")
            echo(f"         -> ETSI TS 103 744 CatKDF ({i.suite.kdf.upper()}-{i.suite.hash.upper()}), bound to "
                 f"transcript {i.transcript_hash.hex()[:16]}...")
            echo(f"  auth   alice verified bob's {i.peer.auth.upper()} signature ({i.peer.fingerprint[:19]}...),")
            echo(f"         bob verified alice's {r.peer.auth.upper()} signature ({r.peer.fingerprint[:19]}...);")
            echo("         identities travel sealed under the ML-KEM + X25519 handshake secret, and each side")
            echo("         proved the final key to the other before either wrote it")
            sizes = i.message_sizes
            echo(f"  wire   {len(sizes)} messages, {sum(sizes)} bytes (InitHello, RespHello, InitFinish, RespFinish: "
                 f"{', '.join(map(str, sizes))})")
        _show(echo, "alice", i)
        _show(echo, "bob", r)
        echo("  => keys match" if good else "  => KEYS DO NOT MATCH")
        echo("")

        update_link_file(link_path, eve=1.0)
        tapped = SimulatedLinkSource(link_path).link.statistics(8)
        echo("2. Eve taps the link: she intercepts and resends every photon")
        echo(f"  link   QBER {tapped.mean_qber:.1%} > 11% abort threshold: "
             f"{tapped.aborted_blocks} of {tapped.blocks} blocks aborted, no QKD key")
        echo("  a) QKD policy required (bob listens for 3 s):")
        with _collect_log() as logged:
            i2, r2 = _pair(a, b, accept_timeout=3.0)
        _show(echo, "alice", i2)
        if isinstance(r2, HybridKexError):
            echo("  bob   no key: alice's alert came before she had authenticated (anyone could send one), so bob")
            echo("        ignored that connection and listened on for another initiator, until his accept timeout")
        else:
            _show(echo, "bob", r2)
        refused = isinstance(i2, HybridKexError) and isinstance(r2, HybridKexError) and bool(logged.lines)
        echo("     => no key: the exchange refuses to run without QKD" if refused else "     => UNEXPECTED")
        echo("  b) QKD policy preferred:")
        i3, r3 = _pair(replace(a, qkd_policy="preferred"), replace(b, qkd_policy="preferred"))
        _show(echo, "alice", i3)
        _show(echo, "bob", r3)
        fallback = (isinstance(i3, HandshakeResult) and isinstance(r3, HandshakeResult) and i3.key() == r3.key()
                    and i3.qkd.status == "unavailable")
        echo("     => keys match, from ML-KEM + X25519 only; the output says QKD was missing" if fallback
             else "     => UNEXPECTED")
        echo("")
        echo("Try it across two processes: 'hybridkex exchange --help'.")
        return good and refused and fallback
