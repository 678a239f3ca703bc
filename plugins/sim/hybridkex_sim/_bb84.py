"""A BB84 link simulator: one block of pulses in, one privacy-amplified key out.

The model (Bennett & Brassard 1984, with the post-processing every real link runs):

1. Alice sends ``pulses_per_block`` single photons, each a random bit in a random basis
   (Z or X).  Pulses are *detected* photons: an ideal single-photon source and lossless
   detection, so loss, dark counts and multi-photon attacks are outside the model.
2. An intercept-resend eavesdropper measures a fraction ``eve`` of the photons in a random
   basis and resends what she saw in her basis.  Half the time she picks the wrong basis,
   and then Bob's result in Alice's basis is a coin flip: intercept-resend on every photon
   gives 25 % QBER on the sifted key.
3. The channel flips each bit with probability ``channel_error``; together
   QBER = channel_error + eve/4 * (1 - 2*channel_error).
4. Bob measures in a random basis; a wrong basis gives a random bit.
5. Sifting: the bases are compared publicly and only matching positions are kept (~1/2).
6. Parameter estimation: a random ``sample_fraction`` of the sifted bits is disclosed and
   compared; the estimated QBER above ``qber_abort`` aborts the block.
7. Error correction is modelled by its cost, not run bit by bit: a rate-adaptive
   reconciliation (Cascade, blind LDPC) discloses ``f * h(e) * n`` bits, where e is the
   larger of the estimated and the actual error rate, plus a verification tag; Bob's key
   then equals Alice's.  If the disclosure would be the whole key (``f*h(e) >= 1``) the
   decoder fails, Bob keeps his errors, and the verification hash comparison aborts.
8. Privacy amplification hashes the corrected key with a random Toeplitz matrix (a
   2-universal family; the seed is public) down to
   ``n*(1 - h(Q)) - leak - security_margin_bits`` bits (Shor-Preskill asymptotic rate with
   the leftover-hash-lemma margin), rounded down to whole bytes; nothing left aborts.

All bit work is done on numpy arrays.  Randomness is drawn only as raw 64-bit words from
the generator's bit generator, never through ``Generator`` distribution methods: NumPy keeps
bit-generator streams stable across releases (NEP 19) but not distribution algorithms, so
two sites on different NumPy versions still compute the same key from the same seed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

__all__ = [
    "LinkParameters",
    "BlockResult",
    "LinkStatistics",
    "BB84Link",
    "run_block",
    "binary_entropy",
    "toeplitz_hash",
    "expected_qber",
    "VERIFY_TAG_BITS",
]

#: Bits of the error-verification hash tag disclosed after error correction (charged to the leak).
VERIFY_TAG_BITS = 64

#: Domain label for deriving a block's random generator from the link seed and block index.
_BLOCK_LABEL = b"hybridkex qkd-sim bb84 block v1"

_MAX_INDEX = (1 << 64) - 1

Bits = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class LinkParameters:
    """Physical and post-processing parameters of a simulated BB84 link."""

    #: Intrinsic bit-flip probability of the channel (optics misalignment, detector noise), 0..0.5.
    channel_error: float = 0.02
    #: Fraction of pulses an intercept-resend eavesdropper measures in a random basis and
    #: resends, 0..1.  Adds eve/4 to the QBER on the sifted key.
    eve: float = 0.0
    #: Detected pulses per block.  8192 gives ~2000 final key bits at the default channel error
    #: and still more than 256 bits up to ~8 % QBER.
    pulses_per_block: int = 8192
    #: Share of the sifted bits disclosed to estimate the QBER; they never enter the key.
    sample_fraction: float = 0.2
    #: Estimated QBER above which the block is aborted (the BB84 textbook bound, ~11 %).
    qber_abort: float = 0.11
    #: Error-correction efficiency f >= 1: bits disclosed per bit of Shannon limit n*h(e).
    ec_efficiency: float = 1.16
    #: Bits removed by privacy amplification on top of the leak: 2*log2(1/eps_PA) of the
    #: leftover hash lemma, 128 for eps_PA = 2**-64.
    security_margin_bits: int = 128

    def __post_init__(self) -> None:
        for name, low, high in (("channel_error", 0.0, 0.5), ("eve", 0.0, 1.0), ("qber_abort", 0.0, 0.5)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(f"link parameter {name} must be a number from {low} to {high}, not {value!r}")
        if not isinstance(self.sample_fraction, (int, float)) or not 0.0 < self.sample_fraction < 1.0:
            raise ValueError(f"link parameter sample_fraction must be between 0 and 1, not {self.sample_fraction!r}")
        if not isinstance(self.ec_efficiency, (int, float)) or not 1.0 <= self.ec_efficiency <= 10.0:
            raise ValueError(f"link parameter ec_efficiency must be from 1 to 10, not {self.ec_efficiency!r}")
        if (isinstance(self.pulses_per_block, bool) or not isinstance(self.pulses_per_block, int)
                or not 64 <= self.pulses_per_block <= 1 << 24):
            raise ValueError(
                f"link parameter pulses_per_block must be an integer from 64 to {1 << 24}, "
                f"not {self.pulses_per_block!r}")
        if (isinstance(self.security_margin_bits, bool) or not isinstance(self.security_margin_bits, int)
                or self.security_margin_bits < 0):
            raise ValueError(
                f"link parameter security_margin_bits must be a non-negative integer, "
                f"not {self.security_margin_bits!r}")


@dataclass(frozen=True)
class BlockResult:
    """What one block of pulses produced.  ``repr`` never shows the key."""

    #: The final (privacy-amplified) key, ``final_bits // 8`` bytes; empty when aborted.
    key: bytes = field(repr=False)
    #: QBER estimated on the disclosed sample (0.0 when there was no sample).
    qber: float
    #: True when the block yielded no key.
    aborted: bool
    #: Why the block aborted, in a sentence; empty when it did not.
    reason: str
    #: Pulses sent in the block.
    raw_pulses: int
    #: Bits kept after basis sifting.
    sifted_bits: int
    #: Sifted bits disclosed for QBER estimation.
    sample_bits: int
    #: Bits disclosed by error correction and its verification tag.
    ec_leak_bits: int
    #: Length of ``key`` in bits (a multiple of 8); 0 when aborted.
    final_bits: int


@dataclass(frozen=True)
class LinkStatistics:
    """Averages over a run of blocks (see :meth:`BB84Link.statistics`)."""

    #: Blocks simulated.
    blocks: int
    #: Blocks that yielded no key.
    aborted_blocks: int
    #: Mean estimated QBER over all blocks.
    mean_qber: float
    #: Mean sifted bits per block.
    mean_sifted_bits: float
    #: Mean final key bits per block, aborted blocks counting as 0 (the secret-key rate).
    secret_key_bits_per_block: float


def binary_entropy(p: float) -> float:
    """Shannon's binary entropy h(p) in bits; h(0) = h(1) = 0."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)


def expected_qber(params: LinkParameters) -> float:
    """The QBER the link should show on average: channel_error + eve/4 * (1 - 2*channel_error)."""
    p = params.channel_error
    # Eve in the wrong basis (prob 1/2) randomises Bob's bit (error 1/2); the channel flip
    # then turns the remaining right/wrong outcomes over with probability p.
    return p + params.eve / 4.0 * (1.0 - 2.0 * p)


class _RawRandom:
    """Bits, biased coins and sort keys drawn from raw 64-bit words (stable across NumPy versions)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._bitgen = rng.bit_generator

    def words(self, count: int) -> npt.NDArray[np.uint64]:
        return np.asarray(self._bitgen.random_raw(count), dtype=np.uint64)

    def bits(self, count: int) -> Bits:
        """``count`` fair bits as a 0/1 uint8 array."""
        raw = self.words((count + 63) // 64).astype("<u8").view(np.uint8)
        return np.unpackbits(raw, count=count, bitorder="little")

    def coins(self, count: int, probability: float) -> npt.NDArray[np.bool_]:
        """``count`` booleans, each True with ``probability`` (exact 64-bit threshold)."""
        raw = self.words(count)  # drawn whatever the probability, so later draws never depend on it
        if probability >= 1.0:
            return np.ones(count, dtype=np.bool_)
        return raw < np.uint64(int(probability * 2.0**64))

    def bytes(self, count: int) -> bytes:
        return self.words((count + 7) // 8).astype("<u8").tobytes()[:count]


def toeplitz_hash(seed_bits: Bits, data_bits: Bits, out_bits: int) -> Bits:
    """Multiply ``data_bits`` (n bits) by the ``out_bits`` x n Toeplitz matrix over GF(2).

    The matrix is T[i, j] = seed_bits[i - j + n - 1], so ``seed_bits`` needs n + out_bits - 1
    bits.  Random Toeplitz matrices form a 2-universal hash family (Krawczyk 1994), which is
    what the leftover hash lemma needs for privacy amplification.  T @ x is the slice
    [n-1, n-1+out_bits) of the convolution seed * x, computed with a real FFT; a circular
    convolution of length >= n + out_bits - 1 leaves that slice free of wrap-around, and the
    sums (at most n) are exact in float64 after rounding.
    """
    n = int(data_bits.shape[0])
    if out_bits <= 0 or n == 0:
        raise ValueError("toeplitz_hash: need at least one input and one output bit")
    if seed_bits.shape[0] != n + out_bits - 1:
        raise ValueError(f"toeplitz_hash: seed must have {n + out_bits - 1} bits, not {seed_bits.shape[0]}")
    seed_length = n + out_bits - 1
    size = 1 << (seed_length - 1).bit_length()  # the smallest power of two >= seed_length
    spectrum = np.fft.rfft(seed_bits.astype(np.float64), size) * np.fft.rfft(data_bits.astype(np.float64), size)
    sums = np.fft.irfft(spectrum, size)[n - 1:n - 1 + out_bits]
    return (np.rint(sums).astype(np.int64) & 1).astype(np.uint8)


def _verify_tag(salt: bytes, bits: Bits) -> bytes:
    return hashlib.sha256(salt + np.packbits(bits).tobytes()).digest()[:VERIFY_TAG_BITS // 8]


def run_block(params: LinkParameters, rng: np.random.Generator) -> BlockResult:
    """Simulate one BB84 block and its post-processing; deterministic for a given ``rng`` state.

    ``rng`` stands for every random choice of Alice, Bob, Eve and the channel, and for the
    public random seeds of sampling, verification and privacy amplification.  Only raw words
    of ``rng.bit_generator`` are used.
    """
    draw = _RawRandom(rng)
    n_pulses = params.pulses_per_block

    alice_bits = draw.bits(n_pulses)
    alice_bases = draw.bits(n_pulses)  # 0 = Z (rectilinear), 1 = X (diagonal)

    # Intercept-resend: Eve measures in her own random basis; a wrong basis gives her a random
    # bit, and she resends that bit in her basis, so the photon Bob receives is hers.
    eve_hits = draw.coins(n_pulses, params.eve)
    eve_bases = draw.bits(n_pulses)
    eve_guess = draw.bits(n_pulses)
    eve_bits = np.where(eve_bases == alice_bases, alice_bits, eve_guess)
    photon_bits = np.where(eve_hits, eve_bits, alice_bits)
    photon_bases = np.where(eve_hits, eve_bases, alice_bases)

    photon_bits = photon_bits ^ draw.coins(n_pulses, params.channel_error).view(np.uint8)

    bob_bases = draw.bits(n_pulses)
    bob_guess = draw.bits(n_pulses)
    bob_bits = np.where(bob_bases == photon_bases, photon_bits, bob_guess)

    # Sifting: keep the positions where Alice's and Bob's announced bases agree.
    sift = alice_bases == bob_bases
    alice_sifted = alice_bits[sift]
    bob_sifted = bob_bits[sift]
    n_sifted = int(alice_sifted.shape[0])

    # Parameter estimation on a uniformly random subset: the k smallest of random 64-bit sort
    # keys (a set that does not depend on the selection algorithm).
    n_sample = max(0, min(n_sifted - 1, round(params.sample_fraction * n_sifted)))
    sort_keys = draw.words(n_sifted)
    aborted = BlockResult(key=b"", qber=0.0, aborted=True, reason="", raw_pulses=n_pulses, sifted_bits=n_sifted,
                          sample_bits=n_sample, ec_leak_bits=0, final_bits=0)
    if n_sample < 1:
        return replace(aborted, reason="too few sifted bits to estimate the QBER; raise pulses_per_block")
    in_sample = np.zeros(n_sifted, dtype=np.bool_)
    in_sample[np.argpartition(sort_keys, n_sample - 1)[:n_sample]] = True
    sample_errors = int(np.count_nonzero(alice_sifted[in_sample] != bob_sifted[in_sample]))
    qber = sample_errors / n_sample
    aborted = replace(aborted, qber=qber)
    if qber > params.qber_abort:
        return replace(aborted, reason=f"estimated QBER {qber:.1%} exceeds {params.qber_abort * 100:g}% "
                                       f"(eavesdropper or broken link)")

    alice_key = alice_sifted[~in_sample]
    bob_key = bob_sifted[~in_sample]
    n = int(alice_key.shape[0])

    # Error correction, modelled by its disclosure: a rate-adaptive code needs f*h(e)*n bits
    # for the error rate e it actually meets (never less than the estimate it starts from).
    actual = int(np.count_nonzero(alice_key != bob_key)) / n
    ec_rate = params.ec_efficiency * binary_entropy(max(qber, actual))
    leak = math.ceil(ec_rate * n) + VERIFY_TAG_BITS
    bob_corrected = alice_key.copy() if ec_rate < 1.0 else bob_key
    # Verification: compare short hashes of both corrected keys under a public random salt.
    salt = draw.bytes(16)
    if _verify_tag(salt, alice_key) != _verify_tag(salt, bob_corrected):
        return replace(aborted, ec_leak_bits=leak,
                       reason="error correction failed: the verification hashes of the corrected keys differ")

    # Privacy amplification to the Shor-Preskill length, in whole bytes.
    final_bits = math.floor(n * (1.0 - binary_entropy(qber)) - leak - params.security_margin_bits) // 8 * 8
    if final_bits <= 0:
        return replace(aborted, ec_leak_bits=leak, reason=f"no secret key left after error correction and "
                                                          f"privacy amplification at estimated QBER {qber:.1%}")
    toeplitz_seed = draw.bits(n + final_bits - 1)
    final = toeplitz_hash(toeplitz_seed, alice_key, final_bits)
    return replace(aborted, key=np.packbits(final).tobytes(), aborted=False, ec_leak_bits=leak,
                   final_bits=final_bits)


class BB84Link:
    """A simulated BB84 link: a deterministic function from (seed, block index) to a block.

    Two processes holding the same ``seed`` and ``params`` compute the same key for the same
    block index without talking to each other -- standing in for the two ends of a real link,
    which agree through the quantum channel and the authenticated classical channel.

    Stable API (used by the KME simulator to fill its key pool):

    - :meth:`block` -- one block by index, 0 <= index < 2**64;
    - :meth:`blocks` -- successive blocks from an index, as ``(index, BlockResult)`` pairs;
    - :meth:`statistics` / :meth:`secret_key_rate_bits_per_block` -- measured averages, to pace
      block production to a target secret-key rate in bits per second;
    - :attr:`params` and :meth:`expected_qber`.
    """

    def __init__(self, params: LinkParameters, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) < 16:
            raise ValueError("BB84Link: seed must be at least 16 bytes")
        self._params = params
        self._seed = seed

    def __repr__(self) -> str:
        return f"BB84Link({self._params!r})"

    @property
    def params(self) -> LinkParameters:
        """The link's parameters."""
        return self._params

    def expected_qber(self) -> float:
        """The mean QBER these parameters produce (see :func:`expected_qber`)."""
        return expected_qber(self._params)

    def generator(self, index: int) -> np.random.Generator:
        """The random generator of block ``index``: PCG64 seeded with SHA-256(label || seed || index)."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= _MAX_INDEX:
            raise ValueError(f"block index must be an integer from 0 to 2**64-1, not {index!r}")
        digest = hashlib.sha256(_BLOCK_LABEL + len(self._seed).to_bytes(2, "big") + self._seed
                                + index.to_bytes(8, "big")).digest()
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int.from_bytes(digest, "big"))))

    def block(self, index: int) -> BlockResult:
        """Block ``index`` of the link; the same (seed, params, index) always gives the same result."""
        return run_block(self._params, self.generator(index))

    def blocks(self, start_index: int = 0, stop_index: int | None = None) -> Iterator[tuple[int, BlockResult]]:
        """Yield ``(index, block)`` for index = start_index, start_index + 1, ... (up to ``stop_index``,
        exclusive, or 2**64).  Aborted blocks are yielded too; skip them or count them."""
        stop = _MAX_INDEX + 1 if stop_index is None else stop_index
        for index in range(start_index, stop):
            yield index, self.block(index)

    def statistics(self, n_blocks: int = 16, start_index: int = 0) -> LinkStatistics:
        """Simulate ``n_blocks`` successive blocks and average them."""
        if n_blocks <= 0:
            raise ValueError("statistics: n_blocks must be positive")
        results = [block for _, block in self.blocks(start_index, start_index + n_blocks)]
        return LinkStatistics(
            blocks=n_blocks,
            aborted_blocks=sum(1 for b in results if b.aborted),
            mean_qber=sum(b.qber for b in results) / n_blocks,
            mean_sifted_bits=sum(b.sifted_bits for b in results) / n_blocks,
            secret_key_bits_per_block=sum(b.final_bits for b in results) / n_blocks,
        )

    def secret_key_rate_bits_per_block(self, n_blocks: int = 16, start_index: int = 0) -> float:
        """Mean final key bits per block over ``n_blocks`` blocks (aborted blocks count as 0)."""
        return self.statistics(n_blocks, start_index).secret_key_bits_per_block
