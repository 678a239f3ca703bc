"""The benchmark runs and ends with one JSON line (no speed is asserted: CI machines vary)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hybridkex import get_backend
from hybridkex.bench import REPLAY_RNGS, ReplayBackend, make_setup, run_handshake


def test_quick_run_ends_with_a_json_summary() -> None:
    proc = subprocess.run([sys.executable, "-m", "hybridkex.bench", "--quick", "--backend", "cryptography"],
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("ratio", "handshake_us", "floor_us"):
        assert isinstance(summary[key], (int, float)) and summary[key] > 0, (key, summary[key])
    assert summary["backend"] == "cryptography"
    assert summary["kem"] == "ml-kem-768" and summary["sig"] == "ml-dsa-65" and summary["iterations"] > 0
    sizes = summary["sizes"]
    assert {row["auth"] for row in sizes} == {"ml-dsa-44", "ml-dsa-65", "ml-dsa-87", "psk"}
    for row in sizes:
        parts = (row["init_hello"], row["resp_hello"], row["init_finish"], row["resp_finish"])
        assert all(n > 0 for n in parts) and row["total"] == sum(parts)


def test_missing_backend_is_a_clear_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "hybridkex.bench", "--quick", "--backend", "nonesuch"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "nonesuch" in proc.stderr


@pytest.mark.parametrize("kem", ["ml-kem-768", "ml-kem-1024"])
def test_replayed_handshake_is_the_recorded_one(kem: str) -> None:
    # The overhead figure relies on a replaying backend reproducing the handshake byte for byte.
    setup = make_setup(get_backend("cryptography"), kem, "ml-dsa-44")
    assert isinstance(setup.replay_configs[0].backend, ReplayBackend)
    first, _ = run_handshake(*setup.replay_configs, None, REPLAY_RNGS)
    again, peer = run_handshake(*setup.replay_configs, None, REPLAY_RNGS)
    assert first.transcript_hash == again.transcript_hash and again.key() == peer.key()
