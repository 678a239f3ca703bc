"""The BB84 link simulator: physics statistics, post-processing, determinism, Toeplitz hashing."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from hybridkex_sim._bb84 import (
    VERIFY_TAG_BITS,
    BB84Link,
    BlockResult,
    LinkParameters,
    binary_entropy,
    expected_qber,
    run_block,
    toeplitz_hash,
)

SEED = bytes(range(32))
BLOCKS = 24  # blocks averaged per statistics test (~800 sample bits each)


def mean_qber(params: LinkParameters, seed: bytes = SEED) -> float:
    return BB84Link(params, seed).statistics(BLOCKS).mean_qber


def test_default_block_yields_comfortably_more_than_256_bits() -> None:
    block = BB84Link(LinkParameters(), SEED).block(0)
    assert not block.aborted and block.reason == ""
    assert block.final_bits >= 1024
    assert len(block.key) * 8 == block.final_bits
    assert block.raw_pulses == 8192
    assert 0.45 < block.sifted_bits / block.raw_pulses < 0.55  # sifting keeps ~half
    assert block.sample_bits == round(0.2 * block.sifted_bits)
    assert block.ec_leak_bits > VERIFY_TAG_BITS


def test_block_repr_hides_the_key() -> None:
    block = BB84Link(LinkParameters(), SEED).block(0)
    text = repr(block)
    assert "key=" not in text and block.key.hex()[:16] not in text


def test_known_answer_block() -> None:
    # Pins the whole simulation: a change here breaks agreement between two installed versions.
    block = BB84Link(LinkParameters(), bytes(32)).block(0)
    assert (block.sifted_bits, block.sample_bits, block.ec_leak_bits, block.final_bits) == (4161, 832, 696, 2024)
    assert hashlib.sha256(block.key).hexdigest() == \
        "100898f5b8e2067caef4cb427b2ccc56b3eb3874ff96d71bd07c9be4ce7106d5"


def test_qber_without_eve_matches_channel_error() -> None:
    for p in (0.0, 0.02, 0.05):
        assert mean_qber(LinkParameters(channel_error=p)) == pytest.approx(p, abs=0.006)


def test_full_intercept_resend_gives_25_percent_qber() -> None:
    # Eve picks the wrong basis half the time, and then Bob's bit is a coin flip: 1/2 * 1/2.
    assert mean_qber(LinkParameters(channel_error=0.0, eve=1.0, qber_abort=0.5)) == pytest.approx(0.25, abs=0.015)


@pytest.mark.parametrize("eve", [0.2, 0.5, 1.0])
def test_partial_eve_adds_a_quarter_of_her_share(eve: float) -> None:
    params = LinkParameters(channel_error=0.02, eve=eve, qber_abort=0.5)
    expected = 0.02 + eve / 4 * (1 - 2 * 0.02)
    assert expected_qber(params) == pytest.approx(expected)
    assert mean_qber(params) == pytest.approx(expected, abs=0.012)


def test_eavesdropper_aborts_the_block() -> None:
    block = BB84Link(LinkParameters(eve=1.0), SEED).block(7)
    assert block.aborted
    assert block.key == b"" and block.final_bits == 0 and block.ec_leak_bits == 0
    assert "exceeds 11%" in block.reason and "eavesdropper" in block.reason
    assert block.qber > 0.11


def test_abort_threshold_is_the_estimated_qber() -> None:
    link = BB84Link(LinkParameters(channel_error=0.05, qber_abort=0.11), SEED)
    strict = BB84Link(LinkParameters(channel_error=0.05, qber_abort=0.03), SEED)
    for index in range(5):
        assert not link.block(index).aborted
        block = strict.block(index)
        assert block.aborted and "exceeds 3%" in block.reason


def test_final_key_shrinks_as_qber_rises() -> None:
    rates = [BB84Link(LinkParameters(channel_error=p), SEED).secret_key_rate_bits_per_block(8)
             for p in (0.0, 0.02, 0.04, 0.06)]
    assert rates == sorted(rates, reverse=True) and len(set(rates)) == 4
    assert rates[0] > 2 * rates[-1]


def test_nothing_left_after_privacy_amplification_aborts() -> None:
    # 25 % QBER passes a loose abort threshold but leaves no secret key (h(0.25)*(1+f) > 1).
    block = BB84Link(LinkParameters(eve=1.0, qber_abort=0.5), SEED).block(0)
    assert block.aborted and "no secret key left" in block.reason
    assert block.ec_leak_bits > 0


def test_error_correction_failure_is_caught_by_the_verification_hash() -> None:
    # At 30 % errors, f*h(e) > 1: the decoder cannot converge, and the hash comparison notices.
    block = BB84Link(LinkParameters(channel_error=0.3, qber_abort=0.5), SEED).block(0)
    assert block.aborted and "verification hash" in block.reason


def test_too_few_pulses_abort_cleanly() -> None:
    block = BB84Link(LinkParameters(pulses_per_block=64), SEED).block(0)
    assert block.aborted and block.final_bits == 0


def test_same_seed_and_index_give_the_same_key() -> None:
    a = BB84Link(LinkParameters(), SEED)
    b = BB84Link(LinkParameters(), SEED)
    assert a.block(42) == b.block(42)
    assert a.block(2**64 - 1).key == b.block(2**64 - 1).key


def test_different_index_or_seed_gives_a_different_key() -> None:
    link = BB84Link(LinkParameters(), SEED)
    keys = {link.block(i).key for i in range(8)}
    assert len(keys) == 8
    assert BB84Link(LinkParameters(), bytes(32)).block(0).key != link.block(0).key


def test_run_block_is_a_function_of_the_generator_state() -> None:
    first = run_block(LinkParameters(), np.random.Generator(np.random.PCG64(5)))
    again = run_block(LinkParameters(), np.random.Generator(np.random.PCG64(5)))
    assert isinstance(first, BlockResult) and first == again


def test_blocks_streams_successive_indices() -> None:
    link = BB84Link(LinkParameters(), SEED)
    stream = list(link.blocks(10, 13))
    assert [index for index, _ in stream] == [10, 11, 12]
    assert all(block == link.block(index) for index, block in stream)
    endless = link.blocks(5)
    assert next(endless)[0] == 5 and next(endless)[0] == 6


def test_statistics() -> None:
    stats = BB84Link(LinkParameters(), SEED).statistics(4)
    assert stats.blocks == 4 and stats.aborted_blocks == 0
    assert 1500 < stats.secret_key_bits_per_block < 2500
    tapped = BB84Link(LinkParameters(eve=1.0), SEED).statistics(4)
    assert tapped.aborted_blocks == 4 and tapped.secret_key_bits_per_block == 0


def test_block_index_range() -> None:
    link = BB84Link(LinkParameters(), SEED)
    for bad in (-1, 2**64, True):
        with pytest.raises(ValueError):
            link.block(bad)
    with pytest.raises(ValueError):
        BB84Link(LinkParameters(), b"short")


@pytest.mark.parametrize("changes", [
    {"channel_error": 0.6}, {"channel_error": -0.1}, {"eve": 1.5}, {"pulses_per_block": 10},
    {"pulses_per_block": 8192.0}, {"sample_fraction": 0.0}, {"sample_fraction": 1.0}, {"qber_abort": 0.7},
    {"ec_efficiency": 0.9}, {"security_margin_bits": -1}, {"eve": "0.1"},
])
def test_link_parameters_are_validated(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LinkParameters(**changes)  # type: ignore[arg-type]


def test_binary_entropy() -> None:
    assert binary_entropy(0.0) == 0.0 and binary_entropy(1.0) == 0.0
    assert binary_entropy(0.5) == pytest.approx(1.0)
    assert binary_entropy(0.11) == pytest.approx(0.4999, abs=1e-3)


def toeplitz_matrix(seed_bits: np.ndarray, n: int, m: int) -> np.ndarray:
    return np.array([[seed_bits[i - j + n - 1] for j in range(n)] for i in range(m)], dtype=np.int64)


def test_toeplitz_hash_matches_the_matrix_product() -> None:
    rng = np.random.default_rng(1)
    for n, m in ((1, 1), (5, 3), (64, 17), (300, 200), (1000, 1)):
        seed = rng.integers(0, 2, n + m - 1, dtype=np.uint8)
        data = rng.integers(0, 2, n, dtype=np.uint8)
        expected = (toeplitz_matrix(seed, n, m) @ data.astype(np.int64)) % 2
        assert np.array_equal(toeplitz_hash(seed, data, m), expected.astype(np.uint8))


def test_toeplitz_hash_is_exact_at_block_size() -> None:
    rng = np.random.default_rng(2)
    n, m = 3300, 2100  # sums reach ~1600; float64 rounding must still be exact
    seed = np.ones(n + m - 1, dtype=np.uint8)
    data = np.ones(n, dtype=np.uint8)
    assert np.array_equal(toeplitz_hash(seed, data, m), np.full(m, n % 2, dtype=np.uint8))
    seed = rng.integers(0, 2, n + m - 1, dtype=np.uint8)
    data = rng.integers(0, 2, n, dtype=np.uint8)
    rows = [3, 1000, m - 1]
    expected = [int(seed[[i - j + n - 1 for j in range(n)]] @ data.astype(np.int64)) % 2 for i in rows]
    assert list(toeplitz_hash(seed, data, m)[rows]) == expected


def test_toeplitz_hash_is_linear() -> None:
    rng = np.random.default_rng(3)
    n, m = 200, 40
    seed = rng.integers(0, 2, n + m - 1, dtype=np.uint8)
    x = rng.integers(0, 2, n, dtype=np.uint8)
    y = rng.integers(0, 2, n, dtype=np.uint8)
    assert np.array_equal(toeplitz_hash(seed, x ^ y, m), toeplitz_hash(seed, x, m) ^ toeplitz_hash(seed, y, m))
    assert not toeplitz_hash(seed, np.zeros(n, dtype=np.uint8), m).any()


def test_toeplitz_family_is_2_universal() -> None:
    # For fixed x != y, a random Toeplitz matrix maps them together with probability 2**-m.
    rng = np.random.default_rng(4)
    n, m, trials = 32, 3, 4000
    x = rng.integers(0, 2, n, dtype=np.uint8)
    y = x.copy()
    y[[0, 7, 31]] ^= 1
    collisions = 0
    for _ in range(trials):
        seed = rng.integers(0, 2, n + m - 1, dtype=np.uint8)
        collisions += bool(np.array_equal(toeplitz_hash(seed, x, m), toeplitz_hash(seed, y, m)))
    assert collisions / trials == pytest.approx(2**-m, abs=0.025)


def test_toeplitz_hash_checks_sizes() -> None:
    with pytest.raises(ValueError):
        toeplitz_hash(np.zeros(5, dtype=np.uint8), np.zeros(4, dtype=np.uint8), 3)
    with pytest.raises(ValueError):
        toeplitz_hash(np.zeros(3, dtype=np.uint8), np.zeros(4, dtype=np.uint8), 0)
