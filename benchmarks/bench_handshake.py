"""How much the handshake costs beyond the cryptography it cannot avoid.

    python benchmarks/bench_handshake.py [--backend cryptography|liboqs|auto] [--iterations N] [--batches B]
                              [--kem ml-kem-768|ml-kem-1024] [--sig ml-dsa-44|ml-dsa-65|ml-dsa-87]
                              [--quick] [--profile]

Runs whole handshakes -- both sides in this process, the sans-I/O state machines wired back
to back, ML-DSA authentication without QKD, with a QKD key handed over as data, and with a
PSK -- and reports the **ratio** of their CPU time to the sum of their primitives, the goal
being at most 1.15 for ML-DSA.

How the primitives are counted.  The handshakes run over a backend that times (CPU,
:func:`time.process_time`) every X25519, ML-KEM and ML-DSA call the handshake makes through it,
and, while a batch runs, the handshake module's two other primitives -- CatKDF
(``catkdf_unchecked``) and ChaCha20-Poly1305 (key set-up, seal, open) -- are timed the same way
by replacing those two names in that module with timing wrappers.  The protocol carries no
timing code.  ``ratio`` = the batch's total handshake CPU / the CPU spent inside exactly those
primitive calls, median over the batches.  Numerator and denominator come from the same calls
with the same inputs, so the randomness of ML-DSA signing (rejection sampling: a signature may
take several times another's time) cancels out instead of swinging the ratio; a primitive
that runs slower inside the handshake than back to back (cold caches) counts as primitive
time, which is what the handshake really had to pay for it.  Everything else -- framing,
parsing, mac1, the replay check, transcript hashes, the AEAD and confirmation keys expanded
from the secrets, key confirmation MACs, fingerprints, events, state checks -- is protocol
overhead.  What the instrument itself costs (the timing wrapper around each primitive call and
the stopwatch's two clock reads) is not: it is calibrated in the same run on a timed call of a
primitive that does nothing, against a direct call of it, and taken out once per timed call
(printed; about 2 us a call, some 20 calls a handshake).

Beside it, as information, the figures of the earlier method:

* the *floor*: the same primitives called directly through the same backend on inputs of the
  same sizes, in batches that rotate with the handshakes (X25519 key pairs and exchanges,
  ML-KEM key pair, encapsulation and decapsulation, both ML-DSA signatures and verifications,
  the four CatKDF calls, and the three sealed parts each sealed and opened).  ``ratio_floor`` =
  handshake / floor, from the medians; noisy, since the floor's signatures are other signatures;
* the protocol's own work measured alone: handshakes replayed over a backend that serves the
  primitives' results recorded from a real handshake (with fixed randomness and a fixed clock
  both sides repeat it byte for byte), minus the CatKDF and AEAD calls that still run
  (``overhead_replayed_us``); ``ratio_replayed`` is (floor + that overhead) / floor;
* the same replayed work *beside real primitives* (``overhead_interleaved_us``): the replaying backend
  still serves the recorded results, but computes every primitive for real as well, inside the
  stopwatch's window, so the protocol's code runs after real X25519, ML-KEM and ML-DSA calls, as in
  a real handshake; the CPU outside the primitive calls is that overhead.  Set beside
  ``overhead_replayed_us`` and the timed handshakes' own overhead (``overhead_inline_us``), it
  tells how much of the protocol's cost is its own work and how much is that work slowed by what
  the primitives leave behind in the caches (the protocol's code and data evicted, cold branch
  predictors).

The last line printed is one JSON object with every figure (``ratio``, ``batch_ratios``,
``handshake_us``, ``primitives_us``, ``floor_us``, ``ratio_psk``, ``backend``, message sizes
of every suite and mode ...), for scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import hashlib
import json
import os
import platform
import pstats
import statistics
import struct
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from unittest import mock

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hybridkex_sim import Pair as PairDriver
from hybridkex_sim import QKDPair

from hybridkex import BackendUnavailable, PeerAlertError, QKDUnavailable
from hybridkex.backends import KEM, KEM_NAMES, SIG_NAMES, Backend, KeyAgreement, SignatureScheme, get_backend
from hybridkex.protocol import _handshake, _labels
from hybridkex.protocol._auth import PSKAuthenticator, SignatureAuthenticator
from hybridkex.protocol._catkdf import catkdf_unchecked
from hybridkex.protocol._dos import DoSGuard
from hybridkex.protocol._handshake import (
    Event,
    HandshakeComplete,
    HandshakeConfig,
    HandshakeResult,
    Initiator,
    Responder,
    SendMessage,
)
from hybridkex.protocol._identity import Identity, generate_identity
from hybridkex.protocol._qkd import QKD_KEY_BYTES, QKDKey
from hybridkex.protocol._suites import SUITES, Suite, suites_for_kem
from hybridkex.protocol._wire import QKDBlock, QKDStatus, RespHello, decode, push_qkd_block, resp_hello_public

__all__ = ["main", "measure", "make_setup", "message_sizes", "cookie_reply_size", "handshake_pair", "serving_guard",
           "Floor", "Measurement", "ReplayBackend", "REPLAY_RNGS", "REPLAY_WALL"]

#: The overhead the protocol may add on top of its primitives (1.15 = 15 %).
GOAL_RATIO = 1.15
DEFAULT_ITERATIONS = 100
DEFAULT_BATCHES = 15
_SIG_CONTEXTS = (_labels.SIG_CONTEXT_RESPONDER, _labels.SIG_CONTEXT_INITIATOR)
_AEAD_TAG = 16
_ZERO_NONCE = bytes(12)


# --------------------------------------------------------------------------- the handshake


def _sent(events: Sequence[Event]) -> bytes:
    event = events[0]
    if not isinstance(event, SendMessage):
        raise RuntimeError(f"expected a message to send, got {type(event).__name__}")
    return event.data


def _completed(events: Sequence[Event]) -> HandshakeResult:
    event = events[-1]
    if not isinstance(event, HandshakeComplete):
        raise RuntimeError(f"expected the handshake to complete, got {type(event).__name__}")
    return event.result


def handshake_pair(i_config: HandshakeConfig, r_config: HandshakeConfig, qkd_key: QKDKey | None = None,
                  rngs: tuple[Callable[[int], bytes], Callable[[int], bytes]] = (os.urandom, os.urandom),
                  wall: Callable[[], float] = time.time, *, responder_qkd_fails: bool = False,
                  guard: DoSGuard | None = None) -> tuple[HandshakeResult, HandshakeResult]:
    """One whole handshake, both sides in this process; ``qkd_key`` is what both QKD sources deliver.

    ``wall`` is both sides' clock (the InitHello timestamp): a replay needs a fixed one.  With
    ``responder_qkd_fails`` the responder's source fails and both sides fall back (five messages;
    the policies must allow it).  ``guard``: the responder's DoS guard (default: a fresh one)."""
    return _drive(*_connections(i_config, r_config, rngs, wall, guard), qkd_key, responder_qkd_fails)


def serving_guard() -> DoSGuard:
    """The DoS guard of a responder that serves many handshakes, as one listener's guard does: one for all of
    them (mac1, replay cache, load meter), with limits high enough that a benchmark never turns it to cookies
    (a replay cache as large as the handshakes a long run makes within the replay window)."""
    return DoSGuard(load_threshold=10_000_000, source_rate=1e9, source_burst=10_000_000, max_entries=1 << 22)


def _connections(i_config: HandshakeConfig, r_config: HandshakeConfig,
                 rngs: tuple[Callable[[int], bytes], Callable[[int], bytes]],
                 wall: Callable[[], float], guard: DoSGuard | None = None) -> tuple[Initiator, Responder]:
    # The responder checks every InitHello with a guard, as 'hybridkex exchange' does (mac1, replay
    # cache, rate limit).  Without one given, a fresh one per handshake, so replays of one handshake
    # (same randomness, same InitHello) are not refused.
    if guard is None:
        guard = DoSGuard(wall=wall, rng=rngs[1])
    return (Initiator(i_config, rng=rngs[0], wall=wall),
            Responder(r_config, rng=rngs[1], wall=wall, guard=guard, source=b"127.0.0.1"))


def _drive(ini: Initiator, res: Responder, qkd_key: QKDKey | None,
           responder_qkd_fails: bool = False) -> tuple[HandshakeResult, HandshakeResult]:
    """The shared in-memory pair driver; both sides' QKD sources deliver ``qkd_key``.  With
    ``responder_qkd_fails`` RespFinish says "no QKD key here" and the initiator answers with InitConfirm."""
    link = QKDPair(keys=[qkd_key] if qkd_key is not None else [],
                   fail_slave=QKDUnavailable("benchmark: the responder's source failed") if responder_qkd_fails
                   else None)
    o = PairDriver(ini, res, qkd=link).run()
    if isinstance(o.initiator, HandshakeResult) and isinstance(o.responder, HandshakeResult):
        return o.initiator, o.responder
    failures = [r for r in (o.responder, o.initiator) if isinstance(r, Exception)]
    raise next((e for e in failures if not isinstance(e, PeerAlertError)), failures[0])  # the side that failed first


def _qkd_keys(n: int, qkd: bool) -> list[QKDKey | None]:
    """Keys for one batch, made before the clock starts: the KME's work is not the handshake's."""
    return [QKDKey(uuid.uuid4(), os.urandom(QKD_KEY_BYTES)) if qkd else None for _ in range(n)]


# --------------------------------------------------------------------------- replayed primitives


#: What a wrapped primitive call goes through: ``hook(op, a, b, compute)`` returns the call's result;
#: ``a`` and ``b`` are short inputs that tell one call of ``op`` from another in a handshake.
Hook = Callable[[str, bytes, bytes, Callable[[], Any]], Any]


class _Tape:
    """Primitive results recorded from one real handshake, then served instead of computing them.

    With fixed randomness both state machines repeat the recorded handshake byte for byte, so
    a handshake over a replaying backend costs exactly the protocol's own work (plus a few
    dictionary look-ups on short keys): the overhead, without the noise of randomized ML-DSA
    signing, whose rejection loop makes each signature take a different time.
    """

    def __init__(self) -> None:
        self.recording = True
        self.results: dict[tuple[str, bytes, bytes], Any] = {}

    def __call__(self, op: str, a: bytes, b: bytes, compute: Callable[[], Any]) -> Any:
        key = (op, a, b)
        if self.recording and key not in self.results:  # the first result stands: replays must agree
            self.results[key] = compute()
        try:
            return self.results[key]
        except KeyError:
            raise RuntimeError(f"replay: {op} was called with inputs the recorded handshake did not use") from None


class _Interleaved:
    """The tape's results, each primitive also computed for real (and its result dropped) inside the stopwatch.

    The protocol then does exactly a replay's work, but after real primitive calls, whose CPU the stopwatch
    counts: what the handshake spends outside them is the replayed work as real primitives leave the caches."""

    def __init__(self, tape: _Tape, watch: _Stopwatch) -> None:
        self._tape, self._watch = tape, watch

    def __call__(self, op: str, a: bytes, b: bytes, compute: Callable[[], Any]) -> Any:
        tape = self._tape

        def both() -> Any:
            compute()
            return tape(op, a, b, compute)
        return self._watch(op, a, b, both)


class _Stopwatch:
    """CPU time spent inside the primitive calls of real handshakes, added up per operation."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def __call__(self, op: str, a: bytes, b: bytes, compute: Callable[[], Any]) -> Any:
        start = time.process_time()
        try:
            return compute()
        finally:
            self.seconds[op] = self.seconds.get(op, 0.0) + time.process_time() - start
            self.calls[op] = self.calls.get(op, 0) + 1

    def total(self) -> float:
        return sum(self.seconds.values())

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


class _HookedKEM(KEM):
    def __init__(self, real: KEM, hook: Hook) -> None:
        self.name, self.sizes, self._real, self._hook = real.name, real.sizes, real, hook

    def generate(self, seed: bytes) -> tuple[Any, bytes]:
        result: tuple[Any, bytes] = self._hook("kem-generate", seed, b"", lambda: self._real.generate(seed))
        return result

    def encapsulate(self, encapsulation_key: bytes) -> tuple[bytes, bytes]:
        result: tuple[bytes, bytes] = self._hook("kem-encapsulate", encapsulation_key[:64], b"",
                                                 lambda: self._real.encapsulate(encapsulation_key))
        return result

    def decapsulate(self, private: Any, ciphertext: bytes) -> bytes:
        result: bytes = self._hook("kem-decapsulate", ciphertext[:64], b"",
                                   lambda: self._real.decapsulate(private, ciphertext))
        return result


class _HookedKeyAgreement(KeyAgreement):
    def __init__(self, real: KeyAgreement, hook: Hook) -> None:
        self.name, self._real, self._hook = real.name, real, hook
        self.public_key_size, self.private_key_size = real.public_key_size, real.private_key_size

    def generate(self, seed: bytes) -> tuple[Any, bytes]:
        result: tuple[Any, bytes] = self._hook("ka-generate", seed, b"", lambda: self._real.generate(seed))
        return result

    def exchange(self, private: Any, peer_public: bytes) -> bytes:
        # Each side's peer public key is different, so it names the exchange.
        result: bytes = self._hook("ka-exchange", peer_public, b"", lambda: self._real.exchange(private, peer_public))
        return result


class _HookedSignature(SignatureScheme):
    def __init__(self, real: SignatureScheme, hook: Hook) -> None:
        self.name, self.sizes, self._real, self._hook = real.name, real.sizes, real, hook

    def from_seed(self, seed: bytes) -> tuple[Any, bytes]:
        return self._real.from_seed(seed)  # configuration, not handshake: identities are loaded once

    def sign(self, private: Any, message: bytes, context: bytes) -> bytes:
        # The message is a transcript hash: short, and different for every signature of a handshake.
        result: bytes = self._hook("sign", message, context, lambda: self._real.sign(private, message, context))
        return result

    def verify(self, public_key: bytes, message: bytes, signature: bytes, context: bytes) -> bool:
        result: bool = self._hook("verify", message, context,
                                  lambda: self._real.verify(public_key, message, signature, context))
        return result


class _HookedBackend(Backend):
    """A backend whose every handshake primitive call goes through ``hook``."""

    def __init__(self, real: Backend, hook: Hook, name: str) -> None:
        self.name = f"{name}({real.name})"
        self._real = real
        self._hook = hook

    def kem(self, name: str) -> KEM:
        return _HookedKEM(self._real.kem(name), self._hook)

    def key_agreement(self, name: str) -> KeyAgreement:
        return _HookedKeyAgreement(self._real.key_agreement(name), self._hook)

    def signature(self, name: str) -> SignatureScheme:
        return _HookedSignature(self._real.signature(name), self._hook)


class ReplayBackend(_HookedBackend):
    """A backend that records the primitives of a real backend once, then replays them."""

    def __init__(self, real: Backend) -> None:
        self.tape = _Tape()
        super().__init__(real, self.tape, "replay")


class TimingBackend(_HookedBackend):
    """A backend that times (CPU) every primitive call the handshake makes through it."""

    def __init__(self, real: Backend, stopwatch: _Stopwatch) -> None:
        self.stopwatch = stopwatch
        super().__init__(real, stopwatch, "timed")


#: Per handshake the protocol calls CatKDF four times and ChaCha20-Poly1305 for three sealed parts on
#: each side: fewer timed calls means the hook below missed some.
_MIN_TIMED_CALLS = {"catkdf": 4, "chacha20-poly1305": 6}


@contextlib.contextmanager
def _timing_kdf_and_aead(watch: _Stopwatch) -> Iterator[None]:
    """Time the handshake's CatKDF and ChaCha20-Poly1305 calls too, as it makes them.

    They are not backend calls: the handshake module calls ``catkdf_unchecked`` and constructs
    ``ChaCha20Poly1305`` by name, so for the duration of the ``with`` those two names in that module
    are timing wrappers around the real ones.  The protocol itself carries no timing code."""

    def catkdf(*args: Any) -> bytes:
        result: bytes = watch("catkdf", b"", b"", lambda: catkdf_unchecked(*args))
        return result

    class TimedAEAD:
        # The handshake makes a key object for each seal or open: both are timed as one call (the
        # stopwatch costs more than the key set-up), which then also checks the key.
        def __init__(self, key: bytes) -> None:
            self._key = key

        def encrypt(self, nonce: bytes, data: bytes, aad: bytes | None) -> bytes:
            result: bytes = watch("chacha20-poly1305", b"", b"",
                                  lambda: ChaCha20Poly1305(self._key).encrypt(nonce, data, aad))
            return result

        def decrypt(self, nonce: bytes, data: bytes, aad: bytes | None) -> bytes:
            result: bytes = watch("chacha20-poly1305", b"", b"",
                                  lambda: ChaCha20Poly1305(self._key).decrypt(nonce, data, aad))
            return result

    with mock.patch.object(_handshake, "catkdf_unchecked", catkdf), \
            mock.patch.object(_handshake, "ChaCha20Poly1305", TimedAEAD):
        yield


def _fixed_rng(fill: int) -> Callable[[int], bytes]:
    return lambda n: bytes([fill]) * n


#: Fixed randomness for replayed handshakes (distinct per side, so the two X25519 shares differ).
REPLAY_RNGS = (_fixed_rng(1), _fixed_rng(2))
#: A fixed clock for replayed handshakes: the InitHello timestamp is in the transcript that is signed.
_REPLAY_TIME = float(int(time.time()))


def REPLAY_WALL() -> float:  # noqa: N802 - a constant clock, named like REPLAY_RNGS
    return _REPLAY_TIME


# --------------------------------------------------------------------------- the floor


@dataclass(frozen=True)
class _Sizes:
    """Lengths of what CatKDF hashes and what the AEAD seals, taken from a real handshake."""

    init_hello: int
    resp_hello_public: int
    """RespHello before its sealed part: MB of the handshake secret."""
    resp_hello_plain: int
    init_finish_plain: int
    resp_finish_plain: int
    init_finish_tagged: int
    """InitFinish's payload without its confirmation: what MA adds for the session secret."""


def _vec16(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


class Floor:
    """The primitive operations of one handshake, called straight through the backend."""

    def __init__(self, backend: Backend, suite: Suite, initiator: Identity, responder: Identity,
                 sizes: _Sizes) -> None:
        self.suite = suite
        self.kem = backend.kem(suite.kem)
        self.ka = backend.key_agreement(suite.key_agreement)
        i_scheme, r_scheme = backend.signature(initiator.alg), backend.signature(responder.alg)
        self.i_sign, self.r_sign = i_scheme.sign, r_scheme.sign
        self.i_verify, self.r_verify = i_scheme.verify, r_scheme.verify
        self.i_signer, self.i_public = i_scheme.from_seed(initiator.seed)
        self.r_signer, self.r_public = r_scheme.from_seed(responder.seed)
        self.kem_seed = os.urandom(self.kem.sizes.decapsulation_key_seed)
        self.x_seeds = (os.urandom(self.ka.private_key_size), os.urandom(self.ka.private_key_size))
        # What is signed is a transcript hash; CatKDF hashes whole messages; the AEAD's AAD is a transcript hash.
        self.th_resp = hashlib.new(suite.hash, b"resp").digest()
        self.th_init = hashlib.new(suite.hash, b"init").digest()
        self.ma_hs, self.mb_hs = os.urandom(sizes.init_hello), os.urandom(sizes.resp_hello_public)
        self.ma_session = os.urandom(sizes.init_hello + sizes.init_finish_tagged)
        self.mb_session = os.urandom(sizes.resp_hello_public + sizes.resp_hello_plain)
        # The session context names both identities and the QKD block (one key_ID when QKD is used).
        ids = _labels.CATKDF_CONTEXT_SESSION + _vec16(self.i_public) + _vec16(self.r_public)
        self.context_off = ids + push_qkd_block(QKDBlock(QKDStatus.OFF))
        self.context_qkd = ids + push_qkd_block(QKDBlock(QKDStatus.USED, key_bits=QKD_KEY_BYTES * 8,
                                                         key_ids=(uuid.UUID(int=1),)))
        self.plaintexts = tuple(os.urandom(n) for n in (sizes.resp_hello_plain, sizes.init_finish_plain,
                                                        sizes.resp_finish_plain))

    def _catkdf(self, psk: bytes, k1: bytes, k2: bytes, ma: bytes, mb: bytes, context: bytes | None) -> bytes:
        """The handshake secret (``context`` None) or the session secret, as the protocol calls CatKDF."""
        label = _labels.CATKDF_LABEL_HANDSHAKE if context is None else _labels.CATKDF_LABEL_SESSION
        suite = self.suite
        return catkdf_unchecked(suite.hash, suite.kdf, psk, k1, k2, ma, mb,
                                _labels.CATKDF_CONTEXT_HANDSHAKE if context is None else context, label,
                                suite.hash_len)

    @staticmethod
    def _seal_open(key: bytes, aad: bytes, plaintext: bytes) -> None:
        sealed = ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, plaintext, aad)
        ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, sealed, aad)

    def run(self, qkd_key: QKDKey | None) -> None:
        """One handshake's worth of primitives, in protocol order, each output feeding the next step."""
        kem, ka = self.kem, self.ka
        psk = qkd_key.key if qkd_key is not None else b""
        context = self.context_off if qkd_key is None else self.context_qkd
        rh_plain, if_plain, rf_plain = self.plaintexts
        # initiator: key shares
        kem_private, encapsulation_key = kem.generate(self.kem_seed)
        xi_private, xi_public = ka.generate(self.x_seeds[0])
        # responder: key share, both secrets, handshake secret, signature, sealed identity
        xr_private, xr_public = ka.generate(self.x_seeds[1])
        k1 = ka.exchange(xr_private, xi_public)
        k2, ciphertext = kem.encapsulate(encapsulation_key)
        hs = self._catkdf(b"", k1, k2, self.ma_hs, self.mb_hs, None)
        r_tag = self.r_sign(self.r_signer, self.th_resp, _SIG_CONTEXTS[0])
        # initiator: both secrets, handshake secret, open, check the responder, sign, session secret, seal
        k1 = ka.exchange(xi_private, xr_public)
        k2 = kem.decapsulate(kem_private, ciphertext)
        hs = self._catkdf(b"", k1, k2, self.ma_hs, self.mb_hs, None)
        self._seal_open(hs[:32], self.th_resp, rh_plain)
        if not self.r_verify(self.r_public, self.th_resp, r_tag, _SIG_CONTEXTS[0]):
            raise RuntimeError("floor: responder signature did not verify")
        i_tag = self.i_sign(self.i_signer, self.th_init, _SIG_CONTEXTS[1])
        self._catkdf(psk, k1, k2, self.ma_session, self.mb_session, context)
        # responder: open, check the initiator, session secret, seal RespFinish; the initiator opens it
        self._seal_open(hs[:32], self.th_init, if_plain)
        if not self.i_verify(self.i_public, self.th_init, i_tag, _SIG_CONTEXTS[1]):
            raise RuntimeError("floor: initiator signature did not verify")
        self._catkdf(psk, k1, k2, self.ma_session, self.mb_session, context)
        self._seal_open(hs[:32], self.th_init, rf_plain)

    def operations(self) -> dict[str, tuple[int, Callable[[], object]]]:
        """Each primitive alone, with how many times one handshake calls it (for the breakdown)."""
        kem_private, encapsulation_key = self.kem.generate(self.kem_seed)
        x_private, x_public = self.ka.generate(self.x_seeds[0])
        _, ciphertext = self.kem.encapsulate(encapsulation_key)
        tag = self.r_sign(self.r_signer, self.th_resp, _SIG_CONTEXTS[0])
        secret = bytes(32)
        rh_plain, if_plain, rf_plain = self.plaintexts
        return {
            "x25519 keygen": (2, lambda: self.ka.generate(self.x_seeds[1])),
            "x25519 exchange": (2, lambda: self.ka.exchange(x_private, x_public)),
            f"{self.kem.name} keygen": (1, lambda: self.kem.generate(self.kem_seed)),
            f"{self.kem.name} encaps": (1, lambda: self.kem.encapsulate(encapsulation_key)),
            f"{self.kem.name} decaps": (1, lambda: self.kem.decapsulate(kem_private, ciphertext)),
            "ml-dsa sign": (2, lambda: self.r_sign(self.r_signer, self.th_resp, _SIG_CONTEXTS[0])),
            "ml-dsa verify": (2, lambda: self.r_verify(self.r_public, self.th_resp, tag, _SIG_CONTEXTS[0])),
            "catkdf handshake": (2, lambda: self._catkdf(b"", secret, secret, self.ma_hs, self.mb_hs, None)),
            "catkdf session": (2, lambda: self._catkdf(secret, secret, secret, self.ma_session, self.mb_session,
                                                       self.context_off)),
            "chacha20-poly1305": (1, lambda: (self._seal_open(secret, self.th_resp, rh_plain),
                                              self._seal_open(secret, self.th_init, if_plain),
                                              self._seal_open(secret, self.th_init, rf_plain))),
        }


# --------------------------------------------------------------------------- measuring


Pair = tuple[HandshakeConfig, HandshakeConfig]


@dataclass(frozen=True)
class Setup:
    """Configurations for both sides -- timed, replayed and PSK, with and without QKD -- and the matching floor."""

    backend: Backend
    suite: Suite
    configs: Pair
    qkd_configs: Pair
    psk_configs: Pair
    replay_configs: Pair
    replay_qkd_configs: Pair
    replay_qkd_key: QKDKey
    interleaved_configs: Pair
    """Replayed configurations whose primitives are also computed for real, timed (:class:`_Interleaved`)."""
    floor: Floor
    stopwatch: _Stopwatch
    """Where the timed configurations' primitive calls add up their CPU time."""


def _signature_pair(backend: Backend, alice: Identity, bob: Identity, suites: tuple[int, ...]) -> dict[str, Pair]:
    i_auth = SignatureAuthenticator(alice, [bob.public], backend)
    r_auth = SignatureAuthenticator(bob, [alice.public], backend)
    return {policy: (HandshakeConfig(i_auth, suites, policy, backend=backend),
                     HandshakeConfig(r_auth, suites, policy, backend=backend)) for policy in ("off", "required")}


def _psk_pair(backend: Backend, suites: tuple[int, ...]) -> Pair:
    psk = os.urandom(32)
    return (HandshakeConfig(PSKAuthenticator([psk], name="alice", peer_name="bob"), suites, backend=backend),
            HandshakeConfig(PSKAuthenticator([psk], name="bob", peer_name="alice"), suites, backend=backend))


def make_setup(backend: Backend, kem: str, sig: str) -> Setup:
    """Identities, configurations and the floor for ``kem`` and ``sig``; records the replay tape."""
    alice, bob = generate_identity(sig), generate_identity(sig)
    suites = suites_for_kem(kem)
    stopwatch = _Stopwatch()
    timed_backend = TimingBackend(backend, stopwatch)
    timed = _signature_pair(timed_backend, alice, bob, suites)
    replay_backend = ReplayBackend(backend)
    replay = _signature_pair(replay_backend, alice, bob, suites)
    qkd_key = QKDKey(uuid.UUID(int=1), bytes(range(QKD_KEY_BYTES)))
    recorded = (handshake_pair(*replay["off"], None, REPLAY_RNGS, REPLAY_WALL),
                handshake_pair(*replay["required"], qkd_key, REPLAY_RNGS, REPLAY_WALL))
    replay_backend.tape.recording = False
    replayed = (handshake_pair(*replay["off"], None, REPLAY_RNGS, REPLAY_WALL),
                handshake_pair(*replay["required"], qkd_key, REPLAY_RNGS, REPLAY_WALL))
    interleaved = _signature_pair(_HookedBackend(backend, _Interleaved(replay_backend.tape, stopwatch), "interleaved"),
                                  alice, bob, suites)
    again = (*replayed, handshake_pair(*interleaved["off"], None, REPLAY_RNGS, REPLAY_WALL))
    for (before, _), (after, _) in zip((*recorded, recorded[0]), again, strict=True):
        if before.transcript_hash != after.transcript_hash or before.key() != after.key():
            raise RuntimeError("replay: the replayed handshake differs from the recorded one")
    ini, res = _connections(*timed["off"], (os.urandom, os.urandom), time.time)
    result, _ = _drive(ini, res, None)
    sizes = _frame_sizes(ini.transcript.frames, result.suite)
    return Setup(backend, result.suite, timed["off"], timed["required"], _psk_pair(timed_backend, suites),
                 replay["off"], replay["required"], qkd_key, interleaved["off"],
                 Floor(backend, result.suite, alice, bob, sizes), stopwatch)


def _frame_sizes(frames: Sequence[bytes], suite: Suite) -> _Sizes:
    """What the floor's CatKDF and AEAD calls must process, measured on a real handshake's frames."""
    ih, rh, if_, rf = frames
    hello = decode(rh)
    assert isinstance(hello, RespHello)
    sealed = [len(hello.sealed), len(decode(if_).sealed), len(decode(rf).sealed)]  # type: ignore[union-attr]
    rh_plain, if_plain, rf_plain = (n - _AEAD_TAG for n in sealed)
    # InitFinish's plaintext ends with vec8(confirmation), which MA does not hold.
    return _Sizes(init_hello=len(ih), resp_hello_public=len(resp_hello_public(hello)), resp_hello_plain=rh_plain,
                  init_finish_plain=if_plain, resp_finish_plain=rf_plain,
                  init_finish_tagged=if_plain - 1 - suite.hash_len)


def _time_handshakes(configs: Pair, keys: Sequence[QKDKey | None], watch: _Stopwatch,
                     instrument_us: float = 0.0, guard: DoSGuard | None = None, *, replay: bool = False) \
        -> tuple[float, float]:
    """Real handshakes over the timing backend: (CPU per handshake, CPU inside its primitives), in us.

    ``instrument_us`` is what one timed call costs the benchmark (:func:`_timer_cost_us`): it is
    taken out of the handshake's CPU once per timed call, since an untimed handshake does not pay it.
    ``replay``: with the replays' fixed randomness and clock (for :class:`_Interleaved` configurations)."""
    i_config, r_config = configs
    rngs, wall = (REPLAY_RNGS, REPLAY_WALL) if replay else ((os.urandom, os.urandom), time.time)
    watch.reset()
    with _timing_kdf_and_aead(watch):
        start = time.process_time()
        for key in keys:
            handshake_pair(i_config, r_config, key, rngs, wall, guard=guard)
        elapsed = time.process_time() - start
    for op, least in _MIN_TIMED_CALLS.items():
        if watch.calls.get(op, 0) < least * len(keys):
            raise RuntimeError(f"benchmark: the handshake's {op} calls were not all timed; the hook in "
                               "_timing_kdf_and_aead no longer matches how the handshake calls it")
    instrument = sum(watch.calls.values()) * instrument_us / 1e6
    return (elapsed - instrument) / len(keys) * 1e6, watch.total() / len(keys) * 1e6


def _time_replays(configs: Pair, keys: Sequence[QKDKey | None]) -> float:
    i_config, r_config = configs
    start = time.process_time()
    for key in keys:
        handshake_pair(i_config, r_config, key, REPLAY_RNGS, REPLAY_WALL)
    return (time.process_time() - start) / len(keys) * 1e6


def _time_interleaved(configs: Pair, n: int, watch: _Stopwatch, instrument_us: float) -> float:
    """Replays beside real primitives (:class:`_Interleaved`): CPU per handshake outside the primitive calls, in us."""
    total, primitives = _time_handshakes(configs, [None] * n, watch, instrument_us, replay=True)
    return total - primitives


def _time_floor(floor: Floor, keys: Sequence[QKDKey | None]) -> float:
    run = floor.run
    start = time.process_time()
    for key in keys:
        run(key)
    return (time.process_time() - start) / len(keys) * 1e6


def _time_call(fn: Callable[[], object], n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1e6


class _NullKeyAgreement(KeyAgreement):
    """A key agreement that computes nothing: what a timed call costs beyond its primitive."""

    name = "null"
    public_key_size = private_key_size = 0

    def generate(self, seed: bytes) -> tuple[Any, bytes]:
        return None, b""

    def exchange(self, private: Any, peer_public: bytes) -> bytes:
        return b""


def _timer_cost_us(n: int = 20000, rounds: int = 5) -> float:
    """CPU one timed primitive call costs on top of calling the primitive directly: the hooked
    backend's wrapper, its closure and the stopwatch (two clock reads, two dictionary updates).

    It is the benchmark's instrument, not the protocol's work: a handshake over a real backend
    makes none of it, so the timed handshakes' CPU has it taken out (calls made x this cost).
    Measured as the median of ``rounds`` runs of a timed call of a primitive that does nothing,
    minus a direct call of that same primitive."""
    null = _NullKeyAgreement()
    timed = _HookedKeyAgreement(null, _Stopwatch())

    def cost() -> float:
        start = time.process_time()
        for _ in range(n):
            timed.exchange(None, b"")
        hooked = time.process_time() - start
        start = time.process_time()
        for _ in range(n):
            null.exchange(None, b"")
        return (hooked - (time.process_time() - start)) / n * 1e6

    return max(0.0, statistics.median(cost() for _ in range(rounds)))


#: Modes of the timed handshakes: sample-name suffix -> (configurations in the Setup, with a QKD key).
_MODES = {"": ("configs", False), "_qkd": ("qkd_configs", True), "_psk": ("psk_configs", False)}


@dataclass(frozen=True)
class Measurement:
    """Per-batch figures, in microseconds of CPU time per handshake (both sides)."""

    samples: dict[str, list[float]]
    """Per batch: ``handshake`` (whole timed handshakes), ``primitives`` (CPU inside their primitive calls),
    ``floor``, ``replay``; each also with ``_qkd``, and ``handshake``/``primitives`` with ``_psk``; ``interleaved``
    (replays beside real primitives, CPU outside them)."""
    breakdown_us: dict[str, float]
    """The floor's primitives, each timed alone, times the calls one handshake makes."""
    inline_us: dict[str, dict[str, float]]
    """Per mode suffix: CPU per handshake inside each primitive operation, as the timed handshakes called them."""
    timer_us: float
    """CPU the instrument adds per timed call (wrapper and stopwatch), taken out of ``handshake``."""

    def median(self, kind: str) -> float:
        return statistics.median(self.samples[kind])

    def batch_ratios(self, mode: str = "") -> list[float]:
        """Per batch: the handshakes' CPU over the CPU inside the primitives those handshakes called."""
        return [h / p for h, p in zip(self.samples["handshake" + mode], self.samples["primitives" + mode],
                                      strict=True)]

    def ratio(self, mode: str = "") -> float:
        """The headline: median over the batches of handshake / its own primitives."""
        return statistics.median(self.batch_ratios(mode))

    def floor_ratio(self, qkd: bool = False) -> float:
        """Handshake over the separately run floor, from the medians of batches that ran side by side."""
        suffix = "_qkd" if qkd else ""
        return self.median("handshake" + suffix) / self.median("floor" + suffix)

    def floor_batch_ratios(self, qkd: bool = False) -> list[float]:
        suffix = "_qkd" if qkd else ""
        return [h / f for h, f in zip(self.samples["handshake" + suffix], self.samples["floor" + suffix], strict=True)]

    @property
    def unreplayed_us(self) -> float:
        """The floor's primitives a replay still runs for real: CatKDF and ChaCha20-Poly1305."""
        return sum(us for op, us in self.breakdown_us.items() if op.startswith(("catkdf", "chacha20")))

    def overhead_replayed(self, qkd: bool = False) -> float:
        """The protocol's own work: a replayed handshake minus the CatKDF and AEAD calls it still makes for real."""
        return self.median("replay_qkd" if qkd else "replay") - self.unreplayed_us

    @property
    def overhead_inline(self) -> float:
        """The timed handshakes' CPU outside their primitive calls (QKD off), median over the batches."""
        return statistics.median(h - p for h, p in zip(self.samples["handshake"], self.samples["primitives"],
                                                       strict=True))

    @property
    def overhead_interleaved(self) -> float:
        """The replayed work beside real primitives (:class:`_Interleaved`): its CPU outside them."""
        return self.median("interleaved")

    def ratio_replayed(self, qkd: bool = False) -> float:
        """(floor + overhead measured by replay) over floor: the ratio without the signing noise."""
        floor = self.median("floor_qkd" if qkd else "floor")
        return (floor + self.overhead_replayed(qkd)) / floor


def measure(setup: Setup, iterations: int, batches: int, *,
            progress: Callable[[str], None] | None = None) -> Measurement:
    """Alternate batches of timed handshakes (ML-DSA and PSK), of the floor and of replays, with and without QKD."""
    fixed = [setup.replay_qkd_key] * iterations
    watch = setup.stopwatch
    instrument_us = _timer_cost_us()
    # One guard serves all timed handshakes, as a listener's does (a fresh one per handshake would charge its
    # set-up, a secret drawn and three containers made, to every handshake).
    serving = serving_guard()
    samples: dict[str, list[float]] = {}
    inline: dict[str, dict[str, float]] = {mode: {} for mode in _MODES}
    recording = False

    def timed(mode: str) -> Callable[[], None]:
        attr, qkd = _MODES[mode]
        configs: Pair = getattr(setup, attr)

        def run() -> None:
            total, primitives = _time_handshakes(configs, _qkd_keys(iterations, qkd), watch, instrument_us,
                                                 serving)
            if recording:
                samples.setdefault("handshake" + mode, []).append(total)
                samples.setdefault("primitives" + mode, []).append(primitives)
                for op, seconds in watch.seconds.items():
                    inline[mode][op] = inline[mode].get(op, 0.0) + seconds / iterations * 1e6 / batches
        return run

    def sample(name: str, fn: Callable[[], float]) -> Callable[[], None]:
        def run() -> None:
            value = fn()
            if recording:
                samples.setdefault(name, []).append(value)
        return run

    kinds: list[Callable[[], None]] = [
        timed(""),
        sample("floor", lambda: _time_floor(setup.floor, _qkd_keys(iterations, False))),
        timed("_qkd"),
        sample("floor_qkd", lambda: _time_floor(setup.floor, _qkd_keys(iterations, True))),
        sample("replay", lambda: _time_replays(setup.replay_configs, [None] * iterations)),
        sample("replay_qkd", lambda: _time_replays(setup.replay_qkd_configs, fixed)),
        sample("interleaved", lambda: _time_interleaved(setup.interleaved_configs, iterations, watch, instrument_us)),
        timed("_psk"),
    ]
    for kind in kinds:  # warm-up: caches, lazy imports, the allocator
        kind()
    recording = True
    for batch in range(batches):
        # Rotate the order so that no kind always runs first, or always right after another.
        shift = batch % len(kinds)
        for kind in kinds[shift:] + kinds[:shift]:
            gc.collect()
            kind()
        if progress is not None:
            total, primitives = samples["handshake"][-1], samples["primitives"][-1]
            progress(f"batch {batch + 1}/{batches}: handshake {total:.0f} us, its primitives {primitives:.0f} us "
                     f"(ratio {total / primitives:.3f}), floor {samples['floor'][-1]:.0f} us, "
                     f"replayed handshake {samples['replay'][-1]:.0f} us")
    breakdown: dict[str, float] = {}
    for op, (count, fn) in setup.floor.operations().items():
        fn()
        breakdown[op] = count * statistics.median(_time_call(fn, iterations) for _ in range(3))
    return Measurement(samples, breakdown, inline, instrument_us)


# --------------------------------------------------------------------------- message sizes


#: QKD cases of the size table: none, a QKD key used, and the responder's source failing (policy
#: ``preferred``: RespFinish is signed and the initiator adds InitConfirm, five messages).
_SIZE_CASES = ("off", "used", "fallback")


def message_sizes(backend: Backend) -> list[dict[str, Any]]:
    """The message sizes for every suite and authentication mode, without QKD, with a QKD key, and on a
    responder-side QKD fallback (``init_confirm`` is 0 where there is no fifth message)."""
    identities = {sig: (generate_identity(sig), generate_identity(sig)) for sig in SIG_NAMES}
    psk = os.urandom(32)
    rows: list[dict[str, Any]] = []
    for suite in SUITES.values():
        for auth in (*SIG_NAMES, "psk"):
            if auth == "psk":
                i_auth: PSKAuthenticator | SignatureAuthenticator = PSKAuthenticator([psk], name="alice",
                                                                                     peer_name="bob")
                r_auth: PSKAuthenticator | SignatureAuthenticator = PSKAuthenticator([psk], name="bob",
                                                                                     peer_name="alice")
            else:
                alice, bob = identities[auth]
                i_auth = SignatureAuthenticator(alice, [bob.public], backend)
                r_auth = SignatureAuthenticator(bob, [alice.public], backend)
            for case in _SIZE_CASES:
                policy = {"off": "off", "used": "required", "fallback": "preferred"}[case]
                key = QKDKey(uuid.uuid4(), os.urandom(QKD_KEY_BYTES)) if case != "off" else None
                result, _ = handshake_pair(HandshakeConfig(i_auth, (suite.code,), policy, backend=backend),
                                          HandshakeConfig(r_auth, (suite.code,), policy, backend=backend), key,
                                          responder_qkd_fails=case == "fallback")
                ih, rh, if_, rf, *rest = result.message_sizes
                ic = rest[0] if rest else 0
                rows.append({"suite": suite.name, "auth": auth, "qkd": case, "init_hello": ih, "resp_hello": rh,
                             "init_finish": if_, "resp_finish": rf, "init_confirm": ic,
                             "total": ih + rh + if_ + rf + ic})
    return rows


def cookie_reply_size(backend: Backend) -> int:
    """The CookieReply a responder under load sends instead of a RespHello (the initiator then
    repeats its InitHello, same size, with mac2 set)."""
    psk = os.urandom(32)
    guard = DoSGuard()
    guard.forced_load = True
    ini = Initiator(HandshakeConfig(PSKAuthenticator([psk], name="alice", peer_name="bob"), backend=backend))
    res = Responder(HandshakeConfig(PSKAuthenticator([psk], name="bob", peer_name="alice"), backend=backend),
                    guard=guard, source=b"127.0.0.1")
    return len(_sent(res.receive(_sent(ini.initiate()))))


def _print_sizes(rows: list[dict[str, Any]], cookie: int) -> None:
    print("message sizes in bytes, frame headers included (QKD adds one 16-byte key_ID to InitFinish; 'fallback':")
    print("the responder's QKD source failed under policy preferred, so RespFinish is signed and InitConfirm follows):")
    print(f"  {'suite':<32} {'auth':<10} {'qkd':<8} {'InitHello':>9} {'RespHello':>9} {'InitFinish':>10} "
          f"{'RespFinish':>10} {'InitConfirm':>11} {'total':>6}")
    for r in rows:
        confirm = str(r["init_confirm"]) if r["init_confirm"] else "-"
        print(f"  {r['suite']:<32} {r['auth']:<10} {r['qkd']:<8} {r['init_hello']:>9} "
              f"{r['resp_hello']:>9} {r['init_finish']:>10} {r['resp_finish']:>10} {confirm:>11} {r['total']:>6}")
    print(f"  under load the responder first answers with a {cookie}-byte CookieReply instead of a RespHello")


# --------------------------------------------------------------------------- profiling


def profile(setup: Setup, iterations: int, top: int = 25) -> None:
    """cProfile replayed handshakes: with the primitives served from the tape, all that is left is
    the protocol's own work (and CatKDF).  cProfile's per-call cost inflates small functions."""
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    for _ in range(iterations):
        handshake_pair(*setup.replay_configs, None, REPLAY_RNGS, REPLAY_WALL)
    profiler.disable()
    stats = pstats.Stats(profiler)
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, tt, _, _) in raw.values())
    print(f"profile of {iterations} replayed handshakes (cProfile, CPU time): {total / iterations * 1e6:.0f} us each")

    def where(filename: str, line: int) -> str:
        return f"{os.path.basename(filename)}:{line}" if line else "built-in"

    print(f"  top {top} by own time (us per handshake, calls per handshake):")
    by_own = sorted(((tt, nc, f, line, fn) for (f, line, fn), (_, nc, tt, _, _) in raw.items()), reverse=True)
    for tt, nc, filename, line, function in by_own[:top]:
        print(f"    {tt / iterations * 1e6:8.1f}  {nc / iterations:6.1f}  {function} ({where(filename, line)})")
    print(f"  top {top} hybridkex functions by cumulative time (us per handshake, calls per handshake):")
    by_cum = sorted(((ct, nc, f, line, fn) for (f, line, fn), (_, nc, _, ct, _) in raw.items()
                     if f"hybridkex{os.sep}" in f and not f.endswith("bench.py")), reverse=True)
    for ct, nc, filename, line, function in by_cum[:top]:
        print(f"    {ct / iterations * 1e6:8.1f}  {nc / iterations:6.1f}  {function} ({where(filename, line)})")


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench_handshake.py",
        description="CPU cost of the full handshake against the sum of its primitive operations.")
    parser.add_argument("--backend", choices=("cryptography", "liboqs", "auto"), default="cryptography",
                        help="crypto backend (default: cryptography)")
    parser.add_argument("--iterations", type=int, default=None,
                        help=f"handshakes per batch (default {DEFAULT_ITERATIONS}; 5 with --quick)")
    parser.add_argument("--batches", type=int, default=None,
                        help=f"batches of each kind; medians are taken over them (default {DEFAULT_BATCHES}; "
                             "3 with --quick)")
    parser.add_argument("--kem", choices=KEM_NAMES, default="ml-kem-768", help="KEM (default ml-kem-768)")
    parser.add_argument("--sig", choices=SIG_NAMES, default="ml-dsa-65",
                        help="ML-DSA level of both identities (default ml-dsa-65)")
    parser.add_argument("--quick", action="store_true", help="a few iterations only: checks that it runs")
    parser.add_argument("--profile", action="store_true", help="also profile the handshake with cProfile")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    iterations = args.iterations or (5 if args.quick else DEFAULT_ITERATIONS)
    batches = args.batches or (3 if args.quick else DEFAULT_BATCHES)
    if iterations < 1 or batches < 1:
        print("error: --iterations and --batches must be at least 1", file=sys.stderr)
        return 2
    try:
        backend = get_backend(args.backend)
    except BackendUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup = make_setup(backend, args.kem, args.sig)
    print(f"hybridkex handshake benchmark: backend {backend.name}, suite {setup.suite.name}, {args.sig} both ways; "
          f"{batches} batches of {iterations} handshakes; CPU time; Python {platform.python_version()}")
    m = measure(setup, iterations, batches, progress=lambda line: print("  " + line, flush=True))
    mode_names = {"": f"{args.sig}, QKD off", "_qkd": f"{args.sig}, QKD on ", "_psk": "psk, QKD off      "}
    print("ratio = CPU of whole handshakes / CPU inside the primitive calls those same handshakes made "
          "(median of the batches):")
    for mode, label in mode_names.items():
        ratios = m.batch_ratios(mode)
        verdict = "within" if m.ratio(mode) <= GOAL_RATIO else "ABOVE"
        note = "" if mode != "_psk" else " (the goal is for ML-DSA; PSK primitives are cheap)"
        print(f"  {label}: handshake {m.median('handshake' + mode):.0f} us, its primitives "
              f"{m.median('primitives' + mode):.0f} us, ratio {m.ratio(mode):.3f} "
              f"(batches {min(ratios):.3f}..{max(ratios):.3f}; {verdict} the {GOAL_RATIO} goal{note})")
    print(f"  the instrument (timing wrapper and stopwatch) costs {m.timer_us:.2f} us per timed call; "
          "taken out of the handshakes' CPU, as an untimed handshake does not pay it")
    print("primitives inside the handshakes (QKD off, us per handshake):")
    for op, us in sorted(m.inline_us[""].items()):
        print(f"  {op:<22} {us:8.1f} us")
    print("floor, per handshake (each primitive timed alone, times the calls one handshake makes):")
    for op, us in m.breakdown_us.items():
        print(f"  {op:<22} {us:8.1f} us")
    print(f"  {'sum':<22} {sum(m.breakdown_us.values()):8.1f} us")
    for qkd in (False, True):
        suffix = "_qkd" if qkd else ""
        ratios = m.floor_batch_ratios(qkd)
        print(f"QKD {'on ' if qkd else 'off'}: handshake {m.median('handshake' + suffix):.0f} us against the floor "
              f"run separately, {m.median('floor' + suffix):.0f} us: ratio {m.floor_ratio(qkd):.3f} "
              f"(batches {min(ratios):.3f}..{max(ratios):.3f}; other signatures, so noisy)")
        print(f"         the protocol's own work, by replay: {m.overhead_replayed(qkd):.0f} us "
              f"(ratio {m.ratio_replayed(qkd):.3f} on the floor)")
    print(f"the protocol's own work (QKD off): {m.overhead_replayed():.0f} us replayed alone, "
          f"{m.overhead_interleaved:.0f} us replayed beside real primitives, {m.overhead_inline:.0f} us in the "
          "timed handshakes (the difference between the first two is the same work slowed by what the primitives "
          "leave in the caches)")
    if args.profile:
        profile(setup, max(iterations, 50))
    sizes = message_sizes(backend)
    cookie = cookie_reply_size(backend)
    _print_sizes(sizes, cookie)
    summary: dict[str, Any] = {
        "ratio": round(m.ratio(), 4),
        "handshake_us": round(m.median("handshake"), 1),
        "primitives_us": round(m.median("primitives"), 1),
        "floor_us": round(m.median("floor"), 1),
        "backend": backend.name,
        "kem": args.kem,
        "sig": args.sig,
        "suite": setup.suite.name,
        "iterations": iterations,
        "batches": batches,
        "goal_ratio": GOAL_RATIO,
        "batch_ratios": [round(r, 4) for r in m.batch_ratios()],
        "ratio_floor": round(m.floor_ratio(), 4),
        "batch_ratios_floor": [round(r, 4) for r in m.floor_batch_ratios()],
        "overhead_replayed_us": round(m.overhead_replayed(), 1),
        "ratio_replayed": round(m.ratio_replayed(), 4),
        "overhead_interleaved_us": round(m.overhead_interleaved, 1),
        "overhead_inline_us": round(m.overhead_inline, 1),
        "ratio_qkd": round(m.ratio("_qkd"), 4),
        "batch_ratios_qkd": [round(r, 4) for r in m.batch_ratios("_qkd")],
        "handshake_qkd_us": round(m.median("handshake_qkd"), 1),
        "primitives_qkd_us": round(m.median("primitives_qkd"), 1),
        "floor_qkd_us": round(m.median("floor_qkd"), 1),
        "ratio_floor_qkd": round(m.floor_ratio(True), 4),
        "overhead_replayed_qkd_us": round(m.overhead_replayed(True), 1),
        "ratio_replayed_qkd": round(m.ratio_replayed(True), 4),
        "ratio_psk": round(m.ratio("_psk"), 4),
        "batch_ratios_psk": [round(r, 4) for r in m.batch_ratios("_psk")],
        "handshake_psk_us": round(m.median("handshake_psk"), 1),
        "primitives_psk_us": round(m.median("primitives_psk"), 1),
        "timer_us_per_call": round(m.timer_us, 2),
        "inline_breakdown_us": {op: round(us, 1) for op, us in sorted(m.inline_us[""].items())},
        "floor_breakdown_us": {op: round(us, 1) for op, us in m.breakdown_us.items()},
        "sizes": sizes,
        "cookie_reply": cookie,
        "python": platform.python_version(),
    }
    print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
