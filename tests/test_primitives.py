"""Primitive layer: sizes, round trips, seeds, input checks, backend choice, and a cross-check
between the ``cryptography`` and ``liboqs`` backends.

liboqs is optional.  Tests that need it skip with the probe's reason when it is absent,
except when ``CI=true`` and ``HYBRIDKEX_REQUIRE_LIBOQS=1`` are both set: then they fail,
so a CI job that installs liboqs cannot pass by silently skipping.
"""

from __future__ import annotations

import ast
import ctypes.util
import hashlib
import importlib.util
import os
import platform
import re
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

from hybridkex._errors import BackendUnavailable
from hybridkex.backends import (
    KEM_NAMES,
    KEM_SIZES,
    SIG_NAMES,
    SIG_SIZES,
    Backend,
    available_backends,
    get_backend,
)

BACKENDS = ("cryptography", "liboqs")
REPO_ROOT = Path(__file__).resolve().parents[1]

# FIPS 203 Table 3 (encapsulation key, ciphertext, shared secret) and the 64-byte seed d || z.
FIPS203 = {"ml-kem-768": (1184, 1088, 32), "ml-kem-1024": (1568, 1568, 32)}
# FIPS 204 Table 2 (public key, signature) and the 32-byte seed xi.
FIPS204 = {"ml-dsa-44": (1312, 2420), "ml-dsa-65": (1952, 3309), "ml-dsa-87": (2592, 4627)}


def _seed(label: str, size: int) -> bytes:
    """Deterministic test seed, so a failure can be replayed."""
    return hashlib.shake_256(label.encode()).digest(size)


def _liboqs_reason() -> str | None:
    return available_backends()["liboqs"]


def require_liboqs() -> None:
    """Skip (or, in a CI job that demands liboqs, fail) when the liboqs backend is unusable."""
    reason = _liboqs_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true" and os.environ.get("HYBRIDKEX_REQUIRE_LIBOQS") == "1":
        pytest.fail(f"HYBRIDKEX_REQUIRE_LIBOQS=1 but the liboqs backend is unusable: {reason}")
    pytest.skip(f"liboqs backend unusable: {reason}")


def backend(name: str) -> Backend:
    if name == "liboqs":
        require_liboqs()
    return get_backend(name)


@pytest.fixture(params=BACKENDS)
def any_backend(request: pytest.FixtureRequest) -> Backend:
    return backend(request.param)


@pytest.fixture
def both_backends() -> tuple[Backend, Backend]:
    return backend("cryptography"), backend("liboqs")


def _flip(data: bytes, index: int = 0) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1:]


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("name", KEM_NAMES, ids=KEM_NAMES)
def test_kem_size_table_matches_fips203(name: str) -> None:
    sizes = KEM_SIZES[name]
    assert (sizes.encapsulation_key, sizes.ciphertext, sizes.shared_secret) == FIPS203[name]
    assert sizes.decapsulation_key_seed == 64


@pytest.mark.parametrize("name", SIG_NAMES, ids=SIG_NAMES)
def test_sig_size_table_matches_fips204(name: str) -> None:
    sizes = SIG_SIZES[name]
    assert (sizes.public_key, sizes.signature) == FIPS204[name]
    assert sizes.seed == 32


@pytest.mark.parametrize("name", KEM_NAMES, ids=KEM_NAMES)
def test_kem_outputs_have_fips203_sizes(any_backend: Backend, name: str) -> None:
    kem = any_backend.kem(name)
    assert kem.name == name and kem.sizes == KEM_SIZES[name]
    private, encapsulation_key = kem.generate(_seed(name, 64))
    shared_secret, ciphertext = kem.encapsulate(encapsulation_key)
    assert (len(encapsulation_key), len(ciphertext), len(shared_secret)) == FIPS203[name]
    assert len(kem.decapsulate(private, ciphertext)) == 32


@pytest.mark.parametrize("name", SIG_NAMES, ids=SIG_NAMES)
def test_sig_outputs_have_fips204_sizes(any_backend: Backend, name: str) -> None:
    scheme = any_backend.signature(name)
    assert scheme.name == name and scheme.sizes == SIG_SIZES[name]
    private, public_key = scheme.from_seed(_seed(name, 32))
    signature = scheme.sign(private, b"message", b"context")
    assert (len(public_key), len(signature)) == FIPS204[name]


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", KEM_NAMES, ids=KEM_NAMES)
def test_kem_round_trip(any_backend: Backend, name: str) -> None:
    kem = any_backend.kem(name)
    private, encapsulation_key = kem.generate(os.urandom(64))
    shared_secret, ciphertext = kem.encapsulate(encapsulation_key)
    assert kem.decapsulate(private, ciphertext) == shared_secret
    # Encapsulation is randomised: a second one gives a fresh secret and ciphertext.
    shared_secret_2, ciphertext_2 = kem.encapsulate(encapsulation_key)
    assert (shared_secret_2, ciphertext_2) != (shared_secret, ciphertext)
    assert kem.decapsulate(private, ciphertext_2) == shared_secret_2


@pytest.mark.parametrize("name", SIG_NAMES, ids=SIG_NAMES)
@pytest.mark.parametrize("message", [b"", b"transcript hash", bytes(range(256)) * 40], ids=["empty", "short", "long"])
@pytest.mark.parametrize("context", [b"", b"hybridkex", b"c" * 255], ids=["no-ctx", "ctx", "ctx-255"])
def test_sign_verify_round_trip(any_backend: Backend, name: str, message: bytes, context: bytes) -> None:
    scheme = any_backend.signature(name)
    private, public_key = scheme.from_seed(_seed(name, 32))
    signature = scheme.sign(private, message, context)
    assert scheme.verify(public_key, message, signature, context) is True


def test_x25519_round_trip(any_backend: Backend) -> None:
    agreement = any_backend.key_agreement("x25519")
    assert (agreement.public_key_size, agreement.private_key_size) == (32, 32)
    private_a, public_a = agreement.generate(os.urandom(32))
    private_b, public_b = agreement.generate(os.urandom(32))
    shared = agreement.exchange(private_a, public_b)
    assert len(shared) == 32
    assert shared == agreement.exchange(private_b, public_a)


def test_x25519_rfc7748_vector(any_backend: Backend) -> None:
    # RFC 7748 §6.1: Alice's and Bob's keys and their shared secret.
    agreement = any_backend.key_agreement("x25519")
    alice_private = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob_public = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    private, public = agreement.generate(alice_private)
    assert public == bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert agreement.exchange(private, bob_public) == bytes.fromhex(
        "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")


# --------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("name", KEM_NAMES, ids=KEM_NAMES)
def test_kem_seed_is_deterministic(any_backend: Backend, name: str) -> None:
    kem = any_backend.kem(name)
    seed = _seed(name + " determinism", 64)
    private_1, key_1 = kem.generate(seed)
    private_2, key_2 = kem.generate(seed)
    assert key_1 == key_2
    assert kem.generate(_flip(seed, 0))[1] != key_1  # d changes the key
    shared_secret, ciphertext = kem.encapsulate(key_1)
    assert kem.decapsulate(private_1, ciphertext) == kem.decapsulate(private_2, ciphertext) == shared_secret


@pytest.mark.parametrize("name", SIG_NAMES, ids=SIG_NAMES)
def test_sig_seed_is_deterministic(any_backend: Backend, name: str) -> None:
    scheme = any_backend.signature(name)
    seed = _seed(name + " determinism", 32)
    private_1, key_1 = scheme.from_seed(seed)
    private_2, key_2 = scheme.from_seed(seed)
    assert key_1 == key_2
    assert scheme.from_seed(_flip(seed))[1] != key_1
    # A key loaded again from the same seed signs for the same public key.
    assert scheme.verify(key_1, b"m", scheme.sign(private_2, b"m", b""), b"")


def test_x25519_seed_is_deterministic(any_backend: Backend) -> None:
    agreement = any_backend.key_agreement("x25519")
    seed = _seed("x25519", 32)
    assert agreement.generate(seed)[1] == agreement.generate(seed)[1]


# --------------------------------------------------------------------------- wrong lengths


def _lengths_around(size: int) -> list[int]:
    return [0, 1, size - 1, size + 1, 2 * size]


@pytest.mark.parametrize("name", KEM_NAMES, ids=KEM_NAMES)
def test_kem_rejects_wrong_lengths(any_backend: Backend, name: str) -> None:
    kem = any_backend.kem(name)
    sizes = KEM_SIZES[name]
    private, encapsulation_key = kem.generate(_seed(name, 64))
    _, ciphertext = kem.encapsulate(encapsulation_key)
    for n in _lengths_around(64):
        with pytest.raises(ValueError):
            kem.generate(_seed(name, n))
    for n in _lengths_around(sizes.encapsulation_key):
        with pytest.raises(ValueError):
            kem.encapsulate((encapsulation_key * 2)[:n])
    for n in _lengths_around(sizes.ciphertext):
        with pytest.raises(ValueError):
            kem.decapsulate(private, (ciphertext * 2)[:n])


@pytest.mark.parametrize("name", KEM_NAMES, ids=KEM_NAMES)
def test_kem_rejects_unreduced_encapsulation_key(any_backend: Backend, name: str) -> None:
    # FIPS 203 §7.2: every 12-bit coefficient must be below q = 3329; 0xFFF is not.
    with pytest.raises(ValueError):
        any_backend.kem(name).encapsulate(b"\xff" * KEM_SIZES[name].encapsulation_key)


@pytest.mark.parametrize("name", SIG_NAMES, ids=SIG_NAMES)
def test_sig_rejects_wrong_lengths(any_backend: Backend, name: str) -> None:
    scheme = any_backend.signature(name)
    sizes = SIG_SIZES[name]
    for n in _lengths_around(32):
        with pytest.raises(ValueError):
            scheme.from_seed(_seed(name, n))
    private, public_key = scheme.from_seed(_seed(name, 32))
    signature = scheme.sign(private, b"m", b"ctx")
    with pytest.raises(ValueError):
        scheme.sign(private, b"m", b"c" * 256)
    for n in _lengths_around(sizes.public_key):
        assert scheme.verify((public_key * 2)[:n], b"m", signature, b"ctx") is False
    for n in _lengths_around(sizes.signature):
        # Zero padding a truncated signature must not make it acceptable.
        padded = (signature * 2)[:n]
        assert scheme.verify(public_key, b"m", padded, b"ctx") is False
    assert scheme.verify(public_key, b"m", signature, b"c" * 256) is False


def test_x25519_rejects_wrong_lengths_and_low_order_points(any_backend: Backend) -> None:
    agreement = any_backend.key_agreement("x25519")
    for n in (0, 31, 33):
        with pytest.raises(ValueError):
            agreement.generate(b"\x01" * n)
    private, _ = agreement.generate(_seed("x25519", 32))
    for n in (0, 31, 33):
        with pytest.raises(ValueError):
            agreement.exchange(private, b"\x09" * n)
    # RFC 7748 §6.1: a low-order point yields the all-zero secret, which must be refused.
    with pytest.raises(ValueError):
        agreement.exchange(private, bytes(32))


# --------------------------------------------------------------------------- tampering


@pytest.mark.parametrize("name", KEM_NAMES, ids=KEM_NAMES)
def test_kem_tampered_ciphertext_gives_implicit_rejection(any_backend: Backend, name: str) -> None:
    kem = any_backend.kem(name)
    private, encapsulation_key = kem.generate(_seed(name, 64))
    shared_secret, ciphertext = kem.encapsulate(encapsulation_key)
    for index in (0, len(ciphertext) // 2, len(ciphertext) - 1):
        tampered = _flip(ciphertext, index)
        rejected = kem.decapsulate(private, tampered)  # FIPS 203 Algorithm 18: no error ...
        assert len(rejected) == 32 and rejected != shared_secret  # ... but a different secret,
        assert kem.decapsulate(private, tampered) == rejected  # derived deterministically from z and c.


@pytest.mark.parametrize("name", SIG_NAMES, ids=SIG_NAMES)
def test_sig_rejects_tampering(any_backend: Backend, name: str) -> None:
    scheme = any_backend.signature(name)
    private, public_key = scheme.from_seed(_seed(name, 32))
    other_public_key = scheme.from_seed(_seed(name + " other", 32))[1]
    signature = scheme.sign(private, b"transcript", b"ctx")
    assert scheme.verify(public_key, b"transcript", signature, b"ctx")
    for index in (0, len(signature) // 2, len(signature) - 1):
        assert scheme.verify(public_key, b"transcript", _flip(signature, index), b"ctx") is False
    assert scheme.verify(public_key, b"transcripT", signature, b"ctx") is False
    assert scheme.verify(public_key, b"transcript", signature, b"ctX") is False
    assert scheme.verify(public_key, b"transcript", signature, b"") is False
    assert scheme.verify(other_public_key, b"transcript", signature, b"ctx") is False
    assert scheme.verify(_flip(public_key, 100), b"transcript", signature, b"ctx") is False


# --------------------------------------------------------------------------- registry


def test_available_backends_lists_both() -> None:
    backends = available_backends()
    assert set(BACKENDS) <= set(backends)
    assert backends["cryptography"] is None
    reason = backends["liboqs"]
    assert reason is None or (isinstance(reason, str) and reason)


def test_each_backend_says_what_implements_it_with_versions(any_backend: Backend) -> None:
    # What a report records of a run: the implementation and its version, never a path.
    text = any_backend.describe()
    libraries = {"cryptography": ("cryptography ", " on "), "liboqs": ("liboqs ", "liboqs-python ")}
    for part in libraries[any_backend.name]:
        assert part in text
    assert re.search(r"\d+\.\d+", text), text
    assert "/" not in text and "\\" not in text


def test_auto_prefers_liboqs_then_cryptography() -> None:
    chosen = get_backend("auto")
    expected = "liboqs" if _liboqs_reason() is None else "cryptography"
    assert chosen.name == expected
    assert get_backend() is chosen


def test_unknown_backend_name_is_refused_with_choices() -> None:
    with pytest.raises(BackendUnavailable) as excinfo:
        get_backend("openssl-please")
    message = str(excinfo.value)
    assert "'openssl-please'" in message
    for name in ("auto", *BACKENDS):
        assert name in message


def test_unusable_liboqs_is_refused_with_reason() -> None:
    reason = _liboqs_reason()
    if reason is None:
        pytest.skip("liboqs is usable here")
    with pytest.raises(BackendUnavailable, match="liboqs") as excinfo:
        get_backend("liboqs")
    assert reason in str(excinfo.value)


def test_unknown_algorithm_is_refused(any_backend: Backend) -> None:
    with pytest.raises(BackendUnavailable, match="ml-kem-512"):
        any_backend.kem("ml-kem-512")
    with pytest.raises(BackendUnavailable, match="ed25519"):
        any_backend.signature("ed25519")
    with pytest.raises(BackendUnavailable, match="x448"):
        any_backend.key_agreement("x448")


# --------------------------------------------------------------------------- cross-check

DIRECTIONS = [("cryptography", "liboqs"), ("liboqs", "cryptography")]
DIRECTION_IDS = ["cryptography-to-liboqs", "liboqs-to-cryptography"]


def _pair(both: tuple[Backend, Backend], direction: tuple[str, str]) -> tuple[Backend, Backend]:
    by_name = {b.name: b for b in both}
    return by_name[direction[0]], by_name[direction[1]]


@pytest.mark.parametrize("name", KEM_NAMES, ids=KEM_NAMES)
def test_cross_check_kem_seed_gives_identical_keys(both_backends: tuple[Backend, Backend], name: str) -> None:
    ours, theirs = (b.kem(name) for b in both_backends)
    for label in ("a", "b", "c"):
        seed = _seed(f"{name} cross {label}", 64)
        assert ours.generate(seed)[1] == theirs.generate(seed)[1]


@pytest.mark.parametrize("direction", DIRECTIONS, ids=DIRECTION_IDS)
@pytest.mark.parametrize("name", KEM_NAMES, ids=KEM_NAMES)
def test_cross_check_kem(both_backends: tuple[Backend, Backend], direction: tuple[str, str], name: str) -> None:
    decapsulator, encapsulator = (b.kem(name) for b in _pair(both_backends, direction))
    private, encapsulation_key = decapsulator.generate(os.urandom(64))
    shared_secret, ciphertext = encapsulator.encapsulate(encapsulation_key)
    assert decapsulator.decapsulate(private, ciphertext) == shared_secret


@pytest.mark.parametrize("name", KEM_NAMES, ids=KEM_NAMES)
def test_cross_check_kem_implicit_rejection_agrees(both_backends: tuple[Backend, Backend], name: str) -> None:
    # Same seed, same z: both backends must derive the same rejection secret for a bad ciphertext.
    seed = _seed(name + " rejection", 64)
    kems = [b.kem(name) for b in both_backends]
    keys = [kem.generate(seed) for kem in kems]
    _, ciphertext = kems[0].encapsulate(keys[0][1])
    tampered = _flip(ciphertext, 7)
    results = {kem.decapsulate(private, tampered) for kem, (private, _) in zip(kems, keys, strict=True)}
    assert len(results) == 1


@pytest.mark.parametrize("name", SIG_NAMES, ids=SIG_NAMES)
def test_cross_check_sig_seed_gives_identical_keys(both_backends: tuple[Backend, Backend], name: str) -> None:
    ours, theirs = (b.signature(name) for b in both_backends)
    for label in ("a", "b", "c"):
        seed = _seed(f"{name} cross {label}", 32)
        assert ours.from_seed(seed)[1] == theirs.from_seed(seed)[1]


@pytest.mark.parametrize("direction", DIRECTIONS, ids=DIRECTION_IDS)
@pytest.mark.parametrize("name", SIG_NAMES, ids=SIG_NAMES)
def test_cross_check_signatures(both_backends: tuple[Backend, Backend], direction: tuple[str, str], name: str) -> None:
    signer, verifier = (b.signature(name) for b in _pair(both_backends, direction))
    private, public_key = signer.from_seed(os.urandom(32))
    for context in (b"", b"hybridkex transcript"):
        signature = signer.sign(private, b"transcript", context)
        assert verifier.verify(public_key, b"transcript", signature, context) is True
        assert verifier.verify(public_key, b"transcript", _flip(signature, 3), context) is False
        assert verifier.verify(public_key, b"transcript", signature, context + b"!") is False


@pytest.mark.parametrize("direction", DIRECTIONS, ids=DIRECTION_IDS)
def test_cross_check_x25519(both_backends: tuple[Backend, Backend], direction: tuple[str, str]) -> None:
    first, second = (b.key_agreement("x25519") for b in _pair(both_backends, direction))
    private_a, public_a = first.generate(os.urandom(32))
    private_b, public_b = second.generate(os.urandom(32))
    assert first.exchange(private_a, public_b) == second.exchange(private_b, public_a)


# --------------------------------------------------------------------------- liboqs specifics


def test_liboqs_derives_keys_from_seeds_itself() -> None:
    require_liboqs()
    liboqs = get_backend("liboqs")
    for name in KEM_NAMES:
        assert getattr(liboqs.kem(name), "seed_derivation", None) == "liboqs", name
    for name in SIG_NAMES:
        # "cryptography" would mean the liboqs build lacks the ML-DSA key-from-seed symbol.
        if getattr(liboqs.signature(name), "seed_derivation", None) != "liboqs":
            pytest.skip(f"this liboqs build cannot derive {name} keys from a seed; cryptography does it")


@pytest.mark.parametrize("name", SIG_NAMES, ids=SIG_NAMES)
def test_liboqs_sig_falls_back_to_cryptography_without_seed_symbol(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    require_liboqs()
    from hybridkex.backends import _liboqs as _backend_liboqs

    monkeypatch.setattr(_backend_liboqs, "_MLDSA_KEYGEN_SYMBOL", "hybridkex_no_such_symbol_{level}")
    reference = get_backend("cryptography").signature(name)
    scheme = _backend_liboqs._LiboqsMLDSA(name, _backend_liboqs._oqs, reference)
    assert scheme.seed_derivation == "cryptography"
    seed = _seed(name + " fallback", 32)
    private, public_key = scheme.from_seed(seed)
    assert public_key == reference.from_seed(seed)[1]
    signature = scheme.sign(private, b"m", b"ctx")
    assert scheme.verify(public_key, b"m", signature, b"ctx") and reference.verify(public_key, b"m", signature, b"ctx")


@pytest.mark.parametrize("name", KEM_NAMES, ids=KEM_NAMES)
def test_liboqs_kem_falls_back_to_cryptography_without_derand(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    require_liboqs()
    from hybridkex.backends import _liboqs as _backend_liboqs

    def no_derand(self: object, seed: bytes) -> None:
        raise RuntimeError("Key generation with seed is not supported")

    monkeypatch.setattr(_backend_liboqs._LiboqsKEM, "_derive", no_derand)
    reference = get_backend("cryptography").kem(name)
    kem = _backend_liboqs._LiboqsKEM(name, _backend_liboqs._oqs, reference)
    assert kem.seed_derivation == "cryptography"
    seed = _seed(name + " fallback", 64)
    private, encapsulation_key = kem.generate(seed)
    assert encapsulation_key == reference.generate(seed)[1]
    shared_secret, ciphertext = kem.encapsulate(encapsulation_key)
    assert kem.decapsulate(private, ciphertext) == shared_secret


@pytest.mark.parametrize("name", KEM_NAMES, ids=KEM_NAMES)
def test_liboqs_kem_refuses_foreign_private_key(name: str) -> None:
    require_liboqs()
    foreign, _ = get_backend("cryptography").kem(name).generate(_seed(name, 64))
    with pytest.raises(TypeError):
        get_backend("liboqs").kem(name).decapsulate(foreign, bytes(KEM_SIZES[name].ciphertext))


def test_liboqs_library_search_mirrors_liboqs_python(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from hybridkex.backends import _liboqs as _backend_liboqs

    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OQS_INSTALL_PATH", raising=False)
    assert _backend_liboqs._library_candidates() == [
        str(tmp_path / "home" / "_oqs" / "lib" / "liboqs.so"),
        str(tmp_path / "home" / "_oqs" / "lib64" / "liboqs.so"),
    ]
    # OQS_INSTALL_PATH replaces ~/_oqs, as in liboqs-python.
    monkeypatch.setenv("OQS_INSTALL_PATH", str(tmp_path / "prefix"))
    assert _backend_liboqs._library_candidates() == [
        str(tmp_path / "prefix" / "lib" / "liboqs.so"),
        str(tmp_path / "prefix" / "lib64" / "liboqs.so"),
    ]


def test_probe_reports_missing_oqs_module(monkeypatch: pytest.MonkeyPatch) -> None:
    from hybridkex.backends import _liboqs as _backend_liboqs

    real_find_spec = importlib.util.find_spec
    monkeypatch.delitem(sys.modules, "oqs", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "oqs" else real_find_spec(name, *args))
    reason = _backend_liboqs._probe_uncached()
    assert reason is not None and "not installed" in reason and "hybridkex[oqs]" in reason


def test_probe_survives_system_exit_from_liboqs_python(monkeypatch: pytest.MonkeyPatch) -> None:
    from hybridkex.backends import _liboqs as _backend_liboqs

    def exit_like_liboqs_python() -> None:
        raise SystemExit("Could not load liboqs shared library")

    monkeypatch.delitem(sys.modules, "oqs", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: object())
    monkeypatch.setattr(_backend_liboqs, "_find_loadable_library", lambda: "liboqs.so")
    monkeypatch.setattr(_backend_liboqs, "_import_oqs", exit_like_liboqs_python)
    reason = _backend_liboqs._probe_uncached()
    assert reason is not None and "SystemExit" in reason


def test_probe_names_an_oqs_module_that_is_not_liboqs_python(monkeypatch: pytest.MonkeyPatch) -> None:
    # PyPI's 'oqs' is an unrelated project that installs a module of the same name.
    from hybridkex.backends import _liboqs as _backend_liboqs

    impostor = types.ModuleType("oqs")
    monkeypatch.delitem(sys.modules, "oqs", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: object())
    monkeypatch.setattr(_backend_liboqs, "_find_loadable_library", lambda: "liboqs.so")
    monkeypatch.setattr(_backend_liboqs, "_import_oqs", lambda: impostor)
    reason = _backend_liboqs._probe_uncached()
    assert reason is not None and "not liboqs-python" in reason and "pip uninstall oqs" in reason


def _run_probe(env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    code = textwrap.dedent("""
        from hybridkex.backends._liboqs import probe
        print(repr(probe()))
    """)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60, check=False)
    return result, time.monotonic() - started


def test_probe_without_liboqs_returns_reason_quickly(tmp_path: Path) -> None:
    # liboqs-python, left to itself, would count down 5 s, try git clone and raise SystemExit.
    if ctypes.util.find_library("oqs") or ctypes.util.find_library("liboqs"):
        pytest.skip("a system-wide liboqs is installed, so it cannot be made absent")
    env = {**os.environ, "HOME": str(tmp_path), "OQS_INSTALL_PATH": str(tmp_path / "no-liboqs"),
           "PATH": os.environ.get("PATH", "")}
    result, elapsed = _run_probe(env)
    assert result.returncode == 0, result.stderr
    reason = ast.literal_eval(result.stdout.strip())  # the repr printed above
    assert isinstance(reason, str) and ("not installed" in reason or "not found" in reason)
    assert elapsed < 4.0
    assert "Installing" not in result.stdout + result.stderr


def test_probe_with_liboqs_keeps_stdout_clean() -> None:
    require_liboqs()
    result, _ = _run_probe(dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "None\n"  # liboqs-python's import-time log line must not reach stdout
